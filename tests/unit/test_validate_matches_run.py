"""Every check ``run`` can fail a spec on is made by ``validate`` too (issue 15): each
invalid spec below fails both the same way (exit 2, the same one-line error naming the
field), and each example spec passes validate. In-process ``main``; nothing is run for
an invalid spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sim.cli import main

ROOT = Path(__file__).resolve().parents[2]
BASE = """
name: bad
duration: 2s
hosts: [{name: h, memory: 2GiB}]
guest_groups:
  - name: g
    count: 1
    memory: 512MiB
    workload: WORKLOAD
"""
INVALID = {
    "zero-length phase": BASE.replace(
        "WORKLOAD", "{kind: memhog, phases: [{action: grow, target: 0.5, duration: 0s}]}"
    ),
    "guest larger than the placement allows": BASE.replace("count: 1", "count: 9").replace(
        "WORKLOAD", "{kind: idle}"
    ),
    "missing trace directory": BASE.replace(
        "WORKLOAD", "{kind: trace, format: bitbrains, path: no/such/dir}"
    ),
    "sample interval not a multiple of the epoch": BASE.replace(
        "duration: 2s", "duration: 2s\nepoch: 30ms"
    ).replace("WORKLOAD", "{kind: idle}"),
    "unknown kernel_noise order": BASE.replace(
        "WORKLOAD", "{kind: kernel_noise, rate: 10, mean_lifetime: 1s, orders: {11: 1.0}}"
    ),
    "page_cache trace on bitbrains": BASE.replace(
        "WORKLOAD", "{kind: trace, format: bitbrains, path: x, page_cache: trace}"
    ),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_validate_and_run_refuse_alike(name, tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(INVALID[name])
    assert main(["validate", str(spec)]) == 2
    validate_err = capsys.readouterr().err.strip().splitlines()
    out = str(tmp_path / "runs")
    assert main(["run", str(spec), "--transport", "inprocess", "--no-progress", "--out", out]) == 2
    run_err = capsys.readouterr().err.strip().splitlines()
    assert validate_err and validate_err == run_err
    assert all(line.startswith("error: ") and "Traceback" not in line for line in run_err)
    assert not (tmp_path / "runs").exists()  # nothing was run or written


@pytest.mark.parametrize(
    "spec", sorted((ROOT / "experiments").rglob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_spec_validates_without_warnings(spec, capsys):
    assert main(["validate", str(spec)]) == 0
    assert "warning" not in capsys.readouterr().err
