"""The Grafana dashboards (scripts/dashboards.py): committed files fresh, queries valid.

Every query is parsed by the real ``promtool`` (Debian's prometheus package, which
``make test`` installs); running them against data is the integration tests' job.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scripts import dashboards

REPO_ROOT = Path(__file__).resolve().parents[2]
UIDS = ("overcommit-cluster", "overcommit-host", "overcommit-guest-group")
SELECTOR_RE = re.compile(r"\b(overcommit_[a-z0-9_]+)\{([^}]*)\}")
WINDOW_RE = re.compile(r"\[([^\]]*)\]")


@pytest.fixture(scope="module")
def boards() -> dict[str, dict]:
    return {name: dashboards.dashboard_json(name) for name in dashboards.DASHBOARDS}


def _panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_committed_dashboards_are_fresh() -> None:
    stale = dashboards.stale_files()
    assert not stale, (
        f"stale dashboards in deploy/grafana/dashboards (run scripts/gen_dashboards.py): {stale}"
    )


def test_generation_is_deterministic() -> None:
    assert dashboards.generate() == dashboards.generate()


def test_check_mode_names_a_stale_file(tmp_path: Path, capsys) -> None:
    from scripts import gen_dashboards

    assert gen_dashboards.main(["--dir", str(tmp_path)]) == 0
    assert gen_dashboards.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "overcommit-host.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "overcommit-old.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "mine.json").write_text("{}\n", encoding="utf-8")  # not ours: kept
    capsys.readouterr()
    assert gen_dashboards.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "overcommit-host.json" in err and "overcommit-old.json" in err
    assert "mine.json" not in err
    assert gen_dashboards.main(["--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*(f"{u}.json" for u in UIDS), "mine.json"]
    )


def test_stable_uids_titles_and_the_prometheus_datasource(boards: dict[str, dict]) -> None:
    assert sorted(b["uid"] for b in boards.values()) == sorted(UIDS)
    titles = [b["title"] for b in boards.values()]
    assert all(titles) and len(set(titles)) == len(titles)
    for name, board in boards.items():
        assert board["uid"] == name
        assert board["refresh"] == "5s" and board["time"] == {"from": "now-15m", "to": "now"}
        refs = [v["datasource"] for v in board["templating"]["list"]]
        for panel in _panels(board):
            refs.append(panel["datasource"])
            refs += [t["datasource"] for t in panel["targets"]]
        assert refs and all(r == {"type": "prometheus", "uid": "prometheus"} for r in refs), name
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"


def test_variables(boards: dict[str, dict]) -> None:
    entity = {
        "overcommit-cluster": set(),
        "overcommit-host": {"host"},
        "overcommit-guest-group": {"guest_group"},
    }
    for name, board in boards.items():
        defined = dashboards.variables(board)
        assert set(defined) == {"experiment", "run"} | entity[name], name
        assert defined["experiment"] == "label_values(overcommit_sim_time_seconds, experiment)"
        assert defined["run"] == (
            'label_values(overcommit_sim_time_seconds{experiment=~"$experiment"}, run_id)'
        )
        for var in entity[name]:
            assert defined[var].endswith(f", {var})"), defined[var]
            assert 'experiment=~"$experiment",run_id=~"$run"' in defined[var]


def test_every_variable_used_is_defined(boards: dict[str, dict]) -> None:
    for name, board in boards.items():
        known = set(dashboards.variables(board)) | dashboards.BUILTIN_VARIABLES
        texts = [expr for _, expr in dashboards.queries(board)]
        texts += dashboards.variables(board).values()
        for text in texts:
            unknown = dashboards.used_variables(text) - known
            assert not unknown, f"{name}: {sorted(unknown)} not defined, in {text}"


def test_every_panel_has_queries_and_a_unit(boards: dict[str, dict]) -> None:
    for name, board in boards.items():
        for panel in _panels(board):
            assert panel["title"] and panel["targets"], name
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: {panel['title']}"
            assert all(t["refId"] for t in panel["targets"])


def test_queries_follow_the_rules(boards: dict[str, dict]) -> None:
    """Filtered by experiment and run (and the dashboard's entity), aggregated, rates
    per simulated second, no job/instance, baselines named and the run 'reporting on'."""
    from services.sim.metric_catalogue import HELP

    entity = {"overcommit-host": ("overcommit_host_", 'host=~"$host"')}
    entity["overcommit-guest-group"] = ("overcommit_guest_group_", 'guest_group=~"$guest_group"')
    for name, board in boards.items():
        for panel in _panels(board):
            for target in panel["targets"]:
                expr, where = target["expr"], f"{name} / {panel['title']}: {target['expr']}"
                selectors = SELECTOR_RE.findall(expr)
                assert selectors, where
                assert expr.startswith(("sum by", "max by", "label_replace(")), where
                for metric, matchers in selectors:
                    assert metric in HELP, f"{where}: {metric} is not an exported metric"
                    assert 'experiment=~"$experiment"' in matchers, where
                    assert 'run_id=~"$run"' in matchers, where
                    prefix, matcher = entity.get(name, ("-", ""))
                    if metric.startswith(prefix):
                        assert matcher in matchers, where
                assert not re.search(r"\b(job|instance)\b", expr), where
                assert not re.search(r"\b(i?rate|delta)\(", expr), where  # wall-clock rates
                assert set(WINDOW_RE.findall(expr)) <= {"$__rate_interval"}, where
                if "increase(" in expr:  # per simulated second: divided by the clock's increase
                    assert "increase(overcommit_sim_time_seconds{" in expr, where
                    assert "/ on (experiment, run_id, variant) group_left" in expr, where
                if "{{variant}}" in target.get("legendFormat", ""):
                    assert '"variant", "reporting on", "variant", "run")' in expr, where


def test_queries_helper_lists_every_target(boards: dict[str, dict]) -> None:
    for board in boards.values():
        listed = dashboards.queries(board)
        assert len(listed) == sum(len(p["targets"]) for p in _panels(board))
        assert {title for title, _ in listed} == {p["title"] for p in _panels(board)}


def test_every_query_parses_as_promql(boards: dict[str, dict], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found: `make test` installs Debian's prometheus package "
            "(apt-get install prometheus), which provides it"
        )
    rules = []
    for name, board in boards.items():
        for i, (_, expr) in enumerate(dashboards.queries(board)):
            record = f"dashboard:{name.replace('-', '_')}:{i}"
            rules.append({"record": record, "expr": dashboards.substitute(expr)})
    assert rules
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool check rules failed:\n{out}"
    assert f"SUCCESS: {len(rules)} rules found" in out, out


def test_substitute_fills_every_variable() -> None:
    expr = 'x{a=~"$experiment",b=~"${run}",c=~"${host:regex}"}[$__rate_interval]'
    assert dashboards.substitute(expr) == 'x{a=~".*",b=~".*",c=~".*"}[1m]'
    with pytest.raises(KeyError):
        dashboards.substitute("$nope")


def test_provisioning_reads_the_mounted_dashboards_folder() -> None:
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "compose.yaml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if ":" in v)
    mounted = mounts["./grafana/dashboards"]
    providers = []
    for path in sorted((REPO_ROOT / "deploy/grafana/provisioning/dashboards").glob("*.yaml")):
        providers += yaml.safe_load(path.read_text())["providers"]
    assert providers
    assert all(p["type"] == "file" and p["options"]["path"] == mounted for p in providers)
