"""Reference buddy allocator: the executable specification of allocator semantics.

Plain Python lists and dicts, written to be obviously correct rather than fast.
A guest built with ``fast=False`` runs on it (differential tests, debugging a
scenario step by step); the numba fast path (`buddy.py`) must produce exactly
the same free lists, pcp lists, Reported flags and counters for the same
operations (see the differential tests and "Semantic choices" in
docs/core-api.md). Section numbers (§) refer to docs/kernel-model.md.

State layout:
* per zone: ``free_area[order][mt]`` is a Python list of head pfns, head first;
  ``nr_free[order]`` counts blocks of all migratetypes; ``free_pages`` is
  NR_FREE_PAGES (buddy pages not on an ISOLATE list; isolated and pcp pages
  are not counted).
* per block, keyed by head pfn: ``_free`` (buddy-free: (order, list mt)),
  ``_reported`` (set), ``_allocated`` ((order, requested mt)), ``_pcp``
  (order of blocks held in pcp lists), ``_isolated`` (order of blocks held by
  the reporting worker between report_fill and report_drain).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import GuestConfig
from .constants import (
    MIGRATE_HIGHATOMIC,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    MIGRATE_RECLAIMABLE,
    MIGRATE_TYPES,
    MIGRATE_UNMOVABLE,
    PAGE_ALLOC_COSTLY_ORDER,
    PCP_BATCH_SCALE_MAX,
    PROFILE_5_7,
)
from .reporting import (
    REPORT_BATCH_FULL,
    REPORT_BUDGET_EXHAUSTED,
    REPORT_ISOLATE_REFUSED,
    REPORT_LIST_END,
)
from .watermarks import guest_pcp_sizes, guest_watermarks, zone_ranges

# §3.3: fallback preference per request type. HIGHATOMIC/CMA/ISOLATE never fall back.
FALLBACKS = {
    MIGRATE_UNMOVABLE: (MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE),
    MIGRATE_MOVABLE: (MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE),
    MIGRATE_RECLAIMABLE: (MIGRATE_UNMOVABLE, MIGRATE_MOVABLE),
}
SHUFFLE_RETRY = 10  # §5: random partner attempts per order-MAX block
SHUFFLE_COIN_BITS = 64  # §5: random bits drawn at a time for the placement coin


def is_mergeable(mt: int) -> bool:
    """UNMOVABLE, MOVABLE, RECLAIMABLE may merge/fall back across types (§1.2)."""
    return mt < MIGRATE_PCPTYPES


def rotate_to_front(lst: list[int], idx: int) -> None:
    """§4.4: ``L = L[idx:] + L[:idx]``, in place."""
    if idx:
        lst[:] = lst[idx:] + lst[:idx]


class _Pcp:
    """One CPU's per-CPU lists of one zone (struct per_cpu_pages, §3.4)."""

    def __init__(self, nr_lists: int, batch: int, high_min: int, high_max: int):
        self.lists: list[list[int]] = [[] for _ in range(nr_lists)]  # by pindex, head first
        self.count = 0  # pages
        self.batch = batch
        self.high_min, self.high_max = high_min, high_max
        self.high = high_min  # 5.7/6.1: fixed; modern: auto-tuned in [high_min, high_max]
        self.free_factor = 0  # 6.1: consecutive drains without an allocation
        self.free_count = 0  # modern: pages freed since the last allocation (halved by one)
        self.alloc_factor = 0  # modern: consecutive refills without a free
        self.prev_free_high_order = False  # modern PCPF_PREV_FREE_HIGH_ORDER


class _Zone:
    """One zone: free areas, counters, watermarks and one pcp per vCPU."""

    def __init__(self, start, end, max_order, wmark, pcp_size, nr_pcp_lists, vcpus):
        self.start_pfn, self.end_pfn = start, end
        self.free_area: list[list[list[int]]] = [
            [[] for _ in range(MIGRATE_TYPES)] for _ in range(max_order + 1)
        ]
        self.nr_free = [0] * (max_order + 1)
        self.free_pages = 0  # NR_FREE_PAGES
        self.wmark_min, self.wmark_low, self.wmark_high = wmark
        self.below_high = False  # modern ZONE_BELOW_HIGH
        self.reclaim_active = False  # ZONE_RECLAIM_ACTIVE (kswapd balancing)
        self.pcps = [_Pcp(nr_pcp_lists, *pcp_size) for _ in range(vcpus)]

    @property
    def pcp_count(self) -> int:
        return sum(p.count for p in self.pcps)

    def highatomic_pages(self) -> int:
        """Free pages on HIGHATOMIC lists (the reserve the watermark tests subtract)."""
        return sum(len(a[MIGRATE_HIGHATOMIC]) << o for o, a in enumerate(self.free_area))


