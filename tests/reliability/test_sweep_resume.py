"""A sweep stopped part way continues with ``resume``: finished runs are read back, the
stopped one resumes from its checkpoint, and the table is that of an uninterrupted sweep.
In-process runs, one at a time (the order the stop lands in is then fixed)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pandas as pd
import pytest

from services.sim import checkpoint
from services.sim.run_files import results_dir
from services.sim.runner import RunInterrupted
from services.sim.spec import load_spec_text, with_overrides
from services.sim.sweep import grid_points, run_sweep
from tests.integration.test_cli import TINY

SPEC = (
    TINY.replace("duration: 12s", "duration: 6s\ncheckpoint_interval: 1s")
    .replace("{action: idle, duration: 7s}", "{action: idle, duration: 1s}")
    .replace("compare: [reporting_off]\n", "")
    + "sweep: {grid: {guest_groups.0.reporting.order: [9, 10]}}\n"
)


class StopInSecondRun(threading.Event):
    """Ctrl-C as it would land during the sweep's second run: set once the first run's
    summary is written and the second run has asked three times."""

    def __init__(self, first_summary: str) -> None:
        super().__init__()
        self.first_summary = first_summary
        self.asked_after = 0

    def is_set(self) -> bool:
        if not super().is_set() and os.path.exists(self.first_summary):
            self.asked_after += 1
            if self.asked_after >= 3:
                self.set()
        return super().is_set()


def _dirs(spec, out) -> list[str]:
    specs = [with_overrides(spec, {**p, "sweep": None}) for p in grid_points(spec)]
    return [results_dir(str(out), s.name, s.run_id()) for s in specs]


def _table(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["run_dir"]).sort_values("run_id").reset_index(drop=True)


def test_a_stopped_sweep_resumes_to_the_table_of_an_uninterrupted_one(tmp_path) -> None:
    spec = load_spec_text(SPEC)
    reference = run_sweep(spec, out_dir=str(tmp_path / "ref"), transport="inprocess")
    out = tmp_path / "out"
    first, second = _dirs(spec, out)
    stop = StopInSecondRun(os.path.join(first, "summary.json"))
    with pytest.raises(RunInterrupted) as stopped:
        run_sweep(spec, out_dir=str(out), transport="inprocess", stop=stop)
    assert stopped.value.run_dir == second and 0 < stopped.value.now_ns < spec.duration
    manifest = checkpoint.manifest_path(second)
    before = Path(manifest).read_bytes()

    with pytest.raises(checkpoint.CheckpointError, match="--resume"):  # refused, nothing run
        run_sweep(spec, out_dir=str(out), transport="inprocess")
    assert Path(manifest).read_bytes() == before

    resumed = run_sweep(spec, out_dir=str(out), transport="inprocess", resume=True)
    assert resumed.attrs["reused"] == 1  # the first run was read back, not run again
    pd.testing.assert_frame_equal(_table(resumed), _table(reference))
    assert not os.path.exists(manifest)

    again = run_sweep(spec, out_dir=str(out), transport="inprocess", resume=True)
    assert again.attrs["reused"] == 2
    pd.testing.assert_frame_equal(_table(again), _table(reference))


def test_a_run_directory_holding_another_spec_is_run_again(tmp_path) -> None:
    spec = load_spec_text(SPEC)
    run_sweep(spec, out_dir=str(tmp_path), transport="inprocess")
    first, _ = _dirs(spec, tmp_path)
    path = os.path.join(first, "spec.resolved.yaml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("seed: 3", "seed: 4"))
    df = run_sweep(spec, out_dir=str(tmp_path), transport="inprocess", resume=True)
    assert df.attrs["reused"] == 1
    with open(path, encoding="utf-8") as f:
        assert f.read() == text  # made again: the spec written is the point's


def test_a_grid_over_the_seed_runs_each_seed() -> None:
    """grid: {seed: [...]} is a list of seeds (it used to run the spec's own seed each
    time: one run counted twice)."""
    spec = load_spec_text(
        SPEC.replace(
            "sweep: {grid: {guest_groups.0.reporting.order: [9, 10]}}",
            "sweep: {grid: {seed: [1, 2], guest_groups.0.reporting.order: [9, 10]}}",
        )
    )
    points = grid_points(spec)
    assert sorted((p["guest_groups.0.reporting.order"], p["seed"]) for p in points) == [
        (9, 1), (9, 2), (10, 1), (10, 2)
    ]  # fmt: skip


def test_a_sweep_of_seeds_alone_is_one_point_with_its_interval() -> None:
    from services.sim.sweep import sweep_table

    df = pd.DataFrame({"seed": [1, 2, 3], "cluster.backed_bytes.mean": [1.0e9, 1.2e9, 1.1e9]})
    _, rows = sweep_table(df, [])
    assert len(rows) == 1 and rows[0][0] == "3" and "±" in rows[0][1], rows


@pytest.mark.parametrize("grid", ["{seed: [1, 1]}", "{guest_groups.0.reporting.order: [8, 8]}"])
def test_a_grid_value_given_twice_is_refused(grid) -> None:
    from services.sim.spec import SpecError

    with pytest.raises(SpecError, match="given more than once"):
        load_spec_text(
            SPEC.replace(
                "sweep: {grid: {guest_groups.0.reporting.order: [9, 10]}}",
                f"sweep: {{grid: {grid}}}",
            )
        )


def test_validate_refuses_a_grid_value_the_sweep_would_refuse(tmp_path, capsys) -> None:
    from services.sim.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("order: [9, 10]", "order: [8, 12]"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error: sweep point guest_groups.0.reporting.order=12, seed=3: " in err
    good = tmp_path / "good.yaml"
    good.write_text(SPEC)
    assert main(["validate", str(good)]) == 0
    assert "2 sweep runs" in capsys.readouterr().out


def test_a_run_or_sweep_another_process_is_writing_is_refused(tmp_path) -> None:
    """Two sweeps (or runs) of one spec into one OUT wrote each other's checkpoints, and
    the second took the first's live checkpoint for a stopped run. The one that comes
    second is now refused before it writes anything (the lock is held here as another
    process would hold it)."""
    from services.sim.run_files import held, lock_path
    from services.sim.runner import run_experiment
    from services.sim.sweep import _sweep_dir

    spec = load_spec_text(SPEC)
    sweep_dir = _sweep_dir(spec, str(tmp_path), grid_points(spec))
    refused = pytest.raises(RuntimeError, match="another overcommit process")
    with held(lock_path(sweep_dir), sweep_dir), refused:
        run_sweep(spec, out_dir=str(tmp_path), transport="inprocess", resume=True)
    first, _ = _dirs(spec, tmp_path)
    point = with_overrides(spec, {**grid_points(spec)[0], "sweep": None})
    refused = pytest.raises(RuntimeError, match="another overcommit process")
    with held(lock_path(first), first), refused:
        run_experiment(point, out_dir=str(tmp_path), transport="inprocess")
    assert not os.path.exists(first)  # nothing was written
    run_sweep(spec, out_dir=str(tmp_path), transport="inprocess")  # once let go: it runs


def test_resume_ignores_a_changed_checkpoint_interval(tmp_path) -> None:
    """checkpoint_interval never changes a result (it is not in the run id): a finished
    run is read back and a stopped one resumes though the sweep now checkpoints less
    often (both used to be refused or made again)."""
    spec = load_spec_text(SPEC)
    reference = run_sweep(spec, out_dir=str(tmp_path / "ref"), transport="inprocess")
    out = tmp_path / "out"
    first, _ = _dirs(spec, out)
    with pytest.raises(RunInterrupted):
        run_sweep(
            spec, out_dir=str(out), transport="inprocess",
            stop=StopInSecondRun(os.path.join(first, "summary.json")),
        )  # fmt: skip
    rarer = load_spec_text(SPEC.replace("checkpoint_interval: 1s", "checkpoint_interval: 3s"))
    resumed = run_sweep(rarer, out_dir=str(out), transport="inprocess", resume=True)
    assert resumed.attrs["reused"] == 1
    pd.testing.assert_frame_equal(_table(resumed), _table(reference))
