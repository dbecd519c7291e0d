"""One experiment kept busy by its own client never takes the whole server.

Real gRPC servers on 127.0.0.1 port 0 over the real ExperimentManager (in-process
backend). Calls that wait for a busy experiment are bounded in number and by their
deadline, and Cancel never waits for the call running on the experiment. Waits poll
the manager's own counters with a deadline (no sleeps).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from overcommit.v1 import experiment_pb2
from services.sim import experiment_manager
from services.sim.experiment_service import connect_experiments
from tests.contract.conftest import wait_until
from tests.contract.test_serve_security import SPEC, _health, _start_long_advance
from tests.contract.test_serve_security import served as _small_server

CODE = grpc.StatusCode
LIMIT = experiment_manager.MAX_CALLS_PER_EXPERIMENT
# the same small server (8 workers: fewer than the calls a client throws at one experiment)
served = _small_server


def test_calls_on_one_busy_experiment_are_bounded_and_cancel_does_not_wait(served) -> None:
    server, manager = served
    with connect_experiments(server.address, timeout_s=10) as client:
        exp_id, _ = client.create(SPEC)
        other_id, _ = client.create(SPEC)
        exp = manager._get(exp_id)
        worker, result = _start_long_advance(client, manager, exp_id)
        request = experiment_pb2.GetSummaryRequest(experiment_id=exp_id)
        waiting = [client.stub.GetSummary.future(request, timeout=120) for _ in range(LIMIT - 1)]
        assert wait_until(lambda: exp.calls == LIMIT), exp.calls  # the advance and the waiters
        with pytest.raises(grpc.RpcError) as err:  # one more is refused at once
            client.stub.GetSummary(request, timeout=10)
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED
        assert err.value.details().startswith(f"experiment_id={exp_id!r}"), err.value.details()
        # the rest of the server is served: health, the listing, another experiment
        assert _health(server) == health_pb2.HealthCheckResponse.SERVING
        assert len(client.list_experiments()) == 2
        assert client.summary(other_id)["state"] == "created"
        # Cancel answers while the advance still holds the experiment
        assert client.cancel(exp_id).state == experiment_pb2.EXPERIMENT_STATE_CANCELLED
        worker.join(60)
        assert not worker.is_alive(), "the advance went on after Cancel"
        assert "response" in result, result
        for call in waiting:  # the waiters were served once the experiment was free
            assert call.result(timeout=60).summary_json
        assert exp.state == "cancelled" and exp.calls == 0
        assert client.list_experiments()[0].state == experiment_pb2.EXPERIMENT_STATE_CANCELLED


def test_a_call_waits_for_a_busy_experiment_no_longer_than_its_deadline(served) -> None:
    server, manager = served
    with connect_experiments(server.address, timeout_s=10) as client:
        exp_id, _ = client.create(SPEC)
        exp = manager._get(exp_id)
        worker, _ = _start_long_advance(client, manager, exp_id)
        for call in (
            lambda: client.stub.GetSummary(
                experiment_pb2.GetSummaryRequest(experiment_id=exp_id), timeout=0.5
            ),
            lambda: client.stub.Advance(
                experiment_pb2.AdvanceRequest(experiment_id=exp_id, duration_ns=10**9),
                timeout=0.5,
            ),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == CODE.DEADLINE_EXCEEDED
            # the server gave up waiting too: its worker is free again, long before the
            # advance ends
            assert wait_until(lambda: exp.calls == 1, timeout_s=10), exp.calls
        assert worker.is_alive() and exp.state == "created"
        client.cancel(exp_id)
        worker.join(60)
        assert not worker.is_alive()


def test_cancel_answers_while_a_call_holds_the_experiment(served) -> None:
    """Cancel sets a flag and returns; whoever holds the experiment cleans up as it lets go
    (here the test holds it, as a call in the middle of a long chunk would)."""
    server, manager = served
    with connect_experiments(server.address, timeout_s=10) as client:
        exp_id, _ = client.create(SPEC)
        client.advance(exp_id, 10**9, timeout_s=120)
        exp = manager._get(exp_id)
        with manager._hold(exp, None):
            assert client.cancel(exp_id).state == experiment_pb2.EXPERIMENT_STATE_CANCELLED
            assert client.list_experiments()[0].state == experiment_pb2.EXPERIMENT_STATE_CANCELLED
            assert exp.state == "created" and exp.sim is not None  # not cleaned up yet
        assert exp.state == "cancelled"  # done as the holder let go
        with pytest.raises(grpc.RpcError) as err:
            client.advance(exp_id, 10**9)
        assert err.value.code() == CODE.FAILED_PRECONDITION


def _guests_of_a_new_experiment(server, manager) -> tuple:
    """(experiment id, its GuestService router, its in-process guest shards)."""
    with connect_experiments(server.address, timeout_s=10) as client:
        exp_id, _ = client.create(SPEC)
    router = manager.guest_router(exp_id)
    return exp_id, router, manager._get(exp_id).sim.session.driver.shards


def test_guest_calls_waiting_for_a_busy_shard_are_bounded(served) -> None:
    """GuestService calls on one experiment's guests wait for their shard between epochs;
    at most MAX_GUEST_CALLS_PER_EXPERIMENT do at once, and one more is refused at once,
    so one experiment's guests cannot take the server's workers. The shard is kept busy
    by holding its own lock, as an epoch does."""
    from overcommit.v1 import guest_pb2
    from services.guest.guest_service import connect_guest
    from services.sim.guest_proxy import MAX_GUEST_CALLS_PER_EXPERIMENT as GUEST_LIMIT

    server, manager = served
    exp_id, router, shards = _guests_of_a_new_experiment(server, manager)
    request = guest_pb2.GetGuestStateRequest(experiment_id=exp_id, guest_id=0)
    with connect_guest(server.address, experiment_id=exp_id, timeout_s=10) as guests:
        for shard in shards:
            shard.lock.acquire()
        try:
            waiting = [
                guests.stub.GetGuestState.future(request, timeout=120) for _ in range(GUEST_LIMIT)
            ]
            assert wait_until(lambda: router.calls == GUEST_LIMIT), router.calls
            with pytest.raises(grpc.RpcError) as err:
                guests.stub.GetGuestState(request, timeout=10)
            assert err.value.code() == CODE.RESOURCE_EXHAUSTED
            assert err.value.details().startswith(f"experiment_id={exp_id!r}")
            assert _health(server) == health_pb2.HealthCheckResponse.SERVING
        finally:
            for shard in shards:
                shard.lock.release()
        assert all(call.result(timeout=60).guest_id == 0 for call in waiting)
        assert router.calls == 0


def test_a_guest_call_that_cannot_get_its_shard_before_its_deadline_does_nothing(
    served,
) -> None:
    """An alloc that waited for a busy shard past its deadline must not allocate: its
    client, gone, would never learn the blocks' pfns."""
    from overcommit.v1 import guest_pb2
    from services.guest.guest_service import AllocOp, connect_guest, encode_ops

    server, manager = served
    exp_id, router, shards = _guests_of_a_new_experiment(server, manager)
    state = guest_pb2.GetGuestStateRequest(experiment_id=exp_id, guest_id=0)
    alloc = guest_pb2.ApplyOpsRequest(
        experiment_id=exp_id, guest_id=0, ops=encode_ops([AllocOp(0, 1, 8)])
    )
    with connect_guest(server.address, experiment_id=exp_id, timeout_s=10) as guests:
        before = guests.stub.GetGuestState(state, timeout=30)
        for shard in shards:
            shard.lock.acquire()
        try:
            late = guests.stub.ApplyOps.future(alloc, timeout=0.5)
            with pytest.raises(grpc.RpcError) as err:
                late.result(timeout=60)
            assert err.value.code() == CODE.DEADLINE_EXCEEDED
            assert wait_until(lambda: router.calls == 0)  # the server let go of the call
        finally:
            for shard in shards:
                shard.lock.release()
        after = guests.stub.GetGuestState(state, timeout=30)
        assert list(after.free_areas) == list(before.free_areas), "the late alloc ran"
        done = guests.stub.ApplyOps(alloc, timeout=30)  # in time: it runs
        assert len(done.results[0].pfns) == 8
