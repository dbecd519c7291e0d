"""Host reclaim: lazily freed pages first, then a second-chance clock to swap.

When the pool (resident pages, plus the zswap pool when it counts) would exceed
capacity - reserve, `reclaim_frames` frees frames until the request fits:

1. lazy-free reclaim: a scan position over the global page index finds the next
   MADV_FREE'd page or huge granule and drops its frame (the page reads as
   zero afterwards). This costs the guests nothing now.
2. swap: a clock hand over the global page index (all guests of the host),
   second chance per 4 KiB page or per huge granule: a referenced page loses
   its reference bit and is skipped; an unreferenced one is swapped out. A huge
   granule is split first (its pages are then swapped one by one). hugetlbfs
   pages are never swapped.

It fails when nothing is lazily freed and swap is full (or there is no
swappable page after two sweeps): the caller records an out-of-memory event.
Every swapped-out page is appended to the swap-out log so its guest can learn
about it (`Host.reclaim` drains the log).
"""

from __future__ import annotations

from numba import njit

from .pagestate import (
    EV_RECLAIM_DISK,
    EV_RECLAIM_LAZY,
    EV_RECLAIM_ZSWAP,
    G_LAZY_RECLAIMED,
    GK_EMPTY,
    GK_HUGE,
    GK_HUGE_LAZY,
    GK_MASK,
    GK_PAGES,
    GR_REFERENCED,
    GR_REPORTED,
    H_CLOCK_HAND,
    H_LAZY_HAND,
    H_LAZY_PAGES,
    H_POOL_BYTES,
    H_SCANNED_PAGES,
    P_GRAN_SHIFT,
    P_HUGETLB,
    P_LIMIT_BYTES,
    PG_REFERENCED,
    RES_BACKED,
    RES_LAZY,
    RES_MASK,
    RES_UNBACKED,
    granule_set,
    granule_split,
    page_set_res,
    slot_of,
)
from .swap import SWAP_NONE, SWAP_TO_ZSWAP, swap_dest, swap_out_page


@njit(cache=True, _nrt=False)
def reclaim_lazy_one(state, gran, gused, gstat, hs, p, offsets, ev):
    """Drop the frame(s) of the next lazily freed page or huge granule. Needs H_LAZY_PAGES > 0."""
    total = state.size
    shift = p[P_GRAN_SHIFT]
    i = hs[H_LAZY_HAND]
    for _ in range(2 * total + 2):
        if i >= total:
            i = 0
        g = i >> shift
        kind = gran[g] & GK_MASK
        nxt = (g + 1) << shift
        if kind == GK_HUGE_LAZY:
            slot = slot_of(offsets, i)
            granule_set(gran, gused, gstat, hs, p, slot, g, GK_EMPTY | (gran[g] & GR_REPORTED))
            gstat[slot, G_LAZY_RECLAIMED] += 1 << shift
            ev[EV_RECLAIM_LAZY] += 1 << shift
            hs[H_LAZY_HAND] = nxt
            return
        if kind != GK_PAGES or gused[g] == 0:
            i = nxt
            continue
        if state[i] & RES_MASK == RES_LAZY:
            slot = slot_of(offsets, i)
            page_set_res(state, gused, gstat, hs, p, slot, i, RES_UNBACKED, False)
            gstat[slot, G_LAZY_RECLAIMED] += 1
            ev[EV_RECLAIM_LAZY] += 1
            hs[H_LAZY_HAND] = i + 1
            return
        i += 1
    raise AssertionError("reclaim_lazy_one: lazy page count is positive but none was found")


@njit(cache=True, _nrt=False)
def clock_swap_one(state, gran, gused, gstat, hs, p, offsets, log, ev, dest):
    """Advance the clock to the next unreferenced backed page and swap it out.

    Returns False when no backed page exists (two sweeps found none); then nothing
    changed and the hand stays where it was.
    """
    total = state.size
    shift = p[P_GRAN_SHIFT]
    i = hs[H_CLOCK_HAND]
    scanned = 0
    limit = 2 * total + (2 << shift)
    while scanned < limit:
        if i >= total:
            i = 0
        g = i >> shift
        gb = gran[g]
        kind = gb & GK_MASK
        if kind == GK_EMPTY or kind == GK_HUGE_LAZY or (kind == GK_PAGES and gused[g] == 0):
            nxt = (g + 1) << shift
            scanned += nxt - i
            i = nxt
            continue
        if kind == GK_HUGE:
            head = g << shift
            if gb & GR_REFERENCED:
                gran[g] = gb & ~GR_REFERENCED
                scanned += head + (1 << shift) - i
                i = head + (1 << shift)
                continue
            granule_split(state, gran, gstat, p, slot_of(offsets, head), g)
            i = head
            continue
        s = state[i]
        if s & RES_MASK == RES_BACKED:
            if s & PG_REFERENCED:
                state[i] = s & ~PG_REFERENCED
            else:
                swap_out_page(state, gused, gstat, hs, p, log, slot_of(offsets, i), i, dest)
                if dest == SWAP_TO_ZSWAP:
                    ev[EV_RECLAIM_ZSWAP] += 1
                else:
                    ev[EV_RECLAIM_DISK] += 1
                hs[H_CLOCK_HAND] = i + 1
                hs[H_SCANNED_PAGES] += scanned + 1
                return True
        i += 1
        scanned += 1
    hs[H_SCANNED_PAGES] += scanned
    return False


@njit(cache=True, _nrt=False)
def reclaim_frames(state, gran, gused, gstat, hs, p, offsets, log, ev, need_bytes):
    """Reclaim until `need_bytes` more fit under the limit. False when it cannot."""
    limit = p[P_LIMIT_BYTES]
    while hs[H_POOL_BYTES] + need_bytes > limit:
        if hs[H_LAZY_PAGES] > 0:
            reclaim_lazy_one(state, gran, gused, gstat, hs, p, offsets, ev)
            continue
        if p[P_HUGETLB]:
            return False  # hugetlbfs pages are not swappable
        dest = swap_dest(hs, p)
        if dest == SWAP_NONE:
            return False
        if not clock_swap_one(state, gran, gused, gstat, hs, p, offsets, log, ev, dest):
            return False
    return True


@njit(cache=True, _nrt=False)
def reclaim_kernel(state, gran, gused, gstat, hs, p, offsets, log, ev):
    """Host.reclaim(): bring the pool back under the limit (background reclaim)."""
    return reclaim_frames(state, gran, gused, gstat, hs, p, offsets, log, ev, 0)
