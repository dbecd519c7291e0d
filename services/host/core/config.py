"""Frozen configuration of one simulated host.

Constructing a config validates it and has no side effects. Cost figures live in
`CostModel` (costs.py); this module holds capacities, modes and policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .costs import HUGE_1G_BYTES, HUGE_2M_BYTES, PAGE_SIZE, CostModel

# Discard modes per guest: what the device does with a reported range (§7.2, §7.4).
DISCARD_DONTNEED = "dontneed"  # MADV_DONTNEED / fallocate punch hole: released now
DISCARD_FREE = "free"  # MADV_FREE (QEMU RFC): reclaimable until host pressure
DISCARD_DISABLED = "disabled"  # discard inhibited (VFIO, poison != 0, postcopy): ack only
DISCARD_MODES = (DISCARD_DONTNEED, DISCARD_FREE, DISCARD_DISABLED)

# Backing of guest RAM (§7.3).
BACKING_ANON = "anon"  # private anonymous memory, 4 KiB pages, optional host THP
BACKING_HUGETLB_2M = "hugetlb_2m"  # hugetlbfs, 2 MiB pages: fallocate only
BACKING_HUGETLB_1G = "hugetlb_1g"  # hugetlbfs, 1 GiB pages: 2/4 MiB reports are skipped
BACKING_MODES = (BACKING_ANON, BACKING_HUGETLB_2M, BACKING_HUGETLB_1G)

# What the host does when it needs a frame and nothing can be reclaimed.
OOM_STOP_LARGEST = "stop_largest"  # stop the guest with the largest footprint (OOM killer)
OOM_REFUSE = "refuse"  # refuse the touch (the page stays as it was)
OOM_POLICIES = (OOM_STOP_LARGEST, OOM_REFUSE)

MAX_REPORT_ORDER = 10  # MAX_PAGE_ORDER on x86-64: the largest block a guest can report

ZSWAP_LZ4_RATIO = 2.63  # figures.md Q2 "zram / zswap codecs": lz4 compression ratio 2.63


def _check_bytes(name: str, value: int, allow_zero: bool) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if value % PAGE_SIZE:
        raise ValueError(f"{name} must be a multiple of {PAGE_SIZE}, got {value}")


@dataclass(frozen=True)
class SwapConfig:
    """Swap device. `capacity_bytes == 0` means the host has no swap device.

    Latency and bandwidth of the device are in `CostModel` (swap_read_*, swap_write_*).
    """

    capacity_bytes: int = 0

    def __post_init__(self) -> None:
        _check_bytes("swap.capacity_bytes", self.capacity_bytes, allow_zero=True)


@dataclass(frozen=True)
class ZswapConfig:
    """Compressed swap tier in front of the swap device (zswap/zram-like).

    A swapped-out page goes to the compressed pool while it has room, else to the
    swap device. Each stored page takes `ceil(4096 / compression_ratio)` bytes.
    With `counts_against_host` the pool is host RAM: its bytes count in the pool
    that reclaim keeps under capacity - reserve. Otherwise it is separate memory
    bounded only by `max_pool_bytes`. Compressed pages take no swap slot.
    """

    enabled: bool = False
    compression_ratio: float = ZSWAP_LZ4_RATIO
    max_pool_bytes: int = 1 << 30
    counts_against_host: bool = True

    def __post_init__(self) -> None:
        if not self.compression_ratio > 1.0:
            raise ValueError(f"zswap.compression_ratio must be > 1, got {self.compression_ratio}")
        _check_bytes("zswap.max_pool_bytes", self.max_pool_bytes, allow_zero=False)

    @property
    def compressed_page_bytes(self) -> int:
        """Bytes one compressed 4 KiB page takes in the pool."""
        return max(1, -(-PAGE_SIZE * 1000 // round(self.compression_ratio * 1000)))


@dataclass(frozen=True)
class HostConfig:
    """One host: memory, its own reserve, backing, swap, policies and costs."""

    memory_bytes: int
    reserve_bytes: int = 0
    backing: str = BACKING_ANON
    thp: bool = True  # host THP for anonymous backing (QEMU sets MADV_HUGEPAGE)
    swap: SwapConfig = field(default_factory=SwapConfig)
    zswap: ZswapConfig = field(default_factory=ZswapConfig)
    oom_policy: str = OOM_STOP_LARGEST
    max_overcommit_ratio: float | None = None  # sum(guest memory) / memory_bytes
    max_report_order: int = MAX_REPORT_ORDER
    costs: CostModel = field(default_factory=CostModel)
    debug_checks: bool = False  # run check_invariants() after every operation

    def __post_init__(self) -> None:
        _check_bytes("memory_bytes", self.memory_bytes, allow_zero=False)
        _check_bytes("reserve_bytes", self.reserve_bytes, allow_zero=True)
        if self.reserve_bytes >= self.memory_bytes:
            raise ValueError(
                f"reserve_bytes must be < memory_bytes ({self.memory_bytes}), "
                f"got {self.reserve_bytes}"
            )
        if self.backing not in BACKING_MODES:
            raise ValueError(f"backing must be one of {BACKING_MODES}, got {self.backing!r}")
        if self.oom_policy not in OOM_POLICIES:
            raise ValueError(f"oom_policy must be one of {OOM_POLICIES}, got {self.oom_policy!r}")
        if self.max_overcommit_ratio is not None and not self.max_overcommit_ratio > 0:
            raise ValueError(f"max_overcommit_ratio must be > 0, got {self.max_overcommit_ratio}")
        if not 0 <= self.max_report_order <= 18:
            raise ValueError(f"max_report_order must be in 0..18, got {self.max_report_order}")
        if not isinstance(self.swap, SwapConfig):
            raise ValueError(f"swap must be a SwapConfig, got {self.swap!r}")
        if not isinstance(self.zswap, ZswapConfig):
            raise ValueError(f"zswap must be a ZswapConfig, got {self.zswap!r}")
        if not isinstance(self.costs, CostModel):
            raise ValueError(f"costs must be a CostModel, got {self.costs!r}")
        huge_bytes = self.granule_pages * PAGE_SIZE
        if self.hugetlb and self.limit_bytes < huge_bytes:
            raise ValueError(
                f"memory_bytes - reserve_bytes = {self.limit_bytes} is smaller than one "
                f"{huge_bytes}-byte huge page of backing {self.backing!r}"
            )

    @property
    def granule_pages(self) -> int:
        """4 KiB pages per backing granule: a THP or a static huge page."""
        if self.backing == BACKING_HUGETLB_1G:
            return HUGE_1G_BYTES // PAGE_SIZE
        return HUGE_2M_BYTES // PAGE_SIZE

    @property
    def hugetlb(self) -> bool:
        return self.backing != BACKING_ANON

    @property
    def limit_bytes(self) -> int:
        """Memory the host may give to guests before it reclaims."""
        return self.memory_bytes - self.reserve_bytes
