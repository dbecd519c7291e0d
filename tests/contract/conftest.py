"""Fixtures for contract tests: real gRPC servers on 127.0.0.1 port 0, the real host core."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from overcommit.v1 import host_pb2
from services.host.barrier import EpochBarrier
from services.host.core.config import HostConfig, SwapConfig
from services.host.core.host import Host
from services.host.directory import HostDirectory
from services.host.servicer import host_service_binding, start_host_server, streams_allowed
from services.protocol.clients import HostClient, connect_host
from services.protocol.codec import encode_submission
from services.protocol.messages import EpochSubmission, GuestOps, PageRunOps, ReportOp
from services.transport.server import GrpcServer, ServerOptions, build_server
from tests.contract.certs import Pki, make_test_pki

EXPERIMENT = "exp-contract"
GUEST_PAGES = 1 << 15  # 128 MiB guests
HOST_MEMORY_BYTES = 256 << 20  # small enough that a few touching guests make it reclaim
EPOCH_NS = 50_000_000


def make_host(host_id: int = 0, memory_bytes: int = HOST_MEMORY_BYTES) -> Host:
    return Host(
        host_id, HostConfig(memory_bytes=memory_bytes, swap=SwapConfig(capacity_bytes=1 << 30))
    )


def register(
    client, guest_id: int, shard_id: int = 0, nr_pages: int = GUEST_PAGES, host_id: int = 0, **extra
) -> host_pb2.RegisterGuestResponse:
    return client.register_guest(
        host_pb2.RegisterGuestRequest(
            experiment_id=EXPERIMENT,
            host_id=host_id,
            shard_id=shard_id,
            guest_id=guest_id,
            nr_pages=nr_pages,
            discard_mode=host_pb2.DISCARD_MODE_DONTNEED,
            **extra,
        )
    )


def u64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


def guest_ops(
    guest_id: int,
    seed: int,
    nr_pages: int = GUEST_PAGES,
    reports: int = 2,
    touches: int = 3,
    report_blocks: int = 32,
) -> GuestOps:
    """A realistic mix for one guest: touch runs, order-9 reports, more touches, interleaved."""
    rng = np.random.default_rng([seed, guest_id])
    blocks = nr_pages >> 9
    seq = 0
    report_ops = []
    t_starts, t_npages, t_seqs = [], [], []
    for _ in range(touches):
        seq += 1
        for start in rng.choice(nr_pages // 64, size=4, replace=False) * 64:
            t_starts.append(int(start))
            t_npages.append(64)
            t_seqs.append(seq)
    for _ in range(reports):
        seq += 1
        chosen = np.sort(rng.choice(blocks, size=min(report_blocks, blocks), replace=False)) << 9
        report_ops.append(ReportOp(seq, u64(chosen), np.full(len(chosen), 9, np.uint32)))
        seq += 1
        t_starts.append(int(chosen[0]))
        t_npages.append(512)
        t_seqs.append(seq)
    return GuestOps(
        guest_id, tuple(report_ops), PageRunOps(u64(t_starts), u64(t_npages), u64(t_seqs))
    )


def build_sync_request(
    experiment_id: str,
    host_id: int,
    shard_id: int,
    epoch: int,
    sequence: int,
    epoch_end_ns: int,
    guests,
    next_epoch: int = 0,
    epochs: int = 1,
    sample: bool = False,
) -> host_pb2.SyncEpochRequest:
    """A SyncEpochRequest as a shard's link encodes it (through the protocol's codec)."""
    return encode_submission(
        experiment_id,
        host_id,
        EpochSubmission(
            shard_id, epoch, sequence, epoch_end_ns, tuple(guests), next_epoch, epochs, sample
        ),
    )


def sync_request(
    shard_id: int, epoch: int, guests, sequence: int | None = None, host_id: int = 0
) -> host_pb2.SyncEpochRequest:
    return build_sync_request(
        EXPERIMENT,
        host_id,
        shard_id,
        epoch,
        epoch if sequence is None else sequence,
        (epoch + 1) * EPOCH_NS,
        guests,
    )


def state_of(client) -> host_pb2.GetHostStateResponse:
    return client.get_host_state(host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=0))


@dataclass
class RunningHost:
    directory: HostDirectory
    endpoint: EpochBarrier
    server: GrpcServer
    client: HostClient


@pytest.fixture
def running_host() -> Iterator[RunningHost]:
    """One real host core behind a real HostService server, and a connected client."""
    endpoint = EpochBarrier(EXPERIMENT, 0, make_host())
    directory = HostDirectory([endpoint])
    server = start_host_server(directory, ServerOptions())
    with server:
        client = connect_host(server.address, timeout_s=10.0)
        try:
            yield RunningHost(directory, endpoint, server, client)
        finally:
            client.close()


@pytest.fixture(scope="session")
def pki() -> Pki:
    return make_test_pki()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes (a bound, not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.01)
    return True


class HostCluster:
    """``hosts`` hosts behind one real server (``options``; SyncStream streams up to
    ``max_streams``, by default half its workers as start_host_server allows), each with
    ``guests_per_host`` guests registered, guest g for shard g % ``shards``; ``client``
    speaks to it (with ``token``)."""

    def __init__(
        self,
        hosts: int,
        guests_per_host: int = 2,
        shards: int = 1,
        options: ServerOptions | None = None,
        max_streams: int | None = None,
        token: str | None = None,
    ):
        self.hosts = hosts
        options = options or ServerOptions()
        self.barriers = [EpochBarrier(EXPERIMENT, h, make_host(h)) for h in range(hosts)]
        directory = HostDirectory(self.barriers)
        if max_streams is None:
            max_streams = streams_allowed(options.max_workers)
        binding = host_service_binding(directory, max_streams=max_streams)
        self.servicer = binding.servicer
        self.server = build_server(options, [binding])
        self.server.start()
        self.client = connect_host(self.server.address, token=token, timeout_s=10.0)
        for h in range(hosts):
            for k in range(guests_per_host):
                gid = h * guests_per_host + k
                register(self.client, gid, shard_id=gid % shards, host_id=h)

    def state(self, host_id: int) -> host_pb2.GetHostStateResponse:
        return self.client.get_host_state(
            host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=host_id)
        )

    def digest(self) -> list[bytes]:
        """Every host's state, serialized (equal digests: equal hosts)."""
        return [self.state(h).SerializeToString(deterministic=True) for h in range(self.hosts)]

    def close(self) -> None:
        self.client.close()
        self.server.stop()
