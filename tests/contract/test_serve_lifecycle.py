"""An experiment's life on `overcommit serve`: what is kept, freed and written when.

Real gRPC servers on 127.0.0.1 port 0 over the real ExperimentManager (in-process
backend). Where a server's work must be over before checking, the test waits for the
server's graceful stop, which returns once every call in flight has ended.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import weakref
from collections.abc import Iterator

import grpc
import pytest

from overcommit.v1 import experiment_pb2, guest_pb2, guest_pb2_grpc
from services.sim import experiment_manager
from services.sim.backends.inprocess import InProcessBackend
from services.sim.experiment_manager import ExperimentManager
from services.sim.experiment_service import connect_experiments, start_experiment_server
from services.transport.security import TokenStore, bearer_metadata
from services.transport.server import GrpcServer, ServerOptions

CODE = grpc.StatusCode
ADMIN = "admin-secret"
SPEC = """
name: life
seed: 5
duration: 4s
sample_interval: 1s
hosts: [{name: h, memory: 512MiB}]
guest_groups:
  - name: g
    count: 2
    memory: 128MiB
    workload:
      kind: memhog
      phases:
        - {action: grow, target: 0.5, rate: 128MiB, duration: 1s}
        - {action: idle, duration: 3s}
"""


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[GrpcServer, ExperimentManager, TokenStore]]:
    manager = ExperimentManager(out_dir=str(tmp_path), backend=InProcessBackend())
    tokens = TokenStore(admin_token=ADMIN)
    server = start_experiment_server(manager, ServerOptions(port=0), tokens=tokens)
    server.start()
    try:
        yield server, manager, tokens
    finally:
        manager.begin_shutdown()
        server.stop(1.0)
        manager.close()


def test_a_forgotten_experiments_token_no_longer_opens_anything(served) -> None:
    server, _, tokens = served
    with connect_experiments(server.address, token=ADMIN, timeout_s=30) as admin:
        first, token = admin.create(SPEC)
        admin.cancel(first)
        for _ in range(experiment_manager.MAX_EXPERIMENTS):  # the last one forgets `first`
            admin.create(SPEC)
        assert first not in {e.experiment_id for e in admin.list_experiments()}
    assert first not in tokens.experiment_ids()
    with connect_experiments(server.address, token=token, experiment_id=first) as old:
        with pytest.raises(grpc.RpcError) as err:
            old.list_experiments()
        assert err.value.code() == CODE.UNAUTHENTICATED


class CreateGate(grpc.ServerInterceptor):
    """Holds every CreateExperiment call at the door of its handler until ``release``
    is set: the call then runs with whatever deadline it has left."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.endswith("/CreateExperiment"):
            return handler

        def gated(request, context):
            self.entered.set()
            self.release.wait(60)
            return handler.unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            gated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def test_a_create_whose_deadline_passed_creates_nothing(tmp_path) -> None:
    manager = ExperimentManager(out_dir=str(tmp_path), backend=InProcessBackend())
    gate = CreateGate()
    server = start_experiment_server(manager, ServerOptions(port=0, interceptors=(gate,)))
    server.start()
    try:
        with connect_experiments(server.address) as client:
            request = experiment_pb2.CreateExperimentRequest(spec_yaml=SPEC)
            with pytest.raises(grpc.RpcError) as err:
                client.stub.CreateExperiment(request, timeout=0.5)
            assert err.value.code() == CODE.DEADLINE_EXCEEDED
            assert gate.entered.is_set()  # the server had the call: its handler runs late
            gate.release.set()
    finally:
        gate.release.set()
        server.stop(30)  # returns once the server's handler of that call has ended
    try:
        assert manager.list_experiments() == []
        assert not os.path.exists(os.path.join(tmp_path, experiment_manager.SERVE_DIR))
    finally:
        manager.close()


