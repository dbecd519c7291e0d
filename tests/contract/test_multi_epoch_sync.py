"""SyncEpoch covering several epochs (``epochs`` > 1, per-guest ``epoch_seq_ends``).

The host must end up exactly where the same operations sent one epoch per
message would leave it: it applies the covered epochs one at a time, every
shard's guests in guest-id order within each, and reclaims after each. Real
gRPC on 127.0.0.1 port 0 against the real host core.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from overcommit.v1 import host_pb2
from services.host.barrier import EpochBarrier
from services.host.directory import HostDirectory
from services.host.servicer import start_host_server
from services.protocol.clients import connect_host
from services.protocol.messages import GuestOps, PageRunOps, ReportOp
from services.transport.server import ServerOptions
from tests.contract.conftest import (
    EPOCH_NS,
    EXPERIMENT,
    build_sync_request,
    guest_ops,
    make_host,
    register,
    state_of,
)
from tests.contract.test_host_service import PRESSURE_HOST_BYTES

EPOCHS = 4


def shifted(ops: GuestOps, offset: int) -> GuestOps:
    """The same operations with every op_seq moved up by ``offset``."""

    def runs(r: PageRunOps) -> PageRunOps:
        return PageRunOps(r.starts, r.npages, r.op_seqs + np.uint64(offset))

    return GuestOps(
        ops.guest_id,
        tuple(ReportOp(r.op_seq + offset, r.pfns, r.orders) for r in ops.reports),
        runs(ops.touched),
        runs(ops.freed),
    )


def last_seq(ops: GuestOps) -> int:
    seqs = [r.op_seq for r in ops.reports] + [int(x) for x in ops.touched.op_seqs]
    return max(seqs, default=0)


def combined(per_epoch: list[GuestOps]) -> GuestOps:
    """One guest's ops of consecutive epochs as one multi-epoch GuestOps."""
    parts, ends, offset = [], [], 0
    for ops in per_epoch:
        moved = shifted(ops, offset)
        parts.append(moved)
        offset = max(offset, last_seq(moved))
        ends.append(offset)
    return GuestOps(
        per_epoch[0].guest_id,
        tuple(r for p in parts for r in p.reports),
        PageRunOps(
            *(
                np.concatenate([getattr(p.touched, f) for p in parts])
                for f in ("starts", "npages", "op_seqs")
            )
        ),
        epoch_seq_ends=np.asarray(ends, np.uint64),
    )


def workload(guest_id: int) -> list[GuestOps]:
    return [
        guest_ops(guest_id, seed=10 * guest_id + e, touches=10, reports=1) for e in range(EPOCHS)
    ]


def request(
    shard: int,
    epoch: int,
    guests,
    epochs: int = 1,
    next_epoch: int = 0,
    sequence: int = 0,
    sample: bool = False,
):
    return build_sync_request(
        EXPERIMENT,
        0,
        shard,
        epoch,
        sequence,
        (epoch + epochs) * EPOCH_NS,
        guests,
        next_epoch,
        epochs,
        sample,
    )


