"""Hostile clients against `overcommit serve` and GuestService: nothing wedges, leaks or half-applies.

Real gRPC servers on 127.0.0.1 port 0 over the real ExperimentManager (in-process
backend) and a real guest shard. Waits poll the server's own state with a deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from overcommit.v1 import experiment_pb2
from services.guest.guest_service import AllocOp, FreeOp, TouchOp, connect_guest, start_guest_server
from services.guest.shard import GuestShard
from services.guest.shard_api import ShardApi
from services.sim import experiment_manager
from services.sim.backends.inprocess import InProcessBackend
from services.sim.core_configs import workload_from_params
from services.sim.experiment_manager import ExperimentManager
from services.sim.experiment_service import (
    ExperimentServicer,
    connect_experiments,
    start_experiment_server,
)
from services.sim.plan import make_plan
from services.sim.spec import load_spec_text
from services.transport.server import GrpcServer, ServerOptions
from tests.contract.conftest import wait_until

CODE = grpc.StatusCode
SPEC = """
name: long
seed: 3
duration: 1h
sample_interval: 1s
hosts: [{name: h, memory: 512MiB, swap: {capacity: 1GiB}}]
guest_groups:
  - name: g
    count: 2
    memory: 256MiB
    workload:
      kind: memhog
      repeat: true
      phases:
        - {action: grow, target: 0.5, rate: 256MiB, duration: 1s}
        - {action: touch, rate: 64MiB, duration: 2s}
        - {action: free, target: 0.0, duration: 1s}
"""


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[GrpcServer, ExperimentManager]]:
    """A small server: 8 workers, so at most 2 sample streams (a quarter of them)."""
    manager = ExperimentManager(out_dir=str(tmp_path), backend=InProcessBackend())
    server = start_experiment_server(manager, ServerOptions(port=0, max_workers=8))
    server.start()
    try:
        yield server, manager
    finally:
        manager.begin_shutdown()
        server.stop(1.0)
        manager.close()


def _health(server: GrpcServer) -> int:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_streams_are_bounded_and_end_when_their_clients_go(served) -> None:
    server, manager = served
    with connect_experiments(server.address) as client:
        exp_id, _ = client.create(SPEC)
        streams = [client.stream_samples(exp_id, timeout_s=600) for _ in range(2)]
        assert wait_until(lambda: manager.active_streams == 2)  # both wait for samples
        with pytest.raises(grpc.RpcError) as err:
            next(client.stream_samples(exp_id, timeout_s=10))
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED
        assert "StreamSamples" in err.value.details()
        assert _health(server) == health_pb2.HealthCheckResponse.SERVING  # workers are left
        for stream in streams:  # the clients go away without reading to the end
            stream.cancel()
        assert wait_until(lambda: manager.active_streams == 0), "abandoned streams kept running"
        again = client.stream_samples(exp_id, timeout_s=10)
        assert wait_until(lambda: manager.active_streams == 1)  # the budget is free again
        again.cancel()


def test_stopping_the_server_ends_waiting_streams(tmp_path) -> None:
    manager = ExperimentManager(out_dir=str(tmp_path), backend=InProcessBackend())
    server = start_experiment_server(manager, ServerOptions(port=0, max_workers=8))
    server.start()
    client = connect_experiments(server.address)
    exp_id, _ = client.create(SPEC)
    streams = [client.stream_samples(exp_id, timeout_s=600) for _ in range(2)]
    assert wait_until(lambda: manager.active_streams == 2)
    manager.begin_shutdown()
    stopped = server.stop_async(1.0)
    assert stopped.wait(30), "the server did not stop while streams waited"
    assert wait_until(lambda: manager.active_streams == 0)
    for stream in streams:  # each ends: cleanly, or cancelled by the stop
        try:
            list(stream)
        except grpc.RpcError as err:
            assert err.code() in (CODE.CANCELLED, CODE.UNAVAILABLE)
    client.close()
    manager.close()


def _now_s(manager: ExperimentManager, exp_id: str) -> float:
    return manager.summary(exp_id)["now_seconds"]  # takes the experiment's lock: waits for a run


def test_an_advance_stops_at_the_clients_deadline_and_can_be_resumed(served) -> None:
    server, manager = served
    with connect_experiments(server.address) as client:
        exp_id, _ = client.create(SPEC)
        with pytest.raises(grpc.RpcError) as err:
            client.advance(exp_id, 3600 * 10**9, timeout_s=1.0)
        assert err.value.code() == CODE.DEADLINE_EXCEEDED
        stopped_at = _now_s(manager, exp_id)  # returns once the advance has stopped
        assert 0 < stopped_at < 3600, "the advance ran on after its client gave up"
        assert manager.summary(exp_id)["state"] == "created"
        r = client.advance(exp_id, 2 * 10**9, timeout_s=120)
        assert r.now_ns >= int(stopped_at * 10**9) + 2 * 10**9  # resumed where it stopped


class _LateContext:
    """A call context whose deadline passes once the first chunk has run, as when the
    server's clock gets there a little before the client's timer fires (a loaded machine):
    only the servicer's own answer decides what the client reads then."""

    def __init__(self, manager: ExperimentManager, exp_id: str) -> None:
        self.exp = manager._get(exp_id)
        self.aborted: tuple | None = None

    def is_active(self) -> bool:
        return True

    def time_remaining(self) -> float:
        return 0.0 if self.exp.sim is not None and self.exp.sim.now_ns > 0 else 3600.0

    def invocation_metadata(self) -> tuple:
        return ()

    def set_trailing_metadata(self, metadata) -> None:
        pass

    def abort(self, code, details):
        self.aborted = (code, details)
        raise RuntimeError(details)


