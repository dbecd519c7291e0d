"""Coordinated checkpoints, in process: a stopped run resumes, a lost actor rolls back,
and either way the results are those of an uninterrupted run; a checkpoint that cannot be
trusted is refused and left as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from services.sim import checkpoint
from services.sim.runner import RunInterrupted, run_experiment
from services.sim.spec import load_spec_text

SPEC = (Path(__file__).resolve().parent.parent / "golden" / "specs" / "determinism.yaml").read_text(
    encoding="utf-8"
)


def spec_with(*lines: str):
    return load_spec_text(SPEC + "".join(f"{line}\n" for line in lines))


def comparable(result):
    summary = {k: v for k, v in result.summary.items() if k != "run_id"}
    ts = result.timeseries.drop(columns=["run_id"])
    return summary, ts


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return run_experiment(spec_with(), out_dir=str(out), transport="inprocess")


def stop_after(monkeypatch, n: int) -> threading.Event:
    """A stop event set once the n-th checkpoint of the run is committed."""
    stop = threading.Event()
    commit = checkpoint.Checkpoints.commit

    def counting(self, *args):
        path = commit(self, *args)
        if self.saved == n:
            stop.set()
        return path

    monkeypatch.setattr(checkpoint.Checkpoints, "commit", counting)
    return stop


def interrupted_run(tmp_path, monkeypatch, n: int, spec=None) -> RunInterrupted:
    spec = spec or spec_with("checkpoint_interval: 2s")
    with pytest.raises(RunInterrupted) as info:
        run_experiment(
            spec, out_dir=str(tmp_path), transport="inprocess", stop=stop_after(monkeypatch, n)
        )
    monkeypatch.undo()
    return info.value


def dir_digest(path: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("n", [2, 8], ids=["in-the-run", "in-the-baseline"])
def test_a_stopped_run_resumes_with_the_results_of_an_uninterrupted_one(
    tmp_path, monkeypatch, reference, n
):
    stopped = interrupted_run(tmp_path, monkeypatch, n)
    assert "overcommit run --resume" in str(stopped)
    partial = Path(stopped.run_dir) / "timeseries.partial.parquet"
    assert partial.exists()
    loaded = checkpoint.load(stopped.run_dir)
    # the checkpoint stands where the run stopped: no later, and after the start
    assert 0 < max(loaded.time_ns.values()) <= loaded.spec.duration
    if n == 8:
        assert "run" in loaded.finished and "reporting_off" in loaded.running
    else:
        assert loaded.finished == {} and "run" in loaded.running
    result = run_experiment(loaded.spec, transport="inprocess", resume=loaded)
    ref_summary, ref_ts = comparable(reference)
    summary, ts = comparable(result)
    assert summary == ref_summary
    assert ts.equals(ref_ts)
    assert result.metadata["checkpoints"]["resumed_from_ns"] == loaded.time_ns
    # a finished run keeps no checkpoint and no partial series
    assert not (Path(stopped.run_dir) / "checkpoint").exists() and not partial.exists()


def test_actor_losses_roll_back_to_the_last_checkpoint(tmp_path, reference):
    spec = spec_with(
        "checkpoint_interval: 3s",
        "faults:",
        "  kill: [{actor: host, index: 1, at: 4200ms}, {actor: shard, index: 0, at: 10s}]",
    )
    assert spec.run_id() == reference.summary["run_id"]  # kills never change results
    result = run_experiment(spec, out_dir=str(tmp_path), transport="inprocess", shards=2)
    assert comparable(result)[0] == comparable(reference)[0]
    assert comparable(result)[1].equals(comparable(reference)[1])
    rollbacks = result.metadata["checkpoints"]["rollbacks"]
    # each kill, in the run and in the baseline, rolled back to a checkpoint before it
    assert [(r["variant"], r["to_ns"]) for r in rollbacks] == [
        ("run", 3_000_000_000),
        ("run", 9_000_000_000),
        ("reporting_off", 3_000_000_000),
        ("reporting_off", 9_000_000_000),
    ]
    kills = [4_200_000_000, 10_000_000_000] * 2
    assert all(r["to_ns"] < at for r, at in zip(rollbacks, kills, strict=True))
    assert all(r["to_ns"] <= r["lost_after_ns"] for r in rollbacks)


def test_a_loss_before_the_first_checkpoint_restarts_from_the_beginning(tmp_path, reference):
    spec = spec_with("checkpoint_interval: 0s", "faults: {kill: [{actor: host, index: 0, at: 1s}]}")
    result = run_experiment(spec, out_dir=str(tmp_path), transport="inprocess")
    assert comparable(result)[0] == comparable(reference)[0]
    assert [r["to_ns"] for r in result.metadata["checkpoints"]["rollbacks"]] == [0, 0]


def _corrupt_part(run_dir: str) -> None:
    m = checkpoint.read_manifest(run_dir)
    part = Path(run_dir, "checkpoint", m["tag"], "run", m["parts"]["run"][0]["name"])
    blob = bytearray(part.read_bytes())
    blob[len(blob) // 3] ^= 1
    part.write_bytes(bytes(blob))


def _truncate_part(run_dir: str) -> None:
    m = checkpoint.read_manifest(run_dir)
    part = Path(run_dir, "checkpoint", m["tag"], "run", m["parts"]["run"][-1]["name"])
    part.write_bytes(part.read_bytes()[:-100])


def _edit_manifest(run_dir: str) -> None:
    path = Path(checkpoint.manifest_path(run_dir))
    m = json.loads(path.read_text())
    m["time_ns"]["run"] += 1_000_000_000  # without fixing its digest
    path.write_text(json.dumps(m))


def _truncate_manifest(run_dir: str) -> None:
    path = Path(checkpoint.manifest_path(run_dir))
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_corrupt_part, "corrupted"),
        (_truncate_part, "truncated"),
        (_edit_manifest, "manifest_sha256"),
        (_truncate_manifest, "not JSON"),
    ],
)
def test_a_damaged_checkpoint_is_refused_and_left_as_it_is(tmp_path, monkeypatch, damage, message):
    stopped = interrupted_run(tmp_path, monkeypatch, 1)
    damage(stopped.run_dir)
    before = dir_digest(stopped.run_dir)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(stopped.run_dir)
    assert dir_digest(stopped.run_dir) == before


def test_a_foreign_checkpoint_is_refused(tmp_path, monkeypatch):
    stopped = interrupted_run(tmp_path / "a", monkeypatch, 1)
    other = load_spec_text(SPEC.replace("seed: 11", "seed: 12") + "checkpoint_interval: 2s\n")
    with pytest.raises(checkpoint.CheckpointError, match="another spec"):
        checkpoint.load(stopped.run_dir, other)
    # the same checkpoint copied into another run's directory
    elsewhere = tmp_path / "b" / "determinism" / other.run_id()
    shutil.copytree(stopped.run_dir, elsewhere)
    with pytest.raises(checkpoint.CheckpointError, match="foreign"):
        checkpoint.load(str(elsewhere))
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(str(tmp_path / "nowhere"))


def test_a_crash_while_writing_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """The manifest is replaced last: a writer killed part-way leaves the last one usable."""
    from services.protocol import snapshot

    spec = spec_with("checkpoint_interval: 2s")
    calls = {"n": 0}
    real = snapshot.write_part

    def dying(directory, name, obj):
        calls["n"] += 1
        if calls["n"] == 8:  # 3 parts per checkpoint (2 hosts, 1 shard): inside the third
            raise OSError("disk gone")
        return real(directory, name, obj)

    monkeypatch.setattr("services.sim.backends.inprocess.write_part", dying)
    with pytest.raises(OSError, match="disk gone"):
        run_experiment(spec, out_dir=str(tmp_path), transport="inprocess")
    monkeypatch.undo()
    run_dir = tmp_path / "determinism" / spec.run_id()
    loaded = checkpoint.load(str(run_dir))
    assert loaded.time_ns == {"run": 4_000_000_000}  # the second, whole
    assert comparable_state(loaded)


def comparable_state(loaded) -> bool:
    """The loaded state is usable: every running variant has its parts and its rows."""
    return all(loaded.parts[v] and loaded.running[v]["rows"] for v in loaded.running)


def test_run_id_leaves_out_what_never_changes_results():
    base = spec_with()
    neutral = spec_with(
        "checkpoint_interval: 5s",
        "faults: {drop_replies: 0.2, delay_replies: 0.1, kill: [{actor: shard, index: 0, at: 1s}]}",
    )
    assert neutral.run_id() == base.run_id()
    assert neutral.spec_sha256() != base.spec_sha256()
    assert spec_with("faults: {reject_reports: 0.1}").run_id() != base.run_id()


def test_running_a_stopped_runs_spec_again_keeps_its_checkpoint(tmp_path, monkeypatch):
    """A second `run` of the spec (not --resume) used to start over and replace the stopped
    run's checkpoint with one at 0 s; now it is refused and the checkpoint stays."""
    stopped = interrupted_run(tmp_path, monkeypatch, 2)
    before = dir_digest(stopped.run_dir)
    with pytest.raises(checkpoint.CheckpointError, match="overcommit run --resume"):
        run_experiment(
            spec_with("checkpoint_interval: 2s"), out_dir=str(tmp_path), transport="inprocess"
        )
    assert dir_digest(stopped.run_dir) == before
