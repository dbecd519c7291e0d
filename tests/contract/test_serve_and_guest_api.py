"""ExperimentService over the real ExperimentManager, and GuestService over a real shard.

Real gRPC servers on 127.0.0.1 port 0 and real channels; the simulation runs
in-process behind them (the Ray path is covered by tests/integration).
"""

import grpc
import numpy as np
import pytest

from services.guest.guest_service import (
    AllocOp,
    FreeOp,
    TouchOp,
    connect_guest,
    iter_free_areas,
    start_guest_server,
)
from services.guest.shard import GuestShard
from services.guest.shard_api import ShardApi
from services.sim.backends.inprocess import InProcessBackend
from services.sim.core_configs import workload_from_params
from services.sim.experiment_manager import ExperimentManager
from services.sim.experiment_service import connect_experiments, start_experiment_server
from services.sim.plan import make_plan
from services.sim.spec import load_spec_text
from services.transport.security import TokenStore
from services.transport.server import ServerOptions

SPEC = """
name: served
seed: 2
duration: 6s
sample_interval: 1s
hosts: [{name: h, memory: 512MiB, swap: {capacity: 1GiB}}]
guest_groups:
  - name: g
    count: 2
    memory: 256MiB
    workload:
      kind: memhog
      phases:
        - {action: grow, target: 0.5, rate: 256MiB, duration: 1s}
        - {action: free, target: 0.0, duration: 1s}
        - {action: idle, duration: 4s}
compare: [reporting_off]
"""


@pytest.fixture
def experiments(tmp_path):
    manager = ExperimentManager(out_dir=str(tmp_path), backend=InProcessBackend())
    tokens = TokenStore(admin_token="admin-secret")
    server = start_experiment_server(manager, ServerOptions(port=0), tokens=tokens)
    with server:
        yield server
    manager.close()


def test_create_advance_stream_and_finish(experiments, tmp_path):
    with connect_experiments(experiments.address, token="admin-secret") as admin:
        exp_id, token = admin.create(SPEC)
    with connect_experiments(experiments.address, token=token, experiment_id=exp_id) as client:
        r = client.advance(exp_id, 2_000_000_000, timeout_s=300)
        assert r.now_ns == 2_000_000_000
        partial = client.summary(exp_id)
        assert partial["state"] == "created" and partial["now_seconds"] == 2.0
        done = client.run_to_end(exp_id, timeout_s=300)
        assert done.now_ns == 6_000_000_000
        samples = list(client.stream_samples(exp_id))
        times = sorted({s.sim_time_ns for s in samples})
        assert times == [i * 1_000_000_000 for i in range(7)]
        host = [s for s in samples if s.entity == "host/h-0"]
        assert max(s.metrics["backed_bytes"] for s in host) >= 256 << 20
        summary = client.summary(exp_id)
        assert summary["comparison"]["reporting_off"]["memory_saved_final_bytes"] > 0
        with pytest.raises(grpc.RpcError) as e:
            client.advance(exp_id, 1_000_000_000)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (tmp_path / "served").is_dir()


