"""Shared pieces of the gRPC fuzz tests (test_host_fuzz.py, test_guest_fuzz.py): request
messages built from their protobuf descriptors with hostile values, and a target that
sends one, checks the refusal codes, the state digest and that the server still serves."""

from __future__ import annotations

import functools
from typing import ClassVar

import grpc
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.contract.conftest import EXPERIMENT, GUEST_PAGES

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


def fuzz_settings(max_examples: int) -> settings:
    """The gRPC fuzz tests' Hypothesis settings: reproducible, no per-example deadline
    (a call may wait for a real server), module-scoped servers allowed."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
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


@functools.cache
def message(descriptor, depth: int = 0, experiment: str = EXPERIMENT) -> st.SearchStrategy:
    """A dict of a random subset of the message's fields, each hostile (a Struct field is
    left to the caller: it takes JSON, not fields). Built once per message type: a
    strategy built afresh for every example made Hypothesis spend most of a fuzz test's
    time computing the new strategy's properties, not sending requests."""
    fields = {
        f.name: _field(f, depth, experiment)
        for f in descriptor.fields
        if not (f.message_type and f.message_type.full_name == "google.protobuf.Struct")
    }
    return st.fixed_dictionaries({}, optional=fields)


def hash_arrays(h, obj) -> None:
    """Feed every numpy array attribute of ``obj`` (name and bytes) to the hash ``h``."""
    for name, value in sorted(vars(obj).items()):
        if isinstance(value, np.ndarray):
            h.update(name.encode() + value.tobytes())


class FuzzTarget:
    """A real server under fuzz: subclasses give ``stub``, ``digest()`` (the state a
    refused request must leave as it was) and ``alive()`` (a call that must still work)."""

    stub: object
    timeout_s: float = 5.0
    # shorter deadlines for calls that only read: a read that waits (a sample not yet
    # taken) ends in DEADLINE_EXCEEDED, and may do so early, since it changes nothing
    read_timeouts: ClassVar[dict[str, float]] = {}
    # bidirectional-streaming methods: the request is sent as a stream of one
    streams: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self.calls = self.refused = 0

    def digest(self) -> str:
        raise NotImplementedError

    def alive(self) -> None:
        raise NotImplementedError

    def send(self, rpc: str, request) -> None:
        before = self.digest()
        self.calls += 1
        try:
            timeout = self.read_timeouts.get(rpc, self.timeout_s)
            if rpc in self.streams:
                list(getattr(self.stub, rpc)(iter([request]), timeout=timeout))
            else:
                getattr(self.stub, rpc)(request, timeout=timeout)
        except grpc.RpcError as err:
            assert err.code() in REFUSALS, (rpc, err.code(), err.details(), request)
            assert self.digest() == before, (rpc, "a refused request changed the state", request)
            self.refused += 1
        self.alive()  # the server still serves
