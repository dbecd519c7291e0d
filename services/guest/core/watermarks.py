"""Zone watermarks and per-CPU list sizes, as pure functions of the guest size.

Everything here is integer arithmetic on page counts (§3.5 for the watermarks,
§3.4 for the pcp batch/high). Every zone of the model is lowmem (x86-64 has no
highmem) and every page of a zone is managed (no memblock reservations), so
`managed_pages` of a zone is its span.

Entry points used by the allocators: :func:`zone_ranges`,
:func:`guest_watermarks` and :func:`guest_pcp_sizes`.
"""

from __future__ import annotations

import math

from .config import GuestConfig
from .constants import DMA32_END_PFN, PROFILE_5_7, ZONES_SINGLE

# min_free_kbytes = clamp(isqrt(lowmem_kbytes * 16), MIN_FREE_KBYTES_FLOOR, clamp_max) (§3.5)
MIN_FREE_KBYTES_FLOOR = 128
MIN_FREE_KBYTES_CEIL_5_7 = 65536  # before Joel Savitz's 2020 bound increase
MIN_FREE_KBYTES_CEIL = 262144  # 256 MiB upper clamp from ~5.7 mainline (6.1, modern profiles)
# khugepaged: 2 free pageblocks per zone + MIGRATE_PCPTYPES**2 for fallbacks (2 + 3*3 = 11)
THP_PAGEBLOCKS_PER_ZONE = 11
THP_LOWMEM_CAP_DIVISOR = 20  # the THP raise is capped at 5% of lowmem
WATERMARK_SCALE_DIVISOR = 10000  # watermark_scale_factor is in 1/10000 of the zone
KBYTES_PER_PAGE = 4
# pcp batch: ~1/1024 of the zone, at most 1 MiB worth (256 pages) before the /4 (§3.4)
PCP_BATCH_ZONE_DIVISOR = 1024
PCP_BATCH_MAX_PAGES = 256
PCP_HIGH_BATCH_MULT_5_7 = 6  # 5.7: high = 6 * batch
PCP_HIGH_BATCH_MULT = 4  # 5.14+: high >= 4 * batch


def zone_ranges(config: GuestConfig) -> list[tuple[int, int]]:
    """[start_pfn, end_pfn) of each zone, ascending zone index (DMA32 = pfn < 4 GiB)."""
    if config.zones == ZONES_SINGLE:
        return [(0, config.nr_pages)]
    return [(0, DMA32_END_PFN), (DMA32_END_PFN, config.nr_pages)]


def min_free_kbytes(
    lowmem_pages: int, nr_zones: int, pageblock_order: int, profile: str, thp: bool
) -> int:
    """vm.min_free_kbytes at boot, with the khugepaged raise when THP is on (§3.5)."""
    ceil = MIN_FREE_KBYTES_CEIL_5_7 if profile == PROFILE_5_7 else MIN_FREE_KBYTES_CEIL
    lowmem_kbytes = lowmem_pages * KBYTES_PER_PAGE
    kbytes = min(max(math.isqrt(lowmem_kbytes * 16), MIN_FREE_KBYTES_FLOOR), ceil)
    if thp:
        recommended_pages = nr_zones * (1 << pageblock_order) * THP_PAGEBLOCKS_PER_ZONE
        recommended_pages = min(recommended_pages, lowmem_pages // THP_LOWMEM_CAP_DIVISOR)
        kbytes = max(kbytes, recommended_pages * KBYTES_PER_PAGE)
    return kbytes


def zone_watermarks(
    managed_pages: int, lowmem_pages: int, min_free_kbytes_: int, watermark_scale_factor: int
) -> tuple[int, int, int]:
    """(min, low, high) in pages for one lowmem zone (§3.5)."""
    pages_min = min_free_kbytes_ // KBYTES_PER_PAGE
    wmark_min = pages_min * managed_pages // lowmem_pages  # share proportional to zone size
    gap = max(wmark_min // 4, managed_pages * watermark_scale_factor // WATERMARK_SCALE_DIVISOR)
    return wmark_min, wmark_min + gap, wmark_min + 2 * gap


def pcp_batch(managed_pages: int) -> int:
    """pcp batch (§3.4): 63 for any zone >= 1 GiB; at least 1."""
    batch = min(managed_pages // PCP_BATCH_ZONE_DIVISOR, PCP_BATCH_MAX_PAGES) // 4
    batch = max(batch, 1)
    batch = (1 << ((batch + batch // 2).bit_length() - 1)) - 1  # rounddown_pow_of_two(1.5 b) - 1
    return max(batch, 1)


def pcp_high(batch: int, low_wmark_pages: int, profile: str) -> int:
    """pcp high (§3.4): 6*batch in 5.7; max(4*batch, low watermark) from 5.14 (one CPU)."""
    if profile == PROFILE_5_7:
        return PCP_HIGH_BATCH_MULT_5_7 * batch
    return max(PCP_HIGH_BATCH_MULT * batch, low_wmark_pages)


def guest_watermarks(config: GuestConfig) -> list[tuple[int, int, int]]:
    """(min, low, high) pages of every zone of the guest, ascending zone index."""
    ranges = zone_ranges(config)
    lowmem_pages = config.nr_pages
    kbytes = min_free_kbytes(
        lowmem_pages, len(ranges), config.pageblock_order, config.profile, config.thp
    )
    return [
        zone_watermarks(end - start, lowmem_pages, kbytes, config.watermark_scale_factor)
        for start, end in ranges
    ]


def guest_pcp_sizes(config: GuestConfig) -> list[tuple[int, int]]:
    """(batch, high) pages of every zone; PcpConfig.batch/high override the derived values."""
    sizes = []
    for (start, end), (_, low, _) in zip(
        zone_ranges(config), guest_watermarks(config), strict=True
    ):
        batch = config.pcp.batch if config.pcp.batch is not None else pcp_batch(end - start)
        high = (
            config.pcp.high if config.pcp.high is not None else pcp_high(batch, low, config.profile)
        )
        sizes.append((batch, high))
    return sizes
