"""Guest touches on the host: faults, zero-fill, swap-in, lazy-free cancellation.

`touch_kernel` applies runs of (start pfn, npages) for one guest, page by page
or granule by granule, and counts what happened in the caller's event vector
(`pagestate.EV_*`); pool.py prices those counts with costs.py.

Per touched page, by prior residency:
* backed: nothing but the reference bit;
* lazily freed, not yet reclaimed: backed again at no cost (the MADV_FREE is
  cancelled; for a huge granule the whole granule, as a dirty PMD would);
* unbacked: host fault + zero-fill. With host THP (or hugetlbfs) the first
  touch of an empty granule backs and zero-fills the whole granule; if that
  many frames cannot be found, anonymous memory falls back to 4 KiB;
* swapped: swap-in from the device, or decompression from the compressed tier.

A page that needs a frame calls direct reclaim (reclaim.py) when the pool is
full. If reclaim fails: with the policy "refuse" the page (and every later page
of the call that needs a frame) is refused; otherwise the kernel returns
ST_OOM with its position so the caller can stop a guest and resume. It also
returns ST_LOG_FULL with its position when the swap-out log may overflow.
"""

from __future__ import annotations

from numba import njit

from .pagestate import (
    EV_FAULT_4K,
    EV_FAULT_HUGE,
    EV_LAZY_REUSE,
    EV_OOM,
    EV_PRIOR_UNBACKED,
    EV_REFAULT_PAGES,
    EV_REFUSED,
    EV_SWAPIN_DISK,
    EV_SWAPIN_ZSWAP,
    GK_EMPTY,
    GK_HUGE,
    GK_HUGE_LAZY,
    GK_MASK,
    GR_REFERENCED,
    GR_REPORTED,
    H_LOG_N,
    H_POOL_BYTES,
    P_GRAN_SHIFT,
    P_HUGE_FAULTS,
    P_HUGETLB,
    P_LIMIT_BYTES,
    P_LOG_RESERVE,
    P_REFUSE,
    PAGE_SIZE,
    PG_REFERENCED,
    PG_REPORTED,
    PG_ZSWAP,
    RES_BACKED,
    RES_LAZY,
    RES_MASK,
    RES_UNBACKED,
    ST_DONE,
    ST_LOG_FULL,
    ST_OOM,
    granule_materialize,
    granule_set,
    page_set_res,
)
from .reclaim import reclaim_frames


@njit(cache=True)
def _get_frames(state, gran, gused, gstat, hs, p, offsets, log, ev, need_bytes):
    if hs[H_POOL_BYTES] + need_bytes <= p[P_LIMIT_BYTES]:
        return True
    return reclaim_frames(state, gran, gused, gstat, hs, p, offsets, log, ev, need_bytes)


@njit(cache=True)
def _reported_pages(state, p, g):
    shift = p[P_GRAN_SHIFT]
    n = 0
    for j in range(g << shift, (g + 1) << shift):
        if state[j] & PG_REPORTED:
            n += 1
    return n


@njit(cache=True)
def touch_kernel(
    state, gran, gused, gstat, hs, p, offsets, log, ev, slot, starts, npages, run0, off0
):
    """Apply runs [run0:] (the first from page offset off0). Returns (status, run, offset)."""
    base = offsets[slot]
    shift = p[P_GRAN_SHIFT]
    gpages = 1 << shift
    refuse = p[P_REFUSE] != 0
    exhausted = False
    for r in range(run0, starts.size):
        a = base + starts[r]
        end = a + npages[r]
        i = a + off0 if r == run0 else a
        while i < end:
            if log.size - hs[H_LOG_N] < p[P_LOG_RESERVE]:
                return ST_LOG_FULL, r, i - a
            g = i >> shift
            gb = gran[g]
            kind = gb & GK_MASK
            gend = min(end, (g + 1) << shift)
            if kind == GK_HUGE:
                ev[EV_PRIOR_UNBACKED + RES_BACKED] += gend - i
                gran[g] = gb | GR_REFERENCED
                i = gend
                continue
            if kind == GK_HUGE_LAZY:
                ev[EV_PRIOR_UNBACKED + RES_LAZY] += gend - i
                ev[EV_LAZY_REUSE] += gend - i
                granule_set(gran, gused, gstat, hs, p, slot, g, GK_HUGE | GR_REFERENCED)
                i = gend
                continue
            empty = kind == GK_EMPTY or gused[g] == 0
            if empty and p[P_HUGE_FAULTS] and not exhausted:
                if _get_frames(
                    state, gran, gused, gstat, hs, p, offsets, log, ev, gpages * PAGE_SIZE
                ):
                    if kind == GK_EMPTY:
                        refault = gpages if gb & GR_REPORTED else 0
                    else:
                        refault = _reported_pages(state, p, g)
                        gran[g] = GK_EMPTY
                    granule_set(gran, gused, gstat, hs, p, slot, g, GK_HUGE | GR_REFERENCED)
                    ev[EV_PRIOR_UNBACKED + RES_UNBACKED] += gend - i
                    ev[EV_FAULT_HUGE] += 1
                    ev[EV_REFAULT_PAGES] += refault
                    i = gend
                    continue
                if p[P_HUGETLB]:
                    if refuse:
                        if not exhausted:
                            ev[EV_OOM] += 1
                            exhausted = True
                        ev[EV_REFUSED] += gend - i
                        i = gend
                        continue
                    return ST_OOM, r, i - a
            elif empty and p[P_HUGETLB]:
                ev[EV_REFUSED] += gend - i  # exhausted under "refuse"
                i = gend
                continue
            if kind == GK_EMPTY:
                granule_materialize(state, gran, p, g)
            s = state[i]
            res = s & RES_MASK
            if res == RES_BACKED:
                ev[EV_PRIOR_UNBACKED + RES_BACKED] += 1
                state[i] = s | PG_REFERENCED
                i += 1
                continue
            if res == RES_LAZY:
                page_set_res(state, gused, gstat, hs, p, slot, i, RES_BACKED, False)
                state[i] = (state[i] & ~PG_REPORTED) | PG_REFERENCED
                ev[EV_PRIOR_UNBACKED + RES_LAZY] += 1
                ev[EV_LAZY_REUSE] += 1
                i += 1
                continue
            if exhausted or not _get_frames(
                state, gran, gused, gstat, hs, p, offsets, log, ev, PAGE_SIZE
            ):
                if not refuse:
                    return ST_OOM, r, i - a
                if not exhausted:
                    ev[EV_OOM] += 1
                    exhausted = True
                ev[EV_REFUSED] += 1
                i += 1
                continue
            s = state[i]  # reclaim never changes a page that is not backed, but re-read
            if res == RES_UNBACKED:
                ev[EV_FAULT_4K] += 1
                if s & PG_REPORTED:
                    ev[EV_REFAULT_PAGES] += 1
            elif s & PG_ZSWAP:
                ev[EV_SWAPIN_ZSWAP] += 1
            else:
                ev[EV_SWAPIN_DISK] += 1
            ev[EV_PRIOR_UNBACKED + res] += 1
            page_set_res(state, gused, gstat, hs, p, slot, i, RES_BACKED, False)
            state[i] = (state[i] & ~PG_REPORTED) | PG_REFERENCED
            i += 1
    return ST_DONE, starts.size, 0
