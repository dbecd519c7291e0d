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
from services.host.core.counters import any_under_pressure
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
        self.host_targets = dict(host_targets)  # every host of the experiment: samples for sync decisions
        self._other_clients: dict[int, Any] = {}
        self._answer_samples: dict[tuple[int, int], dict[str, int]] = {}  # (host, epoch) -> counters
        self.guest_server = None
        self.wall = {"guests_s": 0.0, "sync_s": 0.0, "samples_s": 0.0}
        self.workload_factory = workload_factory
        self.token = token

    def run_epochs(self, first_epoch: int, t0_ns: int, count: int, epoch_ns: int,
                   sync_epochs: int = 1) -> int | None:
        """Run the epochs [first_epoch, first_epoch + count) from ``t0_ns``, syncing with
        the hosts once per ``sync_epochs`` epochs, and only in those spans in which
        a guest does something; return the next event."""
        span_ns = sync_epochs * epoch_ns
        nr_spans = -(-count // sync_epochs)
        self._answer_samples.clear()  # only this chunk's boundary is asked for
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
                                        logs.get(host_id, []), next_epoch, epochs,
                                        sample=k == nr_spans - 1)
                response = client.sync_epoch(request, timeout_s=SYNC_TIMEOUT_S)
                outcome = decode_outcome(response)
                if outcome.sample is not None:  # the host's counters at this sample boundary
                    self._answer_samples[(host_id, request.epoch + epochs - 1)] = outcome.sample
                results = from_outcome(outcome)
                self.wall["sync_s"] += time.perf_counter() - w0
                self.shard.apply_results(results)
            if nk > k + 1 and nk < nr_spans:
                self.shard.skip_to(t0_ns + nk * span_ns)
            k = nk
        return self.shard.next_event_ns()

    def run_chunks(self, first_epoch: int, chunks: list[tuple[int, int]], epoch_ns: int, calm_sync_epochs: int,
                   pressure: bool, last_hs: dict[int, dict[str, int]], pressure_fraction: float,
                   ) -> tuple[int | None, list[dict[str, dict[str, int]]], list[float]]:
        """Run several sample intervals (``chunks``: (start ns, epochs) each) in one call.

        Each interval syncs every epoch if ``pressure`` (for the first) or if any
        host was under pressure at its start, else once per ``calm_sync_epochs``:
        the coordinator's rule, applied here to every host's counters kept at the
        interval boundaries (``last_hs``: at the boundary before the first), so the
        decision is the same in every shard. Returns the next event, the shard's
        sample after each interval, and its guest wall seconds per interval.
        """
        samples, guest_s = [], []
        epoch, prev, event = first_epoch, dict(last_hs), None
        for i, (t0_ns, count) in enumerate(chunks):
            before = self.wall["guests_s"]
            event = self.run_epochs(epoch, t0_ns, count, epoch_ns, 1 if pressure else calm_sync_epochs)
            guest_s.append(self.wall["guests_s"] - before)
            w0 = time.perf_counter()
            samples.append(self.sample())
            epoch += count
            if i < len(chunks) - 1:
                now = {h: self._host_sample(h, epoch - 1) for h in sorted(self.host_targets)}
                pressure = any_under_pressure(prev, now, pressure_fraction)
                prev = now
            self.wall["samples_s"] += time.perf_counter() - w0
        return event, samples, guest_s

    def _host_sample(self, host_id: int, epoch: int) -> dict[str, int]:
        """A host's counters kept after ``epoch`` (the end of a sample interval): from
        the answer to this shard's last sync of the interval, else asked for."""
        kept = self._answer_samples.pop((host_id, epoch), None)
        if kept is not None:
            return kept
        client = self.clients.get(host_id) or self._other_clients.get(host_id)
        if client is None:
            client = self._other_clients[host_id] = connect_host(
                self.host_targets[host_id], token=self.token, experiment_id=self.experiment_id,
                timeout_s=SYNC_TIMEOUT_S)
        response = client.get_host_state(host_pb2.GetHostStateRequest(
            experiment_id=self.experiment_id, host_id=host_id, sample_epoch=epoch), timeout_s=SYNC_TIMEOUT_S)
        return dict(response.counters)

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
        for c in (*self.clients.values(), *self._other_clients.values()):
            c.close()
        if self.guest_server is not None:
            self.guest_server.stop()


def remote_class():
    """The Ray actor class (imported lazily so this module works without Ray)."""
    import ray

    return ray.remote(num_cpus=0)(ShardRunner)
