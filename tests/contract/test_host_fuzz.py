"""HostService under hostile requests (issue 17, first part): Hypothesis builds every
request message of the service from its descriptor, with random and boundary values
(huge and negative numbers, empty and oversized repeated fields, unknown enum values,
wrong or foreign ids, epochs far in the future), and sends it over real gRPC to a real
host core. The server never fails with an internal error, and a rejected request
changes nothing: a digest of the host (every array of its core, its counters, the
barrier's state) is the same before and after."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overcommit.v1 import host_pb2
from services.host.barrier import EpochBarrier
from services.host.directory import HostDirectory
from services.host.servicer import start_host_server
from services.protocol.clients import connect_host
from services.transport.server import ServerOptions
from tests.contract.conftest import EXPERIMENT, GUEST_PAGES, make_host, register

CODE = grpc.StatusCode
# what a refusal may say; anything else (UNKNOWN, INTERNAL, UNAVAILABLE...) is a defect
REFUSALS = {
    CODE.INVALID_ARGUMENT,
    CODE.FAILED_PRECONDITION,
    CODE.NOT_FOUND,
    CODE.ALREADY_EXISTS,
    CODE.RESOURCE_EXHAUSTED,
    CODE.OUT_OF_RANGE,
    CODE.PERMISSION_DENIED,
    CODE.UNAUTHENTICATED,
    CODE.DEADLINE_EXCEEDED,  # a sample or an epoch not applied within the call's deadline
}
CALL_TIMEOUT_S = 0.3

U32 = st.one_of(
    st.sampled_from([0, 0, 1, 2, 3, 9, 10, 11, 32, 2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
U64 = st.one_of(
    st.sampled_from([0, 0, 1, 2, 3, GUEST_PAGES - 1, GUEST_PAGES, 2**32, 2**63, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)
I64 = st.one_of(
    st.sampled_from([0, 1, -1, 50_000_000, -(2**63), 2**63 - 1]), st.integers(-(2**63), 2**63 - 1)
)
SCALARS = {
    FieldDescriptor.TYPE_UINT32: U32,
    FieldDescriptor.TYPE_UINT64: U64,
    FieldDescriptor.TYPE_INT64: I64,
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: st.one_of(st.integers(-3, 8), st.integers(-(2**31), 2**31 - 1)),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=16),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(allow_nan=True, allow_infinity=True, width=32),
}
STRINGS = st.one_of(
    st.just(EXPERIMENT), st.just(EXPERIMENT), st.sampled_from(["", "other", "x" * 300, "é\n"])
)


def _value(field: FieldDescriptor, depth: int, experiment: str) -> st.SearchStrategy:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.GetOptions().map_entry:
            return st.dictionaries(st.text(max_size=8), I64, max_size=3)
        return message(field.message_type, depth + 1, experiment)
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name == "experiment_id":
            return st.one_of(st.just(experiment), st.just(experiment), STRINGS)
        return st.text(max_size=12)
    return SCALARS[field.type]


def _field(field: FieldDescriptor, depth: int, experiment: str) -> st.SearchStrategy:
    one = _value(field, depth, experiment)
    if not field.is_repeated or (
        field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
    ):
        return one
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return st.lists(one, max_size=3 if depth < 2 else 0)
    # packed scalars: small, or oversized (one value repeated many times)
    return st.one_of(
        st.lists(one, max_size=12),
        st.tuples(one, st.sampled_from([1000, 70_000])).map(lambda vn: [vn[0]] * vn[1]),
    )


def message(descriptor, depth: int = 0, experiment: str = EXPERIMENT) -> st.SearchStrategy:
    """A dict of a random subset of the message's fields, each hostile (a Struct field is
    left to the caller: it takes JSON, not fields)."""
    fields = {
        f.name: _field(f, depth, experiment)
        for f in descriptor.fields
        if not (f.message_type and f.message_type.full_name == "google.protobuf.Struct")
    }
    return st.fixed_dictionaries({}, optional=fields)


REQUESTS = {
    "RegisterGuest": (host_pb2.RegisterGuestRequest, "register_guest"),
    "SyncEpoch": (host_pb2.SyncEpochRequest, "sync_epoch"),
    "GetHostState": (host_pb2.GetHostStateRequest, "get_host_state"),
}


@st.composite
def requests(draw, rpcs: tuple[str, ...]):
    rpc = draw(st.sampled_from(rpcs))
    cls, _ = REQUESTS[rpc]
    fields = draw(message(cls.DESCRIPTOR))
    if rpc == "GetHostState" and "sample_epoch" in fields and draw(st.booleans()):
        fields["sample_epoch"] = draw(st.integers(0, 3))  # mostly no wait
    return rpc, cls(**fields)


class Fuzzed:
    """A real host core behind a real server; guests 1 and 2 registered by shard 0."""

    def __init__(self) -> None:
        self.endpoint = EpochBarrier(EXPERIMENT, 0, make_host())
        self.server = start_host_server(HostDirectory([self.endpoint]), ServerOptions())
        self.server.start()
        self.client = connect_host(self.server.address, timeout_s=CALL_TIMEOUT_S)
        for guest_id in (1, 2):
            register(self.client, guest_id=guest_id, nr_pages=GUEST_PAGES)
        self.calls = self.refused = 0

    def digest(self) -> str:
        h = hashlib.sha256()
        host = self.endpoint.host
        for name, value in sorted(vars(host).items()):
            if isinstance(value, np.ndarray):
                h.update(name.encode() + value.tobytes())
        h.update(repr(sorted(self.endpoint.state().items(), key=str)).encode())
        return h.hexdigest()

    def send(self, rpc: str, request) -> None:
        before = self.digest()
        method = getattr(self.client.stub, rpc)
        self.calls += 1
        try:
            method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            assert err.code() in REFUSALS, (rpc, err.code(), err.details(), request)
            assert self.digest() == before, (rpc, "a refused request changed the host", request)
            self.refused += 1
        # the server still serves
        alive = self.client.stub.GetHostState(
            host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=0), timeout=10
        )
        assert alive.host_id == 0

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    f = Fuzzed()
    yield f
    f.close()


FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(case=requests(("SyncEpoch", "GetHostState")))
def test_sync_and_state_requests_never_crash_and_refusals_change_nothing(fuzzed, case):
    fuzzed.send(*case)


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
