"""Report calls across epochs: a guest shard, the epoch driver and a real host behind the
in-process host link (plain messages, the real validation and barrier), and whole runs on
the in-process backend.

A call still in flight at the end of an epoch completes in a later one; the op log
records its batch when it completes, so the host applies it in that epoch.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.guest.core.backing import ReportCost
from services.guest.core.config import GuestConfig
from services.guest.core.workloads import IdleConfig
from services.guest.epoch_driver import EpochDriver
from services.guest.shard import GuestInit, GuestShard
from services.host.barrier import EpochBarrier
from services.host.core.config import (
    BACKING_ANON,
    BACKING_HUGETLB_1G,
    BACKING_HUGETLB_2M,
    DISCARD_DISABLED,
    DISCARD_DONTNEED,
    DISCARD_FREE,
    HostConfig,
)
from services.host.core.host import Host
from services.host.directory import HostDirectory
from services.protocol.clients import InProcessHostLink
from services.sim.backends.inprocess import InProcessBackend
from services.sim.plan import report_cost
from services.sim.result_rows import timeseries_frame
from services.sim.simulation import Simulation
from services.sim.spec import load_spec_text
from services.sim.sync_policy import SyncPolicy

MIB = 1 << 20
EPOCH = 50_000_000
LATENCY = 75_000_000  # 1.5 epochs: the first call of the pass at 2 s ends inside epoch 41
NR_PAGES = (256 * MIB) >> 12  # 64 order-10 blocks: two calls of 32 (budget 1, then leftover)
EXPERIMENT = "report-timeline"


class RecordingLink(InProcessHostLink):
    """The in-process link, keeping (epoch, guest id, report op seqs) of every submission."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.reports: list[tuple[int, int, list[int]]] = []

    def submit(self, host_id, sub):
        for g in sub.guests:
            if g.reports:
                self.reports.append((sub.epoch, g.guest_id, [r.op_seq for r in g.reports]))
        super().submit(host_id, sub)


def one_guest_setup(latency_ns=LATENCY):
    init = GuestInit(
        0,
        "g",
        0,
        GuestConfig(nr_pages=NR_PAGES),
        IdleConfig(),
        report_cost=ReportCost(exit_ns=latency_ns),
    )
    shard = GuestShard(0, [init], seed=5, fast=False)
    host = Host(0, HostConfig(memory_bytes=1 << 30))
    link = RecordingLink(EXPERIMENT, HostDirectory([EpochBarrier(EXPERIMENT, 0, host)]))
    link.register(0, init.registration(0))
    driver = EpochDriver([shard], link, SyncPolicy(1, 0.9), [0], EPOCH)
    return shard, host, link, driver


def test_a_call_in_flight_at_an_epoch_end_is_applied_in_the_epoch_it_completes():
    shard, host, link, driver = one_guest_setup()
    worker = shard.slots[0].guest.worker
    seen = {}  # epoch -> (host reports, worker calls completed, call in flight)
    for epoch in range(44):
        driver.run_epochs(epoch, epoch * EPOCH, 1, 1)
        seen[epoch] = (host.guest_counters(0)["reports"], worker.reports, worker.in_flight)
    assert seen[39] == (0, 0, False)
    assert seen[40] == (0, 0, True)  # the pass started at 2.0 s; its call ends at 2.075 s
    assert seen[41] == (1, 1, True)  # applied in epoch 41; the second call ends at 2.15 s
    assert seen[42] == (1, 1, True)
    assert seen[43] == (2, 2, False)  # 2.15 s is the first instant of epoch 43
    assert [(e, g) for e, g, _ in link.reports] == [(41, 0), (43, 0)]
    assert host.guest_counters(0)["reported_pages"] == NR_PAGES
    slot = shard.slots[0]
    assert slot.lost_ns["report"] == 2 * LATENCY == worker.report_ns
    assert shard.sample()["g"]["lost_report_ns_total"] == 2 * LATENCY


def test_skip_ahead_wakes_the_shard_for_a_call_completion():
    """One chunk of 80 epochs: the shard syncs only where its guest acts, and the call
    completions (epochs 41 and 43, with nothing else to do) are such epochs."""
    shard, host, link, driver = one_guest_setup()
    driver.run_epochs(0, 0, 80, 1)
    assert [(e, g) for e, g, _ in link.reports] == [(41, 0), (43, 0)]
    assert host.guest_counters(0)["reports"] == 2
    assert shard.slots[0].guest.next_event_ns() is None


