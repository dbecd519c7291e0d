"""Host scenarios: reporting vs. swapping, discard modes, THP splits, hugetlbfs, OOM, LRU."""

from __future__ import annotations

import numpy as np
import pytest

from services.host.core import costs
from services.host.core.config import (
    BACKING_HUGETLB_1G,
    BACKING_HUGETLB_2M,
    OOM_REFUSE,
    HostConfig,
    SwapConfig,
    ZswapConfig,
)
from services.host.core.host import Host

PAGE = 4096
MIB = 1 << 20
GRAN = 512


def make_host(memory_mib=16, swap_mib=64, **kw) -> Host:
    cfg = HostConfig(
        memory_bytes=memory_mib * MIB,
        swap=SwapConfig(capacity_bytes=swap_mib * MIB),
        debug_checks=True,
        **kw,
    )
    return Host(0, cfg)


def touch(host, gid, start, n):
    return host.apply_touch(gid, np.array([start]), np.array([n]))


@pytest.mark.parametrize("thp", [True, False])
def test_reporting_lets_the_other_guest_grow_without_swap(thp):
    """2:1 overcommit: A fills the host, frees 7/8 of its memory, B then grows."""
    results = {}
    for reporting in (True, False):
        host = make_host(memory_mib=16, thp=thp)
        host.add_guest(1, 4096)
        host.add_guest(2, 4096)
        touch(host, 1, 0, 4096)
        if reporting:
            # A's guest frees pfns 512..4095 and reports them as 2 MiB blocks (R = 9).
            pfns = np.arange(512, 4096, GRAN)
            host.apply_report(1, pfns, np.full(pfns.size, 9))
        touch(host, 2, 0, 3584)
        swapped = host.reclaim()
        results[reporting] = (host.host_counters(), swapped)
        host.check_invariants()
    with_rep, swapped_rep = results[True]
    without, swapped_none = results[False]
    assert with_rep["swapout_bytes"] == 0 and swapped_rep == {}
    assert with_rep["backed_bytes"] == 4096 * PAGE
    assert without["swapout_bytes"] == 3584 * PAGE
    assert sum(int(n.sum()) for _, n in swapped_none.values()) == 3584
    assert set(swapped_none) == {1}


def test_free_mode_avoids_zero_fill_when_touched_before_pressure_dontneed_does_not():
    lost = {}
    for mode in ("free", "dontneed"):
        host = make_host(memory_mib=16)
        host.add_guest(1, 2048, mode)
        touch(host, 1, 0, 2048)
        rep = host.apply_report(1, np.array([0, 1024]), np.array([10, 10]))
        assert (rep.lazy_pages, rep.released_pages) == ((2048, 0) if mode == "free" else (0, 2048))
        res = touch(host, 1, 0, 2048)
        lost[mode] = res
    assert lost["free"].lost_ns["zero"] == 0 and lost["free"].lost_ns["fault"] == 0
    assert lost["free"].lazy_reuse_pages == 2048 and lost["free"].refault_pages == 0
    assert lost["free"].prior_pages["lazy"] == 2048
    assert lost["dontneed"].lost_ns["zero"] == costs.zero_ns(costs.CostModel(), 0, 4)
    assert lost["dontneed"].refault_pages == 2048
    assert lost["dontneed"].zeroed_bytes == 2048 * PAGE


def test_free_mode_pages_are_reclaimed_first_under_pressure_then_refault():
    host = make_host(memory_mib=8, thp=False)  # 2048 frames
    host.add_guest(1, 2048, "free")
    host.add_guest(2, 2048)
    touch(host, 1, 0, 2048)
    host.apply_report(1, np.array([0]), np.array([10]))  # 1024 pages lazily freed
    assert host.guest_counters(1)["lazy_bytes"] == 1024 * PAGE
    touch(host, 2, 0, 1024)  # needs 1024 frames: the lazy ones, no swap
    c1 = host.guest_counters(1)
    assert c1["lazy_bytes"] == 0 and c1["lazy_reclaimed_bytes"] == 1024 * PAGE
    assert host.host_counters()["swapout_bytes"] == 0
    # Reclaimed lazily freed pages fault and zero-fill again (refaults); that needs swap now.
    res = touch(host, 1, 0, 16)
    assert res.prior_pages["unbacked"] == 16 and res.refault_pages == 16
    assert res.lost_ns["zero"] == costs.zero_ns(costs.CostModel(), 16)
    assert res.lost_ns["reclaim"] > 0


