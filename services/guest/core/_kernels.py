"""numba kernels of the fast buddy allocator (the hot loops of ``buddy.py``).

State is a handful of flat numpy arrays, passed to every kernel:

* per page: ``nxt``/``prv`` (int32 list links, NIL = -1) shared by the buddy free
  lists and the pcp lists, ``pgo`` (int8 order of the block whose head this is),
  ``pgf`` (uint8: state in bits 0-2, Reported in bit 3, a scratch mark in bit 4,
  the migratetype of the list the block sits on -- or its allocation type -- in
  bits 5-7). Only heads carry a state; tail pages are ``ST_NONE``.
* per pageblock: ``pbmt`` (int8 migratetype).
* ``fl`` int32 (nr_zones * nr_orders * MIGRATE_TYPES, 2): head/tail of each free list,
  ``pcp`` int32 (nr_zones * nr_pcp_lists, 2): head/tail of each pcp list.
* ``nr_free`` int64 (nr_zones, nr_orders): blocks per order, all migratetypes.
* ``zone`` int64 (nr_zones, Z_FIELDS) and ``g`` int64 (G_FIELDS): scalars.
* ``pcp_idx`` int8 (nr_orders): pcp list group of an order, -1 if not pcp-eligible.
* ``coins`` uint64: pre-drawn shuffle coin words (§2.3, §5), consumed LSB first.

Every kernel is called once per batch. The helpers are ``inline='always'`` so the
hot loops stay flat: a numba call that passes the state arrays costs ~10x the
work it does (shared/reference/platform-notes.md). Rare paths (fallback) are
ordinary calls. Callers validate; kernels assume valid input.
"""

from __future__ import annotations

import numpy as np
from numba import njit

NIL = -1

# pgf bits
ST_MASK = 0x07
ST_NONE = 0  # tail page (or nothing)
ST_BUDDY = 1  # head of a free block on a buddy list (PageBuddy)
ST_PCP = 2  # head of a block on a pcp list
ST_ALLOC = 3  # head of an allocated block
ST_ISOLATED = 4  # head of a block isolated by reporting (in a batch)
PG_REPORTED = 0x08  # PG_reported: valid on ST_BUDDY heads only
PG_MARK = 0x10  # scratch: duplicate detection inside one batch
MT_SHIFT = 5  # bits 5-7: list migratetype (buddy/pcp) or allocation type

# Migratetypes (constants.py; repeated here as numba globals)
MT_UNMOVABLE = 0
MT_MOVABLE = 1
MT_RECLAIMABLE = 2
MT_HIGHATOMIC = 3
MT_ISOLATE = 5
MT_TYPES = 6
MT_PCPTYPES = 3

PROFILE_5_7 = 0
PROFILE_6_1 = 1
PROFILE_MODERN = 2

# zone[] fields
Z_START = 0
Z_END = 1
Z_FREE = 2  # NR_FREE_PAGES
Z_MIN = 3
Z_LOW = 4
Z_HIGH = 5
Z_PCP_COUNT = 6
Z_PCP_BATCH = 7
Z_PCP_HIGH = 8
Z_PCP_CURSOR = 9  # last pcp list drained (round-robin position)
Z_HIGHATOMIC = 10  # highatomic pages excluded by watermark tests (no reserves: 0)
Z_FIELDS = 11

# g[] fields
G_NR_PAGES = 0
G_MAX_ORDER = 1
G_PB_ORDER = 2
G_REPORT_ORDER = 3
G_PROFILE = 4
G_SHUFFLE = 5
G_NR_ZONES = 6
G_NOTIFY = 7  # notify_count
G_REPORTED_PAGES = 8
G_COIN_POS = 9  # coin bits consumed
G_COIN_END = 10  # coin bits available
G_CAPACITY = 11  # PAGE_REPORTING_CAPACITY
G_NR_PCP_LISTS = 12  # per zone
G_FIELDS = 13

