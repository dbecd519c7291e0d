"""The guest's clean page cache, kswapd and drop_caches (spec §3.5, §9).

Page-cache pages are order-0 MOVABLE allocations that stay allocated while cached:
free page reporting never sees them (§9). They sit on one LRU, oldest first.

* **kswapd** is woken when an allocation leaves some zone below its low watermark
  while clean cache exists. It then reclaims the oldest cache pages, a step of
  ``reclaim_bytes_per_s x step_ns`` every ``step_ns`` of guest time, until some zone
  meets its high watermark (the node is balanced) or the cache is empty. Meanwhile
  every zone is ZONE_RECLAIM_ACTIVE, so 6.1 and modern keep at most 4 x batch on a
  pcp list (§3.4). kswapd runs on its own CPU: its time is not the workloads'. Its
  frees go to vCPU 0's pcp lists and on to the buddy, where reporting finds them.
* **Direct reclaim**: an allocation that fails while cache exists reclaims what it
  lacks (plus SWAP_CLUSTER_MAX) at once and tries again, once.
* **drop_caches** frees every cached page.

An owner (a page_cache workload) is told which of its file pages left the cache, so
its next read of them misses. Arrays, not a Python object per page.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol

import numpy as np

from .constants import MIGRATE_MOVABLE, PAGE_SHIFT
from .workloads import WorkStats, clip_to_stop, pfns_to_runs

SWAP_CLUSTER_MAX = 32  # pages a reclaim pass aims for at least
DEFAULT_RECLAIM_BYTES_PER_S = 4 << 30  # clean page cache: unmap + free, no writeback
DEFAULT_KSWAPD_STEP_NS = 1_000_000  # kswapd reclaims in 1 ms steps of guest time
KSWAPD_CPU = 0  # the pcp lists kswapd's frees go to


class PageCacheLRU:
    """Cached pages, oldest first: pfn, owner id and the owner's file page, in a ring."""

    def __init__(self) -> None:
        self._pfn = np.zeros(1024, np.int64)
        self._owner = np.zeros(1024, np.int32)
        self._fpage = np.zeros(1024, np.int64)
        self._head = 0  # index of the oldest
        self.count = 0

    def _grow(self, need: int) -> None:
        cap = len(self._pfn)
        if need <= cap:
            return
        new = max(need, 2 * cap)
        order = (self._head + np.arange(self.count)) % cap
        for name in ("_pfn", "_owner", "_fpage"):
            old = getattr(self, name)
            grown = np.zeros(new, old.dtype)
            grown[: self.count] = old[order]
            setattr(self, name, grown)
        self._head = 0

    def add(self, pfns: np.ndarray, owner: int, fpages: np.ndarray) -> None:
        n = len(pfns)
        self._grow(self.count + n)
        cap = len(self._pfn)
        idx = (self._head + self.count + np.arange(n)) % cap
        self._pfn[idx] = pfns
        self._owner[idx] = owner
        self._fpage[idx] = fpages
        self.count += n

    def pop_owner_oldest(self, owner: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Remove the ``n`` oldest pages of one owner (the others keep their places);
        returns their pfns and file pages."""
        cap = len(self._pfn)
        order = (self._head + np.arange(self.count)) % cap
        mine = self._owner[order] == owner
        take = order[np.flatnonzero(mine)[:n]]
        out = self._pfn[take].copy(), self._fpage[take].copy()
        if len(take):
            keep = order[~np.isin(order, take)]
            for name in ("_pfn", "_owner", "_fpage"):
                arr = getattr(self, name)
                arr[: len(keep)] = arr[keep].copy()
            self._head = 0
            self.count = len(keep)
        return out

    def pop_oldest(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = min(n, self.count)
        cap = len(self._pfn)
        idx = (self._head + np.arange(n)) % cap
        out = self._pfn[idx].copy(), self._owner[idx].copy(), self._fpage[idx].copy()
        self._head = (self._head + n) % cap
        self.count -= n
        return out


class CacheOwner(Protocol):
    """A workload that keeps file pages in the page cache."""

    def evicted(self, fpages: np.ndarray) -> None:
        """Its file pages ``fpages`` left the cache (reclaim, drop_caches, a shrink)."""
        ...


class PageCache:
    """The guest's page cache with its kswapd (a guest timer) and drop_caches."""

    def __init__(
        self,
        guest,
        reclaim_bytes_per_s: int = DEFAULT_RECLAIM_BYTES_PER_S,
        step_ns: int = DEFAULT_KSWAPD_STEP_NS,
    ):
        if reclaim_bytes_per_s <= 0 or step_ns <= 0:
            raise ValueError("kswapd reclaim rate and step must be > 0")
        self.guest = guest
        self.lru = PageCacheLRU()
        self.step_pages = max(1, (reclaim_bytes_per_s * step_ns // 1_000_000_000) >> PAGE_SHIFT)
        self.step_ns = step_ns
        # owners of file pages, objects (not callbacks) so a checkpoint can hold them
        self._owners: list[CacheOwner] = []
        self.kswapd_active = False
        self._next_ns: int | None = None
        self.used = False  # any page ever cached (results sample the cache only then)
        self.kswapd_wakeups = 0
        self.kswapd_reclaimed_pages = 0
        self.direct_reclaimed_pages = 0
        self.dropped_pages = 0

    # -- owners ------------------------------------------------------------------------
    def register(self, owner: CacheOwner) -> int:
        """An owner of file pages: ``owner.evicted(fpages)`` is called when some leave."""
        self._owners.append(owner)
        return len(self._owners) - 1

    def add(self, pfns: np.ndarray, owner: int, fpages: np.ndarray) -> None:
        if len(pfns):
            self.lru.add(pfns, owner, fpages)
            self.used = True

    @property
    def pages(self) -> int:
        return self.lru.count

    # -- reclaim -----------------------------------------------------------------------
    def _release(self, n: int) -> int:
        """Free the n oldest cached pages (owners told first); returns how many."""
        pfns, owners, fpages = self.lru.pop_oldest(n)
        if len(pfns) == 0:
            return 0
        for owner in np.unique(owners):
            self._owners[int(owner)].evicted(fpages[owners == owner])
        self.guest.free(pfns, 0, KSWAPD_CPU)
        return len(pfns)

    def drop_caches(self) -> int:
        """echo 1 > /proc/sys/vm/drop_caches: every clean cached page freed."""
        n = self._release(self.lru.count)
        self.dropped_pages += n
        return n

    def shrink(self, owner: int, pages: int) -> int:
        """Free the ``pages`` oldest cached pages of ``owner`` (a replayed trace whose cache
        got smaller); other owners' pages stay. Counted with drop_caches."""
        pfns, fpages = self.lru.pop_owner_oldest(owner, pages)
        if len(pfns):
            self._owners[owner].evicted(fpages)
            self.guest.free(pfns, 0, KSWAPD_CPU)
        self.dropped_pages += len(pfns)
        return len(pfns)

    def direct_reclaim(self, pages: int) -> int:
        """An allocation short of ``pages``: reclaim them (at least SWAP_CLUSTER_MAX)."""
        n = self._release(max(pages, SWAP_CLUSTER_MAX))
        self.direct_reclaimed_pages += n
        return n

    def _below_low(self) -> bool:
        a = self.guest.allocator
        return any(a.nr_free_pages(z) < a.watermarks(z)[1] for z in range(a.nr_zones))

    def _balanced(self) -> bool:
        a = self.guest.allocator
        return any(a.nr_free_pages(z) >= a.watermarks(z)[2] for z in range(a.nr_zones))

    def maybe_wake_kswapd(self, now_ns: int) -> None:
        """wakeup_kswapd after an allocation: a zone below low and cache to reclaim."""
        if self.kswapd_active or self.lru.count == 0 or not self._below_low():
            return
        self.kswapd_active = True
        self.kswapd_wakeups += 1
        self.guest.allocator.set_reclaim_active(True)
        self._next_ns = now_ns + self.step_ns

    # -- the kswapd timer ------------------------------------------------------------------
    def next_event_ns(self) -> int | None:
        return self._next_ns if self.kswapd_active else None

    def run_until(self, now_ns: int) -> None:
        while self.kswapd_active and self._next_ns is not None and self._next_ns <= now_ns:
            self.guest.now_ns = self._next_ns
            self.kswapd_reclaimed_pages += self._release(self.step_pages)
            if self.lru.count == 0 or self._balanced():
                self.kswapd_active = False
                self._next_ns = None
                self.guest.allocator.set_reclaim_active(False)
            else:
                self._next_ns += self.step_ns


def alloc_reclaiming(guest, order: int, mt: int, count: int, cpu: int) -> np.ndarray:
    """Guest.alloc with direct reclaim: a short allocation reclaims page cache and tries
    the rest once more; then kswapd is woken if a zone is left below its low mark."""
    pfns = guest.allocator.alloc(order, mt, count, cpu)
    cache = guest.page_cache
    if len(pfns) < count and cache.pages:
        cache.direct_reclaim((count - len(pfns)) << order)
        more = guest.allocator.alloc(order, mt, count - len(pfns), cpu)
        if len(more):
            pfns = np.concatenate([pfns, more])
    if cache.pages:
        cache.maybe_wake_kswapd(guest.now_ns)
    return pfns


DEFAULT_READ_BYTES_PER_S = 1 << 30  # a miss: the file read from disk (virtio-blk, fast SSD)
DEFAULT_HIT_BYTES_PER_S = 8 << 30  # a hit: copy from the cache
READ_CHUNK_PAGES = 4096  # pages a reader considers per step


@dataclass(frozen=True)
class PageCacheConfig:
    """Read ``file_bytes`` of files sequentially into the page cache (§9: cached pages are
    never reported); with ``reread`` start again at the end (cached pages hit, evicted
    ones miss again). ``drop_caches_ns``: times (after the start) of drop_caches."""

    file_bytes: int
    read_bytes_per_s: int = DEFAULT_READ_BYTES_PER_S
    hit_bytes_per_s: int = DEFAULT_HIT_BYTES_PER_S
    reread: bool = False
    start_delay_ns: int = 0
    drop_caches_ns: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.file_bytes <= 0:
            raise ValueError(f"page_cache.file_bytes must be > 0, got {self.file_bytes}")
        for name in ("read_bytes_per_s", "hit_bytes_per_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"page_cache.{name} must be > 0, got {getattr(self, name)}")
        if self.start_delay_ns < 0 or any(t < 0 for t in self.drop_caches_ns):
            raise ValueError("page_cache times must be >= 0")
        object.__setattr__(self, "drop_caches_ns", tuple(sorted(self.drop_caches_ns)))


class PageCacheReader:
    """A page_cache workload (see PageCacheConfig). Time per page: a miss costs the read
    rate, a hit the hit rate; progress is carried across epochs as integer ns."""

    def __init__(self, config: PageCacheConfig, nr_pages: int, rng: np.random.Generator):
        self.config = config
        self.rng = rng
        self.file_pages = max(1, config.file_bytes >> PAGE_SHIFT)
        self.resident = np.zeros(self.file_pages, dtype=np.bool_)
        self.position = 0  # next file page to read
        self.stats = WorkStats()
        self.hits = 0
        self.misses = 0
        self.passes = 0
        self._credit = 0
        self._owner: int | None = None
        self._next_drop = 0  # index into drop_caches_ns
        self.stop_ns: int | None = None
        self.finished = False
        self.order = 0

    @property
    def held(self) -> SimpleNamespace:
        """The cache's pages count as the page cache, not as this workload's memory."""
        return SimpleNamespace(count=0)

    def evicted(self, fpages: np.ndarray) -> None:
        self.resident[fpages] = False

    def _miss_ns(self) -> int:
        return max(1, (1 << PAGE_SHIFT) * 1_000_000_000 // self.config.read_bytes_per_s)

    def _hit_ns(self) -> int:
        return max(1, (1 << PAGE_SHIFT) * 1_000_000_000 // self.config.hit_bytes_per_s)

    def _reading(self) -> bool:
        return self.config.reread or self.passes == 0

    def next_event_ns(self, now_ns: int) -> int | None:
        if self.finished:
            return None
        if self.stop_ns is not None and now_ns >= self.stop_ns:
            return now_ns
        start = self.config.start_delay_ns
        drops = self.config.drop_caches_ns
        drop = start + drops[self._next_drop] if self._next_drop < len(drops) else None
        if now_ns < start:
            return start
        if self._reading():
            return now_ns
        return drop if drop is None or drop > now_ns else now_ns

    def run(self, guest, t0_ns: int, t1_ns: int, work_ns: int) -> None:
        end = clip_to_stop(self, t0_ns, t1_ns)
        if end is None:
            return
        t1_ns = end
        if self._owner is None:
            self._owner = guest.page_cache.register(self)
        start = self.config.start_delay_ns
        drops = self.config.drop_caches_ns
        while self._next_drop < len(drops) and start + drops[self._next_drop] < t1_ns:
            guest.page_cache.drop_caches()
            self._next_drop += 1
        if t1_ns <= start or not self._reading():
            if not self._reading() and self._next_drop == len(drops):
                self.finished = True
            return
        self._credit += work_ns * (t1_ns - max(t0_ns, start)) // max(1, t1_ns - t0_ns)
        while self._reading() and self._credit > 0:
            if not self._step(guest):
                break

    def _step(self, guest) -> bool:
        """Read up to a chunk of pages the credit pays for; False when it pays for none.
        Whole passes over a file that is all cached are counted at once."""
        if self.position == 0 and self.passes > 0 and self.resident.all():
            per_pass = self.file_pages * self._hit_ns()
            k = self._credit // per_pass
            if k:
                self.hits += k * self.file_pages
                self.passes += k
                self._credit -= k * per_pass
                return True
        end = min(self.position + READ_CHUNK_PAGES, self.file_pages)
        chunk = self.resident[self.position : end]
        cost = np.where(chunk, self._hit_ns(), self._miss_ns())
        n = int(np.searchsorted(np.cumsum(cost), self._credit, side="right"))
        if n == 0:
            return False
        missed = np.flatnonzero(~chunk[:n]) + self.position
        if len(missed):
            pfns = guest.alloc(0, MIGRATE_MOVABLE, len(missed))
            if len(pfns) < len(missed):
                self.stats.alloc_failures += len(missed) - len(pfns)
                n = int(missed[len(pfns)] - self.position) if len(pfns) else 0
                missed = missed[: len(pfns)]
            if len(pfns):
                guest.touch(*pfns_to_runs(pfns, 1))
                self._credit -= guest.pay_touches()  # the host's price of the new pages
                guest.page_cache.add(pfns, self._owner, missed)
                self.resident[missed] = True
                self.stats.pages_allocated += len(pfns)
                self.stats.pages_touched += len(pfns)
            if n == 0:
                return False
        self.misses += len(missed)
        self.hits += n - len(missed)
        self._credit -= int(cost[:n].sum())
        self.position += n
        if self.position >= self.file_pages:
            self.position = 0
            self.passes += 1
        return True


__all__ = [
    "PageCache",
    "PageCacheConfig",
    "PageCacheLRU",
    "PageCacheReader",
    "alloc_reclaiming",
]
