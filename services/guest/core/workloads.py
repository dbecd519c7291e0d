"""Guest workloads: generators of allocate / free / touch operations in simulated time.

A workload runs inside one guest. The orchestration layer calls
:meth:`Workload.run` once per slice of simulated time with the time the guest
may spend working in it. Every touch is priced by the guest with its host's
figures as it is made (``guest.pay_touches``), and the workload pays that price
out of its own time before it goes on, so a guest that refaults slows down at
once, within the epoch (:class:`Pacer`). What the host charged beyond the
guest's price (swap-outs and host reclaim the guest could not see) is
subtracted at the next sync. Progress is counted in page operations (pages
allocated, freed or touched), the unit of "workload operations completed" in
results.

All amounts are integers; fractional progress is carried as an integer
remainder, so results do not depend on how time is sliced into epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from numba import njit

from services.units import NS_PER_S

from .constants import MIGRATE_MOVABLE, PAGE_SHIFT

DEFAULT_GROW_BYTES_PER_S = (
    2 << 30
)  # first-touch anonymous faults ~2 GiB/s per thread (figures.md Q2: 1-2 us per 4 KiB)
DEFAULT_FREE_BYTES_PER_S = 16 << 30  # munmap of populated memory: much faster than faulting it in
DEFAULT_TOUCH_BYTES_PER_S = 4 << 30  # re-touching mapped memory, one store per page

GROW, FREE, IDLE, TOUCH = "grow", "free", "idle", "touch"


@dataclass(frozen=True)
class PhaseConfig:
    action: str
    duration_ns: int
    target: float | None = None  # held memory at the end, as a fraction of guest memory
    rate_bytes_per_s: int | None = None
    until_done: bool = False  # grow/free: end when the target is reached (duration: a cap)

    def __post_init__(self) -> None:
        if self.action not in (GROW, FREE, IDLE, TOUCH):
            raise ValueError(f"phase.action must be grow, free, idle or touch, got {self.action!r}")
        if self.duration_ns <= 0:
            raise ValueError(f"phase.duration_ns must be > 0, got {self.duration_ns}")
        if self.action in (GROW, FREE) and (self.target is None or not 0 <= self.target <= 1):
            raise ValueError(f"phase.target must be in [0, 1] for {self.action}, got {self.target}")
        if self.rate_bytes_per_s is not None and self.rate_bytes_per_s <= 0:
            raise ValueError(f"phase.rate_bytes_per_s must be > 0, got {self.rate_bytes_per_s}")
        if self.until_done and self.action not in (GROW, FREE):
            raise ValueError(f"phase.until done applies to grow and free, not {self.action}")

    @property
    def rate(self) -> int:
        if self.rate_bytes_per_s is not None:
            return self.rate_bytes_per_s
        return {GROW: DEFAULT_GROW_BYTES_PER_S, FREE: DEFAULT_FREE_BYTES_PER_S}.get(
            self.action, DEFAULT_TOUCH_BYTES_PER_S
        )


@dataclass(frozen=True)
class MemhogConfig:
    phases: tuple[PhaseConfig, ...]
    repeat: bool = False
    thp: bool = False  # order-9 allocations, like an MADV_HUGEPAGE region
    start_delay_ns: int = 0
    migratetype: int = MIGRATE_MOVABLE

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("memhog.phases must not be empty")
        if self.start_delay_ns < 0:
            raise ValueError(f"memhog.start_delay_ns must be >= 0, got {self.start_delay_ns}")


@dataclass(frozen=True)
class IdleConfig:
    initial_fill: float = 0.0  # allocate, touch and free this fraction at start (boot noise)


@dataclass
class WorkStats:
    """Page operations completed by a workload (cumulative)."""

    pages_allocated: int = 0
    pages_freed: int = 0
    pages_touched: int = 0
    alloc_failures: int = 0

    @property
    def ops(self) -> int:
        return self.pages_allocated + self.pages_freed + self.pages_touched


@njit(cache=True, nogil=True)
def _runs_kernel(p, each, out_starts, out_npages):
    """Runs of blocks of ``each`` pages at the pfns ``p``; returns how many, or -1 if
    ``p`` is not ascending (the caller sorts and calls again)."""
    m = 0
    start = p[0]
    prev = p[0]
    for i in range(1, p.shape[0]):
        if p[i] < prev:
            return -1
        if p[i] != prev + each:
            out_starts[m] = start
            out_npages[m] = prev + each - start
            m += 1
            start = p[i]
        prev = p[i]
    out_starts[m] = start
    out_npages[m] = prev + each - start
    return m + 1


@njit(cache=True, nogil=True)
def _run_heads(p, step, heads):
    """Indices in ``p`` where a run of blocks ``step`` apart starts (in the order given);
    returns how many."""
    heads[0] = 0
    m = 1
    for i in range(1, p.shape[0]):
        if p[i] != p[i - 1] + step:
            heads[m] = i
            m += 1
    return m


def pfns_to_runs(pfns: np.ndarray, npages_each: int) -> tuple[np.ndarray, np.ndarray]:
    """Compress blocks of ``npages_each`` pages at ``pfns`` into sorted (start, npages) runs."""
    if len(pfns) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    p = np.asarray(pfns, dtype=np.int64)
    starts = np.empty(len(p), np.int64)
    npages = np.empty(len(p), np.int64)
    m = _runs_kernel(p, npages_each, starts, npages)
    if m < 0:
        # stable: timsort, which takes the few ascending pieces of an allocation (the
        # pcp list's then the buddy's) in one pass; 12x the default sort here
        m = _runs_kernel(np.sort(p, kind="stable"), npages_each, starts, npages)
    return starts[:m], npages[:m]


CHUNK_PAGES = 4096  # at most 16 MiB of touches between two payments (Pacer)


class Pacer:
    """Spends a workload's time on blocks at a rate, paying each touch's price as it goes.

    Time becomes progress through an integer credit (bytes x ns), so results do not
    depend on how time is sliced. Blocks are done in chunks: after each chunk the
    workload pays the price of its touches (``guest.pay_touches``) from the same credit,
    and the next chunk is sized from the last price per block, at most ``CHUNK_PAGES``
    pages while prices are learned. A price larger than the credit left is a debt, paid
    first from the next slice's time. Progress within a slice therefore follows the
    costs as they are paid; what remains quantised is one chunk.
    """

    def __init__(self, block_pages: int):
        self.unit = NS_PER_S * (block_pages << PAGE_SHIFT)  # credit of one block
        self.chunk = max(1, CHUNK_PAGES // block_pages)
        self.credit = 0
        self.debt_ns = 0  # touch prices not yet paid out of working time
        self.est_ns = 0  # the last price per block

    def reset(self) -> None:
        """A new phase or segment: progress credit left over is dropped (debts stay)."""
        self.credit = 0

    def pay(self, work_ns: int) -> int:
        """Pay the debt from ``work_ns`` first; returns the time left."""
        paid = min(self.debt_ns, max(0, work_ns))
        self.debt_ns -= paid
        return work_ns - paid

    def spend(self, guest, rate: int, work_ns: int, want: int, do, touches: bool = True):
        """Do up to ``want`` blocks with ``work_ns`` of time at ``rate`` bytes/s; ``do(k)``
        does k blocks. Returns (blocks done, spare ns): the spare is the time left once
        ``want`` is reached (the credit is then used up)."""
        self.credit += rate * self.pay(work_ns)
        done = 0
        unit = self.unit
        while done < want and self.credit >= unit:
            k = min(want - done, self.credit // (unit + rate * self.est_ns))
            if touches:
                k = min(k, self.chunk)
            k = max(1, k)
            do(k)
            cost = guest.pay_touches() if touches else 0
            self.est_ns = cost // k
            self.credit -= k * unit + rate * cost
            done += k
        if self.credit < 0:  # the last chunk cost more than the time left: a debt
            self.debt_ns += (-self.credit + rate - 1) // rate
            self.credit = 0
        if done < want:
            return done, 0
        spare = self.credit // rate
        self.credit = 0
        return done, spare


class HeldBlocks:
    """The blocks a workload holds, in the order it got them, as runs.

    A run is blocks whose pfns step by ``step`` (a block's pages, for blocks of one
    order): a memhog faulting in memory gets consecutive blocks from the split of a
    larger one, so its whole region is a few runs. Two growable int64 arrays: each
    run's first pfn, and the count of blocks up to its end (so finding the run of
    the i-th block is a binary search). No Python object per page, and no cost per
    held page.
    """

    def __init__(self, step: int = 1) -> None:
        self.step = step
        self._start = np.zeros(16, np.int64)
        self._end = np.zeros(16, np.int64)  # blocks in runs 0..i
        self._runs = 0
        self.count = 0  # blocks held

    @property
    def nbytes(self) -> int:
        return self._start.nbytes + self._end.nbytes

    def add(self, pfns: np.ndarray) -> None:
        pfns = np.asarray(pfns, dtype=np.int64)
        if len(pfns) == 0:
            return
        heads = np.empty(len(pfns), np.int64)
        heads = heads[: _run_heads(pfns, self.step, heads)]  # where each run starts in pfns
        r = self._runs
        if r:
            last_len = int(self._end[r - 1]) - (int(self._end[r - 2]) if r > 1 else 0)
            if int(self._start[r - 1]) + last_len * self.step == int(pfns[0]):
                # goes on from the newest run
                if len(heads) == 1:  # all of it: the usual case
                    self._end[r - 1] += len(pfns)
                    self.count += len(pfns)
                    return
                self._end[r - 1] += int(heads[1])
                heads = heads[1:]
        tails = np.empty(len(heads), np.int64)  # where each run ends in pfns
        tails[:-1] = heads[1:]
        tails[-1] = len(pfns)
        need = r + len(heads)
        if need > len(self._start):
            size = max(need, 2 * len(self._start))
            self._start = np.concatenate((self._start[:r], np.zeros(size - r, np.int64)))
            self._end = np.concatenate((self._end[:r], np.zeros(size - r, np.int64)))
        self._start[r:need] = pfns[heads]
        self._end[r:need] = self.count + tails
        self._runs = need
        self.count += len(pfns)

    def _runs_of(self, first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Blocks first .. first + n - 1 (n >= 1) as runs: (first pfns, block counts)."""
        ends = self._end[: self._runs]
        a = int(np.searchsorted(ends, first, side="right"))
        lo_a = int(ends[a - 1]) if a else 0
        if first + n <= int(ends[a]):  # in one run: the usual case
            start = int(self._start[a]) + (first - lo_a) * self.step
            return np.array([start], np.int64), np.array([n], np.int64)
        b = int(np.searchsorted(ends, first + n - 1, side="right"))
        starts = self._start[a : b + 1].copy()
        counts = ends[a : b + 1] - np.concatenate(([lo_a], ends[a:b]))
        skip = first - lo_a
        starts[0] += skip * self.step
        counts[0] -= skip
        counts[-1] -= int(ends[b]) - (first + n)
        return starts, counts

    def _cyclic_runs_of(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``n`` held blocks (at most all of them, count > 0, n >= 1) from index
        ``start`` on, wrapping around to the first after the last, as runs; and how
        many blocks that is."""
        start %= self.count
        m = min(n, self.count)
        end = start + m
        if end <= self.count:
            return (*self._runs_of(start, m), m)
        s1, c1 = self._runs_of(start, self.count - start)
        s2, c2 = self._runs_of(0, end - self.count)
        return np.concatenate((s1, s2)), np.concatenate((c1, c2)), m

    def _expand(self, starts: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
        """The pfn of every block of the runs (``n`` blocks in all), in run order."""
        if len(starts) == 1:
            return int(starts[0]) + np.arange(n, dtype=np.int64) * self.step
        offsets = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(starts, counts) + offsets * self.step

    def _blocks(self, first: int, n: int) -> np.ndarray:
        """Blocks first .. first + n - 1, in the order they were added."""
        if n <= 0:
            return np.zeros(0, np.int64)
        return self._expand(*self._runs_of(first, n), n)

    def page_runs_cyclic(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The pages of ``slice_cyclic(start, n)`` as sorted (start, npages) runs, as
        ``pfns_to_runs(slice_cyclic(start, n), step)`` gives them, without a pfn per
        block; and how many blocks that is."""
        if self.count == 0 or n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
        starts, counts, m = self._cyclic_runs_of(start, n)
        npages = counts * self.step
        if len(starts) > 1:
            order = np.argsort(starts, kind="stable")
            starts, npages = starts[order], npages[order]
            joined = starts[1:] == starts[:-1] + npages[:-1]
            if joined.any():
                heads = np.flatnonzero(np.concatenate(([True], ~joined)))
                starts, npages = starts[heads], np.add.reduceat(npages, heads)
        return starts, npages, m

    def all(self) -> np.ndarray:
        """Every held block, oldest first."""
        return self._blocks(0, self.count)

    def clear(self) -> None:
        self._runs = self.count = 0

    def take_last(self, n: int) -> np.ndarray:
        """Remove the ``n`` most recently added blocks, newest first.

        A memhog-style process shrinks by unmapping the end of its region; the
        pages behind it were faulted in last, and pages faulted in one after the
        other come from the same split blocks, so freeing them lets the buddy
        allocator merge them back (freeing a random subset would leave every
        pageblock pinned by a few survivors and nothing would ever merge).
        """
        n = min(n, self.count)
        if n <= 0:
            return np.zeros(0, np.int64)
        taken = self._blocks(self.count - n, n)[::-1].copy()
        self.count -= n
        if self.count == 0:
            self._runs = 0
        else:
            r = int(np.searchsorted(self._end[: self._runs], self.count, side="left"))
            self._end[r] = self.count  # the run now holding the last block
            self._runs = r + 1
        return taken

    def slice_cyclic(self, start: int, n: int) -> np.ndarray:
        """``n`` held blocks (at most all of them) from index ``start`` on, wrapping
        around to the first after the last."""
        if self.count == 0 or n <= 0:
            return np.zeros(0, np.int64)
        return self._expand(*self._cyclic_runs_of(start, n))


def fault_in(guest, held: HeldBlocks, stats: WorkStats, order: int, mt: int, n: int, cpu: int = 0):
    """First-touch faults of n blocks of ``order``: allocated on vCPU ``cpu``, touched and
    held; blocks the allocator could not give count as failures. Returns the pfns got."""
    pfns = guest.alloc(order, mt, n, cpu)
    if len(pfns) < n:
        stats.alloc_failures += n - len(pfns)
    if len(pfns):
        held.add(pfns)
        guest.touch(*pfns_to_runs(pfns, 1 << order))
        stats.pages_allocated += len(pfns) << order
        stats.pages_touched += len(pfns) << order
    return pfns


def unmap_newest(guest, held: HeldBlocks, stats: WorkStats, order: int, n: int) -> None:
    """munmap of the n most recently faulted blocks (HeldBlocks.take_last)."""
    pfns = held.take_last(n)
    if len(pfns):
        guest.free(pfns, order)
        stats.pages_freed += len(pfns) << order


def clip_to_stop(runner, t0_ns: int, t1_ns: int) -> int | None:
    """The end of a run slice cut at the runner's stop time; None once it has stopped,
    and the runner is then marked finished (what it holds stays allocated)."""
    if runner.stop_ns is None:
        return t1_ns
    t1_ns = min(t1_ns, runner.stop_ns)
    if t0_ns >= t1_ns:
        runner.finished = True
        return None
    return t1_ns


class Memhog:
    """memhog-style phases: grow to a target, free to a target, idle, re-touch."""

    def __init__(self, config: MemhogConfig, nr_pages: int, rng: np.random.Generator):
        self.config = config
        self.nr_pages = nr_pages
        self.rng = rng
        self.order = 9 if config.thp else 0
        self.block_pages = 1 << self.order
        self.held = HeldBlocks(self.block_pages)
        self.stats = WorkStats()
        self._pacer = Pacer(self.block_pages)
        self._touch_cursor = 0
        self._phase_index = 0
        self._phase_start_ns = config.start_delay_ns
        self.stop_ns: int | None = None
        self.finished = False
        self.finished_ns: int | None = None  # when the last phase ended

    # -- time ---------------------------------------------------------------
    def _phase(self) -> PhaseConfig:
        return self.config.phases[self._phase_index]

    def _phase_end_ns(self) -> int:
        return self._phase_start_ns + self._phase().duration_ns

    def _enter_next_phase(self, at_ns: int | None = None) -> None:
        self._phase_start_ns = self._phase_end_ns() if at_ns is None else at_ns
        self._pacer.reset()
        self._phase_index += 1
        if self._phase_index == len(self.config.phases):
            if self.config.repeat:
                self._phase_index = 0
            else:
                self.finished = True
                self.finished_ns = self._phase_start_ns

    def next_event_ns(self, now_ns: int) -> int | None:
        """The earliest time this workload will do something (None: never again)."""
        if self.finished:
            return None
        if self.stop_ns is not None and now_ns >= self.stop_ns:
            return now_ns  # one more call marks it finished
        if now_ns < self._phase_start_ns:
            return self._phase_start_ns
        ph = self._phase()
        if ph.until_done and self._phase_done():
            return now_ns  # the next phase starts at once
        if ph.action == IDLE or self._phase_done():
            return self._phase_end_ns()
        return now_ns

    def _phase_done(self) -> bool:
        ph = self._phase()
        if ph.action == GROW:
            return self.held.count * self.block_pages >= self._target_pages(ph)
        if ph.action == FREE:
            return self.held.count * self.block_pages <= self._target_pages(ph)
        return ph.action == IDLE

    def _target_pages(self, ph: PhaseConfig) -> int:
        assert ph.target is not None  # PhaseConfig requires one for grow and free
        return int(ph.target * self.nr_pages) // self.block_pages * self.block_pages

    # -- work ---------------------------------------------------------------
    def run(self, guest, t0_ns: int, t1_ns: int, work_ns: int) -> None:
        """Work in [t0, t1) for at most ``work_ns`` of the guest's time (costs removed)."""
        end = clip_to_stop(self, t0_ns, t1_ns)
        if end is None:
            return
        t1_ns = end
        t = t0_ns
        instant = 0  # phases in a row that ended at once (a repeat of them must not spin)
        while not self.finished and t < t1_ns:
            if t < self._phase_start_ns:
                t = min(self._phase_start_ns, t1_ns)
                continue
            if instant > len(self.config.phases):  # every phase is done on arrival
                t = t1_ns
                continue
            end = min(self._phase_end_ns(), t1_ns)
            share = (end - t) * work_ns // max(1, t1_ns - t0_ns)
            unused = self._work(guest, share)
            if self._phase().until_done and self._phase_done():
                # done part way: the next phase starts when the work ran out
                done = end - (unused * (end - t) // share if share > 0 else end - t)
                instant = instant + 1 if done <= t else 0
                self._enter_next_phase(max(t, done))
                t = max(t, done)
                continue
            t = end
            if t == self._phase_end_ns():
                self._enter_next_phase()

    def _work(self, guest, work_ns: int) -> int:
        """Spend work_ns on the phase; returns the work ns a grow/free did not need
        because it reached its target (the rest of the credit, as time)."""
        ph = self._phase()
        if ph.action == IDLE:
            self._pacer.pay(work_ns)  # an idle phase's time pays what touches still owe
            return 0
        if work_ns <= 0:
            return work_ns if ph.until_done else 0
        pacer = self._pacer
        if ph.action == TOUCH:
            pacer.spend(guest, ph.rate, work_ns, 1 << 62, lambda k: self._retouch(guest, k))
            return 0
        if ph.action == GROW:
            want = max(0, self._target_pages(ph) // self.block_pages - self.held.count)
            _, spare = pacer.spend(guest, ph.rate, work_ns, want, lambda k: self._grow(guest, k))
        else:
            want = max(0, self.held.count - self._target_pages(ph) // self.block_pages)
            _, spare = pacer.spend(
                guest, ph.rate, work_ns, want, lambda k: self._free(guest, k), touches=False
            )
        return min(work_ns, spare) if ph.until_done else 0

    def _grow(self, guest, n: int) -> None:
        if n > 0:
            fault_in(guest, self.held, self.stats, self.order, self.config.migratetype, n)

    def _free(self, guest, n: int) -> None:
        unmap_newest(guest, self.held, self.stats, self.order, n)

    def _retouch(self, guest, n: int) -> None:
        starts, npages, blocks = self.held.page_runs_cyclic(self._touch_cursor, n)
        if blocks:
            self._touch_cursor = (self._touch_cursor + blocks) % max(1, self.held.count)
            guest.touch(starts, npages)
            self.stats.pages_touched += blocks * self.block_pages


class Idle:
    """An idle guest: optional boot noise, then nothing (reporting still runs)."""

    def __init__(self, config: IdleConfig, nr_pages: int, rng: np.random.Generator):
        self.config = config
        self.nr_pages = nr_pages
        self.rng = rng
        self.stats = WorkStats()
        self.finished = config.initial_fill == 0
        self.held = HeldBlocks()

    def next_event_ns(self, now_ns: int) -> int | None:
        return None if self.finished else now_ns

    def run(self, guest, t0_ns: int, t1_ns: int, work_ns: int) -> None:
        if self.finished:
            return
        n = int(self.config.initial_fill * self.nr_pages)
        pfns = guest.alloc(0, MIGRATE_MOVABLE, n)
        guest.touch(*pfns_to_runs(pfns, 1))
        self.rng.shuffle(pfns)
        guest.free(pfns, 0)
        self.stats.pages_allocated += len(pfns)
        self.stats.pages_touched += len(pfns)
        self.stats.pages_freed += len(pfns)
        self.finished = True


class WorkloadRunner(Protocol):
    """What the shard (and a script) drives: every workload runner has these."""

    stats: WorkStats
    finished: bool
    stop_ns: int | None

    @property
    def held(self) -> Any: ...
    def next_event_ns(self, now_ns: int) -> int | None: ...
    def run(self, guest, t0_ns: int, t1_ns: int, work_ns: int) -> None: ...


def _runners() -> dict[type, type]:
    from .kernel_noise import KernelNoise, KernelNoiseConfig
    from .pagecache import PageCacheConfig, PageCacheReader
    from .script import Script, ScriptConfig
    from .trace_replay import TraceConfig, TraceReplay
    from .willitscale import WillItScale, WillItScaleConfig

    return {
        MemhogConfig: Memhog,
        IdleConfig: Idle,
        TraceConfig: TraceReplay,
        WillItScaleConfig: WillItScale,
        PageCacheConfig: PageCacheReader,
        KernelNoiseConfig: KernelNoise,
        ScriptConfig: Script,
    }


def kind_of(runner) -> str:
    """A runner's spec kind (memhog, idle, trace, page_fault1, ...), for results."""
    test = getattr(getattr(runner, "config", None), "test", None)
    if test is not None:  # will-it-scale: page_fault1 or page_fault2
        return str(test)
    return _KIND_NAMES.get(type(runner).__name__, type(runner).__name__.lower())


_KIND_NAMES = {
    "Memhog": "memhog",
    "Idle": "idle",
    "TraceReplay": "trace",
    "PageCacheReader": "page_cache",
    "KernelNoise": "kernel_noise",
    "Script": "script",
}


def ops_by_kind(runner) -> dict[str, int]:
    """Page operations completed per workload kind (a script by its steps' kinds)."""
    steps = getattr(runner, "_all", None)
    if steps is None:
        return {kind_of(runner): runner.stats.ops}
    out: dict[str, int] = {}
    for step in steps:
        for kind, ops in ops_by_kind(step.runner).items():
            out[kind] = out.get(kind, 0) + ops
    return out


def leaf_runners(runner) -> list:
    """The runner itself, or a script's steps' runners (recursively), in start order."""
    steps = getattr(runner, "_all", None)
    if steps is None:
        return [runner]
    return [leaf for step in steps for leaf in leaf_runners(step.runner)]


def make_workload(
    config, nr_pages: int, rng: np.random.Generator, start_ns: int = 0, stop_ns: int | None = None
) -> WorkloadRunner:
    """Build the runner for a workload config (a discriminated union of dataclasses).

    ``start_ns`` shifts the workload's clock (a workload started mid-run);
    ``stop_ns`` ends it early (it keeps what it holds). An idle workload has no clock.
    """
    runner = _runners().get(type(config))
    if runner is None:
        raise ValueError(f"workload: unknown config type {type(config).__name__}")
    if start_ns and hasattr(config, "start_delay_ns"):
        config = replace(config, start_delay_ns=config.start_delay_ns + start_ns)
    w = runner(config, nr_pages, rng)
    if hasattr(w, "stop_ns"):
        w.stop_ns = stop_ns
    return w


__all__ = [
    "Idle",
    "IdleConfig",
    "Memhog",
    "MemhogConfig",
    "Pacer",
    "PhaseConfig",
    "WorkStats",
    "WorkloadRunner",
    "kind_of",
    "leaf_runners",
    "make_workload",
    "ops_by_kind",
    "pfns_to_runs",
]