# modern rmqueue mode, cached across one pcp refill (§3.3)
MODE_NORMAL = 0
MODE_STEAL = 1

# report_fill statuses (docs/core-api.md)
REPORT_LIST_END = 0
REPORT_BATCH_FULL = 1
REPORT_BUDGET_EXHAUSTED = 2
REPORT_ISOLATE_REFUSED = 3

# free-batch validation codes
CHECK_OK = 0
CHECK_RANGE = 1
CHECK_ALIGN = 2
CHECK_NOT_ALLOCATED = 3
CHECK_WRONG_ORDER = 4
CHECK_DUPLICATE = 5

# fallbacks[start_mt] (§3.3); rows for HIGHATOMIC.. are unused (no fallback)
FALLBACKS = np.array(
    [[MT_RECLAIMABLE, MT_MOVABLE], [MT_RECLAIMABLE, MT_UNMOVABLE], [MT_UNMOVABLE, MT_MOVABLE]],
    dtype=np.int64,
)


# ---------------------------------------------------------------- list primitives


@njit(inline="always")
def _link_head(nxt, prv, lists, lid, pfn):
    h = lists[lid, 0]
    prv[pfn] = NIL
    nxt[pfn] = h
    if h == NIL:
        lists[lid, 1] = pfn
    else:
        prv[h] = pfn
    lists[lid, 0] = pfn


@njit(inline="always")
def _link_tail(nxt, prv, lists, lid, pfn):
    t = lists[lid, 1]
    nxt[pfn] = NIL
    prv[pfn] = t
    if t == NIL:
        lists[lid, 0] = pfn
    else:
        nxt[t] = pfn
    lists[lid, 1] = pfn


@njit(inline="always")
def _unlink(nxt, prv, lists, lid, pfn):
    p = prv[pfn]
    n = nxt[pfn]
    if p == NIL:
        lists[lid, 0] = n
    else:
        nxt[p] = n
    if n == NIL:
        lists[lid, 1] = p
    else:
        prv[n] = p


@njit(inline="always")
def _rotate_to_front(nxt, prv, lists, lid, pfn):
    """L = L[idx(pfn):] + L[:idx(pfn)] (§4.4)."""
    head = lists[lid, 0]
    if head == pfn:
        return
    tail = lists[lid, 1]
    p = prv[pfn]
    nxt[p] = NIL
    prv[pfn] = NIL
    nxt[tail] = head
    prv[head] = tail
    lists[lid, 0] = pfn
    lists[lid, 1] = p


@njit(inline="always")
def _fl_id(g, z, order, mt):
    return (z * (g[G_MAX_ORDER] + 1) + order) * MT_TYPES + mt


@njit(inline="always")
def _zone_of(zone, g, pfn):
    z = g[G_NR_ZONES] - 1
    while z > 0 and pfn < zone[z, Z_START]:
        z -= 1
    return z


@njit(inline="always")
def _is_free_head(pgo, pgf, pfn, order):
    return (pgf[pfn] & ST_MASK) == ST_BUDDY and pgo[pfn] == order


@njit(inline="always")
def _list_mt(pgf, pfn):
    return (pgf[pfn] >> MT_SHIFT) & 7


@njit(inline="always")
def _del_free(nxt, prv, pgf, fl, nr_free, g, z, pfn, order, lid):
    """Unlink a free block (del_page_from_free_list): clears Reported (§2.5)."""
    _unlink(nxt, prv, fl, lid, pfn)
    nr_free[z, order] -= 1
    if pgf[pfn] & PG_REPORTED:
        g[G_REPORTED_PAGES] -= 1 << order
    pgf[pfn] = ST_NONE


@njit(inline="always")
def _set_free_head(pgo, pgf, pfn, order, mt):
    pgo[pfn] = order
    pgf[pfn] = ST_BUDDY | (mt << MT_SHIFT)