@pytest.mark.parametrize("method", ["Advance", "RunToEnd"])
def test_a_run_stopped_by_its_deadline_answers_deadline_exceeded(tmp_path, method) -> None:
    """The servicer itself ends a run its deadline stopped with DEADLINE_EXCEEDED; an
    answer with the time reached would race the client's timer and could read as done."""
    manager = ExperimentManager(out_dir=str(tmp_path), backend=InProcessBackend())
    try:
        servicer = ExperimentServicer(manager)
        exp_id = manager.create(SPEC)
        context = _LateContext(manager, exp_id)
        request = (
            experiment_pb2.AdvanceRequest(experiment_id=exp_id, duration_ns=3600 * 10**9)
            if method == "Advance"
            else experiment_pb2.RunToEndRequest(experiment_id=exp_id)
        )
        with pytest.raises(RuntimeError):
            getattr(servicer, method)(request, context)
        assert context.aborted is not None and context.aborted[0] == CODE.DEADLINE_EXCEEDED
        assert "experiment_id" in context.aborted[1]
        assert 0 < _now_s(manager, exp_id) < 3600
        assert manager.summary(exp_id)["state"] == "created"
    finally:
        manager.close()


def test_create_refuses_guests_that_fit_on_no_host(served) -> None:
    """As `overcommit validate` does: accepted, such an experiment failed every call and
    held a slot and its budget until cancelled."""
    server, manager = served
    spec = SPEC.replace("count: 2\n    memory: 256MiB", "count: 100\n    memory: 128MiB")
    spec = spec.replace("memory: 512MiB, swap", "memory: 1GiB, swap")
    with connect_experiments(server.address) as client, pytest.raises(grpc.RpcError) as err:
        client.create(spec)
    assert err.value.code() == CODE.INVALID_ARGUMENT
    assert "fits on no host" in err.value.details(), err.value.details()
    assert manager.list_experiments() == []


