"""Run a simulation on Ray: guest-shard actors talk to host actors over real gRPC.

``ray.init()`` starts an embedded local cluster unless ``address`` (or
``RAY_ADDRESS``) names an existing one, so the same command runs on a laptop
and on a cluster. Actors reserve no CPU (the work is paced by the epoch
barrier, not by Ray's scheduler) and are spread over the cluster's nodes.
Host actors bind their gRPC servers to loopback, so a multi-machine cluster
needs the hosts' ``bind`` widened (see deploy/); on one machine, with one or
several raylets, loopback reaches every actor.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from services.guest.wire import registration

from .entities import SimPlan
from .inprocess import merge_group_samples
from .placement import workload_from_params

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@dataclass(frozen=True)
class HostGuest:
    host_id: int
    guest_id: int
    registration: object  # services.host.transport.GuestRegistration


class RaySession:
    def __init__(self, plan: SimPlan, hosts_per_actor: int | None, metrics: bool):
        import ray

        from services.guest.actor import remote_class as shard_class
        from services.host.actor import remote_class as host_class

        self.ray = ray
        self.plan = plan
        self._applied_s: dict[int, float] = {}  # host actor -> apply seconds at the last chunk
        self.critical_s = 0.0  # wall seconds of simulation work on the critical path (metadata)
        token = secrets.token_hex(16)
        host_ids = sorted(plan.host_configs)
        per = hosts_per_actor or max(1, -(-len(host_ids) // max(1, len(plan.shard_inits))))
        groups = [host_ids[i:i + per] for i in range(0, len(host_ids), per)]
        HostActor = host_class().options(scheduling_strategy="SPREAD")
        self.host_actors = [
            HostActor.remote(plan.experiment_id, {h: plan.host_configs[h] for h in g}, token, metrics,
                             {h: plan.host_names[h] for h in g})
            for g in groups
        ]
        regs = [HostGuest(init.host_id, init.guest_id, registration(init, shard, init.discard_mode))
                for shard, inits in enumerate(plan.shard_inits) for init in inits]
        ray.get([a.register_guests.remote([r for r in regs if r.host_id in g])
                 for a, g in zip(self.host_actors, groups, strict=True)])
        addresses = ray.get([a.address.remote() for a in self.host_actors])
        targets = {h: addr for g, addr in zip(groups, addresses, strict=True) for h in g}
        ShardActor = shard_class().options(scheduling_strategy="SPREAD")
        self.shard_actors = [
            ShardActor.remote(plan.experiment_id, i, inits, plan.seed, plan.report_latency_ns, targets, token,
                              workload_factory=workload_from_params)
            for i, inits in enumerate(plan.shard_inits)
        ]
        self.token = token
        self.host_addresses = targets
        # construction errors surface here; every shard serves GuestService for its guests
        self.guest_service_addresses = ray.get([a.start_guest_service.remote() for a in self.shard_actors])

    def run_chunks(self, first_epoch: int, chunks: list[tuple[int, int]], epoch_ns: int, calm_sync_epochs: int,
                   pressure: bool, last_hs: dict[int, dict[str, int]], pressure_fraction: float,
                   ) -> tuple[list[int | None], list[dict[str, dict[str, int]]], list[dict[int, dict[str, int]]]]:
        """Several sample intervals in one actor call per shard and per host actor.

        Shards decide each interval's sync span from the hosts' counters kept at
        its start (see ShardRunner.run_chunks); host actors return those counters
        for every interval. Returns the shards' next events, the group samples and
        the host samples after each interval.
        """
        ends, epoch = [], first_epoch
        for _, count in chunks:
            epoch += count
            ends.append(epoch - 1)
        refs = [a.run_chunks.remote(first_epoch, chunks, epoch_ns, calm_sync_epochs, pressure, last_hs,
                                    pressure_fraction) for a in self.shard_actors]
        refs += [a.samples_at.remote(ends) for a in self.host_actors]
        out = self.ray.get(refs)
        shards, hosts = out[:len(self.shard_actors)], out[len(self.shard_actors):]
        groups = [merge_group_samples(s[1][i] for s in shards) for i in range(len(chunks))]
        host_samples = [{h: c for part, _ in hosts for h, c in part[i].items()} for i in range(len(chunks))]
        for i in range(len(chunks)):  # per interval: the busiest shard, then the busiest host actor
            applied = [walls[i] - self._applied_s.get(a, 0.0) for a, (_, walls) in enumerate(hosts)]
            self._applied_s = {a: walls[i] for a, (_, walls) in enumerate(hosts)}
            self.critical_s += max((s[2][i] for s in shards), default=0.0) + max(applied, default=0.0)
        return [s[0] for s in shards], groups, host_samples

    def timings(self) -> list[dict[str, float]]:
        """Per shard: wall seconds simulating guests and syncing with hosts (metadata only)."""
        return self.ray.get([a.timings.remote() for a in self.shard_actors])

    def host_timings(self) -> list[dict[str, float]]:
        """Per host actor: wall seconds applying epochs (metadata only)."""
        return self.ray.get([a.timings.remote() for a in self.host_actors])

    def skip_to(self, t_ns: int) -> None:
        self.ray.get([a.skip_to.remote(t_ns) for a in self.shard_actors])

    def group_samples(self) -> dict[str, dict[str, int]]:
        return merge_group_samples(self.ray.get([a.sample.remote() for a in self.shard_actors]))

    def host_samples(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for part in self.ray.get([a.samples.remote() for a in self.host_actors]):
            out.update(part)
        return out

    def close(self) -> None:
        ray = self.ray
        for actors in (self.shard_actors, self.host_actors):
            try:
                ray.get([a.close.remote() for a in actors], timeout=30)
            except Exception:  # noqa: BLE001 - best effort; the actors are killed next anyway
                pass
            for a in actors:
                ray.kill(a)


class RayBackend:
    """Ray, embedded or at ``address``; ``hosts_per_actor`` groups hosts into actors."""

    name = "ray"

    def __init__(self, address: str | None = None, hosts_per_actor: int | None = None, metrics: bool = False,
                 num_cpus: int | None = None):
        import ray

        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            address = address or os.environ.get("RAY_ADDRESS")
            kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True,
                          configure_logging=True)
            if address:
                ray.init(address=address, **kwargs)
            else:  # "local": always a new embedded cluster, never a stale one found on disk
                self._init_local(num_cpus, kwargs)
        self.hosts_per_actor = hosts_per_actor
        self.metrics = metrics
        self.nr_shards_default = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def _init_local(self, num_cpus: int | None, kwargs: dict) -> None:
        """Start the embedded cluster; once more if its raylet misses Ray's fixed
        30 s start window (seen on a loaded 2-core machine)."""
        for attempt in range(2):
            try:
                self.ray.init(address="local", num_cpus=num_cpus, **kwargs)
                return
            except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception here
                self.ray.shutdown()
                if attempt == 1 or "timed out during startup" not in str(e):
                    raise

    def start(self, plan: SimPlan) -> RaySession:
        return RaySession(plan, self.hosts_per_actor, self.metrics)

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
