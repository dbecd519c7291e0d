"""Encoding of host page state and the transitions every kernel shares.

Two levels, both numpy arrays over a host-global page index (guests are laid
out one after the other; each guest starts on a granule boundary):

* one byte per granule (a 2 MiB THP, or the static huge page of hugetlbfs):
  its kind (`GK_*`) plus the `GR_REPORTED` and `GR_REFERENCED` bits. A granule
  that is wholly unbacked (`GK_EMPTY`) or mapped by one huge page
  (`GK_HUGE`, `GK_HUGE_LAZY`) is described by this byte alone, so whole-granule
  operations (a 2 MiB report, a THP fault) are O(1);
* one byte per 4 KiB page, authoritative only inside `GK_PAGES` granules
  (4 KiB backing, after a split or a 4 KiB fault): residency in bits 0-1
  (`RES_*`), `PG_REPORTED` (a report discarded the page while the host held it,
  and it has not been touched since; used to count refaults), `PG_ZSWAP`
  (swapped page held in the compressed tier) and `PG_REFERENCED` (second-chance
  bit of the reclaim clock).

Plus `gused` (uint32 per granule: pages not unbacked) so a THP fault can tell
at once whether a 4 KiB-backed granule is empty. About 1.01 bytes per page.

Running totals live in small int64 arrays that kernels update in place:
`gstat[slot, G_*]` per guest and `hs[H_*]` per host; `p[P_*]` holds the
host's parameters. The numba functions here keep all of them consistent with
the page and granule bytes; `Host.check_invariants` recomputes them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from services.units import PAGE_SIZE

# Page byte.
RES_MASK = 0x3
RES_UNBACKED = 0  # no host frame (never touched, discarded, or lazily freed and reclaimed)
RES_BACKED = 1  # host frame mapped
RES_LAZY = 2  # MADV_FREE'd, frame still held until host reclaim
RES_SWAPPED = 3  # contents in swap (device or compressed tier)
# Reported: a report discarded the page while it was backed, lazily freed or swapped,
# and nothing has touched it since. Only unbacked and lazy pages carry it (every
# lazy page does: only a report makes a page lazy). A fault on a marked page is a refault.
PG_REPORTED = 0x4
PG_ZSWAP = 0x8
PG_REFERENCED = 0x10
RES_NAMES = ("unbacked", "backed", "lazy", "swapped")

# Granule byte.
GK_MASK = 0x3
GK_PAGES = 0  # 4 KiB backing: the page bytes are authoritative
GK_EMPTY = 1  # every page unbacked
GK_HUGE = 2  # backed by one huge page (THP or hugetlbfs)
GK_HUGE_LAZY = 3  # one huge page, MADV_FREE'd as a whole
GR_REPORTED = 0x4  # PG_REPORTED for every page; only on GK_EMPTY and (always) GK_HUGE_LAZY
GR_REFERENCED = 0x10

# Per-guest totals gstat[slot, ...]. Columns 0..3 are page counts by residency.
G_ZSWAP = 4  # swapped pages held in the compressed tier
G_SWAPOUT_DISK = 5  # pages swapped out to the device (cumulative)
G_SWAPOUT_ZSWAP = 6  # pages swapped out to the compressed tier (cumulative)
G_LAZY_RECLAIMED = 7  # lazily freed pages whose frames reclaim took (cumulative)
G_THP_SPLITS = 8  # huge granules split into 4 KiB backing (cumulative)
NG = 9

# Host totals hs[...].
H_POOL_BYTES = 0  # resident (backed + lazy) bytes, plus the zswap pool if it counts
H_SWAP_USED_PAGES = 1
H_ZSWAP_BYTES = 2
H_LAZY_PAGES = 3
H_CLOCK_HAND = 4  # reclaim clock over the global page index
H_LAZY_HAND = 5  # lazy-free reclaim scan position
H_LOG_N = 6  # entries used in the swap-out log
H_SCANNED_PAGES = 7  # pages the clock looked at (cumulative)
NH = 8

# Parameters p[...].
P_LIMIT_BYTES = 0  # capacity - reserve
P_GRAN_SHIFT = 1
P_HUGE_FAULTS = 2  # first touch of an empty granule backs it whole (THP or hugetlbfs)
P_HUGETLB = 3  # static huge pages: not swappable, no split
P_ZSWAP_ON = 4
P_ZSWAP_CBYTES = 5
P_ZSWAP_MAX_BYTES = 6
P_ZSWAP_COUNTS = 7
P_SWAP_CAP_PAGES = 8
P_REFUSE = 9  # OOM policy: refuse the touch instead of returning to the caller
P_LOG_RESERVE = 10  # free swap-out log entries a page may need
NP = 11

# A caller's event vector ev[...] for one apply_touch (costs are priced from it).
EV_PRIOR_UNBACKED = 0  # touched pages by prior residency: 0..3 follow RES_*
EV_FAULT_4K = 4  # 4 KiB faults (each zero-fills 4 KiB)
EV_FAULT_HUGE = 5  # huge-granule faults (each zero-fills a granule)
EV_SWAPIN_DISK = 6
EV_SWAPIN_ZSWAP = 7
EV_REFAULT_PAGES = 8  # pages backed again by a fault after a report discarded them
EV_LAZY_REUSE = 9  # touched lazily freed pages whose frames were still there
EV_REFUSED = 10  # pages refused by the OOM policy "refuse"
EV_OOM = 11  # OOM events (policy "refuse": at most one per call)
EV_RECLAIM_DISK = 12  # pages direct reclaim swapped out to the device
EV_RECLAIM_ZSWAP = 13  # pages direct reclaim stored in the compressed tier
EV_RECLAIM_LAZY = 14  # lazily freed pages direct reclaim took
EV_REFAULT_HUGE = 15  # huge-granule faults on a granule with refaulted pages (EV_REFAULT_PAGES)
NEV = 16

# Report event vector er[...] for one apply_report.
ER_APPLIED = 0  # ranges discarded (or lazily freed)
ER_IGNORED = 1  # ranges skipped: smaller than or misaligned to a static huge page
ER_RELEASED = 2  # resident pages whose frames were released now
ER_LAZIED = 3  # backed pages made lazily freeable
ER_SWAP_FREED = 4  # swapped pages whose slot was freed
ER_SPLITS = 5  # huge granules split by a partial discard
ER_PAGES = 6  # pages in every range of the batch
ER_DISCARD_4K = 7  # pages of applied ranges below 2 MiB (priced per 4 KiB)
ER_DISCARD_2M = 8  # 2 MiB units of applied ranges of 2 MiB or more (priced per 2 MiB)
NER = 9

# Report kernel modes.
REPORT_DONTNEED = 0
REPORT_FREE = 1
REPORT_ACK_ONLY = 2  # discard inhibited: count, change nothing

# Kernel return status.
ST_DONE = 0
ST_OOM = 1  # no frame can be found; the caller applies the OOM policy and resumes
ST_LOG_FULL = 2  # the swap-out log needs room; the caller grows it and resumes


@njit(cache=True, inline="always", _nrt=False)
def page_set_res(state, gused, gstat, hs, p, slot, i, new_res, to_zswap):
    """Move page i (in a GK_PAGES granule) to residency `new_res`, fixing all totals.

    Keeps PG_REPORTED, clears PG_REFERENCED; sets PG_ZSWAP when swapping to zswap.
    """
    s = state[i]
    old = s & RES_MASK
    cbytes = p[P_ZSWAP_CBYTES]
    if old == RES_SWAPPED:
        if s & PG_ZSWAP:
            hs[H_ZSWAP_BYTES] -= cbytes
            gstat[slot, G_ZSWAP] -= 1
            if p[P_ZSWAP_COUNTS]:
                hs[H_POOL_BYTES] -= cbytes
        else:
            hs[H_SWAP_USED_PAGES] -= 1
    elif old != RES_UNBACKED:
        hs[H_POOL_BYTES] -= PAGE_SIZE
        if old == RES_LAZY:
            hs[H_LAZY_PAGES] -= 1
    ns = (s & PG_REPORTED) | new_res
    if new_res == RES_SWAPPED:
        if to_zswap:
            ns |= PG_ZSWAP
            hs[H_ZSWAP_BYTES] += cbytes
            gstat[slot, G_ZSWAP] += 1
            if p[P_ZSWAP_COUNTS]:
                hs[H_POOL_BYTES] += cbytes
        else:
            hs[H_SWAP_USED_PAGES] += 1
    elif new_res != RES_UNBACKED:
        hs[H_POOL_BYTES] += PAGE_SIZE
        if new_res == RES_LAZY:
            hs[H_LAZY_PAGES] += 1
    gstat[slot, old] -= 1
    gstat[slot, new_res] += 1
    g = i >> p[P_GRAN_SHIFT]
    if old == RES_UNBACKED and new_res != RES_UNBACKED:
        gused[g] += 1
    elif old != RES_UNBACKED and new_res == RES_UNBACKED:
        gused[g] -= 1
    state[i] = ns


@njit(cache=True, inline="always", _nrt=False)
def _kind_res(kind):
    if kind == GK_HUGE:
        return RES_BACKED
    if kind == GK_HUGE_LAZY:
        return RES_LAZY
    return RES_UNBACKED


@njit(cache=True, inline="always", _nrt=False)
def granule_set(gran, gused, gstat, hs, p, slot, g, new_byte):
    """Whole-granule transition between GK_EMPTY, GK_HUGE and GK_HUGE_LAZY.

    A GK_PAGES granule may be passed only when it is empty (gused == 0).
    """
    npages = 1 << p[P_GRAN_SHIFT]
    old_res = _kind_res(gran[g] & GK_MASK)
    new_res = _kind_res(new_byte & GK_MASK)
    if old_res != RES_UNBACKED:
        hs[H_POOL_BYTES] -= npages * PAGE_SIZE
    if old_res == RES_LAZY:
        hs[H_LAZY_PAGES] -= npages
    if new_res != RES_UNBACKED:
        hs[H_POOL_BYTES] += npages * PAGE_SIZE
    if new_res == RES_LAZY:
        hs[H_LAZY_PAGES] += npages
    gstat[slot, old_res] -= npages
    gstat[slot, new_res] += npages
    gused[g] = 0 if new_res == RES_UNBACKED else npages
    gran[g] = new_byte


@njit(cache=True, _nrt=False)
def granule_materialize(state, gran, p, g):
    """GK_EMPTY -> GK_PAGES: write the page bytes (all unbacked)."""
    shift = p[P_GRAN_SHIFT]
    fill = PG_REPORTED if gran[g] & GR_REPORTED else 0
    state[g << shift : (g + 1) << shift] = fill
    gran[g] = GK_PAGES


@njit(cache=True, _nrt=False)
def granule_split(state, gran, gstat, p, slot, g):
    """GK_HUGE / GK_HUGE_LAZY -> GK_PAGES (split_huge_pmd): every page keeps the residency."""
    shift = p[P_GRAN_SHIFT]
    gb = gran[g]
    fill = _kind_res(gb & GK_MASK)
    if gb & GR_REFERENCED:
        fill |= PG_REFERENCED
    if gb & GR_REPORTED:
        fill |= PG_REPORTED
    state[g << shift : (g + 1) << shift] = fill
    gran[g] = GK_PAGES
    gstat[slot, G_THP_SPLITS] += 1


@njit(cache=True, inline="always", _nrt=False)
def slot_of(offsets, i):
    """Guest slot that holds global page i."""
    return np.searchsorted(offsets, i, side="right") - 1


@njit(cache=True, _nrt=False)
def swapped_runs_kernel(state, gran, shift, lo, starts, npages, out_starts, out_npages):
    """The parts of a guest's runs (pfns relative to ``lo``) whose pages are swapped
    now, as runs in ``out_*``; returns how many. Swapped pages live only in
    page-granular (GK_PAGES) granules."""
    m = 0
    for i in range(starts.shape[0]):
        run = -1
        end = starts[i] + npages[i]
        for p in range(starts[i], end):
            g = lo + p
            swapped = (gran[g >> shift] & GK_MASK) == GK_PAGES and (
                state[g] & RES_MASK
            ) == RES_SWAPPED
            if swapped:
                if run < 0:
                    run = p
            elif run >= 0:
                out_starts[m] = run
                out_npages[m] = p - run
                m += 1
                run = -1
        if run >= 0:
            out_starts[m] = run
            out_npages[m] = end - run
            m += 1
    return m