def _start_long_advance(client, manager: ExperimentManager, exp_id: str) -> tuple:
    """An hour-long Advance running on ``exp_id`` (until Cancel); returns (thread, result)."""
    result: dict[str, object] = {}

    def advance() -> None:
        try:
            result["response"] = client.advance(exp_id, 3600 * 10**9, timeout_s=600)
        except grpc.RpcError as e:
            result["error"] = e

    worker = threading.Thread(target=advance)
    worker.start()
    exp = manager._get(exp_id)
    assert wait_until(lambda: exp.sim is not None and exp.sim.now_ns > 0)  # it holds the lock
    return worker, result


def test_cancel_stops_a_running_advance(served) -> None:
    server, manager = served
    with connect_experiments(server.address) as client:
        exp_id, _ = client.create(SPEC)
        worker, result = _start_long_advance(client, manager, exp_id)
        cancelled = client.cancel(exp_id)
        assert cancelled.state == 3  # EXPERIMENT_STATE_CANCELLED
        worker.join(60)
        assert not worker.is_alive(), "the advance went on after Cancel"
        response = result.get("response")
        assert response is not None, result
        assert response.now_ns < 3600 * 10**9
        with pytest.raises(grpc.RpcError) as err:
            client.advance(exp_id, 10**9)
        assert err.value.code() == CODE.FAILED_PRECONDITION


@pytest.mark.parametrize("name", ["../../../x", "a/b", "x" * 300, "café", ".", "", "serve"])
def test_create_refuses_a_path_like_name(served, tmp_path, name) -> None:
    server, _ = served
    with connect_experiments(server.address) as client, pytest.raises(grpc.RpcError) as err:
        client.create({**load_spec_text(SPEC).resolved_dict(), "name": name})
    assert err.value.code() == CODE.INVALID_ARGUMENT
    assert err.value.details().startswith("name")
    assert list(tmp_path.iterdir()) == []


def test_too_many_experiments_are_refused(served) -> None:
    server, _ = served

    with connect_experiments(server.address) as client:
        for _ in range(experiment_manager.MAX_EXPERIMENTS):
            client.create(SPEC)
        with pytest.raises(grpc.RpcError) as err:
            client.create(SPEC)
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED
        # one that ended makes room: a long-lived server keeps taking experiments
        first = client.list_experiments()[0].experiment_id
        client.cancel(first)
        new_id, _ = client.create(SPEC)
        ids = [e.experiment_id for e in client.list_experiments()]
        assert first not in ids and new_id in ids
        assert len(ids) == experiment_manager.MAX_EXPERIMENTS


@pytest.fixture
def guest_server():
    spec = load_spec_text(SPEC.replace("duration: 1h", "duration: 6s"))
    plan = make_plan(spec, "exp-g", 1)
    shard = GuestShard(0, plan.shard_inits[0], spec.seed)
    server = start_guest_server(
        ShardApi(shard, workload_from_params), ServerOptions(port=0), experiment_id="exp-g"
    )
    with server:
        yield server, shard


def _state(client, guest_id: int) -> tuple:
    s = client.guest_state(guest_id)
    return (s.backed_bytes, s.SerializeToString(deterministic=True))


@pytest.mark.parametrize(
    "ops,field",
    [
        ([AllocOp(0, 1, 1), AllocOp(0, 1, 2**32 - 1)], "ops[1].alloc.count"),
        (
            [AllocOp(0, 1, 1), FreeOp(0, np.array([2**64 - 1], dtype=np.uint64))],
            "ops[1].free.pfns[0]",
        ),
        ([AllocOp(0, 1, 1), TouchOp(np.array([65530]), np.array([100]))], "ops[1].touch.runs"),
        ([AllocOp(0, 1, 1), FreeOp(9, np.array([0]))], "ops[1].free"),
        ([AllocOp(0, 1, 1), AllocOp(30, 1, 1)], "ops[1].alloc.order"),
    ],
    ids=["huge alloc", "pfn 2^64-1", "touch past the end", "not the client's block", "order"],
)
def test_apply_ops_is_all_or_nothing_and_names_the_field(guest_server, ops, field) -> None:
    server, shard = guest_server
    with connect_guest(server.address, experiment_id="exp-g") as client:
        before = _state(client, 0)
        with pytest.raises(grpc.RpcError) as err:
            client.apply_ops(0, ops)
        assert err.value.code() == CODE.INVALID_ARGUMENT, err.value.details()
        assert err.value.details().startswith(field), err.value.details()
        assert "9223372036854775808" not in err.value.details()
        assert _state(client, 0) == before, "a refused batch changed the guest"
        assert shard.slots[0].client_blocks.by_order() == {}


