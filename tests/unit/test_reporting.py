"""PageReportingWorker: state machine (§4.2), zone pass (§4.3), list visit (§4.4), errors (§4.7)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from services.guest.core.config import GuestConfig, PcpConfig, ReportingConfig
from services.guest.core.constants import MIGRATE_MOVABLE
from services.guest.core.reporting import REPORT_BATCH_FULL, PageReportingWorker
from tests.guest_helpers import SEC_NS, RecordingReporter, check_invariants, small_config

NO_PCP = PcpConfig(enabled=False)
MS_NS = 1_000_000

DMA32_END_PFN = (4 << 30) >> 12  # an explicit 4 GiB DMA32/Normal split


class VisitCounter:
    """Allocator proxy: attributes each report call to the list visit that triggered it."""

    def __init__(self, allocator):
        self._a = allocator
        self.visits: list[dict] = []  # {"key", "budget", "reports"}
        self._last_key = None

    def __getattr__(self, name):
        return getattr(self._a, name)

    def report_fill(self, zone, order, mt, batch_pfn, batch_order, n, budget):
        key = (zone, order, mt)
        if self._last_key != key or not self.visits or self.visits[-1]["closed"]:
            self.visits.append({"key": key, "budget": budget, "reports": 0, "closed": False})
        self._last_key = key
        status, n = self._a.report_fill(zone, order, mt, batch_pfn, batch_order, n, budget)
        if status == REPORT_BATCH_FULL:
            self.visits[-1]["reports"] += 1
        else:
            self.visits[-1]["closed"] = True
        return status, n


def worker_for(kind, cfg, rec):
    a = kind(cfg)
    return a, PageReportingWorker(a, cfg.reporting, rec, rec)  # rec prices calls: latency_ns


def test_state_machine_register_request_idle(allocator_factory):
    rec = RecordingReporter()
    a, w = worker_for(allocator_factory, small_config(), rec)
    assert w.state == w.IDLE and w.next_event_ns() is None
    w.register(0)
    assert w.state == w.REQUESTED and w.next_event_ns() == 2 * SEC_NS
    w.request(SEC_NS)  # already requested: no reschedule
    assert w.next_event_ns() == 2 * SEC_NS
    w.run_until(2 * SEC_NS - 1)
    assert w.passes == 0 and rec.calls == []
    w.run_until(2 * SEC_NS)
    assert w.passes == 1 and w.state == w.IDLE and w.next_event_ns() is None
    assert a.reported_pages() == 8192
    w.request(5 * SEC_NS)
    w.run_until(7 * SEC_NS)
    assert w.passes == 2 and len(rec.calls) == 2  # second pass: everything already Reported


def test_request_during_pass_rearms_after_pass_end(allocator_factory):
    rec = RecordingReporter(latency_ns=100 * MS_NS)
    _a, w = worker_for(allocator_factory, small_config(), rec)
    rec.on_report = lambda now_ns, pfns, orders: w.request(now_ns)  # a notify while ACTIVE
    w.register(0)
    w.run_until(2 * SEC_NS + 200 * MS_NS)
    # calls complete (and are recorded) 100 ms after they start; the pass ends at 2.2 s
    assert [c[0] for c in rec.calls] == [2 * SEC_NS + 100 * MS_NS, 2 * SEC_NS + 200 * MS_NS]
    assert w.state == w.REQUESTED
    assert w.next_event_ns() == 2 * SEC_NS + 200 * MS_NS + 2 * SEC_NS


def test_request_while_last_pass_still_reporting_waits_for_its_end(allocator_factory):
    rec = RecordingReporter(latency_ns=3 * SEC_NS)
    _a, w = worker_for(allocator_factory, small_config(), rec)
    w.register(0)
    w.run_until(3 * SEC_NS)  # two calls: the first is in flight until 5 s, the pass ends at 8 s
    assert w.state == w.ACTIVE and w.next_event_ns() == 5 * SEC_NS
    w.request(3 * SEC_NS)  # ACTIVE -> REQUESTED: nothing scheduled until the pass ends
    assert w.next_event_ns() == 5 * SEC_NS
    w.run_until(8 * SEC_NS)
    assert w.state == w.REQUESTED and w.next_event_ns() == 10 * SEC_NS


def test_at_most_budget_plus_one_calls_per_list_visit(allocator_factory):
    cfg = small_config(nr_pages=1 << 16, capacity=1)  # 64 order-10 blocks, budget 4
    rec = RecordingReporter()
    a = allocator_factory(cfg)
    proxy = VisitCounter(a)
    w = PageReportingWorker(proxy, cfg.reporting, rec)
    w.register(0)
    t = 0
    while w.next_event_ns() is not None:
        t = w.next_event_ns()
        w.run_until(t)
    assert a.reported_pages() == 1 << 16
    assert w.budget_exhaustions > 0
    for v in proxy.visits:
        assert v["reports"] <= v["budget"] + 1, v
    assert max(v["reports"] for v in proxy.visits) == math.ceil(64 / 16) + 1
    passes = sorted({c[0] for c in rec.calls})
    assert all(b - a_ == 2 * SEC_NS for a_, b in pairwise(passes))


def test_zone_below_gate_is_skipped_silently(allocator_factory):
    rec = RecordingReporter()
    cfg = small_config(nr_pages=4096, capacity=8)  # low 255 + 8 << 9 = 4351 > 4096
    a, w = worker_for(allocator_factory, cfg, rec)
    assert not a.zone_report_gate(0)
    w.register(0)
    w.run_until(10 * SEC_NS)
    assert rec.calls == [] and w.zones_skipped == 1 and w.passes == 1
    assert w.state == w.IDLE and w.next_event_ns() is None


def test_batch_is_shared_across_orders_and_leftover_flushed(allocator_factory):
    rec = RecordingReporter()
    cfg = small_config(capacity=4, pcp=NO_PCP)
    a, w = worker_for(allocator_factory, cfg, rec)
    x = a.alloc(9, MIGRATE_MOVABLE, 2)
    a.free(x[:1], 9)
    w.register(0)
    w.run_until(2 * SEC_NS)
    # the device sees each batch in reverse isolation order (§4.4)
    assert [c[2] for c in rec.calls] == [[10, 10, 10, 9], [10, 10, 10, 10]]
    assert w.reported_blocks == 8 and w.reported_pages == 512 + 7 * 1024
    assert a.reported_pages() == 8192 - 512


def test_isolation_refusal_is_not_an_error(allocator_factory):
    rec = RecordingReporter()
    cfg = small_config(nr_pages=4096, capacity=4, pcp=NO_PCP)
    a, w = worker_for(allocator_factory, cfg, rec)
    w.register(0)
    w.run_until(2 * SEC_NS)
    # min 204: the 4th isolation would leave 1024 <= 204 + 1024 free pages
    assert len(rec.calls) == 1 and len(rec.calls[0][1]) == 3
    assert w.report_errors == 0 and w.state == w.IDLE
    refused = a.free_list(0, 10, MIGRATE_MOVABLE)[0]
    assert refused[1] is False and a.reported_pages() == 3072
    check_invariants(a)


def test_error_stops_pass_before_next_zone():
    """Two zones: an error in DMA32 ends the pass; Normal is not visited (§4.7)."""
    rec = RecordingReporter(errors=[1])
    nr_pages = DMA32_END_PFN + (1 << 18)
    cfg = GuestConfig(nr_pages=nr_pages, lowmem_pages=DMA32_END_PFN)
    from services.guest.core.reference import ReferenceAllocator

    a = ReferenceAllocator(cfg)
    w = PageReportingWorker(a, cfg.reporting, rec)
    w.register(0)
    w.run_until(2 * SEC_NS)
    assert len(rec.calls) == 1 and all(p < DMA32_END_PFN for p in rec.calls[0][1])
    assert a.reported_pages() == 0 and w.report_errors == 1 and w.state == w.IDLE
    w.request(3 * SEC_NS)
    w.run_until(5 * SEC_NS)
    zones_seen = {p >= DMA32_END_PFN for _, ps, _, _ in rec.calls[1:] for p in ps}
    assert zones_seen == {False, True}  # zones ascending, both visited


def test_error_after_ok_keeps_earlier_reports(allocator_factory):
    rec = RecordingReporter(errors=[0, 7])
    cfg = small_config(nr_pages=1 << 14, capacity=2, pcp=NO_PCP)
    a, w = worker_for(allocator_factory, cfg, rec)
    w.register(0)
    w.run_until(2 * SEC_NS)
    assert [c[3] for c in rec.calls] == [0, 7]
    assert a.reported_pages() == 2 * 1024 and w.reported_blocks == 2 and w.report_errors == 1
    assert a.free_pages_total() == 1 << 14
    check_invariants(a)


@pytest.mark.parametrize("order", [9, 10])
def test_report_order_parameter_limits_scan(allocator_factory, order):
    rec = RecordingReporter()
    cfg = small_config(order=order, pcp=NO_PCP)
    a, w = worker_for(allocator_factory, cfg, rec)
    x = a.alloc(9, MIGRATE_MOVABLE, 2)
    a.free(x[:1], 9)
    w.register(0)
    w.run_until(2 * SEC_NS)
    orders = {o for _, _, os_, _ in rec.calls for o in os_}
    assert orders == ({9, 10} if order == 9 else {10})


def test_bad_reporting_order_rejected(allocator_factory):
    cfg = small_config()
    a = allocator_factory(cfg)
    with pytest.raises(ValueError, match="order"):
        PageReportingWorker(a, ReportingConfig(order=11), RecordingReporter())
