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
import signal
import time
from collections.abc import Sequence

from services.guest.epoch_driver import ChunkResults, GroupSamples, HostSamples
from services.guest.shard import merge_group_samples
from services.metrics import MetricsOptions
from services.protocol.snapshot import PartInfo

from ..core_configs import workload_from_params
from ..plan import SimPlan
from . import ActorLostError, due_kills

MAX_ACTOR_RESTARTS = 64  # each recovery restarts every actor once
RECOVER_TIMEOUT_S = 300.0  # restarted actors must be back within this (they rebuild guests)
PROBE_TIMEOUT_S = 30.0
BUSY_PROBE_S = 1.0  # an actor that does not answer a probe this fast is busy, not lost
RESTART_POLL_S = 0.2

RAY_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # actors fork to write checkpoints; the children never use gRPC, so grpcio's fork
    # handlers (and their log line at every fork) are not wanted
    "GRPC_ENABLE_FORK_SUPPORT": "false",
}
# Ray picks the machine's address as the node address on Linux, and its GCS, raylet,
# agents and workers then listen there (some on every interface); 127.0.0.1 passed
# as the node address is turned back into the machine's address. Its single-machine
# mode (meant for laptops: this variable, read when Ray is imported, and the
# constant it sets) makes every component bind loopback. An embedded cluster is one
# machine by definition, so it runs in that mode (tests/integration/test_ray_loopback.py).
RAY_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RaySession:
    exports_metrics = True  # with metrics options, every actor serves its own /metrics
    background_checkpoints = (
        True  # actors write checkpoints from forked copies while the run goes on
    )

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
        self.host_groups = groups
        self._killed: set[int] = set()  # plan.kills done (never twice, even after a rollback)
        self.restarts = 0  # recoveries (every actor restarted once per recovery)
        self.last_processes: list[dict[str, object]] = []
        # a lost actor is restarted by Ray (its constructor runs again); the session then
        # brings every actor back to a checkpoint (recover), so no task is retried
        restart = {"max_restarts": MAX_ACTOR_RESTARTS, "max_task_retries": 0}
        host_actor = host_class().options(scheduling_strategy="SPREAD", **restart)
        self.host_actors = [
            host_actor.remote(
                plan.experiment_id,
                {h: plan.host_configs[h] for h in g},
                token,
                metrics,
                plan.reply_faults,
                shards_syncing_with(plan, g),
            )
            for g in groups
        ]
        targets = self._register_guests()
        shard_actor = shard_class().options(scheduling_strategy="SPREAD", **restart)
        self.shard_actors = [
            shard_actor.remote(
                plan.experiment_id,
                i,
                None,  # the guests come by load_guests (see there)
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
        self._load_guests()
        self.guest_service_addresses = ray.get(
            [a.start_guest_service.remote() for a in self.shard_actors]
        )
        self.metrics = metrics
        self._metrics_targets: list[tuple[str, dict[str, str]]] = []
        self._find_metrics_targets()
        self.last_processes = ray.get([a.process.remote() for a in self._actors()])

    def _register_guests(self) -> dict[int, str]:
        """Register every guest once, in guest-id order, before any shard starts; return
        each host's HostService address."""
        ray, regs = self.ray, self.plan.registrations()
        ray.get(
            [
                a.register_guests.remote([(h, r) for h, r in regs if h in g])
                for a, g in zip(self.host_actors, self.host_groups, strict=True)
            ]
        )
        addresses = ray.get([a.address.remote() for a in self.host_actors])
        return {h: addr for g, addr in zip(self.host_groups, addresses, strict=True) for h in g}

    def _load_guests(self) -> None:
        self.ray.get(
            [
                a.load_guests.remote(inits)
                for a, inits in zip(self.shard_actors, self.plan.shard_inits, strict=True)
            ]
        )

    def _find_metrics_targets(self) -> None:
        self._metrics_targets = []
        if self.metrics is not None:
            for role, actors in (("host", self.host_actors), ("shard", self.shard_actors)):
                for address in self.ray.get([a.metrics_address.remote() for a in actors]):
                    self._metrics_targets.append((address, {"role": role}))

    def _actors(self) -> list:
        return [*self.host_actors, *self.shard_actors]

    def _get(self, refs: list) -> list:
        """``ray.get`` that fails as soon as one task fails (not after the others, which
        may wait for the lost actor); a lost actor raises :class:`ActorLostError`."""
        ray = self.ray
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready)
        except ray.exceptions.RayActorError as e:
            raise ActorLostError(f"actor lost: {type(e).__name__}: {_first_line(e)}") from e
        except ray.exceptions.RayTaskError as e:
            if not self._unchanged():  # a task failed because an actor it talks to died
                raise ActorLostError(f"actor lost: {_first_line(e)}") from e
            raise
        return ray.get(list(refs))

    def _unchanged(self) -> bool:
        """Every actor answers from the process it had when last wired (a restarted
        actor runs in a new process, on new ports)."""
        try:
            procs = self.ray.get(
                [a.process.remote() for a in self._actors()], timeout=PROBE_TIMEOUT_S
            )
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError):
            return False
        return [p["pid"] for p in procs] == [p["pid"] for p in self.last_processes]

    # -- coordinated checkpoints and recovery

    def checkpoint_begin(self, directory: str) -> None:
        """Every actor starts writing its state as it is now, from a forked copy of its
        process, and goes on at once (the writes overlap the next intervals)."""
        self._get([a.checkpoint_begin.remote(directory) for a in self._actors()])

    def checkpoint_end(self) -> list[PartInfo]:
        """The parts of the checkpoint begun last, once every actor's writer is done."""
        refs = [a.checkpoint_end.remote() for a in self._actors()]
        return [p for parts in self._get(refs) for p in parts]

    def restore(self, directory: str, parts: Sequence[PartInfo]) -> None:
        parts = list(parts)
        self._get([a.restore.remote(directory, parts) for a in self._actors()])

    def recover(self) -> None:
        """Restart every actor (Ray restarts each: the lost ones already are, the others
        may be blocked waiting for them), wait until all are back, register the guests
        again and wire shards to the hosts' new addresses."""
        ray = self.ray
        for a in self._actors():
            if self._restarting(a):  # already being restarted: a second kill would race it
                continue
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=False)
        deadline = time.monotonic() + RECOVER_TIMEOUT_S
        while True:
            try:
                self._rewire()
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"actors did not come back within {RECOVER_TIMEOUT_S:g} s: {e}"
                    ) from e
                time.sleep(RESTART_POLL_S)
        self.restarts += 1

    def _restarting(self, actor) -> bool:
        """True if the actor answers a probe with an actor error (dead or restarting);
        False if it answers or is busy (blocked in a call)."""
        ray = self.ray
        try:
            ray.get(actor.process.remote(), timeout=BUSY_PROBE_S)
        except ray.exceptions.RayActorError:
            return True
        except ray.exceptions.GetTimeoutError:
            return False
        return False

    def _rewire(self) -> None:
        """Every actor answers; guests registered; shards reach the hosts' addresses."""
        ray = self.ray
        self.last_processes = ray.get(
            [a.process.remote() for a in self._actors()], timeout=PROBE_TIMEOUT_S
        )
        targets = self._register_guests()
        self._load_guests()
        ray.get([a.retarget.remote(targets) for a in self.shard_actors])
        self.host_addresses = targets
        self.guest_service_addresses = ray.get(
            [a.start_guest_service.remote() for a in self.shard_actors]
        )
        self._find_metrics_targets()

    def processes(self) -> dict[str, list[dict[str, object]]]:
        """Each actor's worker pid and whether Ray restarted it (fault tests)."""
        ray = self.ray
        return {
            "host": ray.get([a.process.remote() for a in self.host_actors]),
            "shard": ray.get([a.process.remote() for a in self.shard_actors]),
        }

    def _kill_due(self, chunks: Sequence[tuple[int, int]]) -> None:
        """Carry out the plan's kills whose time falls in this call (its tasks in flight)."""
        for i in due_kills(self.plan, self._killed, chunks):
            self._killed.add(i)
            kill = self.plan.kills[i]
            if kill.actor == "host":
                g = next(n for n, hs in enumerate(self.host_groups) if kill.index in hs)
                actor = self.host_actors[g]
            else:
                actor = self.shard_actors[kill.index]
            proc = self.last_processes[self._actors().index(actor)]  # the actor is busy now
            here = self.ray.get_runtime_context().get_node_id()
            if kill.how == "process" and proc.get("node") == here:
                os.kill(int(proc["pid"]), signal.SIGKILL)
            else:  # a pid means nothing on another node: Ray kills the actor there
                self.ray.kill(actor, no_restart=False)

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
        self._kill_due(chunks)
        out = self._get(refs)
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
        faults = self.ray.get([a.fault_counts.remote() for a in self.host_actors])
        procs = self.processes()
        return {
            "restarted_actors": sum(bool(p["restarted"]) for ps in procs.values() for p in ps),
            "shard_wall_seconds": self.ray.get([a.timings.remote() for a in self.shard_actors]),
            "host_actor_wall_seconds": self.ray.get([a.timings.remote() for a in self.host_actors]),
            "critical_path_seconds": self.critical_s,
            "recoveries": self.restarts,  # every actor restarted once per recovery
            # since the last recovery (a restarted actor counts afresh)
            "replies_dropped": sum(f["dropped"] for f in faults),
            "replies_delayed": sum(f["delayed"] for f in faults),
        }

    def skip_to(self, t_ns: int) -> None:
        self._get([a.skip_to.remote(t_ns) for a in self.shard_actors])

    def group_samples(self) -> GroupSamples:
        return merge_group_samples(self._get([a.sample.remote() for a in self.shard_actors]))

    def host_samples(self) -> HostSamples:
        out: dict[int, dict[str, int]] = {}
        for part in self._get([a.samples.remote() for a in self.host_actors]):
            out.update(part)
        return out

    def close(self) -> None:
        ray = self.ray
        for actors in (self.shard_actors, self.host_actors):
            with contextlib.suppress(Exception):  # best effort; the actors are killed next anyway
                ray.get([a.close.remote() for a in actors], timeout=30)
            for a in actors:
                ray.kill(a)


def shards_syncing_with(plan: SimPlan, host_ids: Sequence[int]) -> int:
    """How many shards have a guest on one of ``host_ids`` (they sync with its server)."""
    hosts = set(host_ids)
    return sum(any(init.host_id in hosts for init in inits) for inits in plan.shard_inits)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


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