def test_a_touch_beyond_the_guest_names_its_real_size(guest_server) -> None:
    server, shard = guest_server
    nr_pages = shard.slots[0].init.config.nr_pages
    with (
        connect_guest(server.address, experiment_id="exp-g") as client,
        pytest.raises(grpc.RpcError) as err,
    ):
        client.apply_ops(0, [TouchOp(np.array([nr_pages - 1]), np.array([2]))])
    assert f"guest's {nr_pages} pages" in err.value.details()


def test_garbage_bytes_are_refused_as_the_callers_error(guest_server) -> None:
    """Bytes that are no ApplyOpsRequest: INVALID_ARGUMENT naming the request (gRPC
    itself answers INTERNAL, "Exception deserializing request!")."""
    server, _ = guest_server
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/overcommit.v1.GuestService/ApplyOps")
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff\xff\xff garbage", timeout=10)
    assert err.value.code() == CODE.INVALID_ARGUMENT
    assert err.value.details().startswith("request=")


TRACE_SPEC = """
name: fleet
duration: 2s
hosts: [{{name: h, memory: 2GiB}}]
guest_groups:
  - {{name: vms, workload: {{kind: trace, format: bitbrains, path: {path!r}, time_scale: 300}}}}
"""


@pytest.mark.parametrize("trace_dir", [False, True])
def test_trace_paths_from_clients_stay_inside_the_trace_directory(tmp_path, trace_dir) -> None:
    """Without --trace-dir no trace file is read; with it, only relative paths inside it
    (not '..', not absolute, not a symlink out), each refused as INVALID_ARGUMENT naming
    the field, and a good one is created."""
    from services.sim.traces import synthetic, write_bitbrains

    root = tmp_path / "traces"
    (root / "fleet").mkdir(parents=True)
    write_bitbrains(
        synthetic("step", 1, 0, memory_bytes=64 << 20, duration_s=900), root / "fleet" / "a.csv"
    )
    secret = tmp_path / "secret"
    secret.mkdir()
    write_bitbrains(
        synthetic("step", 1, 1, memory_bytes=64 << 20, duration_s=900), secret / "b.csv"
    )
    (root / "out").symlink_to(secret)
    (root / "evildir").mkdir()
    (root / "evildir" / "b.csv").symlink_to(secret / "b.csv")  # a file leading out
    manager = ExperimentManager(
        out_dir=str(tmp_path / "runs"),
        backend=InProcessBackend(),
        trace_dir=str(root) if trace_dir else None,
    )
    server = start_experiment_server(manager, ServerOptions(port=0, max_workers=8))
    server.start()
    try:
        with connect_experiments(server.address) as client:
            bad = ["../secret", str(secret), "out", "evildir"] + ([] if trace_dir else ["fleet"])
            for path in bad:
                with pytest.raises(grpc.RpcError) as err:
                    client.create(TRACE_SPEC.format(path=path))
                assert err.value.code() == CODE.INVALID_ARGUMENT, path
                assert "guest_groups.0.workload.path" in err.value.details(), path
                if not path.startswith("/"):  # no server paths beyond what the client sent
                    assert str(tmp_path) not in err.value.details(), path
            if trace_dir:
                exp_id, _ = client.create(TRACE_SPEC.format(path="fleet"))
                assert exp_id.startswith("fleet-")
    finally:
        manager.begin_shutdown()
        server.stop(1.0)
        manager.close()


