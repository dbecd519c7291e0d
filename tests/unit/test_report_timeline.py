"""Report calls in the guest's timeline (§4.9): a pass is a sequence of calls, each taking
its priced latency, with the batch isolated while the call is in flight.

Real allocators (reference and fast), the real worker and Guest; the recording reporter
prices every call at ``latency_ns`` and records it when it completes.
"""

from __future__ import annotations

import numpy as np

from services.guest.core.backing import HostCostPort, ReportCost
from services.guest.core.config import GuestConfig, PcpConfig, ReportingConfig
from services.guest.core.constants import MIGRATE_MOVABLE
from services.guest.core.guest import Guest
from services.guest.core.reporting import PageReportingWorker
from tests.guest_helpers import SEC_NS, RecordingReporter, check_invariants, small_config

NO_PCP = PcpConfig(enabled=False)
MS_NS = 1_000_000
NR_PAGES = 1 << 14  # 16 order-10 blocks: with capacity 4 the first pass makes 2 calls
LATENCY = 30 * MS_NS


def worker_for(kind, latency_ns=LATENCY, nr_pages=NR_PAGES):
    cfg = small_config(nr_pages=nr_pages, pcp=NO_PCP)
    a = kind(cfg)
    rec = RecordingReporter(latency_ns=latency_ns)
    w = PageReportingWorker(a, cfg.reporting, rec, rec)
    w.register(0)
    return a, w, rec


def page_mask(nr_pages, pfns, orders) -> np.ndarray:
    mask = np.zeros(nr_pages, dtype=bool)
    for p, o in zip(np.asarray(pfns).tolist(), np.asarray(orders).tolist(), strict=True):
        mask[p : p + (1 << o)] = True
    return mask


def run_all(w) -> tuple[list[int], list[int]]:
    """Run every event until the worker is idle; return pass starts and pass ends."""
    starts, ends = [], []
    while (t := w.next_event_ns()) is not None:
        passes = w.passes
        w.run_until(t)
        if w.passes > passes:
            starts.append(t)
        if not w.in_flight and w.state != w.ACTIVE:
            ends.append(t)
    return starts, ends


def test_allocation_during_a_call_cannot_get_the_isolated_blocks(allocator_factory):
    a, w, rec = worker_for(allocator_factory)
    w.run_until(2 * SEC_NS)  # the pass starts, fills a batch and calls: in flight for 30 ms
    assert w.in_flight and w.state == w.ACTIVE and rec.calls == []
    assert w.next_event_ns() == 2 * SEC_NS + LATENCY
    pfns, orders = w.in_flight_batch()
    assert orders.tolist() == [10, 10, 10, 10]
    isolated = page_mask(NR_PAGES, pfns, orders)
    check_invariants(a, isolated_pages=4096)
    assert a.free_pages_total() == NR_PAGES - 4096  # isolated pages are not free pages

    got = a.alloc(9, MIGRATE_MOVABLE, 32)  # ask for all of memory in 2 MiB blocks
    assert 0 < len(got) <= 24  # at most the 12 non-isolated 4 MiB blocks
    assert not (page_mask(NR_PAGES, got, np.full(len(got), 9)) & isolated).any()
    pfns_again, _ = w.in_flight_batch()
    assert pfns_again.tolist() == pfns.tolist()  # the batch is untouched

    w.run_until(2 * SEC_NS + LATENCY)  # the call completes: its batch is drained as Reported
    assert rec.calls[0][0] == 2 * SEC_NS + LATENCY
    assert sorted(rec.calls[0][1]) == sorted(pfns.tolist())
    a.free(got, 9)
    run_all(w)
    assert not w.in_flight
    check_invariants(a)
    assert a.free_pages_total() == NR_PAGES


