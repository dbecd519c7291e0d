"""numba kernels of the fast buddy allocator (the hot loops of ``buddy.py``).

State is a handful of flat numpy arrays, passed to every kernel:

* per page: ``lk`` int32 (nr_pages, 2) list links [next, prev] (NIL = -1), shared by
  the buddy free lists and the pcp lists; ``pg`` uint8 (nr_pages, 2) [order, flags].
  Page pfn's links are in row ``_row(pfn)`` of ``lk``, not row pfn: aligned pfns first
  (see ``_row``); they are meaningful only while the page is on a list. ``pg`` is
  indexed by pfn.
  Flags: state in bits 0-2, Reported in bit 3, a scratch mark in bit 4, and in bits
  5-7 the migratetype of the list the block sits on (or its allocation type).
  Only heads carry a state; tail pages are ``ST_NONE``. Interleaving next/prev and
  order/flags keeps a page's state in two cache lines.
* per pageblock: ``pbmt`` int8 migratetype.
* ``fl`` int32 (nr_zones * nr_orders * MIGRATE_TYPES, 2): [head, tail] of each free
  list.
* ``nr_free`` int64 (nr_zones, nr_orders): blocks per order, all migratetypes.
* ``zone`` int64 (nr_zones, Z_FIELDS) and ``g`` int64 (G_FIELDS): scalars.
* ``pcp`` int32 (nr_zones * ncpu * nr_pcp_lists, 2): [head, tail] of each pcp list;
  ``pcs`` int64 (nr_zones * ncpu, P_FIELDS): each per-CPU list set's scalars.
* ``pcp_idx`` int8 (nr_orders): first pindex of an order, -1 if the order has no pcp list.
* ``coins`` uint64: pre-drawn shuffle coin words (§2.3, §5), consumed LSB first.
* ``scratch`` int64: blocks taken from a pcp before they are buddy-freed (a chunk).

Every kernel is called once per batch. Helpers are ``inline='always'`` and take the
geometry as scalars so the hot loops stay flat: a numba call that passes the state
arrays costs ~10x the work it does (shared/reference/platform-notes.md). Kernels
are compiled without NRT (no refcount traffic; they allocate nothing). Rare paths
(fallback) are ordinary calls. Callers validate; kernels assume valid input.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

NIL = -1
NEXT = 0  # lk[:, NEXT]
PREV = 1  # lk[:, PREV]
HEAD = 0  # fl/pcp[:, HEAD]
TAIL = 1  # fl/pcp[:, TAIL]
ORD = 0  # pg[:, ORD]
FLG = 1  # pg[:, FLG]

# pg[:, FLG] bits
ST_MASK = 0x07
ST_NONE = 0  # tail page (or nothing)
ST_BUDDY = 1  # head of a free block on a buddy list (PageBuddy)
ST_PCP = 2  # head of a block on a pcp list
ST_ALLOC = 3  # head of an allocated block
ST_ISOLATED = 4  # head of a block isolated by reporting (in a batch)
PG_REPORTED = 0x08  # PG_reported: valid on ST_BUDDY heads only
PG_MARK = 0x10  # scratch: duplicate detection inside one batch
MT_SHIFT = 5  # bits 5-7: list migratetype (buddy/pcp) or allocation type
MT_BITS = 7 << MT_SHIFT

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
Z_BELOW_HIGH = 6  # modern ZONE_BELOW_HIGH
Z_RECLAIM_ACTIVE = 7  # ZONE_RECLAIM_ACTIVE: kswapd is balancing the node (5.14+ clamps pcp high)
Z_FIELDS = 8

# pcs[] fields: one row per (zone, vCPU), row = zone * ncpu + cpu (struct per_cpu_pages)
P_COUNT = 0  # pages on the lists
P_BATCH = 1
P_HIGH = 2  # 5.7/6.1: fixed; modern: auto-tuned in [P_HIGH_MIN, P_HIGH_MAX]
P_HIGH_MIN = 3
P_HIGH_MAX = 4
P_FREE_FACTOR = 5  # 6.1
P_FREE_COUNT = 6  # modern
P_ALLOC_FACTOR = 7  # modern
P_PREV_HIGH_ORDER = 8  # modern PCPF_PREV_FREE_HIGH_ORDER
P_MASK = 9  # bit li set <=> pcp list li is non-empty
P_FIELDS = 10

COSTLY_ORDER = 3  # PAGE_ALLOC_COSTLY_ORDER
PCP_BATCH_SCALE_MAX = 5  # CONFIG_PCP_BATCH_SCALE_MAX

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
G_NR_PCP_LISTS = 12  # per (zone, vCPU)
G_ZONE_SPLIT = 13  # first pfn of zone 1 (nr_pages with a single zone)
G_NCPU = 14  # vCPUs
G_THP_ORDER = 15  # the order of the THP pcp list(s), -1 if none
G_FREE_HIGH_BATCH = 16  # modern PCPF_FREE_HIGH_BATCH
G_FIELDS = 17

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

NO_MASK = -1  # _prefetch_frees over a plain array
TAKE_AHEAD = 32  # pcp blocks a drain takes ahead of its buddy frees (> PREFETCH_FREES_AHEAD)
PREFETCH_DISTANCE = 16  # batch entries ahead whose page state is prefetched
# Buddy frees prefetch the page state of the block and of its first buddy this many
# entries ahead. Deeper stages (the list neighbours of the buddies absorbed at merge
# levels 1-3) were measured slower: 92 against 62 ns per order-0 free in
# bench/guest_allocator.py, 47 against 43 ns per freed page in the pressure workload.
PREFETCH_FREES_AHEAD = 24

# fallbacks[start_mt] (§3.3); HIGHATOMIC and above have no fallback
FALLBACKS = np.array(
    [[MT_RECLAIMABLE, MT_MOVABLE], [MT_RECLAIMABLE, MT_UNMOVABLE], [MT_UNMOVABLE, MT_MOVABLE]],
    dtype=np.int64,
)


@intrinsic
def _prefetch(typingctx, arr, idx):
    """llvm.prefetch (write, high locality) of &arr[idx, 0]."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        idx = context.cast(builder, args[1], idxty, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx, zero], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------- page rows

ROW_SHIFT = 9  # pfns aligned to 2**ROW_SHIFT get the first rows of lk
ROW_MASK = (1 << ROW_SHIFT) - 1


@njit(inline="always")
def _row(a, pfn):
    """The row of ``lk`` (``a``, nr_pages rows) holding page pfn's links.

    A free block of order >= ROW_SHIFT has its head on an aligned pfn; those rows are
    kept together at the front, and every other pfn follows in pfn order. So a guest
    whose free memory is in large blocks writes (and keeps resident) only the few
    pages of links its large blocks and its used memory need: ``lk`` is allocated
    zeroed (services.lazymem) and never filled, and a page never written costs no RSS.
    (``pg`` keeps rows by pfn: the same order for it cost the allocator more time than
    its 2 bytes per page were worth.)"""
    q = pfn >> ROW_SHIFT
    if (pfn & ROW_MASK) == 0:
        return q
    return ((a.shape[0] + ROW_MASK) >> ROW_SHIFT) + pfn - q - 1


def page_row(pfn: int, nr_pages: int) -> int:
    """``_row`` for one pfn, in int arithmetic (the allocator's list walks in Python)."""
    q = pfn >> ROW_SHIFT
    if pfn & ROW_MASK == 0:
        return q
    return ((nr_pages + ROW_MASK) >> ROW_SHIFT) + pfn - q - 1