def test_calls_beyond_the_concurrency_bound_are_refused(tmp_path) -> None:
    """maximum_concurrent_rpcs: a flood of slow calls cannot queue without bound."""
    manager = ExperimentManager(out_dir=str(tmp_path), backend=InProcessBackend())
    server = start_experiment_server(manager, ServerOptions(port=0, max_concurrent_rpcs=2))
    server.start()
    try:
        with connect_experiments(server.address) as client:
            exp_id, _ = client.create(SPEC)
            # two calls that stay open: sample streams of an experiment nobody advances
            busy = [
                client.stub.StreamSamples(
                    experiment_pb2.StreamSamplesRequest(experiment_id=exp_id), timeout=120
                )
                for _ in range(2)
            ]
            codes = []
            # both are in once the server streams them (a bound, not a timing claim)
            assert wait_until(lambda: manager.active_streams == 2), (
                manager.active_streams,
                [(c.code(), c.details()) for c in busy if c.done()],
            )

            def third_call_refused() -> bool:  # once both slow calls are in, a third is refused
                try:
                    client.stub.ListExperiments(experiment_pb2.ListExperimentsRequest(), timeout=30)
                    codes.append(CODE.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
                return codes[-1] == CODE.RESOURCE_EXHAUSTED

            assert wait_until(third_call_refused), (
                codes[-3:],
                [(c.code(), c.details()) for c in busy if c.done()],  # slow calls that ended
            )
            assert set(codes) <= {CODE.OK, CODE.RESOURCE_EXHAUSTED}
            for call in busy:  # once they end, calls are served again
                call.cancel()
            assert wait_until(lambda: not third_call_refused()), codes[-5:]
    finally:
        manager.begin_shutdown()
        server.stop(1.0)
        manager.close()


def _nested_struct_request(depth: int) -> bytes:
    """A CreateExperimentRequest whose spec_struct nests ``depth`` levels, as bytes (the
    Python message could not even hold it: protobuf refuses to parse it back)."""
    from google.protobuf import struct_pb2
    from google.protobuf.internal import encoder

    def varint(n: int) -> bytes:
        return encoder._VarintBytes(n)

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited field
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    leaf = struct_pb2.Struct()
    leaf.fields["leaf"].number_value = 1
    body = leaf.SerializeToString()
    entry_key = struct_pb2.Struct.DESCRIPTOR.fields_by_name["fields"].number
    value_struct = struct_pb2.Value.DESCRIPTOR.fields_by_name["struct_value"].number
    for _ in range(depth):  # Struct{fields: {"a": Value{struct_value: body}}}
        entry = field(1, b"a") + field(2, field(value_struct, body))
        body = field(entry_key, entry)
    number = experiment_pb2.CreateExperimentRequest.DESCRIPTOR.fields_by_name["spec_struct"].number
    return field(number, body)


@pytest.mark.parametrize("depth", [60, 200])
def test_a_request_protobuf_cannot_parse_is_the_callers_error(served, depth) -> None:
    """A Struct spec nested past protobuf's recursion limit used to get INTERNAL
    ("Exception deserializing request!"); it is refused as INVALID_ARGUMENT naming
    the request, and the server goes on serving. So are bytes that are no message."""
    server, manager = served
    with connect_experiments(server.address) as client:
        for method, data in (
            ("CreateExperiment", _nested_struct_request(depth)),
            ("GetSummary", b"\xff" * depth),
        ):
            raw = client.channel.unary_unary(
                f"/overcommit.v1.ExperimentService/{method}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as err:
                raw(data, timeout=30)
            assert err.value.code() == CODE.INVALID_ARGUMENT, (method, err.value.details())
            assert err.value.details().startswith("request"), err.value.details()
        assert manager.list_experiments() == []
        assert _health(server) == health_pb2.HealthCheckResponse.SERVING
        client.create(SPEC)  # and the next request is served
