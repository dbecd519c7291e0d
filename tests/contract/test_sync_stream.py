"""SyncStream: SyncEpochs calls over one bidirectional stream (a shard that syncs every epoch).

Real servers on loopback, the real host core, real channels. Over the stream the link
must give exactly what unary calls give; a refused request ends the stream, names its
field as the unary call would and stores nothing; a server with no room for another
stream refuses it and the link goes on with unary calls; a stream whose replies are
dropped after they were applied is replaced and its request sent again, with the same
results; an answer that does not come ends the stream with DEADLINE_EXCEEDED; tokens
are checked as for every call; and a client built from reflection alone can use it.
"""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from overcommit.v1 import host_pb2, host_pb2_grpc
from services.host.barrier import EpochBarrier
from services.host.directory import HostDirectory
from services.host.servicer import (
    host_server_workers,
    start_host_server,
)
from services.protocol.clients import GrpcHostLink, connect_host
from services.protocol.messages import (
    STREAMS_FIELD,
    SYNC_STREAM_METHOD,
    EpochSubmission,
    GuestOps,
    PageRunOps,
)
from services.sim.backends.ray_cluster import shards_syncing_with
from services.transport.client import RequestStream, RetryPolicy, StreamDeadlineExceeded
from services.transport.faults import ReplyFaultInterceptor, ReplyFaults
from services.transport.security import TokenStore, bearer_metadata
from services.transport.server import ServerOptions, ServiceBinding, build_server
from services.transport.status import status_field
from tests.contract.conftest import (
    EPOCH_NS,
    EXPERIMENT,
    GUEST_PAGES,
    HostCluster,
    guest_ops,
    make_host,
    register,
    sync_request,
    u64,
    wait_until,
)

HOSTS = 2
GUESTS_PER_HOST = 2
EPOCHS = 10
CODE = grpc.StatusCode


class Hosts(HostCluster):
    """``HOSTS`` hosts behind one server (``options``, ``max_streams``), guests
    registered for shard 0 (and shard 1 with ``shards=2``), the admin token's client."""

    def __init__(
        self,
        options: ServerOptions | None = None,
        max_streams: int | None = None,
        shards: int = 1,
    ):
        super().__init__(HOSTS, GUESTS_PER_HOST, shards, options, max_streams, token="admin")

    def link(self, **kwargs) -> GrpcHostLink:
        return GrpcHostLink(
            EXPERIMENT,
            dict.fromkeys(range(HOSTS), self.server.address),
            token="admin",
            timeout_s=kwargs.pop("timeout_s", 10.0),
            **kwargs,
        )


ADMIN_ONLY = ServerOptions(tokens=TokenStore(admin_token="admin"))


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    h = Hosts(ADMIN_ONLY)
    try:
        yield h
    finally:
        h.close()


def _submissions(epoch: int, seed: int = 11) -> dict[int, EpochSubmission]:
    subs = {}
    for h in range(HOSTS):
        guests = tuple(
            guest_ops(h * GUESTS_PER_HOST + k, seed + epoch) for k in range(GUESTS_PER_HOST)
        )
        subs[h] = EpochSubmission(0, epoch, epoch, (epoch + 1) * EPOCH_NS, guests)
    return subs


def _run(link: GrpcHostLink, epochs: int = EPOCHS) -> list:
    """Every epoch's outcomes, host by host, through ``link`` as a shard actor drives it."""
    out = []
    for epoch in range(epochs):
        subs = _submissions(epoch)
        for h, sub in subs.items():
            link.submit(h, sub)
        out.append([link.collect(h, sub) for h, sub in subs.items()])
    return out


def test_the_stream_gives_what_unary_calls_give() -> None:
    streamed, unary = Hosts(ADMIN_ONLY), Hosts(ADMIN_ONLY)
    a, b = streamed.link(), unary.link(streaming=False)
    try:
        assert _run(a) == _run(b)
        assert streamed.digest() == unary.digest()
        assert list(a._streams) == [streamed.server.address]  # one stream, still open
        assert not b._streams
        assert streamed.servicer.open_streams == 1
    finally:
        a.close()
        b.close()
        streamed.close()
        unary.close()


