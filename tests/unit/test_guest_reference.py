"""Scenario tests of the guest allocator + reporting worker (issue scenarios).

Parametrised over `allocator_factory`: the reference, and the numba fast path
once services/guest/core/buddy.py imports.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from services.guest.core.config import GuestConfig, PcpConfig
from services.guest.core.constants import MIGRATE_MOVABLE, MIGRATE_UNMOVABLE
from services.guest.core.guest import Guest
from services.guest.core.reporting import PageReportingWorker
from tests.guest_helpers import (
    SEC_NS,
    RecordingReporter,
    check_invariants,
    small_config,
)

NO_PCP = PcpConfig(enabled=False)


def make_guest(kind, config, reporter, seed=0):
    return Guest(0, config, seed, reporter, fast=kind.fast)


def calls_by_pass(reporter):
    """{pass instant: number of calls} (zero latency: a pass's calls share its instant)."""
    out: dict[int, int] = {}
    for now_ns, *_ in reporter.calls:
        out[now_ns] = out.get(now_ns, 0) + 1
    return out


def test_idle_4gib_guest_fully_reported_in_about_30s(allocator_factory):
    """1<<20 pages idle: all order >= 9 memory reported, <= budget+1 calls per pass, 2 s apart."""
    rec = RecordingReporter()
    g = Guest(0, GuestConfig(nr_pages=1 << 20, zones="single"), 0, rec, fast=allocator_factory.fast)
    for t in range(0, 31):
        g.advance_to(t * SEC_NS)
    a = g.allocator
    assert a.reported_pages() == 1 << 20
    assert a.nr_free(0, 10) == 1024
    passes = calls_by_pass(rec)
    instants = sorted(passes)
    assert instants[0] == 2 * SEC_NS
    assert all(b - a_ == 2 * SEC_NS for a_, b in pairwise(instants))
    budget = -(-1024 // (32 * 16))  # one non-empty list: order 10 MOVABLE
    assert max(passes.values()) <= budget + 1
    assert 8 <= len(instants) <= 16 and instants[-1] <= 30 * SEC_NS
    assert sorted(p for _, ps, _, _ in rec.calls for p in ps) == list(range(0, 1 << 20, 1024))
    assert g.next_event_ns() is None and g.worker.state == g.worker.IDLE


def test_merge_clears_reported_and_merged_block_is_reported_again(allocator_factory):
    rec = RecordingReporter()
    g = make_guest(allocator_factory, small_config(pcp=NO_PCP), rec)
    g.advance_to(2 * SEC_NS)
    a = g.allocator
    assert a.reported_pages() == 8192
    x = g.alloc(9, MIGRATE_MOVABLE, 2)
    base = int(x.min())
    assert sorted(x.tolist()) == [base, base + 512]
    g.free([base], 9)
    assert g.next_event_ns() == 4 * SEC_NS
    g.advance_to(4 * SEC_NS)
    assert a.free_list(0, 9, MIGRATE_MOVABLE) == [(base, True)]
    g.free([base + 512], 9)  # merges with the reported buddy -> order 10, unreported
    assert a.free_list(0, 9, MIGRATE_MOVABLE) == []
    assert (base, False) in a.free_list(0, 10, MIGRATE_MOVABLE)
    assert a.reported_pages() == 8192 - 1024
    g.advance_to(6 * SEC_NS)
    assert (base, True) in a.free_list(0, 10, MIGRATE_MOVABLE)
    assert rec.calls[-1][1:3] == ([base], [10])
    check_invariants(a)


def test_split_leaves_unreported_remainders(allocator_factory):
    rec = RecordingReporter()
    g = make_guest(allocator_factory, small_config(pcp=NO_PCP), rec)
    g.advance_to(2 * SEC_NS)
    a = g.allocator
    head = a.free_list(0, 10, MIGRATE_MOVABLE)[0][0]
    (pfn,) = g.alloc(0, MIGRATE_MOVABLE, 1)
    assert pfn == head
    for o in range(10):
        assert a.free_list(0, o, MIGRATE_MOVABLE) == [(head + (1 << o), False)]
    assert all(r for _, r in a.free_list(0, 10, MIGRATE_MOVABLE))
    assert a.reported_pages() == 7 * 1024
    assert g.next_event_ns() is None  # splitting never notifies
    check_invariants(a)


def test_report_error_returns_blocks_unreported_and_stops_pass(allocator_factory):
    rec = RecordingReporter(errors=[5])
    g = make_guest(allocator_factory, small_config(capacity=1, pcp=NO_PCP), rec)
    before = g.allocator.free_list(0, 10, MIGRATE_MOVABLE)
    g.advance_to(2 * SEC_NS)
    a = g.allocator
    assert len(rec.calls) == 1 and rec.calls[0][3] == 5
    assert a.reported_pages() == 0 and a.free_pages_total() == 8192
    assert sorted(a.free_list(0, 10, MIGRATE_MOVABLE)) == sorted(before)
    assert g.worker.report_errors == 1 and g.worker.reported_blocks == 0
    assert g.worker.state == g.worker.IDLE and g.next_event_ns() is None
    # the next >= R free restarts reporting
    x = g.alloc(10, MIGRATE_MOVABLE, 1)
    g.free(x, 10)
    assert g.next_event_ns() == 4 * SEC_NS
    g.advance_to(4 * SEC_NS)
    assert rec.calls[-1][3] == 0 and len(rec.calls) >= 2


@pytest.mark.parametrize("order", [None, 3, 5])
@pytest.mark.parametrize("profile", ["5.7", "modern"])
def test_nothing_below_order_r_is_reported(allocator_factory, order, profile):
    rec = RecordingReporter()
    cfg = small_config(order=order, profile=profile)
    r = cfg.report_order
    g = make_guest(allocator_factory, cfg, rec)
    rng = np.random.default_rng(7)
    held: list[tuple[int, int]] = []
    for step in range(40):
        o = int(rng.integers(0, 4))
        held += [(int(p), o) for p in g.alloc(o, int(rng.integers(0, 3)), int(rng.integers(1, 30)))]
        rng.shuffle(held)
        keep = len(held) // 2
        for p, o2 in held[keep:]:
            g.free([p], o2)
        held = held[:keep]
        g.advance_to((step + 1) * SEC_NS)
    assert rec.calls, "the scenario must report something"
    assert all(o >= r for _, _, orders, _ in rec.calls for o in orders)
    check_invariants(g.allocator)


def test_pcp_pages_are_not_reported(allocator_factory):
    """R = 0 makes every buddy block reportable; pcp-held pages must still be skipped."""
    rec = RecordingReporter()
    cfg = small_config(order=0, capacity=4, pcp=PcpConfig(batch=16, high=4096))
    g = make_guest(allocator_factory, cfg, rec)
    a = g.allocator
    pages = g.alloc(0, MIGRATE_MOVABLE, 64)
    g.free(pages, 0)
    pcp = set(a.pcp_list(0, 0, MIGRATE_MOVABLE))
    assert len(pcp) >= 64 and a.pcp_pages() == len(pcp)

    def no_pcp_page(now_ns, pfns, orders):
        for p, o in zip(pfns, orders, strict=True):
            assert not pcp & set(range(int(p), int(p) + (1 << int(o))))

    rec.on_report = no_pcp_page
    for t in range(1, 40):
        g.advance_to(t * SEC_NS)
    assert rec.calls and a.reported_pages() == a.free_pages_total()
    rec.on_report = None
    g.drain_pcp()  # the pcp pages merge back: notify, reported by a later pass
    assert a.pcp_pages() == 0 and a.reported_pages() < a.free_pages_total()
    for t in range(40, 80):
        g.advance_to(t * SEC_NS)
    assert a.reported_pages() == a.free_pages_total() == 8192


def test_large_free_triggers_first_report_2s_later_then_every_2s(allocator_factory):
    rec = RecordingReporter()
    g = make_guest(allocator_factory, GuestConfig(nr_pages=1 << 18), rec)  # 1 GiB
    blocks = g.alloc(9, MIGRATE_MOVABLE, 1 << 9)  # as much as the min watermark allows
    g.advance_to(2 * SEC_NS)
    assert rec.calls == [] and g.worker.zones_skipped == 1  # gate: too little free memory
    assert g.worker.next_event_ns() is None  # (the modern pcp decay may still tick)
    g.advance_to(10 * SEC_NS)
    g.free(blocks, 9)
    assert g.worker.next_event_ns() == 12 * SEC_NS
    for t in range(10, 60):
        g.advance_to(t * SEC_NS)
    instants = sorted(calls_by_pass(rec))
    assert instants[0] == 12 * SEC_NS and len(instants) >= 3
    assert all(b - a_ == 2 * SEC_NS for a_, b in pairwise(instants))
    a = g.allocator
    assert a.reported_pages() == a.free_pages_total() == (1 << 18) - a.pcp_pages()
    assert a.pcp_pages() < 1 << 14  # the THP-order pcp list holds at most `high` pages


@pytest.mark.parametrize(
    "profile,after_pass",
    [
        # 5.7: boot lists descend; putback at the head (§2.4)
        ("5.7", [(1024, False), (0, False), (3072, True), (2048, True)]),
        # 5.10+: boot lists ascend; putback at the tail (TO_TAIL)
        ("6.1", [(2048, False), (3072, False), (0, True), (1024, True)]),
        ("modern", [(2048, False), (3072, False), (0, True), (1024, True)]),
    ],
)
def test_putback_head_in_5_7_tail_from_5_10(allocator_factory, profile, after_pass):
    rec = RecordingReporter()
    cfg = small_config(nr_pages=4096, profile=profile, capacity=1, pcp=NO_PCP)
    a = allocator_factory(cfg)
    w = PageReportingWorker(a, cfg.reporting, rec)
    w.register(0)
    w.run_until(2 * SEC_NS)
    # budget = ceil(4 / 16) = 1 -> two calls of one block, then the budget runs out
    assert len(rec.calls) == 2 and w.budget_exhaustions == 1
    assert a.free_list(0, 10, MIGRATE_MOVABLE) == after_pass
    assert w.next_event_ns() == 4 * SEC_NS
    w.run_until(4 * SEC_NS)
    assert a.reported_pages() == 4096


def test_fallback_claims_whole_pageblock_for_unmovable(allocator_factory):
    cfg = small_config(pcp=NO_PCP)
    a = allocator_factory(cfg)
    (pfn,) = a.alloc(0, MIGRATE_UNMOVABLE, 1)
    assert a.pageblock_mt(pfn) == MIGRATE_UNMOVABLE
    check_invariants(a)
    a.free([pfn], 0)
    check_invariants(a)
    assert a.free_pages_total() == 8192


def test_shuffle_permutes_boot_lists_deterministically(allocator_factory):
    cfg = GuestConfig(nr_pages=1 << 14, shuffle=True)
    lists = []
    for seed in (1, 1, 2):
        g = Guest(0, cfg, seed, RecordingReporter(), fast=allocator_factory.fast)
        lists.append([p for p, _ in g.allocator.free_list(0, 10, MIGRATE_MOVABLE)])
    assert lists[0] == lists[1]
    assert lists[0] != lists[2]
    assert sorted(lists[0]) == list(range(0, 1 << 14, 1024))
    assert lists[0] != sorted(lists[0])


def test_notify_only_when_free_ends_at_order_r(allocator_factory):
    rec = RecordingReporter()
    g = make_guest(allocator_factory, small_config(pcp=NO_PCP), rec)
    g.advance_to(3 * SEC_NS)
    a = g.allocator
    pages = g.alloc(0, MIGRATE_MOVABLE, 512)  # one whole pageblock, page by page
    n0 = a.notify_count
    g.free(pages[:-1], 0)
    assert a.notify_count == n0 and g.next_event_ns() is None
    g.free(pages[-1:], 0)  # the last page completes the 2 MiB block (and more)
    assert a.notify_count == n0 + 1 and g.next_event_ns() == 5 * SEC_NS
