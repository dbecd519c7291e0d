"""Fast buddy allocator: compact numpy state driven by the numba kernels in ``_kernels``.

``BuddyAllocator`` implements the Allocator API of docs/core-api.md with the same
semantics as the pure-Python ``ReferenceAllocator`` (the differential test holds
them together). This module owns the Python side: argument validation (a whole
batch is checked before anything changes), the one-time boot shuffle (§5), the
shuffle coin supply, and introspection. Every per-page loop runs in a kernel,
once per batch.

Per-page state is 10 bytes: int32 [next, prev] links and uint8 [order, flags]; plus
one int8 migratetype per pageblock. Page pfn's links are in row ``k.page_rows(pfn)``
of ``lk`` (aligned pfns first). Both arrays are allocated zeroed (services.lazymem) and
never filled, so only the pages of them that are written become resident: for ``lk``,
the links of pages that have been on a list (given back once none of a page's rows is
listed: ``release_unlisted_links``); ``pg`` is written at every max-order head
at boot, so all of it is resident.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np

from services.lazymem import lazy_copy, release_pages, resident_pages, zeroed

from . import _kernels as k
from .config import GuestConfig
from .constants import (
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    MIGRATE_TYPES,
    PROFILE_5_7,
    PROFILE_6_1,
)
from .watermarks import guest_pcp_sizes, guest_watermarks, zone_ranges

SHUFFLE_RETRY = 10  # SHUFFLE_RETRY in mm/shuffle.c: draws per position before giving up
COIN_WORD_BITS = 64  # shuffle_pick_tail consumes one bit of a 64-bit random word per decision
SCRATCH_BLOCKS = 1024  # pcp blocks taken before their buddy free (a ring in _bulk_free)
# Once the guest's free memory has fallen this share of its pages (2**-N) below its
# highest point since the last time, the pages of lk that hold no listed page's
# links are given back (release_unlisted_links): a guest that holds most of its
# memory keeps few pages of links, not the links of every page it ever allocated.
LINK_RELEASE_SHIFT = 3
assert SCRATCH_BLOCKS & (SCRATCH_BLOCKS - 1) == 0 and SCRATCH_BLOCKS > k.TAKE_AHEAD

REPORT_LIST_END = k.REPORT_LIST_END
REPORT_BATCH_FULL = k.REPORT_BATCH_FULL
REPORT_BUDGET_EXHAUSTED = k.REPORT_BUDGET_EXHAUSTED
REPORT_ISOLATE_REFUSED = k.REPORT_ISOLATE_REFUSED

_PROFILE_CODES = {PROFILE_5_7: k.PROFILE_5_7, PROFILE_6_1: k.PROFILE_6_1}
_CHECK_REASONS = {
    k.CHECK_RANGE: "pfn out of range",
    k.CHECK_ALIGN: "pfn not aligned to order",
    k.CHECK_NOT_ALLOCATED: "pfn not allocated (double free?)",
    k.CHECK_WRONG_ORDER: "pfn allocated at a different order",
    k.CHECK_DUPLICATE: "duplicate pfn in batch",
}


class BuddyAllocator:
    """Buddy allocator with pcp lists and reporting primitives (docs/core-api.md)."""

    def __init__(self, config: GuestConfig, rng: np.random.Generator | None = None):
        if config.shuffle and rng is None:
            raise ValueError("shuffle=True needs an rng (RNG_KIND_SHUFFLE stream)")
        self.config = config
        self._rng = rng
        self._init_state()
        k.k_boot(
            self.lk, self.pg, self.fl, self.nr_free_arr, self.zone, self.g, config.boot_to_tail
        )
        if config.shuffle:
            for z in range(self.nr_zones):
                self._shuffle_zone(z)

    # ------------------------------------------------------------------ state

    def _init_state(self) -> None:
        c = self.config
        nr_pages = c.nr_pages
        ranges = zone_ranges(c)
        nz = len(ranges)
        nr_orders = c.max_order + 1
        self.pcp_orders = tuple(c.pcp_orders)
        # Lazily resident (services.lazymem): a page of either is taken when first
        # written. Links are written when a page joins a list, never filled; pg is
        # written at every max-order head at boot (every 2 KiB), so all of it is taken.
        self.lk = zeroed((nr_pages, 2), np.int32)  # [next, prev]
        self.pg = zeroed((nr_pages, 2), np.uint8)  # [order, flags]
        self.pbmt = np.full(nr_pages >> c.pageblock_order, MIGRATE_MOVABLE, dtype=np.int8)
        self.fl = np.full((nz * nr_orders * MIGRATE_TYPES, 2), k.NIL, dtype=np.int32)
        self.pcp_keys = c.pcp_list_keys
        nr_pcp_lists = len(self.pcp_keys)
        ncpu = c.vcpus
        self.pcp = np.full((max(nz * ncpu * nr_pcp_lists, 1), 2), k.NIL, dtype=np.int32)
        self.pcs = np.zeros((nz * ncpu, k.P_FIELDS), dtype=np.int64)
        self.nr_free_arr = np.zeros((nz, nr_orders), dtype=np.int64)
        self.pcp_idx = np.full(nr_orders, -1, dtype=np.int8)
        for i, (order, _) in enumerate(self.pcp_keys):
            if self.pcp_idx[order] < 0:
                self.pcp_idx[order] = i
        self.zone = np.zeros((nz, k.Z_FIELDS), dtype=np.int64)
        for z, ((start, end), (wmin, low, high), (batch, high_min, high_max)) in enumerate(
            zip(ranges, guest_watermarks(c), guest_pcp_sizes(c), strict=True)
        ):
            self.zone[z, [k.Z_START, k.Z_END, k.Z_MIN, k.Z_LOW, k.Z_HIGH]] = (
                start,
                end,
                wmin,
                low,
                high,
            )
            rows = slice(z * ncpu, (z + 1) * ncpu)
            self.pcs[rows, k.P_BATCH] = batch
            self.pcs[rows, k.P_HIGH] = high_min
            self.pcs[rows, k.P_HIGH_MIN] = high_min
            self.pcs[rows, k.P_HIGH_MAX] = high_max
        self._scratch = np.zeros(SCRATCH_BLOCKS, dtype=np.int64)
        self.g = np.zeros(k.G_FIELDS, dtype=np.int64)
        self.g[k.G_NR_PAGES] = nr_pages
        self.g[k.G_MAX_ORDER] = c.max_order
        self.g[k.G_PB_ORDER] = c.pageblock_order
        self.g[k.G_REPORT_ORDER] = c.report_order
        self.g[k.G_PROFILE] = _PROFILE_CODES.get(c.profile, k.PROFILE_MODERN)
        self.g[k.G_SHUFFLE] = int(c.shuffle)
        self.g[k.G_NR_ZONES] = nz
        self._nr_zones = nz  # fixed at boot (the property avoids a numpy read per call)
        self.g[k.G_CAPACITY] = c.reporting.capacity
        self.g[k.G_NR_PCP_LISTS] = nr_pcp_lists
        self.g[k.G_ZONE_SPLIT] = ranges[1][0] if nz > 1 else nr_pages
        self.g[k.G_NCPU] = ncpu
        thp = c.thp_pcp_order
        self.g[k.G_THP_ORDER] = -1 if thp is None or not c.pcp.enabled else thp
        self.g[k.G_FREE_HIGH_BATCH] = int(c.pcp.free_high_batch)
        self.coins = np.zeros(1, dtype=np.uint64)
        # pages allocated, net of frees, since free memory was last at its highest
        # (or links were last released), and the figure that releases them
        self.alloc_drawdown = 0
        self.link_release_at = max(1, nr_pages >> LINK_RELEASE_SHIFT)
        self.link_releases = 0  # sweeps done (metadata: no result depends on it)

    def __setstate__(self, state: dict) -> None:
        """A restored allocator keeps the footprint it had (services.lazymem)."""
        self.__dict__.update(state)
        self.lk = lazy_copy(self.lk)
        self.pg = lazy_copy(self.pg)
        if "alloc_drawdown" not in state:  # a checkpoint from before link releases
            self.alloc_drawdown, self.link_releases = 0, 0
            self.link_release_at = max(1, self.config.nr_pages >> LINK_RELEASE_SHIFT)

    def release_unlisted_links(self) -> int:
        """Give back every page of ``lk`` that holds no listed page's links (their rows
        read as zeros afterwards; a page's links are written when it joins a list and
        read only while it is on one, so nothing changes but the memory taken).
        Returns the bytes released."""
        rows_shift = (mmap.PAGESIZE // self.lk[0].nbytes).bit_length() - 1
        nr_lk_pages = -(-self.lk.nbytes // mmap.PAGESIZE)
        live = np.zeros(nr_lk_pages, dtype=np.uint8)
        resident = resident_pages(self.lk)  # the others are not scanned (and not given back)
        if resident is None:
            resident = np.ones(nr_lk_pages, dtype=np.uint8)
        k.k_listed_link_pages(self.lk, self.pg, rows_shift, resident, live)
        edges = np.flatnonzero(np.diff(np.concatenate(([1], live, [1])).astype(np.int8)))
        first, end = edges[0::2], edges[1::2]  # runs of pages with no listed page's links
        self.alloc_drawdown = 0
        self.link_releases += 1
        return release_pages(self.lk, first, end)

    def per_page_nbytes(self) -> int:
        """Bytes of every array indexed by pfn (or pageblock): the per-page state."""
        return sum(a.nbytes for a in (self.lk, self.pg, self.pbmt))

    # ------------------------------------------------------------------ shuffle (§5)

    def _ensure_coins_with_pcp(self, max_decisions: int) -> None:
        """_ensure_coins for max_decisions plus a drain of every pcp page and one more
        (a pcp drain's frees can each make a decision); pcp_pages is only summed when
        shuffle is on."""
        if self.config.shuffle:
            self._ensure_coins(max_decisions + self.pcp_pages() + 1)

    def _ensure_coins(self, max_decisions: int) -> None:
        """Make sure max_decisions coin bits are drawn. Words are drawn in stream order,
        so drawing early gives the same bits as drawing one word when needed."""
        if not self.config.shuffle:
            return
        g = self.g
        need = g[k.G_COIN_POS] + max_decisions - g[k.G_COIN_END]
        if need <= 0:
            return
        words = -(-int(need) // COIN_WORD_BITS)
        assert self._rng is not None  # shuffle needs an rng (checked in __init__)
        fresh = self._rng.integers(0, 2**64, size=words, dtype=np.uint64)
        used = int(g[k.G_COIN_POS]) // COIN_WORD_BITS
        keep = self.coins[used : (int(g[k.G_COIN_END]) + COIN_WORD_BITS - 1) // COIN_WORD_BITS]
        self.coins = np.concatenate([keep, fresh])
        g[k.G_COIN_POS] -= used * COIN_WORD_BITS
        g[k.G_COIN_END] = g[k.G_COIN_END] - used * COIN_WORD_BITS + words * COIN_WORD_BITS

    def _shuffle_zone(self, z: int) -> None:
        """__shuffle_zone: swap free max_order blocks with random partners of the same type."""
        max_order = self.config.max_order
        start, end = self.zone_range(z)
        nr_blocks = (end - start) >> max_order
        rng = self._rng
        assert rng is not None  # shuffle needs an rng (checked in __init__)
        lists: dict[int, list[int]] = {}
        where: dict[int, tuple[int, int]] = {}
        for mt in range(MIGRATE_TYPES):
            pfns = [pfn for pfn, _ in self.free_list(z, max_order, mt)]
            lists[mt] = pfns
            where.update((pfn, (mt, i)) for i, pfn in enumerate(pfns))
        for i in range(start, end, 1 << max_order):
            if i not in where:
                continue
            for _ in range(SHUFFLE_RETRY):
                j = start + (int(rng.integers(0, nr_blocks)) << max_order)
                if j != i and j in where:
                    break
            else:
                continue
            pb = self.config.pageblock_order
            if self.pbmt[i >> pb] != self.pbmt[j >> pb]:
                continue
            (mi, ii), (mj, ij) = where[i], where[j]
            if mi != mj:
                continue  # only swap inside one list
            lists[mi][ii], lists[mi][ij] = j, i
            where[i], where[j] = (mi, ij), (mi, ii)
        for mt, pfns in lists.items():
            self._relink(self.fl, self._fl_id(z, max_order, mt), pfns)

    def _relink(self, lists: np.ndarray, lid: int, pfns: list[int]) -> None:
        """Rebuild free list lid to hold exactly pfns, in that order."""
        arr = np.asarray(pfns, dtype=np.int64)
        if arr.size == 0:
            lists[lid] = k.NIL
            return
        rows = k.page_rows(arr, self.config.nr_pages)
        self.lk[rows[:-1], k.NEXT] = arr[1:]
        self.lk[rows[-1], k.NEXT] = k.NIL
        self.lk[rows[1:], k.PREV] = arr[:-1]
        self.lk[rows[0], k.PREV] = k.NIL
        lists[lid] = arr[0], arr[-1]
        keep = self.pg[arr, k.FLG] & np.uint8(~k.MT_BITS & 0xFF)
        self.pg[arr, k.FLG] = keep | np.uint8((lid % MIGRATE_TYPES) << k.MT_SHIFT)

    # ------------------------------------------------------------------ operations

    def alloc(self, order: int, mt: int, count: int = 1, cpu: int = 0) -> np.ndarray:
        """Allocate up to count blocks on vCPU cpu; head pfns in allocation order."""
        self._check_order(order, None)
        self._check_cpu(cpu)
        if not 0 <= mt < MIGRATE_TYPES or mt == MIGRATE_ISOLATE:
            raise ValueError(f"alloc: migratetype {mt} invalid (order {order})")
        if count < 0:
            raise ValueError(f"alloc: count must be >= 0, got {count} (order {order})")
        out = np.empty(count, dtype=np.int64)
        self._ensure_coins_with_pcp(0)  # a failed block drains the pcp lists
        n = k.k_alloc(*self._pcp_kernel_args(), self.pcp_idx, order, mt, count, cpu, out)
        self.alloc_drawdown += n << order
        if self.alloc_drawdown >= self.link_release_at:
            self.release_unlisted_links()
        return out[:n]

    def free(self, pfns: np.ndarray | Sequence[int], order: int, cpu: int = 0) -> None:
        """Free blocks allocated at order on vCPU cpu: pcp head or buddy (merge, notify)."""
        arr = np.ascontiguousarray(pfns, dtype=np.int64).reshape(-1)
        self._check_order(order, arr[0] if arr.size else None)
        self._check_cpu(cpu)
        if arr.size == 0:
            return
        code, bad = k.k_check_free(self.pg, self.g, arr, order)
        if code != k.CHECK_OK:
            raise ValueError(f"free: pfn {int(arr[bad])} order {order}: {_CHECK_REASONS[code]}")
        self._ensure_coins_with_pcp(2 * arr.size)
        k.k_free(*self._pcp_kernel_args(), self.pcp_idx, arr, order, cpu)
        self.alloc_drawdown = max(0, self.alloc_drawdown - (arr.size << order))

    def _pcp_kernel_args(self) -> tuple:
        """The state arrays every pcp-touching kernel takes first, in its order."""
        return (
            self.lk,
            self.pg,
            self.pbmt,
            self.fl,
            self.pcp,
            self.pcs,
            self.nr_free_arr,
            self.zone,
            self.g,
            self.coins,
            self._scratch,
        )

    def drain_pcp(self) -> None:
        """drain_all_pages: every pcp list to the buddy (notifies like any buddy free)."""
        self._ensure_coins_with_pcp(0)
        k.k_drain_pcp(*self._pcp_kernel_args())

    def decay_pcp_high(self) -> int:
        """modern decay_pcp_high on every vCPU (vmstat_update, about once a second)."""
        if not self.config.is_modern:
            return 0
        self._ensure_coins_with_pcp(0)
        return int(k.k_decay_pcp(*self._pcp_kernel_args()))

    def set_reclaim_active(self, active: bool) -> None:
        """kswapd starts (True) or ends (False) balancing: ZONE_RECLAIM_ACTIVE on every
        zone (set_reclaim_active / clear_reclaim_active). 5.7 has no such clamp."""
        on = bool(active) and self.config.profile != "5.7"
        self.zone[:, k.Z_RECLAIM_ACTIVE] = int(on)

    def reclaim_active(self) -> bool:
        return bool(self.zone[:, k.Z_RECLAIM_ACTIVE].any())

    def pcp_decay_pending(self) -> bool:
        """Whether decay_pcp_high would change anything (the guest keeps its timer armed)."""
        if not self.config.is_modern:
            return False
        return bool(k.k_pcp_decay_pending(self.pcs))

    def _check_cpu(self, cpu: int) -> None:
        if not 0 <= cpu < self.config.vcpus:
            raise ValueError(f"cpu {cpu} out of range 0..{self.config.vcpus - 1}")

    def _check_order(self, order: int, pfn) -> None:
        if not 0 <= order <= self.config.max_order:
            raise ValueError(
                f"pfn {pfn} order {order}: order must be in 0..{self.config.max_order}"
            )

    # ------------------------------------------------------------------ reporting primitives

    def report_fill(
        self,
        zone: int,
        order: int,
        mt: int,
        batch_pfn: np.ndarray,
        batch_order: np.ndarray,
        n: int,
        budget: int,
    ) -> tuple[int, int]:
        """Isolate unreported blocks of list (zone, order, mt) into the batch (§4.4-4.5)."""
        self._check_zone(zone)
        self._check_order(order, None)
        if not 0 <= mt < MIGRATE_TYPES:
            raise ValueError(f"report_fill: migratetype {mt} invalid (order {order})")
        if not 0 <= n <= min(len(batch_pfn), len(batch_order)):
            raise ValueError(f"report_fill: n={n} outside the batch arrays (order {order})")
        if n < self.config.reporting.capacity and len(batch_pfn) < self.config.reporting.capacity:
            raise ValueError(f"report_fill: batch arrays shorter than capacity (order {order})")
        status, n = k.k_report_fill(
            self.lk,
            self.pg,
            self.pbmt,
            self.fl,
            self.nr_free_arr,
            self.zone,
            self.g,
            zone,
            order,
            mt,
            batch_pfn,
            batch_order,
            n,
            budget,
        )
        return int(status), int(n)

    def report_drain(
        self, batch_pfn: np.ndarray, batch_order: np.ndarray, n: int, ok: bool
    ) -> None:
        """Put each isolated block back (§4.6); Reported if ok and still that free head."""
        bad = k.k_check_drain(self.pg, self.g, batch_pfn, batch_order, n)
        if bad >= 0:
            raise ValueError(
                f"report_drain: pfn {int(batch_pfn[bad])} order {int(batch_order[bad])}: "
                "not an isolated block of that order"
            )
        self._ensure_coins(n + 1)
        k.k_report_drain(
            self.lk,
            self.pg,
            self.pbmt,
            self.fl,
            self.nr_free_arr,
            self.zone,
            self.g,
            self.coins,
            batch_pfn,
            batch_order,
            n,
            bool(ok),
        )

    def zone_report_gate(self, zone: int) -> bool:
        """§4.3: NR_FREE_PAGES - highatomic > low + (capacity << R)."""
        self._check_zone(zone)
        zr = self.zone[zone]
        threshold = zr[k.Z_LOW] + (self.config.reporting.capacity << self.config.report_order)
        highatomic = k._highatomic_pages(self.lk, self.fl, self.g, zone)
        return bool(zr[k.Z_FREE] - highatomic > threshold)

    # ------------------------------------------------------------------ introspection

    @property
    def nr_zones(self) -> int:
        return self._nr_zones

    @property
    def notify_count(self) -> int:
        return int(self.g[k.G_NOTIFY])

    def _check_zone(self, zone: int) -> None:
        if not 0 <= zone < self.nr_zones:
            raise ValueError(f"zone must be in 0..{self.nr_zones - 1}, got {zone}")

    def _fl_id(self, zone: int, order: int, mt: int) -> int:
        return (zone * (self.config.max_order + 1) + order) * MIGRATE_TYPES + mt

    def _walk(self, lists: np.ndarray, lid: int) -> list[int]:
        out = []
        pfn = int(lists[lid, 0])
        while pfn != k.NIL:
            out.append(pfn)
            pfn = int(self.lk[k.page_row(pfn, self.config.nr_pages), k.NEXT])
        return out

    def zone_range(self, zone: int) -> tuple[int, int]:
        self._check_zone(zone)
        return int(self.zone[zone, k.Z_START]), int(self.zone[zone, k.Z_END])

    def nr_free(self, zone: int, order: int) -> int:
        return int(self.nr_free_arr[zone, order])

    def nr_free_pages(self, zone: int) -> int:
        return int(self.zone[zone, k.Z_FREE])

    def free_pages_total(self) -> int:
        return int(self.zone[:, k.Z_FREE].sum())

    def pcp_pages(self) -> int:
        return int(self.pcs[:, k.P_COUNT].sum())

    def free_list(self, zone: int, order: int, mt: int) -> list[tuple[int, bool]]:
        pfns = self._walk(self.fl, self._fl_id(zone, order, mt))
        return [(pfn, bool(self.pg[pfn, k.FLG] & k.PG_REPORTED)) for pfn in pfns]

    def _pcp_lid(self, zone: int, cpu: int, pindex: int) -> int:
        return (zone * self.config.vcpus + cpu) * int(self.g[k.G_NR_PCP_LISTS]) + pindex

    def pcp_list(self, zone: int, order: int, mt: int, cpu: int = 0) -> list[int]:
        """The pcp list an (order, mt) free goes to on vCPU cpu (6.1's THP list is shared)."""
        if self.pcp_idx[order] < 0 or not 0 <= mt < MIGRATE_PCPTYPES:
            return []
        base = int(self.pcp_idx[order])
        if order == self.config.thp_pcp_order:
            pindex = base + int(self.config.is_modern and mt == MIGRATE_MOVABLE)
        else:
            pindex = base + mt
        return self._walk(self.pcp, self._pcp_lid(zone, cpu, pindex))

    def pcp_lists(self, zone: int, cpu: int = 0) -> list[list[int]]:
        """Every pcp list of (zone, cpu) in pindex order (config.pcp_list_keys)."""
        return [
            self._walk(self.pcp, self._pcp_lid(zone, cpu, i)) for i in range(len(self.pcp_keys))
        ]

    def pcp_state(self, zone: int, cpu: int = 0) -> dict[str, int]:
        """The scalars of one per_cpu_pages (and the zone's ZONE_BELOW_HIGH)."""
        row = self.pcs[zone * self.config.vcpus + cpu]
        return {
            "count": int(row[k.P_COUNT]),
            "batch": int(row[k.P_BATCH]),
            "high": int(row[k.P_HIGH]),
            "high_min": int(row[k.P_HIGH_MIN]),
            "high_max": int(row[k.P_HIGH_MAX]),
            "free_factor": int(row[k.P_FREE_FACTOR]),
            "free_count": int(row[k.P_FREE_COUNT]),
            "alloc_factor": int(row[k.P_ALLOC_FACTOR]),
            "prev_free_high_order": int(row[k.P_PREV_HIGH_ORDER]),
            "below_high": int(self.zone[zone, k.Z_BELOW_HIGH]),
            "reclaim_active": int(self.zone[zone, k.Z_RECLAIM_ACTIVE]),
        }

    def pageblock_mt(self, pfn: int) -> int:
        return int(self.pbmt[pfn >> self.config.pageblock_order])

    def allocated_order(self, pfn: int) -> int:
        if not 0 <= pfn < self.config.nr_pages:
            raise ValueError(f"pfn {pfn} out of range 0..{self.config.nr_pages - 1}")
        if (self.pg[pfn, k.FLG] & k.ST_MASK) != k.ST_ALLOC:
            return -1
        return int(self.pg[pfn, k.ORD])

    def reported_pages(self) -> int:
        return int(self.g[k.G_REPORTED_PAGES])

    def watermarks(self, zone: int) -> tuple[int, int, int]:
        zr = self.zone[zone]
        return int(zr[k.Z_MIN]), int(zr[k.Z_LOW]), int(zr[k.Z_HIGH])
