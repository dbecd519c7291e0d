"""Host refault accounting: only memory a report discarded while the host held it refaults.

A host sees a refault only of memory it discarded: a page (or granule) that was
backed, lazily freed or swapped when a report discarded it, and is faulted again.
Pages that were unbacked when reported (never touched) fault as first touches.
Each scenario is hog -> free (report) -> wait -> hog on the real host core.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.host.core.config import BACKING_HUGETLB_2M, HostConfig, SwapConfig
from services.host.core.host import Host, ReportResult
from services.host.core.pagestate import GR_REPORTED, PG_REPORTED, RES_SWAPPED, RES_UNBACKED
from services.sim.result_rows import host_columns

PAGE = 4096
MIB = 1 << 20
GRAN = 512
GUEST_PAGES = 8 * GRAN  # 16 MiB: granules 0..7


def make_host(memory_mib: int, thp: bool, swap_mib: int = 64, **kw) -> Host:
    cfg = HostConfig(
        memory_bytes=memory_mib * MIB,
        thp=thp,
        swap=SwapConfig(capacity_bytes=swap_mib * MIB),
        debug_checks=True,
        **kw,
    )
    return Host(0, cfg)


def touch(host: Host, gid: int, starts: list[int], npages: list[int]):
    return host.apply_touch(gid, np.array(starts, np.int64), np.array(npages, np.int64))


def report_whole_guest(host: Host, gid: int) -> list[ReportResult]:
    """The guest frees everything and reports it as order-10 blocks, one buffer each."""
    return [
        host.apply_report(gid, np.array([pfn]), np.array([10]))
        for pfn in range(0, GUEST_PAGES, 1024)
    ]


def held_pages(host: Host, gid: int) -> int:
    return int(np.count_nonzero(host.residency(gid) != RES_UNBACKED))


def hog(host: Host, gid: int) -> None:
    """Granules 0-1 whole, half of granule 2, 100 pages of granule 3; 4-7 never touched."""
    touch(host, gid, [0, 2 * GRAN, 3 * GRAN], [2 * GRAN, 256, 100])


@pytest.mark.parametrize("mode", ["dontneed", "free"])
@pytest.mark.parametrize(
    ("thp", "backed", "huge_refaults"),
    [
        (True, 4 * GRAN, 4),  # every touched granule is one THP: granules 0..3
        (False, 2 * GRAN + 256 + 100, 0),  # 4 KiB backing: exactly the touched pages
    ],
)
def test_hog_free_wait_hog_refaults_exactly_what_was_discarded_while_backed(
    mode, thp, backed, huge_refaults
):
    # 16 MiB host: after guest 1 frees, guest 2 fills the host, which (mode free)
    # takes every lazily freed frame of guest 1 before anything is swapped.
    host = make_host(memory_mib=16, thp=thp)
    host.add_guest(1, GUEST_PAGES, mode)
    host.add_guest(2, GUEST_PAGES)
    hog(host, 1)
    assert held_pages(host, 1) == backed
    reps = report_whole_guest(host, 1)  # covers the backed pages and 2048+ never-touched ones
    discarded = sum(r.released_pages + r.lazy_pages + r.swap_freed_pages for r in reps)
    assert discarded == backed
    touch(host, 2, [0], [GUEST_PAGES])  # wait: another guest takes the memory
    c1 = host.guest_counters(1)
    assert c1["resident_bytes"] == 0
    assert c1["lazy_reclaimed_bytes"] == (backed * PAGE if mode == "free" else 0)
    assert host.guest_counters(2)["swapout_bytes"] == 0

    res = touch(host, 1, [0], [GUEST_PAGES])  # hog again: every page of guest 1
    assert res.prior_pages["unbacked"] == GUEST_PAGES
    assert res.refault_pages == backed  # not the never-touched pages
    assert res.refault_huge_faults == huge_refaults
    assert res.lazy_reuse_pages == 0
    c1 = host.guest_counters(1)
    assert c1["faults_huge"] == (4 + 8 if thp else 0)  # first hog 4, second hog all 8
    assert (c1["refault_pages"], c1["refault_huge_faults"]) == (backed, huge_refaults)
    hc = host.host_counters()
    assert (hc["refault_pages"], hc["refault_huge_faults"]) == (backed, huge_refaults)
    cols = host_columns(hc)
    assert cols["refaulted_reported_bytes_total"] == backed * PAGE
    assert cols["refault_huge_faults_total"] == huge_refaults
    host.check_invariants()


@pytest.mark.parametrize("thp", [True, False])
def test_free_mode_retouch_before_reclaim_is_lazy_reuse_not_refault(thp):
    host = make_host(memory_mib=64, thp=thp)
    host.add_guest(1, GUEST_PAGES, "free")
    hog(host, 1)
    backed = held_pages(host, 1)
    reps = report_whole_guest(host, 1)
    assert sum(r.lazy_pages for r in reps) == backed
    res = touch(host, 1, [0], [GUEST_PAGES])
    assert res.lazy_reuse_pages == backed
    assert res.refault_pages == 0 and res.refault_huge_faults == 0
    # Reused pages lost their mark: freeing them again and re-touching is still no refault.
    report_whole_guest(host, 1)
    res = touch(host, 1, [0], [GUEST_PAGES])
    assert res.lazy_reuse_pages == GUEST_PAGES and res.refault_pages == 0


@pytest.mark.parametrize("thp", [True, False])
def test_reporting_never_touched_memory_is_no_refault(thp):
    host = make_host(memory_mib=64, thp=thp)
    host.add_guest(1, GUEST_PAGES)
    report_whole_guest(host, 1)
    host.apply_report(1, np.array([8]), np.array([3]))  # partial range of an empty granule
    res = touch(host, 1, [0], [GUEST_PAGES])
    assert res.prior_pages["unbacked"] == GUEST_PAGES
    assert res.refault_pages == 0 and res.refault_huge_faults == 0


def test_a_second_report_keeps_the_mark_of_memory_discarded_by_the_first():
    host = make_host(memory_mib=64, thp=True)
    host.add_guest(1, GUEST_PAGES)
    touch(host, 1, [0], [GRAN])  # granule 0 only
    report_whole_guest(host, 1)
    report_whole_guest(host, 1)  # nothing held now: changes nothing
    host.apply_report(1, np.array([0]), np.array([3]))
    res = touch(host, 1, [0], [GUEST_PAGES])
    assert (res.refault_pages, res.refault_huge_faults) == (GRAN, 1)


def test_split_granule_refaults_in_4k_then_whole_granule_as_one_huge_refault():
    """THP on: a partial report splits a THP; its released pages refault as 4 KiB faults."""
    host = make_host(memory_mib=64, thp=True)
    host.add_guest(1, GUEST_PAGES)
    touch(host, 1, [0], [1])  # granule 0 is one THP
    rep = host.apply_report(1, np.array([8]), np.array([3]))  # pages 8..15: split
    assert rep.thp_splits == 1 and rep.released_pages == 8
    rep = host.apply_report(1, np.array([0]), np.array([6]))  # pages 0..63: 8..15 already gone
    assert rep.released_pages == 56
    res = touch(host, 1, [0], [64])
    assert res.prior_pages["unbacked"] == 64 and host.guest_counters(1)["faults_4k"] == 64
    assert (res.refault_pages, res.refault_huge_faults) == (64, 0)

    rep = host.apply_report(1, np.array([0]), np.array([9]))  # the whole split granule
    assert rep.released_pages == GRAN
    res = touch(host, 1, [0], [GRAN])  # empty again: one THP fault, all 512 pages refault
    assert res.prior_pages["unbacked"] == GRAN and host.guest_counters(1)["faults_huge"] == 2
    assert (res.refault_pages, res.refault_huge_faults) == (GRAN, 1)


def test_4k_backing_partial_granule_refaults_only_its_backed_pages():
    host = make_host(memory_mib=64, thp=False)
    host.add_guest(1, GUEST_PAGES)
    touch(host, 1, [0, 300], [10, 20])  # 30 pages of granule 0
    rep = host.apply_report(1, np.array([0]), np.array([9]))
    assert rep.released_pages == 30
    res = touch(host, 1, [0], [GRAN])
    assert res.prior_pages["unbacked"] == GRAN
    assert (res.refault_pages, res.refault_huge_faults) == (30, 0)


def test_swapped_page_discarded_by_a_report_refaults():
    """The host held a swapped page's contents: a report that frees its slot discards it."""
    host = make_host(memory_mib=4, thp=False)  # 1024 frames
    host.add_guest(1, 1024)
    host.add_guest(2, 1024)
    touch(host, 1, [0], [512])
    touch(host, 2, [0], [768])  # 256 pages must go to swap: the clock takes guest 1's first
    res1 = host.residency(1)
    swapped = int(np.count_nonzero(res1[:GRAN] == RES_SWAPPED))
    assert swapped == 256
    rep = host.apply_report(1, np.array([0]), np.array([10]))  # all of guest 1
    assert (rep.swap_freed_pages, rep.released_pages) == (swapped, GRAN - swapped)
    touch(host, 2, [768], [256])  # guest 2 takes the freed frames
    res = touch(host, 1, [0], [1024])  # 512 discarded (256 of them swapped) + 512 never touched
    assert res.prior_pages["unbacked"] == 1024 and res.prior_pages["swapped"] == 0
    assert res.refault_pages == GRAN and res.refault_huge_faults == 0
    assert res.lost_ns["swapin"] == 0