def page_rows(pfns: np.ndarray, nr_pages: int) -> np.ndarray:
    """``_row`` for an array of pfns, in numpy (the allocator's list rebuilds in Python)."""
    pfns = np.asarray(pfns, dtype=np.int64)
    q = pfns >> ROW_SHIFT
    rest = ((nr_pages + ROW_MASK) >> ROW_SHIFT) + pfns - q - 1
    return np.where((pfns & ROW_MASK) == 0, q, rest)


@njit(inline="always")
def _row_pfn(a, row):
    """The pfn whose links are in row ``row`` of ``lk`` (``a``): ``_row``'s inverse."""
    aligned = (a.shape[0] + ROW_MASK) >> ROW_SHIFT
    if row < aligned:
        return row << ROW_SHIFT
    i = row - aligned
    return i + i // ROW_MASK + 1


@njit(cache=True, _nrt=False)
def k_listed_link_pages(lk, pg, rows_shift, resident, live):
    """Set ``live[p]`` for every page p of ``lk``'s memory (``1 << rows_shift`` rows
    each) that may hold the links of a page on a list: a buddy or pcp head, or a block
    isolated for a report (it goes back on a list). Links are read only while their
    page is on a list, so the other pages of ``lk`` hold nothing that is read again.
    Pages with ``resident[p]`` clear are not scanned and count as live: mincore says
    the same of a page never written and of one swapped out, which may hold links.
    Returns the number of live pages."""
    n = 0
    nrows = lk.shape[0]
    for p in range(resident.shape[0]):
        if resident[p] == 0:
            live[p] = 1
            n += 1
            continue
        r0 = p << rows_shift
        r1 = min(nrows, r0 + (1 << rows_shift))
        for r in range(r0, r1):
            st = pg[_row_pfn(lk, r), FLG] & ST_MASK
            if st == ST_BUDDY or st == ST_PCP or st == ST_ISOLATED:
                live[p] = 1
                n += 1
                break
    return n


# ---------------------------------------------------------------- list primitives


@njit(inline="always")
def _link_head(lk, lists, lid, pfn):
    h = lists[lid, HEAD]
    lk[_row(lk, pfn), PREV] = NIL
    lk[_row(lk, pfn), NEXT] = h
    if h == NIL:
        lists[lid, TAIL] = pfn
    else:
        lk[_row(lk, h), PREV] = pfn
    lists[lid, HEAD] = pfn


@njit(inline="always")
def _link_tail(lk, lists, lid, pfn):
    t = lists[lid, TAIL]
    lk[_row(lk, pfn), NEXT] = NIL
    lk[_row(lk, pfn), PREV] = t
    if t == NIL:
        lists[lid, HEAD] = pfn
    else:
        lk[_row(lk, t), NEXT] = pfn
    lists[lid, TAIL] = pfn


@njit(inline="always")
def _unlink(lk, lists, lid, pfn):
    p = lk[_row(lk, pfn), PREV]
    n = lk[_row(lk, pfn), NEXT]
    if p == NIL:
        lists[lid, HEAD] = n
    else:
        lk[_row(lk, p), NEXT] = n
    if n == NIL:
        lists[lid, TAIL] = p
    else:
        lk[_row(lk, n), PREV] = p


@njit(inline="always")
def _rotate_to_front(lk, lists, lid, pfn):
    """L = L[idx(pfn):] + L[:idx(pfn)] (§4.4)."""
    head = lists[lid, HEAD]
    if head == pfn:
        return
    tail = lists[lid, TAIL]
    p = lk[_row(lk, pfn), PREV]
    lk[_row(lk, p), NEXT] = NIL
    lk[_row(lk, pfn), PREV] = NIL
    lk[_row(lk, tail), NEXT] = head
    lk[_row(lk, head), PREV] = tail
    lists[lid, HEAD] = pfn
    lists[lid, TAIL] = p


@njit(inline="always")
def _fl_id(nro, z, order, mt):
    return (z * nro + order) * MT_TYPES + mt


@njit(inline="always")
def _is_free_head(pg, pfn, order):
    return (pg[pfn, FLG] & ST_MASK) == ST_BUDDY and pg[pfn, ORD] == order


@njit(inline="always")
def _list_mt(pg, pfn):
    return np.int64(pg[pfn, FLG] >> MT_SHIFT)


@njit(inline="always")
def _del_free(lk, pg, fl, nr_free, g, z, pfn, order, lid):
    """Unlink a free block (del_page_from_free_list): clears Reported (§2.5)."""
    _unlink(lk, fl, lid, pfn)
    nr_free[z, order] -= 1
    if pg[pfn, FLG] & PG_REPORTED:
        g[G_REPORTED_PAGES] -= 1 << order
    pg[pfn, FLG] = ST_NONE


@njit(inline="always")
def _set_head(pg, pfn, order, state, mt):
    pg[pfn, ORD] = order
    pg[pfn, FLG] = state | (mt << MT_SHIFT)


@njit(inline="always")
def _relabel_pageblocks(pbmt, pb, pfn, order, mt):
    """Set the migratetype of every pageblock the block [pfn, pfn + 2**order) touches."""
    for b in range(pfn >> pb, ((pfn + (1 << order) - 1) >> pb) + 1):
        pbmt[b] = mt


# ---------------------------------------------------------------- free path (§2.2-2.3)


@njit(inline="always")
def _merge_refused(profile, mt, bmt):
    if profile == PROFILE_5_7:
        return (mt == MT_ISOLATE) != (bmt == MT_ISOLATE)
    return bmt != mt and (mt >= MT_PCPTYPES or bmt >= MT_PCPTYPES)


@njit(inline="always")
def _coin(g, coins):
    """shuffle_pick_tail: the next random bit; 1 = tail."""
    pos = g[G_COIN_POS]
    if pos >= g[G_COIN_END]:
        raise RuntimeError("shuffle coin words exhausted")
    g[G_COIN_POS] = pos + 1
    return (coins[pos >> 6] >> np.uint64(pos & 63)) & np.uint64(1)


@njit(inline="always")
def _free_one(lk, pg, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, to_tail, notify):
    """__free_one_page: merge (§2.2), place (§2.3), notify (§2.6)."""
    max_order = g[G_MAX_ORDER]
    nro = max_order + 1
    pb = g[G_PB_ORDER]
    z = np.int64(pfn >= g[G_ZONE_SPLIT])
    if mt != MT_ISOLATE:
        zone[z, Z_FREE] += 1 << order
    pg[pfn, FLG] = ST_NONE
    while order < max_order:
        b = pfn ^ (1 << order)
        if not _is_free_head(pg, b, order):
            break
        if order >= pb:
            bmt = np.int64(pbmt[b >> pb])
            profile = g[G_PROFILE]
            if _merge_refused(profile, mt, bmt):
                break
            if profile == PROFILE_MODERN and bmt != mt:
                _relabel_pageblocks(pbmt, pb, b, order, mt)
        _del_free(lk, pg, fl, nr_free, g, z, b, order, _fl_id(nro, z, order, _list_mt(pg, b)))
        pfn = min(pfn, b)
        order += 1
    _set_head(pg, pfn, order, ST_BUDDY, mt)
    tail = to_tail
    if not tail:
        if g[G_SHUFFLE] != 0 and order >= max_order:
            tail = _coin(g, coins) != 0
        elif order < max_order - 1:
            # buddy_merge_likely: is the order+1 buddy of our order+1 block free?
            higher = (pfn & ~(1 << order)) ^ (1 << (order + 1))
            tail = _is_free_head(pg, higher, order + 1)
    lid = _fl_id(nro, z, order, mt)
    if tail:
        _link_tail(lk, fl, lid, pfn)
    else:
        _link_head(lk, fl, lid, pfn)
    nr_free[z, order] += 1
    if notify and order >= g[G_REPORT_ORDER]:
        g[G_NOTIFY] += 1


