"""GuestService over real gRPC against a shard double holding real guest cores."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from overcommit.v1 import guest_pb2
from services.guest.core.constants import MIGRATE_MOVABLE, MIGRATE_UNMOVABLE
from services.guest.guest_service import (
    AllocOp,
    FreeOp,
    GuestClient,
    GuestShardApi,
    TouchOp,
    connect_guest,
    iter_free_areas,
    start_guest_server,
)
from tests.contract.doubles import MemoryShard

CODE = grpc.StatusCode


@pytest.fixture
def shard() -> MemoryShard:
    return MemoryShard()


@pytest.fixture
def client(shard: MemoryShard) -> Iterator[GuestClient]:
    assert isinstance(shard, GuestShardApi)
    with (
        start_guest_server(shard, experiment_id="exp-g") as server,
        connect_guest(server.address, experiment_id="exp-g", timeout_s=10) as c,
    ):
        yield c


def test_list_guests(client: GuestClient) -> None:
    guests = client.list_guests().guests
    assert [(g.guest_id, g.nr_pages, g.workload) for g in guests] == [
        (1, 1 << 14, ""),
        (2, 1 << 14, ""),
    ]


def test_apply_ops_allocates_frees_and_touches(client: GuestClient, shard: MemoryShard) -> None:
    response = client.apply_ops(
        1,
        [
            AllocOp(order=9, migratetype=MIGRATE_MOVABLE, count=3),
            AllocOp(order=0, migratetype=MIGRATE_UNMOVABLE, count=5),
            TouchOp(np.array([0, 100]), np.array([10, 2])),
        ],
    )
    big, small, touch = response.results
    assert len(big.pfns) == 3 and all(p % 512 == 0 for p in big.pfns)
    assert len(small.pfns) == 5 and list(touch.pfns) == []
    freed = client.apply_ops(
        1,
        [
            FreeOp(order=9, pfns=np.array(big.pfns[:1])),
            FreeOp(order=0, pfns=np.zeros(0, np.int64), count=2),
        ],
    ).results
    assert list(freed[0].pfns) == [big.pfns[0]] and list(freed[1].pfns) == list(small.pfns[-2:])
    assert sorted(shard.allocated[1][9]) == sorted(big.pfns[1:])
    state = client.guest_state(1)
    assert state.guest_id == 1 and state.nr_pages == 1 << 14
    expected = shard.guests[1].state()["free_blocks"]
    assert {(o, mt): n for o, mt, n in iter_free_areas(state)} == {
        (o, mt): n for o, by_mt in expected.items() for mt, n in by_mt.items() if n
    }
    assert state.reporting_state in (
        guest_pb2.REPORTING_STATE_IDLE,
        guest_pb2.REPORTING_STATE_REQUESTED,
    )
    assert state.backed_bytes == shard.guests[1].state()["backed_bytes"]


def test_start_workload_passes_typed_parameters(client: GuestClient, shard: MemoryShard) -> None:
    response = client.start_workload(
        2, "memhog", {"size_bytes": 1 << 30, "pattern": "seq"}, 5_000_000_000
    )
    assert (response.start_ns, response.end_ns) == (0, 5_000_000_000)
    assert shard.workloads[2] == (
        "memhog",
        {"size_bytes": 1 << 30, "pattern": "seq"},
        5_000_000_000,
    )
    assert [g.workload for g in client.list_guests().guests] == ["", "memhog"]


@pytest.mark.parametrize(
    ("call", "code", "details"),
    [
        (
            lambda c: c.apply_ops(1, [AllocOp(order=19, migratetype=1, count=1)]),
            CODE.INVALID_ARGUMENT,
            "ops[0].alloc.order=19",
        ),
        (
            lambda c: c.apply_ops(1, [AllocOp(order=0, migratetype=5, count=1)]),
            CODE.INVALID_ARGUMENT,
            "ops[0].alloc.migratetype=5",
        ),
        (
            lambda c: c.apply_ops(1, [AllocOp(order=0, migratetype=1, count=1), AllocOp(0, 1, 0)]),
            CODE.INVALID_ARGUMENT,
            "ops[1].alloc.count=0",
        ),
        (
            lambda c: c.apply_ops(1, [TouchOp(np.array([0]), np.array([0]))]),
            CODE.INVALID_ARGUMENT,
            "ops[0].touch.runs.npages[0]=0",
        ),
        (
            lambda c: c.apply_ops(1, [FreeOp(order=0, pfns=np.zeros(0, np.int64), count=3)]),
            CODE.INVALID_ARGUMENT,
            "count 3: only 0 blocks",
        ),
        (
            lambda c: c.apply_ops(9, [AllocOp(order=0, migratetype=1, count=1)]),
            CODE.NOT_FOUND,
            "guest_id 9 is not in this shard",
        ),
        (lambda c: c.guest_state(9), CODE.NOT_FOUND, "guest_id 9"),
        (lambda c: c.start_workload(1, "", {}, 1), CODE.INVALID_ARGUMENT, "workload=''"),
        (lambda c: c.start_workload(1, "memhog", {}, 0), CODE.INVALID_ARGUMENT, "duration_ns=0"),
        (
            lambda c: c.start_workload(1, "fork_bomb", {}, 1),
            CODE.INVALID_ARGUMENT,
            "workload 'fork_bomb'",
        ),
        (
            lambda c: c.start_workload(1, "memhog", {"phases": [{"target": float("nan")}]}, 1),
            CODE.INVALID_ARGUMENT,
            "params.phases.0.target=nan",
        ),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(
    client: GuestClient, shard: MemoryShard, call, code: grpc.StatusCode, details: str
) -> None:
    before = {gid: g.state() for gid, g in shard.guests.items()}
    with pytest.raises(grpc.RpcError) as err:
        call(client)
    assert err.value.code() == code and err.value.details().startswith(details), err.value.details()
    assert {gid: g.state() for gid, g in shard.guests.items()} == before
    assert shard.workloads == {}


def test_another_experiment_is_not_found(shard: MemoryShard) -> None:
    with (
        start_guest_server(shard, experiment_id="exp-g") as server,
        connect_guest(server.address, experiment_id="exp-other", timeout_s=5) as c,
        pytest.raises(grpc.RpcError) as err,
    ):
        c.list_guests()
    assert err.value.code() == CODE.NOT_FOUND