class ReferenceAllocator:
    """Pure-Python buddy allocator + pcp + reporting primitives (contract: docs/core-api.md)."""

    def __init__(self, config: GuestConfig, rng: np.random.Generator | None = None):
        if config.shuffle and rng is None:
            raise ValueError("rng must be given when config.shuffle is on, got None")
        self.config = config
        self.max_order = config.max_order
        self.pageblock_order = config.pageblock_order
        self.report_order = config.report_order
        self.capacity = config.reporting.capacity
        self.pcp_orders = config.pcp_orders
        self.pcp_keys = config.pcp_list_keys
        self.profile = config.profile
        self.notify_count = 0
        self._rng = rng
        self._coin_word = 0
        self._coin_bits = 0
        self._free: dict[int, tuple[int, int]] = {}
        self._reported: set[int] = set()
        self._allocated: dict[int, tuple[int, int]] = {}
        self._pcp: dict[int, tuple[int, int]] = {}  # head -> (order, mt cached at free)
        self._isolated: dict[int, int] = {}
        nr_pageblocks = config.nr_pages >> config.pageblock_order
        self._pageblock_mt = [MIGRATE_MOVABLE] * nr_pageblocks  # §2.5b: all MOVABLE at boot
        wmarks, pcp_sizes = guest_watermarks(config), guest_pcp_sizes(config)
        self._zones = [
            _Zone(s, e, self.max_order, wmarks[i], pcp_sizes[i], len(self.pcp_keys), config.vcpus)
            for i, (s, e) in enumerate(zone_ranges(config))
        ]
        self._boot()

    # ------------------------------------------------------------------ boot, shuffle

    def _boot(self) -> None:
        """§2.5b: release every zone as max_order blocks, ascending pfn, no notify."""
        to_tail = self.config.boot_to_tail
        step = 1 << self.max_order
        for zone in self._zones:
            for pfn in range(zone.start_pfn, zone.end_pfn, step):
                # 5.7 boot frees are head insertions (no coin: choice, see core-api.md)
                self._add_free(zone, pfn, self.max_order, MIGRATE_MOVABLE, to_tail)
            if self.config.shuffle:
                self._shuffle_zone(zone)

    def _shuffle_zone(self, zone: _Zone) -> None:
        """§5: one-time Fisher-Yates-like swap of free max_order blocks within the zone."""
        step = 1 << self.max_order
        nr_blocks = (zone.end_pfn - zone.start_pfn) >> self.max_order
        rng = self._rng
        assert rng is not None  # shuffle needs an rng (checked in __init__)
        for i in range(zone.start_pfn, zone.end_pfn, step):
            if not self._is_free_head(i, self.max_order):
                continue
            j = None
            for _ in range(SHUFFLE_RETRY):
                cand = zone.start_pfn + int(rng.integers(0, nr_blocks)) * step
                if cand != i and self._is_free_head(cand, self.max_order):
                    j = cand
                    break
            if j is None or self.pageblock_mt(i) != self.pageblock_mt(j):
                continue
            li = zone.free_area[self.max_order][self._free[i][1]]
            lj = zone.free_area[self.max_order][self._free[j][1]]
            if li is not lj:
                continue  # only swap inside one list (blocks on different mt lists stay)
            a, b = li.index(i), li.index(j)
            li[a], li[b] = j, i

    def _coin(self) -> bool:
        """§5: one random bit per order-MAX placement decision, 64 drawn at a time (LSB first)."""
        if self._coin_bits == 0:
            assert self._rng is not None  # shuffle needs an rng (checked in __init__)
            self._coin_word = int(self._rng.integers(0, 1 << 64, dtype=np.uint64))
            self._coin_bits = SHUFFLE_COIN_BITS
        bit = self._coin_word & 1
        self._coin_word >>= 1
        self._coin_bits -= 1
        return bool(bit)

    # ------------------------------------------------------------------ list primitives

    def _zone_of(self, pfn: int) -> _Zone:
        for zone in self._zones:
            if zone.start_pfn <= pfn < zone.end_pfn:
                return zone
        raise AssertionError(f"pfn {pfn} outside every zone")

    def _is_free_head(self, pfn: int, order: int) -> bool:
        entry = self._free.get(pfn)
        return entry is not None and entry[0] == order

    def _add_free(self, zone: _Zone, pfn: int, order: int, mt: int, to_tail: bool) -> None:
        """Insert an unreported free block at the head or tail of free_area[order][mt]."""
        lst = zone.free_area[order][mt]
        if to_tail:
            lst.append(pfn)
        else:
            lst.insert(0, pfn)
        self._free[pfn] = (order, mt)
        zone.nr_free[order] += 1
        if mt != MIGRATE_ISOLATE:
            zone.free_pages += 1 << order

    def _del_free(self, zone: _Zone, pfn: int) -> int:
        """Unlink a free block from its list; clears Reported (§2.5). Returns its order."""
        order, mt = self._free.pop(pfn)
        zone.free_area[order][mt].remove(pfn)
        self._reported.discard(pfn)
        zone.nr_free[order] -= 1
        if mt != MIGRATE_ISOLATE:
            zone.free_pages -= 1 << order
        return order

    def _move_free(self, zone: _Zone, pfn: int, new_mt: int) -> None:
        """move_to_free_list: keeps Reported (§2.5); tail from 5.10, head in 5.7 (§0)."""
        order, mt = self._free[pfn]
        zone.free_area[order][mt].remove(pfn)
        lst = zone.free_area[order][new_mt]
        if self.config.profile == PROFILE_5_7:
            lst.insert(0, pfn)
        else:
            lst.append(pfn)
        self._free[pfn] = (order, new_mt)
        delta = (mt == MIGRATE_ISOLATE) - (new_mt == MIGRATE_ISOLATE)
        zone.free_pages += delta << order

    def _set_pageblocks(self, pfn: int, order: int, mt: int) -> None:
        """Relabel every pageblock overlapping [pfn, pfn + 2**order)."""
        first = pfn >> self.pageblock_order
        last = (pfn + (1 << order) - 1) >> self.pageblock_order
        for pb in range(first, last + 1):
            self._pageblock_mt[pb] = mt

    # ------------------------------------------------------------------ buddy free (§2.2-2.3)

    def _merge_refused(self, mt: int, buddy_pfn: int, order: int) -> bool:
        """§2.2 profile rule for merging at order >= pageblock_order."""
        bmt = self.pageblock_mt(buddy_pfn)
        if self.config.profile == PROFILE_5_7:
            return (mt == MIGRATE_ISOLATE) != (bmt == MIGRATE_ISOLATE)
        if bmt != mt and not (is_mergeable(mt) and is_mergeable(bmt)):
            return True
        if bmt != mt and self.config.is_modern:  # ~6.10: relabel the mergeable buddy
            self._set_pageblocks(buddy_pfn, order, mt)
        return False

    def _merge_likely(self, head: int, order: int, last_buddy: int | None) -> bool:
        """§2.3: would the order+1 block containing head merge again if its buddy came back?"""
        if order >= self.max_order - 1 or last_buddy is None:
            return False
        combined = head & last_buddy
        higher_buddy = combined ^ (1 << (order + 1))
        zone = self._zone_of(head)
        if not zone.start_pfn <= higher_buddy < zone.end_pfn:
            return False
        return self._is_free_head(higher_buddy, order + 1)

    def _buddy_free(
        self, pfn: int, order: int, mt: int, *, skip_notify: bool, to_tail: bool
    ) -> None:
        """§2.2 merge loop, §2.3 placement, §2.6 notify."""
        zone = self._zone_of(pfn)
        last_buddy = None
        while order < self.max_order:
            buddy = pfn ^ (1 << order)
            last_buddy = buddy
            if not self._is_free_head(buddy, order):
                break  # zones are max_order aligned: a buddy is always in the same zone
            if order >= self.pageblock_order and self._merge_refused(mt, buddy, order):
                break
            self._del_free(zone, buddy)  # absorbed buddy loses Reported (§2.2)
            pfn = min(pfn, buddy)
            order += 1
        if not to_tail:
            if self.config.shuffle and order >= self.max_order:
                to_tail = self._coin()
            else:
                to_tail = self._merge_likely(pfn, order, last_buddy)
        self._add_free(zone, pfn, order, mt, to_tail)
        if not skip_notify and order >= self.report_order:
            self.notify_count += 1

    # ------------------------------------------------------------------ alloc (§3.1-3.3)

    def _expand(self, zone: _Zone, pfn: int, low: int, high: int, mt: int) -> None:
        """§3.2: split remainders (upper halves) go to the list heads, unreported."""
        while high > low:
            high -= 1
            self._add_free(zone, pfn + (1 << high), high, mt, to_tail=False)

    def _smallest(self, zone: _Zone, order: int, mt: int) -> int | None:
        """§3.1: head of the first non-empty list of type mt at order..max_order."""
        for cur in range(order, self.max_order + 1):
            lst = zone.free_area[cur][mt]
            if lst:
                pfn = lst[0]
                self._del_free(zone, pfn)
                self._expand(zone, pfn, order, cur, mt)
                return pfn
        return None

    def _can_claim(self, order: int, mt: int) -> bool:
        """§3.3 'should claim whole block?' predicate (on the found block's order)."""
        return (
            order >= self.pageblock_order
            or order >= self.pageblock_order // 2
            or mt in (MIGRATE_UNMOVABLE, MIGRATE_RECLAIMABLE)
        )

    def _find_fallback(self, zone: _Zone, order: int, mt: int) -> int:
        """First fallback type with a non-empty list at this order, or -1."""
        for fmt in FALLBACKS[mt]:
            if zone.free_area[order][fmt]:
                return fmt
        return -1

    def _pageblock_census(self, pb_start: int) -> tuple[list[int], int, int]:
        """(free heads in the pageblock, free pages, MOVABLE-allocated pages)."""
        heads, free_pages, movable_pages = [], 0, 0
        pfn, end = pb_start, pb_start + (1 << self.pageblock_order)
        while pfn < end:
            if pfn in self._free:
                order = self._free[pfn][0]
                heads.append(pfn)
                free_pages += 1 << order
            elif pfn in self._allocated:
                order, amt = self._allocated[pfn]
                movable_pages += (1 << order) if amt == MIGRATE_MOVABLE else 0
            elif pfn in self._pcp:
                order = self._pcp[pfn][0]
            elif pfn in self._isolated:
                order = self._isolated[pfn]
            else:
                raise AssertionError(f"pfn {pfn} is neither free, allocated, pcp nor isolated")
            pfn += 1 << order
        return heads, free_pages, movable_pages

    def _claim_pageblock(self, pfn: int, start_mt: int, old_mt: int) -> tuple[list[int], bool]:
        """(free heads of pfn's pageblock, whether the pageblock may be relabelled: >= half alike)."""
        pb_start = pfn & ~((1 << self.pageblock_order) - 1)
        heads, free_pages, movable_pages = self._pageblock_census(pb_start)
        if start_mt == MIGRATE_MOVABLE:
            alike = movable_pages
        elif old_mt == MIGRATE_MOVABLE:
            alike = (1 << self.pageblock_order) - free_pages - movable_pages
        else:
            alike = 0
        claimed = free_pages + alike >= 1 << (self.pageblock_order - 1)
        return heads, claimed

    def _fallback_57(self, zone: _Zone, order: int, mt: int, nofragment: bool) -> bool:
        """§3.3 5.7-era __rmqueue_fallback: move a block to mt's lists; True if moved.
        NOFRAGMENT's min_order = pageblock_order applies to every request order in 5.7;
        6.1 already has the `order < pageblock_order` guard (kernel source, §3.3)."""
        guarded = self.profile != PROFILE_5_7 and order >= self.pageblock_order
        min_order = self.pageblock_order if nofragment and not guarded else order
        found = None
        for cur in range(self.max_order, min_order - 1, -1):
            fmt = self._find_fallback(zone, cur, mt)
            if fmt == -1:
                continue
            if not self._can_claim(cur, mt) and mt == MIGRATE_MOVABLE and cur > order:
                found = None  # restart from the smallest order upward
                for small in range(order, self.max_order + 1):
                    sfmt = self._find_fallback(zone, small, mt)
                    if sfmt != -1:
                        found = (small, sfmt)
                        break
            else:
                found = (cur, fmt)
            break
        if found is None:
            return False
        cur, fmt = found
        pfn = zone.free_area[cur][fmt][0]
        self._steal_57(zone, pfn, cur, mt, fmt, self._can_claim(cur, mt))
        return True

    def _steal_57(self, zone, pfn, cur, mt, fmt, whole_block) -> None:
        """5.7-era steal_suitable_fallback (watermark boost not modelled)."""
        if cur >= self.pageblock_order:
            self._set_pageblocks(pfn, cur, mt)
            self._move_free(zone, pfn, mt)
            return
        if not whole_block:
            self._move_free(zone, pfn, mt)
            return
        old_mt = self.pageblock_mt(pfn)
        heads, claimed = self._claim_pageblock(pfn, mt, old_mt)
        for head in heads:  # ascending pfn
            self._move_free(zone, head, mt)
        if claimed:
            self._pageblock_mt[pfn >> self.pageblock_order] = mt

    def _claim_modern(self, zone: _Zone, order: int, mt: int, nofragment: bool) -> int | None:
        """~6.15 claim: largest first, whole pageblocks only."""
        min_order = self.pageblock_order if nofragment and order < self.pageblock_order else order
        for cur in range(self.max_order, min_order - 1, -1):
            if not self._can_claim(cur, mt):
                break  # orders too small to claim
            fmt = self._find_fallback(zone, cur, mt)
            if fmt == -1:
                continue
            pfn = zone.free_area[cur][fmt][0]
            if cur >= self.pageblock_order:
                self._del_free(zone, pfn)
                self._set_pageblocks(pfn, cur, mt)
                self._expand(zone, pfn, order, cur, mt)
                return pfn
            # modern try_to_claim_block judges "alike" by the fallback list's type
            heads, claimed = self._claim_pageblock(pfn, mt, fmt)
            if claimed:
                for head in heads:
                    self._move_free(zone, head, mt)
                self._pageblock_mt[pfn >> self.pageblock_order] = mt
                return self._smallest(zone, order, mt)
        return None

    def _steal_modern(self, zone: _Zone, order: int, mt: int) -> int | None:
        """~6.15 steal: smallest first, one block, remainders keep the fallback type."""
        for cur in range(order, self.max_order + 1):
            fmt = self._find_fallback(zone, cur, mt)
            if fmt == -1:
                continue
            pfn = zone.free_area[cur][fmt][0]
            self._del_free(zone, pfn)
            self._expand(zone, pfn, order, cur, fmt)
            return pfn
        return None

    def _rmqueue(self, zone: _Zone, order: int, mt: int, nofragment: bool) -> int | None:
        """Smallest fit, then the profile's migratetype fallback (§3.1-3.3)."""
        pfn = self._smallest(zone, order, mt)
        if pfn is not None or mt not in FALLBACKS:
            return pfn
        if not self.config.is_modern:
            while pfn is None and self._fallback_57(zone, order, mt, nofragment):
                pfn = self._smallest(zone, order, mt)
            return pfn
        pfn = self._claim_modern(zone, order, mt, nofragment)
        if pfn is None and not nofragment:
            pfn = self._steal_modern(zone, order, mt)
        return pfn

    # ------------------------------------------------------------------ pcp geometry (§3.4)

    def _pcp_eligible(self, order: int, mt: int) -> bool:
        """Orders with pcp lists; ISOLATE pageblocks bypass them (HIGHATOMIC/CMA do not)."""
        return order in self.pcp_orders and mt != MIGRATE_ISOLATE

    def _pindex(self, order: int, mt: int) -> int:
        """order_to_pindex: low orders per (order, mt); THP shared (6.1) or by movability."""
        if order == self.config.thp_pcp_order:
            base = len(self.pcp_keys) - (2 if self.config.is_modern else 1)
            return base + (self.config.is_modern and mt == MIGRATE_MOVABLE)
        return self.pcp_keys.index((order, mt))

    def _high_watermark_ok(self, zone: _Zone) -> bool:
        return zone.free_pages > zone.wmark_high

    # ------------------------------------------------------------------ alloc (§3.1-3.4)

    def _nr_pcp_alloc(self, zone: _Zone, pcp: _Pcp, order: int) -> int:
        """Blocks a refill takes: 5.7 batch; 6.1 max(batch >> order, 2); modern scaled by
        alloc_factor, which also raises high (nr_pcp_alloc)."""
        batch = pcp.batch
        if self.profile == PROFILE_5_7:
            return batch
        if self.config.is_modern:
            pcp.high = min(max(pcp.high, pcp.high_min), pcp.high_max)
            if pcp.high < pcp.batch:
                return 1
            if order == 0:
                batch = pcp.batch << pcp.alloc_factor
            if pcp.high_min != pcp.high_max and not zone.below_high:
                pcp.high = min(pcp.high + batch, pcp.high_max)
            if order == 0:
                max_nr_alloc = max(pcp.high - pcp.count - pcp.batch, pcp.batch)
                if batch <= max_nr_alloc and pcp.alloc_factor < PCP_BATCH_SCALE_MAX:
                    pcp.alloc_factor += 1
                batch = min(batch, max_nr_alloc)
        return max(batch >> order, 2) if batch > 1 else batch

    def _pcp_alloc(self, zone: _Zone, cpu: int, order: int, mt: int, nofragment: bool):
        """rmqueue_pcplist: pop the list head; refill an empty list from the buddy first."""
        pcp = zone.pcps[cpu]
        if self.config.is_modern:
            pcp.free_count >>= 1
        elif self.profile != PROFILE_5_7:
            pcp.free_factor >>= 1
        lst = pcp.lists[self._pindex(order, mt)]
        if not lst:  # refill: blocks appended in the order obtained
            for _ in range(self._nr_pcp_alloc(zone, pcp, order)):
                pfn = self._rmqueue(zone, order, mt, nofragment)
                if pfn is None:
                    break
                lst.append(pfn)
                self._pcp[pfn] = (order, mt)
                pcp.count += 1 << order
        if not lst:
            return None
        pfn = lst.pop(0)
        del self._pcp[pfn]
        pcp.count -= 1 << order
        return pfn

    def _alloc_zone(self, zone: _Zone, cpu: int, order: int, mt: int, nofragment: bool):
        """One block from one zone (watermark already passed): pcp or buddy."""
        if order in self.pcp_orders and mt < MIGRATE_PCPTYPES:
            return self._pcp_alloc(zone, cpu, order, mt, nofragment)
        return self._rmqueue(zone, order, mt, nofragment)

    def _alloc_one(self, order: int, mt: int, cpu: int) -> int | None:
        """Zones from the highest index down, each behind its min watermark; the walk is
        first done under ALLOC_NOFRAGMENT when a Normal zone sits above DMA32 (§3.3).
        modern: a zone whose free pages fail its high watermark gets ZONE_BELOW_HIGH."""
        walks = (True, False) if len(self._zones) > 1 else (False,)
        for nofragment in walks:
            for zone in reversed(self._zones):
                below = zone.free_pages - (1 << order) < zone.wmark_high
                if self.config.is_modern and not zone.below_high and below:
                    zone.below_high = True
                if zone.free_pages - (1 << order) < zone.wmark_min:
                    continue
                pfn = self._alloc_zone(zone, cpu, order, mt, nofragment)
                if pfn is not None:
                    return pfn
        return None

    def alloc(self, order: int, mt: int, count: int = 1, cpu: int = 0) -> np.ndarray:
        """Allocate up to count blocks of 2**order pages on vCPU cpu; head pfns in order.
        A block no zone can give drains every pcp list and is tried once more (the slow
        path's drain_all_pages, §3.4); the batch stops at the first block that still fails."""
        self._check_order(order, None)
        self._check_cpu(cpu)
        if not 0 <= mt < MIGRATE_TYPES or mt == MIGRATE_ISOLATE:
            raise ValueError(f"alloc: mt={mt} is not an allocatable migratetype (order={order})")
        if count < 0:
            raise ValueError(f"alloc: count must be >= 0, got {count} (order={order})")
        out = []
        for _ in range(count):
            pfn = self._alloc_one(order, mt, cpu)
            if pfn is None and any(z.pcp_count for z in self._zones):
                self.drain_pcp()
                pfn = self._alloc_one(order, mt, cpu)
            if pfn is None:
                break
            self._allocated[pfn] = (order, mt)
            out.append(pfn)
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ free, pcp (§3.4)

    def _check_order(self, order: int, pfn: int | None) -> None:
        if not 0 <= order <= self.max_order:
            raise ValueError(f"order={order} out of range 0..{self.max_order} (pfn={pfn})")

    def _check_cpu(self, cpu: int) -> None:
        if not 0 <= cpu < self.config.vcpus:
            raise ValueError(f"cpu={cpu} out of range 0..{self.config.vcpus - 1}")

    def _validate_free(self, pfns: list[int], order: int) -> None:
        """Validate the whole batch before anything changes (contract)."""
        self._check_order(order, pfns[0] if pfns else None)
        seen = set()
        for pfn in pfns:
            if not 0 <= pfn < self.config.nr_pages:
                raise ValueError(
                    f"free: pfn={pfn} out of range 0..{self.config.nr_pages - 1} (order={order})"
                )
            if pfn & ((1 << order) - 1):
                raise ValueError(f"free: pfn={pfn} not aligned to order={order}")
            if pfn in seen:
                raise ValueError(f"free: pfn={pfn} appears twice in one batch (order={order})")
            seen.add(pfn)
            entry = self._allocated.get(pfn)
            if entry is None:
                raise ValueError(f"free: pfn={pfn} order={order} is not allocated (double free?)")
            if entry[0] != order:
                raise ValueError(
                    f"free: pfn={pfn} order={order} but it was allocated at order={entry[0]}"
                )

    def free(self, pfns: np.ndarray | Sequence[int], order: int, cpu: int = 0) -> None:
        """Free blocks allocated at this order on vCPU cpu (pageblock mt at free time)."""
        pfns = [int(p) for p in np.asarray(pfns, dtype=np.int64).ravel()]
        self._check_cpu(cpu)
        self._validate_free(pfns, order)
        for pfn in pfns:
            del self._allocated[pfn]
            mt = self.pageblock_mt(pfn)
            if self._pcp_eligible(order, mt):
                self._pcp_free(pfn, order, mt, cpu)
            else:
                self._buddy_free(pfn, order, mt, skip_notify=False, to_tail=False)

    def _pcp_free(self, pfn: int, order: int, mt: int, cpu: int) -> None:
        """free_unref_page_commit: push on the list head, then drain per the profile."""
        zone = self._zone_of(pfn)
        pcp = zone.pcps[cpu]
        pindex = self._pindex(order, mt if mt < MIGRATE_PCPTYPES else MIGRATE_MOVABLE)
        pcp.lists[pindex].insert(0, pfn)
        self._pcp[pfn] = (order, mt)  # the migratetype is cached at free time
        pcp.count += 1 << order
        if self.profile == PROFILE_5_7:
            if pcp.count >= pcp.high:
                self._bulk_free_57(zone, pcp, pcp.batch)
        elif not self.config.is_modern:
            self._commit_61(zone, pcp, order, pindex)
        else:
            self._commit_modern(zone, pcp, order, pindex)

    def _commit_61(self, zone: _Zone, pcp: _Pcp, order: int, pindex: int) -> None:
        """5.14-6.6: free_factor doubles the drain on consecutive drains; orders 1-3 flush
        everything once free_factor is set (free_high); nr_pcp_free clamps the amount."""
        free_high = pcp.free_factor > 0 and 1 <= order <= PAGE_ALLOC_COSTLY_ORDER
        high = 0 if free_high else pcp.high
        if high and zone.reclaim_active:  # nr_pcp_high: at most 4 batches while kswapd runs
            high = min(pcp.batch << 2, high)
        if pcp.count < high:
            return
        if free_high:
            n = pcp.count
        elif high < pcp.batch:
            n = 1
        else:
            lo, hi = pcp.batch, high - pcp.batch
            n = pcp.batch << pcp.free_factor
            if n < hi:
                pcp.free_factor += 1
            n = min(max(n, lo), hi)  # the kernel's clamp: hi wins when hi < lo
        self._bulk_free(zone, pcp, n, pindex)

    def _commit_modern(self, zone: _Zone, pcp: _Pcp, order: int, pindex: int) -> None:
        """6.7+: free_count grows the drain, high auto-tunes (nr_pcp_high, nr_pcp_free)."""
        batch = pcp.batch
        pcp.alloc_factor >>= 1
        free_high = False
        if 1 <= order <= PAGE_ALLOC_COSTLY_ORDER:
            free_high = (
                pcp.free_count >= batch + pcp.high_min // 2
                and pcp.prev_free_high_order
                and (not self.config.pcp.free_high_batch or pcp.count >= batch)
            )
            pcp.prev_free_high_order = True
        else:
            pcp.prev_free_high_order = False
        if pcp.free_count < batch << PCP_BATCH_SCALE_MAX:
            pcp.free_count += 1 << order
        high = self._nr_pcp_high(zone, pcp, free_high)
        if pcp.count < high:
            return
        if free_high:
            n = min(pcp.count, batch << PCP_BATCH_SCALE_MAX)
        elif high < batch:
            n = 1
        else:
            n = min(max(pcp.free_count, batch), high - batch)  # clamp(free_count, lo, hi)
        self._bulk_free(zone, pcp, n, pindex)
        if zone.below_high and self._high_watermark_ok(zone):
            zone.below_high = False

    def _nr_pcp_high(self, zone: _Zone, pcp: _Pcp, free_high: bool) -> int:
        """modern nr_pcp_high: the drain threshold, moving pcp.high on the way."""
        batch = pcp.batch
        high = pcp.high = min(max(pcp.high, pcp.high_min), pcp.high_max)
        if high == 0:
            return 0
        if free_high:
            pcp.high = max(high - (batch << PCP_BATCH_SCALE_MAX), pcp.high_min)
            return 0
        if zone.reclaim_active:  # kswapd at work: high shrinks, at most 4 batches kept
            pcp.high = max(high - max(pcp.free_count, batch), pcp.high_min)
            return min(batch << 2, pcp.high)
        if pcp.high_min == pcp.high_max:
            return high
        if zone.below_high:  # any free with count >= high_min drains
            pcp.high = max(high - max(pcp.free_count, batch), pcp.high_min)
            return max(pcp.count, pcp.high_min)
        if pcp.count >= high:
            need_high = pcp.free_count + batch
            if pcp.high < need_high:
                pcp.high = min(max(need_high, pcp.high_min), pcp.high_max)
        return high

    def _pcp_release(self, zone: _Zone, pcp: _Pcp, lst: list[int]) -> int:
        """Take the tail block of one pcp list and free it to the buddy; returns its pages.
        5.7/6.1 free it with the migratetype cached at free time; modern re-reads the
        pageblock (no pageblock of the model is ever isolated, so 6.1's re-read under
        has_isolate_pageblock never happens)."""
        pfn = lst.pop()
        order, mt = self._pcp.pop(pfn)
        pcp.count -= 1 << order
        if self.config.is_modern:
            mt = self.pageblock_mt(pfn)
        self._buddy_free(pfn, order, mt, skip_notify=False, to_tail=False)
        return 1 << order

    def _bulk_free(self, zone: _Zone, pcp: _Pcp, count: int, pindex: int) -> None:
        """5.14+ free_pcppages_bulk: start with list pindex; empty each list from its tail
        before moving round-robin to the next non-empty one, until count pages are freed."""
        count = min(count, pcp.count)
        n = len(pcp.lists)
        i = pindex - 1
        while count > 0:
            i = (i + 1) % n
            while not pcp.lists[i]:
                i = (i + 1) % n
            while count > 0 and pcp.lists[i]:
                count -= self._pcp_release(zone, pcp, pcp.lists[i])

    def _bulk_free_57(self, zone: _Zone, pcp: _Pcp, count: int) -> None:
        """5.7 free_pcppages_bulk: the cursor starts before list 0 on every call and moves
        first (MOVABLE is visited first); batch_free grows per list visited (empty ones
        too) and shrinks per page, so a full round frees one page per list; once the only
        non-empty list is found (batch_free == 3) it gives up all that remains."""
        count = min(count, pcp.count)
        mt = 0
        batch_free = 0
        while count:
            while True:
                batch_free += 1
                mt = (mt + 1) % MIGRATE_PCPTYPES
                if pcp.lists[mt]:
                    break
            if batch_free == MIGRATE_PCPTYPES:
                batch_free = count
            while True:
                self._pcp_release(zone, pcp, pcp.lists[mt])
                count -= 1
                if not count:
                    break
                batch_free -= 1
                if not batch_free or not pcp.lists[mt]:
                    break

    def drain_pcp(self) -> None:
        """drain_all_pages: every vCPU, every zone ascending, all of each pcp. 5.7 uses its
        bulk rule for the whole count; 5.14+ empties the lists in pindex order, tails first."""
        for cpu in range(self.config.vcpus):
            for zone in self._zones:
                pcp = zone.pcps[cpu]
                if not pcp.count:
                    continue
                if self.profile == PROFILE_5_7:
                    self._bulk_free_57(zone, pcp, pcp.count)
                else:
                    self._bulk_free(zone, pcp, pcp.count, 0)

    def decay_pcp_high(self) -> int:
        """modern decay_pcp_high, run by vmstat_update about once a second on every CPU:
        high steps an eighth toward high_min (never below count - (batch << 5)) and the
        pages above it are freed. Returns how many pcps still have work (0: timer idle)."""
        if not self.config.is_modern:
            return 0
        todo = 0
        for cpu in range(self.config.vcpus):
            for zone in self._zones:
                pcp = zone.pcps[cpu]
                if pcp.high > pcp.high_min:
                    pcp.high = max(
                        pcp.count - (pcp.batch << PCP_BATCH_SCALE_MAX),
                        pcp.high - (pcp.high >> 3),
                        pcp.high_min,
                    )
                    if pcp.high > pcp.high_min:
                        todo += 1
                if pcp.count - pcp.high > 0:
                    self._bulk_free(zone, pcp, pcp.count - pcp.high, 0)
                    todo += 1
        return todo

    def set_reclaim_active(self, active: bool) -> None:
        """kswapd starts (True) or ends (False) balancing: ZONE_RECLAIM_ACTIVE on every
        zone (set_reclaim_active / clear_reclaim_active). 5.7 has no such clamp."""
        for zone in self._zones:
            zone.reclaim_active = bool(active) and self.profile != PROFILE_5_7

    def reclaim_active(self) -> bool:
        return any(z.reclaim_active for z in self._zones)

    def pcp_decay_pending(self) -> bool:
        """Whether decay_pcp_high would change anything (the guest keeps its timer armed)."""
        if not self.config.is_modern:
            return False
        return any(p.high > p.high_min or p.count > p.high for z in self._zones for p in z.pcps)

    # ------------------------------------------------------------------ reporting primitives (§4)

    def _watermark_ok(self, zone: _Zone, mark_pages: int) -> bool:
        """Order-0 watermark test used by reporting: free - highatomic > mark (§3.5)."""
        return zone.free_pages - zone.highatomic_pages() > mark_pages

    def zone_report_gate(self, zone: int) -> bool:
        """§4.3: report a zone only when free - highatomic > low + (capacity << R)."""
        z = self._zones[zone]
        return self._watermark_ok(z, z.wmark_low + (self.capacity << self.report_order))

    def _isolate(self, zone: _Zone, pfn: int, order: int) -> bool:
        """§4.5 isolation for reporting; relabels mergeable pageblocks to MOVABLE."""
        if self.pageblock_mt(pfn) != MIGRATE_ISOLATE and not self._watermark_ok(
            zone, zone.wmark_min + (1 << order)
        ):
            return False
        self._del_free(zone, pfn)
        self._isolated[pfn] = order
        if order >= self.pageblock_order - 1:
            first = pfn >> self.pageblock_order
            last = (pfn + (1 << order) - 1) >> self.pageblock_order
            for pb in range(first, last + 1):
                if (
                    is_mergeable(self._pageblock_mt[pb])
                    and self._pageblock_mt[pb] != MIGRATE_MOVABLE
                ):
                    self._pageblock_mt[pb] = MIGRATE_MOVABLE
                    if self.config.is_modern and order < self.pageblock_order:
                        # ~6.10: the pageblock's other free blocks follow it to MOVABLE
                        # (a block of order >= pageblock_order fills its pageblocks alone)
                        heads, _, _ = self._pageblock_census(pb << self.pageblock_order)
                        for head in heads:
                            if self._free[head][1] != MIGRATE_MOVABLE:
                                self._move_free(zone, head, MIGRATE_MOVABLE)
        return True

    def report_fill(self, zone, order, mt, batch_pfn, batch_order, n, budget):
        """§4.4 list walk from the current head: isolate unreported blocks into the batch."""
        z = self._zones[zone]
        lst = z.free_area[order][mt]
        idx = 0
        while idx < len(lst):
            pfn = lst[idx]
            if pfn in self._reported:
                idx += 1
                continue
            if budget < 0:
                rotate_to_front(lst, idx)
                return REPORT_BUDGET_EXHAUSTED, n
            if n >= self.capacity:
                rotate_to_front(lst, idx)
                return REPORT_BATCH_FULL, n
            if not self._isolate(z, pfn, order):
                rotate_to_front(lst, idx)
                return REPORT_ISOLATE_REFUSED, n
            batch_pfn[n] = pfn
            batch_order[n] = order
            n += 1
        return REPORT_LIST_END, n

    def report_drain(self, batch_pfn, batch_order, n, ok: bool) -> None:
        """§4.6 putback in reverse isolation order (the scatterlist is filled from its end);
        mark Reported if ok and still a free head of that order."""
        to_tail = self.config.putback_to_tail
        for i in reversed(range(n)):
            pfn, order = int(batch_pfn[i]), int(batch_order[i])
            if self._isolated.pop(pfn, None) != order:
                raise ValueError(f"report_drain: pfn={pfn} order={order} is not isolated")
            self._buddy_free(pfn, order, self.pageblock_mt(pfn), skip_notify=True, to_tail=to_tail)
            if ok and self._is_free_head(pfn, order):
                self._reported.add(pfn)

    # ------------------------------------------------------------------ introspection

    @property
    def nr_zones(self) -> int:
        return len(self._zones)

    def zone_range(self, zone: int) -> tuple[int, int]:
        z = self._zones[zone]
        return z.start_pfn, z.end_pfn

    def nr_free(self, zone: int, order: int) -> int:
        return self._zones[zone].nr_free[order]

    def nr_free_pages(self, zone: int) -> int:
        return self._zones[zone].free_pages

    def free_pages_total(self) -> int:
        return sum(z.free_pages for z in self._zones)

    def pcp_pages(self) -> int:
        return sum(z.pcp_count for z in self._zones)

    def isolated_pages(self) -> int:
        """Pages held by the reporting worker between report_fill and report_drain."""
        return sum(1 << o for o in self._isolated.values())

    def free_list(self, zone: int, order: int, mt: int) -> list[tuple[int, bool]]:
        return [(p, p in self._reported) for p in self._zones[zone].free_area[order][mt]]

    def pcp_list(self, zone: int, order: int, mt: int, cpu: int = 0) -> list[int]:
        """The pcp list an (order, mt) free goes to on vCPU cpu (6.1's THP list is shared)."""
        if order not in self.pcp_orders or not 0 <= mt < MIGRATE_PCPTYPES:
            return []
        return list(self._zones[zone].pcps[cpu].lists[self._pindex(order, mt)])

    def pcp_lists(self, zone: int, cpu: int = 0) -> list[list[int]]:
        """Every pcp list of (zone, cpu) in pindex order (config.pcp_list_keys)."""
        return [list(lst) for lst in self._zones[zone].pcps[cpu].lists]

    def pcp_state(self, zone: int, cpu: int = 0) -> dict[str, int]:
        """The scalars of one per_cpu_pages (and the zone's ZONE_BELOW_HIGH)."""
        z = self._zones[zone]
        p = z.pcps[cpu]
        return {
            "count": p.count,
            "batch": p.batch,
            "high": p.high,
            "high_min": p.high_min,
            "high_max": p.high_max,
            "free_factor": p.free_factor,
            "free_count": p.free_count,
            "alloc_factor": p.alloc_factor,
            "prev_free_high_order": int(p.prev_free_high_order),
            "below_high": int(z.below_high),
            "reclaim_active": int(z.reclaim_active),
        }

    def pageblock_mt(self, pfn: int) -> int:
        return self._pageblock_mt[pfn >> self.pageblock_order]

    def allocated_order(self, pfn: int) -> int:
        entry = self._allocated.get(pfn)
        return -1 if entry is None else entry[0]

    def reported_pages(self) -> int:
        return sum(1 << self._free[p][0] for p in self._reported)

    def watermarks(self, zone: int) -> tuple[int, int, int]:
        z = self._zones[zone]
        return z.wmark_min, z.wmark_low, z.wmark_high
