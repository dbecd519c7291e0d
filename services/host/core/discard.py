"""Applying a report batch on the host: discard or lazily free reported ranges (§7.2-§7.4).

`report_kernel` walks the (pfn, order) ranges of one batch, granule by granule:

* anonymous backing, `dontneed` (MADV_DONTNEED): frames are released now; a
  swapped page loses its slot. A range that covers a whole huge granule drops
  the THP without splitting it; a partial range splits the granule into 4 KiB
  backing first (split_huge_pmd) and releases only its pages.
* anonymous backing, `free` (MADV_FREE): backed pages become lazily freeable
  and keep their frames until host reclaim; swapped pages lose their slot. A
  whole huge granule becomes a lazily freed THP; a partial range splits it.
* hugetlbfs backing: only ranges aligned to the huge page size and a multiple
  of it are punched (fallocate); the others are skipped silently, as QEMU does
  (§7.3). `free` behaves like `dontneed` there (fd-backed RAM uses fallocate).

A page of an applied range is marked reported (`PG_REPORTED`, or `GR_REPORTED`
for a whole granule) only when the host held it: backed, lazily freed or
swapped. A later fault on a marked page counts as a refault (fault.py); a page
that was unbacked keeps its mark as it was (set if an earlier report discarded
it while backed, clear if it was never backed), since the host discarded
nothing of it now. So an unbacked granule is left alone, whole or partial:
O(1). The `disabled` mode never reaches this kernel.
"""

from __future__ import annotations

from numba import njit

from .pagestate import (
    ER_APPLIED,
    ER_DISCARD_2M,
    ER_DISCARD_4K,
    ER_IGNORED,
    ER_LAZIED,
    ER_PAGES,
    ER_RELEASED,
    ER_SPLITS,
    ER_SWAP_FREED,
    GK_EMPTY,
    GK_HUGE,
    GK_HUGE_LAZY,
    GK_MASK,
    GK_PAGES,
    GR_REPORTED,
    P_GRAN_SHIFT,
    P_HUGETLB,
    PG_REPORTED,
    REPORT_ACK_ONLY,
    REPORT_FREE,
    RES_BACKED,
    RES_LAZY,
    RES_MASK,
    RES_SWAPPED,
    RES_UNBACKED,
    granule_set,
    granule_split,
    page_set_res,
)


@njit(cache=True, _nrt=False)
def _discard_pages(state, gused, gstat, hs, p, slot, lo, hi, lazy, er):
    """Per-page discard of [lo, hi) inside one GK_PAGES granule.

    Marks the pages the host held; returns how many pages of [lo, hi) carry the
    mark afterwards (unbacked pages count if an earlier report marked them).
    """
    marked = 0
    for j in range(lo, hi):
        res = state[j] & RES_MASK
        if res == RES_UNBACKED:
            if state[j] & PG_REPORTED:
                marked += 1
            continue
        if res == RES_SWAPPED:
            page_set_res(state, gused, gstat, hs, p, slot, j, RES_UNBACKED, False)
            er[ER_SWAP_FREED] += 1
        elif not lazy:
            page_set_res(state, gused, gstat, hs, p, slot, j, RES_UNBACKED, False)
            er[ER_RELEASED] += 1
        elif res == RES_BACKED:
            page_set_res(state, gused, gstat, hs, p, slot, j, RES_LAZY, False)
            er[ER_LAZIED] += 1
        state[j] |= PG_REPORTED
        marked += 1
    return marked


@njit(cache=True, _nrt=False)
def _report_hugetlb(gran, gused, gstat, hs, p, slot, a, end, er):
    shift = p[P_GRAN_SHIFT]
    mask = (1 << shift) - 1
    if (a & mask) or (end & mask):
        er[ER_IGNORED] += 1
        return
    er[ER_APPLIED] += 1
    er[ER_DISCARD_2M] += (end - a) >> 9
    for g in range(a >> shift, end >> shift):
        if gran[g] & GK_MASK == GK_HUGE:
            granule_set(gran, gused, gstat, hs, p, slot, g, GK_EMPTY | GR_REPORTED)
            er[ER_RELEASED] += 1 << shift


@njit(cache=True, _nrt=False)
def report_kernel(state, gran, gused, gstat, hs, p, offsets, slot, pfns, orders, mode, er):
    """Apply one batch with REPORT_DONTNEED, REPORT_FREE or REPORT_ACK_ONLY (count only)."""
    base = offsets[slot]
    shift = p[P_GRAN_SHIFT]
    gpages = 1 << shift
    lazy = mode == REPORT_FREE and not p[P_HUGETLB]  # fd-backed RAM: fallocate only
    for k in range(pfns.size):
        npages = 1 << orders[k]
        er[ER_PAGES] += npages
        if mode == REPORT_ACK_ONLY:
            continue
        a = base + pfns[k]
        end = a + npages
        if p[P_HUGETLB]:
            _report_hugetlb(gran, gused, gstat, hs, p, slot, a, end, er)
            continue
        er[ER_APPLIED] += 1
        if npages >= 512:
            er[ER_DISCARD_2M] += npages >> 9
        else:
            er[ER_DISCARD_4K] += npages
        i = a
        while i < end:
            g = i >> shift
            g0 = g << shift
            gend = min(end, g0 + gpages)
            whole = i == g0 and gend == g0 + gpages
            gb = gran[g]
            kind = gb & GK_MASK
            if kind == GK_EMPTY or (kind == GK_PAGES and gused[g] == 0):
                i = gend  # the host holds nothing here: nothing to discard or mark
                continue
            if kind == GK_HUGE or kind == GK_HUGE_LAZY:
                if whole:
                    if not lazy:
                        granule_set(gran, gused, gstat, hs, p, slot, g, GK_EMPTY | GR_REPORTED)
                        er[ER_RELEASED] += gpages
                    elif kind == GK_HUGE:
                        granule_set(gran, gused, gstat, hs, p, slot, g, GK_HUGE_LAZY | GR_REPORTED)
                        er[ER_LAZIED] += gpages
                    else:  # already a lazily freed THP: reported when it was made lazy
                        gran[g] = gb | GR_REPORTED
                    i = gend
                    continue
                granule_split(state, gran, gstat, p, slot, g)
                er[ER_SPLITS] += 1
            marked = _discard_pages(state, gused, gstat, hs, p, slot, i, gend, lazy, er)
            if whole and not lazy and marked == gpages:
                gran[g] = GK_EMPTY | GR_REPORTED  # every page is now unbacked and reported
            i = gend
