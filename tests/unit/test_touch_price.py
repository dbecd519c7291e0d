"""The guest's price of a touch equals the host's charge when the guest sees all the host
does (no host pressure): the differential test behind smooth host-cost feedback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.guest.core.backing import BackingView, HostCostPort, TouchCost
from services.host.core.config import (
    BACKING_ANON,
    BACKING_HUGETLB_2M,
    DISCARD_DONTNEED,
    DISCARD_FREE,
    HostConfig,
    SwapConfig,
)
from services.host.core.counters import price_touch, price_touch_in_full
from services.host.core.host import Host
from services.host.core.pagestate import (
    EV_FAULT_4K,
    EV_FAULT_HUGE,
    EV_RECLAIM_DISK,
    EV_RECLAIM_ZSWAP,
    EV_SWAPIN_DISK,
    EV_SWAPIN_ZSWAP,
    NEV,
)
from services.sim.plan import report_cost, touch_cost

NR = 4096  # 16 MiB guest: 8 granules of 2 MiB
MIB = 1 << 20

ops = st.lists(
    st.one_of(
        st.tuples(st.just("touch"), st.integers(0, NR - 1), st.integers(1, 1500)),
        st.tuples(st.just("report"), st.integers(0, NR - 1), st.integers(0, 10)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    ops=ops,
    backing=st.sampled_from([BACKING_ANON, BACKING_HUGETLB_2M]),
    thp=st.booleans(),
    mode=st.sampled_from([DISCARD_DONTNEED, DISCARD_FREE]),
)
def test_guest_price_of_every_touch_equals_the_host_charge(ops, backing, thp, mode):
    host_cfg = HostConfig(memory_bytes=64 * MIB, backing=backing, thp=thp)
    host = Host(0, host_cfg)
    host.add_guest(1, NR, discard_mode=mode)
    port = HostCostPort(report_cost(host_cfg, mode), touch_cost(host_cfg, mode))
    view = BackingView(NR, port.touch.gran_shift, port.touch.huge_faults)
    for kind, a, b in ops:
        if kind == "touch":
            n = min(b, NR - a)
            price = port.price_touch(view.touch([a], [n]))
            charged = host.apply_touch(1, np.array([a]), np.array([n])).total_lost_ns
            assert price == charged, (kind, a, n)
        else:
            order = b
            pfn = (a >> order) << order
            if pfn + (1 << order) > NR:
                continue
            pfns, orders = np.array([pfn]), np.array([order])
            host.apply_report(1, pfns, orders)
            port.discard_view(view, pfns, orders)
        assert np.array_equal(view.recount_granules(), view.granule_counts())
        assert np.array_equal(view.recount(), np.array(list(view.counts().values())))


def test_swapped_pages_are_priced_as_the_host_swaps_them_in():
    cost = TouchCost(swap_read_latency_ns=80_000, swap_read_bytes_per_s=3_400_000_000)
    b = BackingView(64)
    b.touch([0], [8])
    b.swapped_out([0], [8])
    assert cost.price(b.touch([0], [8])) == 8 * 80_000 + -(-8 * 4096 * 10**9 // 3_400_000_000)
    z = TouchCost(zswap=True, decompress_ns=1_700)
    b.swapped_out([0], [4])
    assert z.price(b.touch([0], [8])) == 4 * 1_700


@pytest.mark.parametrize("mode", [DISCARD_DONTNEED, DISCARD_FREE])
@pytest.mark.parametrize("thp", [True, False])
def test_a_reported_block_that_was_swapped_is_priced_as_a_fault(mode, thp):
    """Guest 1's pages are swapped out by guest 2's demand; guest 2 gives its memory back,
    guest 1 reports a swapped block and touches it again: the host drops the swap slots in
    both discard modes, so the touch is a fault (hostile review: MADV_FREE priced it as a
    swap-in)."""
    host_cfg = HostConfig(
        memory_bytes=16 * MIB,
        backing=BACKING_ANON,
        thp=thp,
        swap=SwapConfig(capacity_bytes=64 * MIB),
    )
    host = Host(0, host_cfg)
    host.add_guest(1, NR, discard_mode=mode)
    host.add_guest(2, NR, discard_mode=DISCARD_DONTNEED)
    port = HostCostPort(report_cost(host_cfg, mode), touch_cost(host_cfg, mode))
    view = BackingView(NR, port.touch.gran_shift, port.touch.huge_faults)
    view.touch([0], [NR])
    host.apply_touch(1, np.array([0]), np.array([NR]))
    host.apply_touch(2, np.array([0]), np.array([NR]))  # the pool is full: guest 1 swaps
    for starts, npages in [host.reclaim().get(1, (np.zeros(0, np.int64), np.zeros(0, np.int64)))]:
        view.swapped_out(starts, npages)
    assert view.counts()["swapped"] > 0
    host.apply_report(2, np.arange(0, NR, 512), np.full(NR // 512, 9))  # room again
    swapped = int(np.flatnonzero(view.state == 3)[0]) // 512 * 512
    pfns, orders = np.array([swapped]), np.array([9])
    host.apply_report(1, pfns, orders)
    port.discard_view(view, pfns, orders)
    price = port.price_touch(view.touch([swapped], [512]))
    assert price == host.apply_touch(1, np.array([swapped]), np.array([512])).total_lost_ns


PRICED = (
    EV_FAULT_4K,
    EV_FAULT_HUGE,
    EV_SWAPIN_DISK,
    EV_SWAPIN_ZSWAP,
    EV_RECLAIM_DISK,
    EV_RECLAIM_ZSWAP,
)


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(0, 3) | st.integers(0, 1 << 20), min_size=NEV, max_size=NEV),
    priced=st.sets(st.sampled_from(PRICED)),
    gran_pages=st.sampled_from([1, 512, 1 << 18]),
)
def test_touch_price_equals_every_cost_function(counts, priced, gran_pages) -> None:
    """The shortcut for batches of resident pages gives what the cost functions give."""
    ev = [c if (k in priced or k not in PRICED) else 0 for k, c in enumerate(counts)]
    cm = HostConfig(memory_bytes=1 << 30).costs
    assert price_touch(cm, ev, gran_pages) == price_touch_in_full(cm, ev, gran_pages)
