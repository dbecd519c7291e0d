"""Run a simulation in one process, without Ray or sockets.

The guest shards and host endpoints are plain objects; guests reach hosts
through the in-process HostService transport, which runs the same servicer,
validation and barrier code as gRPC. Used by tests, by notebooks that want no
cluster, and as the reference for the gRPC path's overhead.
"""

from __future__ import annotations

from services.guest.actor import register_request
from services.guest.core.guest import warm_up as guest_warm_up
from services.guest.shard import GuestShard
from services.guest.wire import epoch_request, from_outcome
from services.host.core.counters import any_under_pressure
from services.host.core.pool import Host
from services.host.core.pool import warm_up as host_warm_up
from services.host.transport import (
    HostDirectory,
    HostEndpoint,
    InProcessHostClient,
    decode_outcome,
)

from .entities import SimPlan


class InProcessSession:
    def __init__(self, plan: SimPlan):
        self.plan = plan
        host_warm_up(next(iter(plan.host_configs.values())))  # as the actors do, before timing
        first = next((g for inits in plan.shard_inits for g in inits), None)
        if first is not None:
            guest_warm_up(first.config)
        self.endpoints = {h: HostEndpoint(plan.experiment_id, h, Host(h, cfg)) for h, cfg in plan.host_configs.items()}
        self.client = InProcessHostClient(HostDirectory(self.endpoints.values()))
        self.shards = [
            GuestShard(i, inits, plan.seed, plan.report_latency_ns) for i, inits in enumerate(plan.shard_inits)
        ]
        # guests register in guest-id order (a host lays guests out in registration order)
        for shard_id, init in sorted(((i, g) for i, inits in enumerate(plan.shard_inits) for g in inits),
                                     key=lambda x: x[1].guest_id):
            self.client.register_guest(register_request(plan.experiment_id, shard_id, init))

    def run_epochs(self, first_epoch: int, t0_ns: int, count: int, epoch_ns: int,
                   sync_epochs: int = 1) -> list[int | None]:
        """Like the shard actors: each shard runs and syncs, once per ``sync_epochs``
        epochs, only the spans in which its guests do something (the hosts do not
        wait for the others)."""
        span_ns = sync_epochs * epoch_ns
        nr_spans = -(-count // sync_epochs)
        due = dict.fromkeys(range(len(self.shards)), 0)  # shard -> next span index it runs
        for k in range(nr_spans):
            t = t0_ns + k * span_ns
            epochs = min(sync_epochs, count - k * sync_epochs)
            sent = []
            for i, shard in enumerate(self.shards):
                if due[i] != k:
                    continue
                logs = shard.run_span(t, epochs, epoch_ns)
                due[i] = shard.next_sync_index(t0_ns, k, nr_spans, span_ns)
                next_epoch = first_epoch + due[i] * sync_epochs if due[i] < nr_spans else 0
                for host_id in shard.host_ids():
                    request = epoch_request(self.plan.experiment_id, host_id, shard.shard_id,
                                            first_epoch + k * sync_epochs, t + epochs * epoch_ns,
                                            logs.get(host_id, []), next_epoch, epochs,
                                            sample=k == nr_spans - 1)
                    self.client.submit(request)
                    sent.append((shard, request))
            for shard, request in sent:
                response = self.client.collect(request)
                shard.apply_results(from_outcome(decode_outcome(response)))
            for i, shard in enumerate(self.shards):
                if k + 1 < due[i] < nr_spans and shard.now_ns == t + epochs * epoch_ns:
                    shard.skip_to(t0_ns + due[i] * span_ns)
        return [s.next_event_ns() for s in self.shards]

    def run_chunks(self, first_epoch: int, chunks: list[tuple[int, int]], epoch_ns: int, calm_sync_epochs: int,
                   pressure: bool, last_hs: dict[int, dict[str, int]], pressure_fraction: float,
                   ) -> tuple[list[int | None], list[dict[str, dict[str, int]]], list[dict[int, dict[str, int]]]]:
        """Sample intervals one after another, each synced as the hosts' counters at
        its start decide (the Ray shards apply the same rule to the same counters)."""
        groups, hosts, epoch, events = [], [], first_epoch, []
        for t0_ns, count in chunks:
            events = self.run_epochs(epoch, t0_ns, count, epoch_ns, 1 if pressure else calm_sync_epochs)
            epoch += count
            groups.append(self.group_samples())
            hosts.append(self.host_samples())
            pressure = any_under_pressure(last_hs, hosts[-1], pressure_fraction)
            last_hs = hosts[-1]
        return events, groups, hosts

    def skip_to(self, t_ns: int) -> None:
        for s in self.shards:
            s.skip_to(t_ns)

    def group_samples(self) -> dict[str, dict[str, int]]:
        return merge_group_samples(s.sample() for s in self.shards)

    def host_samples(self) -> dict[int, dict[str, int]]:
        return {h: dict(ep.host.host_counters()) for h, ep in self.endpoints.items()}

    def close(self) -> None:
        pass


def merge_group_samples(samples) -> dict[str, dict[str, int]]:
    """Sum per-group integer samples over shards (exact: order does not matter)."""
    out: dict[str, dict[str, int]] = {}
    for sample in samples:
        for group, sums in sample.items():
            g = out.setdefault(group, {})
            for k, v in sums.items():
                g[k] = g.get(k, 0) + v
    return out


class InProcessBackend:
    name = "inprocess"
    nr_shards_default = 1

    def start(self, plan: SimPlan) -> InProcessSession:
        return InProcessSession(plan)

    def close(self) -> None:
        pass
