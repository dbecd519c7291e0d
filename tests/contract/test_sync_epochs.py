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
from services.host.servicer import MAX_BATCH
from services.protocol.clients import GrpcHostLink
from services.protocol.codec import decode_outcome
from services.protocol.messages import EpochSubmission
from tests.contract.conftest import (
    EPOCH_NS,
    EXPERIMENT,
    HostCluster,
    guest_ops,
    sync_request,
)

HOSTS = 3
GUESTS_PER_HOST = 2
EPOCHS = 12


def _cluster(shards: int = 1) -> HostCluster:
    """``HOSTS`` hosts behind one server, guests registered for shard 0 (and, with
    ``shards=2``, for shard 1), and a client."""
    return HostCluster(HOSTS, GUESTS_PER_HOST, shards)


@pytest.fixture
def cluster() -> Iterator[HostCluster]:
    c = _cluster()
    try:
        yield c
    finally:
        c.close()


def _request(host_id: int, epoch: int, seed: int = 7) -> host_pb2.SyncEpochRequest:
    guests = [
        guest_ops(host_id * GUESTS_PER_HOST + k, seed + epoch) for k in range(GUESTS_PER_HOST)
    ]
    return sync_request(0, epoch, guests, host_id=host_id)


def test_one_call_for_every_host_gives_what_one_call_per_host_gives() -> None:
    batched, single = _cluster(), _cluster()
    try:
        for epoch in range(EPOCHS):
            requests = [_request(h, epoch) for h in range(HOSTS)]
            got = batched.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests))
            want = [single.client.sync_epoch(r) for r in requests]
            assert [r.SerializeToString(deterministic=True) for r in got.responses] == [
                w.SerializeToString(deterministic=True) for w in want
            ]
        assert batched.digest() == single.digest()
        # the hosts did work: touches were applied and reports discarded pages
        counters = batched.state(0).counters
        assert counters["touched_pages"] > 0 and counters["discarded_pages"] > 0
    finally:
        batched.close()
        single.close()


def test_the_link_batches_per_server_and_matches_the_in_order_calls() -> None:
    """GrpcHostLink with one shard sends one SyncEpochs per server per epoch; its
    outcomes equal SyncEpoch's, host by host."""
    batched, single = _cluster(), _cluster()
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
        assert batched.digest() == single.digest()
    finally:
        link.close()
        batched.close()
        single.close()


def test_a_retried_batch_returns_the_stored_answers_and_applies_nothing_twice(
    cluster: HostCluster,
) -> None:
    requests = [_request(h, 0) for h in range(HOSTS)]
    first = cluster.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests))
    before = cluster.digest()
    again = cluster.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests))
    assert again == first
    assert cluster.digest() == before


def _refused(cluster: HostCluster, requests) -> grpc.RpcError:
    before = cluster.digest()
    with pytest.raises(grpc.RpcError) as info:
        cluster.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests))
    assert cluster.digest() == before
    for barrier in cluster.barriers:  # nothing stored on any host
        assert barrier.pending_shards() == []
    return info.value


def test_a_bad_message_refuses_the_whole_batch_and_names_it(cluster: HostCluster) -> None:
    requests = [_request(h, 0) for h in range(HOSTS)]
    bad = requests[2]
    bad.guests[0].touched.starts[0] = 1 << 40  # beyond the guest
    err = _refused(cluster, requests)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("requests[2].guests[0].touched")
    # the good messages alone still go through afterwards
    cluster.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=requests[:2]))


def test_a_stale_epoch_in_one_message_refuses_the_batch(cluster: HostCluster) -> None:
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
    cluster: HostCluster, mutate, code: str, field: str
) -> None:
    requests = [_request(h, 0) for h in range(HOSTS)]
    mutate(requests)
    err = _refused(cluster, requests)
    assert err.code().name == code
    assert err.details().startswith(field)


def test_too_many_messages_are_refused_before_any_is_read(cluster: HostCluster) -> None:
    requests = [sync_request(0, 0, [], host_id=h) for h in range(MAX_BATCH + 1)]
    err = _refused(cluster, requests)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"requests={MAX_BATCH + 1}")


def test_a_batch_waits_for_the_other_shard_of_each_host() -> None:
    """Two shards: the first shard's batch is answered once the second's is in, and the
    result does not depend on which came first."""
    results = []
    for first in (0, 1):
        c = _cluster(shards=2)
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
            results.append((answers[0], answers[1], c.digest()))
        finally:
            c.close()
    assert results[0] == results[1]
