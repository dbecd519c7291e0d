"""GuestService under hostile requests (issue 17): every request message built from its
descriptor with hostile values (see test_host_fuzz.py), workload parameters as random
JSON, sent over real gRPC to a real guest shard. The server never fails with an internal
error, and a refused request changes nothing: a digest of every guest (allocator and
backing arrays, the op log, client blocks and workloads) is the same before and after."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overcommit.v1 import guest_pb2, guest_pb2_grpc
from services.guest.guest_service import start_guest_server
from services.guest.shard import GuestShard
from services.guest.shard_api import ShardApi
from services.sim.core_configs import workload_from_params
from services.sim.plan import make_plan
from services.sim.spec import load_spec_text
from services.transport.server import ServerOptions
from tests.contract.fuzzing import FuzzTarget, fuzz_settings, hash_arrays, message

EXPERIMENT = "exp-g"
SPEC = """
name: fuzzed
seed: 3
duration: 1h
hosts: [{name: h, memory: 512MiB, swap: {capacity: 1GiB}}]
guest_groups:
  - {name: g, count: 2, memory: 128MiB, workload: {kind: idle}}
"""
JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["grow", "free", "touch", "idle", "2s", "1GiB", "-1", "0.5", ""]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["phases", "action", "target", "rate", "duration", "x"]),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=8,
)
KINDS = ["memhog", "idle", "page_fault1", "page_fault2", "page_cache", "kernel_noise"]
RPCS = {
    "ListGuests": guest_pb2.ListGuestsRequest,
    "ApplyOps": guest_pb2.ApplyOpsRequest,
    "StartWorkload": guest_pb2.StartWorkloadRequest,
    "GetGuestState": guest_pb2.GetGuestStateRequest,
}


@st.composite
def requests(draw):
    rpc = draw(st.sampled_from(sorted(RPCS)))
    cls = RPCS[rpc]
    fields = draw(message(cls.DESCRIPTOR, experiment=EXPERIMENT))
    if "guest_id" in fields and draw(st.booleans()):
        fields["guest_id"] = draw(st.sampled_from([0, 1]))  # real guests, deeper paths
    if rpc == "StartWorkload":
        fields["workload"] = draw(st.one_of(st.sampled_from(KINDS), st.text(max_size=8)))
    request = cls(**fields)
    if rpc == "StartWorkload":
        params = draw(st.dictionaries(st.sampled_from(["phases", "tasks", "x"]), JSON, max_size=2))
        request.params.update(params)
    return rpc, request


class Fuzzed(FuzzTarget):
    def __init__(self) -> None:
        super().__init__()
        spec = load_spec_text(SPEC)
        plan = make_plan(spec, EXPERIMENT, 1)
        self.shard = GuestShard(0, plan.shard_inits[0], spec.seed)
        self.server = start_guest_server(
            ShardApi(self.shard, workload_from_params),
            ServerOptions(port=0),
            experiment_id=EXPERIMENT,
        )
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = guest_pb2_grpc.GuestServiceStub(self.channel)

    def digest(self) -> str:
        h = hashlib.sha256()
        for guest_id, s in sorted(self.shard.slots.items()):
            h.update(str(guest_id).encode())
            hash_arrays(h, s.guest.allocator)
            hash_arrays(h, s.guest.backing)
            # every order's blocks in the order they were allocated, as arrays: a refused
            # request must not change which blocks a later free by count releases
            blocks = s.client_blocks
            for order in range(s.init.config.max_order + 1):
                h.update(repr((order, blocks.count(order))).encode())
                h.update(blocks.blocks(order).tobytes())
            h.update(repr((len(s.extra_workloads), s.link.pending_runs, s.stopped)).encode())
        return h.hexdigest()

    def alive(self) -> None:
        listed = self.stub.ListGuests(guest_pb2.ListGuestsRequest(), timeout=10)
        assert [g.guest_id for g in listed.guests] == [0, 1]

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    f = Fuzzed()
    yield f
    f.close()


@fuzz_settings(3000)
@given(case=requests())
def test_guest_requests_never_crash_and_refusals_change_nothing(fuzzed, case):
    fuzzed.send(*case)


def test_the_guest_fuzz_reached_both_answers(fuzzed):
    if not fuzzed.calls:  # run alone: a batch of its own
        test_guest_requests_never_crash_and_refusals_change_nothing(fuzzed)
    assert 0 < fuzzed.refused < fuzzed.calls, (fuzzed.calls, fuzzed.refused)
    print(f"{fuzzed.calls} requests, {fuzzed.refused} refused")