def test_bad_spec_unknown_experiment_and_wrong_token(experiments):
    with connect_experiments(experiments.address, token="admin-secret") as admin:
        with pytest.raises(grpc.RpcError) as e:
            admin.create(SPEC.replace("duration: 6s", "duration: never"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "duration" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            admin.advance("nope-1", 1_000_000)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        exp_id, _ = admin.create(SPEC)
    with connect_experiments(experiments.address, token="wrong", experiment_id=exp_id) as client:
        with pytest.raises(grpc.RpcError) as e:
            client.advance(exp_id, 1_000_000)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def guest_server():
    spec = load_spec_text(SPEC)
    plan = make_plan(spec, "exp-g", 1)
    shard = GuestShard(0, plan.shard_inits[0], spec.seed)
    server = start_guest_server(
        ShardApi(shard, workload_from_params), ServerOptions(port=0), experiment_id="exp-g"
    )
    with server:
        yield server, shard


def test_guest_service_drives_a_real_guest(guest_server):
    server, shard = guest_server
    with connect_guest(server.address, experiment_id="exp-g") as client:
        listed = client.list_guests()
        assert [g.guest_id for g in listed.guests] == [0, 1]
        r = client.apply_ops(
            0, [AllocOp(order=10, migratetype=1, count=4), TouchOp(np.array([0]), np.array([16]))]
        )
        pfns = list(r.results[0].pfns)
        assert len(pfns) == 4 and all(p % 1024 == 0 for p in pfns)
        state = client.guest_state(0)
        touched = set(range(16)).union(*(range(p, p + 1024) for p in pfns))
        assert state.backed_bytes == len(touched) * 4096
        free_before = sum(n << o for o, _, n in iter_free_areas(state))
        client.apply_ops(
            0, [FreeOp(order=10, pfns=np.array(pfns[:2]))]
        )  # order 10 bypasses the pcp
        free_after = sum(n << o for o, _, n in iter_free_areas(client.guest_state(0)))
        assert free_after - free_before == 2 * 1024
        ops_logged = shard.slots[0].link.take()
        # the host sees the touches at the next sync; frees are not sent (the host
        # learns of free memory from reports only)
        assert len(ops_logged.touched) and not len(ops_logged.freed)


def test_guest_service_refuses_without_changing_state(guest_server):
    server, shard = guest_server
    with connect_guest(server.address, experiment_id="exp-g") as client:
        before = client.guest_state(1)
        with pytest.raises(grpc.RpcError) as e:  # not the client's block: nothing is freed
            client.apply_ops(
                1, [AllocOp(order=0, migratetype=1, count=1), FreeOp(order=9, pfns=np.array([0]))]
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "pfn=0" in e.value.details()
        assert client.guest_state(1) == before
        with pytest.raises(grpc.RpcError) as e:
            client.guest_state(99)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            client.start_workload(
                1, "memhog", {"phases": [{"action": "grow", "duration": "1s"}]}, 10**9
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        started = client.start_workload(
            1,
            "memhog",
            {"phases": [{"action": "grow", "target": 0.25, "duration": "1s"}]},
            2 * 10**9,
        )
        assert (started.start_ns, started.end_ns) == (shard.now_ns, shard.now_ns + 2 * 10**9)
    shard.run_epoch(0, 50_000_000)
    assert shard.slots[1].extra_workloads[0].held.count == int(
        0.25 * shard.slots[1].init.config.nr_pages
    )


def test_hostile_batches_are_refused_whole(guest_server):
    """Hostile-client findings: a batch freeing one block twice, a workload ending past
    the time bound, and touch runs piling up between syncs are refused with nothing
    changed (each was refused after changing state, or not at all)."""
    from services.guest.core.workloads import IdleConfig
    from services.guest.guest_service import FreeOp, TouchOp
    from services.guest.shard import MAX_CLIENT_WORKLOADS

    server, shard = guest_server
    with connect_guest(server.address, experiment_id="exp-g") as client:
        pfns = list(client.apply_ops(0, [AllocOp(order=0, migratetype=1, count=4)]).results[0].pfns)
        held = shard.slots[0].client_blocks.by_order()
        for batch in (
            [FreeOp(order=0, pfns=np.array([pfns[0]])), FreeOp(order=0, pfns=np.array([pfns[0]]))],
            [
                FreeOp(order=0, pfns=np.zeros(0, np.int64), count=3),
                FreeOp(order=0, pfns=np.zeros(0, np.int64), count=3),
            ],
        ):
            with pytest.raises(grpc.RpcError) as e:
                client.apply_ops(0, batch)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details().startswith("ops[1].")
            assert shard.slots[0].client_blocks.by_order() == held  # nothing was freed
        # two count frees that together fit are fine, and take different blocks
        done = client.apply_ops(
            0,
            [
                FreeOp(order=0, pfns=np.zeros(0, np.int64), count=2),
                FreeOp(order=0, pfns=np.zeros(0, np.int64), count=2),
            ],
        )
        assert sorted(p for r in done.results for p in r.pfns) == sorted(pfns)
        before = len(shard.slots[0].extra_workloads)
        with pytest.raises(grpc.RpcError) as e:
            client.start_workload(0, "idle", {}, (1 << 63) - 1)
        assert (
            e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "duration_ns" in e.value.details()
        )
        assert len(shard.slots[0].extra_workloads) == before  # nothing started
        runs = TouchOp(starts=np.arange(0, 1 << 17, 2), npages=np.ones(1 << 16, np.int64))
        pending = shard.slots[0].link.pending_runs
        with pytest.raises(grpc.RpcError) as e:
            client.apply_ops(0, [runs, runs])
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert shard.slots[0].link.pending_runs == pending  # nothing logged
    for _ in range(MAX_CLIENT_WORKLOADS - before):
        shard.start_workload(0, IdleConfig(), 1_000_000)
    with pytest.raises(ValueError, match="client workloads"):
        shard.start_workload(0, IdleConfig(), 1_000_000)


def one_idle_guest(name: str, host_memory: str, guest_memory: str) -> str:
    """A spec of one idle guest on one host, for clients to drive."""
    return (
        f"name: {name}\nduration: 10s\nhosts: [{{name: h, memory: {host_memory}}}]\n"
        f"guest_groups:\n  - {{name: g, count: 1, memory: {guest_memory}, "
        "workload: {kind: idle}}\n"
    )


BIG_GUEST_SPEC = one_idle_guest("held", "2GiB", "1GiB")


def test_a_free_costs_what_it_frees_not_what_the_client_holds():
    """Hostile-client finding: with ~250k order-0 blocks held, every free by count
    listed all of them (46.7 s for one batch of 4,096, the guest locked throughout).
    Now a batch of 4,096 frees (by count and by pfn) answers within a 5 s deadline (it
    takes about 0.1 s), and frees by count release the newest blocks, newest first."""
    spec = load_spec_text(BIG_GUEST_SPEC)
    shard = GuestShard(0, make_plan(spec, "exp-g", 1).shard_inits[0], spec.seed)
    server = start_guest_server(ShardApi(shard), ServerOptions(port=0), experiment_id="exp-g")
    with server, connect_guest(server.address, experiment_id="exp-g", timeout_s=5) as client:
        done = client.apply_ops(0, [AllocOp(order=0, migratetype=1, count=62_000)] * 4)
        held = [p for r in done.results for p in r.pfns]
        assert len(held) == 248_000
        frees = []
        for i in range(2048):  # by count and by pfn in turn, from the oldest for pfns
            frees += [
                FreeOp(order=0, pfns=np.zeros(0, np.int64), count=1),
                FreeOp(order=0, pfns=np.array([held[i]])),
            ]
        freed = client.apply_ops(0, frees).results  # refused past its deadline before
        assert [r.pfns[0] for r in freed[0::2]] == held[::-1][:2048]
        assert [r.pfns[0] for r in freed[1::2]] == held[:2048]
        assert shard.slots[0].client_blocks.by_order() == {0: held[2048:-2048]}


REPLY_GUEST_SPEC = one_idle_guest("reply", "8GiB", "5GiB")


def test_the_largest_reply_fits_in_a_grpc_message():
    """A batch's reply carries at most MAX_BATCH_BLOCKS pfns: at 10 bytes each (the
    longest varint), with the most ops and the longest other fields, it fits in
    gRPC's 16 MiB."""
    from overcommit.v1 import guest_pb2
    from services.guest.guest_service import MAX_BATCH_BLOCKS, MAX_OPS
    from services.transport.server import DEFAULT_MAX_MESSAGE_BYTES

    reply = guest_pb2.ApplyOpsResponse(now_ns=-1)
    per_op, rest = divmod(MAX_BATCH_BLOCKS, MAX_OPS)
    for i in range(MAX_OPS):
        reply.results.add(pfns=[2**64 - 1] * (per_op + (i < rest)), lost_ns=-1)
    assert sum(len(r.pfns) for r in reply.results) == MAX_BATCH_BLOCKS
    assert reply.ByteSize() <= DEFAULT_MAX_MESSAGE_BYTES


def test_a_batch_whose_reply_could_be_too_large_is_refused_before_it_runs():
    """Hostile-client finding: an alloc whose reply passed gRPC's 16 MiB allocated its
    5.2M blocks, then the reply was refused (RESOURCE_EXHAUSTED) and the client never
    learnt its pfns. Now a batch whose allocs and frees add up to more than
    MAX_BATCH_BLOCKS blocks is refused first (INVALID_ARGUMENT naming the op and the
    limit, nothing changed), and the largest allowed one is answered."""
    from services.guest.guest_service import MAX_BATCH_BLOCKS

    spec = load_spec_text(REPLY_GUEST_SPEC)
    shard = GuestShard(0, make_plan(spec, "exp-g", 1).shard_inits[0], spec.seed)
    server = start_guest_server(ShardApi(shard), ServerOptions(port=0), experiment_id="exp-g")
    half = MAX_BATCH_BLOCKS // 2
    none = np.zeros(0, np.int64)
    with server, connect_guest(server.address, experiment_id="exp-g", timeout_s=60) as client:
        before = client.guest_state(0).SerializeToString(deterministic=True)
        for batch, field in (
            ([AllocOp(0, 1, MAX_BATCH_BLOCKS + 1)], "ops[0].alloc.count"),
            ([AllocOp(0, 1, half), AllocOp(0, 1, half + 1)], "ops[1].alloc.count"),
            ([AllocOp(0, 1, half), FreeOp(0, none, count=half + 1)], "ops[1].free.count"),
            ([AllocOp(0, 1, half), FreeOp(0, np.arange(half + 1))], "ops[1].free.pfns"),
        ):
            with pytest.raises(grpc.RpcError) as e:
                client.apply_ops(0, batch)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details().startswith(field), e.value.details()
            assert str(MAX_BATCH_BLOCKS) in e.value.details()
            assert client.guest_state(0).SerializeToString(deterministic=True) == before
        assert shard.slots[0].client_blocks.by_order() == {}
        done = client.apply_ops(0, [AllocOp(0, 1, half), AllocOp(0, 1, half)])
        assert sum(len(r.pfns) for r in done.results) == MAX_BATCH_BLOCKS
        assert shard.slots[0].client_blocks.count(0) == MAX_BATCH_BLOCKS


@pytest.mark.parametrize(
    "workload,params,details",
    [
        ("trace", {}, "workload='trace': a trace workload is started from a spec's trace group"),
        ("rm -rf /", {}, "workload='rm -rf /': unknown workload kind (one of idle, "),
        ("x" * 5000, {}, "workload='" + "x" * 64 + "'... (5000 characters): unknown workload"),
        ("memhog", {"phases": "x"}, "params.phases: "),
        ("script", {"steps": [{"workload": {"kind": "idle"}}]}, "params.steps[0]: Value error"),
    ],
    ids=["trace", "unknown kind", "long kind", "bad param", "nested param"],
)
def test_start_workload_errors_name_the_field(guest_server, workload, params, details):
    """Hostile-client finding: a trace kind was refused without naming a field, and an
    unknown kind as "params.: Input tag 'rm -rf /' found ..." (an empty path, the value
    unquoted and uncut). Now the field is named, the value quoted and cut short."""
    server, shard = guest_server
    with connect_guest(server.address, experiment_id="exp-g") as client:
        with pytest.raises(grpc.RpcError) as e:
            client.start_workload(0, workload, params, 10**9)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith(details), e.value.details()
        assert len(e.value.details()) < 300
    assert shard.slots[0].extra_workloads == []