def test_report_time_slows_the_workload_like_host_costs():
    """The lost time of kind report stalls the guest's later epochs (it is stall_ns)."""
    shard, _host, _link, driver = one_guest_setup(latency_ns=3 * EPOCH)
    driver.run_epochs(0, 0, 40, 1)
    slot = shard.slots[0]
    assert slot.stall_ns == 0
    driver.run_epochs(40, 40 * EPOCH, 3, 1)  # the first call completes at the start of epoch 43
    assert slot.lost_ns["report"] == 0 and slot.stall_ns == 0
    driver.run_epochs(43, 43 * EPOCH, 1, 1)
    # charged at the end of epoch 43 (3 epochs of report time), then one epoch paid off
    assert slot.lost_ns["report"] == 3 * EPOCH
    driver.run_epochs(44, 44 * EPOCH, 1, 1)
    assert slot.stall_ns == 2 * EPOCH


@pytest.mark.parametrize(
    "backing,mode",
    [
        (BACKING_ANON, DISCARD_DONTNEED),
        (BACKING_ANON, DISCARD_FREE),
        (BACKING_ANON, DISCARD_DISABLED),
        (BACKING_HUGETLB_2M, DISCARD_DONTNEED),
        (BACKING_HUGETLB_1G, DISCARD_FREE),
    ],
)
def test_the_guest_prices_a_call_as_the_host_charges_it(backing, mode):
    """The plan's ReportCost (the guest's price) equals the host's own latency of the call."""
    config = HostConfig(memory_bytes=2 << 30, backing=backing)
    host = Host(0, config)
    host.add_guest(1, 1 << 18, mode)
    orders = np.array([0, 3, 8, 9, 10, 9, 4], np.int64)
    pfns = np.zeros(len(orders), np.int64)
    at = 0
    for i, o in enumerate(orders.tolist()):
        at = -(-at // (1 << o)) << o  # next aligned pfn
        pfns[i] = at
        at += 1 << o
    price = report_cost(config, mode).price(orders)
    assert price == host.apply_report(1, pfns, orders).latency_ns
    assert price >= config.costs.report_exit_ns


SPEC = """
name: report-timeline
seed: 3
duration: 6s
epoch: 10ms
sample_interval: 500ms
hosts: [{name: h, memory: 512MiB, costs: {report_exit_ns: 25000000}}]
guest_groups:
  - name: hog
    count: 3
    memory: 128MiB
    workload:
      kind: memhog
      start_jitter: 1s
      phases:
        - {action: grow, target: 0.8, rate: 256MiB, duration: 1s}
        - {action: free, target: 0.1, duration: 1s}
        - {action: grow, target: 0.6, rate: 64MiB, duration: 4s}
"""


def run_rows(shards: int):
    spec = load_spec_text(SPEC)
    sim = Simulation(spec, InProcessBackend(), shards=shards)
    sim.advance_to(spec.duration)
    rows = timeseries_frame(sim.rows)
    sim.close()
    return rows


def test_same_results_with_one_or_two_shards():
    """Calls of 25 ms and more (10 ms epochs) are in flight across epoch ends, while the
    guests grow; the results do not depend on how guests are split into shards."""
    one, two = run_rows(1), run_rows(2)
    assert one.equals(two)
    last = one[one.kind == "guest_group"].iloc[-1]
    assert last["report_calls_total"] > 0
    assert last["lost_report_seconds_total"] >= last["report_calls_total"] * 0.025


def test_shard_runner_answers_guest_rpcs_by_call():
    """What serve's GuestService forwards to a Ray shard actor (ShardRunner.guest_rpc),
    tried on the plain class: a real answer, an unknown method and an unknown guest."""
    from overcommit.v1 import guest_pb2
    from services.guest.actor import ShardRunner
    from services.sim.sync_policy import SyncPolicy

    init = GuestInit(0, "g", 0, GuestConfig(nr_pages=4096), IdleConfig())
    runner = ShardRunner("exp", 0, [init], 1, {0: "127.0.0.1:1"}, SyncPolicy(1, 0.85), EPOCH)
    status, payload = runner.guest_rpc(
        "ListGuests", guest_pb2.ListGuestsRequest().SerializeToString()
    )
    assert status == "OK"
    assert [g.guest_id for g in guest_pb2.ListGuestsResponse.FromString(payload).guests] == [0]
    assert runner.guest_rpc("Nope", b"")[0] == "INVALID_ARGUMENT"
    status, details = runner.guest_rpc(
        "GetGuestState", guest_pb2.GetGuestStateRequest(guest_id=5).SerializeToString()
    )
    assert status == "NOT_FOUND" and "guest_id" in details
    runner.close()
