"""The guest-shard actor: a thin shell that wires a GuestShard to its hosts over gRPC.

:class:`ShardRunner` is a plain class (unit-testable without Ray);
:data:`GuestShardActor` is the same class as a Ray actor. It owns the epoch
loop for its guests: run every guest through the epoch, send each host one
SyncEpoch with the epoch's op logs, apply the answers. Domain logic lives in
``services/guest/core`` and ``services/guest/shard.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from overcommit.v1 import host_pb2
from services.guest.core.guest import warm_up
from services.guest.shard import GuestInit, GuestShard
from services.guest.transport import (
    AllocOp,
    ApplyOpsResult,
    FreeOp,
    GuestInfo,
    OpResult,
    TouchOp,
    start_guest_server,
)
from services.guest.wire import epoch_request, from_outcome
from services.host.server import connect_host
from services.host.transport import decode_outcome

DISCARD_ENUM = {
    "dontneed": host_pb2.DISCARD_MODE_DONTNEED,
    "free": host_pb2.DISCARD_MODE_FREE,
    "disabled": host_pb2.DISCARD_MODE_DISABLED,
}
SYNC_TIMEOUT_S = 120.0  # one epoch may wait this long for the slowest shard of a host


def register_request(experiment_id: str, shard_id: int, init: GuestInit) -> host_pb2.RegisterGuestRequest:
    c = init.config
    return host_pb2.RegisterGuestRequest(
        experiment_id=experiment_id, host_id=init.host_id, shard_id=shard_id, guest_id=init.guest_id,
        nr_pages=c.nr_pages, discard_mode=DISCARD_ENUM[init.discard_mode], page_size_bytes=4096,
        guest_thp=c.thp, report_capacity=c.reporting.capacity, max_order=c.max_order,
    )


class ShardApi:
    """GuestService's view of a shard (implements ``GuestShardApi``).

    Ops run at the shard's current simulated time, between epochs; what they do
    reaches the host with the next epoch's sync, so the host's prices for touches
    arrive with it (``lost_ns`` here is always 0). A client may free only blocks
    it allocated itself, so it can never free a workload's memory twice.
    """

    def __init__(self, shard: GuestShard, workload_factory: Callable[[str, dict], Any] | None = None):
        self.shard = shard
        self.workload_factory = workload_factory

    def list_guests(self) -> Sequence[GuestInfo]:
        with self.shard.lock:
            out = []
            for gid, s in self.shard.slots.items():
                running = [w for w in (s.workload, *s.extra_workloads) if not w.finished]
                kind = type(running[-1]).__name__.lower() if running else ""
                out.append(GuestInfo(gid, s.init.config.nr_pages, s.init.host_id, self.shard.now_ns, kind))
            return out

    def apply_ops(self, guest_id: int, ops: Sequence[AllocOp | FreeOp | TouchOp]) -> ApplyOpsResult:
        shard = self.shard
        with shard.lock:
            slot = shard.slot(guest_id)
            max_order = slot.init.config.max_order
            frees = {}
            for i, op in enumerate(ops):  # validate everything before changing anything
                if isinstance(op, (AllocOp, FreeOp)) and op.order > max_order:
                    raise ValueError(f"ops[{i}].order={op.order}: above the guest's max_order {max_order}")
                if isinstance(op, FreeOp):
                    frees[i] = shard.check_client_free(guest_id, op.order, np.asarray(op.pfns, np.int64), op.count)
                elif isinstance(op, TouchOp):
                    shard.check_touch(guest_id, np.asarray(op.starts), np.asarray(op.npages))
            results = []
            for i, op in enumerate(ops):
                if isinstance(op, AllocOp):
                    results.append(OpResult(pfns=shard.client_alloc(guest_id, op.order, op.migratetype, op.count)))
                elif isinstance(op, FreeOp):
                    shard.client_free(guest_id, op.order, frees[i])
                    results.append(OpResult(pfns=frees[i]))
                else:
                    shard.client_touch(guest_id, np.asarray(op.starts), np.asarray(op.npages))
                    results.append(OpResult())
            return ApplyOpsResult(results, shard.now_ns)

    def start_workload(self, guest_id: int, workload: str, params: Mapping[str, Any],
                       duration_ns: int) -> tuple[int, int]:
        if self.workload_factory is None:
            raise ValueError("workload: this shard was started without workload support")
        config = self.workload_factory(workload, dict(params))
        with self.shard.lock:
            return self.shard.start_workload(guest_id, config, duration_ns)

    def guest_state(self, guest_id: int) -> Mapping[str, Any]:
        return self.shard.guest_state(guest_id)


class ShardRunner:
    """A GuestShard plus one HostService client per host it has guests on."""

    def __init__(self, experiment_id: str, shard_id: int, guests: list[GuestInit], seed: int,
                 report_latency_ns: int, host_targets: dict[int, str], token: str | None = None,
                 fast: bool = True, workload_factory: Callable[[str, dict], Any] | None = None):
        self.experiment_id = experiment_id
        if guests:
            warm_up(guests[0].config)  # numba kernels load now, not in the first timed epoch
        self.shard = GuestShard(shard_id, guests, seed, report_latency_ns, fast=fast)
        self.clients = {
            h: connect_host(host_targets[h], token=token, experiment_id=experiment_id, timeout_s=SYNC_TIMEOUT_S)
            for h in self.shard.host_ids()
        }
        for init in guests:
            self.clients[init.host_id].register_guest(register_request(experiment_id, shard_id, init))
        self.guest_server = None
        self.wall = {"guests_s": 0.0, "sync_s": 0.0}
        self.workload_factory = workload_factory
        self.token = token

    def run_epochs(self, first_epoch: int, t0_ns: int, count: int, epoch_ns: int,
                   sync_epochs: int = 1) -> int | None:
        """Run the epochs [first_epoch, first_epoch + count) from ``t0_ns``, syncing with
        the hosts once per ``sync_epochs`` epochs, and only in those spans in which
        a guest does something; return the next event."""
        span_ns = sync_epochs * epoch_ns
        nr_spans = -(-count // sync_epochs)
        k = 0
        while k < nr_spans:
            t = t0_ns + k * span_ns
            epochs = min(sync_epochs, count - k * sync_epochs)
            w0 = time.perf_counter()
            logs = self.shard.run_span(t, epochs, epoch_ns)
            nk = self.shard.next_sync_index(t0_ns, k, nr_spans, span_ns)
            self.wall["guests_s"] += time.perf_counter() - w0
            next_epoch = first_epoch + nk * sync_epochs if nk < nr_spans else 0
            for host_id, client in self.clients.items():
                w0 = time.perf_counter()
                request = epoch_request(self.experiment_id, host_id, self.shard.shard_id,
                                        first_epoch + k * sync_epochs, t + epochs * epoch_ns,
                                        logs.get(host_id, []), next_epoch, epochs)
                response = client.sync_epoch(request, timeout_s=SYNC_TIMEOUT_S)
                results = from_outcome(decode_outcome(response))
                self.wall["sync_s"] += time.perf_counter() - w0
                self.shard.apply_results(results)
            if nk > k + 1 and nk < nr_spans:
                self.shard.skip_to(t0_ns + nk * span_ns)
            k = nk
        return self.shard.next_event_ns()

    def run_chunk(self, first_epoch: int, t0_ns: int, count: int, epoch_ns: int,
                  sync_epochs: int = 1) -> tuple[int | None, dict[str, dict[str, int]], float]:
        """:meth:`run_epochs`, then :meth:`sample` (one actor call per sample interval);
        also the wall seconds this chunk spent simulating guests (metadata)."""
        before = self.wall["guests_s"]
        event = self.run_epochs(first_epoch, t0_ns, count, epoch_ns, sync_epochs)
        return event, self.sample(), self.wall["guests_s"] - before

    def timings(self) -> dict[str, float]:
        """Wall-clock seconds spent simulating guests and in host syncs (metadata, not results)."""
        return dict(self.wall)

    def skip_to(self, t_ns: int) -> None:
        self.shard.skip_to(t_ns)

    def sample(self) -> dict[str, dict[str, int]]:
        return self.shard.sample()

    def start_guest_service(self) -> str:
        """Serve GuestService for this shard's guests on a loopback port; return its address."""
        if self.guest_server is None:
            from services.transport.security import TokenStore
            from services.transport.server import ServerOptions

            tokens = TokenStore(tokens={self.experiment_id: self.token}) if self.token else None
            self.guest_server = start_guest_server(ShardApi(self.shard, self.workload_factory),
                                                   ServerOptions(port=0, tokens=tokens),
                                                   experiment_id=self.experiment_id)
            self.guest_server.start()
        return self.guest_server.address

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        if self.guest_server is not None:
            self.guest_server.stop()


def remote_class():
    """The Ray actor class (imported lazily so this module works without Ray)."""
    import ray

    return ray.remote(num_cpus=0)(ShardRunner)
