"""Zone layout, watermarks and per-CPU list sizes, as pure functions of the guest config.

Everything here is integer arithmetic on page counts (§3.5 for the watermarks, §3.4
for the pcp batch/high). Every zone of the model is lowmem (x86-64 has no highmem)
and every modelled page is managed, so the `managed_pages` of a modelled zone is its
span. The x86 ZONE_DMA (the first 16 MiB) is not modelled as pages, but with
`GuestConfig.dma_zone` it is a zone of `dma_managed_pages` managed pages for the
formulas: it counts in the THP raise of min_free_kbytes, in lowmem, and it takes its
share of min_free_kbytes as in the kernel.

Entry points used by the allocators: :func:`zone_ranges`, :func:`guest_zones`,
:func:`guest_watermarks` and :func:`guest_pcp_sizes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import GuestConfig
from .constants import (
    MACHINE_LOWMEM,
    MIN_PERCPU_PAGELIST_HIGH_FRACTION,
    PAGE_SHIFT,
    PROFILE_5_7,
    ZONES_SINGLE,
)

# min_free_kbytes = clamp(isqrt(lowmem_kbytes * 16), MIN_FREE_KBYTES_FLOOR, clamp_max) (§3.5)
MIN_FREE_KBYTES_FLOOR = 128
MIN_FREE_KBYTES_CEIL_5_7 = 65536  # before Joel Savitz's 2020 bound increase
MIN_FREE_KBYTES_CEIL = 262144  # 256 MiB upper clamp from ~5.7 mainline (6.1, modern profiles)
# khugepaged: 2 free pageblocks per zone + MIGRATE_PCPTYPES**2 for fallbacks (2 + 3*3 = 11)
THP_PAGEBLOCKS_PER_ZONE = 11
THP_LOWMEM_CAP_DIVISOR = 20  # the THP raise is capped at 5% of nr_free_buffer_pages
WATERMARK_SCALE_DIVISOR = 10000  # watermark_scale_factor is in 1/10000 of the zone
KBYTES_PER_PAGE = 4
# pcp batch: ~1/1024 of the zone, at most 1 MiB worth (256 pages) before the /4 (§3.4)
PCP_BATCH_ZONE_DIVISOR = 1024
PCP_BATCH_MAX_PAGES = 256
PCP_HIGH_BATCH_MULT_5_7 = 6  # 5.7: high = 6 * batch
PCP_HIGH_BATCH_MULT = 4  # 5.14+: high >= 4 * batch


@dataclass(frozen=True)
class ZoneSizing:
    """One zone as the §3.4/§3.5 formulas see it (pages; pcp sizes are per CPU)."""

    name: str  # "DMA", "DMA32", "Normal"
    modelled: bool  # False for ZONE_DMA: counted, not simulated
    managed: int
    wmark_min: int
    wmark_low: int
    wmark_high: int
    pcp_batch: int
    pcp_high_min: int  # 5.7/6.1: the fixed high; modern: the auto-tuning floor
    pcp_high_max: int  # modern: the auto-tuning ceiling; else == pcp_high_min


def lowmem_split(config: GuestConfig) -> int:
    """Modelled pages in ZONE_DMA32: the explicit split, else the machine's (QEMU)."""
    if config.zones == ZONES_SINGLE:
        return config.nr_pages
    if config.lowmem_pages is not None:
        return min(config.lowmem_pages, config.nr_pages)
    threshold, lowmem = MACHINE_LOWMEM[config.machine]
    if config.nr_bytes >= threshold:
        return min(lowmem >> PAGE_SHIFT, config.nr_pages)
    return config.nr_pages


def zone_ranges(config: GuestConfig) -> list[tuple[int, int]]:
    """[start_pfn, end_pfn) of each modelled zone: DMA32, then Normal if RAM is left."""
    split = lowmem_split(config)
    if split >= config.nr_pages:
        return [(0, config.nr_pages)]
    return [(0, split), (split, config.nr_pages)]