def _advanced_and_guests_listed(server, manager, client, exp_id: str):
    """Start the experiment through both services; weak references to its simulation
    and its session (the shards and hosts: most of what it holds)."""
    client.advance(exp_id, 2 * 10**9, timeout_s=120)
    with grpc.insecure_channel(server.address) as channel:
        guests = guest_pb2_grpc.GuestServiceStub(channel).ListGuests(
            guest_pb2.ListGuestsRequest(experiment_id=exp_id),
            metadata=bearer_metadata(ADMIN),
            timeout=30,
        )
    assert len(guests.guests) == 2
    sim = manager._get(exp_id).sim
    assert sim is not None and manager._get(exp_id).router is not None
    return weakref.ref(sim), weakref.ref(sim.session)


def test_an_ended_experiment_lets_go_of_its_simulation(served) -> None:
    server, manager, _ = served
    with connect_experiments(server.address, token=ADMIN, timeout_s=120) as admin:
        cancelled, _ = admin.create(SPEC)
        finished, _ = admin.create(SPEC)
        refs = _advanced_and_guests_listed(server, manager, admin, cancelled)
        refs += _advanced_and_guests_listed(server, manager, admin, finished)
        before = admin.summary(cancelled)
        assert admin.cancel(cancelled).state == experiment_pb2.EXPERIMENT_STATE_CANCELLED
        assert admin.run_to_end(finished).state == experiment_pb2.EXPERIMENT_STATE_FINISHED
        gc.collect()
        assert [r() for r in refs] == [None] * 4, "an ended experiment kept its simulation"
        # what clients still read is kept: the listing, the summary, the samples
        listed = {e.experiment_id: e.now_ns for e in admin.list_experiments()}
        assert listed == {cancelled: 2 * 10**9, finished: 4 * 10**9}
        after = admin.summary(cancelled)
        assert after["state"] == "cancelled" and after["now_seconds"] == 2.0
        assert {k: v for k, v in after.items() if k != "state"} == {
            k: v for k, v in before.items() if k != "state"
        }
        assert {s.sim_time_ns for s in admin.stream_samples(cancelled)} == {0, 10**9, 2 * 10**9}
        assert admin.summary(finished)["run_id"]


def test_two_experiments_of_one_spec_write_their_own_results(served, tmp_path) -> None:
    server, _, _ = served
    with connect_experiments(server.address, token=ADMIN, timeout_s=120) as admin:
        first, _ = admin.create(SPEC)
        second, _ = admin.create(SPEC)
        assert admin.run_to_end(first).state == experiment_pb2.EXPERIMENT_STATE_FINISHED
        written = (tmp_path / "life" / first / "summary.json").read_text()
        assert admin.run_to_end(second).state == experiment_pb2.EXPERIMENT_STATE_FINISHED
        assert (tmp_path / "life" / first / "summary.json").read_text() == written
        for experiment_id in (first, second):
            on_disk = json.loads((tmp_path / "life" / experiment_id / "summary.json").read_text())
            assert on_disk == admin.summary(experiment_id)
        assert sorted(p.name for p in (tmp_path / "life").iterdir()) == sorted([first, second])


def test_a_forgotten_experiments_state_is_removed_and_its_number_never_reused(tmp_path) -> None:
    """OUT/serve/ keeps no more than the experiments the server can list: a forgotten
    experiment's record goes, and so do ended ones an earlier server left; a server
    started again on the same OUT still never gives a number twice."""
    state = tmp_path / experiment_manager.SERVE_DIR
    manager = ExperimentManager(out_dir=str(tmp_path), backend=InProcessBackend())
    try:
        first = manager.create(SPEC)
        manager.cancel(first)
        ids = [manager.create(SPEC) for _ in range(experiment_manager.MAX_EXPERIMENTS)]
        assert first not in {e["experiment_id"] for e in manager.list_experiments()}
        names = sorted(p.name for p in state.iterdir() if not p.name.startswith("."))
        assert len(names) == experiment_manager.MAX_EXPERIMENTS and first not in names
        for i in ids[:3]:
            manager.cancel(i)  # ended, still listed: their records stay for now
    finally:
        manager.close()
    again = ExperimentManager(out_dir=str(tmp_path), backend=InProcessBackend())
    try:
        left = sorted(p.name for p in state.iterdir() if not p.name.startswith("."))
        assert left == sorted(ids[3:])  # the ended ones went at start
        fresh = again.create(SPEC)
        numbers = [int(i.rsplit("-", 1)[1]) for i in [first, *ids]]
        assert int(fresh.rsplit("-", 1)[1]) == max(numbers) + 1
    finally:
        again.close()


