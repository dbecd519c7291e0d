"""Guest fidelity (issue 11): per-CPU lists, watermarks and zones as the kernel computes
them. Each test states the kernel rule it checks (docs/kernel-model.md §3.4, §3.5) and
runs on both allocators (the reference and the numba fast path)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from services.guest.core.config import GuestConfig, PcpConfig, ReportingConfig
from services.guest.core.constants import (
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
)
from services.guest.core.watermarks import (
    guest_zones,
    min_free_kbytes_after_thp_off,
    zone_ranges,
)
from tests.guest_helpers import check_invariants

GIB_PAGES = 1 << 18


def set_pageblock_mt(a, pfn: int, mt: int) -> None:
    """Relabel a pageblock directly (a test stand-in for fallback claiming)."""
    pb = pfn >> a.config.pageblock_order
    if hasattr(a, "pbmt"):
        a.pbmt[pb] = mt
    else:
        a._pageblock_mt[pb] = mt


# ---------------------------------------------------------------- §3.5 watermarks, real guest


def q6_guest(**kw) -> GuestConfig:
    """figures.md Q6: Debian 6.1 guest, QEMU pc, 2048 MiB, 1 vCPU, MemTotal 2,014,400 kB =
    503,600 managed pages. ZONE_DMA's 3,889 are not modelled as pages; the model's DMA32 is
    the rest, 499,711, rounded up to whole 4 MiB blocks: 499,712."""
    return GuestConfig(nr_pages=499_712, machine="pc", profile="6.1", vcpus=1, **kw)


def test_q6_real_guest_pcp_sizes_thp_on(allocator_factory):
    """Measured: DMA32 pcp high 13,971 batch 63 (the low watermark with min_free_kbytes
    raised for THP over two zones, DMA counted); DMA high 107 batch 1."""
    cfg = q6_guest()
    dma, _ = guest_zones(cfg)
    assert (dma.name, dma.pcp_high_min, dma.pcp_batch) == ("DMA", 107, 1)
    a = allocator_factory(cfg)
    state = a.pcp_state(0)
    assert abs(state["high"] - 13_971) <= 3 and state["batch"] == 63
    assert a.watermarks(0)[1] == state["high"]  # 5.14+: high is the low watermark per CPU


def test_q6_real_guest_pcp_high_thp_never(allocator_factory):
    """Measured with THP set to `never` after boot: DMA32 high 1,883. khugepaged's stop
    recomputes min_free_kbytes from the managed pages above the raised high watermarks
    (5581 kB); a guest booted without THP would get 1,907 (from all managed pages)."""
    kbytes = min_free_kbytes_after_thp_off(q6_guest())
    a = allocator_factory(q6_guest(thp=False, min_free_kbytes=kbytes))
    assert abs(a.pcp_state(0)["high"] - 1_883) <= 3
    booted_without = allocator_factory(q6_guest(thp=False))
    assert booted_without.pcp_state(0)["high"] == 1_907


def test_thp_raise_counts_the_dma_zone():
    """11 pageblocks per populated zone up to Normal, ZONE_DMA included (§3.5)."""
    with_dma = guest_zones(GuestConfig(nr_pages=2 * GIB_PAGES, profile="6.1"))
    without = guest_zones(GuestConfig(nr_pages=2 * GIB_PAGES, profile="6.1", dma_zone=False))
    # 2 zones x 512 x 11 = 11,264 pages of min over 528,177 managed; 1 zone: 5,632 over 524,288
    assert with_dma[-1].wmark_min == 11_264 * 524_288 // 528_177 == 11_181
    assert without[-1].wmark_min == 5_632


def test_32gib_guest_three_zone_watermarks():
    """32 GiB q35 guest: DMA 3,889 + DMA32 2 GiB (524,288) + Normal 30 GiB (7,864,320) =
    8,392,497 managed. Boot: isqrt(8,392,497 x 4 x 16) = 23,175 kB; THP: 3 x 512 x 11 =
    16,896 pages = 67,584 kB (5 % cap ~419k pages, not binding). min = 16,896 x managed //
    8,392,497; gap = max(min // 4, managed x 10 // 10000)."""
    zones = guest_zones(GuestConfig(nr_pages=32 * GIB_PAGES, profile="6.1"))
    got = [(z.name, z.wmark_min, z.wmark_low, z.wmark_high) for z in zones]
    assert got == [
        ("DMA", 7, 10, 13),  # 16896*3889//8392497 = 7; gap max(1, 3) = 3
        ("DMA32", 1_055, 1_579, 2_103),  # 1055; gap max(263, 524) = 524
        ("Normal", 15_832, 23_696, 31_560),  # 15832; gap max(3958, 7864) = 7864
    ]


@pytest.mark.parametrize(
    ("machine", "gib", "ranges_gib"),
    [
        ("q35", 4, [(0, 2), (2, 4)]),  # >= 2.75 GiB: 2 GiB below 4 GiB
        ("q35", 2.5, [(0, 2.5)]),
        ("pc", 4, [(0, 3), (3, 4)]),  # >= 3.5 GiB: 3 GiB below 4 GiB
        ("pc", 3, [(0, 3)]),
    ],
)
def test_zones_follow_the_qemu_machine_type(machine, gib, ranges_gib):
    cfg = GuestConfig(nr_pages=int(gib * GIB_PAGES), machine=machine)
    assert zone_ranges(cfg) == [(int(s * GIB_PAGES), int(e * GIB_PAGES)) for s, e in ranges_gib]


def test_each_zone_has_its_own_budget_gate_and_pcp(allocator_factory):
    """A 4 GiB q35 guest: DMA32 2 GiB + Normal 2 GiB, each with its own watermarks and pcp."""
    a = allocator_factory(GuestConfig(nr_pages=4 * GIB_PAGES, profile="6.1"))
    assert a.nr_zones == 2
    assert a.watermarks(0) != (0, 0, 0) and a.watermarks(0) == a.watermarks(1)
    got = a.alloc(0, MIGRATE_MOVABLE, 10)
    assert all(p >= 2 * GIB_PAGES for p in got)  # the highest zone first
    assert a.pcp_state(1)["count"] == 53 and a.pcp_state(0)["count"] == 0


# ---------------------------------------------------------------- §3.4 pcp free side, 6.1


def two_gib_61(**kw) -> GuestConfig:
    """2 GiB q35 6.1 guest: one DMA32 zone of 524,288 pages; high = low = 13,976, batch 63."""
    return GuestConfig(nr_pages=2 * GIB_PAGES, profile="6.1", **kw)


@pytest.mark.parametrize(("thps", "expected"), [(768, 3_072), (700, 11_264)])
def test_61_thp_free_leaves_the_free_factor_sawtooth(allocator_factory, thps, expected):
    """Freeing THPs (512 pages each) with high 13,976 and batch 63, by hand:
    frees 1-27 fill to 13,824; from free 28 each crossing drains batch << free_factor
    (63, 126, 252, 504: one block; 1008: two; 2016: four; 4032: eight; 8064: sixteen blocks
    at frees 28-31, 32, 34, 38, 46), free_factor growing to 8; at free 62 63 << 8 = 16,128
    is clamped to high - batch = 13,913, which takes all 28 blocks: the count is 0. From
    then on it climbs 512 per free and empties every 28 frees, so after N frees it is
    512 x ((N - 62) mod 28): 768 -> 6 x 512 = 3,072; 700 -> 22 x 512 = 11,264.
    (The refill takes 2 THPs per empty list, so the allocation leaves none behind.)"""
    a = allocator_factory(two_gib_61())
    assert a.pcp_state(0)["high"] == 13_976 and a.pcp_state(0)["batch"] == 63
    thp = a.alloc(9, MIGRATE_MOVABLE, thps)
    assert len(thp) == thps and a.pcp_pages() == 0
    a.free(thp, 9)
    assert a.pcp_pages() == expected
    assert a.pcp_state(0)["free_factor"] == 8
    check_invariants(a)


@pytest.mark.parametrize(("pages", "expected"), [(393_216, 1_530), (300_000, 5_705)])
def test_61_page_free_leaves_the_free_factor_sawtooth(allocator_factory, pages, expected):
    """Freeing 4 KiB pages, by hand: the allocation leaves 30 pages on the list (refills
    of 63; 393,216 = 6,241 x 63 + 33, the last refill leaves 30). The count first reaches
    13,976 after 13,946 frees; drains of 63, 126, ..., 8,064 each refill by as many frees
    (16,065 in all), then the clamped drain of 13,913 leaves 63 at free 30,011, and every
    13,913 frees repeat that. After N frees: 63 + (N - 30,011) mod 13,913:
    393,216 -> 63 + 1,467 = 1,530; 300,000 -> 63 + 5,642 = 5,705."""
    a = allocator_factory(two_gib_61())
    held = a.alloc(0, MIGRATE_MOVABLE, 393_216)
    assert a.pcp_pages() == 30
    a.free(held[:pages], 0)
    assert a.pcp_pages() == expected


def test_61_free_high_flushes_orders_1_to_3_once_free_factor_is_set(allocator_factory):
    a = allocator_factory(two_gib_61())
    held = a.alloc(0, MIGRATE_MOVABLE, 20_000)
    a.free(held, 0)  # drains: free_factor > 0
    assert a.pcp_state(0)["free_factor"] > 0 and a.pcp_pages() > 0
    blocks = a.alloc(2, MIGRATE_MOVABLE, 1)  # the allocation halves free_factor, still > 0
    assert a.pcp_state(0)["free_factor"] > 0
    a.free(blocks, 2)  # free_high: the whole pcp is flushed
    assert a.pcp_pages() == 0


# ---------------------------------------------------------------- §3.4 pcp, modern (6.7+)


def test_modern_parks_more_than_61_and_returns_it_over_seconds(allocator_factory):
    """A grow/free cycle of 1 GiB in a 2 GiB guest. 6.1 keeps < high (13,976) for good;
    modern's high grows toward high_max (managed / 8 = 65,536) while the refills and frees
    run, so it parks far more; decay_pcp_high (once a second) then frees at most
    batch << 5 = 2,016 pages per tick until high is back at high_min."""
    parked = {}
    for profile in ("6.1", "modern"):
        a = allocator_factory(GuestConfig(nr_pages=2 * GIB_PAGES, profile=profile))
        held = a.alloc(0, MIGRATE_MOVABLE, GIB_PAGES)
        a.free(held, 0)
        parked[profile] = a.pcp_pages()
        if profile == "modern":
            state = a.pcp_state(0)
            assert state["high_max"] == 65_536 and state["high"] > state["high_min"]
            counts = [a.pcp_pages()]
            while a.pcp_decay_pending():
                a.decay_pcp_high()
                counts.append(a.pcp_pages())
            steps = np.diff(counts)
            assert (steps <= 0).all() and (-steps <= 63 << 5).all()
            assert len(counts) > 10  # returned over many seconds, not at once
            assert counts[-1] <= state["high_min"] and a.pcp_state(0)["high"] == state["high_min"]
        else:
            assert not a.pcp_decay_pending() and a.decay_pcp_high() == 0
    assert parked["6.1"] < 13_976 < parked["modern"]


# ---------------------------------------------------------------- §3.4 5.7 bulk free


def test_57_bulk_free_starts_at_movable_one_page_per_list(allocator_factory):
    """5.7 free_pcppages_bulk: the cursor restarts every call and moves first, so MOVABLE,
    RECLAIMABLE, UNMOVABLE, MOVABLE, ... give one page each while all three are non-empty."""
    cfg = GuestConfig(nr_pages=8192, profile="5.7", pcp=PcpConfig(batch=4, high=9))
    a = allocator_factory(cfg)
    pages = [int(p) for p in a.alloc(0, MIGRATE_MOVABLE, 2048)]
    pb = cfg.pageblock_order
    blocks = sorted({p >> pb for p in pages})[:3]
    by_type = {}
    for mt, block in zip(
        (MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE), blocks, strict=True
    ):
        set_pageblock_mt(a, block << pb, mt)
        by_type[mt] = [p for p in pages if p >> pb == block][:3]
    a.drain_pcp()
    freed = by_type[0] + by_type[1] + by_type[2]  # 9 frees: the 9th reaches high
    a.free(freed[:8], 0)
    assert a.pcp_pages() == 8
    a.free(freed[8:], 0)  # count 9 >= high: free batch = 4 pages
    left = {mt: a.pcp_list(0, 0, mt) for mt in by_type}
    # taken from the tails (the first freed): MOVABLE, RECLAIMABLE, UNMOVABLE, MOVABLE
    assert left[MIGRATE_MOVABLE] == by_type[1][:0:-1][:1]
    assert left[MIGRATE_RECLAIMABLE] == by_type[2][:0:-1]
    assert left[MIGRATE_UNMOVABLE] == by_type[0][:0:-1]
    assert a.pcp_pages() == 5


def test_57_small_zone_pcp_high_is_zero():
    """5.7 sizes high = 6 x zone_batchsize, which is 0 below 8 Ki managed pages."""
    dma = guest_zones(GuestConfig(nr_pages=GIB_PAGES, profile="5.7"))[0]
    assert (dma.name, dma.pcp_high_min, dma.pcp_batch) == ("DMA", 0, 1)


# ---------------------------------------------------------------- refill, lists, migratetype


def test_thp_refill_takes_two_blocks(allocator_factory):
    for profile in ("6.1", "modern"):
        a = allocator_factory(GuestConfig(nr_pages=GIB_PAGES, profile=profile))
        a.alloc(9, MIGRATE_MOVABLE, 1)
        assert a.pcp_pages() == 512  # max(63 >> 9, 2) = 2 blocks taken, one handed out


def test_thp_lists_shared_in_61_split_in_modern(allocator_factory):
    """A THP freed from an UNMOVABLE pageblock: 6.1's single THP list hands it to the next
    MOVABLE THP allocation; modern keeps it on the non-movable list."""
    for profile, reused in (("6.1", True), ("modern", False)):
        a = allocator_factory(GuestConfig(nr_pages=GIB_PAGES, profile=profile))
        thp = a.alloc(9, MIGRATE_MOVABLE, 3)
        a.drain_pcp()
        set_pageblock_mt(a, int(thp[0]), MIGRATE_UNMOVABLE)
        a.free(thp[:1], 9)
        again = a.alloc(9, MIGRATE_MOVABLE, 1)
        assert (int(again[0]) == int(thp[0])) is reused, profile


def test_pcp_migratetype_cached_at_free_in_61_reread_in_modern(allocator_factory):
    for profile, list_mt in (("6.1", MIGRATE_UNMOVABLE), ("modern", MIGRATE_MOVABLE)):
        a = allocator_factory(GuestConfig(nr_pages=8192, profile=profile))
        pages = [int(p) for p in a.alloc(0, MIGRATE_MOVABLE, 64)]
        page = next(p for p in pages if p ^ 1 in pages)  # its buddy stays allocated
        a.drain_pcp()
        set_pageblock_mt(a, page, MIGRATE_UNMOVABLE)
        a.free([page], 0)  # pcp, cached UNMOVABLE
        set_pageblock_mt(a, page, MIGRATE_MOVABLE)
        a.drain_pcp()
        on = [mt for mt in (0, 1) if any(p == page for p, _ in a.free_list(0, 0, mt))]
        assert on == [list_mt], profile


def test_failed_allocation_drains_pcp_and_retries(allocator_factory):
    """The slow path's drain_all_pages: a block no zone can give at the min watermark
    drains every pcp list (pages there are not free pages) and is tried once more."""
    cfg = GuestConfig(nr_pages=8192, profile="6.1")
    a = allocator_factory(cfg)
    wmin = a.watermarks(0)[0]
    held = a.alloc(0, MIGRATE_MOVABLE, cfg.nr_pages)
    assert a.nr_free_pages(0) - 1 < wmin  # stopped at the min watermark
    a.free(held[:200], 0)  # below high: they stay on the pcp
    assert a.pcp_pages() >= 200
    before = a.pcp_pages()
    more = a.alloc(3, MIGRATE_MOVABLE, 1)  # order 3: its own list is empty
    assert len(more) == 1 and a.pcp_pages() < before
    check_invariants(a)


def test_per_vcpu_lists(allocator_factory):
    """Each vCPU has its own lists; high is the low watermark split over the vCPUs."""
    one = allocator_factory(GuestConfig(nr_pages=2 * GIB_PAGES, profile="6.1"))
    two = allocator_factory(GuestConfig(nr_pages=2 * GIB_PAGES, profile="6.1", vcpus=2))
    assert two.pcp_state(0, 0)["high"] == one.pcp_state(0)["high"] // 2
    p0 = two.alloc(0, MIGRATE_MOVABLE, 5, cpu=0)
    p1 = two.alloc(0, MIGRATE_MOVABLE, 5, cpu=1)
    assert set(p0).isdisjoint(p1)
    assert two.pcp_state(0, 0)["count"] == 58 == two.pcp_state(0, 1)["count"]
    two.free(p0, 0, cpu=1)
    assert two.pcp_state(0, 1)["count"] == 63 and two.pcp_list(0, 0, 1, cpu=1)[:5] == list(p0[::-1])
    with pytest.raises(ValueError, match="cpu"):
        two.alloc(0, MIGRATE_MOVABLE, 1, cpu=2)


# ---------------------------------------------------------------- §4.6 reverse drain


def test_report_drain_walks_the_batch_in_reverse(allocator_factory):
    """The scatterlist is filled from its end: 5.10+ putback to the tail in reverse order."""
    cfg = GuestConfig(
        nr_pages=1 << 14, profile="6.1", reporting=ReportingConfig(capacity=4), zones="single"
    )
    a = allocator_factory(cfg)
    pfns, orders = np.zeros(4, np.int64), np.zeros(4, np.int8)
    _, n = a.report_fill(0, 10, MIGRATE_MOVABLE, pfns, orders, 0, 0)
    assert n == 4
    a.report_drain(pfns, orders, n, True)
    tail = [p for p, _ in a.free_list(0, 10, MIGRATE_MOVABLE)][-4:]
    assert tail == list(pfns[:4][::-1])


def test_57_nofragment_applies_to_every_order_61_has_the_guard(allocator_factory):
    """Two zones: a Normal-zone order-10 MOVABLE request under NOFRAGMENT. With only an
    two UNMOVABLE order-9 blocks free in Normal, 5.7 (min_order = pageblock_order for
    every order) claims them as fallbacks (relabelled MOVABLE) before giving up on Normal;
    6.1's guard (order >= pageblock: min_order = order) leaves them alone."""
    for profile, moved in (("5.7", True), ("6.1", False)):
        cfg = GuestConfig(
            nr_pages=16384,
            lowmem_pages=8192,
            profile=profile,
            pcp=PcpConfig(enabled=False),
            dma_zone=False,
            min_free_kbytes=4,  # min watermark 0: the last Normal block can be taken
        )
        a = allocator_factory(cfg)
        halves = [int(p) for p in a.alloc(9, MIGRATE_MOVABLE, 16)]  # all of Normal
        assert sorted(halves) == list(range(8192, 16384, 512))
        apart = [8192, 8192 + 1024]  # two order-9 blocks that are not buddies
        for pfn in apart:
            set_pageblock_mt(a, pfn, MIGRATE_UNMOVABLE)
        a.free(apart, 9)  # Normal: 1,024 free pages, no MOVABLE block of order 10
        got = a.alloc(10, MIGRATE_MOVABLE, 1)
        assert int(got[0]) < 8192  # served from DMA32 either way
        moved_to_movable = a.pageblock_mt(apart[0]) == MIGRATE_MOVABLE
        assert moved_to_movable is moved, profile


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="vcpus"):
        GuestConfig(nr_pages=4096, vcpus=0)
    with pytest.raises(ValueError, match="lowmem_pages"):
        GuestConfig(nr_pages=4096, lowmem_pages=100)
    with pytest.raises(ValueError, match="percpu_pagelist_high_fraction"):
        GuestConfig(nr_pages=4096, percpu_pagelist_high_fraction=4)
    with pytest.raises(ValueError, match="machine"):
        GuestConfig(nr_pages=4096, machine="virt")
    assert replace(GuestConfig(nr_pages=4096), vcpus=4).vcpus == 4


