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

import contextlib
import os
import secrets
from collections.abc import Sequence

from services.guest.epoch_driver import ChunkResults, GroupSamples, HostSamples
from services.guest.shard import merge_group_samples
from services.metrics import MetricsOptions

from ..core_configs import workload_from_params
from ..plan import SimPlan

RAY_ENV_DEFAULTS = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# Ray picks the machine's address as the node address on Linux, and its GCS, raylet,
# agents and workers then listen there (some on every interface); 127.0.0.1 passed
# as the node address is turned back into the machine's address. Its single-machine
# mode (meant for laptops: this variable, read when Ray is imported, and the
# constant it sets) makes every component bind loopback. An embedded cluster is one
# machine by definition, so it runs in that mode (tests/integration/test_ray_loopback.py).
RAY_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RaySession:
    exports_metrics = True  # with metrics options, every actor serves its own /metrics

    def __init__(
        self, plan: SimPlan, hosts_per_actor: int | None, metrics: MetricsOptions | None = None
    ):
        import ray

        from services.guest.actor import remote_class as shard_class
        from services.host.actor import remote_class as host_class

        if not plan.shard_inits:  # a spec always has a guest; the shards make every sync decision
            raise ValueError("a plan without guests has no shard to run")
        self.ray = ray
        self.plan = plan
        self._applied_s: dict[int, float] = {}  # host actor -> apply seconds at the last chunk
        self.critical_s = 0.0  # wall seconds of simulation work on the critical path (metadata)
        token = secrets.token_hex(16)
        host_ids = sorted(plan.host_configs)
        per = hosts_per_actor or max(1, -(-len(host_ids) // max(1, len(plan.shard_inits))))
        groups = [host_ids[i : i + per] for i in range(0, len(host_ids), per)]
        host_actor = host_class().options(scheduling_strategy="SPREAD")
        self.host_actors = [
            host_actor.remote(
                plan.experiment_id, {h: plan.host_configs[h] for h in g}, token, metrics
            )
            for g in groups
        ]
        # every guest registered once, in guest-id order, before any shard starts
        regs = plan.registrations()
        ray.get(
            [
                a.register_guests.remote([(h, r) for h, r in regs if h in g])
                for a, g in zip(self.host_actors, groups, strict=True)
            ]
        )
        addresses = ray.get([a.address.remote() for a in self.host_actors])
        targets = {h: addr for g, addr in zip(groups, addresses, strict=True) for h in g}
        shard_actor = shard_class().options(scheduling_strategy="SPREAD")
        self.shard_actors = [
            shard_actor.remote(
                plan.experiment_id,
                i,
                inits,
                plan.seed,
                targets,
                plan.policy,
                plan.epoch_ns,
                token,
                workload_factory=workload_from_params,
                metrics=metrics,
            )
            for i, inits in enumerate(plan.shard_inits)
        ]
        self.token = token
        self.host_addresses = targets
        # construction errors surface here; every shard serves GuestService for its guests
        self.guest_service_addresses = ray.get(
            [a.start_guest_service.remote() for a in self.shard_actors]
        )
        self._metrics_targets: list[tuple[str, dict[str, str]]] = []
        if metrics is not None:
            for role, actors in (("host", self.host_actors), ("shard", self.shard_actors)):
                for address in ray.get([a.metrics_address.remote() for a in actors]):
                    self._metrics_targets.append((address, {"role": role}))

    def metrics_targets(self) -> list[tuple[str, dict[str, str]]]:
        """Every actor's /metrics address (host:port) and role, for Prometheus' file_sd."""
        return list(self._metrics_targets)

    def run_chunks(
        self,
        first_epoch: int,
        chunks: Sequence[tuple[int, int]],
        pressure: bool,
        last_hosts: HostSamples,
    ) -> ChunkResults:
        """Several sample intervals in one actor call per shard and per host actor.

        Every shard makes each interval's sync decision itself, from the hosts'
        counters kept at its start (they all agree: same rule, same counters);
        host actors return those counters for every interval.
        """
        ends, epoch = [], first_epoch
        for _, count in chunks:
            epoch += count
            ends.append(epoch - 1)
        refs = [
            a.run_chunks.remote(first_epoch, chunks, pressure, last_hosts)
            for a in self.shard_actors
        ]
        refs += [a.samples_at.remote(ends) for a in self.host_actors]
        out = self.ray.get(refs)
        shards, hosts = out[: len(self.shard_actors)], out[len(self.shard_actors) :]
        decisions = {(tuple(s.pressure), s.next_pressure) for s in shards}
        if len(decisions) > 1:
            raise RuntimeError(f"shards disagree on the sync decisions: {sorted(decisions)}")
        result = ChunkResults(
            groups=[merge_group_samples(s.groups[i] for s in shards) for i in range(len(chunks))],
            hosts=[
                {h: c for part, _ in hosts for h, c in part[i].items()} for i in range(len(chunks))
            ],
            pressure=list(shards[0].pressure),
            next_pressure=shards[0].next_pressure,
            events=[e for s in shards for e in s.events],
        )
        for i in range(len(chunks)):  # per interval: the busiest shard, then the busiest host actor
            applied = [walls[i] - self._applied_s.get(a, 0.0) for a, (_, walls) in enumerate(hosts)]
            self._applied_s = {a: walls[i] for a, (_, walls) in enumerate(hosts)}
            self.critical_s += max((s.guest_wall_s[i] for s in shards), default=0.0) + max(
                applied, default=0.0
            )
        return result

    def stats(self) -> dict[str, object]:
        """Per shard and per host actor: wall seconds simulating, syncing and applying (metadata)."""
        return {
            "shard_wall_seconds": self.ray.get([a.timings.remote() for a in self.shard_actors]),
            "host_actor_wall_seconds": self.ray.get([a.timings.remote() for a in self.host_actors]),
            "critical_path_seconds": self.critical_s,
        }

    def skip_to(self, t_ns: int) -> None:
        self.ray.get([a.skip_to.remote(t_ns) for a in self.shard_actors])

    def group_samples(self) -> GroupSamples:
        return merge_group_samples(self.ray.get([a.sample.remote() for a in self.shard_actors]))

    def host_samples(self) -> HostSamples:
        out: dict[int, dict[str, int]] = {}
        for part in self.ray.get([a.samples.remote() for a in self.host_actors]):
            out.update(part)
        return out

    def close(self) -> None:
        ray = self.ray
        for actors in (self.shard_actors, self.host_actors):
            with contextlib.suppress(Exception):  # best effort; the actors are killed next anyway
                ray.get([a.close.remote() for a in actors], timeout=30)
            for a in actors:
                ray.kill(a)


class RayBackend:
    """Ray, embedded or at ``address``; ``hosts_per_actor`` groups hosts into actors."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        hosts_per_actor: int | None = None,
        num_cpus: int | None = None,
    ):
        for key, value in RAY_ENV_DEFAULTS.items():  # set here, not at import time
            os.environ.setdefault(key, value)
        address = address or os.environ.get("RAY_ADDRESS")
        if not address:  # an embedded cluster: before Ray is imported, so it reads it
            os.environ.setdefault(RAY_SINGLE_MACHINE_ENV, "0")
        try:
            import ray
        except ImportError as e:
            raise ImportError(
                "the grpc transport runs on Ray, which is not installed: "
                "pip install 'overcommit-sim[ray]', or use transport='inprocess'"
            ) from e

        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs = dict(
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=True,
                configure_logging=True,
            )
            if address:
                ray.init(address=address, **kwargs)
            else:  # "local": always a new embedded cluster, never a stale one found on disk
                self._init_local(num_cpus, kwargs)
        self.hosts_per_actor = hosts_per_actor
        self.nr_shards_default = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def _init_local(self, num_cpus: int | None, kwargs: dict) -> None:
        """Start the embedded cluster on loopback (see RAY_SINGLE_MACHINE_ENV; when Ray
        was imported before this backend, the constant the variable sets is set too);
        once more if its raylet misses Ray's fixed 30 s start window (seen on a loaded
        2-core machine)."""
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        for attempt in range(2):
            try:
                self.ray.init(address="local", num_cpus=num_cpus, **kwargs)
                return
            except Exception as e:  # Ray raises a bare Exception here
                self.ray.shutdown()
                if attempt == 1 or "timed out during startup" not in str(e):
                    raise

    def start(self, plan: SimPlan, metrics: MetricsOptions | None = None) -> RaySession:
        return RaySession(plan, self.hosts_per_actor, metrics)

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
