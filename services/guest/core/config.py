"""Frozen configuration of one simulated guest.

Constructing a config validates it and has no side effects. Every kernel
constant the spec names is a field, so a what-if experiment can change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import (
    DMA_ZONE_MANAGED_PAGES,
    MACHINE_Q35,
    MACHINES,
    MAX_ORDER,
    MAX_VCPUS,
    MIN_PERCPU_PAGELIST_HIGH_FRACTION,
    PAGE_ALLOC_COSTLY_ORDER,
    PAGE_REPORTING_BUDGET_DIVISOR,
    PAGE_REPORTING_CAPACITY,
    PAGE_REPORTING_DELAY_NS,
    PAGEBLOCK_ORDER,
    PROFILE_5_7,
    PROFILE_MODERN,
    PROFILES,
    ZONE_LAYOUTS,
    ZONES_AUTO,
)


@dataclass(frozen=True)
class ReportingConfig:
    """Free page reporting parameters (§4)."""

    enabled: bool = True
    order: int | None = None  # R; None -> pageblock_order (§4.8)
    capacity: int = PAGE_REPORTING_CAPACITY
    delay_ns: int = PAGE_REPORTING_DELAY_NS
    budget_divisor: int = PAGE_REPORTING_BUDGET_DIVISOR

    def __post_init__(self) -> None:
        if self.capacity <= 0:
            raise ValueError(f"reporting.capacity must be > 0, got {self.capacity}")
        if self.delay_ns < 0:
            raise ValueError(f"reporting.delay_ns must be >= 0, got {self.delay_ns}")
        if self.budget_divisor <= 0:
            raise ValueError(f"reporting.budget_divisor must be > 0, got {self.budget_divisor}")
        if self.order is not None and self.order < 0:
            raise ValueError(f"reporting.order must be >= 0, got {self.order}")


@dataclass(frozen=True)
class PcpConfig:
    """Per-CPU page list parameters (§3.4). None means derived from the zone.

    ``high`` fixes every zone's per-CPU high (in ``modern``: high_min = high_max = high,
    no auto-tuning unless ``high_max`` is also given); ``high_max`` sets the ``modern``
    auto-tuning ceiling.
    """

    enabled: bool = True
    batch: int | None = None
    high: int | None = None
    high_max: int | None = None
    # modern PCPF_FREE_HIGH_BATCH: set when the CPU's share of the last-level cache holds
    # more than 3 batches (zone_pcp_update_cacheinfo), true for any vCPU with a few MiB
    free_high_batch: bool = True

    def __post_init__(self) -> None:
        if self.batch is not None and self.batch <= 0:
            raise ValueError(f"pcp.batch must be > 0, got {self.batch}")
        if self.high is not None and self.high <= 0:
            raise ValueError(f"pcp.high must be > 0, got {self.high}")
        if self.high_max is not None and self.high_max < (self.high or 1):
            raise ValueError(f"pcp.high_max must be >= pcp.high, got {self.high_max}")


@dataclass(frozen=True)
class GuestConfig:
    """One guest: its RAM, its kernel's rules and its reporting parameters."""

    nr_pages: int
    max_order: int = MAX_ORDER
    pageblock_order: int = PAGEBLOCK_ORDER
    zones: str = ZONES_AUTO
    machine: str = MACHINE_Q35
    lowmem_pages: int | None = None  # explicit DMA32 size; None -> the machine's split
    dma_zone: bool = True  # x86 ZONE_DMA (16 MiB, not modelled as pages) counts in §3.5
    dma_managed_pages: int = DMA_ZONE_MANAGED_PAGES
    vcpus: int = 1
    profile: str = PROFILE_MODERN
    thp: bool = True
    shuffle: bool = False
    watermark_scale_factor: int = 10
    min_free_kbytes: int | None = None  # vm.min_free_kbytes override (else §3.5 at boot)
    percpu_pagelist_high_fraction: int = 0  # 5.14+ sysctl; 0 = high from the low watermark
    reporting: ReportingConfig = field(default_factory=ReportingConfig)
    pcp: PcpConfig = field(default_factory=PcpConfig)

    def __post_init__(self) -> None:  # noqa: PLR0912 - one check per field
        if not 1 <= self.max_order <= 20:
            raise ValueError(f"max_order must be in 1..20, got {self.max_order}")
        if not 0 <= self.pageblock_order <= self.max_order:
            raise ValueError(
                f"pageblock_order must be in 0..max_order ({self.max_order}), got {self.pageblock_order}"
            )
        block = 1 << self.max_order
        if self.nr_pages <= 0 or self.nr_pages % block:
            raise ValueError(
                f"nr_pages must be a positive multiple of 2**max_order ({block}), got {self.nr_pages}"
            )
        if self.nr_pages >= 2**31 - 1:
            raise ValueError(f"nr_pages must be < 2**31 - 1 (int32 links), got {self.nr_pages}")
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if self.zones not in ZONE_LAYOUTS:
            raise ValueError(f"zones must be one of {ZONE_LAYOUTS}, got {self.zones!r}")
        if self.machine not in MACHINES:
            raise ValueError(f"machine must be one of {MACHINES}, got {self.machine!r}")
        if self.lowmem_pages is not None and (self.lowmem_pages <= 0 or self.lowmem_pages % block):
            raise ValueError(
                f"lowmem_pages must be a positive multiple of 2**max_order ({block}), "
                f"got {self.lowmem_pages}"
            )
        if not 0 <= self.dma_managed_pages <= 4096:
            raise ValueError(f"dma_managed_pages must be in 0..4096, got {self.dma_managed_pages}")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ValueError(f"vcpus must be in 1..{MAX_VCPUS}, got {self.vcpus}")
        if not 1 <= self.watermark_scale_factor <= 3000:
            raise ValueError(
                f"watermark_scale_factor must be in 1..3000, got {self.watermark_scale_factor}"
            )
        if self.min_free_kbytes is not None and not 0 < self.min_free_kbytes <= 1 << 30:
            raise ValueError(f"min_free_kbytes must be in 1..2**30, got {self.min_free_kbytes}")
        f = self.percpu_pagelist_high_fraction
        if f != 0 and not MIN_PERCPU_PAGELIST_HIGH_FRACTION <= f <= 1 << 30:
            raise ValueError(
                f"percpu_pagelist_high_fraction must be 0 or >= "
                f"{MIN_PERCPU_PAGELIST_HIGH_FRACTION}, got {f}"
            )
        r = self.report_order
        if r > self.max_order:
            raise ValueError(f"reporting.order must be <= max_order ({self.max_order}), got {r}")

    @property
    def report_order(self) -> int:
        """R: the reporting order threshold (§4.8, parameter > pageblock_order)."""
        return self.pageblock_order if self.reporting.order is None else self.reporting.order

    @property
    def pcp_orders(self) -> tuple[int, ...]:
        """Orders that go through the per-CPU lists (§3.4)."""
        if not self.pcp.enabled:
            return ()
        if self.profile == PROFILE_5_7:
            return (0,)
        orders = set(range(PAGE_ALLOC_COSTLY_ORDER + 1))
        if self.thp_pcp_order is not None:
            orders.add(self.thp_pcp_order)
        return tuple(sorted(o for o in orders if o <= self.max_order))

    @property
    def thp_pcp_order(self) -> int | None:
        """The THP order's own pcp list(s), 5.14+ (the pageblock order, above COSTLY)."""
        if self.profile == PROFILE_5_7 or self.pageblock_order <= PAGE_ALLOC_COSTLY_ORDER:
            return None
        return self.pageblock_order

    @property
    def pcp_list_keys(self) -> tuple[tuple[int, int], ...]:
        """(order, mt) naming each pcp list, in pindex order (order_to_pindex, §3.4).

        Low orders: one list per (order, PCP migratetype), order-major. THP: one list
        shared by every migratetype in 6.1 (mt -1), two in modern (0 = non-movable,
        1 = movable).
        """
        keys = [
            (o, mt)
            for o in self.pcp_orders
            if o != self.thp_pcp_order
            for mt in range(3)  # MIGRATE_PCPTYPES
        ]
        thp = self.thp_pcp_order
        if thp is not None and self.pcp.enabled:
            keys += [(thp, 0), (thp, 1)] if self.is_modern else [(thp, -1)]
        return tuple(keys)

    @property
    def putback_to_tail(self) -> bool:
        """Reporting putback uses FPI_TO_TAIL from 5.10 (§2.4)."""
        return self.profile != PROFILE_5_7

    @property
    def boot_to_tail(self) -> bool:
        """Boot-time frees use FPI_TO_TAIL from 5.10 (§2.5b)."""
        return self.profile != PROFILE_5_7

    @property
    def is_modern(self) -> bool:
        return self.profile == PROFILE_MODERN

    @property
    def nr_bytes(self) -> int:
        return self.nr_pages << 12
