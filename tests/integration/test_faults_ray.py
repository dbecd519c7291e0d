"""Faults on real Ray actors talking real gRPC: actors killed mid-run (ray.kill, and SIGKILL
of the worker process), SyncEpoch replies dropped and delayed. Ray restarts what was
killed, the run rolls back to its last coordinated checkpoint, and the results are
byte-identical to an uninterrupted in-process run."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sim.runner import run_experiment
from services.sim.spec import load_spec_text

pytestmark = pytest.mark.ray

SPEC = (Path(__file__).resolve().parent.parent / "golden" / "specs" / "determinism.yaml").read_text(
    encoding="utf-8"
)


def comparable(result):
    return (
        {k: v for k, v in result.summary.items() if k != "run_id"},
        result.timeseries.drop(columns=["run_id"]),
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return run_experiment(load_spec_text(SPEC), out_dir=str(out), transport="inprocess")


@pytest.fixture(scope="module")
def ray_backend():
    from services.sim.backends.ray_cluster import RayBackend

    backend = RayBackend(num_cpus=2)
    yield backend
    backend.close()


def assert_same(result, reference):
    summary, ts = comparable(result)
    ref_summary, ref_ts = comparable(reference)
    assert summary == ref_summary
    assert ts.equals(ref_ts)


def test_killed_actors_and_dropped_replies_leave_results_identical(
    tmp_path, reference, ray_backend
):
    spec = load_spec_text(
        SPEC
        + """
checkpoint_interval: 3s
faults:
  kill:
    - {actor: host, index: 0, at: 4200ms, how: actor}
    - {actor: shard, index: 1, at: 7700ms, how: process}
  drop_replies: 0.3
  delay_replies: 0.2
  reply_delay: 2ms
"""
    )
    result = run_experiment(spec, out_dir=str(tmp_path), shards=2, backend=ray_backend)
    assert_same(result, reference)
    ckpt = result.metadata["checkpoints"]
    kills = {"run": [4_200_000_000, 7_700_000_000], "reporting_off": [4_200_000_000, 7_700_000_000]}
    for variant, at in kills.items():
        backs = [r["to_ns"] for r in ckpt["rollbacks"] if r["variant"] == variant]
        # each kill rolled back to a committed checkpoint older than the kill (a checkpoint
        # still being written in the background when an actor dies is not used)
        assert len(backs) == 2 and all(b % 3_000_000_000 == 0 for b in backs)
        assert all(b < a for b, a in zip(backs, at, strict=True))
        assert backs[1] > 0  # the second kill found a committed checkpoint to go back to
    for variant in ("run", "reporting_off"):
        stats = result.metadata["runs"][variant]
        assert stats["recoveries"] == 2
        assert stats["restarted_actors"] >= 1  # Ray really restarted them
        # replies were dropped and delayed (counted since the last restart)
        assert stats["replies_dropped"] > 0 and stats["replies_delayed"] > 0


def test_a_host_worker_killed_by_pid_and_a_shard_killed_by_ray(tmp_path, ray_backend):
    alone = SPEC.replace("compare: [reporting_off]", "compare: []")  # the run alone: half the time
    reference = run_experiment(
        load_spec_text(alone), out_dir=str(tmp_path / "ref"), transport="inprocess"
    )
    spec = load_spec_text(
        alone
        + """
checkpoint_interval: 2s
faults:
  kill:
    - {actor: host, index: 1, at: 2500ms, how: process}
    - {actor: shard, index: 2, at: 9100ms, how: actor}
"""
    )
    result = run_experiment(spec, out_dir=str(tmp_path / "ray"), shards=3, backend=ray_backend)
    assert_same(result, reference)
    backs = [r["to_ns"] for r in result.metadata["checkpoints"]["rollbacks"]]
    assert len(backs) == 2 and all(b % 2_000_000_000 == 0 for b in backs)
    assert backs[0] < 2_500_000_000 and 0 < backs[1] < 9_100_000_000
    assert result.metadata["runs"]["run"]["restarted_actors"] >= 1