def test_thp_partial_discard_splits_granule_whole_discard_does_not():
    host = make_host(memory_mib=16, thp=True)
    host.add_guest(1, 2048)
    res = touch(host, 1, 0, 1)  # first touch backs the whole 2 MiB granule
    assert res.zeroed_bytes == 2 * MIB and host.guest_counters(1)["backed_bytes"] == 2 * MIB
    rep = host.apply_report(1, np.array([8]), np.array([3]))  # 8 pages inside granule 0
    assert rep.thp_splits == 1 and rep.released_pages == 8
    assert host.guest_counters(1)["backed_bytes"] == (512 - 8) * PAGE
    assert host.guest_counters(1)["thp_splits"] == 1
    res = touch(host, 1, 8, 1)  # a split granule refaults in 4 KiB
    assert res.zeroed_bytes == PAGE and host.guest_counters(1)["faults_4k"] == 1
    touch(host, 1, 512, 1536)
    rep = host.apply_report(1, np.array([1024]), np.array([10]))  # two whole granules
    assert rep.thp_splits == 0 and rep.released_pages == 1024
    assert rep.latency_ns == costs.report_ns(costs.CostModel(), 1) + costs.discard_ns(
        costs.CostModel(), 0, 2
    )


@pytest.mark.parametrize(
    ("backing", "pfn", "order", "released"),
    [
        (BACKING_HUGETLB_2M, 0, 9, 512),
        (BACKING_HUGETLB_2M, 0, 10, 1024),
        (BACKING_HUGETLB_2M, 8, 3, 0),  # smaller than the huge page: skipped
    ],
)
def test_hugetlb_2m_ignores_small_discards(backing, pfn, order, released):
    host = make_host(memory_mib=16, backing=backing)
    host.add_guest(1, 2048)
    touch(host, 1, 0, 2048)
    rep = host.apply_report(1, np.array([pfn]), np.array([order]))
    assert rep.released_pages == released
    assert rep.ranges_ignored == (0 if released else 1)
    assert host.guest_counters(1)["backed_bytes"] == (2048 - released) * PAGE


def test_hugetlb_1g_never_returns_memory_to_2m_reports():
    host = make_host(memory_mib=2048, backing=BACKING_HUGETLB_1G)
    host.add_guest(1, 262144)
    res = touch(host, 1, 5, 1)
    assert res.zeroed_bytes == 1 << 30
    assert res.lost_ns["zero"] == costs.zero_ns(costs.CostModel(), 0, 0, 1)
    rep = host.apply_report(1, np.arange(0, 262144, 1024), np.full(256, 10))
    assert rep.ranges_ignored == 256 and rep.released_pages == 0
    assert host.guest_counters(1)["backed_bytes"] == 1 << 30


def test_disabled_guest_never_returns_memory():
    host = make_host(memory_mib=16)
    host.add_guest(1, 2048, "disabled")
    touch(host, 1, 0, 2048)
    before = host.guest_counters(1)
    rep = host.apply_report(1, np.array([0, 1024]), np.array([10, 10]))
    assert rep.released_pages == 0 and rep.lazy_pages == 0 and rep.ranges_applied == 0
    assert rep.latency_ns == costs.report_ns(costs.CostModel(), 1)
    after = host.guest_counters(1)
    assert after["backed_bytes"] == before["backed_bytes"] == 2048 * PAGE
    assert after["reported_pages"] == 2048
    res = touch(host, 1, 0, 2048)
    assert res.total_lost_ns == 0 and res.prior_pages["backed"] == 2048


def test_oom_stop_largest_guest():
    host = make_host(memory_mib=8, swap_mib=0)
    host.add_guest(1, 2048)
    host.add_guest(2, 2048)
    touch(host, 1, 0, 2048)
    res = touch(host, 2, 0, 1)
    assert res.stopped_guests == (1,) and res.oom_events == 1
    assert res.prior_pages["unbacked"] == 1
    assert host.is_stopped(1) and host.guest_counters(1)["backed_bytes"] == 0
    assert host.host_counters()["oom_events"] == 1
    assert host.host_counters()["guests_stopped"] == 1
    with pytest.raises(ValueError, match="guest_id 1"):
        touch(host, 1, 0, 1)
    with pytest.raises(ValueError, match="guest_id 1"):
        host.apply_report(1, np.array([0]), np.array([9]))


def test_oom_stop_largest_can_stop_the_caller():
    host = make_host(memory_mib=8, swap_mib=0, thp=False)
    host.add_guest(1, 2048)
    host.add_guest(2, 2048)
    touch(host, 1, 0, 512)
    touch(host, 2, 0, 1536)
    res = touch(host, 2, 1536, 100)
    assert res.stopped_guests == (2,)
    assert host.is_stopped(2) and not host.is_stopped(1)
    assert host.guest_counters(1)["backed_bytes"] == 512 * PAGE


def test_oom_refuse_policy():
    host = make_host(memory_mib=8, swap_mib=0, oom_policy=OOM_REFUSE)
    host.add_guest(1, 2048)
    host.add_guest(2, 2048)
    touch(host, 1, 0, 2048)
    res = touch(host, 2, 0, 10)
    assert res.refused_pages == 10 and res.oom_events == 1 and res.stopped_guests == ()
    assert res.prior_pages == {"unbacked": 0, "backed": 0, "lazy": 0, "swapped": 0}
    assert not host.is_stopped(1) and host.guest_counters(2)["backed_bytes"] == 0
    assert host.guest_counters(2)["refused_pages"] == 10


