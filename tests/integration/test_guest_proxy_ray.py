"""GuestService through ``serve`` with experiments on Ray: the server forwards each call to
the shard actor that holds the guest (its own GuestService, its own token)."""

from __future__ import annotations

import grpc
import pytest

from services.guest.guest_service import AllocOp, GuestClient
from services.sim.experiment_manager import ExperimentManager
from services.sim.experiment_service import connect_experiments, start_experiment_server
from services.transport.client import RpcCaller
from services.transport.security import TokenStore
from services.transport.server import ServerOptions

pytestmark = pytest.mark.ray

SPEC = """
name: ray-proxy
duration: 10s
hosts: [{name: h, count: 2, memory: 2GiB}]
guest_groups:
  - {name: g, count: 3, memory: 512MiB, workload: {kind: idle}}
"""


def test_guest_calls_reach_the_right_shard_actor(tmp_path):
    from services.sim.backends.ray_cluster import RayBackend

    backend = RayBackend(num_cpus=2)
    manager = ExperimentManager(out_dir=str(tmp_path), backend=backend, shards=2)
    tokens = TokenStore(admin_token="admin")
    server = start_experiment_server(manager, ServerOptions(port=0), tokens=tokens)
    try:
        with server:
            with connect_experiments(server.address, token="admin") as admin:
                eid, token = admin.create(SPEC)
                admin.advance(eid, 1_000_000_000)
            with grpc.insecure_channel(server.address) as channel:
                client = GuestClient(channel, RpcCaller(token=token, experiment_id=eid))
                guests = client.list_guests().guests
                assert [g.guest_id for g in guests] == [0, 1, 2]
                for gid in (0, 2):  # guests of different shards
                    done = client.apply_ops(gid, [AllocOp(order=9, migratetype=1, count=4)])
                    assert len(done.results[0].pfns) == 4
                    state = client.guest_state(gid)
                    assert state.guest_id == gid and state.backed_bytes >= 4 * (2 << 20)
                with pytest.raises(grpc.RpcError) as e:
                    client.guest_state(9)
                assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        manager.close()
        backend.close()