def both(client, req0, req1):
    """Send shard 1's message and shard 0's concurrently (the host waits for both)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(client.sync_epoch, req1)
        mine = client.sync_epoch(req0)
        return mine, other.result(timeout=120)


def lost(answer) -> dict[int, dict[str, int]]:
    return {g.guest_id: dict(g.lost_ns) for g in answer.guests}


@pytest.fixture
def two_hosts():
    """Two identical hosts under memory pressure, each with guest 1 (shard 0) and guest 2 (shard 1)."""
    endpoints = [
        EpochBarrier(EXPERIMENT, 0, make_host(memory_bytes=PRESSURE_HOST_BYTES)) for _ in range(2)
    ]
    servers = [start_host_server(HostDirectory([ep]), ServerOptions()) for ep in endpoints]
    clients = []
    try:
        for s in servers:
            s.start()
            c = connect_host(s.address, timeout_s=120)
            register(c, guest_id=1, shard_id=0)
            register(c, guest_id=2, shard_id=1)
            clients.append(c)
        yield list(zip(clients, endpoints, strict=True))
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.stop()


def test_one_sync_of_four_epochs_leaves_the_host_as_four_syncs_would(two_hosts):
    (single, single_ep), (multi, multi_ep) = two_hosts
    ops1, ops2 = workload(1), workload(2)
    per_epoch_lost: dict[int, dict[str, int]] = {1: {}, 2: {}}
    for e in range(EPOCHS):
        a0, a1 = both(
            single, request(0, e, [ops1[e]], sequence=e), request(1, e, [ops2[e]], sequence=e)
        )
        for answer in (a0, a1):
            for gid, kinds in lost(answer).items():
                for k, v in kinds.items():
                    per_epoch_lost[gid][k] = per_epoch_lost[gid].get(k, 0) + v
    m0, m1 = both(
        multi, request(0, 0, [combined(ops1)], EPOCHS), request(1, 0, [combined(ops2)], EPOCHS)
    )

    a, b = single_ep.host, multi_ep.host
    assert a.host_counters()["swap_used_bytes"] > 0, "the workload must push the host into swap"
    assert b.host_counters() == a.host_counters()
    for gid in (1, 2):
        assert b.guest_counters(gid) == a.guest_counters(gid)
        assert np.array_equal(b.residency(gid), a.residency(gid))
    assert {**lost(m0), **lost(m1)} == per_epoch_lost
    assert state_of(multi).next_epoch == state_of(single).next_epoch == EPOCHS
    # the answer names exactly the pages still swapped out at its end
    for answer in (m0, m1):
        for g in answer.guests:
            pages = np.concatenate(
                [
                    np.arange(s, s + n)
                    for s, n in zip(g.swapped_out.starts, g.swapped_out.npages, strict=True)
                ]
                or [np.zeros(0, int)]
            )
            assert len(pages) and (b.residency(g.guest_id)[pages] == 3).all()  # RES_SWAPPED


@pytest.fixture
def one_host():
    endpoint = EpochBarrier(EXPERIMENT, 0, make_host())
    server = start_host_server(HostDirectory([endpoint]), ServerOptions())
    with server, connect_host(server.address, timeout_s=120) as client:
        register(client, guest_id=1, shard_id=0)
        register(client, guest_id=2, shard_id=1)
        yield client, endpoint


def refused(client, req) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        client.sync_epoch(req)
    return e.value


@pytest.mark.parametrize(
    "ends, field",
    [
        ([5, 9], "guests[0].epoch_seq_ends"),  # two entries for three epochs
        ([5, 3, 99], "guests[0].epoch_seq_ends[1]"),  # decreasing
        ([1, 2, 3], "guests[0].epoch_seq_ends[2]"),  # ops after the last covered epoch
    ],
)
def test_bad_epoch_seq_ends_are_invalid_argument_and_change_nothing(one_host, ends, field):
    client, endpoint = one_host
    before = endpoint.host.host_counters()
    ops = guest_ops(1, seed=1)
    bad = GuestOps(1, ops.reports, ops.touched, epoch_seq_ends=np.asarray(ends, np.uint64))
    err = refused(client, request(0, 0, [bad], epochs=3))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(field + "=")
    assert endpoint.host.host_counters() == before
    assert state_of(client).next_epoch == 0


def test_epoch_seq_ends_on_a_one_epoch_message_are_invalid(one_host):
    client, _ = one_host
    ops = guest_ops(1, seed=1)
    err = refused(
        client,
        request(
            0,
            0,
            [GuestOps(1, ops.reports, ops.touched, epoch_seq_ends=np.asarray([99], np.uint64))],
        ),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "guests[0].epoch_seq_ends" in err.details()


def test_next_epoch_inside_the_covered_epochs_is_invalid(one_host):
    client, _ = one_host
    err = refused(client, request(0, 0, [], epochs=3, next_epoch=2))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("next_epoch=2")


def test_shards_covering_different_epochs_from_one_epoch_are_refused(one_host):
    client, endpoint = one_host
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(client.sync_epoch, request(1, 0, [], epochs=2))
        assert endpoint.wait_pending([1], timeout_s=60)
        err = refused(client, request(0, 0, [], epochs=3))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("epochs=3")
        client.sync_epoch(request(0, 0, [], epochs=2))  # the matching message completes the epoch
        assert waiting.result(timeout=120).epoch == 0
    assert state_of(client).next_epoch == 2


def test_a_sample_boundary_keeps_the_host_counters_for_every_shard(one_host):
    client, endpoint = one_host
    ops1 = combined([guest_ops(1, seed=3), guest_ops(1, seed=33)])
    ops2 = combined([guest_ops(2, seed=4), guest_ops(2, seed=44)])
    first, second = both(
        client,
        request(0, 0, [ops1], epochs=2, sample=True),
        request(1, 0, [ops2], epochs=2, sample=True),
    )
    kept = dict(endpoint.host.host_counters())
    assert kept["pool_used_bytes"] > 0
    assert dict(first.sample_counters) == dict(second.sample_counters) == kept
    # later epochs change the host; the sample after epoch 1 stays as it was
    both(client, request(0, 2, [guest_ops(1, seed=5, touches=8)]), request(1, 2, []))
    assert dict(endpoint.host.host_counters()) != kept
    state = client.get_host_state(
        host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=0, sample_epoch=1)
    )
    assert dict(state.counters) == kept and not state.guests


def test_a_sample_the_host_did_not_keep_is_failed_precondition(one_host):
    client, _ = one_host
    both(client, request(0, 0, [], epochs=2), request(1, 0, [], epochs=2))  # no sample flag
    with pytest.raises(grpc.RpcError) as e:
        client.get_host_state(
            host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=0, sample_epoch=1)
        )
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details().startswith("sample_epoch=1")


def test_a_sample_not_yet_applied_waits_until_the_deadline(one_host):
    client, _ = one_host
    with pytest.raises(grpc.RpcError) as e:
        client.get_host_state(
            host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=0, sample_epoch=5),
            timeout_s=0.5,
        )
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_host_without_guests_answers_every_sample_with_its_counters():
    endpoint = EpochBarrier(EXPERIMENT, 0, make_host())
    server = start_host_server(HostDirectory([endpoint]), ServerOptions())
    with server, connect_host(server.address, timeout_s=60) as client:
        state = client.get_host_state(
            host_pb2.GetHostStateRequest(experiment_id=EXPERIMENT, host_id=0, sample_epoch=39)
        )
    assert dict(state.counters) == dict(endpoint.host.host_counters())
    assert state.counters["pool_used_bytes"] == 0
