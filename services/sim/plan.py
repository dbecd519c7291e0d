"""A simulation plan: every entity of one run, resolved from the spec.

The plan is plain data that a backend (in-process or Ray) turns into running
objects: host configs by host id, the guests of each shard with their configs,
workloads, start delays and discard modes, every guest's registration with its
host, and the sync policy. Results read the plan (what was placed where), never
the spec again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.guest.core.backing import ReportCost, TouchCost
from services.guest.shard import GuestInit
from services.host.core.config import DISCARD_DISABLED, DISCARD_FREE, HostConfig
from services.host.core.costs import HUGE_1G_BYTES, discard_ns, report_ns
from services.protocol.messages import (
    SYNC_EPOCH_METHOD,
    SYNC_EPOCHS_METHOD,
    SYNC_STREAM_METHOD,
    GuestRegistration,
)
from services.transport.faults import ReplyFaults
from services.units import NS_PER_S, RNG_KIND_START_JITTER

from .core_configs import guest_config, host_config, workload_config
from .placement import GuestSlot, HostSlot, place, shard_guests
from .spec import ExperimentSpec
from .sync_policy import SyncPolicy
from .trace_groups import group_traces


@dataclass(frozen=True)
class Kill:
    """One actor killed while the call simulating ``at_ns`` is in flight."""

    actor: str  # "host" (the actor holding host ``index``) or "shard"
    index: int
    at_ns: int
    how: str  # "actor" (ray.kill) or "process" (SIGKILL of its worker)


@dataclass
class SimPlan:
    experiment_id: str
    seed: int
    epoch_ns: int
    policy: SyncPolicy
    host_configs: dict[int, HostConfig]
    host_names: dict[int, str]
    hosts: list[HostSlot]
    guests: list[GuestSlot]
    shard_inits: list[list[GuestInit]]
    kills: tuple[Kill, ...] = ()  # actors killed mid-run (spec faults.kill)
    reply_faults: ReplyFaults | None = None  # SyncEpoch replies dropped or delayed

    def registrations(self) -> list[tuple[int, GuestRegistration]]:
        """Every guest's (host id, registration), in guest-id order (the order hosts
        lay guests out in, so it must not depend on shards)."""
        regs = [
            (init.host_id, init.registration(shard_id))
            for shard_id, inits in enumerate(self.shard_inits)
            for init in inits
        ]
        return sorted(regs, key=lambda pair: pair[1].guest_id)

    @property
    def physical_bytes(self) -> int:
        return sum(h.group.memory for h in self.hosts)

    @property
    def guest_bytes(self) -> int:
        return sum(g.memory for g in self.guests)


def start_delay_ns(spec: ExperimentSpec, g: GuestSlot) -> int:
    """A guest's workload start delay, from its own seeded stream."""
    delay = g.index * getattr(g.group.workload, "start_stagger", 0)
    jitter = getattr(g.group.workload, "start_jitter", 0)
    if jitter:
        rng = np.random.default_rng(
            np.random.SeedSequence([spec.seed, RNG_KIND_START_JITTER, g.guest_id])
        )
        delay += int(rng.integers(0, jitter))
    return delay


def report_cost(host: HostConfig, discard_mode: str) -> ReportCost:
    """A guest's price of one report call on ``host``: the host's figures (one exit, then the
    discard of each block, per 4 KiB below 2 MiB and per 2 MiB above), as plain ints for
    the guest. What the host discards follows its backing and the guest's discard mode:
    hugetlbfs ignores blocks smaller than its huge page; ``disabled`` only acknowledges."""
    cm = host.costs
    if discard_mode == DISCARD_DISABLED:
        min_order = None
    elif host.hugetlb:
        min_order = host.granule_pages.bit_length() - 1
    else:
        min_order = 0
    return ReportCost(
        exit_ns=report_ns(cm, 1),
        discard_4k_ns=discard_ns(cm, 1, 0),
        discard_2m_ns=discard_ns(cm, 0, 1),
        discard_min_order=min_order,
    )


def touch_cost(host: HostConfig, discard_mode: str) -> TouchCost:
    """A guest's price of a touch on ``host``: the host's fault, zero-fill and swap-in
    figures as plain ints, its granule and whether it backs empty granules at once (THP,
    hugetlbfs), and whether its discards are lazy (MADV_FREE)."""
    cm = host.costs
    gran_bytes = host.granule_pages * 4096
    return TouchCost(
        fault_4k_ns=cm.fault_4k_ns,
        fault_huge_ns=cm.fault_2m_ns,
        zero_4k_bytes_per_s=cm.zero_4k_bytes_per_s,
        zero_huge_bytes_per_s=(
            cm.zero_1g_bytes_per_s if gran_bytes == HUGE_1G_BYTES else cm.zero_2m_bytes_per_s
        ),
        gran_shift=host.granule_pages.bit_length() - 1,
        huge_faults=host.hugetlb or host.thp,
        swap_read_latency_ns=cm.swap_read_latency_ns,
        swap_read_bytes_per_s=cm.swap_read_bytes_per_s,
        zswap=host.zswap.enabled,
        decompress_ns=cm.decompress_ns,
        lazy_discard=discard_mode == DISCARD_FREE and not host.hugetlb,  # hugetlbfs: punch hole
    )


def make_plan(spec: ExperimentSpec, experiment_id: str, nr_shards: int) -> SimPlan:
    hosts, guests = place(spec, group_traces(spec))
    ratio = spec.placement.max_overcommit_ratio
    host_configs = {h.host_id: host_config(h.group, ratio) for h in hosts}
    by_id = {h.host_id: h for h in hosts}
    inits = []
    for shard in shard_guests(guests, nr_shards):
        shard_inits = []
        for g in shard:
            mode = g.group.discard_mode or by_id[g.host_id].group.discard_mode
            shard_inits.append(
                GuestInit(
                    guest_id=g.guest_id,
                    group=g.group.name,
                    host_id=g.host_id,
                    config=guest_config(g.group, g.memory),
                    workload=workload_config(g.group, start_delay_ns(spec, g), g.trace, g.memory),
                    discard_mode=mode,
                    report_cost=report_cost(host_configs[g.host_id], mode),
                    touch_cost=touch_cost(host_configs[g.host_id], mode),
                    reject_reports=spec.faults.reject_reports,
                )
            )
        inits.append(shard_inits)
    faults = spec.faults
    for i, k in enumerate(faults.kill):
        if k.actor == "shard" and k.index >= len(inits):
            raise ValueError(
                f"faults.kill.{i}.index ({k.index}): the run has shards 0..{len(inits) - 1}"
            )
    reply_faults = ReplyFaults(
        methods=(SYNC_EPOCH_METHOD, SYNC_EPOCHS_METHOD, SYNC_STREAM_METHOD),
        drop=faults.drop_replies,
        delay=faults.delay_replies,
        delay_s=faults.reply_delay / NS_PER_S,
        seed=spec.seed,
    )
    return SimPlan(
        kills=tuple(Kill(k.actor, k.index, k.at, k.how) for k in faults.kill),
        reply_faults=reply_faults if reply_faults.active else None,
        experiment_id=experiment_id,
        seed=spec.seed,
        epoch_ns=spec.epoch,
        policy=SyncPolicy(spec.sync_interval // spec.epoch, spec.sync_pressure_fraction),
        host_configs=host_configs,
        host_names={h.host_id: h.name for h in hosts},
        hosts=hosts,
        guests=guests,
        shard_inits=inits,
    )
