"""The host: physical pool, guests placed on it, their page state, and counters.

`Host` validates every batch completely before it changes anything, calls one
numba kernel per batch (discard.py, fault.py, reclaim.py), prices what the
kernel counted with costs.py, and keeps plain-int counters for the metrics
layer. Page and granule state is laid out as described in pagestate.py.

Out of memory (a frame is needed, nothing is lazily freed, swap is full):
policy `stop_largest` stops the guest with the largest footprint on this host
(backed + lazy + swapped pages; ties: the lowest guest id), releasing all its
memory; later calls for it raise ValueError. Policy `refuse` leaves the page
as it was and reports it in `TouchResult.refused_pages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from services.lazymem import lazy_copy

from . import costs
from .config import (
    DISCARD_DISABLED,
    DISCARD_DONTNEED,
    DISCARD_FREE,
    DISCARD_MODES,
    OOM_REFUSE,
    HostConfig,
)
from .counters import (
    add_touch,
    guest_view,
    new_guest_counters,
    price_touch,
    sum_guest_views,
)
from .discard import report_kernel
from .fault import (
    POS_GROUP,
    POS_GUEST,
    new_touch_pos,
    reset_touch_pos,
    touch_batch_kernel,
    touch_kernel,
)
from .pagestate import (
    EV_FAULT_4K,
    EV_FAULT_HUGE,
    EV_LAZY_REUSE,
    EV_OOM,
    EV_PRIOR_UNBACKED,
    EV_RECLAIM_DISK,
    EV_RECLAIM_LAZY,
    EV_RECLAIM_ZSWAP,
    EV_REFAULT_HUGE,
    EV_REFAULT_PAGES,
    EV_REFUSED,
    G_ZSWAP,
    GK_EMPTY,
    GK_MASK,
    GK_PAGES,
    H_LAZY_PAGES,
    H_LOG_N,
    H_POOL_BYTES,
    H_SCANNED_PAGES,
    H_SWAP_USED_PAGES,
    H_ZSWAP_BYTES,
    NER,
    NEV,
    NG,
    NH,
    NP,
    P_GRAN_SHIFT,
    P_HUGE_FAULTS,
    P_HUGETLB,
    P_LIMIT_BYTES,
    P_LOG_RESERVE,
    P_REFUSE,
    P_SWAP_CAP_PAGES,
    P_ZSWAP_CBYTES,
    P_ZSWAP_COUNTS,
    P_ZSWAP_MAX_BYTES,
    P_ZSWAP_ON,
    PAGE_SIZE,
    REPORT_ACK_ONLY,
    REPORT_DONTNEED,
    REPORT_FREE,
    RES_BACKED,
    RES_LAZY,
    RES_MASK,
    RES_NAMES,
    RES_SWAPPED,
    RES_UNBACKED,
    ST_DONE,
    ST_LOG_FULL,
    swapped_runs_kernel,
)
from .reclaim import reclaim_kernel
from .swap import log_runs_kernel, swapout_cost_ns
from .validate import validate_ranges, validate_runs

_REPORT_MODE = {
    DISCARD_DONTNEED: REPORT_DONTNEED,
    DISCARD_FREE: REPORT_FREE,
    DISCARD_DISABLED: REPORT_ACK_ONLY,
}


@dataclass(frozen=True)
class ReportResult:
    """Outcome of one report call (one virtqueue buffer)."""

    latency_ns: int  # round trip: one exit plus the discards, blocks the reporting worker
    ranges: int
    pages_reported: int
    ranges_applied: int
    ranges_ignored: int  # hugetlbfs: smaller than or misaligned to the huge page
    released_pages: int  # frames released now
    lazy_pages: int  # pages made lazily freeable (MADV_FREE)
    swap_freed_pages: int
    thp_splits: int


@dataclass(frozen=True)
class TouchResult:
    """Outcome of one batch of touches for one guest."""

    lost_ns: dict[str, int]  # per kind in LOST_KINDS: simulated time the guest lost
    prior_pages: dict[str, int]  # touched pages by residency before the touch
    refused_pages: int = 0
    refault_pages: int = 0  # pages faulted again after a report discarded them while backed
    refault_huge_faults: int = 0  # huge faults among those refaults (one per granule)
    lazy_reuse_pages: int = 0
    zeroed_bytes: int = 0
    oom_events: int = 0
    stopped_guests: tuple[int, ...] = ()

    @property
    def total_lost_ns(self) -> int:
        return sum(self.lost_ns.values())


@dataclass
class _Guest:
    guest_id: int
    slot: int
    nr_pages: int
    discard_mode: str
    stopped: bool = False
    counters: dict[str, int] = field(default_factory=new_guest_counters)


class Host:
    """A host's memory: capacity, reserve, the guests on it and their pages."""

    def __init__(self, host_id: int, config: HostConfig):
        if not isinstance(config, HostConfig):
            raise ValueError(f"config must be a HostConfig, got {config!r}")
        self.host_id = host_id
        self.config = config
        self._gran_pages = config.granule_pages
        self._shift = self._gran_pages.bit_length() - 1
        zs = config.zswap
        cbytes = zs.compressed_page_bytes
        p = np.zeros(NP, np.int64)
        p[P_LIMIT_BYTES] = config.limit_bytes
        p[P_GRAN_SHIFT] = self._shift
        p[P_HUGE_FAULTS] = int(config.hugetlb or config.thp)
        p[P_HUGETLB] = int(config.hugetlb)
        p[P_ZSWAP_ON] = int(zs.enabled)
        p[P_ZSWAP_CBYTES] = cbytes
        p[P_ZSWAP_MAX_BYTES] = zs.max_pool_bytes
        p[P_ZSWAP_COUNTS] = int(zs.enabled and zs.counts_against_host)
        p[P_SWAP_CAP_PAGES] = config.swap.capacity_bytes // PAGE_SIZE
        p[P_REFUSE] = int(config.oom_policy == OOM_REFUSE)
        # Swap-outs one page may need: a huge fault needs a granule of frames; each
        # page stored in a counted zswap pool frees only 4096 - cbytes.
        per_frame = -(-PAGE_SIZE // (PAGE_SIZE - cbytes)) if p[P_ZSWAP_COUNTS] else 1
        p[P_LOG_RESERVE] = 1 if config.hugetlb else self._gran_pages * per_frame + 8
        self._p = p
        self._hs = np.zeros(NH, np.int64)
        self._state = np.zeros(0, np.uint8)  # a view of _state_buf (_grow_state)
        self._state_buf: np.ndarray | None = None
        self._gran = np.zeros(0, np.uint8)
        self._gused = np.zeros(0, np.uint32)
        self._gstat = np.zeros((0, NG), np.int64)
        self._offsets = np.zeros(1, np.int64)
        self._log = np.zeros(max(4096, 4 * int(p[P_LOG_RESERVE])), np.int64)
        self._guests: dict[int, _Guest] = {}
        self._by_slot: list[_Guest] = []
        self._host = {"oom_events": 0, "background_reclaim_ns": 0, "background_reclaim_pages": 0}

    # ----------------------------------------------------------------- placement

    def add_guest(self, guest_id: int, nr_pages: int, discard_mode: str = "dontneed") -> None:
        """Place a guest of `nr_pages` 4 KiB pages (a multiple of the granule) on this host."""
        if not isinstance(guest_id, int | np.integer) or isinstance(guest_id, bool):
            raise ValueError(f"guest_id must be an int, got {guest_id!r}")
        guest_id = int(guest_id)
        if guest_id in self._guests:
            raise ValueError(f"guest_id {guest_id} is already placed on host {self.host_id}")
        if not isinstance(nr_pages, int | np.integer) or nr_pages <= 0:
            raise ValueError(f"nr_pages must be a positive int, got {nr_pages!r}")
        nr_pages = int(nr_pages)
        if nr_pages % self._gran_pages:
            raise ValueError(
                f"nr_pages must be a multiple of the {self._gran_pages}-page granule, got {nr_pages}"
            )
        if discard_mode not in DISCARD_MODES:
            raise ValueError(f"discard_mode must be one of {DISCARD_MODES}, got {discard_mode!r}")
        ratio = self.config.max_overcommit_ratio
        if ratio is not None:
            placed = sum(g.nr_pages for g in self._guests.values() if not g.stopped)
            new_ratio = (placed + nr_pages) * PAGE_SIZE / self.config.memory_bytes
            if new_ratio > ratio:
                raise ValueError(
                    f"add_guest {guest_id}: nr_pages {nr_pages} brings the overcommit ratio to "
                    f"{new_ratio:.3f}, over max_overcommit_ratio {ratio}"
                )
        slot = len(self._by_slot)
        rec = _Guest(guest_id, slot, nr_pages, discard_mode)
        self._grow_state(nr_pages)
        ngran = nr_pages >> self._shift
        self._gran = np.concatenate([self._gran, np.full(ngran, GK_EMPTY, np.uint8)])
        self._gused = np.concatenate([self._gused, np.zeros(ngran, np.uint32)])
        row = np.zeros((1, NG), np.int64)
        row[0, RES_UNBACKED] = nr_pages
        self._gstat = np.concatenate([self._gstat, row])
        self._offsets = np.append(self._offsets, self._offsets[-1] + nr_pages)
        self._guests[guest_id] = rec
        self._by_slot.append(rec)
        self._debug_check()

    def _grow_state(self, nr_pages: int) -> None:
        """Room for nr_pages more page states. ``_state`` is a view of a lazily
        resident buffer (services.lazymem) grown by doubling, so that adding a guest
        neither copies every state before it nor makes its never-touched pages
        resident."""
        n = len(self._state)
        buf = self._state_buf
        if buf is None or len(buf) < n + nr_pages:
            cap = max(n + nr_pages, 2 * (0 if buf is None else len(buf)))
            buf = lazy_copy(self._state, cap)
            self._state_buf = buf
        self._state = buf[: n + nr_pages]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_state_buf"] = None  # _state holds every page state; the spare room is not
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._state = lazy_copy(self._state)  # restored with the footprint it had
        self._state_buf = self._state

    def guest_ids(self) -> list[int]:
        return list(self._guests)

    def is_stopped(self, guest_id: int) -> bool:
        return self._lookup(guest_id).stopped

    # ------------------------------------------------------------------- reports

    def apply_report(self, guest_id: int, pfns, orders) -> ReportResult:
        """Apply one report buffer of (pfn, order) ranges with the guest's discard mode."""
        rec = self._live(guest_id)
        pfns, orders = self._validate_ranges(rec, pfns, orders)
        er = np.zeros(NER, np.int64)
        report_kernel(
            self._state, self._gran, self._gused, self._gstat, self._hs, self._p,
            self._offsets, rec.slot, pfns, orders, _REPORT_MODE[rec.discard_mode], er,
        )  # fmt: skip
        (applied, ignored, released, lazied, swap_freed, splits, pages, d4k, d2m) = er.tolist()
        cm = self.config.costs
        latency = costs.report_ns(cm, 1) + costs.discard_ns(cm, d4k, d2m)
        c = rec.counters
        c["reports"] += 1
        c["report_ranges"] += pfns.size
        c["reported_pages"] += pages
        c["discard_ranges"] += applied
        c["discard_ranges_ignored"] += ignored
        c["discarded_pages"] += released
        c["lazyfreed_pages"] += lazied
        c["swap_freed_pages"] += swap_freed
        c["lost_report_ns"] += latency
        self._debug_check()
        return ReportResult(
            latency_ns=latency,
            ranges=pfns.size,
            pages_reported=pages,
            ranges_applied=applied,
            ranges_ignored=ignored,
            released_pages=released,
            lazy_pages=lazied,
            swap_freed_pages=swap_freed,
            thp_splits=splits,
        )

    # ------------------------------------------------------------------- touches

    def apply_touch(self, guest_id: int, starts, npages) -> TouchResult:
        """Apply touches of runs (start pfn, npages); reclaims inline when the pool is full."""
        rec = self._live(guest_id)
        starts, npages = self._validate_runs(rec, starts, npages)
        ev = np.zeros(NEV, np.int64)
        pos = new_touch_pos(rec.slot, self._offsets)
        stopped: list[int] = []

        def stop_one() -> bool:  # ST_OOM under the stop_largest policy
            victim = self._oom_victim(rec)
            self._stop_guest(victim)
            stopped.append(victim.guest_id)
            return victim is rec  # then the rest of the call is not applied

        def call() -> int:
            return touch_kernel(
                self._state, self._gran, self._gused, self._gstat, self._hs, self._p,
                self._offsets, self._log, ev, starts, npages, pos,
            )  # fmt: skip

        self._touch_until_done(call, stop_one)
        result = self._account_touch(rec, ev, len(stopped), tuple(stopped))
        self._debug_check()
        return result

    def _account_touch(
        self, rec: _Guest, events: np.ndarray, oom_stops: int, stopped
    ) -> TouchResult:
        ev: list[int] = events.tolist()
        lost = price_touch(self.config.costs, ev, self._gran_pages)
        prior, zeroed, oom = self._count_touch(rec, ev, lost, oom_stops)
        return TouchResult(
            lost_ns=lost,
            prior_pages=prior,
            refused_pages=ev[EV_REFUSED],
            refault_pages=ev[EV_REFAULT_PAGES],
            refault_huge_faults=ev[EV_REFAULT_HUGE],
            lazy_reuse_pages=ev[EV_LAZY_REUSE],
            zeroed_bytes=zeroed,
            oom_events=oom,
            stopped_guests=stopped,
        )

    def apply_touch_batch(
        self,
        guest_ids: list[int],
        starts: np.ndarray,
        npages: np.ndarray,
        run_bounds: np.ndarray,
        group_bounds: np.ndarray,
    ) -> list[tuple[dict[str, int], dict[str, int]] | None]:
        """``apply_touch`` of every touch operation of several guests, one after another,
        in one kernel call: guest ``guest_ids[j]`` owns the operations (groups of runs)
        [group_bounds[j], group_bounds[j + 1]); operation g is runs [run_bounds[g],
        run_bounds[g + 1]) of ``starts``/``npages`` (int64). Host state, counters and
        prices come out as with one ``apply_touch`` per operation (each priced on its
        own). A guest the OOM policy stops is not touched again, as the caller skips a
        stopped guest's operations. Returns per guest the lost time per kind and the
        touched pages per prior residency, summed over its operations; None for a
        guest stopped before its first operation."""
        recs = [self._live(gid) for gid in guest_ids]
        run_bounds = np.asarray(run_bounds, dtype=np.int64)
        group_bounds = np.asarray(group_bounds, dtype=np.int64)
        ngroups = run_bounds.size - 1
        if (
            ngroups < 0
            or group_bounds.size != len(recs) + 1
            or run_bounds[0] != 0
            or run_bounds[-1] != starts.size
            or group_bounds[0] != 0
            or group_bounds[-1] != ngroups
            or (np.diff(run_bounds) < 0).any()
            or (np.diff(group_bounds) < 0).any()
            or starts.dtype != np.int64
            or npages.dtype != np.int64
            or starts.size != npages.size
        ):
            raise ValueError("touch batch: bounds or run arrays do not fit each other")
        runs_per_guest = np.diff(run_bounds[group_bounds])
        limit = np.repeat(np.array([r.nr_pages for r in recs], np.int64), runs_per_guest)
        if ((starts < 0) | (npages <= 0) | (starts + npages > limit)).any():
            for j, rec in enumerate(recs):  # name the first bad run, as apply_touch does
                lo, hi = run_bounds[group_bounds[j]], run_bounds[group_bounds[j + 1]]
                self._validate_runs(rec, starts[lo:hi], npages[lo:hi])
        ev2d = np.zeros((ngroups, NEV), np.int64)
        slots = np.array([r.slot for r in recs], np.int64)
        skip = np.zeros(len(recs), np.int64)
        oom_stops = [0] * ngroups
        pos = new_touch_pos(0, self._offsets)

        def stop_one() -> bool:  # ST_OOM under the stop_largest policy
            j, g = int(pos[POS_GUEST]), int(pos[POS_GROUP])
            oom_stops[g] += 1
            victim = self._oom_victim(recs[j])
            self._stop_guest(victim)
            if victim is recs[j]:  # its later operations are skipped
                skip[j] = 1
                reset_touch_pos(pos)
                pos[POS_GUEST], pos[POS_GROUP] = j + 1, group_bounds[j + 1]
            else:
                for k in range(j + 1, len(recs)):
                    if recs[k] is victim:  # stopped before its turn: none of it is applied
                        skip[k] = 2
            return False  # the other guests go on

        def call() -> int:
            return touch_batch_kernel(
                self._state, self._gran, self._gused, self._gstat, self._hs, self._p,
                self._offsets, self._log, ev2d, starts, npages, run_bounds, slots,
                group_bounds, skip, pos,
            )  # fmt: skip

        self._touch_until_done(call, stop_one)
        rows = ev2d.tolist()
        out: list[tuple[dict[str, int], dict[str, int]] | None] = []
        for j, rec in enumerate(recs):
            g0, g1 = int(group_bounds[j]), int(group_bounds[j + 1])
            if skip[j] == 2 or g0 == g1:
                out.append(None)
                continue
            out.append(self._account_touches(rec, rows[g0:g1], sum(oom_stops[g0:g1])))
        self._debug_check()
        return out

    def _touch_until_done(self, call, stop_one) -> None:
        """Run a touch kernel ``call`` (it resumes from its position vector) until it is
        done: grow the swap-out log when it asks, and when it finds no frame (ST_OOM)
        let ``stop_one`` apply the OOM policy; ``stop_one`` returns True to end here."""
        while True:
            status = call()
            if status == ST_DONE:
                return
            if status == ST_LOG_FULL:
                self._grow_log()
            elif stop_one():
                return

    def _account_touches(
        self, rec: _Guest, rows: list[list[int]], oom_stops: int
    ) -> tuple[dict[str, int], dict[str, int]]:
        """``_account_touch`` of one guest's operations at once: every counter is a sum over
        them, so their event rows are summed first; only the price is taken per operation
        (its rounding is per call)."""
        ev = rows[0] if len(rows) == 1 else [sum(col) for col in zip(*rows, strict=True)]
        lost = price_touch(self.config.costs, rows[0], self._gran_pages)
        for row in rows[1:]:
            for kind, ns in price_touch(self.config.costs, row, self._gran_pages).items():
                lost[kind] += ns
        prior, _, _ = self._count_touch(rec, ev, lost, oom_stops)
        return lost, prior

    def _count_touch(
        self, rec: _Guest, ev: list[int], lost: dict[str, int], oom_stops: int
    ) -> tuple[dict[str, int], int, int]:
        """Add priced touch events (one call's, or several calls' summed) to the guest's
        counters and the host's; returns (pages per prior residency, bytes zero-filled,
        OOM events)."""
        prior = {name: ev[EV_PRIOR_UNBACKED + k] for k, name in enumerate(RES_NAMES)}
        zeroed = (ev[EV_FAULT_4K] + ev[EV_FAULT_HUGE] * self._gran_pages) * PAGE_SIZE
        oom = ev[EV_OOM] + oom_stops
        self._host["oom_events"] += oom
        add_touch(rec.counters, ev, lost, zeroed, oom)
        return prior, zeroed, oom

    # ------------------------------------------------------------------- reclaim

    def reclaim(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Reclaim down to the limit, then return, per guest, the ranges swapped out since
        the last call that are still swapped: guest_id -> (start pfns, npages), ascending.
        """
        if self._hs[H_POOL_BYTES] <= self._p[P_LIMIT_BYTES] and self._hs[H_LOG_N] == 0:
            return {}  # nothing to reclaim and nothing swapped since the last call
        ev = np.zeros(NEV, np.int64)
        self._ensure_log_room()
        reclaim_kernel(
            self._state, self._gran, self._gused, self._gstat, self._hs, self._p,
            self._offsets, self._log, ev,
        )  # fmt: skip
        cm = self.config.costs
        self._host["background_reclaim_ns"] += swapout_cost_ns(
            cm, int(ev[EV_RECLAIM_DISK]), int(ev[EV_RECLAIM_ZSWAP])
        )
        self._host["background_reclaim_pages"] += int(
            ev[EV_RECLAIM_DISK] + ev[EV_RECLAIM_ZSWAP] + ev[EV_RECLAIM_LAZY]
        )
        out = self._drain_log()
        self._debug_check()
        return out

    def _swapped_log_entries(self) -> np.ndarray:
        idx = np.unique(self._log[: self._hs[H_LOG_N]])
        if idx.size == 0:
            return idx
        live = (self._state[idx] & RES_MASK == RES_SWAPPED) & (
            self._gran[idx >> self._shift] & GK_MASK == GK_PAGES
        )
        return idx[live]

    def _drain_log(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        n = int(self._hs[H_LOG_N])
        self._hs[H_LOG_N] = 0
        if n == 0:
            return {}
        slots, starts, npages = log_runs_kernel(
            self._log, n, self._state, self._gran, self._shift, self._offsets
        )
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        cuts = np.flatnonzero(slots[1:] != slots[:-1]) + 1
        bounds = np.concatenate(([0], cuts, [slots.size]))
        for lo, hi in pairwise(bounds):
            if hi > lo:
                out[self._by_slot[int(slots[lo])].guest_id] = (starts[lo:hi], npages[lo:hi])
        return out

    def _grow_log(self) -> None:
        kept = self._swapped_log_entries()
        size = max(self._log.size, 2 * kept.size + 4 * int(self._p[P_LOG_RESERVE]))
        log = np.zeros(size, np.int64)
        log[: kept.size] = kept
        self._log = log
        self._hs[H_LOG_N] = kept.size

    def _ensure_log_room(self) -> None:
        """Room for every swap-out that bringing the pool under the limit may need."""
        p = self._p
        excess = max(0, int(self._hs[H_POOL_BYTES] - p[P_LIMIT_BYTES]))
        freed = PAGE_SIZE - int(p[P_ZSWAP_CBYTES]) if p[P_ZSWAP_COUNTS] else PAGE_SIZE
        need = excess // freed + 2 + int(p[P_LOG_RESERVE])
        if self._log.size - int(self._hs[H_LOG_N]) < need:
            self._grow_log()
        if self._log.size - int(self._hs[H_LOG_N]) < need:
            log = np.zeros(int(self._hs[H_LOG_N]) + need, np.int64)
            log[: self._hs[H_LOG_N]] = self._log[: self._hs[H_LOG_N]]
            self._log = log

    def _ensure_log_room_pages(self, swapouts: int) -> None:
        """Room for `swapouts` more log entries (benchmarks call the reclaim kernel directly)."""
        n = int(self._hs[H_LOG_N])
        if self._log.size - n < swapouts:
            log = np.zeros(n + 2 * swapouts, np.int64)
            log[:n] = self._log[:n]
            self._log = log

    # --------------------------------------------------------------------- OOM

    def _footprint_pages(self, rec: _Guest) -> int:
        row = self._gstat[rec.slot]
        return int(row[RES_BACKED] + row[RES_LAZY] + row[RES_SWAPPED])

    def _oom_victim(self, caller: _Guest) -> _Guest:
        live = [g for g in self._by_slot if not g.stopped]
        victim = max(live, key=lambda g: (self._footprint_pages(g), -g.guest_id))
        if self._footprint_pages(victim) == 0:
            return caller  # nothing to free anywhere: the request itself cannot fit
        return victim

    def _stop_guest(self, rec: _Guest) -> None:
        """Stop a guest: release every frame, swap slot and zswap entry it holds."""
        slot, row, hs, p = rec.slot, self._gstat[rec.slot], self._hs, self._p
        zs = int(row[G_ZSWAP])
        cbytes = int(p[P_ZSWAP_CBYTES])
        hs[H_POOL_BYTES] -= int(row[RES_BACKED] + row[RES_LAZY]) * PAGE_SIZE
        if p[P_ZSWAP_COUNTS]:
            hs[H_POOL_BYTES] -= zs * cbytes
        hs[H_SWAP_USED_PAGES] -= int(row[RES_SWAPPED]) - zs
        hs[H_ZSWAP_BYTES] -= zs * cbytes
        hs[H_LAZY_PAGES] -= int(row[RES_LAZY])
        row[: RES_SWAPPED + 1] = 0
        row[RES_UNBACKED] = rec.nr_pages
        row[G_ZSWAP] = 0
        lo, hi = int(self._offsets[slot]), int(self._offsets[slot + 1])
        seg = self._state[lo:hi]
        seg[seg != 0] = 0  # only the pages written: the rest stays unbacked here too
        self._gran[lo >> self._shift : hi >> self._shift] = GK_EMPTY
        self._gused[lo >> self._shift : hi >> self._shift] = 0
        rec.stopped = True

    def residency(self, guest_id: int) -> np.ndarray:
        """Per-page residency of a guest (uint8, RES_UNBACKED..RES_SWAPPED; tests, debugging)."""
        rec = self._lookup(guest_id)
        lo, hi = int(self._offsets[rec.slot]), int(self._offsets[rec.slot + 1])
        kinds = self._gran[lo >> self._shift : hi >> self._shift] & GK_MASK
        by_kind = np.array([0, RES_UNBACKED, RES_BACKED, RES_LAZY], np.uint8)
        out = np.repeat(by_kind[kinds], self._gran_pages)
        pages = np.repeat(kinds == GK_PAGES, self._gran_pages)
        out[pages] = self._state[lo:hi][pages] & RES_MASK
        return out

    def swapped_runs(self, guest_id: int, starts, npages) -> tuple[np.ndarray, np.ndarray]:
        """The parts of a guest's page runs that are swapped out now (int64 starts, npages)."""
        rec = self._lookup(guest_id)
        starts, npages = self._validate_runs(rec, starts, npages)
        lo = int(self._offsets[rec.slot])
        out_s = np.empty(int(npages.sum()), np.int64)
        out_n = np.empty_like(out_s)
        m = swapped_runs_kernel(
            self._state, self._gran, self._shift, lo, starts, npages, out_s, out_n
        )
        return out_s[:m].copy(), out_n[:m].copy()

    # ------------------------------------------------------------------ counters

    def top_guests(self, k: int) -> list[tuple[int, dict[str, int]]]:
        """The ``k`` guests with the most backed memory (ties: lower id first), with
        their counters: (guest id, counters) each."""
        views = {g: self.guest_counters(g) for g in self._guests}
        top = sorted(views, key=lambda g: (-views[g]["backed_bytes"], g))[:k]
        return [(g, views[g]) for g in top]

    def guest_counters(self, guest_id: int) -> dict[str, int]:
        """Plain-int counters of one guest (stopped guests included)."""
        rec = self._lookup(guest_id)
        return guest_view(self._gstat[rec.slot], rec.counters, rec.nr_pages, rec.stopped)

    def host_counters(self) -> dict[str, int]:
        """Host totals: capacity and pool, swap, and every guest counter summed."""
        cfg, hs = self.config, self._hs
        out = {
            "memory_bytes": cfg.memory_bytes,
            "reserve_bytes": cfg.reserve_bytes,
            "limit_bytes": cfg.limit_bytes,
            "pool_used_bytes": int(hs[H_POOL_BYTES]),
            "swap_capacity_bytes": cfg.swap.capacity_bytes,
            "swap_used_bytes": int(hs[H_SWAP_USED_PAGES]) * PAGE_SIZE,
            "zswap_pool_bytes": int(hs[H_ZSWAP_BYTES]),
            "lazy_pages": int(hs[H_LAZY_PAGES]),
            "reclaim_scanned_pages": int(hs[H_SCANNED_PAGES]),
            "guests": len(self._guests),
            "guests_stopped": sum(g.stopped for g in self._by_slot),
            "guest_pages": sum(g.nr_pages for g in self._by_slot),
        }
        out.update(self._host)
        views = [self.guest_counters(rec.guest_id) for rec in self._by_slot]
        return sum_guest_views(out, views)

    # ---------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """Recompute every total from the page and granule bytes; AssertionError on a mismatch."""
        from .invariants import check_host  # local: tests and debug mode only

        check_host(self)

    def _debug_check(self) -> None:
        if self.config.debug_checks:
            self.check_invariants()

    # ---------------------------------------------------------------- validation

    def _lookup(self, guest_id) -> _Guest:
        rec = self._guests.get(int(guest_id)) if isinstance(guest_id, int | np.integer) else None
        if rec is None:
            raise ValueError(f"guest_id {guest_id!r} is not placed on host {self.host_id}")
        return rec

    def _live(self, guest_id) -> _Guest:
        rec = self._lookup(guest_id)
        if rec.stopped:
            raise ValueError(f"guest_id {guest_id} was stopped by the host OOM policy")
        return rec

    def _validate_ranges(self, rec: _Guest, pfns, orders) -> tuple[np.ndarray, np.ndarray]:
        return validate_ranges(
            rec.guest_id, rec.nr_pages, self.config.max_report_order, pfns, orders
        )

    def _validate_runs(self, rec: _Guest, starts, npages) -> tuple[np.ndarray, np.ndarray]:
        return validate_runs(rec.guest_id, rec.nr_pages, starts, npages)


def warm_up(config: HostConfig) -> None:
    """Load (or compile) every numba kernel a host with ``config`` runs (touch, report,
    reclaim to swap, the swap-out log), on a small throwaway host under pressure,
    so the first epoch of a timed run does not pay for it."""
    from dataclasses import replace

    page_mib = 1 << 20
    small = replace(
        config,
        memory_bytes=64 * page_mib,
        reserve_bytes=0,
        max_overcommit_ratio=None,
        swap=replace(config.swap, capacity_bytes=256 * page_mib)
        if config.swap.capacity_bytes
        else config.swap,
        debug_checks=False,
    )
    host = Host(0, small)
    nr_pages = 32 * page_mib // PAGE_SIZE
    for gid in range(4):
        host.add_guest(gid, nr_pages)
        host.apply_touch(gid, np.array([0], np.int64), np.array([nr_pages], np.int64))
        host.reclaim()
    host.apply_report(0, np.array([0], np.int64), np.array([9], np.int64))
    host.swapped_runs(1, np.array([0], np.int64), np.array([nr_pages], np.int64))
    host.host_counters()
