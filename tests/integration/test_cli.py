"""The overcommit CLI, run as a user would (a subprocess), on small specs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = """
name: tiny
seed: 3
duration: 12s
hosts: [{name: h, memory: 512MiB, reserve: 32MiB, swap: {capacity: 1GiB}}]
guest_groups:
  - name: g
    count: 2
    memory: 256MiB
    workload:
      kind: memhog
      phases:
        - {action: grow, target: 0.8, rate: 512MiB, duration: 2s}
        - {action: touch, rate: 64MiB, duration: 2s}
        - {action: free, target: 0.05, duration: 1s}
        - {action: idle, duration: 7s}
compare: [reporting_off]
"""


def overcommit(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "services.sim.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_validate_lists_every_error_with_its_path_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("duration: 12s", "duration: later").replace("count: 2", "count: 0"))
    r = overcommit("validate", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert any(line.startswith("error: duration:") for line in lines)
    assert any(line.startswith("error: guest_groups.0.count:") for line in lines)
    assert "Traceback" not in r.stderr


def test_validate_accepts_the_shipped_specs():
    names = sorted(n for n in os.listdir(os.path.join(ROOT, "experiments")) if n.endswith(".yaml"))
    assert len(names) >= 5
    r = overcommit("validate", *(os.path.join("experiments", n) for n in names))
    assert r.returncode == 0, r.stderr
    ok = [line.split(":")[0] for line in r.stdout.splitlines() if ": ok (" in line]
    assert ok == [os.path.join("experiments", n) for n in names]


def test_validate_checks_every_spec_given_and_names_each_refused_one(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("duration: 12s", "duration: -1s"))
    good = tmp_path / "good.yaml"
    good.write_text(TINY)
    r = overcommit("validate", str(bad), str(good), str(tmp_path / "missing.yaml"))
    assert r.returncode == 2
    assert f"{good}: ok (" in r.stdout
    err = r.stderr.splitlines()
    assert f"{bad}: refused" in err and f"{tmp_path / 'missing.yaml'}: refused" in err
    assert any(line.startswith("error: duration:") for line in err)
    assert "Traceback" not in r.stderr


def test_missing_spec_is_one_line_error(tmp_path):
    r = overcommit("run", str(tmp_path / "nope.yaml"), "--transport", "inprocess")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "cannot read" in r.stderr


def test_run_and_report_in_process(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "runs"
    r = overcommit(
        "run",
        str(spec),
        "--transport",
        "inprocess",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "seed=4",
        "--report",
    )
    assert r.returncode == 0, r.stderr
    assert "memory saved vs reporting off" in r.stdout
    run_dir = r.stdout.split("results: ")[1].split()[0]
    summary = json.loads(Path(run_dir, "summary.json").read_text())
    assert summary["seed"] == 4
    saved = summary["comparison"]["reporting_off"]["memory_saved_mean_bytes"]
    assert saved > 0, "reporting freed nothing on the host"
    ts = pd.read_parquet(os.path.join(run_dir, "timeseries.parquet"))
    assert set(ts["variant"]) == {"run", "reporting_off"}
    assert set(ts["run_id"]) == {summary["run_id"]}
    assert (
        ts[(ts.kind == "host") & (ts.variant == "reporting_off")]["backed_bytes"].iloc[-1]
        > ts[(ts.kind == "host") & (ts.variant == "run")]["backed_bytes"].iloc[-1]
    )
    for png in ("host_backed.png", "free_by_order.png", "reported.png", "swap.png", "slowdown.png"):
        assert os.path.getsize(os.path.join(run_dir, png)) > 1000
    html = Path(run_dir, "report.html").read_text()
    assert "memory saved vs reporting off" in html and "host_backed.png" in html


@pytest.mark.parametrize("overrides", [["guest_groups.0.reporting.order=10"], []])
def test_sweep_writes_one_table(tmp_path, overrides):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        TINY.replace("duration: 12s", "duration: 8s")
        + "sweep: {grid: {guest_groups.0.reporting.order: [9, 10]}, seeds: [1, 2]}\n"
    )
    r = overcommit(
        "sweep",
        str(spec),
        "--transport",
        "inprocess",
        "--out",
        str(tmp_path / "runs"),
        "--no-progress",
        *[a for o in overrides for a in ("--set", o)],
    )
    assert r.returncode == 0, r.stderr
    path = r.stdout.split("sweep results: ")[1].splitlines()[0].strip()
    df = pd.read_parquet(path)
    assert len(df) == 4
    assert sorted(df["seed"]) == [1, 1, 2, 2]
    assert sorted(df["guest_groups.0.reporting.order"]) == [9, 9, 10, 10]
    assert os.path.exists(
        os.path.join(os.path.dirname(path), "sweep_guest_groups_0_reporting_order.png")
    )
    # the summary table: one row per grid point, mean ± CI over the two seeds
    from services.sim.sweep import sweep_table

    header, rows = sweep_table(df, ["guest_groups.0.reporting.order"])
    assert header[:2] == ["order", "seeds"]
    assert [r[:2] for r in rows] == [["9", "2"], ["10", "2"]]
    saved = df[df["guest_groups.0.reporting.order"] == 9][
        "comparison.reporting_off.memory_saved_mean_bytes"
    ]
    assert rows[0][2].startswith(f"{saved.mean() / (1 << 30):.3f} ± ")
    assert "± " in r.stdout and "seeds" in r.stdout
    # overcommit report on the sweep's directory
    report = overcommit("report", os.path.dirname(path))
    assert report.returncode == 0, report.stderr
    with open(report.stdout.strip(), encoding="utf-8") as f:
        page = f.read()
    assert '<table id="sweep">' in page and "sweep_guest_groups_0_reporting_order.png" in page


def test_a_path_like_name_is_refused_before_anything_runs(tmp_path):
    spec = tmp_path / "escape.yaml"
    spec.write_text(TINY.replace("name: tiny", "name: ../../escaped"))
    out = tmp_path / "deep" / "runs"
    r = overcommit("run", str(spec), "--transport", "inprocess", "--out", str(out), "--no-progress")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: name:"), r.stderr
    assert not out.exists() and not (tmp_path / "escaped").exists()


def test_serve_refuses_to_bind_beyond_loopback_without_token_and_tls(tmp_path):
    r = overcommit(
        "serve",
        "--bind",
        "0.0.0.0",
        "--allow-remote",
        "--transport",
        "inprocess",
        "--port",
        "0",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 1
    assert "needs both TLS and a bearer token" in r.stderr
    r = overcommit(
        "serve",
        "--bind",
        "0.0.0.0",
        "--allow-remote",
        "--token",
        "t",
        "--transport",
        "inprocess",
        "--port",
        "0",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 1 and "needs both TLS and a bearer token" in r.stderr


def test_small_command_line_mistakes_are_refused_or_said(tmp_path):
    """--shards 0 was taken as the default, --out '' wrote into the current directory, and
    a YAML error named '<unicode string>' instead of the file."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    for args, needle in (
        (("--shards", "0"), "argument --shards: 0: must be at least 1"),
        (("--shards", "two"), "argument --shards: 'two' is not a whole number"),
        (("--out", ""), "argument --out: must not be empty"),
    ):
        r = overcommit("run", str(spec), "--transport", "inprocess", *args, cwd=tmp_path)
        assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # nothing written
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nduration: [1\n")
    r = overcommit("validate", str(broken))
    assert r.returncode == 2 and f'in "{broken}", line 2' in r.stderr, r.stderr
    r = overcommit("validate", str(spec))
    assert r.returncode == 0 and "(1 host, 2 guests," in r.stdout, r.stdout