@njit(inline="always")
def _prefetch_frees(lk, pg, max_order, blocks, j, n, order, mask):
    """Prefetch run at entry j of a batch of buddy frees: the page state (pg line and
    links) of entry j + PREFETCH_FREES_AHEAD and of its order-level buddy.
    order < 0: read the block's order from pg (drained pcp blocks: pg lines warm).
    Entry k is blocks[k & mask]: NO_MASK for a plain array, size - 1 for a ring."""
    k = j + PREFETCH_FREES_AHEAD
    if 0 <= k < n:
        pfn = blocks[k & mask]
        o = order if order >= 0 else np.int64(pg[pfn, ORD])
        _prefetch(pg, pfn)
        _prefetch(lk, _row(lk, pfn))
        if o < max_order:
            b = pfn ^ (np.int64(1) << o)
            _prefetch(pg, b)
            _prefetch(lk, _row(lk, b))


@njit(inline="always")
def _free_pages_bulk(lk, pg, pbmt, fl, nr_free, zone, g, coins, blocks, n, cached_mt):
    """Buddy-free blocks[:n] in order (each at its pg order), notifying; the migratetype is
    the one cached in the block's flags (cached_mt) or the pageblock's."""
    pb = g[G_PB_ORDER]
    max_order = g[G_MAX_ORDER]
    for j in range(-PREFETCH_FREES_AHEAD, n):  # j < 0: fill the pipeline (one inlined site)
        _prefetch_frees(lk, pg, max_order, blocks, j, n, -1, NO_MASK)
        if j < 0:
            continue
        pfn = blocks[j]
        order = np.int64(pg[pfn, ORD])
        mt = _list_mt(pg, pfn) if cached_mt else np.int64(pbmt[pfn >> pb])
        _free_one(lk, pg, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, False, True)


# ---------------------------------------------------------------- per-CPU lists (§3.4)


@njit(inline="always")
def _pindex(g, pcp_idx, order, mt):
    """order_to_pindex: low orders per (order, mt); the THP list(s) shared (6.1) or by
    movability (modern). mt is the list type (< MT_PCPTYPES)."""
    base = np.int64(pcp_idx[order])
    if order == g[G_THP_ORDER]:
        if g[G_PROFILE] == PROFILE_MODERN and mt == MT_MOVABLE:
            return base + 1
        return base
    return base + mt


@njit(inline="always")
def _pcp_push(lk, pg, pcp, pcs, g, zc, li, pfn, order, mt):
    """Link a block at the head of pcp list li of (zone, cpu) zc, mt cached in its flags."""
    _link_head(lk, pcp, zc * g[G_NR_PCP_LISTS] + li, pfn)
    pcs[zc, P_MASK] |= np.int64(1) << li
    pg[pfn, FLG] = ST_PCP | (mt << MT_SHIFT)
    pcs[zc, P_COUNT] += np.int64(1) << order


@njit(inline="always")
def _flush(lk, pg, pbmt, fl, nr_free, zone, g, coins, scratch, taken):
    """Buddy-free the blocks taken from a pcp: 5.7/6.1 with the migratetype cached at free
    time (no pageblock of the model is ever isolated), modern with the pageblock's."""
    if taken > 0:
        _free_pages_bulk(
            lk,
            pg,
            pbmt,
            fl,
            nr_free,
            zone,
            g,
            coins,
            scratch,
            taken,
            g[G_PROFILE] != PROFILE_MODERN,
        )


@njit(inline="always")
def _take_tail(lk, pg, pcp, pcs, g, zc, li):
    """Unlink the tail block of pcp list li of zc; returns (pfn, pages)."""
    lid = zc * g[G_NR_PCP_LISTS] + li
    pfn = np.int64(pcp[lid, TAIL])
    _unlink(lk, pcp, lid, pfn)
    if pcp[lid, HEAD] == NIL:
        pcs[zc, P_MASK] &= ~(np.int64(1) << li)
    size = np.int64(1) << pg[pfn, ORD]
    pcs[zc, P_COUNT] -= size
    return pfn, size


@njit(inline="always")
def _next_pcp_list(pcs, zc, li, nl):
    """The first non-empty pcp list of zc from li on, round-robin (one must exist)."""
    while not (pcs[zc, P_MASK] >> li) & 1:
        li += 1
        if li >= nl:
            li = 0
    return li


@njit(_nrt=False)
def _bulk_free(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, zc, count, pindex):
    """5.14+ free_pcppages_bulk: the list pindex first; each list emptied from its tail
    before moving round-robin to the next non-empty one, until count pages are freed.
    Blocks are buddy-freed in the order taken. The buddy frees never touch a pcp list (a
    taken block keeps ST_PCP until its own free), so taking runs TAKE_AHEAD blocks ahead
    of freeing, through scratch as a ring: the cache miss of each step along a list
    overlaps a buddy free instead of following the one before it."""
    nl = g[G_NR_PCP_LISTS]
    count = min(count, pcs[zc, P_COUNT])
    mask = scratch.shape[0] - 1  # a power of two
    pb = g[G_PB_ORDER]
    max_order = g[G_MAX_ORDER]
    cached_mt = g[G_PROFILE] != PROFILE_MODERN
    li = pindex
    taken = 0
    while count > 0 and taken < TAKE_AHEAD:
        li = _next_pcp_list(pcs, zc, li, nl)
        pfn, size = _take_tail(lk, pg, pcp, pcs, g, zc, li)
        count -= size
        scratch[taken & mask] = pfn
        taken += 1
    j = -PREFETCH_FREES_AHEAD  # j < 0: fill the pipeline (one inlined site of each helper)
    while j < taken:
        if j >= 0 and count > 0:
            li = _next_pcp_list(pcs, zc, li, nl)
            pfn, size = _take_tail(lk, pg, pcp, pcs, g, zc, li)
            count -= size
            scratch[taken & mask] = pfn
            taken += 1
        _prefetch_frees(lk, pg, max_order, scratch, j, taken, -1, mask)
        if j >= 0:
            pfn = scratch[j & mask]
            order = np.int64(pg[pfn, ORD])
            mt = _list_mt(pg, pfn) if cached_mt else np.int64(pbmt[pfn >> pb])
            _free_one(lk, pg, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, False, True)
        j += 1


@njit(_nrt=False)
def _bulk_free_57(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, zc, count):
    """5.7 free_pcppages_bulk: the cursor starts before list 0 every call and moves first
    (MOVABLE is visited first); batch_free grows per list visited, empty ones included,
    and shrinks per page; at batch_free == 3 the only non-empty list gives up the rest.
    Taken blocks are buddy-freed whenever scratch is full and at the end, from one call
    site of the inlined free (each site is compiled in full); the buddy frees never touch
    a pcp list, so when they run does not change what is taken."""
    count = min(count, pcs[zc, P_COUNT])
    li = 0
    batch_free = 0
    taken = 0
    cap = scratch.shape[0]
    while count > 0:
        while True:
            batch_free += 1
            li += 1
            if li == MT_PCPTYPES:
                li = 0
            if (pcs[zc, P_MASK] >> li) & 1:
                break
        if batch_free == MT_PCPTYPES:
            batch_free = count
        while True:
            pfn, _ = _take_tail(lk, pg, pcp, pcs, g, zc, li)
            scratch[taken] = pfn
            taken += 1
            count -= 1
            if taken == cap or count == 0:
                _flush(lk, pg, pbmt, fl, nr_free, zone, g, coins, scratch, taken)
                taken = 0
            if count == 0:
                break
            batch_free -= 1
            if batch_free == 0 or not (pcs[zc, P_MASK] >> li) & 1:
                break


