"""Guest-side view of the host backing of every guest page, and the cost port.

One byte per 4 KiB guest page says what the host holds for it: NEVER (never
touched, no host page), BACKED (resident), DISCARDED (reported and dropped by
the host) or SWAPPED (pushed to host swap). The guest keeps this mirror so it
can tell what a touch will cost; the host's own state stays the record. Every
operation is vectorised over batches of ranges: no per-page Python loops.

The cost port prices what the guest must know the cost of before the host has
answered: a touch (so a workload's progress slows as it pays, within the
epoch), and a report call (the reporting worker needs the call's latency when it
starts, to know when it completes). :class:`ReportCost` and :class:`TouchCost`
hold the host's figures as plain ints; the simulation plan copies them from the
host's cost model (the guest never imports the host).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numba import njit

from services.lazymem import lazy_copy, zeroed
from services.units import NS_PER_S, PAGE_SIZE

PAGE_BYTES = PAGE_SIZE

NEVER = 0  # never touched: first touch = host fault + zero fill
BACKED = 1  # resident on the host: touch is free
DISCARDED = 2  # reported and discarded: touch = host fault + zero fill again
SWAPPED = 3  # on host swap: touch = swap-in
NR_BACKING_STATES = 4
BACKING_STATE_NAMES = ("never", "backed", "discarded", "swapped")
_SEEN = 255  # transient mark inside one touch: a page already counted in this batch


# Touch counts: pages visited by prior state (NEVER..SWAPPED), then the host faults
# the guest expects them to cost.
T_FAULT_4K = NR_BACKING_STATES  # 4 KiB host faults (never-touched or discarded pages)
T_FAULT_HUGE = NR_BACKING_STATES + 1  # huge faults: the first touch of an empty granule
NR_TOUCH_COUNTS = NR_BACKING_STATES + 2


# Per-granule page counts kept beside the page bytes (gstat[g, ...]), so a touch of a
# granule that is all backed, or a huge fault of an empty one, costs O(1) per granule.
G_HELD = 0  # pages the host holds: BACKED or SWAPPED
G_SWAPPED = 1
G_DISCARDED = 2
NR_GRANULE_COUNTS = 3


@njit(cache=True, nogil=True)
def _touch_ranges(state, counts, gstat, shift, huge, starts, npages, out):  # noqa: PLR0913, PLR0917
    """Make the ranges BACKED, counting each page visit by its prior state (a page visited
    twice counts as backed the second time, as on the host). With ``huge``, a touch of a
    granule holding nothing on the host backs all of it with one huge fault, as host THP
    and hugetlbfs do; otherwise a non-backed page is a 4 KiB fault (never touched or
    discarded) or a swap-in. Returns False, changing nothing, if a range is out of bounds."""
    nr = state.shape[0]
    gpages = 1 << shift
    for i in range(starts.shape[0]):  # validated first: nothing changes on bad input
        if starts[i] < 0 or npages[i] < 0 or starts[i] + npages[i] > nr:
            return False
    for i in range(starts.shape[0]):
        p = starts[i]
        end = p + npages[i]
        while p < end:
            g = p >> shift
            lo = g << shift
            hi = min(lo + gpages, nr)
            e = min(end, hi)
            held = gstat[g, G_HELD]
            if held == hi - lo and gstat[g, G_SWAPPED] == 0:  # all backed
                out[BACKED] += e - p
                p = e
                continue
            if huge and held == 0:  # the host holds nothing here: one huge fault
                _huge_fault(state, counts, gstat, g, lo, hi, p, e, out)
            else:
                _touch_pages(state, counts, gstat, g, p, e, out)
            p = e
    return True


@njit(cache=True, nogil=True)
def _huge_fault(state, counts, gstat, g, lo, hi, p, e, out):  # noqa: PLR0913, PLR0917
    """Granule g = [lo, hi) holds nothing on the host (every page NEVER or DISCARDED): one
    huge fault backs all of it; pages [p, e) are the visited ones."""
    disc = gstat[g, G_DISCARDED]
    if p == lo and e == hi:
        visited = disc
    else:
        visited = 0
        for q in range(p, e):
            visited += state[q] == DISCARDED
    out[DISCARDED] += visited
    out[NEVER] += (e - p) - visited
    counts[DISCARDED] -= disc
    counts[NEVER] -= (hi - lo) - disc
    counts[BACKED] += hi - lo
    state[lo:hi] = BACKED
    gstat[g, G_HELD] = hi - lo
    gstat[g, G_DISCARDED] = 0
    out[T_FAULT_HUGE] += 1


@njit(cache=True, nogil=True)
def _touch_pages(state, counts, gstat, g, p, e, out):
    """Pages [p, e) of granule g one by one: 4 KiB faults and swap-ins."""
    for q in range(p, e):
        st = state[q]
        out[st] += 1
        if st == BACKED:
            continue
        if st == SWAPPED:
            gstat[g, G_SWAPPED] -= 1
        else:
            out[T_FAULT_4K] += 1
            gstat[g, G_HELD] += 1
            if st == DISCARDED:
                gstat[g, G_DISCARDED] -= 1
        counts[st] -= 1
        counts[BACKED] += 1
        state[q] = BACKED


@njit(cache=True, nogil=True)
def _move_ranges(state, counts, gstat, shift, starts, npages, from_mask, to):  # noqa: PLR0913, PLR0917
    """Pages whose state bit is in ``from_mask`` become ``to``, granule counts kept."""
    for i in range(starts.shape[0]):
        for p in range(starts[i], starts[i] + npages[i]):
            s = state[p]
            if (from_mask >> s) & 1:
                g = p >> shift
                counts[s] -= 1
                counts[to] += 1
                state[p] = to
                gstat[g, G_HELD] += (to in (BACKED, SWAPPED)) - (s in (BACKED, SWAPPED))
                gstat[g, G_SWAPPED] += (to == SWAPPED) - (s == SWAPPED)
                gstat[g, G_DISCARDED] += (to == DISCARDED) - (s == DISCARDED)


class CostPort(Protocol):
    """Prices guest operations in ns from host figures (the host supplies them).

    ``price_touch``: a touch, from BackingView.touch's counts (NR_TOUCH_COUNTS).
    ``price_report``: one report call of the blocks (pfns, orders), >= 0.
    ``discard_view``: mirror a successful report in the backing view, as the host
    applies it (what it drops now becomes DISCARDED).
    """

    def price_touch(self, counts: np.ndarray) -> int: ...
    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int: ...
    def discard_view(self, backing: BackingView, pfns: np.ndarray, orders: np.ndarray) -> None: ...


class NullCostPort:
    """Touches and report calls cost nothing (pure guest runs, tests); every reported
    block counts as discarded."""

    def price_touch(self, counts: np.ndarray) -> int:
        return 0

    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int:
        return 0

    def discard_view(self, backing: BackingView, pfns: np.ndarray, orders: np.ndarray) -> None:
        backing.discard(pfns, orders)


ORDER_2M = 9  # a block of 2 MiB or more is discarded per 2 MiB, a smaller one per 4 KiB page


@dataclass(frozen=True)
class ReportCost:
    """What one report call costs the guest, in ns: one virtqueue kick (one exit) plus the
    host's discard of the batch (figures.md Q2; host ``costs.report_ns`` + ``discard_ns``).

    ``discard_min_order``: blocks of a lower order are not discarded and cost nothing
    beyond the exit (hugetlbfs: smaller than the huge page, §7.3); None: the host
    discards nothing (discard mode ``disabled``: the call is only acknowledged).
    The defaults make calls free.
    """

    exit_ns: int = 0
    discard_4k_ns: int = 0  # per 4 KiB page of a block below 2 MiB
    discard_2m_ns: int = 0  # per 2 MiB of a block of 2 MiB or more
    discard_min_order: int | None = 0

    def __post_init__(self) -> None:
        for name in ("exit_ns", "discard_4k_ns", "discard_2m_ns"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"report_cost.{name} must be an int >= 0, got {value!r}")
        if self.discard_min_order is not None and self.discard_min_order < 0:
            raise ValueError(
                f"report_cost.discard_min_order must be >= 0 or None, got {self.discard_min_order}"
            )

    def price(self, orders: np.ndarray) -> int:
        """ns of one call reporting blocks of these orders."""
        if self.discard_min_order is None:
            return self.exit_ns
        o = np.asarray(orders, dtype=np.int64).ravel()
        o = o[o >= self.discard_min_order]
        big = o >= ORDER_2M
        ranges_2m = int(np.left_shift(1, o[big] - ORDER_2M).sum())
        pages_4k = int(np.left_shift(1, o[~big]).sum())
        return self.exit_ns + pages_4k * self.discard_4k_ns + ranges_2m * self.discard_2m_ns


def _transfer_ns(nbytes: int, bytes_per_s: int) -> int:
    """ns to move ``nbytes`` at ``bytes_per_s``, rounded up (as the host rounds)."""
    return (nbytes * NS_PER_S + bytes_per_s - 1) // bytes_per_s


@dataclass(frozen=True)
class TouchCost:
    """The host's figures for a touch, as plain ints for the guest (the simulation plan
    copies them from the host's cost model, docs/kernel-model.md §4.10): a 4 KiB fault
    and zero-fill for a page the host does not hold, a huge fault and zero-fill of the
    whole granule when the host backs an empty granule at once (``huge_faults``: host
    THP or hugetlbfs), a swap-in for a page on host swap (from the compressed tier when
    ``zswap``), nothing for a backed page. ``lazy_discard``: the host's discards are
    MADV_FREE, so a reported page stays resident until host reclaim and its next touch
    is free. The defaults price every touch at 0.

    The guest prices each touch with these figures as it happens, so its progress
    slows within the epoch; the host's own figure, the record, replaces the estimate
    at the next sync (docs/workloads.md, "What a touch costs").
    """

    fault_4k_ns: int = 0
    fault_huge_ns: int = 0
    zero_4k_bytes_per_s: int = 0  # 0: zero-fill is free
    zero_huge_bytes_per_s: int = 0
    gran_shift: int = 9  # 4 KiB pages per granule = 1 << gran_shift (2 MiB; 18: 1 GiB)
    huge_faults: bool = False
    swap_read_latency_ns: int = 0
    swap_read_bytes_per_s: int = 0  # 0: the transfer is free
    zswap: bool = False
    decompress_ns: int = 0
    lazy_discard: bool = False

    def __post_init__(self) -> None:
        for name in (
            "fault_4k_ns", "fault_huge_ns", "zero_4k_bytes_per_s", "zero_huge_bytes_per_s",
            "swap_read_latency_ns", "swap_read_bytes_per_s", "decompress_ns",
        ):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"touch_cost.{name} must be an int >= 0, got {value!r}")
        if not 0 <= self.gran_shift <= 18:
            raise ValueError(f"touch_cost.gran_shift must be in 0..18, got {self.gran_shift}")

    def price(self, counts: np.ndarray) -> int:
        """ns the host will charge for one touch with these counts (BackingView.touch)."""
        n4k, nhuge = int(counts[T_FAULT_4K]), int(counts[T_FAULT_HUGE])
        swapped = int(counts[SWAPPED])
        ns = n4k * self.fault_4k_ns + nhuge * self.fault_huge_ns
        if n4k and self.zero_4k_bytes_per_s:
            ns += _transfer_ns(n4k * PAGE_BYTES, self.zero_4k_bytes_per_s)
        if nhuge and self.zero_huge_bytes_per_s:
            ns += _transfer_ns((nhuge * PAGE_BYTES) << self.gran_shift, self.zero_huge_bytes_per_s)
        if swapped:
            if self.zswap:
                ns += swapped * self.decompress_ns
            else:
                ns += swapped * self.swap_read_latency_ns
                if self.swap_read_bytes_per_s:
                    ns += _transfer_ns(swapped * PAGE_BYTES, self.swap_read_bytes_per_s)
        return ns


class HostCostPort(NullCostPort):
    """A guest's cost port in a simulation: report calls and touches priced by the figures
    of the guest's host, and the host's discard policy mirrored in the backing view."""

    def __init__(self, report: ReportCost, touch: TouchCost | None = None):
        self.cost = report
        self.touch = touch if touch is not None else TouchCost()

    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int:
        return self.cost.price(orders)

    def price_touch(self, counts: np.ndarray) -> int:
        return self.touch.price(counts)

    def discard_view(self, backing: BackingView, pfns: np.ndarray, orders: np.ndarray) -> None:
        """Mirror a successful report in the backing view as the host applies it: nothing
        when discard is off; under hugetlbfs only blocks of a whole huge page; a lazy
        discard (MADV_FREE) keeps resident pages resident until host reclaim, but frees
        the swap slots of swapped ones (their next touch is a fault, not a swap-in)."""
        min_order = self.cost.discard_min_order
        if min_order is None:
            return
        if min_order:
            keep = np.asarray(orders) >= min_order
            pfns, orders = pfns[keep], orders[keep]
        backing.discard(pfns, orders, swapped_only=self.touch.lazy_discard)


def expand_ranges(starts: np.ndarray, npages: np.ndarray) -> np.ndarray:
    """Every pfn of the ranges [start, start + npages), concatenated, as int64."""
    starts = np.asarray(starts, dtype=np.int64).ravel()
    npages = np.asarray(npages, dtype=np.int64).ravel()
    total = int(npages.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(npages)
    offsets = np.repeat(starts - (ends - npages), npages)
    return offsets + np.arange(total, dtype=np.int64)


class BackingView:
    """uint8 per guest page: NEVER / BACKED / DISCARDED / SWAPPED.

    With ``huge_faults`` (host THP or hugetlbfs) it also keeps, per granule of
    ``1 << gran_shift`` pages, how many pages the host holds (BACKED or SWAPPED), as the
    host does: the first touch of a granule holding nothing is one huge fault that
    backs the whole granule.
    """

    def __init__(self, nr_pages: int, gran_shift: int = 9, huge_faults: bool = False):
        if nr_pages <= 0:
            raise ValueError(f"nr_pages must be > 0, got {nr_pages}")
        self.nr_pages = nr_pages
        self.state = zeroed(nr_pages, np.uint8)  # lazily resident (services.lazymem)
        self._counts = np.zeros(NR_BACKING_STATES, dtype=np.int64)  # kept in step with state
        self._counts[NEVER] = nr_pages
        self.gran_shift = gran_shift
        self.huge_faults = huge_faults
        ngran = -(-nr_pages >> gran_shift)
        self._gstat = np.zeros((ngran, NR_GRANULE_COUNTS), dtype=np.int32)

    def _check_ranges(self, starts, npages) -> tuple[np.ndarray, np.ndarray]:
        starts = np.asarray(starts, dtype=np.int64).ravel()
        npages = np.asarray(npages, dtype=np.int64).ravel()
        if starts.shape != npages.shape:
            raise ValueError(f"starts and npages differ in length: {starts.size} != {npages.size}")
        bad = (starts < 0) | (npages < 0) | (starts + npages > self.nr_pages)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"range start={int(starts[i])} npages={int(npages[i])} outside 0..{self.nr_pages}"
            )
        return starts, npages

    def touch(self, starts, npages) -> np.ndarray:
        """Mark the ranges BACKED; return the counts priced by TouchCost: pages visited per
        prior state (indices NEVER..SWAPPED), then T_FAULT_4K and T_FAULT_HUGE."""
        s = np.asarray(starts, dtype=np.int64).ravel()
        n = np.asarray(npages, dtype=np.int64).ravel()
        out = np.zeros(NR_TOUCH_COUNTS, dtype=np.int64)
        if s.shape != n.shape or not _touch_ranges(
            self.state, self._counts, self._gstat, self.gran_shift, self.huge_faults, s, n, out
        ):
            self._check_ranges(s, n)  # raises ValueError naming the bad range
        return out

    def _move(self, starts, npages, from_mask: int, to: int) -> None:
        _move_ranges(
            self.state, self._counts, self._gstat, self.gran_shift, starts, npages, from_mask, to
        )

    def discard(self, pfns, orders, swapped_only: bool = False) -> None:
        """A successful report: touched pages of the blocks become DISCARDED.

        Never-touched pages stay NEVER (the host holds nothing for them); swapped
        pages become DISCARDED (the discard drops the swap slot too). With
        ``swapped_only`` (a lazy discard) resident pages stay BACKED.
        """
        pfns = np.asarray(pfns, dtype=np.int64).ravel()
        orders = np.asarray(orders, dtype=np.int64).ravel()
        if pfns.shape != orders.shape:
            raise ValueError(f"pfns and orders differ in length: {pfns.size} != {orders.size}")
        if (orders < 0).any():
            raise ValueError(f"order={int(orders[orders < 0][0])} must be >= 0")
        starts, npages = self._check_ranges(pfns, np.left_shift(1, orders))
        mask = (1 << SWAPPED) if swapped_only else (1 << BACKED) | (1 << SWAPPED)
        self._move(starts, npages, mask, DISCARDED)

    def swapped_out(self, starts, npages) -> None:
        """The host swapped these ranges out: BACKED pages become SWAPPED."""
        starts, npages = self._check_ranges(starts, npages)
        self._move(starts, npages, 1 << BACKED, SWAPPED)

    def __setstate__(self, state: dict) -> None:
        """A restored view keeps the footprint it had (services.lazymem)."""
        self.__dict__.update(state)
        self.state = lazy_copy(self.state)

    def counts(self) -> dict[str, int]:
        """Pages per state, by name (kept incrementally: O(1))."""
        return {name: int(self._counts[i]) for i, name in enumerate(BACKING_STATE_NAMES)}

    def recount(self) -> np.ndarray:
        """Pages per state recomputed from the page bytes (tests check it equals counts())."""
        return np.bincount(self.state, minlength=NR_BACKING_STATES).astype(np.int64)

    def recount_granules(self) -> np.ndarray:
        """The per-granule counts recomputed from the page bytes (tests check them against the
        kept ones, ``granule_counts()``): held (BACKED or SWAPPED), swapped, discarded."""
        gp = 1 << self.gran_shift
        pad = np.full((-self.nr_pages) % gp, NEVER, np.uint8)
        st = np.append(self.state, pad).reshape(-1, gp)
        return np.stack(
            [
                ((st == BACKED) | (st == SWAPPED)).sum(1),
                (st == SWAPPED).sum(1),
                (st == DISCARDED).sum(1),
            ],
            axis=1,
        ).astype(np.int32)

    def granule_counts(self) -> np.ndarray:
        return self._gstat.copy()
