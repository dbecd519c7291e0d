"""Warnings for specs that are valid but cannot do what they say (hostile-input finding:
unreachable targets were accepted silently)."""

from __future__ import annotations

from services.sim.cli import main
from services.sim.spec import load_spec_text
from services.sim.spec_checks import spec_warnings

BASE = """
name: w
duration: 10s
hosts: [{{name: h, memory: 8GiB}}]
guest_groups:
  - name: g
    memory: {memory}
    workload: {workload}
"""


def warnings(workload: str, memory: str = "256MiB") -> list[tuple[str, str]]:
    return spec_warnings(load_spec_text(BASE.format(memory=memory, workload=workload)))


def test_will_it_scale_regions_larger_than_the_guest():
    (w,) = warnings("{kind: page_fault1, tasks: 2}")
    assert w[0] == "guest_groups.0.workload.tasks" and "2 tasks x 128 MiB" in w[1]
    (w,) = warnings("{kind: page_fault2, tasks: 1}", memory="200MiB")  # region + its cache
    assert "256 MiB" in w[1]
    assert warnings("{kind: page_fault1, tasks: 1}") == []


def test_a_grow_until_done_above_what_the_guest_can_allocate():
    hog = "{{kind: memhog, phases: [{{action: grow, target: {t}, until: done}}]}}"
    (w,) = warnings(hog.format(t=1.0))
    assert w[0] == "guest_groups.0.workload.phases.0.target" and "never finish" in w[1]
    assert warnings(hog.format(t=0.9)) == []  # 230 MiB of 256: above the min watermarks


def test_a_script_step_waiting_on_a_workload_that_never_ends():
    script = "{kind: script, steps: [{workload: {kind: page_fault1, tasks: 1}, until: done}]}"
    (w,) = warnings(script)
    assert w[0] == "guest_groups.0.workload.steps.0.until"
    capped = script.replace("until: done", "until: done, duration: 2s")
    assert warnings(capped) == []


def test_validate_prints_the_warnings_and_still_succeeds(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(BASE.format(memory="256MiB", workload="{kind: page_fault1, tasks: 4}"))
    assert main(["validate", str(spec)]) == 0
    out = capsys.readouterr()
    assert ": ok (" in out.out
    assert "warning: guest_groups.0.workload.tasks: 4 tasks x 128 MiB" in out.err