@njit(_nrt=False)
def _drain_zc(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, zc):
    """drain_pages_zone: all of one pcp (5.7: its bulk rule; 5.14+: lists in pindex order)."""
    count = pcs[zc, P_COUNT]
    if count == 0:
        return
    if g[G_PROFILE] == PROFILE_5_7:
        _bulk_free_57(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, zc, count)
    else:
        _bulk_free(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, zc, count, 0)


@njit(_nrt=False)
def _drain_all(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch):
    """drain_all_pages: every vCPU, and on each every zone ascending."""
    ncpu = g[G_NCPU]
    for cpu in range(ncpu):
        for z in range(g[G_NR_ZONES]):
            _drain_zc(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, z * ncpu + cpu)


@njit(inline="always")
def _nr_pcp_high(pcs, zone, z, zc, free_high):
    """modern nr_pcp_high: the drain threshold; moves pcs[zc, P_HIGH] on the way."""
    batch = pcs[zc, P_BATCH]
    hmin = pcs[zc, P_HIGH_MIN]
    hmax = pcs[zc, P_HIGH_MAX]
    high = min(max(pcs[zc, P_HIGH], hmin), hmax)
    pcs[zc, P_HIGH] = high
    if high == 0:
        return np.int64(0)
    if free_high:
        pcs[zc, P_HIGH] = max(high - (batch << PCP_BATCH_SCALE_MAX), hmin)
        return np.int64(0)
    if zone[z, Z_RECLAIM_ACTIVE] != 0:  # kswapd at work: high shrinks, at most 4 batches kept
        pcs[zc, P_HIGH] = max(high - max(pcs[zc, P_FREE_COUNT], batch), hmin)
        return min(batch << 2, pcs[zc, P_HIGH])
    if hmin == hmax:
        return high
    if zone[z, Z_BELOW_HIGH] != 0:  # any free with count >= high_min drains
        pcs[zc, P_HIGH] = max(high - max(pcs[zc, P_FREE_COUNT], batch), hmin)
        return max(pcs[zc, P_COUNT], hmin)
    if pcs[zc, P_COUNT] >= high:
        need_high = pcs[zc, P_FREE_COUNT] + batch
        if pcs[zc, P_HIGH] < need_high:
            pcs[zc, P_HIGH] = min(max(need_high, hmin), hmax)
    return high


@njit(inline="always")
def _commit_free(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, z, zc, order, li):
    """free_unref_page_commit after the push: drain per the profile (§3.4)."""
    profile = g[G_PROFILE]
    batch = pcs[zc, P_BATCH]
    if profile == PROFILE_5_7:
        if pcs[zc, P_COUNT] >= pcs[zc, P_HIGH]:
            _bulk_free_57(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, zc, batch)
        return
    if profile == PROFILE_6_1:
        ff = pcs[zc, P_FREE_FACTOR]
        free_high = ff > 0 and 1 <= order <= COSTLY_ORDER
        high = np.int64(0) if free_high else pcs[zc, P_HIGH]
        if high != 0 and zone[z, Z_RECLAIM_ACTIVE] != 0:  # nr_pcp_high under reclaim
            high = min(batch << 2, high)
        if pcs[zc, P_COUNT] < high:
            return
        if free_high:
            n = pcs[zc, P_COUNT]
        elif high < batch:
            n = np.int64(1)
        else:
            hi = high - batch
            n = batch << ff if ff < 62 else hi
            if n < hi:
                pcs[zc, P_FREE_FACTOR] = ff + 1
            n = min(max(n, batch), hi)  # the kernel's clamp: hi wins when hi < lo
        _bulk_free(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, zc, n, li)
        return
    pcs[zc, P_ALLOC_FACTOR] >>= 1
    free_high = False
    if 1 <= order <= COSTLY_ORDER:
        free_high = (
            pcs[zc, P_FREE_COUNT] >= batch + (pcs[zc, P_HIGH_MIN] >> 1)
            and pcs[zc, P_PREV_HIGH_ORDER] != 0
            and (g[G_FREE_HIGH_BATCH] == 0 or pcs[zc, P_COUNT] >= batch)
        )
        pcs[zc, P_PREV_HIGH_ORDER] = 1
    else:
        pcs[zc, P_PREV_HIGH_ORDER] = 0
    if pcs[zc, P_FREE_COUNT] < batch << PCP_BATCH_SCALE_MAX:
        pcs[zc, P_FREE_COUNT] += np.int64(1) << order
    high = _nr_pcp_high(pcs, zone, z, zc, free_high)
    if pcs[zc, P_COUNT] < high:
        return
    if free_high:
        n = min(pcs[zc, P_COUNT], batch << PCP_BATCH_SCALE_MAX)
    elif high < batch:
        n = np.int64(1)
    else:
        n = min(max(pcs[zc, P_FREE_COUNT], batch), high - batch)
    _bulk_free(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, zc, n, li)
    if zone[z, Z_BELOW_HIGH] != 0 and zone[z, Z_FREE] > zone[z, Z_HIGH]:
        zone[z, Z_BELOW_HIGH] = 0


@njit(cache=True, _nrt=False)
def k_free(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, pcp_idx, pfns, order, cpu):
    """free(): pcp orders to the head of the vCPU's pcp list (drain per profile), others,
    and ISOLATE pageblocks, to the buddy."""
    pcp_order = pcp_idx[order] >= 0
    pb = g[G_PB_ORDER]
    ncpu = g[G_NCPU]
    n = pfns.shape[0]
    max_order = g[G_MAX_ORDER]
    # i < 0: fill the buddy frees' pipeline (one inlined site of it)
    for i in range(0 if pcp_order else -PREFETCH_FREES_AHEAD, n):
        if not pcp_order:
            _prefetch_frees(lk, pg, max_order, pfns, i, n, order, NO_MASK)
            if i < 0:
                continue
        elif i + PREFETCH_DISTANCE < n:
            _prefetch(lk, _row(lk, pfns[i + PREFETCH_DISTANCE]))
            _prefetch(pg, pfns[i + PREFETCH_DISTANCE])
        pfn = pfns[i]
        mt = np.int64(pbmt[pfn >> pb])
        if not pcp_order or mt == MT_ISOLATE:
            _free_one(lk, pg, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, False, True)
            continue
        z = np.int64(pfn >= g[G_ZONE_SPLIT])
        zc = z * ncpu + cpu
        li = _pindex(g, pcp_idx, order, mt if mt < MT_PCPTYPES else MT_MOVABLE)
        _pcp_push(lk, pg, pcp, pcs, g, zc, li, pfn, order, mt)
        _commit_free(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, z, zc, order, li)


@njit(cache=True, _nrt=False)
def k_pcp_decay_pending(pcs):
    """Whether decay_pcp_high would change any pcp: high above high_min, or more pages
    than high (one call instead of five numpy operations: asked per guest per epoch)."""
    for r in range(pcs.shape[0]):
        if pcs[r, P_HIGH] > pcs[r, P_HIGH_MIN] or pcs[r, P_COUNT] > pcs[r, P_HIGH]:
            return True
    return False


@njit(cache=True, _nrt=False)
def k_drain_pcp(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch):
    """drain_pcp(): drain_all_pages."""
    _drain_all(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch)