def test_a_refused_request_ends_the_stream_names_its_field_and_stores_nothing(
    hosts: Hosts,
) -> None:
    link = hosts.link()
    unary = hosts.link(streaming=False)
    try:
        _run(link, epochs=2)
        before = hosts.digest()
        past_the_end = PageRunOps(u64([GUEST_PAGES]), u64([1]), u64([1]))
        bad = EpochSubmission(0, 2, 2, 3 * EPOCH_NS, (GuestOps(0, touched=past_the_end),))
        with pytest.raises(grpc.RpcError) as streamed:
            link.sync(0, bad)
        with pytest.raises(grpc.RpcError) as called:
            unary.sync(0, bad)
        assert streamed.value.code() == called.value.code() == CODE.INVALID_ARGUMENT
        assert streamed.value.details() == called.value.details()
        assert streamed.value.details().startswith("guests[0].touched")
        assert hosts.digest() == before
        assert not link._streams  # the refusal ended it, and the server's handler returned
        assert wait_until(lambda: hosts.servicer.open_streams == 0)
        # several hosts in one request: the refused one is named as SyncEpochs names it
        for h, sub in _submissions(2).items():
            wrong = replace(bad, guests=(replace(bad.guests[0], guest_id=2),))  # host 1's guest
            link.submit(h, sub if h == 0 else wrong)
        with pytest.raises(grpc.RpcError) as multi:
            link.collect(0, _submissions(2)[0])
        assert multi.value.details().startswith("requests[1].guests[0].touched")
        assert hosts.digest() == before
    finally:
        link.close()
        unary.close()


def test_a_server_without_room_refuses_the_stream_and_the_link_uses_unary_calls() -> None:
    full = Hosts(ADMIN_ONLY, max_streams=0)
    free = Hosts(ADMIN_ONLY)
    a, b = full.link(), free.link()
    try:
        assert _run(a) == _run(b)
        assert full.digest() == free.digest()
        assert a._unary_only == {full.server.address} and not a._streams
        # the refusal itself: RESOURCE_EXHAUSTED naming the streams
        stream = RequestStream(
            host_pb2_grpc.HostServiceStub(grpc.insecure_channel(full.server.address)).SyncStream,
            metadata=bearer_metadata("admin", None),
            timeout_s=10,
        )
        with pytest.raises(grpc.RpcError) as err:
            stream.call(host_pb2.SyncEpochsRequest())
        stream.close()
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED
        assert status_field(err.value) == STREAMS_FIELD
    finally:
        a.close()
        b.close()
        full.close()
        free.close()


def test_dropped_replies_break_the_stream_and_the_request_is_sent_again() -> None:
    """A reply dropped after its request was applied ends the stream with UNAVAILABLE;
    the link opens a new one and sends the request again, which the host answers from
    what it stored. Results are those of a run without faults."""
    faults = ReplyFaultInterceptor(ReplyFaults(methods=(SYNC_STREAM_METHOD,), drop=0.4, seed=3))
    faulty = Hosts(ServerOptions(tokens=TokenStore(admin_token="admin"), interceptors=(faults,)))
    clean = Hosts(ADMIN_ONLY)
    retry = RetryPolicy(max_attempts=20, initial_backoff_s=0.0, max_backoff_s=0.0)
    a, b = faulty.link(retry=retry), clean.link()
    try:
        assert _run(a) == _run(b)
        assert faulty.digest() == clean.digest()
        assert faults.dropped > 0
        assert a.stream_retries == faults.dropped
    finally:
        a.close()
        b.close()
        faulty.close()
        clean.close()


def test_an_answer_that_does_not_come_ends_the_stream_with_deadline_exceeded() -> None:
    """Two shards are registered; only shard 0 sends, so the host never applies the
    epoch. The stream's watchdog cancels it after the timeout."""
    two = Hosts(ADMIN_ONLY, shards=2)
    link = two.link(timeout_s=0.5, retry=RetryPolicy(max_attempts=1))
    try:
        sub = _submissions(0)[0]
        only_shard_0 = replace(sub, guests=(sub.guests[0],))  # guest 0 is shard 0's
        with pytest.raises(grpc.RpcError) as err:
            link.sync(0, only_shard_0)
        assert isinstance(err.value, StreamDeadlineExceeded)
        assert err.value.code() == CODE.DEADLINE_EXCEEDED
        assert not link._streams
        assert wait_until(lambda: two.servicer.open_streams == 0)
    finally:
        link.close()
        two.close()


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_stream_without_a_valid_token_is_unauthenticated(hosts: Hosts, token) -> None:
    before = hosts.digest()
    stub = host_pb2_grpc.HostServiceStub(grpc.insecure_channel(hosts.server.address))
    stream = RequestStream(stub.SyncStream, metadata=bearer_metadata(token, None), timeout_s=10)
    request = host_pb2.SyncEpochsRequest(
        requests=[sync_request(0, 0, [guest_ops(0, seed=1)], host_id=0)]
    )
    with pytest.raises(grpc.RpcError) as err:
        stream.call(request)
    stream.close()
    assert err.value.code() == CODE.UNAUTHENTICATED
    assert hosts.digest() == before


