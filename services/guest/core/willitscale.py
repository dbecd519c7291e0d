"""will-it-scale page_fault1 and page_fault2 (spec §8.2, §8.3): N tasks on the vCPUs.

Each task loops: map a 128 MiB region, fault it in one page at a time (a store per
4 KiB page, the benchmark's counter +1 per page), unmap it, again.

* ``page_fault1``: private anonymous memory. Each fault is a zero-filled order-0
  allocation; with ``thp`` (MADV_HUGEPAGE) the first fault of each 2 MiB chunk is an
  order-9 allocation when one can be had (counter +512), and when it cannot, the
  chunk falls back to 512 order-0 faults (the PMD is then a page table).
* ``page_fault2``: a private mapping of a 128 MiB file. The first time a task touches
  a page, the page-cache page is allocated and zeroed (a hole of a sparse file) and
  stays for the task's life; every fault then allocates a private copy-on-write
  page and copies into it. munmap frees the copies only.

munmap frees the region's blocks in address order on the task's vCPU (to its pcp
lists). Task i runs on vCPU i mod vcpus; tasks of one vCPU take turns.

Time: every fault costs the guest its own handling (``fault_ns``/``thp_fault_ns``/
``cow_fault_ns``) plus zeroing or copying at the given bandwidth, and every page
unmapped ``unmap_ns``. Tasks advance in quanta of ``quantum`` faults; within an
epoch each vCPU spends the time the guest has (the epoch less any time it still
owes), and the vCPU that is furthest behind goes next, so the
interleaving follows simulated time. Progress a quantum could not afford is
carried to the next epoch, so results do not depend on the epoch length beyond
the chunk a quantum is. Host-side costs (faults on memory the host discarded,
host zeroing, swap-in) are priced by the guest with its host's figures as each
quantum touches memory and paid from that vCPU's time at once; the host's own
figure replaces the price at the next sync (see ``Pacer`` in workloads.py).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np

from .constants import MIGRATE_MOVABLE, PAGE_SHIFT
from .workloads import HeldBlocks, WorkStats, clip_to_stop, fault_in, pfns_to_runs

PAGE_FAULT1, PAGE_FAULT2 = "page_fault1", "page_fault2"
THP_ORDER = 9
THP_PAGES = 1 << THP_ORDER
REGION_BYTES = 128 << 20  # will-it-scale's MEMSIZE
# Guest-side costs (figures.md: native 4 KiB anonymous fault ~1 us; zeroing 8-15 GB/s
# per core). Defaults to calibrate (the validation issue fits them on baselines).
DEFAULT_FAULT_NS = 700
DEFAULT_THP_FAULT_NS = 3_000
DEFAULT_COW_FAULT_NS = 900
DEFAULT_ZERO_BYTES_PER_S = 10 << 30
DEFAULT_COPY_BYTES_PER_S = 8 << 30
DEFAULT_UNMAP_NS = 60  # per 4 KiB page unmapped (zap + free)
THP_UNMAP_PAGES = 10  # a 2 MiB mapping unmaps at the cost of ten 4 KiB ones
DEFAULT_QUANTUM = 1024  # faults per task per turn (about 1.5 ms of a task's time at the defaults)
MAX_TASKS = 1024
GUEST_LOST_KINDS = ("guest_fault", "guest_zero", "guest_copy", "guest_unmap")


@dataclass(frozen=True)
class WillItScaleConfig:
    test: str  # page_fault1 | page_fault2
    tasks: int = 1
    vcpus: int = 1  # the guest's (set from the guest config by the caller)
    thp: bool = False  # page_fault1 with MADV_HUGEPAGE
    region_bytes: int = REGION_BYTES
    fault_ns: int = DEFAULT_FAULT_NS
    thp_fault_ns: int = DEFAULT_THP_FAULT_NS
    cow_fault_ns: int = DEFAULT_COW_FAULT_NS
    zero_bytes_per_s: int = DEFAULT_ZERO_BYTES_PER_S
    copy_bytes_per_s: int = DEFAULT_COPY_BYTES_PER_S
    unmap_ns: int = DEFAULT_UNMAP_NS
    quantum: int = DEFAULT_QUANTUM
    start_delay_ns: int = 0
    # scaling of concurrent tasks (the validation calibrates both on the baselines):
    # zeroing and copying share this memory bandwidth (None: unshared), and each fault's
    # own handling grows by this fraction per other running task
    memory_bytes_per_s: int | None = None
    fault_contention: float = 0.0

    def __post_init__(self) -> None:
        if self.test not in (PAGE_FAULT1, PAGE_FAULT2):
            raise ValueError(f"test must be page_fault1 or page_fault2, got {self.test!r}")
        if not 1 <= self.tasks <= MAX_TASKS:
            raise ValueError(f"tasks must be in 1..{MAX_TASKS}, got {self.tasks}")
        if self.vcpus < 1:
            raise ValueError(f"vcpus must be >= 1, got {self.vcpus}")
        if self.thp and self.test != PAGE_FAULT1:
            raise ValueError("thp applies to page_fault1 only")
        if self.region_bytes <= 0 or self.region_bytes % (THP_PAGES << PAGE_SHIFT):
            raise ValueError(
                f"region_bytes must be a positive multiple of 2 MiB, got {self.region_bytes}"
            )
        for name in ("fault_ns", "thp_fault_ns", "cow_fault_ns", "unmap_ns", "start_delay_ns"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("zero_bytes_per_s", "copy_bytes_per_s", "quantum"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.memory_bytes_per_s is not None and self.memory_bytes_per_s <= 0:
            raise ValueError(f"memory_bytes_per_s must be > 0, got {self.memory_bytes_per_s}")
        if not 0 <= self.fault_contention <= 10:
            raise ValueError(f"fault_contention must be in 0..10, got {self.fault_contention}")

    @property
    def running(self) -> int:
        """Tasks that run at once: one per vCPU at most."""
        return min(self.tasks, self.vcpus)

    def _shared(self, bytes_per_s: int) -> int:
        if self.memory_bytes_per_s is None:
            return bytes_per_s
        return max(1, min(bytes_per_s, self.memory_bytes_per_s // self.running))

    def _contended(self, ns: int) -> int:
        return round(ns * (1 + self.fault_contention * (self.running - 1)))

    def effective(self) -> WillItScaleConfig:
        """The per-task figures with the tasks' sharing applied (what each fault costs)."""
        return replace(
            self,
            fault_ns=self._contended(self.fault_ns),
            thp_fault_ns=self._contended(self.thp_fault_ns),
            cow_fault_ns=self._contended(self.cow_fault_ns),
            zero_bytes_per_s=self._shared(self.zero_bytes_per_s),
            copy_bytes_per_s=self._shared(self.copy_bytes_per_s),
            memory_bytes_per_s=None,
            fault_contention=0.0,
        )

    @property
    def region_pages(self) -> int:
        return self.region_bytes >> PAGE_SHIFT


