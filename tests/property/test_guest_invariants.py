"""Allocator invariants under random operations (Hypothesis state machine).

After every step, and inside every report call (while blocks are isolated):
pages are conserved (buddy + pcp + isolated + allocated == nr_pages), free
blocks are aligned and never overlap, no free buddy pair is left unmerged
unless the profile's rule forbids the merge, Reported appears only on free
heads, and the counters agree with the lists.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.guest.core.config import GuestConfig, PcpConfig, ReportingConfig
from services.guest.core.reporting import PageReportingWorker
from tests.guest_helpers import SEC_NS, RecordingReporter, allocator_kind, check_invariants

CONFIGS = [
    GuestConfig(nr_pages=4096, reporting=ReportingConfig(capacity=2)),
    GuestConfig(nr_pages=4096, profile="5.7", shuffle=True, reporting=ReportingConfig(capacity=2)),
    GuestConfig(
        nr_pages=8192,
        profile="6.1",
        pcp=PcpConfig(batch=4, high=12),
        reporting=ReportingConfig(capacity=4, order=6),
    ),
    GuestConfig(
        nr_pages=1024, max_order=6, pageblock_order=3, reporting=ReportingConfig(capacity=4)
    ),
    GuestConfig(
        nr_pages=256,
        max_order=4,
        pageblock_order=2,
        profile="5.7",
        pcp=PcpConfig(batch=2, high=6),
        reporting=ReportingConfig(capacity=2, order=1),
    ),
]


class AllocatorMachine(RuleBasedStateMachine):
    """Random alloc/free/drain/report against one allocator kind (set by subclasses)."""

    kind_name = "reference"

    @initialize(
        cfg_index=st.integers(0, len(CONFIGS) - 1),
        seed=st.integers(0, 2**32 - 1),
        errors=st.lists(st.sampled_from([0, 0, 0, 3]), max_size=8),
    )
    def boot(self, cfg_index, seed, errors):
        self.cfg = CONFIGS[cfg_index]
        rng = np.random.default_rng(seed) if self.cfg.shuffle else None
        self.a = allocator_kind(self.kind_name)(self.cfg, rng)
        self.rec = RecordingReporter(errors=list(errors), on_report=self.check_in_flight)
        self.worker = PageReportingWorker(self.a, self.cfg.reporting, self.rec)
        self.worker.register(0)
        self.now_ns = 0
        self.held: list[tuple[int, int]] = []

    def check_in_flight(self, now_ns, pfns, orders):
        assert all(o >= self.cfg.report_order for o in orders.tolist())
        check_invariants(self.a, isolated_pages=int(sum(1 << int(o) for o in orders)))

    @precondition(lambda self: hasattr(self, "a"))
    @rule(order=st.integers(0, 10), mt=st.integers(0, 3), count=st.integers(1, 16))
    def alloc(self, order, mt, count):
        order = order % (self.cfg.max_order + 1) if order > 3 else order
        pfns = self.a.alloc(order, mt, count)
        assert len(pfns) <= count
        self.held += [(int(p), order) for p in pfns]

    @precondition(lambda self: hasattr(self, "a") and self.held)
    @rule(data=st.data())
    def free(self, data):
        idx = data.draw(
            st.lists(st.integers(0, len(self.held) - 1), min_size=1, max_size=12, unique=True)
        )
        order = self.held[idx[0]][1]
        chosen = [i for i in idx if self.held[i][1] == order]
        pfns = [self.held[i][0] for i in chosen]
        self.held = [h for i, h in enumerate(self.held) if i not in set(chosen)]
        before = self.a.notify_count
        self.a.free(pfns, order)
        if self.a.notify_count != before:
            self.worker.request(self.now_ns)

    @precondition(lambda self: hasattr(self, "a"))
    @rule()
    def drain(self):
        self.a.drain_pcp()
        assert self.a.pcp_pages() == 0
        self.worker.request(self.now_ns)

    @precondition(lambda self: hasattr(self, "a"))
    @rule(seconds=st.integers(0, 5))
    def advance(self, seconds):
        self.now_ns += seconds * SEC_NS
        self.worker.run_until(self.now_ns)

    @precondition(lambda self: hasattr(self, "a"))
    @invariant()
    def invariants_hold(self):
        check_invariants(self.a)
        allocated = sum(1 << o for _, o in self.held)
        assert allocated + self.a.free_pages_total() + self.a.pcp_pages() == self.cfg.nr_pages
        for pfn, o in self.held:
            assert self.a.allocated_order(pfn) == o


class FastAllocatorMachine(AllocatorMachine):
    kind_name = "fast"


MACHINE_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_reference_invariants():
    AllocatorMachine.TestCase.settings = MACHINE_SETTINGS
    AllocatorMachine.TestCase().runTest()


def test_fast_invariants():
    allocator_kind("fast")  # skips until buddy.py imports
    FastAllocatorMachine.TestCase.settings = MACHINE_SETTINGS
    FastAllocatorMachine.TestCase().runTest()


def test_reference_keeps_reported_on_free_heads_only():
    """White-box check on the reference: the Reported set is a subset of free heads."""
    a = allocator_kind("reference")(CONFIGS[0])
    w = PageReportingWorker(a, CONFIGS[0].reporting, RecordingReporter())
    w.register(0)
    w.run_until(2 * SEC_NS)
    x = a.alloc(0, 1, 40)
    assert a._reported <= set(a._free)
    a.free(x, 0)
    a.drain_pcp()
    assert a._reported <= set(a._free)


pytestmark = pytest.mark.filterwarnings("ignore")