def test_a_free_next_to_an_isolated_block_merges_only_after_the_drain(allocator_factory):
    cfg = small_config(nr_pages=NR_PAGES, pcp=NO_PCP)
    a = allocator_factory(cfg)
    x = int(a.alloc(9, MIGRATE_MOVABLE, 1)[0])
    y = x ^ 512  # its buddy: the only free order-9 block
    rec = RecordingReporter(latency_ns=LATENCY)
    w = PageReportingWorker(a, cfg.reporting, rec, rec)
    w.register(0)
    w.run_until(2 * SEC_NS)
    pfns, orders = w.in_flight_batch()
    assert (y, 9) in zip(pfns.tolist(), orders.tolist(), strict=True)  # order 9 is walked first

    a.free([x], 9)  # during the call: y is isolated, so x cannot merge with it
    assert a.free_list(0, 9, MIGRATE_MOVABLE) == [(x, False)]
    assert a.nr_free(0, 9) == 1 and a.allocated_order(x) == -1
    check_invariants(a, isolated_pages=int(np.left_shift(1, orders).sum()))

    w.run_until(2 * SEC_NS + LATENCY)  # drain: y goes back, merges with x into one 4 MiB block
    assert rec.calls[0][0] == 2 * SEC_NS + LATENCY and y in rec.calls[0][1]
    merged = min(x, y)
    assert a.nr_free(0, 9) == 0
    on_list = (merged, False) in a.free_list(0, 10, MIGRATE_MOVABLE)
    next_pfns, next_orders = w.in_flight_batch()  # the walk went on: maybe already isolated again
    in_batch = (merged, 10) in zip(next_pfns.tolist(), next_orders.tolist(), strict=True)
    assert on_list != in_batch
    run_all(w)
    check_invariants(a)
    assert a.reported_pages() == NR_PAGES


def test_a_pass_of_k_calls_ends_k_latencies_after_its_start_and_rearms_a_delay_later(
    allocator_factory,
):
    a, w, rec = worker_for(allocator_factory)
    starts, ends = run_all(w)
    assert a.reported_pages() == NR_PAGES
    assert len(starts) == len(ends) >= 2
    assert starts[0] == 2 * SEC_NS
    completions = [c[0] for c in rec.calls]
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        calls = [t for t in completions if start < t <= end]
        k = len(calls)
        assert calls == [start + j * LATENCY for j in range(1, k + 1)], f"pass {i}"
        assert end == start + k * LATENCY, f"pass {i}"
        if i + 1 < len(starts):
            assert starts[i + 1] == end + ReportingConfig().delay_ns, f"pass {i + 1}"
    # 16 blocks, capacity 4, budget ceil(16 / 64) = 1: two calls, then the budget is spent
    assert sum(1 for t in completions if starts[0] < t <= ends[0]) == 2
    assert w.budget_exhaustions >= 1
    assert len(completions) == sum(1 for _ in rec.calls)


def test_report_time_is_the_sum_of_the_call_latencies(allocator_factory):
    _a, w, rec = worker_for(allocator_factory)
    w.run_until(2 * SEC_NS)
    assert w.report_ns == 0  # a call in flight is not charged yet
    run_all(w)
    assert w.reports == len(rec.calls) >= 4
    assert w.report_ns == len(rec.calls) * LATENCY