@njit(inline="always")
def _relabel_pageblocks(pbmt, g, pfn, order, mt):
    """Set the migratetype of every pageblock the block [pfn, pfn + 2**order) touches."""
    pb = g[G_PB_ORDER]
    first = pfn >> pb
    last = (pfn + (1 << order) - 1) >> pb
    for b in range(first, last + 1):
        pbmt[b] = mt


# ---------------------------------------------------------------- free path (§2.2-2.3)


@njit(inline="always")
def _merge_refused(profile, mt, bmt):
    if profile == PROFILE_5_7:
        return (mt == MT_ISOLATE) != (bmt == MT_ISOLATE)
    return bmt != mt and (mt >= MT_PCPTYPES or bmt >= MT_PCPTYPES)


@njit(inline="always")
def _coin(g, coins):
    pos = g[G_COIN_POS]
    if pos >= g[G_COIN_END]:
        raise RuntimeError("shuffle coin words exhausted")
    g[G_COIN_POS] = pos + 1
    return (coins[pos >> 6] >> np.uint64(pos & 63)) & np.uint64(1)


@njit(inline="always")
def _free_one(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, to_tail, notify):
    """__free_one_page: merge (§2.2), place (§2.3), notify (§2.6)."""
    z = _zone_of(zone, g, pfn)
    if mt != MT_ISOLATE:
        zone[z, Z_FREE] += 1 << order
    max_order = g[G_MAX_ORDER]
    pb = g[G_PB_ORDER]
    profile = g[G_PROFILE]
    pgf[pfn] = ST_NONE
    while order < max_order:
        b = pfn ^ (1 << order)
        if not _is_free_head(pgo, pgf, b, order):
            break
        if order >= pb:
            bmt = pbmt[b >> pb]
            if _merge_refused(profile, mt, bmt):
                break
            if profile == PROFILE_MODERN and bmt != mt:
                _relabel_pageblocks(pbmt, g, b, order, mt)
        _del_free(nxt, prv, pgf, fl, nr_free, g, z, b, order, _fl_id(g, z, order, _list_mt(pgf, b)))
        if b < pfn:
            pfn = b
        order += 1
    _set_free_head(pgo, pgf, pfn, order, mt)
    if not to_tail:
        if g[G_SHUFFLE] != 0 and order >= max_order:
            to_tail = _coin(g, coins) != 0
        elif order < max_order - 1:
            # buddy_merge_likely: is the order+1 buddy of our order+1 block free?
            higher = (pfn & ~(1 << order)) ^ (1 << (order + 1))
            to_tail = _is_free_head(pgo, pgf, higher, order + 1)
    lid = _fl_id(g, z, order, mt)
    if to_tail:
        _link_tail(nxt, prv, fl, lid, pfn)
    else:
        _link_head(nxt, prv, fl, lid, pfn)
    nr_free[z, order] += 1
    if notify and order >= g[G_REPORT_ORDER]:
        g[G_NOTIFY] += 1


@njit(inline="always")
def _pcp_drain_pages(nxt, prv, pgo, pgf, pbmt, fl, pcp, nr_free, zone, g, coins, z, target):
    """free_pcppages_bulk: round-robin over the zone's pcp lists, one block from each tail."""
    nl = g[G_NR_PCP_LISTS]
    base = z * nl
    li = zone[z, Z_PCP_CURSOR]
    drained = 0
    while drained < target and zone[z, Z_PCP_COUNT] > 0:
        li += 1
        if li >= nl:
            li = 0
        pfn = pcp[base + li, 1]
        if pfn == NIL:
            continue
        _unlink(nxt, prv, pcp, base + li, pfn)
        order = np.int64(pgo[pfn])
        zone[z, Z_PCP_COUNT] -= 1 << order
        drained += 1 << order
        mt = np.int64(pbmt[pfn >> g[G_PB_ORDER]])
        _free_one(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, False, True)
    zone[z, Z_PCP_CURSOR] = li