def test_swap_full_then_oom():
    host = make_host(memory_mib=4, swap_mib=2, thp=False, oom_policy=OOM_REFUSE)
    host.add_guest(1, 2048)
    res = touch(host, 1, 0, 2048)  # 1024 frames + 512 swap slots: 512 refused
    assert res.refused_pages == 512
    hc = host.host_counters()
    assert hc["swap_used_bytes"] == 2 * MIB and hc["pool_used_bytes"] == 4 * MIB


def test_lru_second_chance_keeps_recently_touched_pages():
    host = make_host(memory_mib=4, thp=False)  # 1024 frames
    host.add_guest(1, 1024)
    host.add_guest(2, 1024)
    touch(host, 1, 0, 1024)
    touch(host, 2, 0, 1)  # one sweep clears every reference bit, then page 0 goes
    assert {k: (s.tolist(), n.tolist()) for k, (s, n) in host.reclaim().items()} == {1: ([0], [1])}
    touch(host, 1, 1, 100)  # referenced again
    touch(host, 2, 1, 100)
    swapped = host.reclaim()
    assert {k: (s.tolist(), n.tolist()) for k, (s, n) in swapped.items()} == {1: ([101], [100])}
    res = touch(host, 1, 0, 1)  # swap-in from the device
    assert res.prior_pages["swapped"] == 1
    assert res.lost_ns["swapin"] == costs.swapin_ns(costs.CostModel(), 1)


def test_reclaim_omits_pages_swapped_back_in():
    host = make_host(memory_mib=4, thp=False)
    host.add_guest(1, 1024)
    host.add_guest(2, 1024)
    touch(host, 1, 0, 1024)
    touch(host, 2, 0, 10)
    touch(host, 1, 0, 5)  # pages 0..4 come back, pushing out 10..14
    got = {k: (s.tolist(), n.tolist()) for k, (s, n) in host.reclaim().items()}
    assert got == {1: ([5], [10])}
    assert host.reclaim() == {}


def test_zswap_tier_counts_against_host_and_prices_decompression():
    cm = costs.CostModel()
    host = make_host(
        memory_mib=4,
        swap_mib=0,
        thp=False,
        zswap=ZswapConfig(enabled=True, compression_ratio=4.0, max_pool_bytes=1 * MIB),
    )
    host.add_guest(1, 2048)
    res = touch(host, 1, 0, 1200)
    c = host.guest_counters(1)
    hc = host.host_counters()
    assert c["swapout_zswap_pages"] == c["zswap_pages"] > 0 and c["swapout_disk_pages"] == 0
    assert hc["zswap_pool_bytes"] == c["zswap_pages"] * 1024
    assert hc["pool_used_bytes"] == c["resident_bytes"] + hc["zswap_pool_bytes"] <= 4 * MIB
    assert res.lost_ns["reclaim"] == costs.compress_ns(cm, c["zswap_pages"])
    res = touch(host, 1, 0, 1)
    assert res.prior_pages["swapped"] == 1
    assert res.lost_ns["decompress"] == cm.decompress_ns and res.lost_ns["swapin"] == 0


def test_counters_add_up():
    host = make_host(memory_mib=16)
    host.add_guest(1, 2048, "free")
    host.add_guest(2, 2048)
    touch(host, 1, 0, 2048)
    touch(host, 2, 0, 512)
    host.apply_report(1, np.array([0]), np.array([9]))
    host.apply_report(2, np.array([0]), np.array([9]))
    hc = host.host_counters()
    c1, c2 = host.guest_counters(1), host.guest_counters(2)
    for key in ("backed_bytes", "lazy_bytes", "zeroed_bytes", "reports", "reported_pages"):
        assert hc[key] == c1[key] + c2[key]
    assert c1["lazy_bytes"] == 512 * PAGE and c2["discarded_pages"] == 512
    assert hc["pool_used_bytes"] == (2048 + 0) * PAGE
    assert c1["lost_zero_ns"] == costs.zero_ns(costs.CostModel(), 0, 4)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda h: h._hs.__setitem__(0, h._hs[0] + PAGE), "pool used"),
        (lambda h: h._gstat.__setitem__((0, 1), h._gstat[0, 1] + 1), "nr_pages|running totals"),
        (lambda h: h._state.__setitem__(600, 3), "gused|running totals"),
        (lambda h: h._hs.__setitem__(1, 5), "swap used"),
        (lambda h: h._hs.__setitem__(3, 7), "lazy pages"),
    ],
)
def test_invariant_checks_detect_corruption(corrupt, match):
    host = make_host(memory_mib=16, thp=True)
    host.add_guest(1, 2048)
    touch(host, 1, 0, 600)
    host.apply_report(1, np.array([520]), np.array([3]))  # split granule 1
    host.check_invariants()
    corrupt(host)
    with pytest.raises(AssertionError, match=match):
        host.check_invariants()
    with pytest.raises(AssertionError, match=match):  # debug mode checks after every operation
        touch(host, 1, 0, 1)
