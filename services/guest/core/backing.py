"""Guest-side view of the host backing of every guest page, and the cost port.

One byte per 4 KiB guest page says what the host holds for it: NEVER (never
touched, no host page), BACKED (resident), DISCARDED (reported and dropped by
the host) or SWAPPED (pushed to host swap). The guest keeps this mirror so it
can tell what a touch will cost; the host's own state stays the record. Every
operation is vectorised over batches of ranges: no per-page Python loops.
"""

from __future__ import annotations

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
    """Prices a touch from the page counts per prior state (the host supplies it)."""

    def price_touch(self, counts: np.ndarray) -> int: ...


class NullCostPort:
    """Touches cost nothing (pure guest runs, tests)."""

    def price_touch(self, counts: np.ndarray) -> int:
        return 0


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