@njit(cache=True, _nrt=False)
def k_free(nxt, prv, pgo, pgf, pbmt, fl, pcp, nr_free, zone, g, pcp_idx, coins, pfns, order):
    """free(): pcp-eligible orders to the pcp list head (drain at high), others to the buddy."""
    pi = np.int64(pcp_idx[order])
    pb = g[G_PB_ORDER]
    size = 1 << order
    for i in range(pfns.shape[0]):
        pfn = pfns[i]
        mt = np.int64(pbmt[pfn >> pb])
        if pi >= 0 and mt != MT_ISOLATE:
            if mt >= MT_PCPTYPES:
                mt = MT_MOVABLE
            z = _zone_of(zone, g, pfn)
            _link_head(nxt, prv, pcp, z * g[G_NR_PCP_LISTS] + pi * MT_PCPTYPES + mt, pfn)
            pgf[pfn] = ST_PCP | (mt << MT_SHIFT)
            zone[z, Z_PCP_COUNT] += size
            while zone[z, Z_PCP_COUNT] >= zone[z, Z_PCP_HIGH]:
                _pcp_drain_pages(
                    nxt, prv, pgo, pgf, pbmt, fl, pcp, nr_free, zone, g, coins, z, zone[z, Z_PCP_BATCH]
                )
        else:
            _free_one(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, False, True)


@njit(cache=True, _nrt=False)
def k_drain_pcp(nxt, prv, pgo, pgf, pbmt, fl, pcp, nr_free, zone, g, coins):
    """drain_pcp(): every pcp list completely, zones and lists ascending, tail first."""
    nl = g[G_NR_PCP_LISTS]
    pb = g[G_PB_ORDER]
    for z in range(g[G_NR_ZONES]):
        for li in range(nl):
            lid = z * nl + li
            while pcp[lid, 1] != NIL:
                pfn = pcp[lid, 1]
                _unlink(nxt, prv, pcp, lid, pfn)
                order = np.int64(pgo[pfn])
                zone[z, Z_PCP_COUNT] -= 1 << order
                mt = np.int64(pbmt[pfn >> pb])
                _free_one(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, False, True)


@njit(cache=True, _nrt=False)
def k_check_free(pgo, pgf, g, pfns, order):
    """Validate a free batch without changing state: (code, index of the bad entry)."""
    nr_pages = g[G_NR_PAGES]
    mask = (1 << order) - 1
    bad = -1
    code = CHECK_OK
    for i in range(pfns.shape[0]):
        pfn = pfns[i]
        if pfn < 0 or pfn >= nr_pages:
            code = CHECK_RANGE
        elif pfn & mask:
            code = CHECK_ALIGN
        elif (pgf[pfn] & ST_MASK) != ST_ALLOC:
            code = CHECK_NOT_ALLOCATED
        elif pgo[pfn] != order:
            code = CHECK_WRONG_ORDER
        elif pgf[pfn] & PG_MARK:
            code = CHECK_DUPLICATE
        if code != CHECK_OK:
            bad = i
            break
        pgf[pfn] |= PG_MARK
    end = pfns.shape[0] if bad < 0 else bad
    for i in range(end):
        pgf[pfns[i]] &= ~PG_MARK
    return code, bad


# ---------------------------------------------------------------- alloc path (§3.1-3.4)


@njit(inline="always")
def _expand(nxt, prv, pgo, pgf, fl, nr_free, g, z, pfn, low, high, mt):
    """expand(): upper halves go to the head of their lists, unreported (§3.2)."""
    while high > low:
        high -= 1
        upper = pfn + (1 << high)
        _link_head(nxt, prv, fl, _fl_id(g, z, high, mt), upper)
        _set_free_head(pgo, pgf, upper, high, mt)
        nr_free[z, high] += 1


