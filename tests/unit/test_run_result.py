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
    assert re.search(r"<th>reporting on</th><th>reporting_off</th>", page)
    assert result.summary["run_id"] in page