@dataclass
class _Task:
    index: int
    cpu: int
    held0: HeldBlocks = field(default_factory=HeldBlocks)  # order-0 blocks of the region
    held9: HeldBlocks = field(default_factory=lambda: HeldBlocks(1 << THP_ORDER))  # THP blocks
    cache: HeldBlocks = field(default_factory=HeldBlocks)  # page_fault2: page-cache pages
    next_page: int = 0  # the next page of the region to fault (0..region_pages)
    fallback_left: int = 0  # page_fault1 THP: order-0 faults left in a fallen-back chunk
    iterations: int = 0
    ops: int = 0  # the benchmark's counter: pages touched


class WillItScale:
    """The page_fault1 / page_fault2 runner (see the module docstring)."""

    def __init__(self, config: WillItScaleConfig, nr_pages: int, rng: np.random.Generator):
        self.spec_config = config
        self.config = config.effective()  # the costs below are per task, sharing applied
        self.nr_pages = nr_pages
        self.rng = rng
        self.tasks = [_Task(i, i % config.vcpus) for i in range(config.tasks)]
        self.stats = WorkStats()
        self.lost_ns: dict[str, int] = dict.fromkeys(GUEST_LOST_KINDS, 0)
        self.benchmark_ops = 0  # will-it-scale's counter summed over tasks
        self.vcpu_clock = [0] * config.vcpus  # progress ns each vCPU has spent
        self.vcpu_credit = [0] * config.vcpus  # progress ns each vCPU may still spend
        self._turn = [0] * config.vcpus  # round-robin among a vCPU's tasks
        self._by_cpu = [[t for t in self.tasks if t.cpu == c] for c in range(config.vcpus)]
        # the host's last price per page of each fault kind, to size the next quantum
        self._host_est = {"4k": 0, "thp": 0, "cow": 0}
        self.stop_ns: int | None = None
        self.finished = False
        self.order = 0  # for the shard's held-bytes sample (held counts pages, see held)

    # -- the shard's view --------------------------------------------------------------
    @property
    def parallel(self) -> int:
        """vCPUs this workload runs on at once: a guest-wide stall is shared by them."""
        return self.config.running

    @property
    def held(self) -> SimpleNamespace:
        """Pages held now, as one order-0 count (the shard samples held.count << order)."""
        pages = sum(
            t.held0.count + (t.held9.count << THP_ORDER) + t.cache.count for t in self.tasks
        )
        return SimpleNamespace(count=pages)

    def next_event_ns(self, now_ns: int) -> int | None:
        if self.finished:
            return None
        if self.stop_ns is not None and now_ns >= self.stop_ns:
            return now_ns
        return max(now_ns, self.config.start_delay_ns)

    # -- costs ---------------------------------------------------------------------------
    def _zero_ns(self, pages: int) -> int:
        return (pages << PAGE_SHIFT) * 1_000_000_000 // self.config.zero_bytes_per_s

    def _copy_ns(self, pages: int) -> int:
        return (pages << PAGE_SHIFT) * 1_000_000_000 // self.config.copy_bytes_per_s

    # -- work ----------------------------------------------------------------------------
    def run(self, guest, t0_ns: int, t1_ns: int, work_ns: int) -> None:
        """Spend up to ``work_ns`` of each vCPU's time in [t0, t1) on the tasks."""
        end = clip_to_stop(self, t0_ns, t1_ns)
        if end is None:
            self._stop(guest)
            return
        t1_ns = end
        start = max(t0_ns, self.config.start_delay_ns)
        if start >= t1_ns:
            return
        budget = work_ns * (t1_ns - start) // max(1, t1_ns - t0_ns)
        for c in range(self.config.vcpus):
            self.vcpu_credit[c] += budget
        # the vCPU furthest behind goes next (ties: the lowest); a vCPU leaves the heap
        # when its credit is spent or it cannot afford its next step this epoch
        ready = [(self.vcpu_clock[c], c) for c in range(self.config.vcpus) if self._by_cpu[c]]
        heapq.heapify(ready)
        while ready:
            _, c = ready[0]
            if self.vcpu_credit[c] <= 0:
                heapq.heappop(ready)
                continue
            task = self._by_cpu[c][self._turn[c] % len(self._by_cpu[c])]
            spent = self._step(guest, task)
            if spent < 0:
                heapq.heappop(ready)
                continue
            self.vcpu_clock[c] += spent
            self.vcpu_credit[c] -= spent
            self._turn[c] += 1
            heapq.heapreplace(ready, (self.vcpu_clock[c], c))

    def _step(self, guest, task: _Task) -> int:
        """One quantum of ``task``: faults, or the munmap at the region's end. Returns the
        ns spent, or -1 when the vCPU's credit does not cover the next fault."""
        cfg = self.config
        credit = self.vcpu_credit[task.cpu]
        if task.next_page >= cfg.region_pages:
            return self._unmap(guest, task)
        if cfg.test == PAGE_FAULT2:
            return self._cow_faults(guest, task, credit)
        if cfg.thp and task.fallback_left == 0:
            return self._thp_fault(guest, task, credit)
        return self._anon_faults(guest, task, credit)

    def _fault_cost(self, pages: int) -> int:
        """At least 1 ns a page: time must move for a task's turn to end."""
        return max(pages, pages * self.config.fault_ns + self._zero_ns(pages))

    def _anon_faults(self, guest, task: _Task, credit: int) -> int:
        cfg = self.config
        left = cfg.region_pages - task.next_page
        if cfg.thp:
            left = min(left, task.fallback_left)
        per = self._fault_cost(1)
        n = min(cfg.quantum, left, credit // max(1, per + self._host_est["4k"]))
        if n <= 0:
            return -1
        got = len(fault_in(guest, task.held0, self.stats, 0, MIGRATE_MOVABLE, n, task.cpu))
        if got == 0:
            return -1 if credit < per else self._stall(task, per)
        host = self._pay_host(guest, "4k", got)
        task.next_page += got
        if cfg.thp:
            task.fallback_left -= got
        task.ops += got
        self.benchmark_ops += got
        self.lost_ns["guest_fault"] += got * cfg.fault_ns
        self.lost_ns["guest_zero"] += self._zero_ns(got)
        return self._fault_cost(got) + host

    def _pay_host(self, guest, kind: str, pages: int) -> int:
        """The host's price of the touches just made (paid by the vCPU that made them),
        remembered per page to size the next quantum."""
        ns = guest.pay_touches()
        self._host_est[kind] = ns // max(1, pages)
        return ns

    def _thp_fault(self, guest, task: _Task, credit: int) -> int:
        """Up to a quantum of THP faults, one order-9 allocation each; the first chunk
        no order-9 block can be had for falls back to 4 KiB faults."""
        cfg = self.config
        cost = max(1, cfg.thp_fault_ns + self._zero_ns(THP_PAGES))
        chunks = (cfg.region_pages - task.next_page) >> THP_ORDER
        n = min(cfg.quantum, chunks, credit // (cost + self._host_est["thp"]))
        if n <= 0:
            return -1
        pfns = guest.alloc(THP_ORDER, MIGRATE_MOVABLE, n, task.cpu)
        got = len(pfns)
        spent = 0
        if got:
            task.held9.add(pfns)
            guest.touch(*pfns_to_runs(pfns, THP_PAGES))
            pages = got << THP_ORDER
            task.next_page += pages
            task.ops += pages
            self.benchmark_ops += pages
            self.stats.pages_allocated += pages
            self.stats.pages_touched += pages
            self.lost_ns["guest_fault"] += got * cfg.thp_fault_ns
            self.lost_ns["guest_zero"] += self._zero_ns(pages)
            spent = got * cost + self._pay_host(guest, "thp", got)
        if got < n:  # no free order-9 block: this chunk faults 4 KiB at a time
            task.fallback_left = THP_PAGES
            if spent == 0:
                return self._anon_faults(guest, task, credit)
        return spent

    def _cow_faults(self, guest, task: _Task, credit: int) -> int:
        cfg = self.config
        first = task.iterations == 0  # the page-cache pages come in on the first pass
        per = max(1, cfg.cow_fault_ns + self._copy_ns(1) + (self._zero_ns(1) if first else 0))
        n = min(
            cfg.quantum, cfg.region_pages - task.next_page, credit // (per + self._host_est["cow"])
        )
        if n <= 0:
            return -1
        if first:
            cache = guest.alloc(0, MIGRATE_MOVABLE, n, task.cpu)
            if len(cache) < n:
                self.stats.alloc_failures += n - len(cache)
                n = len(cache)
            if n == 0:
                return self._stall(task, per)
            task.cache.add(cache)
            guest.touch(*pfns_to_runs(cache, 1))
            self.lost_ns["guest_zero"] += self._zero_ns(n)
        pfns = guest.alloc(0, MIGRATE_MOVABLE, n, task.cpu)
        got = len(pfns)
        if got < n:
            self.stats.alloc_failures += n - got
        if got:
            task.held0.add(pfns)
            guest.touch(*pfns_to_runs(pfns, 1))
        task.next_page += got
        task.ops += got
        self.benchmark_ops += got
        self.stats.pages_allocated += got + (n if first else 0)
        self.stats.pages_touched += got + (n if first else 0)
        self.lost_ns["guest_fault"] += got * cfg.cow_fault_ns
        self.lost_ns["guest_copy"] += self._copy_ns(got)
        host = self._pay_host(guest, "cow", n)
        if got == 0:
            return self._stall(task, per) + host
        return host + max(
            got, got * (cfg.cow_fault_ns + self._copy_ns(1)) + (self._zero_ns(n) if first else 0)
        )

    def _stall(self, task: _Task, per: int) -> int:
        """Out of memory: the fault is retried later; the vCPU loses one fault's time."""
        return per

    def _unmap(self, guest, task: _Task) -> int:
        """munmap: the region's blocks freed in address order on the task's vCPU."""
        small, huge = task.held0.count, task.held9.count
        if small:
            guest.free(task.held0.all(), 0, task.cpu)
        if huge:
            guest.free(task.held9.all(), THP_ORDER, task.cpu)
        self.stats.pages_freed += small + (huge << THP_ORDER)
        cost = (small + huge * THP_UNMAP_PAGES) * self.config.unmap_ns
        task.held0.clear()
        task.held9.clear()
        task.next_page = task.fallback_left = 0
        task.iterations += 1
        self.lost_ns["guest_unmap"] += cost
        return max(cost, 1)

    def _stop(self, guest) -> None:
        """The run's stop time: tasks exit, their regions and page cache are freed."""
        for task in self.tasks:
            for held, order in ((task.held0, 0), (task.held9, THP_ORDER), (task.cache, 0)):
                if held.count:
                    guest.free(held.all(), order, task.cpu)
                    self.stats.pages_freed += held.count << order
                    held.clear()
        self.finished = True