@njit(cache=True, _nrt=False)
def k_decay_pcp(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch):
    """modern decay_pcp_high on every vCPU, zones ascending: high steps an eighth toward
    high_min (never below count - (batch << 5)); the pages above it are freed from list 0.
    Returns how many pcps still had work."""
    ncpu = g[G_NCPU]
    todo = 0
    for cpu in range(ncpu):
        for z in range(g[G_NR_ZONES]):
            zc = z * ncpu + cpu
            hmin = pcs[zc, P_HIGH_MIN]
            high = pcs[zc, P_HIGH]
            if high > hmin:
                high = max(
                    pcs[zc, P_COUNT] - (pcs[zc, P_BATCH] << PCP_BATCH_SCALE_MAX),
                    high - (high >> 3),
                    hmin,
                )
                pcs[zc, P_HIGH] = high
                if high > hmin:
                    todo += 1
            to_drain = pcs[zc, P_COUNT] - high
            if to_drain > 0:
                _bulk_free(
                    lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch, zc, to_drain, 0
                )
                todo += 1
    return todo


@njit(cache=True, _nrt=False)
def k_check_free(pg, g, pfns, order):
    """Validate a free batch: (code, index of the bad entry). On error the state is
    unchanged. On success every pfn keeps PG_MARK: the caller must run k_free on the
    same batch next, which rewrites each freed head's flags (one pass saved)."""
    nr_pages = g[G_NR_PAGES]
    mask = (1 << order) - 1
    n = pfns.shape[0]
    bad = -1
    code = CHECK_OK
    for i in range(n):
        if i + PREFETCH_DISTANCE < n:
            ahead = pfns[i + PREFETCH_DISTANCE]
            if 0 <= ahead < nr_pages:
                _prefetch(pg, ahead)
        pfn = pfns[i]
        if pfn < 0 or pfn >= nr_pages:
            code = CHECK_RANGE
        elif pfn & mask:
            code = CHECK_ALIGN
        elif (pg[pfn, FLG] & ST_MASK) != ST_ALLOC:
            code = CHECK_NOT_ALLOCATED
        elif pg[pfn, ORD] != order:
            code = CHECK_WRONG_ORDER
        elif pg[pfn, FLG] & PG_MARK:
            code = CHECK_DUPLICATE
        if code != CHECK_OK:
            bad = i
            break
        pg[pfn, FLG] |= PG_MARK
    if bad >= 0:
        for i in range(bad):
            pg[pfns[i], FLG] &= ~PG_MARK
    return code, bad


# ---------------------------------------------------------------- alloc path (§3.1-3.4)


@njit(inline="always")
def _expand(lk, pg, fl, nr_free, nro, z, pfn, low, high, mt):
    """expand(): upper halves go to the head of their lists, unreported (§3.2)."""
    while high > low:
        high -= 1
        upper = pfn + (1 << high)
        _link_head(lk, fl, _fl_id(nro, z, high, mt), upper)
        _set_head(pg, upper, high, ST_BUDDY, mt)
        nr_free[z, high] += 1


@njit(inline="always")
def _take_block(lk, pg, fl, nr_free, zone, g, z, pfn, low, high, mt, expand_mt):
    """Unlink a free block of order high from list mt and split it down to order low."""
    nro = g[G_MAX_ORDER] + 1
    _del_free(lk, pg, fl, nr_free, g, z, pfn, high, _fl_id(nro, z, high, mt))
    _expand(lk, pg, fl, nr_free, nro, z, pfn, low, high, expand_mt)
    zone[z, Z_FREE] -= 1 << low


@njit(inline="always")
def _rmqueue_smallest(lk, pg, fl, nr_free, zone, g, z, order, mt):
    """__rmqueue_smallest: the head of the first non-empty list of mt, split (§3.1)."""
    nro = g[G_MAX_ORDER] + 1
    lid = _fl_id(nro, z, order, mt)
    for o in range(order, nro):
        pfn = np.int64(fl[lid, HEAD])
        if pfn != NIL:
            nx = lk[_row(lk, pfn), NEXT]  # unlink the head
            fl[lid, HEAD] = nx
            if nx == NIL:
                fl[lid, TAIL] = NIL
            else:
                lk[_row(lk, nx), PREV] = NIL
            nr_free[z, o] -= 1
            if pg[pfn, FLG] & PG_REPORTED:
                g[G_REPORTED_PAGES] -= 1 << o
            pg[pfn, FLG] = ST_NONE
            _expand(lk, pg, fl, nr_free, nro, z, pfn, order, o, mt)
            zone[z, Z_FREE] -= 1 << order
            return pfn
        lid += MT_TYPES
    return np.int64(NIL)


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
    nro = g[G_MAX_ORDER] + 1
    for i in range(2):
        fmt = FALLBACKS[start_mt, i]
        if fl[_fl_id(nro, z, order, fmt), HEAD] != NIL:
            return fmt
    return -1


@njit(_nrt=False)
def _move_free_block(lk, pg, fl, g, z, pfn, order, new_mt, to_tail):
    """move_to_free_list: keeps Reported (§2.5)."""
    nro = g[G_MAX_ORDER] + 1
    _unlink(lk, fl, _fl_id(nro, z, order, _list_mt(pg, pfn)), pfn)
    lid = _fl_id(nro, z, order, new_mt)
    if to_tail:
        _link_tail(lk, fl, lid, pfn)
    else:
        _link_head(lk, fl, lid, pfn)
    pg[pfn, FLG] = (pg[pfn, FLG] & ~MT_BITS) | (new_mt << MT_SHIFT)


@njit(_nrt=False)
def _pageblock_census(lk, pg, fl, g, z, start, move, new_mt, to_tail):
    """Walk one pageblock by heads: (free pages, movable allocated pages); with move,
    also move every free block in it to new_mt's list (move_freepages_block)."""
    end = start + (1 << g[G_PB_ORDER])
    free_pages = 0
    movable_pages = 0
    pfn = start
    while pfn < end:
        st = pg[pfn, FLG] & ST_MASK
        if st == ST_NONE:  # not a head: cannot happen in a consistent state
            pfn += 1
            continue
        size = np.int64(1) << pg[pfn, ORD]
        if st == ST_BUDDY:
            free_pages += size
            if move:
                _move_free_block(lk, pg, fl, g, z, pfn, np.int64(pg[pfn, ORD]), new_mt, to_tail)
        elif st == ST_ALLOC and _list_mt(pg, pfn) == MT_MOVABLE:
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
def _fallback_5_7(lk, pg, pbmt, fl, nr_free, g, z, order, start_mt, nofrag):
    """5.7-era __rmqueue_fallback: move a fallback block to start_mt; True if it did."""
    max_order = g[G_MAX_ORDER]
    pb = g[G_PB_ORDER]
    to_tail = g[G_PROFILE] != PROFILE_5_7  # move_to_free_list goes to the tail from 5.10
    # ALLOC_NOFRAGMENT: every request order in 5.7; 6.1 has the order < pageblock guard
    min_order = pb if nofrag and (g[G_PROFILE] == PROFILE_5_7 or order < pb) else order
    found = -1
    co = max_order
    while co >= min_order:
        found = _find_fallback(fl, nr_free, g, z, co, start_mt)
        if found >= 0:
            break
        co -= 1
    if found < 0:
        return False
    can_steal = _can_claim(g, co, start_mt)
    if not can_steal and start_mt == MT_MOVABLE and co > order:
        for o in range(order, max_order + 1):  # find_smallest
            found = _find_fallback(fl, nr_free, g, z, o, start_mt)
            if found >= 0:
                co = o
                break
        can_steal = _can_claim(g, co, start_mt)
    page = np.int64(fl[_fl_id(max_order + 1, z, co, found), HEAD])
    old_mt = pbmt[page >> pb]
    if old_mt != MT_HIGHATOMIC:
        if co >= pb:
            _relabel_pageblocks(pbmt, pb, page, co, start_mt)
        elif can_steal:
            start = page & ~((1 << pb) - 1)
            free_pages, movable_pages = _pageblock_census(
                lk, pg, fl, g, z, start, True, start_mt, to_tail
            )
            if _claim_enough(g, start_mt, old_mt, free_pages, movable_pages):
                pbmt[start >> pb] = start_mt
            return True
    _move_free_block(lk, pg, fl, g, z, page, co, start_mt, to_tail)
    return True


