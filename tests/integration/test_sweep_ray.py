"""A sweep on a Ray cluster with room runs its points at once, each with its share of the
CPUs as shards, and gets the same figures as running the points one by one in-process."""

from __future__ import annotations

import pytest

from services.sim.runner import run_experiment
from services.sim.spec import load_spec_text, with_overrides
from services.sim.sweep import _parallelism, grid_points, run_sweep

pytestmark = pytest.mark.ray

SPEC = """
name: ray-sweep
duration: 6s
hosts: [{name: h, memory: 2GiB, swap: {capacity: 2GiB}}]
guest_groups:
  - name: g
    count: 3
    memory: 1GiB
    workload: {kind: memhog, phases: [{action: grow, target: 0.6, rate: 1GiB, duration: 2s},
                                      {action: free, target: 0.05, duration: 1s},
                                      {action: idle, duration: 3s}]}
compare: [reporting_off]
sweep: {grid: {guest_groups.0.reporting.order: [9, 10]}}
"""


def test_points_run_together_and_match_one_by_one(tmp_path):
    from services.sim.backends.ray_cluster import RayBackend

    spec = load_spec_text(SPEC)
    backend = RayBackend(num_cpus=2)
    try:
        assert _parallelism(backend, None, 2) == (1, 2)  # two points at once, a shard each
        df = run_sweep(spec, out_dir=str(tmp_path / "ray"), backend=backend)
    finally:
        backend.close()
    for point in grid_points(spec):
        alone = run_experiment(
            with_overrides(spec, {**point, "sweep": None}),
            out_dir=str(tmp_path / "alone"),
            transport="inprocess",
        )
        row = df[df["guest_groups.0.reporting.order"] == point["guest_groups.0.reporting.order"]]
        assert len(row) == 1
        cmp = alone.summary["comparison"]["reporting_off"]
        assert (
            row["comparison.reporting_off.memory_saved_mean_bytes"].item()
            == cmp["memory_saved_mean_bytes"]
        )
        assert row["cluster.swap_out_bytes"].item() == alone.summary["cluster"]["swap_out_bytes"]
        assert row["cluster.ops_completed"].item() == alone.summary["cluster"]["ops_completed"]