@njit(inline="always")
def _take_block(nxt, prv, pgo, pgf, fl, nr_free, zone, g, z, pfn, low, high, mt, expand_mt):
    """Unlink a free block of order high from list mt and split it down to order low."""
    _del_free(nxt, prv, pgf, fl, nr_free, g, z, pfn, high, _fl_id(g, z, high, mt))
    _expand(nxt, prv, pgo, pgf, fl, nr_free, g, z, pfn, low, high, expand_mt)
    zone[z, Z_FREE] -= 1 << low


@njit(inline="always")
def _rmqueue_smallest(nxt, prv, pgo, pgf, fl, nr_free, zone, g, z, order, mt):
    for o in range(order, g[G_MAX_ORDER] + 1):
        pfn = fl[_fl_id(g, z, o, mt), 0]
        if pfn != NIL:
            _take_block(nxt, prv, pgo, pgf, fl, nr_free, zone, g, z, pfn, order, o, mt, mt)
            return pfn
    return NIL


@njit(_nrt=False)
def _can_claim(g, order, start_mt):
    """can_steal_fallback / should_try_claim_block (§3.3)."""
    pb = g[G_PB_ORDER]
    if order >= pb or order >= pb // 2:
        return True
    return start_mt == MT_UNMOVABLE or start_mt == MT_RECLAIMABLE


@njit(_nrt=False)
def _find_fallback(fl, nr_free, g, z, order, start_mt):
    """First non-empty fallback list at this order, or -1."""
    if nr_free[z, order] == 0:
        return -1
    for i in range(2):
        fmt = FALLBACKS[start_mt, i]
        if fl[_fl_id(g, z, order, fmt), 0] != NIL:
            return fmt
    return -1


@njit(_nrt=False)
def _move_free_block(nxt, prv, pgf, fl, g, z, pfn, order, new_mt, to_tail):
    """move_to_free_list: keeps Reported (§2.5)."""
    _unlink(nxt, prv, fl, _fl_id(g, z, order, _list_mt(pgf, pfn)), pfn)
    lid = _fl_id(g, z, order, new_mt)
    if to_tail:
        _link_tail(nxt, prv, fl, lid, pfn)
    else:
        _link_head(nxt, prv, fl, lid, pfn)
    pgf[pfn] = (pgf[pfn] & ~(7 << MT_SHIFT)) | (new_mt << MT_SHIFT)


@njit(_nrt=False)
def _pageblock_census(pgo, pgf, g, start, move, nxt, prv, fl, z, new_mt, to_tail):
    """Walk one pageblock by heads: (free pages, movable allocated pages); optionally move
    every free block in it to new_mt's list (move_freepages_block)."""
    end = start + (1 << g[G_PB_ORDER])
    free_pages = 0
    movable_pages = 0
    pfn = start
    while pfn < end:
        st = pgf[pfn] & ST_MASK
        if st == ST_NONE:  # cannot happen for a consistent state; step one page
            pfn += 1
            continue
        size = 1 << np.int64(pgo[pfn])
        if st == ST_BUDDY:
            free_pages += size
            if move:
                _move_free_block(nxt, prv, pgf, fl, g, z, pfn, np.int64(pgo[pfn]), new_mt, to_tail)
        elif st == ST_ALLOC and _list_mt(pgf, pfn) == MT_MOVABLE:
            movable_pages += size
        pfn += size
    return free_pages, movable_pages


@njit(_nrt=False)
def _claim_enough(g, start_mt, block_mt, free_pages, movable_pages):
    """free + alike >= half a pageblock (§3.3)."""
    pb_pages = 1 << g[G_PB_ORDER]
    if start_mt == MT_MOVABLE:
        alike = movable_pages
    elif block_mt == MT_MOVABLE:
        alike = pb_pages - (free_pages + movable_pages)
    else:
        alike = 0
    return free_pages + alike >= pb_pages >> 1


