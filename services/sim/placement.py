"""Turning a spec into entities: host ids, guest ids, placement and shards.

Ids are dense integers in spec order (host groups, then hosts in a group; guest
groups, then guests in a group), so they depend on the spec alone. Shards hold
contiguous runs of guests sorted by host, which keeps each shard's fan-out to
hosts small; results never depend on the shard count because hosts apply
every epoch in guest-id order.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.guest.core.config import GuestConfig, ReportingConfig
from services.guest.core.workloads import IdleConfig, MemhogConfig, PhaseConfig
from services.host.core.config import HostConfig, SwapConfig, ZswapConfig
from services.host.core.costs import CostModel

from .spec import ExperimentSpec, GuestGroup, HostGroup, SpecError

PAGE_SIZE = 4096


@dataclass(frozen=True)
class HostSlot:
    host_id: int
    group: HostGroup
    index: int  # within its group

    @property
    def name(self) -> str:
        return f"{self.group.name}-{self.index}"


@dataclass(frozen=True)
class GuestSlot:
    guest_id: int
    group: GuestGroup
    index: int
    host_id: int

    @property
    def discard_mode(self) -> str:
        return self.group.discard_mode or ""


def guest_config(group: GuestGroup) -> GuestConfig:
    r = group.reporting
    return GuestConfig(
        nr_pages=group.memory // PAGE_SIZE,
        zones=group.zones,
        profile=group.profile,
        thp=group.thp,
        shuffle=group.shuffle,
        reporting=ReportingConfig(
            enabled=r.enabled, order=r.order, capacity=r.capacity, delay_ns=r.delay,
            budget_divisor=r.budget_divisor,
        ),
    )


def workload_config(group: GuestGroup, start_delay_ns: int = 0) -> MemhogConfig | IdleConfig:
    return _core_workload(group.workload, start_delay_ns)


def _core_workload(w, start_delay_ns: int = 0) -> MemhogConfig | IdleConfig:
    """A validated spec workload -> the guest core's workload config."""
    if w.kind == "idle":
        return IdleConfig(initial_fill=w.initial_fill)
    phases = tuple(
        PhaseConfig(action=p.action, duration_ns=p.duration, target=p.target, rate_bytes_per_s=p.rate)
        for p in w.phases
    )
    return MemhogConfig(phases=phases, repeat=w.repeat, thp=w.thp, start_delay_ns=start_delay_ns)


def hosts_of(spec: ExperimentSpec) -> list[HostSlot]:
    out = []
    for group in spec.hosts:
        for i in range(group.count):
            out.append(HostSlot(len(out), group, i))
    return out


def place(spec: ExperimentSpec) -> tuple[list[HostSlot], list[GuestSlot]]:
    """Place every guest on a host (first_fit or spread) within max_overcommit_ratio."""
    hosts = hosts_of(spec)
    committed = [0] * len(hosts)
    limit = [int(h.group.memory * spec.placement.max_overcommit_ratio) for h in hosts]
    guests: list[GuestSlot] = []
    for gi, group in enumerate(spec.guest_groups):
        for i in range(group.count):
            fits = [h for h in range(len(hosts)) if committed[h] + group.memory <= limit[h]]
            if not fits:
                raise SpecError([(
                    f"guest_groups.{gi}",
                    f"guest {group.name}-{i} ({group.memory} bytes) fits on no host within "
                    f"placement.max_overcommit_ratio={spec.placement.max_overcommit_ratio}",
                )])
            if spec.placement.policy == "spread":
                h = min(fits, key=lambda k: (committed[k] / hosts[k].group.memory, k))
            else:
                h = fits[0]
            committed[h] += group.memory
            guests.append(GuestSlot(len(guests), group, i, h))
    return hosts, guests


def shard_guests(guests: list[GuestSlot], nr_shards: int) -> list[list[GuestSlot]]:
    """Split guests into ``nr_shards`` contiguous runs in (host, guest id) order."""
    if nr_shards <= 0:
        raise ValueError(f"shards must be > 0, got {nr_shards}")
    ordered = sorted(guests, key=lambda g: (g.host_id, g.guest_id))
    n = min(nr_shards, len(ordered))
    return [ordered[i * len(ordered) // n:(i + 1) * len(ordered) // n] for i in range(n)]


def host_config(group: HostGroup, max_overcommit_ratio: float) -> HostConfig:
    """The host core's config for one host of ``group`` (costs: defaults + overrides)."""
    sw = group.swap
    costs = {
        "swap_read_latency_ns": sw.read_latency,
        "swap_read_bytes_per_s": sw.read_bytes_per_s,
        "swap_write_latency_ns": sw.write_latency,
        "swap_write_bytes_per_s": sw.write_bytes_per_s,
    }
    costs.update(group.costs)
    try:
        cost_model = CostModel(**costs)
    except (TypeError, ValueError) as e:
        raise SpecError([(f"hosts.{group.name}.costs", str(e))]) from None
    zs = group.zswap
    pool = int(group.memory * zs.max_pool_fraction) // PAGE_SIZE * PAGE_SIZE
    return HostConfig(
        memory_bytes=group.memory,
        reserve_bytes=group.reserve,
        backing=group.backing,
        thp=group.thp,
        swap=SwapConfig(capacity_bytes=sw.capacity // PAGE_SIZE * PAGE_SIZE),
        zswap=ZswapConfig(enabled=zs.enabled, compression_ratio=zs.compression_ratio, max_pool_bytes=max(pool, PAGE_SIZE)),
        oom_policy=group.oom_policy,
        max_overcommit_ratio=max_overcommit_ratio,
        costs=cost_model,
    )


def workload_from_params(kind: str, params: dict) -> MemhogConfig | IdleConfig:
    """A GuestService StartWorkload request's workload, validated like a spec's."""
    from pydantic import TypeAdapter, ValidationError

    from .spec import Workload

    try:
        w = TypeAdapter(Workload).validate_python({**params, "kind": kind})
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"params.{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}") from None
    return _core_workload(w)
