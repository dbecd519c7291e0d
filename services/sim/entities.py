"""A simulation plan: every entity of one run, resolved from the spec.

The plan is plain data that a backend (in-process or Ray) turns into running
objects: host configs by host id, and the guests of each shard with their
configs, workloads, start delays and discard modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.guest.shard import GuestInit
from services.host.core.config import HostConfig
from services.host.core.costs import report_ns

from .placement import (
    GuestSlot,
    HostSlot,
    guest_config,
    host_config,
    place,
    shard_guests,
    workload_config,
)
from .spec import ExperimentSpec

RNG_KIND_START_JITTER = 3


@dataclass(frozen=True)
class SimPlan:
    experiment_id: str
    seed: int
    host_configs: dict[int, HostConfig]
    host_names: dict[int, str]
    hosts: list[HostSlot]
    guests: list[GuestSlot]
    shard_inits: list[list[GuestInit]]
    report_latency_ns: int


def start_delay_ns(spec: ExperimentSpec, g: GuestSlot) -> int:
    """A guest's workload start delay, from its own seeded stream."""
    delay = g.index * getattr(g.group.workload, "start_stagger", 0)
    jitter = getattr(g.group.workload, "start_jitter", 0)
    if jitter:
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, RNG_KIND_START_JITTER, g.guest_id]))
        delay += int(rng.integers(0, jitter))
    return delay


def make_plan(spec: ExperimentSpec, experiment_id: str, nr_shards: int) -> SimPlan:
    hosts, guests = place(spec)
    ratio = spec.placement.max_overcommit_ratio
    host_configs = {h.host_id: host_config(h.group, ratio) for h in hosts}
    by_id = {h.host_id: h for h in hosts}
    inits = []
    for shard in shard_guests(guests, nr_shards):
        inits.append([
            GuestInit(
                guest_id=g.guest_id, group=g.group.name, host_id=g.host_id,
                config=guest_config(g.group),
                workload=workload_config(g.group, start_delay_ns(spec, g)),
                discard_mode=g.group.discard_mode or by_id[g.host_id].group.discard_mode,
            )
            for g in shard
        ])
    costs = next(iter(host_configs.values())).costs
    return SimPlan(
        experiment_id=experiment_id, seed=spec.seed, host_configs=host_configs,
        host_names={h.host_id: h.name for h in hosts}, hosts=hosts, guests=guests, shard_inits=inits,
        report_latency_ns=report_ns(costs, 1),
    )
