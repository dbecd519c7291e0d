"""Workloads and the guest shard, on the reference allocator (pure, no Ray, no sockets)."""

import numpy as np
import pytest

from services.guest.core.config import GuestConfig
from services.guest.core.workloads import MemhogConfig, PhaseConfig, pfns_to_runs
from services.guest.shard import GuestInit, GuestShard
from services.protocol.messages import GuestOutcome
from tests.guest_helpers import run_in_lockstep

MIB = 1 << 20
NR_PAGES = (256 * MIB) >> 12  # the §4.3 gate needs > low + 64 MiB free
EPOCH = 50_000_000


def memhog(*phases, thp=False, repeat=False):
    return MemhogConfig(phases=tuple(PhaseConfig(*p) for p in phases), thp=thp, repeat=repeat)


def shard_of(workload, n=1, fast=False):
    inits = [GuestInit(i, "g", 0, GuestConfig(nr_pages=NR_PAGES), workload) for i in range(n)]
    return GuestShard(0, inits, seed=5, fast=fast)


def run(shard, t_end, epoch=EPOCH, results=None):
    logs = []
    t = shard.now_ns
    while t < t_end:
        ops = shard.run_epoch(t, t + epoch)
        logs.extend(ops[0])
        if results:
            shard.apply_outcomes(results(t))
        t += epoch
    return logs


def seqs(op):
    """The op sequence numbers of one guest's log: one per report, touch and free op."""
    return (
        [r.op_seq for r in op.reports]
        + sorted(set(op.touched.op_seqs.tolist()))
        + sorted(set(op.freed.op_seqs.tolist()))
    )


def test_pfns_to_runs_merges_contiguous_blocks():
    starts, npages = pfns_to_runs(np.array([8, 0, 1, 2, 512, 3]), 1)
    assert starts.tolist() == [0, 8, 512] and npages.tolist() == [4, 1, 1]
    starts, npages = pfns_to_runs(np.array([1024, 512]), 512)
    assert starts.tolist() == [512] and npages.tolist() == [1024]


def test_grow_reaches_target_then_free_reports_after_the_delay():
    wl = memhog(
        ("grow", 1_000_000_000, 0.5, 128 * MIB),
        ("idle", 2_000_000_000),
        ("free", 1_000_000_000, 0.0, None),
        ("idle", 5_000_000_000),
    )
    shard = shard_of(wl)
    logs = run(shard, 1_000_000_000)
    slot = shard.slots[0]
    assert slot.workload.held.count == NR_PAGES // 2
    touched = sum(int(op.touched.npages.sum()) for op in logs)
    assert touched == NR_PAGES // 2
    assert not any(op.reports for op in logs)  # registration's first pass is due at 2 s
    logs = run(shard, 3_000_000_000)
    boot_pass = [i for i, op in enumerate(logs) if op.reports]
    assert boot_pass and 2_000_000_000 <= 1_000_000_000 + boot_pass[0] * EPOCH < 2_050_000_000
    logs = run(shard, 4_000_000_000)
    assert slot.workload.held.count == 0
    assert slot.workload.stats.pages_freed == NR_PAGES // 2
    # frees are not sent: the host learns of free memory from reports only
    assert not any(len(op.freed) for op in logs)
    assert not any(op.reports for op in logs)
    # the first report after the big free comes one delay (2 s) after it
    logs = run(shard, 8_000_000_000)
    report_epochs = [i for i, op in enumerate(logs) if op.reports]
    assert report_epochs, "freed memory was never reported"
    first_t = 4_000_000_000 + report_epochs[0] * EPOCH
    assert 5_000_000_000 <= first_t < 5_050_000_000
    for op in logs:  # op sequence numbers are unique inside an epoch log
        assert len(set(seqs(op))) == len(seqs(op))


