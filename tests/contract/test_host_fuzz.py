"""HostService under hostile requests (issue 17, first part): Hypothesis builds every
request message of the service from its descriptor, with random and boundary values
(huge and negative numbers, empty and oversized repeated fields, unknown enum values,
wrong or foreign ids, epochs far in the future), and sends it over real gRPC to a real
host core. The server never fails with an internal error, and a refused request
changes nothing: a digest of the host (every array of its core, its counters, the
barrier's state) is the same before and after."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import ClassVar

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overcommit.v1 import host_pb2
from services.host.barrier import EpochBarrier
from services.host.directory import HostDirectory
from services.host.servicer import start_host_server
from services.protocol.clients import connect_host
from services.transport.client import RequestStream
from services.transport.server import ServerOptions
from tests.contract.conftest import EXPERIMENT, GUEST_PAGES, make_host, register
from tests.contract.fuzzing import REFUSALS, FuzzTarget, fuzz_settings, hash_arrays, message

CALL_TIMEOUT_S = 0.3
# GetHostState for a sample epoch not yet reached waits for it: most of the fuzz's time
# went to such reads waiting out the full deadline
READ_TIMEOUT_S = 0.05
REQUESTS = {
    "RegisterGuest": host_pb2.RegisterGuestRequest,
    "SyncEpoch": host_pb2.SyncEpochRequest,
    "SyncEpochs": host_pb2.SyncEpochsRequest,
    "SyncStream": host_pb2.SyncEpochsRequest,
    "GetHostState": host_pb2.GetHostStateRequest,
}


@st.composite
def requests(draw, rpcs: tuple[str, ...]):
    rpc = draw(st.sampled_from(rpcs))
    cls = REQUESTS[rpc]
    fields = draw(message(cls.DESCRIPTOR))
    if rpc == "GetHostState" and "sample_epoch" in fields and draw(st.booleans()):
        fields["sample_epoch"] = draw(st.integers(0, 3))  # mostly no wait
    return rpc, cls(**fields)


class Fuzzed(FuzzTarget):
    """A real host core behind a real server; guests 1 and 2 registered by shard 0."""

    timeout_s = CALL_TIMEOUT_S
    read_timeouts: ClassVar[dict[str, float]] = {"GetHostState": READ_TIMEOUT_S}
    streams: ClassVar[frozenset[str]] = frozenset({"SyncStream"})

    def __init__(self) -> None:
        super().__init__()
        self.endpoint = EpochBarrier(EXPERIMENT, 0, make_host())
        self.server = start_host_server(HostDirectory([self.endpoint]), ServerOptions())
        self.server.start()
        self.client = connect_host(self.server.address, timeout_s=CALL_TIMEOUT_S)
        self.stub = self.client.stub
        for guest_id in (1, 2):
            register(self.client, guest_id=guest_id, nr_pages=GUEST_PAGES)

    def digest(self) -> str:
        h = hashlib.sha256()
        hash_arrays(h, self.endpoint.host)
        h.update(repr(sorted(self.endpoint.state().items(), key=str)).encode())
        return h.hexdigest()

    def send_stream(self, requests: list[host_pb2.SyncEpochsRequest]) -> None:
        """Several requests on one SyncStream, one at a time: each accepted one may change
        the host; a refused one ends the stream and changes nothing."""
        stream = RequestStream(self.stub.SyncStream, metadata=None, timeout_s=CALL_TIMEOUT_S)
        try:
            for request in requests:
                before = self.digest()
                self.calls += 1
                try:
                    stream.call(request)
                except grpc.RpcError as err:
                    assert err.code() in REFUSALS, (err.code(), err.details(), request)
                    assert self.digest() == before, ("a refused request changed the state", request)
                    self.refused += 1
                    break
        finally:
            stream.close()
        self.alive()

    def alive(self) -> None:
        state = self.stub.GetHostState(
            host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=0), timeout=10
        )
        assert state.host_id == 0

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    f = Fuzzed()
    yield f
    f.close()


FUZZ = fuzz_settings(1000)


@FUZZ
@given(case=requests(("SyncEpoch", "GetHostState")))
def test_sync_and_state_requests_never_crash_and_refusals_change_nothing(fuzzed, case):
    fuzzed.send(*case)


@fuzz_settings(500)
@given(case=requests(("SyncEpochs", "SyncEpoch", "SyncStream")))
def test_batched_syncs_never_crash_and_refusals_change_nothing(fuzzed, case):
    fuzzed.send(*case)


@fuzz_settings(200)
@given(batch=st.lists(message(host_pb2.SyncEpochsRequest.DESCRIPTOR), min_size=1, max_size=3))
def test_several_requests_on_one_stream_never_crash_and_refusals_change_nothing(fuzzed, batch):
    fuzzed.send_stream([host_pb2.SyncEpochsRequest(**fields) for fields in batch])


@FUZZ
@given(case=requests(("RegisterGuest", "GetHostState")))
def test_registrations_never_crash_and_refusals_change_nothing(case):
    # a server of its own: an accepted registration of a new shard would make every later
    # sync of shard 0 wait for that shard
    f = _registry()
    f.send(*case)


_REGISTRY: list[Fuzzed] = []


def _registry() -> Fuzzed:
    if not _REGISTRY:
        _REGISTRY.append(Fuzzed())
    return _REGISTRY[0]


def test_the_fuzz_reached_both_answers(fuzzed):
    """Some requests were accepted, most refused (the fuzz is neither all noise nor all
    valid). Run after the fuzz tests above (file order); alone, it runs a batch itself."""
    if not fuzzed.calls:

        @settings(FUZZ, max_examples=200)
        @given(case=requests(("SyncEpoch", "GetHostState")))
        def batch(case):
            fuzzed.send(*case)

        batch()
    runs = [f for f in (fuzzed, *_REGISTRY) if f.calls]
    for f in runs:
        assert 0 < f.refused < f.calls, (f.calls, f.refused)
        print(f"{f.calls} requests, {f.refused} refused")
    for f in _REGISTRY:
        f.close()
    _REGISTRY.clear()