@njit(_nrt=False)
def _fallback_5_7(nxt, prv, pgo, pgf, pbmt, fl, nr_free, g, z, order, start_mt):
    """5.7-era __rmqueue_fallback: move a fallback block to start_mt; True if it did."""
    max_order = g[G_MAX_ORDER]
    pb = g[G_PB_ORDER]
    to_tail = g[G_PROFILE] != PROFILE_5_7  # move_to_free_list goes to the tail from 5.10
    found = -1
    co = max_order
    while co >= order:
        fmt = _find_fallback(fl, nr_free, g, z, co, start_mt)
        if fmt >= 0:
            found = fmt
            break
        co -= 1
    if found < 0:
        return False
    can_steal = _can_claim(g, co, start_mt)
    if not can_steal and start_mt == MT_MOVABLE and co > order:
        found = -1
        for o in range(order, max_order + 1):
            fmt = _find_fallback(fl, nr_free, g, z, o, start_mt)
            if fmt >= 0:
                found = fmt
                co = o
                break
        can_steal = _can_claim(g, co, start_mt)
    page = fl[_fl_id(g, z, co, found), 0]
    old_mt = pbmt[page >> pb]
    if old_mt != MT_HIGHATOMIC:
        if co >= pb:
            _relabel_pageblocks(pbmt, g, page, co, start_mt)
        elif can_steal:
            start = page & ~((1 << pb) - 1)
            free_pages, movable_pages = _pageblock_census(
                pgo, pgf, g, start, True, nxt, prv, fl, z, start_mt, to_tail
            )
            if _claim_enough(g, start_mt, old_mt, free_pages, movable_pages):
                pbmt[start >> pb] = start_mt
            return True
    _move_free_block(nxt, prv, pgf, fl, g, z, page, co, start_mt, to_tail)
    return True


@njit(_nrt=False)
def _claim_modern(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, z, order, start_mt):
    """__rmqueue_claim: largest first; whole pageblocks or a majority-free pageblock."""
    pb = g[G_PB_ORDER]
    co = g[G_MAX_ORDER]
    while co >= order:
        fmt = _find_fallback(fl, nr_free, g, z, co, start_mt)
        if fmt >= 0:
            if not _can_claim(g, co, start_mt):
                return NIL  # orders too low to claim
            page = fl[_fl_id(g, z, co, fmt), 0]
            if co >= pb:
                _del_free(nxt, prv, pgf, fl, nr_free, g, z, page, co, _fl_id(g, z, co, fmt))
                _relabel_pageblocks(pbmt, g, page, co, start_mt)
                _expand(nxt, prv, pgo, pgf, fl, nr_free, g, z, page, order, co, start_mt)
                zone[z, Z_FREE] -= 1 << order
                return page
            start = page & ~((1 << pb) - 1)
            free_pages, movable_pages = _pageblock_census(
                pgo, pgf, g, start, False, nxt, prv, fl, z, start_mt, True
            )
            if _claim_enough(g, start_mt, fmt, free_pages, movable_pages):
                _pageblock_census(pgo, pgf, g, start, True, nxt, prv, fl, z, start_mt, True)
                pbmt[start >> pb] = start_mt
                return _rmqueue_smallest(nxt, prv, pgo, pgf, fl, nr_free, zone, g, z, order, start_mt)
        co -= 1
    return NIL


@njit(_nrt=False)
def _steal_modern(nxt, prv, pgo, pgf, fl, nr_free, zone, g, z, order, start_mt):
    """__rmqueue_steal: smallest first, one block, split keeping the fallback type."""
    for co in range(order, g[G_MAX_ORDER] + 1):
        fmt = _find_fallback(fl, nr_free, g, z, co, start_mt)
        if fmt >= 0:
            page = fl[_fl_id(g, z, co, fmt), 0]
            _take_block(nxt, prv, pgo, pgf, fl, nr_free, zone, g, z, page, order, co, fmt, fmt)
            return page
    return NIL