def one_pass(kind, free_during_call: bool):
    """A guest of 8 order-10 blocks (capacity 4: two calls, no budget exhaustion) holding
    one block; it frees it during the first call if asked. Runs the first pass to its end."""
    cfg = small_config(nr_pages=8192, pcp=NO_PCP)
    rec = RecordingReporter(latency_ns=LATENCY)
    g = Guest(0, cfg, 0, rec, fast=kind.fast, cost_port=rec)
    x = g.alloc(10, MIGRATE_MOVABLE, 1)
    g.advance_to(2 * SEC_NS)
    assert g.worker.in_flight and g.next_event_ns() == 2 * SEC_NS + LATENCY
    g.advance_to(2 * SEC_NS + LATENCY // 2)
    if free_during_call:
        g.free(x, 10)  # notifies: the worker is ACTIVE, so it only records the request
        assert g.worker.state == g.worker.REQUESTED
    while g.worker.in_flight:  # the pass's calls follow each other until it ends
        g.advance_to(g.next_event_ns())
    assert g.worker.passes == 1 and g.worker.budget_exhaustions == 0
    return g, g.now_ns


def test_a_notify_during_a_call_rearms_at_the_pass_end(allocator_factory):
    """ACTIVE -> REQUESTED through the guest: a free of a 4 MiB block while a call is in
    flight; the next pass starts one delay after the pass ends, not after the free."""
    g, pass_end = one_pass(allocator_factory, free_during_call=True)
    assert pass_end == 2 * SEC_NS + 2 * LATENCY
    assert g.worker.state == g.worker.REQUESTED
    assert g.next_event_ns() == pass_end + g.config.reporting.delay_ns
    quiet, _ = one_pass(allocator_factory, free_during_call=False)  # control: no notify
    assert quiet.worker.state == quiet.worker.IDLE and quiet.next_event_ns() is None


def test_guest_events_are_a_min_over_timers_run_in_time_order():
    """Guest.next_event_ns is the earliest event of any timer; advance_to runs the events of
    all timers in time order, each with the guest clock at its time."""
    cfg = GuestConfig(nr_pages=NR_PAGES, pcp=NO_PCP, reporting=ReportingConfig(capacity=4))
    rec = RecordingReporter(latency_ns=LATENCY)
    g = Guest(0, cfg, 0, rec, fast=False, cost_port=rec)
    log: list[tuple[str, int]] = []
    rec.on_report = lambda now_ns, pfns, orders: log.append(("call", now_ns))

    class Ticker:
        def __init__(self, times):
            self.times = list(times)

        def next_event_ns(self):
            return self.times[0] if self.times else None

        def run_until(self, now_ns):
            while self.times and self.times[0] <= now_ns:
                log.append(("tick", self.times.pop(0)))
                assert g.now_ns == now_ns

    ticks = [1 * SEC_NS, 2 * SEC_NS + LATENCY, 2 * SEC_NS + LATENCY + 5 * MS_NS]
    g.add_timer(Ticker(ticks))
    assert g.next_event_ns() == 1 * SEC_NS
    g.advance_to(1 * SEC_NS)
    assert g.next_event_ns() == 2 * SEC_NS  # the first reporting pass
    g.advance_to(3 * SEC_NS)
    calls = [t for kind, t in log if kind == "call"]
    assert calls[:2] == [2 * SEC_NS + LATENCY, 2 * SEC_NS + 2 * LATENCY]
    # time order; at a tie the worker (the first timer) runs before the ticker
    assert log[:4] == [
        ("tick", 1 * SEC_NS),
        ("call", 2 * SEC_NS + LATENCY),
        ("tick", 2 * SEC_NS + LATENCY),
        ("tick", 2 * SEC_NS + LATENCY + 5 * MS_NS),
    ]
    assert g.now_ns == 3 * SEC_NS


def test_report_cost_prices_exit_plus_discards():
    cost = ReportCost(exit_ns=1500, discard_4k_ns=430, discard_2m_ns=14000)
    orders = np.array([0, 3, 9, 10])
    assert cost.price(orders) == 1500 + (1 + 8) * 430 + (1 + 2) * 14000
    assert HostCostPort(cost).price_report(np.zeros(4), orders) == cost.price(orders)
    huge = ReportCost(exit_ns=1500, discard_4k_ns=430, discard_2m_ns=14000, discard_min_order=9)
    assert huge.price(orders) == 1500 + 3 * 14000
    ack_only = ReportCost(exit_ns=1500, discard_4k_ns=430, discard_min_order=None)
    assert ack_only.price(orders) == 1500
    assert ReportCost().price(orders) == 0
