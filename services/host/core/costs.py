"""Cost model of the host: what each host-side event costs a guest, in simulated ns.

`CostModel` holds the figures; the module-level functions are pure and return
integer nanoseconds (`SimTime`). Defaults come from
`shared/reference/figures.md` (Q2); the source of each sits beside it. Every
value can be overridden: `CostModel(**overrides)` validates the result.

Bandwidths are bytes per second; a transfer of `n` bytes costs
`ceil(n * 1e9 / bandwidth)` ns, computed in integers so results are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from services.units import NS_PER_S, PAGE_SIZE

HUGE_2M_BYTES = 2 << 20  # x86-64 PMD-mapped huge page
HUGE_1G_BYTES = 1 << 30  # x86-64 PUD-mapped huge page (hugetlbfs only)


@dataclass(frozen=True)
class CostModel:
    """Host cost figures. Latencies in ns, bandwidths in bytes/s."""

    # Host page fault path (EPT violation, host fault, map) without zeroing.
    # figures.md Q2 "suggested defaults": install a 4 KiB page 2-4 us including
    # zeroing; zeroing 4 KiB at 13.7 GB/s is 0.3 us -> ~2 us of fault path.
    fault_4k_ns: int = 2_000
    # figures.md Q2 "suggested defaults": install a 2 MiB page 0.25-0.5 ms including
    # zeroing; zeroing 2 MiB at 15.1 GB/s is ~0.14 ms -> ~0.11 ms of fault path.
    # Also used for 1 GiB hugetlbfs faults (no figure; zeroing dominates there).
    fault_2m_ns: int = 112_000
    # figures.md Q2 "Page zeroing bandwidth": clear_pages 13.7 GB/s in 4 KiB chunks
    # (AMD Milan, commit "x86/clear_page: introduce clear_pages()").
    zero_4k_bytes_per_s: int = 13_700_000_000
    # figures.md Q2, same source: 15.1 GB/s in 2 MiB chunks.
    zero_2m_bytes_per_s: int = 15_100_000_000
    # figures.md Q2, same source: 38.1 GB/s in 1 GiB chunks.
    zero_1g_bytes_per_s: int = 38_100_000_000
    # figures.md Q2 "MADV_DONTNEED": QEMU balloon, one 4 KiB page per call
    # ~0.43 us per page [D] (Wei Wang SG patch, 19% of 4,126 ms for 7 GB).
    discard_4k_ns: int = 430
    # figures.md Q2 "2 MiB discard through the balloon": 136 GiB/s ~ 14 us per
    # 2 MiB [D] (HyperAlloc inflate.dref, virtio-balloon-huge).
    discard_2m_ns: int = 14_000
    # figures.md Q2 "suggested defaults": one exit (~1-2 us) per report; virtqueue
    # kick is one lightweight exit (Bonzini, KVM fast-MMIO eventfd).
    report_exit_ns: int = 1_500
    # figures.md Q2 "NVMe swap device" / "suggested defaults": swap-in 4 KiB from
    # NAND 80 us (QD1 random read ~50-100 us).
    swap_read_latency_ns: int = 80_000
    # figures.md Q2 "NVMe swap device": sequential read 3.4-6.2 GB/s (low end).
    swap_read_bytes_per_s: int = 3_400_000_000
    # No write-latency figure in figures.md: swap-out is asynchronous writeback, so
    # only bandwidth is charged by default [D].
    swap_write_latency_ns: int = 0
    # figures.md Q2 "NVMe swap device": sustained write 1.9-5.0 GB/s (low end).
    swap_write_bytes_per_s: int = 1_900_000_000
    # figures.md Q2 "zram / zswap codecs": lz4 4 KiB read mean 1.7 us
    # ("Zram Performance Analysis"); suggested default 1.5-2 us.
    decompress_ns: int = 1_700
    # No compression-latency figure in figures.md; set equal to lz4 decompress [D].
    compress_ns: int = 1_700

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"costs.{f.name} must be an int, got {value!r}")
            if f.name.endswith("_bytes_per_s"):
                if value <= 0:
                    raise ValueError(f"costs.{f.name} must be > 0, got {value}")
            elif value < 0:
                raise ValueError(f"costs.{f.name} must be >= 0, got {value}")


def transfer_ns(nbytes: int, bytes_per_s: int) -> int:
    """Time to move `nbytes` at `bytes_per_s`, rounded up to whole ns."""
    return (nbytes * NS_PER_S + bytes_per_s - 1) // bytes_per_s


def host_fault_ns(cm: CostModel, faults_4k: int, faults_huge: int = 0) -> int:
    """Fault path (no zeroing) of `faults_4k` 4 KiB and `faults_huge` huge-page faults."""
    return faults_4k * cm.fault_4k_ns + faults_huge * cm.fault_2m_ns


def zero_ns(cm: CostModel, pages_4k: int, granules_2m: int = 0, granules_1g: int = 0) -> int:
    """Zero-fill of fresh host pages: 4 KiB pages, 2 MiB and 1 GiB huge pages."""
    return (
        transfer_ns(pages_4k * PAGE_SIZE, cm.zero_4k_bytes_per_s)
        + transfer_ns(granules_2m * HUGE_2M_BYTES, cm.zero_2m_bytes_per_s)
        + transfer_ns(granules_1g * HUGE_1G_BYTES, cm.zero_1g_bytes_per_s)
    )


def discard_ns(cm: CostModel, pages_4k: int, ranges_2m: int = 0) -> int:
    """madvise/fallocate cost: 4 KiB pieces of ranges below 2 MiB, and 2 MiB ranges."""
    return pages_4k * cm.discard_4k_ns + ranges_2m * cm.discard_2m_ns


def report_ns(cm: CostModel, reports: int) -> int:
    """Round trip of `reports` report calls: one virtqueue kick (one exit) each."""
    return reports * cm.report_exit_ns


def swapin_ns(cm: CostModel, pages: int) -> int:
    """Synchronous swap-in of `pages` 4 KiB pages, one QD1 read each."""
    return pages * cm.swap_read_latency_ns + transfer_ns(
        pages * PAGE_SIZE, cm.swap_read_bytes_per_s
    )


def swapout_ns(cm: CostModel, pages: int) -> int:
    """Swap-out (writeback) of `pages` 4 KiB pages."""
    return pages * cm.swap_write_latency_ns + transfer_ns(
        pages * PAGE_SIZE, cm.swap_write_bytes_per_s
    )


def compress_ns(cm: CostModel, pages: int) -> int:
    """Compressing `pages` pages into the zswap pool."""
    return pages * cm.compress_ns


def decompress_ns(cm: CostModel, pages: int) -> int:
    """Decompressing `pages` pages out of the zswap pool."""
    return pages * cm.decompress_ns
