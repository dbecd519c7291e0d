"""The CLI's documentation and error paths (issue 15): ``validate --explain``, ``--set``
errors in one line naming --set, sizes up to EiB. In-process ``main``; no servers."""

from __future__ import annotations

import pytest

from services.sim.cli import main
from services.sim.quantities import parse_size_bytes
from services.sim.spec import ExperimentSpec
from services.sim.spec_explain import explain, schema_lines
from services.sim.spec_workloads import _WORKLOAD_KINDS


def test_explain_lists_every_field_of_every_model():
    lines = schema_lines()
    paths = {line.split(":", 1)[0] for line in lines}
    for name in ExperimentSpec.model_fields:
        assert name in paths
    # every workload kind's fields appear under its kind
    for kind in ("memhog", "trace", "page_cache", "kernel_noise", "script", "idle"):
        assert any(f"workload ({kind})." in p for p in paths), kind
    assert set(_WORKLOAD_KINDS) >= {"memhog", "trace"}
    trace_cache = explain("guest_groups.0.workload.page_cache")
    assert any("(trace).page_cache" in line and "google2019" in line for line in trace_cache)
    (memory,) = explain("hosts.0.memory")
    assert "size" in memory and "<= 64TiB" in memory and "required" in memory


def test_validate_explain_prints_and_refuses_unknown_fields(capsys):
    assert main(["validate", "--explain", "guest_groups.0.reporting.delay"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("guest_groups[].reporting.delay: duration") and "default 2s" in out
    assert main(["validate", "--explain", "no.such.field"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --explain: no spec field 'no.such.field' (try without a field for all)"]
    assert main(["validate"]) == 2
    assert "give a spec file" in capsys.readouterr().err


def test_a_set_that_is_not_yaml_is_one_line_naming_set(capsys):
    assert main(["validate", "experiments/quickstart.yaml", "--set", "x=[[[["]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --set: x: cannot parse '[[[[' as YAML")


@pytest.mark.parametrize(
    ("text", "value"), [("1PiB", 1 << 50), ("2EiB", 2 << 60), ("1.5 PB", 15 * 10**14)]
)
def test_sizes_go_up_to_exbibytes(text, value):
    assert parse_size_bytes(text) == value


def test_a_size_past_the_bound_names_the_field():
    with pytest.raises(ValueError, match=r"hosts\.memory"):
        parse_size_bytes("8EiB", "hosts.memory")


def test_in_process_sweeps_run_one_point_at_a_time():
    from services.sim.backends.inprocess import InProcessBackend
    from services.sim.sweep import _parallelism

    assert _parallelism(InProcessBackend(), None, 6) == (None, 1)
    assert _parallelism(InProcessBackend(), 2, 6) == (2, 1)