@njit(_nrt=False)
def _rmqueue_fallback(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, z, order, mt, mode):
    """Fallback after smallest-fit failed (§3.3): returns (pfn or NIL, mode)."""
    if mt >= MT_PCPTYPES:
        return NIL, mode
    if g[G_PROFILE] != PROFILE_MODERN:
        while _fallback_5_7(nxt, prv, pgo, pgf, pbmt, fl, nr_free, g, z, order, mt):
            pfn = _rmqueue_smallest(nxt, prv, pgo, pgf, fl, nr_free, zone, g, z, order, mt)
            if pfn != NIL:
                return pfn, mode
        return NIL, mode
    if mode == MODE_NORMAL:
        pfn = _claim_modern(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, z, order, mt)
        if pfn != NIL:
            return pfn, MODE_NORMAL
    pfn = _steal_modern(nxt, prv, pgo, pgf, fl, nr_free, zone, g, z, order, mt)
    if pfn != NIL:
        return pfn, MODE_STEAL
    return NIL, mode


@njit(inline="always")
def _rmqueue(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, z, order, mt, mode):
    """__rmqueue: smallest fit, then fallback; modern skips to steal in MODE_STEAL."""
    if mode == MODE_NORMAL:
        pfn = _rmqueue_smallest(nxt, prv, pgo, pgf, fl, nr_free, zone, g, z, order, mt)
        if pfn != NIL:
            return pfn, mode
    return _rmqueue_fallback(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, z, order, mt, mode)


@njit(inline="always")
def _pcp_alloc(nxt, prv, pgo, pgf, pbmt, fl, pcp, nr_free, zone, g, z, order, mt, pi):
    """rmqueue_pcplist: pop the head; refill an empty list with batch >> order blocks."""
    lid = z * g[G_NR_PCP_LISTS] + pi * MT_PCPTYPES + mt
    pfn = pcp[lid, 0]
    if pfn == NIL:
        want = zone[z, Z_PCP_BATCH] >> order
        if want < 1:
            want = 1
        mode = MODE_NORMAL
        for _ in range(want):
            blk, mode = _rmqueue(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, z, order, mt, mode)
            if blk == NIL:
                break
            _link_tail(nxt, prv, pcp, lid, blk)
            pgo[blk] = order
            pgf[blk] = ST_PCP | (mt << MT_SHIFT)
            zone[z, Z_PCP_COUNT] += 1 << order
        pfn = pcp[lid, 0]
        if pfn == NIL:
            return NIL
    _unlink(nxt, prv, pcp, lid, pfn)
    zone[z, Z_PCP_COUNT] -= 1 << order
    return pfn


@njit(cache=True, _nrt=False)
def k_alloc(nxt, prv, pgo, pgf, pbmt, fl, pcp, nr_free, zone, g, pcp_idx, order, mt, count, out):
    """alloc(): zones from the highest index down, each behind its min watermark."""
    pi = np.int64(pcp_idx[order]) if mt < MT_PCPTYPES else -1
    size = 1 << order
    nz = g[G_NR_ZONES]
    n = 0
    while n < count:
        pfn = NIL
        for z in range(nz - 1, -1, -1):
            if zone[z, Z_FREE] - size < zone[z, Z_MIN]:
                continue
            if pi >= 0:
                pfn = _pcp_alloc(nxt, prv, pgo, pgf, pbmt, fl, pcp, nr_free, zone, g, z, order, mt, pi)
            else:
                pfn, _ = _rmqueue(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, z, order, mt, MODE_NORMAL)
            if pfn != NIL:
                break
        if pfn == NIL:
            break
        pgo[pfn] = order
        pgf[pfn] = ST_ALLOC | (mt << MT_SHIFT)
        out[n] = pfn
        n += 1
    return n


# ---------------------------------------------------------------- boot (§2.5b)


