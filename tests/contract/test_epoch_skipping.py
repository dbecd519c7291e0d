"""SyncEpoch.next_epoch: a shard with nothing to do skips epochs; hosts do not wait for it.

Real gRPC on 127.0.0.1 port 0 against the real host core.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from services.host.barrier import EpochBarrier
from services.host.directory import HostDirectory
from services.host.servicer import start_host_server
from services.protocol.clients import connect_host
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


def request(shard: int, epoch: int, guests, next_epoch: int = 0):
    return build_sync_request(
        EXPERIMENT, 0, shard, epoch, 0, (epoch + 1) * EPOCH_NS, guests, next_epoch
    )


@pytest.fixture
def two_shards():
    endpoint = EpochBarrier(EXPERIMENT, 0, make_host(memory_bytes=PRESSURE_HOST_BYTES))
    server = start_host_server(HostDirectory([endpoint]), ServerOptions())
    with server, connect_host(server.address, timeout_s=120) as client:
        register(client, guest_id=1, shard_id=0)
        register(client, guest_id=2, shard_id=1)
        yield client, endpoint


def test_a_skipping_shard_is_not_waited_for_and_gets_its_swap_outs_later(two_shards):
    client, endpoint = two_shards
    with ThreadPoolExecutor(max_workers=1) as pool:
        # epoch 0: both shards are due; shard 1 then promises nothing before epoch 4
        first = pool.submit(
            client.sync_epoch,
            request(1, 0, [guest_ops(2, seed=0, touches=6, reports=0)], next_epoch=4),
        )
        for epoch in range(4):  # shard 0 alone completes epochs 1..3: no waiting for shard 1
            r = client.sync_epoch(
                request(0, epoch, [guest_ops(1, seed=epoch, touches=12, reports=0)])
            )
            assert r.epoch == epoch
        assert first.result(timeout=120).epoch == 0
        assert state_of(client).next_epoch == 4
        swapped_pages = endpoint.host.guest_counters(2)["swapout_bytes"] // 4096
        assert swapped_pages > 0, "shard 0's pressure should push guest 2's pages out"
        told_at_0 = sum(first.result().guests[0].swapped_out.npages)
        later = pool.submit(
            client.sync_epoch, request(1, 4, [])
        )  # due again at 4: waits for shard 0
        client.sync_epoch(request(0, 4, []))
        g = later.result(timeout=120).guests[0]
    assert g.guest_id == 2
    assert told_at_0 + sum(g.swapped_out.npages) >= swapped_pages


def test_an_epoch_other_than_the_promised_one_is_failed_precondition(two_shards):
    client, _ = two_shards
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(client.sync_epoch, request(1, 0, [], next_epoch=5))
        client.sync_epoch(request(0, 0, []))
        waiting.result(timeout=120)
    with pytest.raises(grpc.RpcError) as e:
        client.sync_epoch(request(1, 1, []))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expects epoch 5" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.sync_epoch(request(0, 1, [], next_epoch=1))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "next_epoch=1" in e.value.details()
    assert state_of(client).next_epoch == 1
