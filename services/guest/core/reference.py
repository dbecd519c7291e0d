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
    PROFILE_5_7,
    ZONES_DMA32_NORMAL,
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


class _Zone:
    """One zone: free areas, counters, watermarks and its single-CPU pcp."""

    def __init__(self, start: int, end: int, max_order: int, wmark, pcp_size, pcp_orders):
        self.start_pfn, self.end_pfn = start, end
        self.free_area: list[list[list[int]]] = [
            [[] for _ in range(MIGRATE_TYPES)] for _ in range(max_order + 1)
        ]
        self.nr_free = [0] * (max_order + 1)
        self.free_pages = 0  # NR_FREE_PAGES
        self.wmark_min, self.wmark_low, self.wmark_high = wmark
        self.pcp_batch, self.pcp_high = pcp_size
        # pcp lists in round-robin order: order-major, then mt (§3.4)
        self.pcp_keys = [(o, mt) for o in pcp_orders for mt in range(MIGRATE_PCPTYPES)]
        self.pcp_lists: dict[tuple[int, int], list[int]] = {key: [] for key in self.pcp_keys}
        self.pcp_count = 0  # pages
        self.pcp_cursor = 0  # index into pcp_keys of the next list to drain from

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
        self.notify_count = 0
        self._rng = rng
        self._coin_word = 0
        self._coin_bits = 0
        self._free: dict[int, tuple[int, int]] = {}
        self._reported: set[int] = set()
        self._allocated: dict[int, tuple[int, int]] = {}
        self._pcp: dict[int, int] = {}
        self._isolated: dict[int, int] = {}
        nr_pageblocks = config.nr_pages >> config.pageblock_order
        self._pageblock_mt = [MIGRATE_MOVABLE] * nr_pageblocks  # §2.5b: all MOVABLE at boot
        wmarks, pcp_sizes = guest_watermarks(config), guest_pcp_sizes(config)
        self._zones = [
            _Zone(s, e, self.max_order, wmarks[i], pcp_sizes[i], self.pcp_orders)
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
                order = self._pcp[pfn]
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
        """§3.3 5.7-era __rmqueue_fallback: move a block to mt's lists; True if moved."""
        min_order = self.pageblock_order if nofragment and order < self.pageblock_order else order
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

    def _pcp_eligible(self, order: int, mt: int) -> bool:
        return order in self.pcp_orders and mt < MIGRATE_PCPTYPES

    def _alloc_zone(self, zone: _Zone, order: int, mt: int, nofragment: bool) -> int | None:
        """One block from one zone (watermark already passed): pcp or buddy."""
        if not self._pcp_eligible(order, mt):
            return self._rmqueue(zone, order, mt, nofragment)
        lst = zone.pcp_lists[(order, mt)]
        if not lst:  # refill: batch // 2**order blocks, appended in the order obtained
            for _ in range(max(1, zone.pcp_batch >> order)):
                pfn = self._rmqueue(zone, order, mt, nofragment)
                if pfn is None:
                    break
                lst.append(pfn)
                self._pcp[pfn] = order
                zone.pcp_count += 1 << order
        if not lst:
            return None
        pfn = lst.pop(0)
        del self._pcp[pfn]
        zone.pcp_count -= 1 << order
        return pfn

    def _alloc_one(self, order: int, mt: int) -> int | None:
        """Zones from the highest index down; NOFRAGMENT walk first when DMA32 exists (§3.3)."""
        walks = (True, False) if self.config.zones == ZONES_DMA32_NORMAL else (False,)
        for nofragment in walks:
            for zone in reversed(self._zones):
                if zone.free_pages - (1 << order) < zone.wmark_min:
                    continue
                pfn = self._alloc_zone(zone, order, mt, nofragment)
                if pfn is not None:
                    return pfn
        return None

    def alloc(self, order: int, mt: int, count: int = 1) -> np.ndarray:
        """Allocate up to count blocks of 2**order pages; head pfns in allocation order."""
        self._check_order(order, None)
        if not 0 <= mt < MIGRATE_TYPES or mt == MIGRATE_ISOLATE:
            raise ValueError(f"alloc: mt={mt} is not an allocatable migratetype (order={order})")
        if count < 0:
            raise ValueError(f"alloc: count must be >= 0, got {count} (order={order})")
        out = []
        for _ in range(count):
            pfn = self._alloc_one(order, mt)
            if pfn is None:
                break
            self._allocated[pfn] = (order, mt)
            out.append(pfn)
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ free, pcp (§3.4)

    def _check_order(self, order: int, pfn: int | None) -> None:
        if not 0 <= order <= self.max_order:
            raise ValueError(f"order={order} out of range 0..{self.max_order} (pfn={pfn})")

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

    def free(self, pfns: np.ndarray | Sequence[int], order: int) -> None:
        """Free blocks allocated at this order (pageblock mt at free time)."""
        pfns = [int(p) for p in np.asarray(pfns, dtype=np.int64).ravel()]
        self._validate_free(pfns, order)
        for pfn in pfns:
            del self._allocated[pfn]
            mt = self.pageblock_mt(pfn)
            if self._pcp_eligible(order, mt):
                self._pcp_free(pfn, order, mt)
            else:
                self._buddy_free(pfn, order, mt, skip_notify=False, to_tail=False)

    def _pcp_free(self, pfn: int, order: int, mt: int) -> None:
        """§3.4: push to the list head; while count >= high drain batch pages."""
        zone = self._zone_of(pfn)
        zone.pcp_lists[(order, mt)].insert(0, pfn)
        self._pcp[pfn] = order
        zone.pcp_count += 1 << order
        while zone.pcp_count >= zone.pcp_high:
            self._pcp_drain_batch(zone)

    def _pcp_release(self, zone: _Zone, key: tuple[int, int]) -> None:
        """Take the tail block of one pcp list and free it to the buddy (mt re-read)."""
        pfn = zone.pcp_lists[key].pop()
        order = self._pcp.pop(pfn)
        zone.pcp_count -= 1 << order
        self._buddy_free(pfn, order, self.pageblock_mt(pfn), skip_notify=False, to_tail=False)

    def _pcp_drain_batch(self, zone: _Zone) -> None:
        """Drain >= batch pages, one block per non-empty list, round-robin from the cursor."""
        to_free = zone.pcp_batch
        n = len(zone.pcp_keys)
        while to_free > 0 and zone.pcp_count > 0:
            i = zone.pcp_cursor
            while not zone.pcp_lists[zone.pcp_keys[i]]:
                i = (i + 1) % n
            to_free -= 1 << zone.pcp_keys[i][0]
            self._pcp_release(zone, zone.pcp_keys[i])
            zone.pcp_cursor = (i + 1) % n

    def drain_pcp(self) -> None:
        """Drain every pcp list completely: lists in order, each from its tail."""
        for zone in self._zones:
            for key in zone.pcp_keys:
                while zone.pcp_lists[key]:
                    self._pcp_release(zone, key)

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
        """§4.6 putback in batch order; mark Reported if ok and still a free head of that order."""
        to_tail = self.config.putback_to_tail
        for i in range(n):
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

    def pcp_list(self, zone: int, order: int, mt: int) -> list[int]:
        return list(self._zones[zone].pcp_lists.get((order, mt), []))

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