@njit(_nrt=False)
def _claim_modern(lk, pg, pbmt, fl, nr_free, zone, g, z, order, start_mt, nofrag):
    """__rmqueue_claim: largest first; whole pageblocks or a majority-free pageblock."""
    pb = g[G_PB_ORDER]
    nro = g[G_MAX_ORDER] + 1
    min_order = pb if nofrag and order < pb else order  # ALLOC_NOFRAGMENT
    co = nro - 1
    while co >= min_order:
        fmt = _find_fallback(fl, nr_free, g, z, co, start_mt)
        if fmt >= 0:
            if not _can_claim(g, co, start_mt):
                return np.int64(NIL)  # orders too low to claim
            page = np.int64(fl[_fl_id(nro, z, co, fmt), HEAD])
            if co >= pb:
                _del_free(lk, pg, fl, nr_free, g, z, page, co, _fl_id(nro, z, co, fmt))
                _relabel_pageblocks(pbmt, pb, page, co, start_mt)
                _expand(lk, pg, fl, nr_free, nro, z, page, order, co, start_mt)
                zone[z, Z_FREE] -= 1 << order
                return page
            start = page & ~((1 << pb) - 1)
            free_pages, movable_pages = _pageblock_census(
                lk, pg, fl, g, z, start, False, start_mt, True
            )
            if _claim_enough(g, start_mt, fmt, free_pages, movable_pages):
                _pageblock_census(lk, pg, fl, g, z, start, True, start_mt, True)
                pbmt[start >> pb] = start_mt
                return _rmqueue_smallest(lk, pg, fl, nr_free, zone, g, z, order, start_mt)
        co -= 1
    return np.int64(NIL)


@njit(_nrt=False)
def _steal_modern(lk, pg, fl, nr_free, zone, g, z, order, start_mt):
    """__rmqueue_steal: smallest first, one block, split keeping the fallback type."""
    nro = g[G_MAX_ORDER] + 1
    for co in range(order, nro):
        fmt = _find_fallback(fl, nr_free, g, z, co, start_mt)
        if fmt >= 0:
            page = np.int64(fl[_fl_id(nro, z, co, fmt), HEAD])
            _take_block(lk, pg, fl, nr_free, zone, g, z, page, order, co, fmt, fmt)
            return page
    return np.int64(NIL)


@njit(_nrt=False)
def _rmqueue_fallback(lk, pg, pbmt, fl, nr_free, zone, g, z, order, mt, nofrag):
    """Fallback after smallest-fit failed (§3.3): 5.7-era, or modern claim then steal."""
    if mt >= MT_PCPTYPES:
        return np.int64(NIL)  # HIGHATOMIC/CMA requests never fall back
    if g[G_PROFILE] != PROFILE_MODERN:
        while _fallback_5_7(lk, pg, pbmt, fl, nr_free, g, z, order, mt, nofrag):
            pfn = _rmqueue_smallest(lk, pg, fl, nr_free, zone, g, z, order, mt)
            if pfn != NIL:
                return pfn
        return np.int64(NIL)
    pfn = _claim_modern(lk, pg, pbmt, fl, nr_free, zone, g, z, order, mt, nofrag)
    if pfn == NIL and not nofrag:
        pfn = _steal_modern(lk, pg, fl, nr_free, zone, g, z, order, mt)
    return pfn


@njit(inline="always")
def _rmqueue(lk, pg, pbmt, fl, nr_free, zone, g, z, order, mt, nofrag):
    """__rmqueue: smallest fit, then the profile's fallback."""
    pfn = _rmqueue_smallest(lk, pg, fl, nr_free, zone, g, z, order, mt)
    if pfn != NIL:
        return pfn
    return _rmqueue_fallback(lk, pg, pbmt, fl, nr_free, zone, g, z, order, mt, nofrag)


@njit(inline="always")
def _pcp_pop_factor(pcs, profile, zc, pops):
    """rmqueue_pcplist's halving on every pcp allocation: 6.1 free_factor, modern
    free_count (pops allocations in a row)."""
    if profile == PROFILE_5_7 or pops <= 0:
        return
    f = P_FREE_FACTOR if profile == PROFILE_6_1 else P_FREE_COUNT
    v = pcs[zc, f]
    if v != 0:  # stored only when it moves: a store makes every later state load reload
        pcs[zc, f] = v >> pops if pops < 63 else 0


@njit(inline="always")
def _nr_pcp_alloc(pcs, zone, profile, z, zc, order):
    """Blocks one refill takes: 5.7 batch; 6.1 max(batch >> order, 2) when batch > 1;
    modern nr_pcp_alloc (order-0 refills grow with alloc_factor; high rises by them)."""
    batch = pcs[zc, P_BATCH]
    if profile == PROFILE_5_7:
        return batch
    if profile == PROFILE_MODERN:
        base = batch
        hmin = pcs[zc, P_HIGH_MIN]
        hmax = pcs[zc, P_HIGH_MAX]
        old = pcs[zc, P_HIGH]
        high = min(max(old, hmin), hmax)
        if order == 0:
            batch = base << pcs[zc, P_ALLOC_FACTOR]
        if high >= base and hmin != hmax and zone[z, Z_BELOW_HIGH] == 0:
            high = min(high + batch, hmax)
        if high != old:
            pcs[zc, P_HIGH] = high
        if high < base:
            return np.int64(1)
        if order == 0:
            max_nr_alloc = max(high - pcs[zc, P_COUNT] - base, base)
            if batch <= max_nr_alloc and pcs[zc, P_ALLOC_FACTOR] < PCP_BATCH_SCALE_MAX:
                pcs[zc, P_ALLOC_FACTOR] += 1
            batch = min(batch, max_nr_alloc)
    if batch > 1:
        return max(batch >> order, np.int64(2))
    return batch


@njit(inline="always")
def _pcp_alloc(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, pcp_idx, z, zc, order, mt, nofrag):
    """rmqueue_pcplist: halve the free factor, pop the head; refill an empty list first."""
    _pcp_pop_factor(pcs, g[G_PROFILE], zc, 1)
    li = _pindex(g, pcp_idx, order, mt)
    lid = zc * g[G_NR_PCP_LISTS] + li
    if pcp[lid, HEAD] == NIL:
        want = _nr_pcp_alloc(pcs, zone, g[G_PROFILE], z, zc, order)
        return _pcp_refill_pop(
            lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, z, zc, li, order, mt, nofrag, want
        )
    return _pcp_pop(lk, pcp, pcs, g, zc, li, order)


@njit(inline="always")
def _pcp_pop(lk, pcp, pcs, g, zc, li, order):
    """Unlink the head of a non-empty pcp list li of zc."""
    lid = zc * g[G_NR_PCP_LISTS] + li
    pfn = np.int64(pcp[lid, HEAD])
    _unlink(lk, pcp, lid, pfn)
    if pcp[lid, HEAD] == NIL:
        pcs[zc, P_MASK] &= ~(np.int64(1) << li)
    pcs[zc, P_COUNT] -= 1 << order
    return pfn


