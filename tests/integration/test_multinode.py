"""Two raylets on one machine (ray.cluster_utils.Cluster) give the single-node results."""

import filecmp
import os

import pytest

from services.sim.runner import run_experiment
from services.sim.spec import load_spec_text

from .test_determinism import FILES, SPEC

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = None
    for attempt in range(2):  # a raylet that misses Ray's fixed 30 s start window on a loaded box
        try:
            c = Cluster(
                initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
            )
            c.add_node(num_cpus=1)
            c.wait_for_nodes()
            break
        except Exception:
            if c is not None:
                c.shutdown()
            if attempt == 1:
                raise
    yield c
    ray.shutdown()
    c.shutdown()


def test_two_nodes_match_the_in_process_run(cluster, tmp_path):
    import ray

    from services.sim.backends.ray_cluster import RayBackend

    spec = load_spec_text(SPEC)
    reference = run_experiment(spec, out_dir=str(tmp_path / "ref"), transport="inprocess")
    backend = RayBackend(address=cluster.address)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        result = run_experiment(spec, out_dir=str(tmp_path / "ray"), shards=2, backend=backend)
        nodes = {ray.get_runtime_context().get_node_id()}
        assert nodes  # the driver is connected to the cluster
    finally:
        backend.close()
    for f in FILES:
        assert filecmp.cmp(
            os.path.join(reference.run_dir, f), os.path.join(result.run_dir, f), shallow=False
        ), f
