"""`overcommit run` stopped by Ctrl-C or killed with SIGKILL, then `--resume RUN_DIR`, as a
user would do it (real processes): the results are those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from services.sim.runner import run_experiment
from services.sim.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent.parent
SPEC = ROOT / "tests" / "golden" / "specs" / "determinism.yaml"
DEADLINE_S = 300.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.sim.cli", *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return run_experiment(load_spec(str(SPEC)), out_dir=str(out), transport="inprocess")


def start_paced_run(
    out: Path, speed: str = "4", every: str = "1s"
) -> tuple[subprocess.Popen, Path]:
    """A paced run (``speed`` simulated s per wall s, a checkpoint ``every`` simulated
    interval); returns the process once its first checkpoint is on disk."""
    proc = subprocess.Popen(
        cli(
            "run",
            str(SPEC),
            "--transport",
            "inprocess",
            "--out",
            str(out),
            "--no-progress",
            "--speed",
            speed,
            "--set",
            f"checkpoint_interval={every}",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = out / "determinism" / load_spec(str(SPEC)).run_id()
    manifest = run_dir / "checkpoint" / "manifest.json"
    deadline = time.monotonic() + DEADLINE_S
    while not manifest.exists():  # a deadline poll of a real process, not a timed assertion
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    return proc, run_dir


def resume_and_compare(run_dir: Path, reference) -> dict:
    done = subprocess.run(
        cli("run", "--resume", str(run_dir), "--transport", "inprocess", "--no-progress"),
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    assert f"resuming {run_dir}" in done.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == reference.summary
    ts = pd.read_parquet(run_dir / "timeseries.parquet")
    assert ts.equals(reference.timeseries)
    return json.loads((run_dir / "metadata.json").read_text())


def test_ctrl_c_stops_at_a_boundary_keeps_the_checkpoint_and_resumes(tmp_path, reference):
    proc, run_dir = start_paced_run(tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 130, err
    assert "SIGINT: stopping at the next sample boundary" in err
    assert f"continue with: overcommit run --resume {run_dir}" in err
    partial = pd.read_parquet(run_dir / "timeseries.partial.parquet")
    assert len(partial) > 0 and partial["time_s"].max() < 12
    metadata = resume_and_compare(run_dir, reference)
    assert metadata["checkpoints"]["resumed_from_ns"]["run"] > 0


def test_ctrl_c_stops_a_slowly_paced_run_without_waiting_for_its_next_sample(tmp_path):
    """At 1 simulated s per 1,000 wall s the run waits about 500 s after each sample
    (and its checkpoint); Ctrl-C ends that wait at once (it used to sleep it out)."""
    proc, _ = start_paced_run(tmp_path, speed="0.001", every="500ms")
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        proc.kill()  # never left running when the wait is not cut short
    assert proc.returncode == 130, err


def test_a_driver_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path, reference):
    proc, run_dir = start_paced_run(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    resume_and_compare(run_dir, reference)


def test_resume_refuses_overrides_and_other_specs(tmp_path):
    proc, run_dir = start_paced_run(tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=DEADLINE_S)
    before = (run_dir / "checkpoint" / "manifest.json").read_bytes()
    bad = subprocess.run(
        cli("run", "--resume", str(run_dir), "--set", "seed=4", "--transport", "inprocess"),
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert bad.returncode != 0 and "takes no overrides" in bad.stderr
    other = ROOT / "experiments" / "quickstart.yaml"
    bad = subprocess.run(
        cli("run", str(other), "--resume", str(run_dir), "--transport", "inprocess"),
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert bad.returncode == 1 and "a checkpoint of another spec" in bad.stderr
    assert (run_dir / "checkpoint" / "manifest.json").read_bytes() == before
