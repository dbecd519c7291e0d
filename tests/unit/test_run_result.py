"""RunResult in a notebook (issue 15): one variant's frame at a time, and an HTML summary."""

from __future__ import annotations

import re

import pytest

from services.sim.report import format_bytes
from services.sim.runner import run_experiment
from services.sim.spec import load_spec_text

SPEC = """
name: nb
duration: 3s
hosts: [{name: h, memory: 2GiB}]
guest_groups:
  - name: g
    count: 2
    memory: 512MiB
    workload: {kind: memhog, phases: [{action: grow, target: 0.5, rate: 1GiB, duration: 1s},
                                      {action: free, target: 0, duration: 1s}]}
compare: [reporting_off]
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_experiment(
        load_spec_text(SPEC), out_dir=str(tmp_path_factory.mktemp("runs")), transport="inprocess"
    )


def test_one_variant_and_kind_per_frame(result):
    assert result.variants == ["run", "reporting_off"]
    hosts = result.hosts()
    assert set(hosts["variant"]) == {"run"} and set(hosts["kind"]) == {"host"}
    assert hosts["time_s"].is_monotonic_increasing  # one line per time: plottable as is
    off = result.hosts("reporting_off")
    assert len(off) == len(hosts) and set(off["variant"]) == {"reporting_off"}
    groups = result.guest_groups()
    assert set(groups["entity"]) == {"g"} and "held_bytes" in groups
    assert "backed_bytes" not in groups  # host-only columns are dropped, not NaN
    with pytest.raises(KeyError, match="variant 'nope'"):
        result.frame("host", "nope")


def test_the_html_summary_carries_the_headline_numbers(result):
    page = result._repr_html_()
    saved = result.summary["comparison"]["reporting_off"]["memory_saved_mean_bytes"]
    assert format_bytes(saved) in page
    assert re.search(r"<th>reporting on</th><th>reporting off</th>", page)
    assert result.summary["run_id"] in page


def test_the_report_headline_matches_the_summary(result):
    """report.html's headline block (issue 15): what reporting bought, what it cost and
    the net, each number read back from the page against summary.json."""
    import html as htmlmod

    from services.sim.report import write_report

    with open(write_report(result.run_dir), encoding="utf-8") as f:
        page = f.read()
    rows = {
        htmlmod.unescape(m): htmlmod.unescape(v)
        for m, v in re.findall(r"<td>(.*?)</td><td class='value'>(.*?)</td>", page)
    }
    s = result.summary
    cmp = s["comparison"]["reporting_off"]
    mean, p95, peak = rows[
        "memory saved vs reporting off at each sample: mean / p95 / largest"
    ].split(" / ")
    assert mean == format_bytes(cmp["memory_saved_mean_bytes"])
    # p95 and peak of the saving over time, computed here from the two variants' frames
    off, on = result.hosts("reporting_off"), result.hosts()
    demand = (off["backed_bytes"] + off["swapped_bytes"].fillna(0)).groupby(off["time_s"]).sum()
    saved = demand - on.groupby("time_s")["backed_bytes"].sum()
    assert p95 == format_bytes(saved.quantile(0.95)) and peak == format_bytes(saved.max())
    assert rows["swap-out avoided vs reporting off"] == format_bytes(cmp["swap_out_avoided_bytes"])
    hosts = s["hosts"].values()
    refaulted = format_bytes(sum(h["refaulted_reported_bytes"] for h in hosts))
    reported = format_bytes(sum(h["reported_bytes"] for h in hosts))
    assert rows["reported memory faulted back in"].startswith(f"{refaulted} of {reported} reported")
    assert rows["workload progress vs reporting off"] == f"{-100 * cmp['slowdown']:+.2f} %"
    assert "<pre>" not in page and "summary.json" in page  # a link, not a dump
    assert "offset" not in page
