"""Run a simulation in one process, without Ray or sockets.

Guest shards and host epoch barriers are plain objects; the epoch driver
reaches the barriers through the in-process host link, which runs the same
validation and barrier code as gRPC without encoding protobuf. Used by tests,
by notebooks that want no cluster, and as the reference for the gRPC path's
overhead.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.guest.core.guest import warm_up as guest_warm_up
from services.guest.epoch_driver import ChunkResults, EpochDriver, GroupSamples, HostSamples
from services.guest.shard import GuestShard
from services.host.barrier import EpochBarrier
from services.host.core.host import Host
from services.host.core.host import warm_up as host_warm_up
from services.host.directory import HostDirectory
from services.metrics import MetricsOptions
from services.protocol.clients import InProcessHostLink
from services.protocol.snapshot import PartInfo, host_part, read_part, shard_part, write_part

from ..plan import SimPlan
from . import ActorLostError, due_kills


class InProcessSession:
    exports_metrics = False  # the coordinator exports this session's hosts and groups
    background_checkpoints = False  # checkpoint parts are written at once

    def __init__(self, plan: SimPlan, fast: bool = True):
        self.plan = plan
        self.fast = fast  # False: the reference allocator (differential tests)
        host_warm_up(next(iter(plan.host_configs.values())))  # as the actors do, before timing
        first = next((g for inits in plan.shard_inits for g in inits), None)
        if first is not None:
            guest_warm_up(first.config)
        self._killed: set[int] = set()  # plan.kills done (never twice, even after a rollback)
        self._written: list[PartInfo] | None = None
        self._build()

    def _build(self) -> None:
        """Every host and shard in its initial state, guests registered."""
        plan = self.plan
        self.barriers = {
            h: EpochBarrier(plan.experiment_id, h, Host(h, cfg))
            for h, cfg in plan.host_configs.items()
        }
        self.link = InProcessHostLink(plan.experiment_id, HostDirectory(self.barriers.values()))
        for host_id, reg in plan.registrations():
            self.link.register(host_id, reg)
        shards = [
            GuestShard(i, inits, plan.seed, fast=self.fast)
            for i, inits in enumerate(plan.shard_inits)
        ]
        self.driver = EpochDriver(
            shards, self.link, plan.policy, sorted(self.barriers), plan.epoch_ns
        )

    def run_chunks(
        self,
        first_epoch: int,
        chunks: Sequence[tuple[int, int]],
        pressure: bool,
        last_hosts: HostSamples,
    ) -> ChunkResults:
        results = self.driver.run_chunks(first_epoch, chunks, pressure, last_hosts)
        due = due_kills(self.plan, self._killed, chunks)
        if due:  # emulated: the call ran, then its actors' state is lost with them
            self._killed.update(due)
            kill = self.plan.kills[due[0]]
            raise ActorLostError(f"{kill.actor} {kill.index} lost (emulated, faults.kill.{due[0]})")
        return results

    def recover(self) -> None:
        """Every host and shard rebuilt from the plan (what restarted actors start from)."""
        self.link.close()
        self._build()

    def skip_to(self, t_ns: int) -> None:
        self.driver.skip_to(t_ns)

    def group_samples(self) -> GroupSamples:
        return self.driver.group_samples()

    def host_samples(self) -> HostSamples:
        return {h: dict(b.host.host_counters()) for h, b in self.barriers.items()}

    def top_guests(self, k: int) -> dict[int, list[tuple[int, dict[str, int]]]]:
        """Each host's ``k`` guests with the most backed memory, by host id."""
        return {h: b.host.top_guests(k) for h, b in sorted(self.barriers.items())}

    def checkpoint(self, directory: str) -> list[PartInfo]:
        """Write every host's and every shard's state (at a sample boundary) to ``directory``."""
        parts = [write_part(directory, host_part(h), b) for h, b in sorted(self.barriers.items())]
        parts += [write_part(directory, shard_part(s.shard_id), s) for s in self.driver.shards]
        return parts

    def checkpoint_begin(self, directory: str) -> None:
        """In process, the parts are written at once (no fork of the caller's process)."""
        self._written = self.checkpoint(directory)

    def checkpoint_end(self) -> list[PartInfo]:
        written, self._written = self._written, None
        if written is None:
            raise RuntimeError("no checkpoint is being written")
        return written

    def restore(self, directory: str, parts: Sequence[PartInfo]) -> None:
        """Roll every host and shard back to the checkpoint whose parts are ``parts``."""
        by_name = {p.name: p for p in parts}
        saved_hosts = {h: read_part(directory, by_name[host_part(h)]) for h in self.barriers}
        saved_shards = [
            read_part(directory, by_name[shard_part(s.shard_id)]) for s in self.driver.shards
        ]
        for h, barrier in self.barriers.items():
            barrier.restore(saved_hosts[h])
        for shard, saved in zip(self.driver.shards, saved_shards, strict=True):
            shard.restore(saved)

    def stats(self) -> dict[str, object]:
        return {
            "shard_wall_seconds": [dict(self.driver.wall)],
            "host_actor_wall_seconds": [
                {"apply_s": sum(b.apply_wall_s for b in self.barriers.values())}
            ],
        }

    def close(self) -> None:
        self.link.close()


class InProcessBackend:
    name = "inprocess"
    nr_shards_default = 1

    def start(self, plan: SimPlan, metrics: MetricsOptions | None = None) -> InProcessSession:
        return InProcessSession(plan)

    def close(self) -> None:
        pass