@njit(cache=True, _nrt=False)
def k_boot(nxt, prv, pgo, pgf, fl, nr_free, zone, g, to_tail):
    """Release every zone as max_order blocks, ascending pfn, MOVABLE, without notifying."""
    max_order = g[G_MAX_ORDER]
    size = 1 << max_order
    for z in range(g[G_NR_ZONES]):
        lid = _fl_id(g, z, max_order, MT_MOVABLE)
        for pfn in range(zone[z, Z_START], zone[z, Z_END], size):
            _set_free_head(pgo, pgf, pfn, max_order, MT_MOVABLE)
            if to_tail:
                _link_tail(nxt, prv, fl, lid, pfn)
            else:
                _link_head(nxt, prv, fl, lid, pfn)
            nr_free[z, max_order] += 1
            zone[z, Z_FREE] += size


# ---------------------------------------------------------------- reporting (§4.4-4.6)


@njit(cache=True, _nrt=False)
def k_report_fill(nxt, prv, pgf, pbmt, fl, nr_free, zone, g, z, order, mt, batch_pfn, batch_order, n, budget):
    """Walk list (z, order, mt) from its head, isolating unreported blocks into the batch."""
    lid = _fl_id(g, z, order, mt)
    pb = g[G_PB_ORDER]
    pfn = fl[lid, 0]
    while pfn != NIL:
        if pgf[pfn] & PG_REPORTED:
            pfn = nxt[pfn]
            continue
        if budget < 0:
            _rotate_to_front(nxt, prv, fl, lid, pfn)
            return REPORT_BUDGET_EXHAUSTED, n
        if n >= g[G_CAPACITY]:
            _rotate_to_front(nxt, prv, fl, lid, pfn)
            return REPORT_BATCH_FULL, n
        bmt = pbmt[pfn >> pb]
        if bmt != MT_ISOLATE:
            usable = zone[z, Z_FREE] - zone[z, Z_HIGHATOMIC]
            if not usable > zone[z, Z_MIN] + (1 << order):
                _rotate_to_front(nxt, prv, fl, lid, pfn)
                return REPORT_ISOLATE_REFUSED, n
            zone[z, Z_FREE] -= 1 << order
        following = nxt[pfn]
        _del_free(nxt, prv, pgf, fl, nr_free, g, z, pfn, order, lid)
        pgf[pfn] = ST_ISOLATED | (mt << MT_SHIFT)
        if order >= pb - 1:
            for b in range(pfn >> pb, ((pfn + (1 << order) - 1) >> pb) + 1):
                if pbmt[b] < MT_PCPTYPES:
                    pbmt[b] = MT_MOVABLE
        batch_pfn[n] = pfn
        batch_order[n] = order
        n += 1
        pfn = following
    return REPORT_LIST_END, n


@njit(cache=True, _nrt=False)
def k_check_drain(pgo, pgf, g, batch_pfn, batch_order, n):
    """Index of the first batch entry that is not an isolated block of its order, or -1."""
    for i in range(n):
        pfn = batch_pfn[i]
        if pfn < 0 or pfn >= g[G_NR_PAGES]:
            return i
        if (pgf[pfn] & ST_MASK) != ST_ISOLATED or pgo[pfn] != batch_order[i]:
            return i
    return -1


@njit(cache=True, _nrt=False)
def k_report_drain(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, coins, batch_pfn, batch_order, n, ok):
    """__putback_isolated_page for each entry (§4.6), then Reported if still that head."""
    pb = g[G_PB_ORDER]
    to_tail = g[G_PROFILE] != PROFILE_5_7
    for i in range(n):
        pfn = batch_pfn[i]
        order = np.int64(batch_order[i])
        mt = np.int64(pbmt[pfn >> pb])
        _free_one(nxt, prv, pgo, pgf, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, to_tail, False)
        if ok and _is_free_head(pgo, pgf, pfn, order):
            pgf[pfn] |= PG_REPORTED
            g[G_REPORTED_PAGES] += 1 << order
