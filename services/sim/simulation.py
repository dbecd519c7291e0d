"""The simulation loop: one spec on one backend, advanced sample interval by sample interval.

Simulated time has one owner here. :class:`Simulation` hands the session up to
:data:`CHUNKS_PER_CALL` sample intervals at a time (more while calls are quick: see
:class:`CallSize`); the session's epoch driver
runs them (syncing every epoch while a host is under pressure, once per
``sync_interval`` while all are calm: :mod:`services.sim.sync_policy`) and
returns one sample per interval, which becomes one row per host and per guest
group. When no guest has anything to do before a later sample boundary (idle
guests, reporting delay, workload pause), the loop skips ahead in one step.
Simulated time never waits on the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from services.guest.epoch_driver import GroupSamples, HostSamples
from services.protocol.snapshot import PartInfo
from services.units import NS_PER_S

from .backends import Backend
from .live_metrics import MetricsHub, SimulationMetrics
from .plan import make_plan
from .result_rows import group_row, host_row
from .spec import ExperimentSpec

CHUNKS_PER_CALL = 10  # sample intervals a session runs per run_chunks call, at first
MAX_CHUNKS_PER_CALL = 160  # at most (a quick run's whole length in a few calls)
QUICK_CALL_S = 0.25  # a call quicker than this doubles the next one's intervals
SLOW_CALL_S = 2.0  # one slower than this halves them (stop requests are seen between calls)
SKIP_STEP_INTERVALS = (
    1_000  # idle sample intervals skipped per step (stop requests are seen between)
)


class CallSize:
    """How many sample intervals the next run_chunks call covers: CHUNKS_PER_CALL at first,
    doubled after a call quicker than QUICK_CALL_S (up to MAX_CHUNKS_PER_CALL), halved
    after one slower than SLOW_CALL_S. A call costs a round trip to every actor (5-7 ms
    on Ray here; the quickstart's 120 intervals took 12 calls), and a call's intervals
    are the same intervals whatever their grouping: results never depend on it (tested
    with fixed groupings), only the wall clock does."""

    def __init__(self) -> None:
        self.chunks = CHUNKS_PER_CALL
        self.interval_s: float | None = None  # wall seconds per interval in the last call

    def took(self, wall_s: float, intervals: int = 1) -> None:
        self.interval_s = wall_s / max(1, intervals)
        if wall_s < QUICK_CALL_S:
            self.chunks = min(MAX_CHUNKS_PER_CALL, 2 * self.chunks)
        elif wall_s > SLOW_CALL_S:
            self.chunks = max(1, self.chunks // 2)

    def within(self, remaining_s: float | None) -> int:
        """Intervals for the next call when ``remaining_s`` of wall time is left before a
        deadline (None: no deadline): no more than the last call's pace fits in it, and
        one while the pace is unknown, so a call ends within about one interval's wall
        time of its deadline."""
        if remaining_s is None:
            return self.chunks
        if self.interval_s is None or self.interval_s <= 0:
            return 1
        return max(1, min(self.chunks, int(remaining_s / self.interval_s)))


class Simulation:
    """``advance_to(t)`` runs whole sample intervals up to ``t`` (or the end); ``rows``
    holds every sample so far. ``on_progress(now_ns, epochs_run)`` is called after
    every call to the session (the console's progress bar)."""

    def __init__(
        self,
        spec: ExperimentSpec,
        backend: Backend,
        variant: str = "run",
        shards: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        run_id: str | None = None,
        metrics: MetricsHub | None = None,
    ):
        self.spec = spec
        self.variant = variant
        # a baseline's rows carry the id of the run it pairs with
        self.run_id = run_id or spec.run_id()
        self.plan = make_plan(
            spec, f"{spec.name}-{spec.run_id()}-{variant}", shards or backend.nr_shards_default
        )
        self.metrics: SimulationMetrics | None = None
        self._hub = metrics
        self.session = (
            backend.start(self.plan, metrics.actor_options(self))
            if metrics is not None
            else backend.start(self.plan)
        )
        self.rows: list[dict[str, Any]] = []
        self.now_ns = 0
        self.epoch = 0
        self.epochs_run = 0
        self.wall_s = 0.0
        self.closed = False
        self.on_progress = on_progress
        self._skip_until = 0  # no guest acts before this sample boundary: skip to it
        self.call_size = CallSize()
        self.fine_intervals = (
            0  # sample intervals synced every epoch because a host was under pressure
        )
        try:
            hosts = self.session.host_samples()
            self._last_hosts: HostSamples = hosts
            self.last_groups: GroupSamples = self.session.group_samples()
            # the first interval's decision
            self._pressure = self.plan.policy.under_pressure({}, hosts)
            self._record(0, hosts, self.last_groups)
            self._initial = self.coordinator_state()  # what a rollback without checkpoint restores
            if metrics is not None:
                self.metrics = metrics.attach(self)
                self.metrics.update()
        except BaseException:
            self.close()
            raise

    @property
    def last_hosts(self) -> HostSamples:
        """Every host's counters at the last sample."""
        return self._last_hosts

    @property
    def finished(self) -> bool:
        return self.now_ns >= self.spec.duration

    def _record(self, t_ns: int, hosts: HostSamples, groups: GroupSamples) -> None:
        """One sample row per host and per guest group."""
        for h in self.plan.hosts:
            self.rows.append(
                host_row(
                    t_ns,
                    self.variant,
                    self.run_id,
                    h.name,
                    hosts[h.host_id],
                    h.group.memory - h.group.reserve,
                )
            )
        for group, sums in sorted(groups.items()):
            self.rows.append(group_row(t_ns, self.variant, self.run_id, group, sums))

    def _chunks(self, limit_ns: int, most: int) -> list[tuple[int, int]]:
        """The next sample intervals up to ``limit_ns`` (at most ``most``): (start ns,
        epochs) each."""
        spec = self.spec
        chunks, t = [], self.now_ns
        while t < limit_ns and len(chunks) < most:
            t_next = min(t + spec.sample_interval, spec.duration)
            chunks.append((t, max(1, -(-(t_next - t) // spec.epoch))))
            t = t_next
        return chunks

    def advance_to(
        self,
        target_ns: int,
        should_stop: Callable[[], bool] | None = None,
        deadline_s: float | None = None,
    ) -> bool:
        """Run to ``target_ns`` rounded up to a sample boundary (capped at the end).

        ``should_stop`` is asked before every call to the session (a cancelled call, a
        passed deadline, a server shutting down): when it says so, the loop stops at
        that sample boundary, consistent and resumable. Returns False if it stopped early.
        ``deadline_s`` (a ``time.monotonic()`` value; the caller's deadline) sizes the
        calls so the one running when it passes ends about one interval later
        (:meth:`CallSize.within`); the results are the same whatever the sizes.
        """
        spec = self.spec
        wall0 = time.perf_counter()
        limit = min(target_ns, spec.duration)
        per_epoch = self.plan.policy.calm_sync_epochs == 1
        while self.now_ns < limit:
            if should_stop is not None and should_stop():
                self.wall_s += time.perf_counter() - wall0
                return False
            if self._skip_until > self.now_ns:  # a stretch where no guest acts, in steps
                self._skip_step(min(self._skip_until, limit))
            else:
                remaining_s = None if deadline_s is None else deadline_s - time.monotonic()
                chunks = self._chunks(limit, self.call_size.within(remaining_s))
                call0 = time.perf_counter()
                results = self.session.run_chunks(
                    self.epoch, chunks, self._pressure, self._last_hosts
                )
                call_s = time.perf_counter() - call0
                self.call_size.took(call_s, len(chunks))
                if self.metrics is not None:
                    self.metrics.observe_call(call_s, sum(c for _, c in chunks))
                for i, (t0, count) in enumerate(chunks):
                    self.fine_intervals += results.pressure[i] or per_epoch
                    self.epoch += count
                    self.epochs_run += count
                    self.now_ns = min(t0 + spec.sample_interval, spec.duration)
                    self._record(self.now_ns, results.hosts[i], results.groups[i])
                self._pressure, self._last_hosts = results.next_pressure, results.hosts[-1]
                self.last_groups = results.groups[-1]
                self._skip_until = self._skip_target(results.events, limit)
            if self.metrics is not None:
                self.metrics.update()
            if self.on_progress is not None:
                self.on_progress(self.now_ns, self.epochs_run)
        self.wall_s += time.perf_counter() - wall0
        return True

    def _skip_target(self, events: list[int | None], limit_ns: int) -> int:
        """The last sample boundary before any guest acts again (capped at ``limit_ns``)."""
        spec = self.spec
        pending = [e for e in events if e is not None]
        nxt = min(pending) if pending else spec.duration
        return min(limit_ns, (nxt // spec.sample_interval) * spec.sample_interval)

    def _skip_step(self, target_ns: int) -> None:
        """Jump whole sample intervals in which no guest does anything (their samples
        repeat the last ones), at most SKIP_STEP_INTERVALS at a time so a long idle
        stretch still stops promptly when asked."""
        spec = self.spec
        step_ns = min(target_ns, self.now_ns + SKIP_STEP_INTERVALS * spec.sample_interval)
        self.session.skip_to(step_ns)
        last = [dict(r) for r in self.rows[-(len(self.plan.hosts) + self._groups()) :]]
        while self.now_ns < step_ns:
            self.now_ns = min(self.now_ns + spec.sample_interval, step_ns)
            for r in last:
                self.rows.append({**r, "time_s": self.now_ns / NS_PER_S})

    # -- checkpoints: the coordinator's share of a coordinated checkpoint

    _STATE = (
        "now_ns",
        "epoch",
        "epochs_run",
        "fine_intervals",
        "_skip_until",
        "_pressure",
        "_last_hosts",
        "last_groups",
    )

    def coordinator_state(self) -> dict[str, Any]:
        """Where this simulation stands at the last sample boundary, and its rows so far."""
        state = {k: getattr(self, k) for k in self._STATE}
        state["rows"] = list(self.rows)
        return state

    def checkpoint_begin(self, directory: str) -> dict[str, Any]:
        """Start a checkpoint of this boundary (the parts may still be being written
        when this returns); returns the coordinator's state. See :meth:`checkpoint_end`."""
        state = self.coordinator_state()
        self.session.checkpoint_begin(directory)
        return state

    def checkpoint_end(self) -> list[PartInfo]:
        """The parts of the checkpoint begun last, once all are written."""
        return self.session.checkpoint_end()

    def restore(self, directory: str, parts: Sequence[PartInfo], state: dict[str, Any]) -> None:
        """Roll back to a checkpoint: every host and shard, then the coordinator."""
        self.session.restore(directory, parts)
        for k in self._STATE:
            setattr(self, k, state[k])
        self.rows = list(state["rows"])
        if self.metrics is not None:
            self.metrics.update()

    def recover(self, last: tuple[str, Sequence[PartInfo], dict[str, Any]] | None) -> None:
        """After the session lost an actor: bring every actor back and roll back to the
        last checkpoint (``last``: ``restore``'s arguments), else to the start."""
        self.session.recover()
        if last is not None:
            self.restore(*last)
            return
        for k in self._STATE:
            setattr(self, k, self._initial[k])
        self.rows = list(self._initial["rows"])
        if self.metrics is not None:
            self.metrics.update()

    def _groups(self) -> int:
        return len({g.group.name for g in self.plan.guests})

    def stats(self) -> dict[str, Any]:
        """Wall-clock figures of this simulation (metadata, never results)."""
        out: dict[str, Any] = {
            "epochs_run": self.epochs_run,
            "wall_seconds": self.wall_s,
            "shards": len(self.plan.shard_inits),
            "sync_interval_ns": self.spec.sync_interval,
            "per_epoch_sync_intervals": self.fine_intervals,
            "sim_seconds_per_wall_second": self.now_ns / NS_PER_S / max(self.wall_s, 1e-9),
        }
        if not self.closed:
            out.update(self.session.stats())
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                if self._hub is not None and self.metrics is not None:
                    self._hub.detach(self.metrics)
            finally:
                self.session.close()
