"""BackingView (guest-side mirror of host backing) and the cost port."""

from __future__ import annotations

import numpy as np
import pytest

from services.guest.core.backing import (
    BACKED,
    DISCARDED,
    NEVER,
    SWAPPED,
    BackingView,
    NullCostPort,
    expand_ranges,
)
from services.guest.core.config import GuestConfig, PcpConfig, ReportingConfig
from services.guest.core.guest import Guest
from tests.guest_helpers import SEC_NS, RecordingReporter


def test_expand_ranges():
    assert expand_ranges([5, 0, 9], [2, 0, 3]).tolist() == [5, 6, 9, 10, 11]
    assert expand_ranges([], []).tolist() == []


def test_touch_counts_every_visit_by_prior_state():
    """A page visited twice in one touch is a fault the first time and backed the second,
    as the host counts it; the last two counts are the 4 KiB and huge faults."""
    b = BackingView(64)
    assert b.touch([0, 4], [8, 8]).tolist() == [12, 4, 0, 0, 12, 0]
    assert b.touch([0], [16]).tolist() == [4, 12, 0, 0, 4, 0]
    assert b.counts() == {"never": 48, "backed": 16, "discarded": 0, "swapped": 0}


def test_huge_granules_back_whole_on_first_touch_and_fault_4k_once_split():
    b = BackingView(64, gran_shift=4, huge_faults=True)  # granules of 16 pages
    assert b.touch([3], [2]).tolist() == [2, 0, 0, 0, 0, 1]  # one huge fault backs 0..15
    assert b.counts()["backed"] == 16
    assert b.touch([0, 16], [16, 4]).tolist() == [4, 16, 0, 0, 0, 1]
    b.discard([4], [2])  # a report inside a huge granule: the host splits it
    b.swapped_out([8], [2])
    assert b.touch([0], [16]).tolist() == [0, 10, 4, 2, 4, 0]  # 4 KiB refaults, swap-ins
    b.discard([16], [4])  # the whole granule: empty again, one huge refault
    assert b.touch([20], [1]).tolist() == [0, 0, 1, 0, 0, 1]
    assert np.array_equal(b.recount_granules(), b.granule_counts())
    assert np.array_equal(b.recount(), np.array(list(b.counts().values())))


def test_discard_swap_and_refault():
    b = BackingView(64)
    b.touch([0], [32])
    b.swapped_out([24], [16])  # only backed pages can be swapped: 24..31
    assert b.counts()["swapped"] == 8
    b.discard(np.array([0, 16]), np.array([3, 4]))  # 0..7 and 16..31
    assert b.state[:8].tolist() == [DISCARDED] * 8
    assert b.state[8:16].tolist() == [BACKED] * 8
    assert b.state[16:32].tolist() == [DISCARDED] * 16  # swapped pages drop their slot too
    b.discard([32], [4])  # never-touched pages stay NEVER
    assert b.state[32:48].tolist() == [NEVER] * 16
    assert b.touch([0], [40]).tolist() == [8, 8, 24, 0, 32, 0]
    assert SWAPPED not in b.state


@pytest.mark.parametrize(
    "starts,npages",
    [([-1], [1]), ([60], [5]), ([0], [-1]), ([0, 1], [1])],
)
def test_bad_ranges_rejected_state_unchanged(starts, npages):
    b = BackingView(64)
    b.touch([0], [10])
    before = b.state.copy()
    with pytest.raises(ValueError):
        b.touch(starts, npages)
    with pytest.raises(ValueError):
        b.swapped_out(starts, npages)
    assert np.array_equal(b.state, before)


def test_discard_bad_input():
    b = BackingView(64)
    with pytest.raises(ValueError, match="order"):
        b.discard([0], [-1])
    with pytest.raises(ValueError):
        b.discard([48], [5])  # 48 + 32 > 64


def test_null_cost_port_and_bad_size():
    assert NullCostPort().price_touch(np.zeros(4, dtype=np.int64)) == 0
    with pytest.raises(ValueError):
        BackingView(0)


class PerPageCost(NullCostPort):
    def price_touch(self, counts):
        return int(counts[NEVER] * 10 + counts[DISCARDED] * 100 + counts[SWAPPED] * 1000)


def test_guest_reports_discard_backing_and_refaults_cost():
    cfg = GuestConfig(
        nr_pages=8192, pcp=PcpConfig(enabled=False), reporting=ReportingConfig(capacity=4)
    )
    rec = RecordingReporter()
    g = Guest(0, cfg, 0, rec, fast=False, cost_port=PerPageCost())
    g.touch([0], [8192])
    assert g.touch_cost_ns == 8192 * 10
    g.advance_to(2 * SEC_NS)
    assert g.backing.counts()["discarded"] == 8192
    st = g.state()
    assert st["reported_bytes"] == 8192 * 4096 and st["backed_bytes"] == 0
    assert st["worker_state"] == "idle"
    g.touch([100], [10])
    assert g.touch_cost_ns == 8192 * 10 + 10 * 100


def test_failed_report_does_not_discard():
    cfg = GuestConfig(nr_pages=8192, reporting=ReportingConfig(capacity=4))
    rec = RecordingReporter(errors=[1])
    g = Guest(0, cfg, 0, rec, fast=False)
    g.touch([0], [8192])
    g.advance_to(2 * SEC_NS)
    assert g.backing.counts()["backed"] == 8192


def test_guest_clock_only_moves_forward():
    g = Guest(0, GuestConfig(nr_pages=4096), 0, RecordingReporter(), fast=False)
    g.advance_to(5)
    with pytest.raises(ValueError, match="now_ns"):
        g.advance_to(4)