def test_a_client_built_from_reflection_alone_syncs_over_the_stream() -> None:
    """The client's types, serializers and call come from the server's reflection
    service alone (the request contents are the test helpers' bytes, parsed into the
    reflected type); the answers equal the generated client's."""
    h = Hosts()
    reference = Hosts()
    channel = grpc.insecure_channel(h.server.address)
    try:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName("overcommit.v1.HostService").FindMethodByName("SyncStream")
        assert method.client_streaming and method.server_streaming
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.stream_stream(
            SYNC_STREAM_METHOD,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        requests = [
            host_pb2.SyncEpochsRequest(
                requests=[
                    sync_request(0, e, [guest_ops(h_ * GUESTS_PER_HOST, seed=e)], host_id=h_)
                    for h_ in range(HOSTS)
                ]
            )
            for e in range(3)
        ]
        # the same bytes, parsed into the reflected type
        answers = list(
            call(
                iter([request_cls.FromString(r.SerializeToString()) for r in requests]), timeout=10
            )
        )
        want = [reference.client.sync_epochs(r) for r in requests]
        assert [a.SerializeToString(deterministic=True) for a in answers] == [
            w.SerializeToString(deterministic=True) for w in want
        ]
    finally:
        channel.close()
        h.close()
        reference.close()


def test_abandoned_streams_leave_the_server_room_and_a_stop_ends_them() -> None:
    """Streams hold a worker thread each: at most ``max_streams`` (half the workers) are
    let in, so unary calls still get through while they sit idle, and stopping the
    server ends them."""
    h = Hosts(ADMIN_ONLY)
    stub = host_pb2_grpc.HostServiceStub(h.client.channel)
    metadata = bearer_metadata("admin", None)
    held: list[RequestStream] = []
    try:
        held += [
            RequestStream(stub.SyncStream, metadata=metadata, timeout_s=600)
            for _ in range(h.servicer.max_streams)
        ]
        assert wait_until(lambda: h.servicer.open_streams == h.servicer.max_streams)
        one_more = RequestStream(stub.SyncStream, metadata=metadata, timeout_s=600)
        held.append(one_more)
        with pytest.raises(grpc.RpcError) as err:
            one_more.call(host_pb2.SyncEpochsRequest())
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED
        # unary calls are served meanwhile, syncs included
        request = sync_request(0, 0, [guest_ops(0, seed=1)], host_id=0)
        assert h.client.sync_epochs(host_pb2.SyncEpochsRequest(requests=[request])).responses
        assert len(h.digest()) == HOSTS
        stopped = h.server.stop_async(1.0)
        assert stopped.wait(30), "the server did not stop while streams were open"
        assert wait_until(lambda: h.servicer.open_streams == 0)
    finally:
        for stream in held:
            stream.close()
        h.client.close()
        h.server.stop()


def test_a_host_server_sized_for_its_shards_gives_every_shard_a_stream() -> None:
    """40 shards (more than the default server's 32 workers) sync with one host server
    sized by host_server_workers: every shard gets a stream, none waits for a worker,
    and every epoch is applied."""
    shards, epochs = 40, 4
    barrier = EpochBarrier(EXPERIMENT, 0, make_host(0))
    server = start_host_server(
        HostDirectory([barrier]), ServerOptions(max_workers=host_server_workers(shards))
    )
    server.start()
    admin = connect_host(server.address, timeout_s=30.0)
    for s in range(shards):
        register(admin, s, shard_id=s, host_id=0)
    links = [GrpcHostLink(EXPERIMENT, {0: server.address}, timeout_s=30.0) for _ in range(shards)]

    def shard(s: int) -> int:
        for e in range(epochs):
            sub = EpochSubmission(s, e, e, (e + 1) * EPOCH_NS, (guest_ops(s, seed=e),))
            link = links[s]
            link.submit(0, sub)
            link.collect(0, sub)
        return s

    try:
        with ThreadPoolExecutor(shards) as pool:
            assert sorted(pool.map(shard, range(shards))) == list(range(shards))
        assert all(list(link._streams) == [server.address] for link in links)
        assert not any(link._unary_only for link in links)
        state = admin.get_host_state(
            host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=0)
        )
        assert state.next_epoch == epochs
    finally:
        for link in links:
            link.close()
        admin.close()
        server.stop()


