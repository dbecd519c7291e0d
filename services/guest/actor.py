"""The guest-shard actor: a thin shell that runs one GuestShard with the epoch driver over gRPC.

:class:`ShardRunner` is a plain class (unit-testable without Ray);
:func:`remote_class` makes it a Ray actor. The epoch loop is
:class:`~services.guest.epoch_driver.EpochDriver`'s; the hosts are reached
through a :class:`~services.protocol.clients.GrpcHostLink`. Guests are
registered with their hosts by the Ray session before shards start. Each shard
also serves GuestService for its guests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from overcommit.v1 import guest_pb2
from services.actor_support import node_id, was_restarted
from services.guest.core.guest import warm_up
from services.metrics import MetricsEndpoint, MetricsOptions, SnapshotCollector, entity_rows
from services.protocol.clients import GrpcHostLink
from services.protocol.snapshot import (
    CheckpointWriter,
    PartInfo,
    read_part,
    shard_part,
)
from services.transport.client import RetryPolicy
from services.transport.errors import StatusError
from services.transport.security import TokenStore
from services.transport.server import ServerOptions

from .epoch_driver import ChunkResults, EpochDriver, SyncDecision
from .guest_service import GuestServicer, start_guest_server
from .shard import GuestInit, GuestShard
from .shard_api import ShardApi, shard_within

# SyncEpoch is idempotent: retried on UNAVAILABLE (a dropped reply, a host restarting)
# while its deadline allows, so even a high injected drop rate never fails a call
SYNC_RETRY = RetryPolicy(max_attempts=40)

_GUEST_REQUESTS = {
    "ListGuests": guest_pb2.ListGuestsRequest,
    "ApplyOps": guest_pb2.ApplyOpsRequest,
    "StartWorkload": guest_pb2.StartWorkloadRequest,
    "GetGuestState": guest_pb2.GetGuestStateRequest,
}


class ShardRunner:
    """One GuestShard, its epoch driver and its GuestService server."""

    # a Ray actor's constructor: RayBackend passes the shard's parameters positionally
    def __init__(  # noqa: PLR0913, PLR0917
        self,
        experiment_id: str,
        shard_id: int,
        guests: list[GuestInit],
        seed: int,
        host_targets: dict[int, str],
        policy: SyncDecision,
        epoch_ns: int,
        token: str | None = None,
        fast: bool = True,
        workload_factory: Callable[[str, dict], Any] | None = None,
        metrics: MetricsOptions | None = None,
    ):
        self.experiment_id = experiment_id
        self.seed, self.fast = seed, fast
        self._writer = CheckpointWriter()  # checkpoints written in the background
        self.shard = GuestShard(shard_id, [], seed, fast=fast)
        self.link = GrpcHostLink(experiment_id, host_targets, token=token, retry=SYNC_RETRY)
        self.driver = EpochDriver([self.shard], self.link, policy, sorted(host_targets), epoch_ns)
        self.guest_server = None
        self.workload_factory = workload_factory
        self.token = token
        self._servicer: GuestServicer | None = None  # for guest_rpc, made on first use
        if guests:
            self.load_guests(guests)
        self._collector: SnapshotCollector | None = None
        self._endpoint: MetricsEndpoint | None = None
        if metrics is not None:  # /metrics on loopback: this shard's part of each group
            labels = {**metrics.labels, "shard": str(shard_id)}
            self._collector = SnapshotCollector(labels, metrics.namer, metrics.help)
            self._endpoint = MetricsEndpoint([self._collector])
            self._export(self.shard.sample())

    def load_guests(self, guests: list[GuestInit]) -> None:
        """Build the shard's guests (the Ray session sends them by this call, not with
        the constructor, so a restarted actor never depends on constructor arguments
        kept in Ray's object store; it loads them again on recovery)."""
        if self.shard.slots or self.guest_server is not None:
            if sorted(self.shard.slots) == sorted(g.guest_id for g in guests):
                return  # loaded already (a recovery that was retried)
            raise RuntimeError(f"shard {self.shard.shard_id} already has other guests")
        if guests:
            warm_up(guests[0].config)  # numba kernels load now, not in the first timed epoch
        self.shard = GuestShard(self.shard.shard_id, guests, self.seed, fast=self.fast)
        self.driver.shards = [self.shard]
        self._servicer = None

    def metrics_address(self) -> str | None:
        return self._endpoint.address if self._endpoint else None

    def _export(self, groups: dict[str, dict[str, int]]) -> None:
        if self._collector is not None:
            self._collector.update(entity_rows("guest_group", groups))

    def run_chunks(
        self,
        first_epoch: int,
        chunks: Sequence[tuple[int, int]],
        pressure: bool,
        last_hosts: dict[int, dict[str, int]],
    ) -> ChunkResults:
        results = self.driver.run_chunks(first_epoch, chunks, pressure, last_hosts)
        if results.groups:
            self._export(results.groups[-1])
        return results

    # -- coordinated checkpoints and recovery

    def checkpoint_begin(self, directory: str) -> None:
        """Start writing this shard's state as it is now, from a forked copy of this
        process (the guests go on at once); :meth:`checkpoint_end` collects the part."""
        part = shard_part(self.shard.shard_id)
        self._writer.begin(directory, [(part, self.shard)], [self.shard.lock])

    def checkpoint_end(self) -> list[PartInfo]:
        return self._writer.end()

    def restore(self, directory: str, parts: list[PartInfo]) -> None:
        """Roll this shard back to a checkpoint (its part checked first)."""
        by_name = {p.name: p for p in parts}
        self.shard.restore(read_part(directory, by_name[shard_part(self.shard.shard_id)]))
        self._export(self.shard.sample())

    def retarget(self, host_targets: dict[int, str]) -> None:
        """Reach the hosts at new addresses (host actors restarted on other ports)."""
        self.link.close()
        self.link = GrpcHostLink(
            self.experiment_id, host_targets, token=self.token, retry=SYNC_RETRY
        )
        self.driver.link = self.link

    def process(self) -> dict[str, object]:
        """This actor's worker process id and whether Ray restarted it (fault tests)."""
        import os

        return {"pid": os.getpid(), "restarted": was_restarted(), "node": node_id()}

    def timings(self) -> dict[str, float]:
        """Wall-clock seconds spent simulating guests and in host syncs (metadata, not results)."""
        return dict(self.driver.wall)

    def load_figures(self) -> dict[str, object]:
        """Report ranges this shard's guests sent (in calls acknowledged ok) and gave back
        unreported (in failed calls), and every SyncEpoch latency so far (bench/load.py)."""
        sent = returned = 0
        for slot in self.shard.slots.values():
            sent += slot.guest.worker.reported_blocks
            returned += slot.guest.worker.returned_blocks
        return {
            "ranges_sent": sent,
            "ranges_returned": returned,
            "sync_latency_s": list(self.link.sync_latency_s),
        }

    def skip_to(self, t_ns: int) -> None:
        self.shard.skip_to(t_ns)

    def sample(self) -> dict[str, dict[str, int]]:
        return self.shard.sample()

    def start_guest_service(self) -> str:
        """Serve GuestService for this shard's guests on a loopback port; return its address."""
        if self.guest_server is None:
            tokens = TokenStore(tokens={self.experiment_id: self.token}) if self.token else None
            self.guest_server = start_guest_server(
                ShardApi(self.shard, self.workload_factory),
                ServerOptions(port=0, tokens=tokens),
                experiment_id=self.experiment_id,
            )
            self.guest_server.start()
        return self.guest_server.address

    def guest_rpc(
        self, rpc: str, request: bytes, wait_s: float | None = None
    ) -> tuple[str, bytes | str]:
        """One GuestService call by Ray (``overcommit serve`` forwards its clients' calls
        this way: it reaches shards on every node without opening a socket). Returns
        ("OK", the serialized response) or (status code name, details). ``wait_s``: the
        call's time left when it was sent (None: no deadline); a call that could not
        get the shard within it does nothing (DEADLINE_EXCEEDED)."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        cls = _GUEST_REQUESTS.get(rpc)
        if cls is None:
            return ("INVALID_ARGUMENT", f"rpc={rpc!r}: not a GuestService method")
        message = cls.FromString(request)
        message.experiment_id = ""  # this shard's only experiment
        if self._servicer is None:
            self._servicer = GuestServicer(ShardApi(self.shard, self.workload_factory))
        try:
            with shard_within(self.shard, deadline):
                response = getattr(self._servicer, rpc)(message, None)
        except StatusError as e:
            return (e.code().name, e.details())
        return ("OK", response.SerializeToString())

    def close(self) -> None:
        self.link.close()
        if self._endpoint is not None:
            self._endpoint.close()
        if self.guest_server is not None:
            self.guest_server.stop()


def remote_class():
    """The Ray actor class (imported lazily so this module works without Ray)."""
    import ray

    return ray.remote(num_cpus=0)(ShardRunner)