@njit(inline="always")
def _pcp_refill_pop(
    lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, z, zc, li, order, mt, nofrag, want
):
    """rmqueue_bulk into the empty list li of zc (want blocks, appended in the order
    obtained), then pop its head; NIL if the buddy gave nothing."""
    lid = zc * g[G_NR_PCP_LISTS] + li
    for _ in range(want):
        blk = _rmqueue(lk, pg, pbmt, fl, nr_free, zone, g, z, order, mt, nofrag)
        if blk == NIL:
            break
        _link_tail(lk, pcp, lid, blk)
        _set_head(pg, blk, order, ST_PCP, mt)
        pcs[zc, P_COUNT] += 1 << order
    if pcp[lid, HEAD] == NIL:
        return np.int64(NIL)
    pcs[zc, P_MASK] |= np.int64(1) << li
    return _pcp_pop(lk, pcp, pcs, g, zc, li, order)


@njit(inline="always")
def _zone_gate(zone, profile, z, order):
    """modern: note ZONE_BELOW_HIGH when free pages fail the high mark; then the min mark."""
    size = np.int64(1) << order
    below = zone[z, Z_FREE] - size < zone[z, Z_HIGH]
    if profile == PROFILE_MODERN and zone[z, Z_BELOW_HIGH] == 0 and below:
        zone[z, Z_BELOW_HIGH] = 1
    return zone[z, Z_FREE] - size >= zone[z, Z_MIN]


@njit(inline="always")
def _alloc_one(
    lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, pcp_idx, order, mt, pcp_ok, cpu, nofrag
):
    """One block: zones from the highest index down, each behind its min watermark."""
    ncpu = g[G_NCPU]
    for z in range(g[G_NR_ZONES] - 1, -1, -1):
        if not _zone_gate(zone, g[G_PROFILE], z, order):
            continue
        if pcp_ok:
            pfn = _pcp_alloc(
                lk,
                pg,
                pbmt,
                fl,
                pcp,
                pcs,
                nr_free,
                zone,
                g,
                pcp_idx,
                z,
                z * ncpu + cpu,
                order,
                mt,
                nofrag,
            )
        else:
            pfn = _rmqueue(lk, pg, pbmt, fl, nr_free, zone, g, z, order, mt, nofrag)
        if pfn != NIL:
            return pfn
    return np.int64(NIL)


@njit(inline="always")
def _alloc_walks(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, pcp_idx, order, mt, pcp_ok, cpu):
    """With two zones the walk is first done under ALLOC_NOFRAGMENT, then without (§3.3).
    (One call site of the inlined walk, in a loop: each site is compiled in full.)"""
    nofrag = g[G_NR_ZONES] > 1
    while True:
        pfn = _alloc_one(
            lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, pcp_idx, order, mt, pcp_ok, cpu, nofrag
        )
        if pfn != NIL or not nofrag:
            return pfn
        nofrag = False


@njit(inline="always")
def _pcp_refill_direct(
    lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, zc, order, mt, li, want, out, n
):
    """A single zone's empty pcp list refilled and popped `want` times in a row, without
    the list: the refill's blocks go straight to out. The first pop passed its gate before
    the refill; the later pops all pass or all fail the same gate (nothing changes
    NR_FREE_PAGES between them). Blocks whose pop fails stay on the list, as the
    step-by-step path leaves them, and the caller goes on step by step. Returns the new n."""
    size = np.int64(1) << order
    got = 0
    for _ in range(want):
        blk = _rmqueue(lk, pg, pbmt, fl, nr_free, zone, g, 0, order, mt, False)
        if blk == NIL:
            break
        _set_head(pg, blk, order, ST_PCP, mt)  # as in the list, for any census meanwhile
        out[n + got] = blk
        got += 1
    if got == 0:
        return n
    keep = 1
    if got > 1:
        profile = g[G_PROFILE]
        keep = got if _zone_gate(zone, profile, 0, order) else 1
        _pcp_pop_factor(pcs, profile, zc, keep - 1)
    for i in range(keep):
        _set_head(pg, out[n + i], order, ST_ALLOC, mt)
    if keep < got:
        lid = zc * g[G_NR_PCP_LISTS] + li
        for i in range(keep, got):
            _link_tail(lk, pcp, lid, out[n + i])
            pcs[zc, P_COUNT] += size
        pcs[zc, P_MASK] |= np.int64(1) << li
    return n + keep


GO_GENERIC = -2  # _alloc_direct: the next block takes the generic path


@njit(inline="always")
def _pcp_pop_run(lk, pg, pcp, pcs, zc, li, lid, order, mt, count, out, n):
    """rmqueue_pcplist's pops in a row from the non-empty pcp list lid, into out, until
    the list is empty or out holds count blocks; returns the new n. The caller checks
    the zone gate once for all of them: pages on a pcp list are not in NR_FREE_PAGES,
    so each pop would see the same gate, and the walk (zones from the highest down)
    stops at this list each time (its free factor halving is the caller's, once for
    all the pops). Only the list's new head needs its PREV link cleared."""
    pfn = np.int64(pcp[lid, HEAD])
    n0 = n
    while n < count and pfn != NIL:
        _set_head(pg, pfn, order, ST_ALLOC, mt)
        out[n] = pfn
        n += 1
        pfn = np.int64(lk[_row(lk, pfn), NEXT])
    pcp[lid, HEAD] = pfn
    if pfn == NIL:
        pcp[lid, TAIL] = NIL
        pcs[zc, P_MASK] &= ~(np.int64(1) << li)
    else:
        lk[_row(lk, pfn), PREV] = NIL
    pcs[zc, P_COUNT] -= (n - n0) << order
    return n


@njit(_nrt=False)
def _alloc_direct(
    lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, zc, li, lid, order, mt, count, out, n
):
    """k_alloc's single-zone fast path, in a function of its own so that its loop stays
    small: while the vCPU's pcp list is empty and the zone passes its gate, refill the
    list straight into out. Returns (n, pfn): pfn is a block the step-by-step refill
    popped (the caller records it), NIL when a refill found nothing (the caller's slow
    path), or GO_GENERIC when the list is not empty (the caller pops it) or the gate
    fails (the caller takes that block by the generic walk, whose gate gives the same
    answer)."""
    profile = g[G_PROFILE]
    while n < count:
        if pcp[lid, HEAD] != NIL or not _zone_gate(zone, profile, 0, order):
            return n, np.int64(GO_GENERIC)
        _pcp_pop_factor(pcs, profile, zc, 1)
        want = _nr_pcp_alloc(pcs, zone, profile, 0, zc, order)
        if count - n < want:
            pfn = _pcp_refill_pop(
                lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, 0, zc, li, order, mt, False, want
            )
            return n, pfn
        n0 = n
        n = _pcp_refill_direct(
            lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, zc, order, mt, li, want, out, n
        )
        if n == n0:
            return n, np.int64(NIL)  # the refill found nothing
    return n, np.int64(GO_GENERIC)


