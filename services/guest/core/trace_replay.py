"""Replay of one VM's memory usage over time (the ``trace`` workload).

A trace is a series of samples "from time t the VM uses n pages (and optionally c
pages of page cache)". The replay grows and shrinks anonymous memory towards each
sample's target at the grow and free rates, paid from the guest's time like a
memhog phase (:class:`~services.guest.core.workloads.Pacer`), and reads file pages
into the guest's page cache or gives them back to follow the cache target. The
loaders of the public trace formats are the orchestration layer's
(``services/sim/traces.py``); this module takes arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .constants import MIGRATE_MOVABLE
from .workloads import (
    DEFAULT_FREE_BYTES_PER_S,
    DEFAULT_GROW_BYTES_PER_S,
    HeldBlocks,
    Pacer,
    WorkStats,
    clip_to_stop,
    fault_in,
    pfns_to_runs,
    unmap_newest,
)


@dataclass(frozen=True, eq=False)
class TraceConfig:
    """Replay of one VM's memory usage: anonymous memory held follows ``target_pages``.

    Sample i says "from ``times_ns[i]`` (after the workload's start) the VM uses
    ``target_pages[i]`` pages"; the workload grows or shrinks towards it at its
    grow/free rates and holds it until the next sample. After the last sample it
    holds the last value and is done once there. Arrays, not a Python object per
    sample: a fleet replays thousands of traces of thousands of samples."""

    times_ns: np.ndarray  # int64, strictly ascending, >= 0
    target_pages: np.ndarray  # int64, >= 0 (clipped to the guest's pages)
    thp: bool = False  # order-9 blocks, as an MADV_HUGEPAGE heap
    # clean page cache at each sample, beside the anonymous memory (None: no cache);
    # read in at grow_bytes_per_s, given back oldest first when the trace shrinks it
    cache_pages: np.ndarray | None = None
    grow_bytes_per_s: int = DEFAULT_GROW_BYTES_PER_S
    free_bytes_per_s: int = DEFAULT_FREE_BYTES_PER_S
    start_delay_ns: int = 0
    migratetype: int = MIGRATE_MOVABLE
    name: str = ""  # the trace's name, for messages

    def __post_init__(self) -> None:
        t = np.asarray(self.times_ns)
        p = np.asarray(self.target_pages)
        if t.ndim != 1 or p.ndim != 1 or len(t) != len(p) or len(t) == 0:
            raise ValueError(
                f"trace {self.name!r}: times_ns and target_pages must be 1-D, non-empty and "
                f"of one length, got {t.shape} and {p.shape}"
            )
        if t[0] < 0 or (len(t) > 1 and bool((np.diff(t) <= 0).any())):
            raise ValueError(f"trace {self.name!r}: times_ns must be >= 0 and strictly ascending")
        if bool((p < 0).any()):
            raise ValueError(f"trace {self.name!r}: target_pages must be >= 0")
        if self.cache_pages is not None:
            c = np.asarray(self.cache_pages)
            if c.shape != p.shape or bool((c < 0).any()):
                raise ValueError(
                    f"trace {self.name!r}: cache_pages must be >= 0, one per sample, got {c.shape}"
                )
            object.__setattr__(self, "cache_pages", c.astype(np.int64, copy=True))
            self.cache_pages.flags.writeable = False
        for field in ("grow_bytes_per_s", "free_bytes_per_s"):
            if getattr(self, field) <= 0:
                raise ValueError(f"trace.{field} must be > 0, got {getattr(self, field)}")
        if self.start_delay_ns < 0:
            raise ValueError(f"trace.start_delay_ns must be >= 0, got {self.start_delay_ns}")
        object.__setattr__(self, "times_ns", t.astype(np.int64, copy=True))
        object.__setattr__(self, "target_pages", p.astype(np.int64, copy=True))
        self.times_ns.flags.writeable = False
        self.target_pages.flags.writeable = False


class TraceReplay:
    """Grows and shrinks anonymous memory to follow a trace (see TraceConfig).

    Segment i runs from sample i to sample i+1 (the last one has no end). Within a
    segment the workload moves towards its target at the grow or free rate, paid for
    out of the guest's working time like a memhog phase, and then waits; shrinking
    unmaps the most recently faulted memory first (HeldBlocks.take_last)."""

    def __init__(self, config: TraceConfig, nr_pages: int, rng: np.random.Generator):
        self.config = config
        self.nr_pages = nr_pages
        self.rng = rng
        self.order = 9 if config.thp else 0
        self.block_pages = 1 << self.order
        self.held = HeldBlocks(self.block_pages)
        self.stats = WorkStats()
        self._target_blocks = np.minimum(config.target_pages, nr_pages) // self.block_pages
        self._pacer = Pacer(self.block_pages)
        self._cache_target = None if config.cache_pages is None else config.cache_pages
        self._cache_pacer = Pacer(1)
        self.cache_held = 0  # pages of this trace in the guest's page cache
        self._cache_owner: int | None = None
        self._cache_file_page = 0  # the next file page read (a counter: only counts matter)
        self._seg = 0
        self.stop_ns: int | None = None
        self.finished = False

    def _seg_start_ns(self, i: int) -> int:
        return self.config.start_delay_ns + int(self.config.times_ns[i])

    def _seg_end_ns(self, i: int) -> int | None:
        if i + 1 < len(self.config.times_ns):
            return self._seg_start_ns(i + 1)
        return None

    def target_blocks(self) -> int:
        """The blocks the current segment asks for."""
        return int(self._target_blocks[self._seg])

    def cache_target(self) -> int:
        """The page-cache pages the current segment asks for (0 without cache)."""
        return 0 if self._cache_target is None else int(self._cache_target[self._seg])

    def _at_target(self) -> bool:
        return self.held.count == self.target_blocks() and self.cache_held == self.cache_target()

    def evicted(self, fpages: np.ndarray) -> None:
        self.cache_held -= len(fpages)

    def next_event_ns(self, now_ns: int) -> int | None:
        if self.finished:
            return None
        if self.stop_ns is not None and now_ns >= self.stop_ns:
            return now_ns
        start = self._seg_start_ns(self._seg)
        if now_ns < start:
            return start
        if not self._at_target():
            return now_ns
        end = self._seg_end_ns(self._seg)
        return now_ns if end is None else end  # at the last target: one call finishes it

    def run(self, guest, t0_ns: int, t1_ns: int, work_ns: int) -> None:
        """Work in [t0, t1) for at most ``work_ns`` of the guest's time (costs removed)."""
        end = clip_to_stop(self, t0_ns, t1_ns)
        if end is None:
            return
        t1_ns = end
        t = t0_ns
        while not self.finished and t < t1_ns:
            start = self._seg_start_ns(self._seg)
            if t < start:
                t = min(start, t1_ns)
                continue
            seg_end = self._seg_end_ns(self._seg)
            end = t1_ns if seg_end is None else min(seg_end, t1_ns)
            share = (end - t) * work_ns // max(1, t1_ns - t0_ns)
            self._work(guest, share)
            t = end
            if seg_end is not None and t == seg_end:
                self._seg += 1
                self._pacer.reset()
                self._cache_pacer.reset()
            elif seg_end is None and self._at_target():
                self.finished = True

    def _work(self, guest, work_ns: int) -> None:
        """Move the anonymous memory towards its target, then, with the time left, the
        page cache (reads at the grow rate; a smaller cache gives back its oldest pages)."""
        # both pacers' debts are paid first, whatever moves now (one time line)
        work_ns = self._cache_pacer.pay(self._pacer.pay(work_ns))
        want = self.target_blocks() - self.held.count
        if work_ns <= 0:
            return
        cfg = self.config
        spare = work_ns
        if want > 0:
            _, spare = self._pacer.spend(
                guest, cfg.grow_bytes_per_s, work_ns, want,
                lambda k: fault_in(guest, self.held, self.stats, self.order, cfg.migratetype, k),
            )  # fmt: skip
        elif want < 0:
            _, spare = self._pacer.spend(
                guest, cfg.free_bytes_per_s, work_ns, -want,
                lambda k: unmap_newest(guest, self.held, self.stats, self.order, k),
                touches=False,
            )  # fmt: skip
        if self._cache_target is not None and spare > 0:
            self._work_cache(guest, spare)

    def _work_cache(self, guest, work_ns: int) -> None:
        cache = guest.page_cache
        if self._cache_owner is None:
            self._cache_owner = cache.register(self)
        want = self.cache_target() - self.cache_held
        if want < 0:
            self.stats.pages_freed += cache.shrink(self._cache_owner, -want)
        elif want > 0:
            self._cache_pacer.spend(
                guest, self.config.grow_bytes_per_s, work_ns, want, lambda k: self._read(guest, k)
            )

    def _read(self, guest, n: int) -> None:
        """Read n file pages into the page cache (allocated, filled, cached)."""
        pfns = guest.alloc(0, MIGRATE_MOVABLE, n)
        self.stats.alloc_failures += n - len(pfns)
        if len(pfns):
            guest.touch(*pfns_to_runs(pfns, 1))
            fpages = self._cache_file_page + np.arange(len(pfns), dtype=np.int64)
            self._cache_file_page += len(pfns)
            guest.page_cache.add(pfns, self._cache_owner, fpages)
            self.cache_held += len(pfns)
            self.stats.pages_allocated += len(pfns)
            self.stats.pages_touched += len(pfns)


__all__ = ["TraceConfig", "TraceReplay"]
