"""will-it-scale page_fault1 / page_fault2 in a guest shard (pure: no host, no servers)."""

import numpy as np
import pytest

from services.guest.core.config import GuestConfig
from services.guest.core.willitscale import THP_PAGES, WillItScaleConfig
from services.guest.shard import GuestInit, GuestShard

MIB = 1 << 20
NR_PAGES = (512 * MIB) >> 12
REGION = 16 * MIB  # small regions keep the tests quick; the default is 128 MiB
REGION_PAGES = REGION >> 12


def shard(config, nr_pages=NR_PAGES, vcpus=1, fast=True, **guest):
    g = GuestConfig(nr_pages=nr_pages, vcpus=vcpus, **guest)
    return GuestShard(0, [GuestInit(0, "g", 0, g, config)], seed=9, fast=fast)


def run(sh, t_end, epoch):
    t = 0
    while t < t_end:
        sh.run_epoch(t, t + epoch)
        t += epoch
    return sh.slots[0].workload


def wis(test="page_fault1", **kw):
    kw.setdefault("region_bytes", REGION)
    return WillItScaleConfig(test=test, **kw)


@pytest.mark.parametrize("thp", [False, True])
def test_page_fault1_faults_equal_the_pages_mapped_touched_and_unmapped(thp):
    """Independent invariant: the counter is pages touched; every completed iteration
    allocated and freed exactly one region; what is held is the current iteration's."""
    w = run(shard(wis(tasks=2, vcpus=2, thp=thp), vcpus=2), 200_000_000, 10_000_000)
    done = sum(t.iterations for t in w.tasks)
    in_flight = sum(t.next_page for t in w.tasks)
    assert done >= 4
    assert w.benchmark_ops == done * REGION_PAGES + in_flight
    assert w.stats.pages_allocated == w.benchmark_ops == w.stats.pages_touched
    assert w.stats.pages_freed == done * REGION_PAGES
    assert w.held.count == in_flight
    if thp:
        assert all(t.held0.count == 0 for t in w.tasks)  # plenty of order-9 blocks


def test_tasks_run_on_their_own_vcpus_pcp_lists():
    sh = shard(wis(tasks=2, vcpus=2), vcpus=2)
    run(sh, 20_000_000, 10_000_000)
    a = sh.slots[0].guest.allocator
    assert a.pcp_state(0, 0)["count"] > 0 and a.pcp_state(0, 1)["count"] > 0


def test_thp_falls_back_to_4k_faults_when_no_order9_block_is_free():
    """A guest whose free memory is all in blocks below order 9 (every other 4 KiB page
    held): each 2 MiB chunk is 512 order-0 faults, and the counter still counts pages."""
    sh = shard(wis(thp=True), nr_pages=(64 * MIB) >> 12, min_free_kbytes=128, thp=False)
    g = sh.slots[0].guest
    pages = g.alloc(0, 1, g.allocator.free_pages_total())  # all but the min watermark
    assert g.allocator.free_pages_total() < THP_PAGES
    g.free(pages[::2], 0)  # every other page free: nothing merges to order 9
    w = run(sh, 5_000_000, 1_000_000)
    t = w.tasks[0]
    assert t.held9.count == 0 and t.iterations >= 1 and w.lost_ns["guest_fault"] > 0
    assert w.benchmark_ops == t.held0.count + t.iterations * REGION_PAGES


def test_page_fault2_keeps_the_page_cache_and_frees_the_copies():
    w = run(shard(wis("page_fault2", region_bytes=4 * MIB)), 100_000_000, 10_000_000)
    t = w.tasks[0]
    pages = (4 * MIB) >> 12
    assert t.iterations >= 2
    assert t.cache.count == pages  # allocated on the first pass only, kept since
    assert w.stats.pages_freed == t.iterations * pages  # the private copies
    assert w.stats.pages_allocated == pages + w.benchmark_ops
    assert w.lost_ns["guest_copy"] > 0


def test_progress_does_not_depend_on_the_epoch_length():
    """10 ms and 50 ms epochs: the same faults within 0.5 % (progress a step could not
    afford is carried, not lost, across epochs)."""
    ops = [
        run(shard(wis(tasks=3, vcpus=2), vcpus=2), 1_000_000_000, e).benchmark_ops
        for e in (10_000_000, 50_000_000)
    ]
    assert abs(ops[0] - ops[1]) <= 0.005 * ops[1]


def test_costs_pace_the_tasks():
    """With 1 us per fault and zeroing 4 KiB in 1 us, one task makes 500,000 faults a
    second: 50,000 in 100 ms (to within one quantum)."""
    cfg = wis(fault_ns=1_000, zero_bytes_per_s=4096 * 1_000_000, unmap_ns=0)
    w = run(shard(cfg), 100_000_000, 10_000_000)
    assert abs(w.benchmark_ops - 50_000) <= cfg.quantum


def test_fast_and_reference_allocators_agree():
    a = run(shard(wis(tasks=2, vcpus=2), vcpus=2, fast=True), 30_000_000, 10_000_000)
    b = run(shard(wis(tasks=2, vcpus=2), vcpus=2, fast=False), 30_000_000, 10_000_000)
    assert a.benchmark_ops == b.benchmark_ops
    for ta, tb in zip(a.tasks, b.tasks, strict=True):
        assert np.array_equal(ta.held0.all(), tb.held0.all())


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"test": "page_fault3"}, "page_fault1 or page_fault2"),
        ({"test": "page_fault2", "thp": True}, "page_fault1 only"),
        ({"test": "page_fault1", "tasks": 0}, "tasks"),
        ({"test": "page_fault1", "region_bytes": 3 * MIB}, "multiple of 2 MiB"),
        ({"test": "page_fault1", "quantum": 0}, "quantum"),
    ],
)
def test_bad_configs_are_refused(kw, needle):
    with pytest.raises(ValueError, match=needle):
        WillItScaleConfig(**kw)


def test_zero_costs_still_move_time():
    """Costs of 0 (and a huge zero rate) would make a turn free; a page costs at least
    1 ns, so the epoch ends (hostile-input finding)."""
    cfg = wis(fault_ns=0, unmap_ns=0, zero_bytes_per_s=1 << 40)
    w = run(shard(cfg), 20_000_000, 10_000_000)
    assert w.benchmark_ops > 0