def test_the_ray_backend_counts_the_shards_of_each_host_group() -> None:
    """Shard 0 has guests on hosts 0 and 1, shard 1 on host 1, shard 2 on host 3."""
    shard_hosts = [[0, 1, 1], [1], [3, 3]]
    plan = SimpleNamespace(
        shard_inits=[[SimpleNamespace(host_id=h) for h in hosts] for hosts in shard_hosts]
    )
    counts = {(0,): 1, (1, 2): 2, (2,): 0, (3,): 1, (0, 1, 2, 3): 3, (): 0}
    for group, want in counts.items():
        assert shards_syncing_with(plan, group) == want, group


class SignalledError(Exception):
    pass


def test_a_call_interrupted_while_it_waits_never_hands_its_answer_to_the_next() -> None:
    """Shard 0's sync of epoch 0 waits for shard 1 and is interrupted (a signal raises in
    the waiting thread). Its answer may still come on that stream, so the stream is done
    for: the next collect opens a new one, and every answer is to its own request."""
    two = Hosts(ADMIN_ONLY, shards=2)
    link = two.link(retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.0))
    other = two.link(streaming=False)

    def interrupt(signum, frame):
        raise SignalledError

    previous = signal.signal(signal.SIGALRM, interrupt)
    subs = [_submissions(e) for e in range(2)]
    mine = [replace(s[0], guests=(s[0].guests[0],)) for s in subs]  # guest 0: shard 0's
    theirs = [  # guest 1: shard 1's
        replace(s[0], shard_id=1, guests=(s[0].guests[1],)) for s in subs
    ]
    try:
        link.submit(0, mine[0])
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(SignalledError):
            link.collect(0, mine[0])  # cannot be answered before shard 1 sends
        signal.setitimer(signal.ITIMER_REAL, 0)
        broken = link._streams[two.server.address]
        assert broken.broken
        other.sync(0, theirs[0])
        assert link.collect(0, mine[0]).epoch == 0  # sent again on a new stream
        assert link._streams[two.server.address] is not broken
        with ThreadPoolExecutor(1) as pool:
            theirs_1 = pool.submit(other.sync, 0, theirs[1])
            assert link.sync(0, mine[1]).epoch == 1
            assert theirs_1.result().epoch == 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        link.close()
        other.close()
        two.close()


def test_a_stream_nobody_holds_is_closed_and_the_server_lets_its_slot_go(hosts: Hosts) -> None:
    stub = host_pb2_grpc.HostServiceStub(hosts.client.channel)
    stream = RequestStream(stub.SyncStream, metadata=bearer_metadata("admin", None), timeout_s=60)
    assert wait_until(lambda: hosts.servicer.open_streams == 1)
    watchdogs = sum(t.name == "stream-watchdog" for t in threading.enumerate())
    del stream
    gc.collect()
    assert wait_until(lambda: hosts.servicer.open_streams == 0)
    assert wait_until(
        lambda: sum(t.name == "stream-watchdog" for t in threading.enumerate()) == watchdogs - 1
    )


class _OutOfTurn(host_pb2_grpc.HostServiceServicer):
    """A faulty server: its SyncStream answers every request with the next epoch's."""

    def SyncStream(self, request_iterator, context):  # noqa: N802 (the RPC's name)
        for request in request_iterator:
            yield host_pb2.SyncEpochsResponse(
                responses=[
                    host_pb2.SyncEpochResponse(epoch=r.epoch + 1, sequence=r.sequence)
                    for r in request.requests
                ]
            )


def test_an_answer_to_another_request_is_refused_and_its_stream_dropped() -> None:
    binding = ServiceBinding(
        "overcommit.v1.HostService", host_pb2_grpc.add_HostServiceServicer_to_server, _OutOfTurn()
    )
    server = build_server(ServerOptions(), [binding])
    server.start()
    link = GrpcHostLink(EXPERIMENT, {0: server.address}, timeout_s=10.0)
    try:
        with pytest.raises(ValueError, match=r"answered \(epoch, sequence\) \[\(1, 0\)\]"):
            link.sync(0, _submissions(0)[0])
        assert not link._streams
    finally:
        link.close()
        server.stop()