@njit(cache=True, _nrt=False)
def k_alloc(
    lk,
    pg,
    pbmt,
    fl,
    pcp,
    pcs,
    nr_free,
    zone,
    g,
    coins,
    scratch,
    pcp_idx,
    order,
    mt,
    count,
    cpu,
    out,
):
    """alloc(): blocks until one fails; a failed block drains every pcp list and is tried
    once more (the slow path's drain_all_pages) before the batch stops."""
    pcp_ok = pcp_idx[order] >= 0 and mt < MT_PCPTYPES
    direct = pcp_ok and g[G_NR_ZONES] == 1
    li = _pindex(g, pcp_idx, order, mt) if pcp_ok else np.int64(0)
    zc = np.int64(cpu)  # zone 0 of this vCPU (single zone)
    lid = zc * g[G_NR_PCP_LISTS] + li
    # the walk's first stop: the highest zone's pcp list of this vCPU
    top = g[G_NR_ZONES] - 1
    tzc = top * g[G_NCPU] + cpu
    tlid = tzc * g[G_NR_PCP_LISTS] + li
    n = 0
    while n < count:
        if pcp_ok and pcp[tlid, HEAD] != NIL and _zone_gate(zone, g[G_PROFILE], top, order):
            # what the walk would do block after block: pop that list (a failed gate
            # is asked again by the walk, with the same answer)
            n0 = n
            n = _pcp_pop_run(lk, pg, pcp, pcs, tzc, li, tlid, order, mt, count, out, n)
            _pcp_pop_factor(pcs, g[G_PROFILE], tzc, n - n0)
            continue
        pfn = np.int64(GO_GENERIC)
        if direct:
            n, pfn = _alloc_direct(
                lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, zc, li, lid, order, mt, count, out, n
            )
            if n >= count:
                break
        # the walks, and after a failure (theirs or the direct path's) one drain of every
        # pcp list and the walks once more; one call site of the inlined walks, since
        # each site is compiled in full
        retried = False
        while pfn == GO_GENERIC or (pfn == NIL and not retried):
            if pfn == NIL:
                retried = True
                pcp_pages = 0
                for i in range(pcs.shape[0]):
                    pcp_pages += pcs[i, P_COUNT]
                if pcp_pages == 0:
                    break
                _drain_all(lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, coins, scratch)
            pfn = _alloc_walks(
                lk, pg, pbmt, fl, pcp, pcs, nr_free, zone, g, pcp_idx, order, mt, pcp_ok, cpu
            )
        if pfn == NIL:
            break
        _set_head(pg, pfn, order, ST_ALLOC, mt)
        out[n] = pfn
        n += 1
    return n


# ---------------------------------------------------------------- boot (§2.5b)


@njit(cache=True, _nrt=False)
def k_boot(lk, pg, fl, nr_free, zone, g, to_tail):
    """Release every zone as max_order blocks, ascending pfn, MOVABLE, without notifying."""
    max_order = g[G_MAX_ORDER]
    size = np.int64(1) << max_order
    for z in range(g[G_NR_ZONES]):
        lid = _fl_id(max_order + 1, z, max_order, MT_MOVABLE)
        for pfn in range(zone[z, Z_START], zone[z, Z_END], size):
            _set_head(pg, pfn, max_order, ST_BUDDY, MT_MOVABLE)
            if to_tail:
                _link_tail(lk, fl, lid, pfn)
            else:
                _link_head(lk, fl, lid, pfn)
            nr_free[z, max_order] += 1
            zone[z, Z_FREE] += size


# ---------------------------------------------------------------- reporting (§4.4-4.6)


@njit(_nrt=False)
def _highatomic_pages(lk, fl, g, z):
    """Free pages on the zone's HIGHATOMIC lists (subtracted by watermark tests)."""
    nro = g[G_MAX_ORDER] + 1
    pages = 0
    for o in range(nro):
        pfn = fl[_fl_id(nro, z, o, MT_HIGHATOMIC), HEAD]
        while pfn != NIL:
            pages += 1 << o
            pfn = lk[_row(lk, pfn), NEXT]
    return pages


@njit(_nrt=False)
def _isolate_relabel(lk, pg, pbmt, fl, g, z, pfn, order):
    """§4.5: relabel the block's mergeable non-MOVABLE pageblocks to MOVABLE; in the
    modern profile their free blocks not on a MOVABLE list follow (to the tail)."""
    pb = g[G_PB_ORDER]
    modern = g[G_PROFILE] == PROFILE_MODERN
    for b in range(pfn >> pb, ((pfn + (1 << order) - 1) >> pb) + 1):
        if pbmt[b] >= MT_PCPTYPES or pbmt[b] == MT_MOVABLE:
            continue
        pbmt[b] = MT_MOVABLE
        if not modern or order >= pb:  # a block >= pageblock fills its pageblocks alone
            continue
        head = b << pb
        end = head + (1 << pb)
        while head < end:
            st = pg[head, FLG] & ST_MASK
            if st == ST_NONE:
                head += 1
                continue
            o = np.int64(pg[head, ORD])
            if st == ST_BUDDY and _list_mt(pg, head) != MT_MOVABLE:
                _move_free_block(lk, pg, fl, g, z, head, o, MT_MOVABLE, True)
            head += np.int64(1) << o


@njit(cache=True, _nrt=False)
def k_report_fill(
    lk, pg, pbmt, fl, nr_free, zone, g, z, order, mt, batch_pfn, batch_order, n, budget
):
    """Walk list (z, order, mt) from its head, isolating unreported blocks into the batch."""
    lid = _fl_id(g[G_MAX_ORDER] + 1, z, order, mt)
    pb = g[G_PB_ORDER]
    pfn = np.int64(fl[lid, HEAD])
    while pfn != NIL:
        if pg[pfn, FLG] & PG_REPORTED:
            pfn = np.int64(lk[_row(lk, pfn), NEXT])
            continue
        if budget < 0:
            _rotate_to_front(lk, fl, lid, pfn)
            return REPORT_BUDGET_EXHAUSTED, n
        if n >= g[G_CAPACITY]:
            _rotate_to_front(lk, fl, lid, pfn)
            return REPORT_BATCH_FULL, n
        bmt = pbmt[pfn >> pb]
        if bmt != MT_ISOLATE:
            usable = zone[z, Z_FREE] - _highatomic_pages(lk, fl, g, z)
            if not usable > zone[z, Z_MIN] + (1 << order):
                _rotate_to_front(lk, fl, lid, pfn)
                return REPORT_ISOLATE_REFUSED, n
        if mt != MT_ISOLATE:
            zone[z, Z_FREE] -= 1 << order
        following = np.int64(lk[_row(lk, pfn), NEXT])
        _del_free(lk, pg, fl, nr_free, g, z, pfn, order, lid)
        _set_head(pg, pfn, order, ST_ISOLATED, mt)
        if order >= pb - 1:
            _isolate_relabel(lk, pg, pbmt, fl, g, z, pfn, order)
        batch_pfn[n] = pfn
        batch_order[n] = order
        n += 1
        pfn = following
    return REPORT_LIST_END, n


@njit(cache=True, _nrt=False)
def k_check_drain(pg, g, batch_pfn, batch_order, n):
    """Index of the first batch entry that is not an isolated block of its order, or -1."""
    for i in range(n):
        pfn = batch_pfn[i]
        if pfn < 0 or pfn >= g[G_NR_PAGES]:
            return i
        if (pg[pfn, FLG] & ST_MASK) != ST_ISOLATED or pg[pfn, ORD] != batch_order[i]:
            return i
    return -1


@njit(cache=True, _nrt=False)
def k_report_drain(lk, pg, pbmt, fl, nr_free, zone, g, coins, batch_pfn, batch_order, n, ok):
    """__putback_isolated_page for each entry in reverse isolation order (§4.6: the
    scatterlist is filled from its end), then Reported if still that head."""
    pb = g[G_PB_ORDER]
    to_tail = g[G_PROFILE] != PROFILE_5_7
    for i in range(n - 1, -1, -1):
        pfn = batch_pfn[i]
        order = np.int64(batch_order[i])
        mt = np.int64(pbmt[pfn >> pb])
        _free_one(lk, pg, pbmt, fl, nr_free, zone, g, coins, pfn, order, mt, to_tail, False)
        if ok and _is_free_head(pg, pfn, order):
            pg[pfn, FLG] |= PG_REPORTED
            g[G_REPORTED_PAGES] += 1 << order
