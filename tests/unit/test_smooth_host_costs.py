"""Host costs are felt as they are paid, within the epoch (issue: progress priced by every
cost): a guest that refaults memory the host discarded makes the same progress with
10 ms and with 50 ms epochs, and a hog that ends when done ends at the same moment
to within one epoch. Real guest shards and hosts, in process."""

from __future__ import annotations

from services.sim.backends.inprocess import InProcessBackend
from services.sim.simulation import Simulation
from services.sim.spec import load_spec_text

SPEC = """
name: smooth
seed: 5
duration: 16s
epoch: {epoch}
sample_interval: 1s
hosts:
  - {{name: h, count: 1, memory: 4GiB, thp: {thp}, discard_mode: dontneed}}
guest_groups:
  - name: hog
    count: 1
    memory: 1GiB
    profile: modern
    reporting: {{enabled: true, order: 9}}
    workload:
      kind: memhog
      phases:
        - {{action: grow, target: 0.7, rate: 1GiB, duration: 5s, until: done}}
        - {{action: free, target: 0.05, duration: 5s, until: done}}
        - {{action: idle, duration: 4s}}
        - {{action: grow, target: 0.7, rate: 1GiB, duration: 5s, until: done}}
        - {{action: touch, rate: 512MiB, duration: 2s}}
        - {{action: free, target: 0.05, duration: 5s, until: done}}
"""


def _run(epoch: str, thp: bool):
    sim = Simulation(
        load_spec_text(SPEC.format(epoch=epoch, thp=str(thp).lower())), InProcessBackend()
    )
    try:
        sim.advance_to(sim.spec.duration)
        slot = next(iter(sim.session.driver.shards[0].slots.values()))
        rows = [r for r in sim.rows if r["kind"] == "guest_group"]
        return slot.workload, slot.lost_ns, rows[-1]
    finally:
        sim.close()


def _host_ns(lost: dict[str, int]) -> int:
    """What the host charged for the guest's touches (report calls are the guest's own)."""
    return sum(ns for kind, ns in lost.items() if kind != "report")


def test_refaults_slow_the_hog_within_the_epoch_not_one_sync_later():
    """Host THP on and off change only what the host charges for the same touches (2 MiB
    faults instead of 4 KiB ones), so the hog's end moves by exactly the difference in
    the host's charges, at either epoch length. When host costs were felt one sync later,
    they fell into the idle phase and the end did not move at all."""
    runs = {(ep, thp): _run(ep, thp) for ep in ("10ms", "50ms") for thp in (True, False)}
    for ep in ("10ms", "50ms"):
        (w_thp, lost_thp, _), (w_4k, lost_4k, _) = runs[ep, True], runs[ep, False]
        assert w_thp.finished and w_4k.finished
        assert lost_4k["fault"] > 5 * lost_thp["fault"] > 0  # the 4 KiB run pays far more
        moved = w_4k.finished_ns - w_thp.finished_ns
        charged = _host_ns(lost_4k) - _host_ns(lost_thp)
        assert abs(moved - charged) < 10_000_000, (ep, moved, charged)
    for thp in (True, False):
        (fine, _, fine_row), (coarse, _, _) = runs["10ms", thp], runs["50ms", thp]
        assert abs(fine.finished_ns - coarse.finished_ns) < 10_000_000
        # every page operation (the touch phase's too) within 0.5 %
        assert abs(fine.stats.ops - coarse.stats.ops) <= 0.005 * coarse.stats.ops
        assert fine_row["ops_total"] == fine.stats.ops


WIS = """
name: wis
seed: 3
duration: 4s
epoch: {epoch}
sample_interval: 1s
hosts:
  - {{name: h, count: 1, memory: 4GiB, thp: true}}
guest_groups:
  - name: wis
    count: 1
    memory: 1GiB
    vcpus: 4
    profile: "5.7"
    reporting: {{enabled: true, order: 9, delay: 100ms}}
    workload: {{kind: page_fault1, tasks: 4, thp: {thp}}}
"""


def test_page_fault1_refaulting_reported_memory_does_not_depend_on_the_epoch():
    """Each task unmaps its region, reporting discards what merged to order 9, and the next
    iteration refaults it on the host: the benchmark's counter is the same with 10 ms and
    50 ms epochs to within 0.5 %, with and without THP."""
    for thp in ("true", "false"):
        ops, lost = [], []
        for ep in ("10ms", "50ms"):
            sim = Simulation(load_spec_text(WIS.format(epoch=ep, thp=thp)), InProcessBackend())
            try:
                sim.advance_to(sim.spec.duration)
                slot = next(iter(sim.session.driver.shards[0].slots.values()))
                ops.append(slot.workload.benchmark_ops)
                lost.append(_host_ns(slot.lost_ns))
            finally:
                sim.close()
        assert min(lost) > 0  # the host charged refaults
        assert abs(ops[0] - ops[1]) <= 0.005 * ops[1], (thp, ops)
