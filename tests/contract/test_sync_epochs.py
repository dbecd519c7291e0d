"""SyncEpochs: one shard's messages to several hosts of one server in one call.

Real servers on loopback, the real host core. The batched call must give what the
same messages give one SyncEpoch at a time, refuse a bad batch whole (nothing
stored on any host), name the message it refuses, and be idempotent.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from overcommit.v1 import host_pb2
from services.host.barrier import EpochBarrier
from services.host.directory import HostDirectory
from services.host.servicer import MAX_BATCH, start_host_server
from services.protocol.clients import GrpcHostLink, connect_host
from services.protocol.codec import decode_outcome
from services.protocol.messages import EpochSubmission
from services.transport.server import ServerOptions
from tests.contract.conftest import (
    EPOCH_NS,
    EXPERIMENT,
    guest_ops,
    make_host,
    register,
    sync_request,
)

HOSTS = 3
GUESTS_PER_HOST = 2
EPOCHS = 12


class Cluster:
    """``HOSTS`` hosts behind one server, guests registered for shard 0 (and, with
    ``shards=2``, for shard 1), and a client."""

    def __init__(self, shards: int = 1):
        self.barriers = [EpochBarrier(EXPERIMENT, h, make_host(h)) for h in range(HOSTS)]
        self.server = start_host_server(HostDirectory(self.barriers), ServerOptions())
        self.server.start()
        self.client = connect_host(self.server.address, timeout_s=10.0)
        for h in range(HOSTS):
            for k in range(GUESTS_PER_HOST):
                gid = h * GUESTS_PER_HOST + k
                register(self.client, gid, shard_id=gid % shards, host_id=h)

    def state(self, host_id: int) -> host_pb2.GetHostStateResponse:
        return self.client.get_host_state(
            host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=host_id)
        )

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


def _request(host_id: int, epoch: int, seed: int = 7) -> host_pb2.SyncEpochRequest:
    guests = [
        guest_ops(host_id * GUESTS_PER_HOST + k, seed + epoch) for k in range(GUESTS_PER_HOST)
    ]
    return sync_request(0, epoch, guests, host_id=host_id)


def _digest(c: Cluster) -> list[bytes]:
    return [c.state(h).SerializeToString(deterministic=True) for h in range(HOSTS)]


def test_one_call_for_every_host_gives_what_one_call_per_host_gives() -> None:
    batched, single = Cluster(), Cluster()
    try:
        for epoch in range(EPOCHS):
            requests = [_request(h, epoch) for h in range(HOSTS)]
            got = batched.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests))
            want = [single.client.sync_epoch(r) for r in requests]
            assert [r.SerializeToString(deterministic=True) for r in got.responses] == [
                w.SerializeToString(deterministic=True) for w in want
            ]
        assert _digest(batched) == _digest(single)
        # the hosts did work: touches were applied and reports discarded pages
        counters = batched.state(0).counters
        assert counters["touched_pages"] > 0 and counters["discarded_pages"] > 0
    finally:
        batched.close()
        single.close()


def test_the_link_batches_per_server_and_matches_the_in_order_calls() -> None:
    """GrpcHostLink with one shard sends one SyncEpochs per server per epoch; its
    outcomes equal SyncEpoch's, host by host."""
    batched, single = Cluster(), Cluster()
    link = GrpcHostLink(EXPERIMENT, {h: batched.server.address for h in range(HOSTS)})
    try:
        for epoch in range(EPOCHS):
            subs = {}
            for h in range(HOSTS):
                guests = tuple(
                    guest_ops(h * GUESTS_PER_HOST + k, 7 + epoch) for k in range(GUESTS_PER_HOST)
                )
                subs[h] = EpochSubmission(0, epoch, epoch, (epoch + 1) * EPOCH_NS, guests)
                link.submit(h, subs[h])
            for h in range(HOSTS):
                got = link.collect(h, subs[h])
                want = decode_outcome(single.client.sync_epoch(_request(h, epoch)))
                assert got == want
        assert len(link.sync_latency_s) == EPOCHS  # one call per epoch, not one per host
        assert _digest(batched) == _digest(single)
    finally:
        link.close()
        batched.close()
        single.close()


