"""report.html for runs a newcomer makes: many hosts, and no paired baseline."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from services.sim import report
from services.sim.runner import run_experiment
from services.sim.spec import load_spec_text

SPEC = """
name: page
duration: 3s
hosts: [{name: h, count: %d, memory: 1GiB, swap: {capacity: 1GiB}}]
guest_groups: [{name: g, count: %d, memory: 256MiB, workload: {kind: memhog, phases: [{action: grow, target: 0.5, rate: 256MiB, duration: 1s}]}}]
"""


def host_frame(hosts: int) -> pd.DataFrame:
    rows = [
        {"kind": "host", "variant": "run", "entity": f"host-{h}", "time_s": t,
         "backed_bytes": float(h + t), "capacity_bytes": 8.0, "swapped_bytes": 0.0}
        for h in range(hosts) for t in range(3)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def drawn_lines(monkeypatch, ts: pd.DataFrame) -> list[tuple[str, list[float]]]:
    figs = []
    monkeypatch.setattr(report, "_save_png", lambda fig, path: figs.append(fig))
    report.plot_backed(ts, "unused.png")
    (ax,) = figs[0].axes
    return [(line.get_label(), list(line.get_ydata())) for line in ax.get_lines()]


def test_a_few_hosts_are_drawn_one_by_one(monkeypatch):
    lines = drawn_lines(monkeypatch, host_frame(report.MAX_HOST_LINES))
    assert len(lines) == 3 * report.MAX_HOST_LINES
    assert lines[0][0] == "host-0 backed"


def test_many_hosts_are_summed_into_one_line_each(monkeypatch):
    hosts = report.MAX_HOST_LINES + 1
    lines = drawn_lines(monkeypatch, host_frame(hosts))
    assert [label for label, _ in lines] == [
        f"{hosts} hosts, summed: backed",
        f"{hosts} hosts, summed: capacity",
        f"{hosts} hosts, summed: swapped",
    ]
    gib = report.GIB
    expected = [sum(h + t for h in range(hosts)) / gib for t in range(3)]
    assert lines[0][1] == expected


def test_a_run_without_a_baseline_says_so_instead_of_an_empty_headline(tmp_path):
    result = run_experiment(
        load_spec_text(SPEC % (1, 2)), out_dir=str(tmp_path), transport="inprocess"
    )
    page = Path(report.write_report(result.run_dir)).read_text(encoding="utf-8")
    assert "<h2>Headline</h2>" not in page and "No paired baseline" in page
    assert "reporting on and off" not in page.lower()
    paired = load_spec_text(SPEC % (1, 2) + "compare: [reporting_off]\n")
    result = run_experiment(paired, out_dir=str(tmp_path), transport="inprocess")
    page = Path(report.write_report(result.run_dir)).read_text(encoding="utf-8")
    assert "<h2>Headline</h2>" in page and "Reporting on and off, side by side" in page


def test_a_tampered_run_is_refused_naming_the_file_and_nothing_is_written(tmp_path):
    result = run_experiment(
        load_spec_text(SPEC % (1, 2) + "compare: [reporting_off]\n"),
        out_dir=str(tmp_path),
        transport="inprocess",
    )
    run = Path(result.run_dir)
    summary = run / "summary.json"
    good = summary.read_text(encoding="utf-8")
    for text, needle in (
        (good[: len(good) // 2], "summary.json: not a run's JSON"),
        ("[]", "summary.json: not a run's JSON (a list"),
        ("null", "summary.json: not a run's JSON (a NoneType"),
        ("{}", "are not those of a run (KeyError"),
    ):
        summary.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=re.escape(needle)):
            report.write_report(str(run))
        assert not list(run.glob("*.png")) and not (run / "report.html").exists(), text
        assert not list(run.glob(".report-*")), text
    summary.write_text(good, encoding="utf-8")
    (run / "timeseries.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"timeseries\.parquet: not a run's time series"):
        report.write_report(str(run))