def test_experiments_past_the_memory_budget_are_refused_until_one_ends(tmp_path) -> None:
    """The server's memory budget bounds what its experiments' simulations may need in
    all: a create past it gets RESOURCE_EXHAUSTED naming guest_groups and changes
    nothing; once an experiment is cancelled its share is free again."""
    from services.sim.serve_state import footprint_bytes
    from services.sim.spec import load_spec_text
    from services.transport.errors import StatusError

    one = footprint_bytes(load_spec_text(SPEC)).running
    assert one > 2 * 128 * 2**20 // 4096 * 8  # pages are counted, not a constant
    manager = ExperimentManager(
        out_dir=str(tmp_path), backend=InProcessBackend(), memory_budget=2 * one
    )
    tokens = TokenStore(admin_token=ADMIN)
    server = start_experiment_server(manager, ServerOptions(port=0), tokens=tokens)
    server.start()
    try:
        with connect_experiments(server.address, token=ADMIN, timeout_s=30) as admin:
            first, _ = admin.create(SPEC)
            admin.create(SPEC)
            with pytest.raises(grpc.RpcError) as err:
                admin.create(SPEC)
            assert err.value.code() == CODE.RESOURCE_EXHAUSTED
            assert err.value.details().startswith("guest_groups="), err.value.details()
            assert "budget" in err.value.details()
            assert len(admin.list_experiments()) == 2
            admin.cancel(first)
            admin.create(SPEC)  # the cancelled one's share is free again
            assert manager.memory_in_use() == 2 * one
        with pytest.raises(StatusError):  # and in process, the same check
            manager.create(SPEC)
    finally:
        manager.begin_shutdown()
        server.stop(1.0)
        manager.close()


def test_hosts_and_samples_count_against_the_budget_and_a_restart_keeps_the_estimate(
    tmp_path,
) -> None:
    """Hosts and the samples an experiment keeps are charged too (10,000 hosts with one
    small guest used to be estimated at 74 KiB); an ended experiment still holding its
    samples is charged for them; and a restarted server charges an interrupted trace
    experiment what its traces gave at create, not what its spec alone says."""
    from services.sim.serve_state import BYTES_PER_HOST, footprint_bytes
    from services.sim.spec import load_spec_text
    from services.sim.traces import synthetic, write_bitbrains

    small = load_spec_text(SPEC)
    many = load_spec_text(SPEC.replace("hosts: [{name: h, memory: 512MiB}]",
                                       "hosts: [{name: h, count: 10000, memory: 512MiB}]"))  # fmt: skip
    grown = footprint_bytes(many)
    assert grown.sim - footprint_bytes(small).sim == 9999 * BYTES_PER_HOST
    assert grown.rows > 9999 * 5 * 1000  # 5 samples of each host, about 1 KB a row

    traces = tmp_path / "traces"
    traces.mkdir()
    for i in range(4):
        t = synthetic("step", 1, i, memory_bytes=256 * 2**20, duration_s=1200)
        write_bitbrains(t, traces / f"vm{i}.csv")
    spec = (
        "name: fleet\nduration: 4s\nhosts: [{name: h, memory: 4GiB}]\n"
        "guest_groups: [{name: vms, workload: {kind: trace, format: bitbrains, path: .,"
        " time_scale: 300}}]\n"
    )
    out = tmp_path / "out"
    manager = ExperimentManager(out_dir=str(out), backend=InProcessBackend(), trace_dir=str(traces))
    try:
        exp_id = manager.create(spec)
        at_create = manager._get(exp_id).footprint
        assert at_create.sim > 4 * 256 * 2**20 // 4096 * 10  # the 4 traces' guests
    finally:
        manager.close()
    again = ExperimentManager(out_dir=str(out), backend=InProcessBackend(), trace_dir=str(traces))
    try:
        assert again._get(exp_id).footprint == at_create
        assert again.memory_in_use() == at_create.running
    finally:
        again.close()