def test_a_retried_batch_returns_the_stored_answers_and_applies_nothing_twice(
    cluster: Cluster,
) -> None:
    requests = [_request(h, 0) for h in range(HOSTS)]
    first = cluster.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests))
    before = _digest(cluster)
    again = cluster.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests))
    assert again == first
    assert _digest(cluster) == before


def _refused(cluster: Cluster, requests) -> grpc.RpcError:
    before = _digest(cluster)
    with pytest.raises(grpc.RpcError) as info:
        cluster.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests))
    assert _digest(cluster) == before
    for barrier in cluster.barriers:  # nothing stored on any host
        assert barrier.pending_shards() == []
    return info.value


def test_a_bad_message_refuses_the_whole_batch_and_names_it(cluster: Cluster) -> None:
    requests = [_request(h, 0) for h in range(HOSTS)]
    bad = requests[2]
    bad.guests[0].touched.starts[0] = 1 << 40  # beyond the guest
    err = _refused(cluster, requests)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("requests[2].guests[0].touched")
    # the good messages alone still go through afterwards
    cluster.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests[:2]))


def test_a_stale_epoch_in_one_message_refuses_the_batch(cluster: Cluster) -> None:
    cluster.client.sync_epochs(
        host_pb2.SyncEpochsRequest(requests=[_request(h, 0) for h in range(HOSTS)])
    )
    requests = [_request(h, 1) for h in range(HOSTS)]
    requests[1] = _request(1, 0)
    requests[1].epoch = requests[1].sequence = 1  # host 1 waits for epoch 1: fine
    requests[1].epoch_end_ns = 0  # but this end goes back in time
    err = _refused(cluster, requests)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("requests[1].epoch_end_ns=0")


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (lambda rs: rs.append(_request(0, 0)), "INVALID_ARGUMENT", "requests[3].host_id=0"),
        (lambda rs: setattr(rs[1], "shard_id", 1), "INVALID_ARGUMENT", "requests[1].shard_id=1"),
        (lambda rs: setattr(rs[2], "epoch", 5), "INVALID_ARGUMENT", "requests[2].epoch=5"),
        (lambda rs: setattr(rs[1], "sequence", 9), "INVALID_ARGUMENT", "requests[1].sequence=9"),
        (
            lambda rs: setattr(rs[2], "experiment_id", "other"),
            "INVALID_ARGUMENT",
            "requests[2].experiment_id='other'",
        ),
        (lambda rs: setattr(rs[2], "host_id", 99), "NOT_FOUND", "requests[2].host_id=99"),
        (lambda rs: rs.clear(), "INVALID_ARGUMENT", "requests=0"),
    ],
)
def test_malformed_batches_are_refused_naming_the_field(
    cluster: Cluster, mutate, code: str, field: str
) -> None:
    requests = [_request(h, 0) for h in range(HOSTS)]
    mutate(requests)
    err = _refused(cluster, requests)
    assert err.code().name == code
    assert err.details().startswith(field)


def test_too_many_messages_are_refused_before_any_is_read(cluster: Cluster) -> None:
    requests = [sync_request(0, 0, [], host_id=h) for h in range(MAX_BATCH + 1)]
    err = _refused(cluster, requests)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"requests={MAX_BATCH + 1}")


def test_a_batch_waits_for_the_other_shard_of_each_host() -> None:
    """Two shards: the first shard's batch is answered once the second's is in, and the
    result does not depend on which came first."""
    results = []
    for first in (0, 1):
        c = Cluster(shards=2)
        try:
            batches = {
                s: [
                    sync_request(
                        s,
                        0,
                        [guest_ops(h * GUESTS_PER_HOST + s, 3)],
                        host_id=h,
                    )
                    for h in range(HOSTS)
                ]
                for s in (0, 1)
            }
            future = c.client.stub.SyncEpochs.future(
                host_pb2.SyncEpochsRequest(requests=batches[first]), timeout=30
            )
            for barrier in c.barriers:  # stored, waiting for the other shard
                assert barrier.wait_pending([first], 10.0)
            other = c.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=batches[1 - first]))
            mine = future.result()
            answers = {first: mine, 1 - first: other}
            results.append((answers[0], answers[1], _digest(c)))
        finally:
            c.close()
    assert results[0] == results[1]