def boot_min_free_kbytes(lowmem_pages: int, profile: str) -> int:
    """vm.min_free_kbytes at boot (calculate_min_free_kbytes, §3.5): lowmem is every zone's
    managed pages up to Normal (nr_free_buffer_pages while the watermarks are still 0)."""
    ceil = MIN_FREE_KBYTES_CEIL_5_7 if profile == PROFILE_5_7 else MIN_FREE_KBYTES_CEIL
    lowmem_kbytes = lowmem_pages * KBYTES_PER_PAGE
    return min(max(math.isqrt(lowmem_kbytes * 16), MIN_FREE_KBYTES_FLOOR), ceil)


def thp_min_free_kbytes(kbytes: int, nr_zones: int, pageblock_order: int, buffer_pages: int) -> int:
    """khugepaged's raise (set_recommended_min_free_kbytes, §3.5): at least 11 pageblocks per
    populated zone up to Normal (ZONE_DMA included), capped at 5 % of nr_free_buffer_pages
    (managed pages above each zone's high watermark when khugepaged starts); only raises."""
    recommended_pages = nr_zones * (1 << pageblock_order) * THP_PAGEBLOCKS_PER_ZONE
    recommended_pages = min(recommended_pages, buffer_pages // THP_LOWMEM_CAP_DIVISOR)
    return max(kbytes, recommended_pages * KBYTES_PER_PAGE)


def zone_watermarks(
    managed_pages: int, lowmem_pages: int, min_free_kbytes_: int, watermark_scale_factor: int
) -> tuple[int, int, int]:
    """(min, low, high) in pages for one lowmem zone (__setup_per_zone_wmarks, §3.5)."""
    pages_min = min_free_kbytes_ // KBYTES_PER_PAGE
    wmark_min = pages_min * managed_pages // lowmem_pages  # share proportional to zone size
    gap = max(wmark_min // 4, managed_pages * watermark_scale_factor // WATERMARK_SCALE_DIVISOR)
    return wmark_min, wmark_min + gap, wmark_min + 2 * gap


def pcp_batch_raw(managed_pages: int) -> int:
    """zone_batchsize (§3.4): 63 for any zone >= 1 GiB, 0 below 8 Ki pages (e.g. ZONE_DMA)."""
    batch = min(managed_pages // PCP_BATCH_ZONE_DIVISOR, PCP_BATCH_MAX_PAGES) // 4
    batch = max(batch, 1)
    return (1 << ((batch + batch // 2).bit_length() - 1)) - 1  # rounddown_pow_of_two(1.5 b) - 1


def pcp_batch(managed_pages: int) -> int:
    """pcp->batch: max(1, zone_batchsize)."""
    return max(pcp_batch_raw(managed_pages), 1)


def pcp_high(batch: int, low_wmark_pages: int, profile: str, ncpus: int = 1) -> int:
    """pcp high (§3.4): 6*batch in 5.7; zone_highsize from 5.14: max(4*batch, low / ncpus)."""
    if profile == PROFILE_5_7:
        return PCP_HIGH_BATCH_MULT_5_7 * batch
    return max(PCP_HIGH_BATCH_MULT * batch, low_wmark_pages // ncpus)


def _zone_highsize(batch: int, total_pages: int, ncpus: int) -> int:
    return max(PCP_HIGH_BATCH_MULT * batch, total_pages // ncpus)


def guest_zones(config: GuestConfig) -> list[ZoneSizing]:
    """Every zone of the guest, ascending zone index, ZONE_DMA first when counted."""
    named = [("DMA32", end - start) for start, end in zone_ranges(config)]
    if len(named) > 1:
        named[1] = ("Normal", named[1][1])
    if config.dma_zone:
        named.insert(0, ("DMA", config.dma_managed_pages))
    named = [(name, managed) for name, managed in named if managed > 0]
    lowmem_pages = sum(managed for _, managed in named)
    kbytes = _min_free_kbytes(config, [managed for _, managed in named])
    ncpus = config.vcpus
    out = []
    for name, managed in named:
        wmin, low, high = zone_watermarks(
            managed, lowmem_pages, kbytes, config.watermark_scale_factor
        )
        batch = config.pcp.batch if config.pcp.batch is not None else pcp_batch(managed)
        if config.pcp.high is not None:
            high_min = config.pcp.high
            high_max = config.pcp.high_max if config.pcp.high_max is not None else high_min
        elif config.profile == PROFILE_5_7:  # 6 * zone_batchsize: 0 for a zone < 8 Ki pages
            raw = config.pcp.batch if config.pcp.batch is not None else pcp_batch_raw(managed)
            high_min = high_max = PCP_HIGH_BATCH_MULT_5_7 * raw
        else:
            fraction = config.percpu_pagelist_high_fraction
            total = managed // fraction if fraction else low
            high_min = _zone_highsize(batch, total, ncpus)
            high_max = high_min
            if config.is_modern and not fraction:
                high_max = _zone_highsize(
                    batch, managed // MIN_PERCPU_PAGELIST_HIGH_FRACTION, ncpus
                )
            if config.pcp.high_max is not None:
                high_max = config.pcp.high_max
        out.append(
            ZoneSizing(
                name=name,
                modelled=name != "DMA",
                managed=managed,
                wmark_min=wmin,
                wmark_low=low,
                wmark_high=high,
                pcp_batch=batch,
                pcp_high_min=high_min,
                pcp_high_max=max(high_max, high_min),
            )
        )
    return out


def guest_watermarks(config: GuestConfig) -> list[tuple[int, int, int]]:
    """(min, low, high) pages of every modelled zone, ascending zone index."""
    return [(z.wmark_min, z.wmark_low, z.wmark_high) for z in guest_zones(config) if z.modelled]


def guest_pcp_sizes(config: GuestConfig) -> list[tuple[int, int, int]]:
    """(batch, high_min, high_max) per CPU of every modelled zone (PcpConfig overrides)."""
    return [
        (z.pcp_batch, z.pcp_high_min, z.pcp_high_max) for z in guest_zones(config) if z.modelled
    ]


def min_free_kbytes_after_thp_off(config: GuestConfig) -> int:
    """min_free_kbytes once THP is turned off at runtime in a guest that booted with it:
    khugepaged's stop recomputes it (calculate_min_free_kbytes) from nr_free_buffer_pages,
    the managed pages above each zone's (raised) high watermark. Use it as
    ``GuestConfig.min_free_kbytes`` to model such a guest (figures.md Q6's THP `never`)."""
    booted = guest_zones(config)
    if config.profile == PROFILE_5_7:  # 5.7 keeps the raised value when THP stops
        return booted_min_free_kbytes(config, booted)
    lowmem = sum(max(z.managed - z.wmark_high, 0) for z in booted)
    ceil = MIN_FREE_KBYTES_CEIL_5_7 if config.profile == PROFILE_5_7 else MIN_FREE_KBYTES_CEIL
    return min(max(math.isqrt(lowmem * KBYTES_PER_PAGE * 16), MIN_FREE_KBYTES_FLOOR), ceil)


def booted_min_free_kbytes(config: GuestConfig, zones: list[ZoneSizing]) -> int:
    """min_free_kbytes behind a guest's watermarks."""
    return _min_free_kbytes(config, [z.managed for z in zones])


def _min_free_kbytes(config: GuestConfig, managed: list[int]) -> int:
    """The override, else the boot value raised by khugepaged when THP is on (§3.5)."""
    if config.min_free_kbytes is not None:
        return config.min_free_kbytes
    lowmem = sum(managed)
    kbytes = boot_min_free_kbytes(lowmem, config.profile)
    if config.thp:
        wsf = config.watermark_scale_factor
        buffer_pages = sum(max(m - zone_watermarks(m, lowmem, kbytes, wsf)[2], 0) for m in managed)
        kbytes = thp_min_free_kbytes(kbytes, len(managed), config.pageblock_order, buffer_pages)
    return kbytes
