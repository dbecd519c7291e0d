"""script: a guest's workloads as a sequence of steps, some of them overlays.

A step is any other workload with a start and an end:

* start: ``at_ns`` (from the script's start), or ``after_ns`` past the end of the
  step before (default 0: right after it);
* end: ``until_done`` (the workload finished: a memhog whose phases ran out, a trace
  at its last sample, a page_cache read pass) and/or ``duration_ns`` (stopped then;
  it keeps what it holds);
* ``overlay``: the step runs in the background and the next step starts without
  waiting for it (e.g. kernel_noise under everything, or a hog beside a cache fill).

So one guest can boot (kernel allocations held), fill its page cache, run a
benchmark and idle. Each step's workload gets the guest's whole working time, as
workloads started through GuestService do. When a step ends part way through an
epoch, the next one starts at that moment if the step knows it (a memhog and a
trace do: ``finished_ns``), else at the end of that epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from .workloads import WorkloadRunner, WorkStats, clip_to_stop

MAX_STEPS = 1_000


@dataclass(frozen=True)
class ScriptStep:
    workload: object  # any workload config
    at_ns: int | None = None
    after_ns: int = 0
    until_done: bool = False
    duration_ns: int | None = None
    overlay: bool = False

    def __post_init__(self) -> None:
        if self.at_ns is not None and self.at_ns < 0:
            raise ValueError(f"step.at_ns must be >= 0, got {self.at_ns}")
        if self.after_ns < 0:
            raise ValueError(f"step.after_ns must be >= 0, got {self.after_ns}")
        if self.duration_ns is not None and self.duration_ns <= 0:
            raise ValueError(f"step.duration_ns must be > 0, got {self.duration_ns}")
        if not self.overlay and not self.until_done and self.duration_ns is None:
            raise ValueError("a step that is not an overlay needs until done or a duration")


@dataclass(frozen=True)
class ScriptConfig:
    steps: tuple[ScriptStep, ...]
    start_delay_ns: int = 0

    def __post_init__(self) -> None:
        if not 0 < len(self.steps) <= MAX_STEPS:
            raise ValueError(f"script.steps: 1..{MAX_STEPS} steps, got {len(self.steps)}")


@dataclass
class _Running:
    index: int
    runner: WorkloadRunner
    start_ns: int
    end_ns: int | None  # known in advance (a duration) or once done


class Script:
    """The script runner (see the module docstring)."""

    def __init__(self, config: ScriptConfig, nr_pages: int, rng: np.random.Generator):
        self.config = config
        self.nr_pages = nr_pages
        self.rng = rng
        self.stats = WorkStats()
        self._next = 0  # the next step to start
        self._prev_end_ns: int | None = config.start_delay_ns  # when the last sequential step ended
        self._current: _Running | None = None  # the sequential step running
        self._running: list[_Running] = []
        self._all: list[_Running] = []
        self.stop_ns: int | None = None
        self.finished = False
        self.order = 0
        self.steps_started = 0

    # -- the shard's view --------------------------------------------------------------
    @property
    def held(self) -> SimpleNamespace:
        pages = sum(r.runner.held.count << getattr(r.runner, "order", 0) for r in self._running)
        return SimpleNamespace(count=pages)

    def _sum_stats(self) -> None:
        s = WorkStats()
        for r in self._all:
            w = r.runner.stats
            s.pages_allocated += w.pages_allocated
            s.pages_freed += w.pages_freed
            s.pages_touched += w.pages_touched
            s.alloc_failures += w.alloc_failures
        self.stats = s

    # -- steps -------------------------------------------------------------------------
    def _start_ns(self, step: ScriptStep) -> int | None:
        """When the next step starts: None while the step before it still runs."""
        if step.at_ns is not None:
            return self.config.start_delay_ns + step.at_ns
        if self._prev_end_ns is None:
            return None
        return self._prev_end_ns + step.after_ns

    def _start_due(self, before_ns: int) -> bool:
        """Start every step whose start time is before ``before_ns``; True if any did."""
        from .workloads import make_workload

        started = False
        while self._next < len(self.config.steps):
            step = self.config.steps[self._next]
            start = self._start_ns(step)
            if start is None or start >= before_ns:
                break
            end = None if step.duration_ns is None else start + step.duration_ns
            rng = np.random.default_rng(
                np.random.SeedSequence([int(self.rng.integers(2**63)), self._next])
            )
            runner = make_workload(step.workload, self.nr_pages, rng, start_ns=start, stop_ns=end)
            run = _Running(self._next, runner, start, end)
            self._running.append(run)
            self._all.append(run)
            self.steps_started += 1
            self._next += 1
            started = True
            if step.overlay:
                self._prev_end_ns = start
            else:
                self._current = run
                self._prev_end_ns = end if (end is not None and not step.until_done) else None
        return started

    def _check_current(self, t1_ns: int) -> None:
        """A sequential step that finished: the next may start at its end."""
        cur = self._current
        if cur is None:
            return
        step = self.config.steps[cur.index]
        w = cur.runner
        if step.until_done and w.finished:
            done = getattr(w, "finished_ns", None)
            self._prev_end_ns = done if done is not None else t1_ns
            if cur.end_ns is not None:
                self._prev_end_ns = min(self._prev_end_ns, cur.end_ns)
            self._current = None
        elif cur.end_ns is not None and t1_ns >= cur.end_ns:
            self._current = None

    def next_event_ns(self, now_ns: int) -> int | None:
        if self.finished:
            return None
        if self.stop_ns is not None and now_ns >= self.stop_ns:
            return now_ns
        events = [w for r in self._running if (w := r.runner.next_event_ns(now_ns)) is not None]
        if self._next < len(self.config.steps):
            start = self._start_ns(self.config.steps[self._next])
            if start is not None:
                events.append(max(now_ns, start))
        return min(events) if events else None

    def run(self, guest, t0_ns: int, t1_ns: int, work_ns: int) -> None:
        end = clip_to_stop(self, t0_ns, t1_ns)
        if end is None:
            return
        t1_ns = end
        ran: set[int] = set()
        self._start_due(t1_ns)
        while True:
            for r in list(self._running):
                if id(r) in ran:
                    continue
                ran.add(id(r))
                r.runner.run(guest, t0_ns, t1_ns, work_ns)
            self._check_current(t1_ns)
            if not self._start_due(t1_ns):
                break
        self._running = [r for r in self._running if not r.runner.finished]
        self._sum_stats()
        if self._next == len(self.config.steps) and not self._running:
            self.finished = True


__all__ = ["Script", "ScriptConfig", "ScriptStep"]