def test_hugetlb_refaults_only_punched_huge_pages():
    host = make_host(memory_mib=64, thp=False, swap_mib=0, backing=BACKING_HUGETLB_2M)
    host.add_guest(1, GUEST_PAGES)
    touch(host, 1, [GRAN + 5], [1])  # granule 1 only
    rep = host.apply_report(1, np.array([0]), np.array([10]))  # granules 0 and 1
    assert rep.released_pages == GRAN
    res = touch(host, 1, [0], [2 * GRAN])
    assert host.guest_counters(1)["faults_huge"] == 3
    assert (res.refault_pages, res.refault_huge_faults) == (GRAN, 1)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (
            lambda h: h._state.__setitem__(600, h._state[600] | PG_REPORTED),
            "reported page is backed",
        ),
        (lambda h: h._gran.__setitem__(0, h._gran[0] | GR_REPORTED), "reported granule"),
        (lambda h: h._gran.__setitem__(2, h._gran[2] ^ GR_REPORTED), "lazily freed huge granule"),
    ],
)
def test_invariants_check_the_reported_marks(corrupt, match):
    host = make_host(memory_mib=64, thp=True)
    host.add_guest(1, GUEST_PAGES, "free")
    touch(host, 1, [0], [3 * GRAN])
    host.apply_report(1, np.array([520]), np.array([3]))  # split granule 1
    host.apply_report(1, np.array([2 * GRAN]), np.array([9]))  # granule 2: a lazily freed THP
    host.check_invariants()
    corrupt(host)
    with pytest.raises(AssertionError, match=match):
        host.check_invariants()
