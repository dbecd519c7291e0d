"""Guest-side view of the host backing of every guest page, and the cost port.

One byte per 4 KiB guest page says what the host holds for it: NEVER (never
touched, no host page), BACKED (resident), DISCARDED (reported and dropped by
the host) or SWAPPED (pushed to host swap). The guest keeps this mirror so it
can tell what a touch will cost; the host's own state stays the record. Every
operation is vectorised over batches of ranges: no per-page Python loops.

The cost port prices what the guest must know the cost of before the host has
answered: a touch, and a report call (the reporting worker needs the call's
latency when it starts, to know when it completes). :class:`ReportCost` holds
the host's figures for a report call as plain ints; the simulation plan copies
them from the host's cost model (the guest never imports the host).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numba import njit

NEVER = 0  # never touched: first touch = host fault + zero fill
BACKED = 1  # resident on the host: touch is free
DISCARDED = 2  # reported and discarded: touch = host fault + zero fill again
SWAPPED = 3  # on host swap: touch = swap-in
NR_BACKING_STATES = 4
BACKING_STATE_NAMES = ("never", "backed", "discarded", "swapped")
_SEEN = 255  # transient mark inside one touch: a page already counted in this batch


@njit(cache=True, nogil=True)
def _touch_ranges(state, counts, starts, npages, out):
    """Count each page once by its prior state, then make it BACKED (overlaps allowed)."""
    for i in range(starts.shape[0]):
        for p in range(starts[i], starts[i] + npages[i]):
            s = state[p]
            if s != _SEEN:
                out[s] += 1
                counts[s] -= 1
                state[p] = _SEEN
    for i in range(starts.shape[0]):
        for p in range(starts[i], starts[i] + npages[i]):
            if state[p] == _SEEN:
                state[p] = BACKED
                counts[BACKED] += 1


@njit(cache=True, nogil=True)
def _move_ranges(state, counts, starts, npages, from_mask, to):
    """Pages whose state bit is in ``from_mask`` become ``to``."""
    for i in range(starts.shape[0]):
        for p in range(starts[i], starts[i] + npages[i]):
            s = state[p]
            if (from_mask >> s) & 1:
                counts[s] -= 1
                counts[to] += 1
                state[p] = to


class CostPort(Protocol):
    """Prices guest operations in ns from host figures (the host supplies them).

    ``price_touch``: a touch, from the page counts per prior state.
    ``price_report``: one report call of the blocks (pfns, orders), >= 0.
    """

    def price_touch(self, counts: np.ndarray) -> int: ...
    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int: ...


class NullCostPort:
    """Touches and report calls cost nothing (pure guest runs, tests)."""

    def price_touch(self, counts: np.ndarray) -> int:
        return 0

    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int:
        return 0


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


class ReportCostPort(NullCostPort):
    """A guest's cost port in a simulation: report calls priced by the host's figures.

    Touches are priced by the host itself (its answer's lost time), so they cost 0 here.
    """

    def __init__(self, cost: ReportCost):
        self.cost = cost

    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int:
        return self.cost.price(orders)


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
    """uint8 per guest page: NEVER / BACKED / DISCARDED / SWAPPED."""

    def __init__(self, nr_pages: int):
        if nr_pages <= 0:
            raise ValueError(f"nr_pages must be > 0, got {nr_pages}")
        self.nr_pages = nr_pages
        self.state = np.zeros(nr_pages, dtype=np.uint8)
        self._counts = np.zeros(NR_BACKING_STATES, dtype=np.int64)  # kept in step with state
        self._counts[NEVER] = nr_pages

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
        """Mark the ranges BACKED; return pages per prior state (each page counted once)."""
        starts, npages = self._check_ranges(starts, npages)
        out = np.zeros(NR_BACKING_STATES, dtype=np.int64)
        _touch_ranges(self.state, self._counts, starts, npages, out)
        return out

    def discard(self, pfns, orders) -> None:
        """A successful report: touched pages of the blocks become DISCARDED.

        Never-touched pages stay NEVER (the host holds nothing for them); swapped
        pages become DISCARDED (the discard drops the swap slot too).
        """
        pfns = np.asarray(pfns, dtype=np.int64).ravel()
        orders = np.asarray(orders, dtype=np.int64).ravel()
        if pfns.shape != orders.shape:
            raise ValueError(f"pfns and orders differ in length: {pfns.size} != {orders.size}")
        if (orders < 0).any():
            raise ValueError(f"order={int(orders[orders < 0][0])} must be >= 0")
        starts, npages = self._check_ranges(pfns, np.left_shift(1, orders))
        _move_ranges(
            self.state, self._counts, starts, npages, (1 << BACKED) | (1 << SWAPPED), DISCARDED
        )

    def swapped_out(self, starts, npages) -> None:
        """The host swapped these ranges out: BACKED pages become SWAPPED."""
        starts, npages = self._check_ranges(starts, npages)
        _move_ranges(self.state, self._counts, starts, npages, 1 << BACKED, SWAPPED)

    def counts(self) -> dict[str, int]:
        """Pages per state, by name (kept incrementally: O(1))."""
        return {name: int(self._counts[i]) for i, name in enumerate(BACKING_STATE_NAMES)}

    def recount(self) -> np.ndarray:
        """Pages per state recomputed from the page bytes (tests check it equals counts())."""
        return np.bincount(self.state, minlength=NR_BACKING_STATES).astype(np.int64)
