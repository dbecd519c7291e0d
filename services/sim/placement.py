"""Where every guest runs: host and guest ids, placement on hosts, and shards.

Ids are dense integers in spec order (host groups, then hosts in a group; guest
groups, then guests in a group), so they depend on the spec alone. Shards hold
contiguous runs of guests sorted by host, which keeps each shard's fan-out to
hosts small; results never depend on the shard count because hosts apply
every epoch in guest-id order.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import ExperimentSpec, GuestGroup, HostGroup, SpecError
from .traces import UsageTrace


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
    memory: int  # bytes: the group's, or (trace groups) the trace's
    trace: UsageTrace | None = None  # the trace this guest replays

    @property
    def discard_mode(self) -> str:
        return self.group.discard_mode or ""


def hosts_of(spec: ExperimentSpec) -> list[HostSlot]:
    out = []
    for group in spec.hosts:
        for i in range(group.count):
            out.append(HostSlot(len(out), group, i))
    return out


def guests_of(
    spec: ExperimentSpec, traces: dict[int, list[UsageTrace]] | None = None
) -> list[tuple[GuestGroup, int, int, UsageTrace | None]]:
    """Every guest as (group, index in group, memory bytes, trace), in spec order.
    ``traces`` holds each trace group's traces (see trace_groups.group_traces)."""
    from .trace_groups import guest_memory

    out = []
    for gi, group in enumerate(spec.guest_groups):
        if group.is_trace:
            if traces is None or gi not in traces:
                raise SpecError([(f"guest_groups.{gi}.workload", "traces were not loaded")])
            for i, t in enumerate(traces[gi]):
                out.append((group, i, guest_memory(group, t), t))
        else:
            assert group.memory is not None  # GuestGroup requires it without a trace
            out.extend((group, i, group.memory, None) for i in range(group.declared_count))
    return out


def place(
    spec: ExperimentSpec, traces: dict[int, list[UsageTrace]] | None = None
) -> tuple[list[HostSlot], list[GuestSlot]]:
    """Place every guest on a host (first_fit or spread) within max_overcommit_ratio."""
    hosts = hosts_of(spec)
    committed = [0] * len(hosts)
    limit = [int(h.group.memory * spec.placement.max_overcommit_ratio) for h in hosts]
    guests: list[GuestSlot] = []
    group_index = {id(g): gi for gi, g in enumerate(spec.guest_groups)}
    for group, i, memory, trace in guests_of(spec, traces):
        fits = [h for h in range(len(hosts)) if committed[h] + memory <= limit[h]]
        if not fits:
            raise SpecError(
                [
                    (
                        f"guest_groups.{group_index[id(group)]}",
                        f"guest {group.name}-{i} ({memory} bytes) fits on no host within "
                        f"placement.max_overcommit_ratio={spec.placement.max_overcommit_ratio}",
                    )
                ]
            )
        if spec.placement.policy == "spread":
            h = min(fits, key=lambda k: (committed[k] / hosts[k].group.memory, k))
        else:
            h = fits[0]
        committed[h] += memory
        guests.append(GuestSlot(len(guests), group, i, h, memory, trace))
    return hosts, guests


def shard_guests(guests: list[GuestSlot], nr_shards: int) -> list[list[GuestSlot]]:
    """Split guests into ``nr_shards`` contiguous runs in (host, guest id) order."""
    if nr_shards <= 0:
        raise ValueError(f"shards must be > 0, got {nr_shards}")
    ordered = sorted(guests, key=lambda g: (g.host_id, g.guest_id))
    n = min(nr_shards, len(ordered))
    return [ordered[i * len(ordered) // n : (i + 1) * len(ordered) // n] for i in range(n)]
