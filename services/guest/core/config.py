"""Frozen configuration of one simulated guest.

Constructing a config validates it and has no side effects. Every kernel
constant the spec names is a field, so a what-if experiment can change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import (
    DMA32_END_PFN,
    MAX_ORDER,
    PAGE_REPORTING_BUDGET_DIVISOR,
    PAGE_REPORTING_CAPACITY,
    PAGE_REPORTING_DELAY_NS,
    PAGEBLOCK_ORDER,
    PROFILE_5_7,
    PROFILE_MODERN,
    PROFILES,
    ZONES_DMA32_NORMAL,
    ZONES_SINGLE,
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
    """Per-CPU page list parameters (§3.4). None means derived from the zone."""

    enabled: bool = True
    batch: int | None = None
    high: int | None = None

    def __post_init__(self) -> None:
        if self.batch is not None and self.batch <= 0:
            raise ValueError(f"pcp.batch must be > 0, got {self.batch}")
        if self.high is not None and self.high <= 0:
            raise ValueError(f"pcp.high must be > 0, got {self.high}")


@dataclass(frozen=True)
class GuestConfig:
    """One guest: its RAM, its kernel's rules and its reporting parameters."""

    nr_pages: int
    max_order: int = MAX_ORDER
    pageblock_order: int = PAGEBLOCK_ORDER
    zones: str = ZONES_SINGLE
    profile: str = PROFILE_MODERN
    thp: bool = True
    shuffle: bool = False
    watermark_scale_factor: int = 10
    reporting: ReportingConfig = field(default_factory=ReportingConfig)
    pcp: PcpConfig = field(default_factory=PcpConfig)

    def __post_init__(self) -> None:
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
        if self.zones not in (ZONES_SINGLE, ZONES_DMA32_NORMAL):
            raise ValueError(f"zones must be 'single' or 'dma32_normal', got {self.zones!r}")
        if self.zones == ZONES_DMA32_NORMAL and self.nr_pages <= DMA32_END_PFN:
            raise ValueError(
                f"zones 'dma32_normal' needs a guest over 4 GiB, got nr_pages={self.nr_pages}"
            )
        if self.watermark_scale_factor <= 0:
            raise ValueError(
                f"watermark_scale_factor must be > 0, got {self.watermark_scale_factor}"
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
        orders = {0, 1, 2, 3, self.pageblock_order}
        return tuple(sorted(o for o in orders if o <= self.max_order))

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