def test_lost_time_slows_a_rate_limited_workload():
    wl = memhog(("grow", 2_000_000_000, 1.0, 16 * MIB))
    free_run, slowed = shard_of(wl), shard_of(wl)
    run(free_run, 1_000_000_000)
    run(slowed, 1_000_000_000, results=lambda t: [GuestOutcome(0, lost_ns={"fault": EPOCH // 4})])
    fast_pages = free_run.slots[0].workload.stats.pages_allocated
    slow_pages = slowed.slots[0].workload.stats.pages_allocated
    assert fast_pages == (16 * MIB) >> 12
    assert slow_pages == pytest.approx(fast_pages * 3 / 4, rel=0.02)
    assert slowed.sample()["g"]["lost_fault_ns_total"] == 20 * EPOCH // 4


@pytest.mark.parametrize("epoch", [10_000_000, 50_000_000, 250_000_000])
def test_progress_does_not_depend_on_epoch_length(epoch):
    wl = memhog(
        ("grow", 500_000_000, 0.8, 40 * MIB),
        ("touch", 500_000_000, None, 80 * MIB),
        ("free", 500_000_000, 0.0, 30 * MIB),
    )
    shard = shard_of(wl)
    run(shard, 1_500_000_000, epoch=epoch)
    st = shard.slots[0].workload.stats
    # 40 MiB/s for 0.5 s = 20 MiB = 5120 pages (below the 0.8 target)
    assert st.pages_allocated == 5120
    assert st.pages_touched == 5120 + 10240
    assert st.pages_freed == 3840  # 30 MiB/s for 0.5 s, rate-bound (5120 held)


def test_swapped_out_runs_update_the_guest_mirror():
    wl = memhog(("grow", 100_000_000, 0.25, None))
    shard = shard_of(wl)
    run(shard, 100_000_000)
    held = np.sort(shard.slots[0].workload.held.all())
    res = GuestOutcome(0, swapped_starts=held[:1], swapped_npages=np.array([1]))
    shard.apply_outcomes([res])
    assert shard.slots[0].guest.backing.counts()["swapped"] == 1


def test_sample_sums_are_integers_and_cover_every_guest():
    shard = shard_of(memhog(("grow", 100_000_000, 0.5, None)), n=3)
    run(shard, 200_000_000)
    s = shard.sample()["g"]
    assert s["guests"] == 3
    assert all(isinstance(v, int) for v in s.values())
    assert s["held_bytes"] == 3 * (128 * MIB)
    assert sum(s[f"free_bytes_order_{o}"] for o in range(11)) == s["free_bytes"]


def test_a_span_marks_where_each_epoch_ends_and_matches_epoch_by_epoch_runs():
    wl = memhog(("grow", 150_000_000, 0.25, 64 * MIB), ("touch", 400_000_000, None, 32 * MIB))
    by_epoch, by_span = shard_of(wl), shard_of(wl)
    single = [run(by_epoch, (e + 1) * EPOCH)[0] for e in range(8)]
    span = by_span.run_span(0, 8, EPOCH)[0][0]
    assert by_span.now_ns == by_epoch.now_ns == 8 * EPOCH
    ends = span.epoch_seq_ends.tolist()
    assert len(ends) == 8 and ends == sorted(ends)
    everything = seqs(span)
    assert everything and ends[-1] == max(everything)
    lo = 0
    for i, log in enumerate(single):  # epoch i's ops in the span are what epoch i logged on its own
        assert sorted(q for q in everything if lo < q <= ends[i]) == sorted(seqs(log)), i
        lo = ends[i]
    a, b = by_epoch.slots[0].guest, by_span.slots[0].guest
    assert a.backing.counts() == b.backing.counts()
    assert a.allocator.free_pages_total() == b.allocator.free_pages_total()


def test_a_one_epoch_span_carries_no_epoch_marks():
    shard = shard_of(memhog(("grow", 150_000_000, 0.25, 64 * MIB)))
    log = shard.run_span(0, 1, EPOCH)[0][0]
    assert len(log.touched) and len(log.epoch_seq_ends) == 0


def test_memhog_on_the_fast_allocator_matches_the_reference():
    """memhog's cycle through the shard, fast allocator against the reference: its frees
    of the newest blocks fill the pcp lists that the next grow pops (k_alloc's pop run);
    the reporting worker's passes start at 2 s. Every epoch's ops, the pcp lists and
    counters after every epoch, and the whole allocator state after each cycle, are the
    same."""
    wl = memhog(
        ("grow", 400_000_000, 0.6, 512 * MIB),
        ("free", 200_000_000, 0.2, None),
        ("idle", 100_000_000),
        repeat=True,
    )
    fast, ref = shard_of(wl, fast=True), shard_of(wl, fast=False)
    seen = run_in_lockstep(fast, ref, 2_800_000_000, EPOCH, full_every_ns=700_000_000)
    assert seen["snapshots"] == 4 and seen["reports"] > 0
    held = fast.slots[0].workload.held.count
    assert held == ref.slots[0].workload.held.count
    assert fast.slots[0].workload.stats.pages_freed > NR_PAGES  # cycles really ran
