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

A fault on a page that a report discarded while the host held it (`PG_REPORTED`,
see discard.py) is a refault (EV_REFAULT_PAGES); a huge fault on a granule with
any such page is also a huge refault (EV_REFAULT_HUGE). A lazily freed page
touched before reclaim is a lazy reuse, not a refault.

A page that needs a frame calls direct reclaim (reclaim.py) when the pool is
full. If reclaim fails: with the policy "refuse" the page (and every later page
of the call that needs a frame) is refused; otherwise the kernel returns
ST_OOM with its position so the caller can stop a guest and resume. It also
returns ST_LOG_FULL with its position when the swap-out log may overflow.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .pagestate import (
    EV_FAULT_4K,
    EV_FAULT_HUGE,
    EV_LAZY_REUSE,
    EV_OOM,
    EV_PRIOR_UNBACKED,
    EV_REFAULT_HUGE,
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


@njit(cache=True, _nrt=False)
def _reported_pages(state, p, g):
    shift = p[P_GRAN_SHIFT]
    n = 0
    for j in range(g << shift, (g + 1) << shift):
        if state[j] & PG_REPORTED:
            n += 1
    return n


# Touch position pos[...]: shared by the inner loop, the driver and the caller.
POS_RUN = 0  # run to resume at
POS_OFF = 1  # page offset inside that run
POS_EXHAUSTED = 2  # policy "refuse": reclaim failed once, refuse every later frame
POS_NEED = 3  # bytes of frames the inner loop is waiting for (ST_NEED_FRAMES)
POS_FAILED = 4  # FAILED_*: the reclaim asked for at the resume position failed
POS_SLOT = 5  # guest slot
POS_BASE = 6  # global index of the guest's pfn 0
POS_GUEST = 7  # touch_batch_kernel: the guest (index in the batch) to resume at
POS_GROUP = 8  # touch_batch_kernel: the group (one operation's runs) to resume at
NPOS = 9

ST_NEED_FRAMES = 3  # inner loop -> driver: reclaim pos[POS_NEED] bytes, then resume
FAILED_NONE = 0
FAILED_HUGE = 1  # reclaim could not free a granule of frames for this page
FAILED_4K = 2  # reclaim could not free one frame for this page


@njit(cache=True, _nrt=False)
def _touch_span(state, gused, gstat, hs, p, ev, slot, i, hi):
    """Touch pages [i, hi) of one GK_PAGES granule while frames are free.

    Returns where it stopped: hi, or the first page that needs a frame when the
    pool is full. A tight loop of its own so the compiler keeps it simple.
    """
    while i < hi:
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
        if hs[H_POOL_BYTES] + PAGE_SIZE > p[P_LIMIT_BYTES]:
            return i
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
    return i


@njit(cache=True, _nrt=False)
def _touch_runs(state, gran, gused, gstat, hs, p, ev, starts, npages, pos):
    """The loop over pages. It never calls reclaim itself (a call site in the loop costs
    ~50 ns per page even when not taken): it returns ST_NEED_FRAMES and its position.
    pos[POS_FAILED] applies to the first page only: the reclaim it asked for there
    failed. (Few arguments on purpose: one more argument costs ~30 ns per page.)
    """
    slot = pos[POS_SLOT]
    base = pos[POS_BASE]
    failed = pos[POS_FAILED]
    shift = p[P_GRAN_SHIFT]
    gpages = 1 << shift
    limit = p[P_LIMIT_BYTES]
    refuse = p[P_REFUSE] != 0
    run0 = pos[POS_RUN]
    exhausted = pos[POS_EXHAUSTED] != 0
    for r in range(run0, starts.size):
        a = base + starts[r]
        end = a + npages[r]
        i = a + pos[POS_OFF] if r == run0 else a
        while i < end:
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
                if failed == FAILED_NONE:  # after any failed reclaim here, no huge retry
                    if hs[H_POOL_BYTES] + gpages * PAGE_SIZE > limit:
                        pos[POS_NEED] = gpages * PAGE_SIZE
                        pos[POS_RUN], pos[POS_OFF], pos[POS_EXHAUSTED] = r, i - a, exhausted
                        return ST_NEED_FRAMES
                    if kind == GK_EMPTY:
                        refault = gpages if gb & GR_REPORTED else 0
                    else:
                        refault = _reported_pages(state, p, g)
                        gran[g] = GK_EMPTY
                    granule_set(gran, gused, gstat, hs, p, slot, g, GK_HUGE | GR_REFERENCED)
                    ev[EV_PRIOR_UNBACKED + RES_UNBACKED] += gend - i
                    ev[EV_FAULT_HUGE] += 1
                    if refault:  # a report discarded (some of) this granule while backed
                        ev[EV_REFAULT_PAGES] += refault
                        ev[EV_REFAULT_HUGE] += 1
                    i = gend
                    continue
                if p[P_HUGETLB]:  # no 4 KiB fallback for static huge pages
                    if not refuse:
                        pos[POS_RUN], pos[POS_OFF], pos[POS_EXHAUSTED] = r, i - a, exhausted
                        return ST_OOM
                    if not exhausted:  # first refusal of this call: one OOM event
                        ev[EV_OOM] += 1
                        exhausted = True
                    ev[EV_REFUSED] += gend - i
                    failed = FAILED_NONE
                    i = gend
                    continue
            elif empty and p[P_HUGETLB]:
                if not exhausted:  # first refusal of this call: one OOM event
                    ev[EV_OOM] += 1
                    exhausted = True
                ev[EV_REFUSED] += gend - i
                i = gend
                continue
            if failed == FAILED_HUGE:
                failed = FAILED_NONE  # anonymous memory falls back to a 4 KiB fault
            if kind == GK_EMPTY:
                granule_materialize(state, gran, p, g)
            i = _touch_span(state, gused, gstat, hs, p, ev, slot, i, gend)
            if i == gend:
                failed = FAILED_NONE
                continue
            # Page i needs a frame and the pool is full.
            if exhausted or failed == FAILED_4K:
                if not refuse:
                    pos[POS_RUN], pos[POS_OFF], pos[POS_EXHAUSTED] = r, i - a, exhausted
                    return ST_OOM
                if not exhausted:  # first refusal of this call: one OOM event
                    ev[EV_OOM] += 1
                    exhausted = True
                ev[EV_REFUSED] += 1
                failed = FAILED_NONE
                i += 1
                continue
            pos[POS_NEED] = PAGE_SIZE
            pos[POS_RUN], pos[POS_OFF], pos[POS_EXHAUSTED] = r, i - a, exhausted
            return ST_NEED_FRAMES
    pos[POS_RUN], pos[POS_OFF], pos[POS_EXHAUSTED] = starts.size, 0, exhausted
    return ST_DONE


@njit(cache=True, _nrt=False)
def touch_kernel(state, gran, gused, gstat, hs, p, offsets, log, ev, starts, npages, pos):
    """Apply the runs from position `pos` on, reclaiming when frames run out.

    Returns ST_DONE, ST_LOG_FULL or ST_OOM (policy stop_largest); `pos` holds where
    to resume. Start with pos = new_touch_pos(slot, offsets).
    """
    pos[POS_FAILED] = FAILED_NONE
    while True:
        # The inner loop never swaps, so the log only needs room before reclaim runs.
        if log.size - hs[H_LOG_N] < p[P_LOG_RESERVE]:
            return ST_LOG_FULL
        status = _touch_runs(state, gran, gused, gstat, hs, p, ev, starts, npages, pos)
        if status != ST_NEED_FRAMES:
            return status
        need = pos[POS_NEED]
        if reclaim_frames(state, gran, gused, gstat, hs, p, offsets, log, ev, need):
            pos[POS_FAILED] = FAILED_NONE
        else:
            pos[POS_FAILED] = FAILED_HUGE if need > PAGE_SIZE else FAILED_4K


@njit(cache=True, _nrt=False)
def touch_batch_kernel(
    state, gran, gused, gstat, hs, p, offsets, log, ev2d, starts, npages, run_bounds,
    slots, group_bounds, skip, pos,
):  # fmt: skip
    """``touch_kernel`` for the touch operations of several guests of one epoch, in
    order: guest j (slot slots[j]) owns groups [group_bounds[j], group_bounds[j + 1]),
    group g is runs [run_bounds[g], run_bounds[g + 1]) and counts into ev2d[g], exactly
    as a call of its own would (the per-call state starts afresh at each group). A
    guest with skip[j] set is passed over. Returns as touch_kernel; pos[POS_GUEST] and
    pos[POS_GROUP] are where to resume (the rest of pos as touch_kernel's for that
    group). One call per epoch instead of one per operation: the Python around a call
    cost more than most operations' pages."""
    for j in range(pos[POS_GUEST], slots.size):
        if skip[j]:
            continue
        pos[POS_SLOT] = slots[j]
        pos[POS_BASE] = offsets[slots[j]]
        for g in range(max(pos[POS_GROUP], group_bounds[j]), group_bounds[j + 1]):
            lo, hi = run_bounds[g], run_bounds[g + 1]
            status = touch_kernel(
                state, gran, gused, gstat, hs, p, offsets, log, ev2d[g],
                starts[lo:hi], npages[lo:hi], pos,
            )  # fmt: skip
            if status != ST_DONE:
                pos[POS_GUEST], pos[POS_GROUP] = j, g
                return status
            reset_touch_pos(pos)
    pos[POS_GUEST] = slots.size
    return ST_DONE


@njit(cache=True, _nrt=False)
def reset_touch_pos(pos):
    """The per-call part of a touch position back to a fresh call's."""
    pos[POS_RUN], pos[POS_OFF], pos[POS_EXHAUSTED] = 0, 0, 0
    pos[POS_NEED], pos[POS_FAILED] = 0, FAILED_NONE


def new_touch_pos(slot: int, offsets: np.ndarray) -> np.ndarray:
    """Position vector for a fresh apply_touch of guest `slot`."""
    pos = np.zeros(NPOS, np.int64)
    pos[POS_SLOT] = slot
    pos[POS_BASE] = offsets[slot]
    return pos