def test_modern_guest_returns_parked_pages_over_simulated_seconds(allocator_factory):
    """The decay is an event in the guest's timeline at whole seconds, while there is
    something to decay; a 6.1 guest has no such event and keeps its pcp pages."""
    from services.guest.core.guest import Guest
    from tests.guest_helpers import RecordingReporter

    sec = 1_000_000_000
    for profile in ("6.1", "modern"):
        cfg = GuestConfig(nr_pages=2 * GIB_PAGES, profile=profile)
        g = Guest(0, cfg, 0, RecordingReporter(), fast=allocator_factory.fast)
        g.advance_to(sec // 2)
        held = g.alloc(0, MIGRATE_MOVABLE, GIB_PAGES)
        g.free(held, 0)
        parked = g.allocator.pcp_pages()
        if profile == "6.1":
            g.advance_to(60 * sec)
            assert g.allocator.pcp_pages() == parked
            continue
        assert g.next_event_ns() == sec  # the next whole second
        g.advance_to(sec)
        assert parked - g.allocator.pcp_pages() == 63 << 5  # one tick: batch << 5 pages
        g.advance_to(60 * sec)
        state = g.allocator.pcp_state(0)
        assert state["high"] == state["high_min"] and g.allocator.pcp_pages() <= state["high"]
        assert not g.allocator.pcp_decay_pending() and g.pcp_decay.ticks > 10
        assert g.next_event_ns() is None or g.next_event_ns() > 60 * sec


@pytest.mark.parametrize("profile", ["6.1", "modern"])
def test_reclaim_active_keeps_at_most_four_batches_on_pcp(allocator_factory, profile):
    """5.14+ nr_pcp_high: while kswapd balances the node (ZONE_RECLAIM_ACTIVE) a free
    drains once count reaches min(4 x batch, high); modern also shrinks high. 5.7 has no
    such clamp."""
    a = allocator_factory(GuestConfig(nr_pages=1 << 16, zones="single", profile=profile))
    pages = a.alloc(0, MIGRATE_MOVABLE, 20_000)
    batch = a.pcp_state(0)["batch"]
    a.drain_pcp()  # the refills' leftovers
    a.set_reclaim_active(True)
    high_before = a.pcp_state(0)["high"]
    for pfn in pages[:3000]:
        a.free([int(pfn)], 0)
        assert a.pcp_state(0)["count"] < 4 * batch
    if profile == "modern":
        assert a.pcp_state(0)["high"] < high_before
    a.set_reclaim_active(False)
    a.free(pages[3000:6000], 0)
    assert a.pcp_state(0)["count"] > 4 * batch  # unclamped again


def test_57_has_no_reclaim_clamp(allocator_factory):
    a = allocator_factory(GuestConfig(nr_pages=1 << 16, zones="single", profile="5.7"))
    a.set_reclaim_active(True)
    assert not a.reclaim_active()
