"""HostService over real gRPC on 127.0.0.1 (port 0) against the real host core.

Round trips, every bad-input case (exact status code, and no state change),
idempotent retries, stale and future epochs, two shards in both arrival orders,
and the in-process transport giving the same answers as gRPC.
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from overcommit.v1 import host_pb2
from services.host.barrier import EpochBarrier
from services.host.directory import HostDirectory
from services.host.servicer import start_host_server
from services.protocol.clients import GrpcHostLink, InProcessHostLink, connect_host
from services.protocol.codec import decode_outcome
from services.protocol.messages import (
    EpochSubmission,
    GuestOps,
    GuestRegistration,
    PageRunOps,
    ReportOp,
)
from services.protocol.validation import MAX_REPORTS_PER_MESSAGE
from services.transport.client import RetryPolicy
from services.transport.errors import StatusError
from services.transport.server import ServerOptions
from services.transport.status import rich_status_of
from tests.contract.conftest import (
    EPOCH_NS,
    EXPERIMENT,
    GUEST_PAGES,
    RunningHost,
    guest_ops,
    make_host,
    register,
    state_of,
    sync_request,
    u64,
)

CODE = grpc.StatusCode


def test_register_sync_and_state_round_trip(running_host: RunningHost) -> None:
    client = running_host.client
    first = register(client, guest_id=1)
    assert (first.guest_id, first.host_id, first.nr_pages, first.next_epoch) == (
        1,
        0,
        GUEST_PAGES,
        0,
    )
    by_bytes = client.register_guest(
        host_pb2.RegisterGuestRequest(
            experiment_id=EXPERIMENT,
            host_id=0,
            shard_id=0,
            guest_id=2,
            size_bytes=GUEST_PAGES * 4096,
            discard_mode=host_pb2.DISCARD_MODE_FREE,
        )
    )
    assert by_bytes.nr_pages == GUEST_PAGES
    ops = [guest_ops(2, seed=1), guest_ops(1, seed=1)]
    response = client.sync_epoch(sync_request(0, 0, ops))
    assert (response.epoch, response.sequence) == (0, 0)
    assert [g.guest_id for g in response.guests] == [1, 2]
    for g, sent in zip(response.guests, sorted(ops, key=lambda o: o.guest_id), strict=True):
        assert [a.op_seq for a in g.report_acks] == [r.op_seq for r in sent.reports]
        assert all(
            a.status == host_pb2.REPORT_STATUS_OK and a.latency_ns > 0 for a in g.report_acks
        )
        # first touches cost faults and zero-fills; kinds with nothing are left out
        assert {"fault", "zero"} <= set(g.lost_ns)
        assert min(g.lost_ns.values()) > 0 and min(g.touched_pages.values()) > 0
        assert "swapin" not in g.lost_ns and g.lost_ns["swapin"] == 0  # proto3 map: 0
        assert sum(g.touched_pages.values()) == int(sent.touched.npages.sum())
        assert not g.stopped
    state = state_of(client)
    assert state.next_epoch == 1 and state.epoch_end_ns == sync_request(0, 0, []).epoch_end_ns
    assert state.counters["reports"] == 4 and state.counters["guests"] == 2
    assert [(g.guest_id, g.shard_id, g.nr_pages) for g in state.guests] == [
        (1, 0, GUEST_PAGES),
        (2, 0, GUEST_PAGES),
    ]
    assert list(state.shard_ids) == [0]
    running_host.endpoint.host.check_invariants()


def test_register_is_idempotent_and_refuses_a_different_registration(
    running_host: RunningHost,
) -> None:
    client = running_host.client
    register(client, guest_id=1)
    register(client, guest_id=1)  # same again: fine
    with pytest.raises(grpc.RpcError) as err:
        register(client, guest_id=1, nr_pages=GUEST_PAGES * 2)
    assert err.value.code() == CODE.ALREADY_EXISTS
    for bad, field in (
        (dict(page_size_bytes=8192), "page_size_bytes"),
        (dict(max_order=11), "max_order"),
        (dict(nr_pages=1000, guest_id=9), "nr_pages"),
    ):
        kwargs = dict(guest_id=3) | bad
        with pytest.raises(grpc.RpcError) as err:
            register(client, **kwargs)
        assert err.value.code() == CODE.INVALID_ARGUMENT and err.value.details().startswith(field)
    with pytest.raises(grpc.RpcError) as err:
        client.register_guest(
            host_pb2.RegisterGuestRequest(
                experiment_id=EXPERIMENT, host_id=0, shard_id=0, guest_id=4, nr_pages=GUEST_PAGES
            )
        )
    assert err.value.code() == CODE.INVALID_ARGUMENT and "discard_mode" in err.value.details()
    assert [g.guest_id for g in state_of(client).guests] == [1]


# ------------------------------------------------------------------ bad input


def _report(op_seq: int, pfns, orders) -> ReportOp:
    return ReportOp(op_seq, u64(pfns), np.asarray(orders, dtype=np.uint32))


def _runs(starts, npages, seqs) -> PageRunOps:
    return PageRunOps(u64(starts), u64(npages), u64(seqs))


def _bad(guest_id: int = 2, **kwargs) -> GuestOps:
    return GuestOps(guest_id, **kwargs)


BAD_OPS: dict[str, tuple[Callable[[], list[GuestOps]], grpc.StatusCode, str]] = {
    "pfn out of range": (
        lambda: [_bad(reports=(_report(1, [GUEST_PAGES], [0]),))],
        CODE.INVALID_ARGUMENT,
        f"guests[1].reports[0].pfns[0]={GUEST_PAGES}",
    ),
    "range past the end": (
        lambda: [_bad(reports=(_report(1, [GUEST_PAGES - 512], [10]),))],
        CODE.INVALID_ARGUMENT,
        "guests[1].reports[0].pfns[0]",
    ),
    "misaligned range": (
        lambda: [_bad(reports=(_report(1, [0, 513], [9, 1]),))],
        CODE.INVALID_ARGUMENT,
        "guests[1].reports[0].pfns[1]=513",
    ),
    "order out of range": (
        lambda: [_bad(reports=(_report(1, [0], [11]),))],
        CODE.INVALID_ARGUMENT,
        "guests[1].reports[0].orders[0]=11",
    ),
    "batch over capacity": (
        lambda: [_bad(reports=(_report(1, np.arange(33) * 512, [9] * 33),))],
        CODE.INVALID_ARGUMENT,
        "guests[1].reports[0].pfns=33",
    ),
    "empty batch": (
        lambda: [_bad(reports=(_report(1, [], []),))],
        CODE.INVALID_ARGUMENT,
        "guests[1].reports[0].pfns=0",
    ),
    "overlapping ranges": (
        lambda: [_bad(reports=(_report(1, [0, 256], [9, 8]),))],
        CODE.INVALID_ARGUMENT,
        "guests[1].reports[0].pfns[1]=256",
    ),
    "orders shorter than pfns": (
        lambda: [_bad(reports=(_report(1, [0, 512], [9]),))],
        CODE.INVALID_ARGUMENT,
        "guests[1].reports[0].orders=1",
    ),
    "duplicate report op_seq": (
        lambda: [_bad(reports=(_report(1, [0], [9]), _report(1, [512], [9])))],
        CODE.INVALID_ARGUMENT,
        "guests[1].reports[1].op_seq=1",
    ),
    "touch op_seq used by a report": (
        lambda: [_bad(reports=(_report(1, [0], [9]),), touched=_runs([0], [1], [1]))],
        CODE.INVALID_ARGUMENT,
        "guests[1].touched.op_seqs[0]=1",
    ),
    "npages zero": (
        lambda: [_bad(touched=_runs([0, 5], [1, 0], [1, 1]))],
        CODE.INVALID_ARGUMENT,
        "guests[1].touched.npages[1]=0",
    ),
    "run outside guest": (
        lambda: [_bad(touched=_runs([GUEST_PAGES - 10], [20], [1]))],
        CODE.INVALID_ARGUMENT,
        f"guests[1].touched.starts[0]={GUEST_PAGES - 10}",
    ),
    "freed run outside guest": (
        lambda: [_bad(freed=_runs([GUEST_PAGES], [1], [1]))],
        CODE.INVALID_ARGUMENT,
        f"guests[1].freed.starts[0]={GUEST_PAGES}",
    ),
    "op_seqs shorter than runs": (
        lambda: [_bad(touched=_runs([0, 8], [1, 1], [1]))],
        CODE.INVALID_ARGUMENT,
        "guests[1].touched.op_seqs=1",
    ),
    "guest twice": (lambda: [_bad(), _bad()], CODE.INVALID_ARGUMENT, "guests[2].guest_id=2"),
    "unknown guest": (lambda: [_bad(guest_id=77)], CODE.NOT_FOUND, "guests[1].guest_id=77"),
    "another shard's guest": (
        lambda: [_bad(guest_id=5)],
        CODE.PERMISSION_DENIED,
        "guests[1].guest_id=5",
    ),
}


def _setup_two_shards(client) -> None:
    register(client, guest_id=1, shard_id=0)
    register(client, guest_id=2, shard_id=0)
    register(client, guest_id=5, shard_id=1)


def _sync_both(client, epoch: int) -> None:
    """Shard 1 submits in a thread, shard 0 here: the epoch applies."""
    other = threading.Thread(
        target=client.sync_epoch, args=(sync_request(1, epoch, [guest_ops(5, seed=epoch)]),)
    )
    other.start()
    client.sync_epoch(sync_request(0, epoch, [guest_ops(1, seed=epoch), guest_ops(2, seed=epoch)]))
    other.join(timeout=10)


@pytest.mark.parametrize("case", sorted(BAD_OPS))
def test_bad_input_is_refused_with_the_exact_status_and_changes_nothing(
    running_host: RunningHost, case: str
) -> None:
    client = running_host.client
    _setup_two_shards(client)
    _sync_both(client, 0)  # some state to protect
    before, counters = state_of(client), running_host.endpoint.host.host_counters()
    make_ops, code, details = BAD_OPS[case]
    # A valid guest comes first: a refused message must not half-apply it.
    request = sync_request(0, 1, [guest_ops(1, seed=99), *make_ops()])
    with pytest.raises(grpc.RpcError) as err:
        client.sync_epoch(request)
    assert err.value.code() == code, err.value.details()
    assert err.value.details().startswith(details), err.value.details()
    assert state_of(client) == before
    assert running_host.endpoint.host.host_counters() == counters
    assert running_host.endpoint.pending_shards() == []
    rich = rich_status_of(err.value)
    assert rich is not None and rich.code == code.value[0] and rich.message == err.value.details()
    _sync_both(client, 1)  # the epoch is still open: nothing was stored
    assert state_of(client).next_epoch == 2


@pytest.mark.parametrize(
    ("experiment_id", "host_id", "field"),
    [
        ("no-such-experiment", 0, "experiment_id='no-such-experiment'"),
        (EXPERIMENT, 9, "host_id=9"),
        ("", 0, "experiment_id=''"),
    ],
)
def test_unknown_experiment_or_host(
    running_host: RunningHost, experiment_id: str, host_id: int, field: str
) -> None:
    client = running_host.client
    register(client, guest_id=1)
    request = sync_request(0, 0, [guest_ops(1, seed=0)])
    request.experiment_id, request.host_id = experiment_id, host_id
    with pytest.raises(grpc.RpcError) as err:
        client.sync_epoch(request)
    expected = CODE.INVALID_ARGUMENT if not experiment_id else CODE.NOT_FOUND
    assert err.value.code() == expected and err.value.details().startswith(field)
    assert state_of(client).next_epoch == 0


def test_unregistered_shard_is_not_found(running_host: RunningHost) -> None:
    register(running_host.client, guest_id=1, shard_id=0)
    with pytest.raises(grpc.RpcError) as err:
        running_host.client.sync_epoch(sync_request(3, 0, []))
    assert err.value.code() == CODE.NOT_FOUND and err.value.details().startswith("shard_id=3")


def test_message_over_the_size_limit_is_resource_exhausted() -> None:
    endpoint = EpochBarrier(EXPERIMENT, 0, make_host())
    server = start_host_server(HostDirectory([endpoint]), ServerOptions(max_message_bytes=64 << 10))
    with server, connect_host(server.address, timeout_s=10) as client:
        register(client, guest_id=1)
        before = state_of(client)
        n = 20_000  # ~120 KiB of packed runs
        big = GuestOps(1, touched=_runs(np.arange(n), np.ones(n), np.ones(n)))
        with pytest.raises(grpc.RpcError) as err:
            client.sync_epoch(sync_request(0, 0, [big]))
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED
        assert state_of(client) == before


# ------------------------------------------------------ epochs and idempotency


def test_retried_sync_returns_the_stored_response_and_applies_nothing_twice(
    running_host: RunningHost,
) -> None:
    client = running_host.client
    register(client, guest_id=1)
    request = sync_request(0, 0, [guest_ops(1, seed=3)])
    first = client.sync_epoch(request)
    after_first = state_of(client)
    counters = running_host.endpoint.host.host_counters()
    assert client.sync_epoch(request) == first
    assert state_of(client) == after_first
    assert running_host.endpoint.host.host_counters() == counters


class DropFirstResponse(grpc.ServerInterceptor):
    """Runs SyncEpoch, then loses the response once (UNAVAILABLE), like a broken connection."""

    def __init__(self) -> None:
        self.dropped = 0

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if not handler_call_details.method.endswith("/SyncEpoch"):
            return handler

        def run_then_drop(request, context):
            response = handler.unary_unary(request, context)
            if self.dropped == 0:
                self.dropped += 1
                context.abort(CODE.UNAVAILABLE, "response lost (test)")
            return response

        return grpc.unary_unary_rpc_method_handler(
            run_then_drop, handler.request_deserializer, handler.response_serializer
        )


def test_client_retries_unavailable_and_the_host_applies_once() -> None:
    endpoint = EpochBarrier(EXPERIMENT, 0, make_host())
    dropper = DropFirstResponse()
    server = start_host_server(HostDirectory([endpoint]), ServerOptions(interceptors=(dropper,)))
    with (
        server,
        connect_host(
            server.address, timeout_s=10, retry=RetryPolicy(initial_backoff_s=0.001)
        ) as client,
    ):
        register(client, guest_id=1)
        ops = guest_ops(1, seed=4)
        response = client.sync_epoch(sync_request(0, 0, [ops]))
        assert dropper.dropped == 1 and client.caller.retries == 1
        assert len(response.guests[0].report_acks) == len(ops.reports)
        assert endpoint.host.host_counters()["reports"] == len(ops.reports)
        assert state_of(client).next_epoch == 1


@pytest.mark.parametrize(
    ("epoch", "sequence", "reason"), [(0, 7, "stale"), (2, 2, "future"), (5, 5, "future")]
)
def test_stale_or_future_epoch_is_failed_precondition(
    running_host: RunningHost, epoch: int, sequence: int, reason: str
) -> None:
    client = running_host.client
    register(client, guest_id=1)
    client.sync_epoch(sync_request(0, 0, [guest_ops(1, seed=0)]))
    before = state_of(client)
    with pytest.raises(grpc.RpcError) as err:
        client.sync_epoch(sync_request(0, epoch, [guest_ops(1, seed=1)], sequence=sequence))
    assert err.value.code() == CODE.FAILED_PRECONDITION
    assert err.value.details().startswith(f"epoch={epoch}: {reason}")
    assert state_of(client) == before


def test_epoch_end_must_not_go_back(running_host: RunningHost) -> None:
    client = running_host.client
    register(client, guest_id=1)
    client.sync_epoch(sync_request(0, 0, []))
    request = sync_request(0, 1, [])
    request.epoch_end_ns = 1
    with pytest.raises(grpc.RpcError) as err:
        client.sync_epoch(request)
    assert err.value.code() == CODE.INVALID_ARGUMENT and err.value.details().startswith(
        "epoch_end_ns=1"
    )


def test_waiting_for_a_missing_shard_ends_at_the_deadline_and_a_retry_completes(
    running_host: RunningHost,
) -> None:
    client = running_host.client
    register(client, guest_id=1, shard_id=0)
    register(client, guest_id=2, shard_id=1)
    request = sync_request(0, 0, [guest_ops(1, seed=0)])
    with pytest.raises(grpc.RpcError) as err:
        client.sync_epoch(request, timeout_s=0.3)
    assert err.value.code() == CODE.DEADLINE_EXCEEDED
    assert running_host.endpoint.pending_shards() == [0]
    other = threading.Thread(
        target=client.sync_epoch, args=(sync_request(1, 0, [guest_ops(2, seed=0)]),)
    )
    other.start()
    response = client.sync_epoch(request)  # the retry finds its stored submission
    other.join(timeout=10)
    assert [g.guest_id for g in response.guests] == [1]
    assert state_of(client).next_epoch == 1


# ----------------------------------------------------- determinism across shards


SHARD_GUESTS = {0: (1, 4), 1: (2, 3)}  # guest ids interleave across shards
PRESSURE_HOST_BYTES = 96 << 20  # the guests touch more than this: reclaim swaps


def _pressure_requests(epoch: int) -> dict[int, host_pb2.SyncEpochRequest]:
    """Each guest touches ~48 MiB per epoch and reports 4 blocks: the pool overflows."""
    return {
        s: sync_request(
            s, epoch, [guest_ops(g, seed=epoch, touches=6, report_blocks=4) for g in gs]
        )
        for s, gs in SHARD_GUESTS.items()
    }


def _sync_in_order(
    client,
    endpoint: EpochBarrier,
    requests: dict[int, host_pb2.SyncEpochRequest],
    arrival: tuple[int, int],
) -> dict[int, host_pb2.SyncEpochResponse]:
    """Shard ``arrival[0]``'s call is stored (and waiting) before ``arrival[1]``'s is sent."""
    first, second = arrival
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(client.sync_epoch, requests[first])
        assert endpoint.wait_pending([first], timeout_s=60), "the first shard's call never arrived"
        results = {second: client.sync_epoch(requests[second])}
        results[first] = waiting.result(timeout=20)
    return results


def _run_two_shards(
    arrival: tuple[int, int], epochs: int = 4
) -> tuple[list, host_pb2.GetHostStateResponse]:
    """Both shards sync ``epochs`` epochs over gRPC, ``arrival[0]`` always first."""
    endpoint = EpochBarrier(EXPERIMENT, 0, make_host(memory_bytes=PRESSURE_HOST_BYTES))
    server = start_host_server(HostDirectory([endpoint]), ServerOptions())
    responses = []
    with server, connect_host(server.address, timeout_s=20) as client:
        for shard, guests in SHARD_GUESTS.items():
            for guest_id in guests:
                register(client, guest_id=guest_id, shard_id=shard)
        for epoch in range(epochs):
            results = _sync_in_order(client, endpoint, _pressure_requests(epoch), arrival)
            responses.append((results[0], results[1]))
        state = state_of(client)
        endpoint.host.check_invariants()
    return responses, state


def test_two_shards_give_identical_results_in_both_arrival_orders() -> None:
    responses_01, state_01 = _run_two_shards((0, 1))
    responses_10, state_10 = _run_two_shards((1, 0))
    assert responses_01 == responses_10
    assert state_01 == state_10
    assert state_01.counters["swapout_bytes"] > 0, "the scenario must make the host swap"
    swapped = sum(
        len(g.swapped_out.starts) for pair in responses_01 for r in pair for g in r.guests
    )
    assert swapped > 0


def _plain_submissions(epoch: int) -> dict[int, EpochSubmission]:
    return {
        s: EpochSubmission(
            s,
            epoch,
            epoch,
            (epoch + 1) * EPOCH_NS,
            tuple(guest_ops(g, seed=epoch, touches=6, report_blocks=4) for g in gs),
        )
        for s, gs in SHARD_GUESTS.items()
    }


def test_in_process_link_matches_grpc_and_drives_several_shards_from_one_thread() -> None:
    grpc_responses, grpc_state = _run_two_shards((1, 0))
    endpoint = EpochBarrier(EXPERIMENT, 0, make_host(memory_bytes=PRESSURE_HOST_BYTES))
    local = InProcessHostLink(EXPERIMENT, HostDirectory([endpoint]))
    for shard, guests in SHARD_GUESTS.items():
        for guest_id in guests:
            local.register(0, GuestRegistration(guest_id, shard, GUEST_PAGES, "dontneed"))
    outcomes = []
    for epoch in range(len(grpc_responses)):
        subs = _plain_submissions(epoch)
        local.submit(0, subs[0])
        assert endpoint.collect(0, epoch, epoch) is None  # shard 1 has not submitted yet
        local.submit(0, subs[1])
        outcomes.append((local.collect(0, subs[0]), local.collect(0, subs[1])))
    assert outcomes == [(decode_outcome(a), decode_outcome(b)) for a, b in grpc_responses]
    assert [g.guest_id for g in outcomes[-1][0].guests] == list(SHARD_GUESTS[0])
    assert endpoint.state()["counters"] == dict(grpc_state.counters)


BAD_REGISTRATIONS = [
    GuestRegistration(7, 0, GUEST_PAGES, "dontneed", page_size_bytes=2 << 20),
    GuestRegistration(7, 0, 0, "dontneed", size_bytes=(1 << 20) + 1),
    GuestRegistration(7, 0, 0, "dontneed", size_bytes=0),
    GuestRegistration(7, 0, 0, "dontneed"),
    GuestRegistration(7, 0, GUEST_PAGES, "bogus"),
    GuestRegistration(7, 0, GUEST_PAGES, "dontneed", max_order=99),
]


@pytest.mark.parametrize("reg", BAD_REGISTRATIONS, ids=lambda r: str(r)[:60])
def test_both_links_refuse_a_bad_registration_alike(running_host: RunningHost, reg) -> None:
    remote = GrpcHostLink(EXPERIMENT, {0: running_host.server.address}, timeout_s=10)
    local = InProcessHostLink(EXPERIMENT, running_host.directory)
    with pytest.raises(
        (grpc.RpcError, StatusError)
    ) as grpc_err:  # the encoder refuses what protobuf can't carry
        remote.register(0, reg)
    with pytest.raises(StatusError) as local_err:
        local.register(0, reg)
    remote.close()
    assert (local_err.value.code().name, local_err.value.details()) == (
        grpc_err.value.code().name,
        grpc_err.value.details(),
    )
    assert state_of(running_host.client).guests == []


BAD_PLAIN_OPS = [
    GuestOps(1, reports=(ReportOp(1, u64([513]), np.array([1], np.uint32)),)),  # misaligned
    GuestOps(1, reports=(ReportOp(1, u64([0]), np.array([11], np.uint32)),)),  # order too high
    GuestOps(1, touched=PageRunOps(u64([GUEST_PAGES - 1]), u64([2]), u64([1]))),  # past the end
    GuestOps(1, touched=PageRunOps(u64([0]), u64([0]), u64([1]))),  # empty run
    GuestOps(9),  # unknown guest
]


def _refusal_on_both_links(
    running_host: RunningHost, guests: tuple[GuestOps, ...], shard: int = 0, epoch: int = 0
) -> StatusError:
    """Send one message of ``guests`` from ``shard`` for ``epoch`` (guest 1 registered by
    shard 0) over gRPC and in process: both must refuse it with the same status and
    details, and change nothing. Returns the in-process refusal."""
    register(running_host.client, guest_id=1)
    remote = GrpcHostLink(EXPERIMENT, {0: running_host.server.address}, timeout_s=30)
    local = InProcessHostLink(EXPERIMENT, running_host.directory)
    sub = EpochSubmission(shard, epoch, epoch, (epoch + 1) * EPOCH_NS, guests)
    with pytest.raises(grpc.RpcError) as grpc_err:
        remote.sync(0, sub)
    with pytest.raises(StatusError) as local_err:
        local.sync(0, sub)
    remote.close()
    assert (local_err.value.code().name, local_err.value.details()) == (
        grpc_err.value.code().name,
        grpc_err.value.details(),
    )
    assert state_of(running_host.client).next_epoch == 0
    return local_err.value


@pytest.mark.parametrize("ops", BAD_PLAIN_OPS, ids=range(len(BAD_PLAIN_OPS)))
def test_both_links_refuse_bad_ops_alike_and_change_nothing(running_host: RunningHost, ops) -> None:
    _refusal_on_both_links(running_host, (ops,))


def test_a_negative_number_is_refused_before_it_reaches_either_link(
    running_host: RunningHost,
) -> None:
    register(running_host.client, guest_id=1)
    remote = GrpcHostLink(EXPERIMENT, {0: running_host.server.address}, timeout_s=10)
    local = InProcessHostLink(EXPERIMENT, running_host.directory)
    sub = EpochSubmission(
        0,
        0,
        0,
        EPOCH_NS,
        (GuestOps(1, touched=PageRunOps(np.array([-4]), np.array([1]), np.array([1]))),),
    )
    with pytest.raises(StatusError) as remote_err:
        remote.sync(0, sub)
    with pytest.raises(StatusError) as local_err:
        local.sync(0, sub)
    remote.close()
    assert (
        remote_err.value.details()
        == local_err.value.details()
        == ("guests[0].touched.starts[0]=-4: must not be negative")
    )
    assert state_of(running_host.client).next_epoch == 0


def test_both_links_refuse_an_oversized_message_alike() -> None:
    barrier = EpochBarrier(EXPERIMENT, 0, make_host())
    directory = HostDirectory([barrier])
    server = start_host_server(directory, ServerOptions(max_message_bytes=64 << 10))
    n = 20_000  # ~120 KiB of packed runs
    big = GuestOps(1, touched=PageRunOps(u64(np.arange(n)), u64(np.ones(n)), u64(np.ones(n))))
    sub = EpochSubmission(0, 0, 0, EPOCH_NS, (big,))
    local = InProcessHostLink(EXPERIMENT, directory, max_message_bytes=64 << 10)
    with server:
        remote = GrpcHostLink(EXPERIMENT, {0: server.address}, timeout_s=10)
        remote.register(0, GuestRegistration(1, 0, GUEST_PAGES, "dontneed"))
        with pytest.raises(grpc.RpcError) as grpc_err:
            remote.sync(0, sub)
        remote.close()
    with pytest.raises(StatusError) as local_err:
        local.sync(0, sub)
    assert grpc_err.value.code().name == local_err.value.code().name == "RESOURCE_EXHAUSTED"
    assert barrier.state()["next_epoch"] == 0


def _crowded_messages() -> list[tuple[GuestOps, ...]]:
    """Messages refused for their counts alone: more guests than the host has
    registered (one guest named three times), and one report batch too many."""
    batch = ReportOp(1, u64([0]), np.array([0], np.uint32))
    return [
        (GuestOps(1), GuestOps(1), GuestOps(1)),
        (GuestOps(1, reports=(batch,) * (MAX_REPORTS_PER_MESSAGE + 1)),),
    ]


@pytest.mark.parametrize(
    ("which", "shard", "epoch", "expected"),
    [
        (0, 0, 0, "guests=3: "),
        (1, 0, 0, f"guests[0].reports={MAX_REPORTS_PER_MESSAGE + 1}: "),
        (0, 5, 0, "shard_id=5: "),  # the header is checked first, on both links
        (0, 0, 3, "epoch=3: future"),
        (1, 0, 3, "epoch=3: future"),
    ],
    ids=["guests", "reports", "unknown-shard", "future-epoch", "future-epoch-reports"],
)
def test_both_links_refuse_a_crowded_message_alike(
    running_host: RunningHost, which, shard, epoch, expected
) -> None:
    refusal = _refusal_on_both_links(running_host, _crowded_messages()[which], shard, epoch)
    assert refusal.details().startswith(expected)


def test_the_host_server_refuses_extra_guests_before_decoding_them(
    running_host: RunningHost,
) -> None:
    """A message naming 50,000 guests on a host with one: refused before any of them is
    decoded (decoding them takes about 1 KB each on the server, in this process)."""
    register(running_host.client, guest_id=1)
    remote = GrpcHostLink(EXPERIMENT, {0: running_host.server.address}, timeout_s=60)
    guests = tuple(
        GuestOps(1, touched=PageRunOps(u64([0]), u64([1]), u64([1]))) for _ in range(50_000)
    )
    sub = EpochSubmission(0, 0, 0, EPOCH_NS, guests)
    tracemalloc.start()
    try:
        with pytest.raises(grpc.RpcError) as err:
            remote.sync(0, sub)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        remote.close()
    assert err.value.details().startswith("guests=50000: ")
    assert peak < 24 << 20, peak  # decoded, the guests alone would take about 50 MB
    assert state_of(running_host.client).next_epoch == 0


def test_the_in_process_link_names_the_missing_shard_at_once() -> None:
    barrier = EpochBarrier(EXPERIMENT, 0, make_host())
    local = InProcessHostLink(EXPERIMENT, HostDirectory([barrier]))
    for guest_id, shard in ((1, 0), (2, 1)):
        local.register(0, GuestRegistration(guest_id, shard, GUEST_PAGES, "dontneed"))
    sub = EpochSubmission(0, 0, 0, EPOCH_NS, (guest_ops(1, seed=0),))
    local.submit(0, sub)
    with pytest.raises(StatusError) as err:
        local.collect(0, sub)
    assert err.value.code().name == "DEADLINE_EXCEEDED"
    assert "waits for shards [1]" in err.value.details()
