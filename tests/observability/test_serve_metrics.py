"""``overcommit serve``'s metrics: the coordinator's endpoint shows every live experiment,
and the file_sd file lists what is there to scrape; the CLI refuses bad metrics flags."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.sim.cli import main
from services.sim.experiment_manager import ExperimentManager
from services.sim.live_metrics import LiveMetrics

from .conftest import SPEC

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(url: str) -> dict:
    with _OPENER.open(url, timeout=10) as response:
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


def test_serve_exports_each_experiment_while_it_lives(tmp_path):
    targets = tmp_path / "targets" / "serve.json"
    manager = ExperimentManager(
        out_dir=str(tmp_path / "runs"),
        transport="inprocess",
        metrics=LiveMetrics(targets_path=str(targets), linger_s=0),
    )
    try:
        url = manager.metrics.endpoint.url
        assert json.loads(targets.read_text())[0]["labels"] == {"role": "coordinator"}
        assert "overcommit_sim_time_seconds" not in scrape(url)  # nothing created yet
        first = manager.create(SPEC.read_text())
        second = manager.create(SPEC.read_text())  # the same spec: its own series
        manager.advance(first, 3_000_000_000)
        manager.advance(second, 5_000_000_000)
        clock = {
            s.labels["experiment"]: s.value
            for s in scrape(url)["overcommit_sim_time_seconds"].samples
        }
        assert clock == {first: 3.0, second: 5.0}  # labelled by experiment id
        hosts = scrape(url)["overcommit_host_backed_bytes"].samples
        assert {s.labels["experiment"] for s in hosts} == {first, second}
        manager.cancel(second)  # a cancelled experiment's series go with it
        clock = scrape(url)["overcommit_sim_time_seconds"].samples
        assert [s.labels["experiment"] for s in clock] == [first]
        assert targets.stat().st_mode & 0o777 == 0o644  # Prometheus may run as another user
    finally:
        manager.close()
    assert not targets.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--speed", "0"], "speed=0.0: must be >= 1e-06"),
        (["--speed", "1e-300"], "speed=1e-300: must be >= 1e-06"),
        (["--speed", "nan"], "speed=nan"),
        (["--metrics", "--metrics-linger", "-1"], "metrics linger=-1.0"),
        (["--metrics", "--metrics-top-guests", "5000"], "top_guests=5000"),
        (["--metrics", "--metrics-port", "70000"], "metrics port=70000"),
        (["--metrics", "--metrics-targets", "/proc/none/t.json"], "metrics targets /proc/none"),
        (["--metrics", "--metrics-targets", "{elsewhere}/new/t.json"], "does not exist"),
        (["--metrics", "--metrics-targets", "{elsewhere}/notes.txt"], "not a targets file"),
        (["--metrics", "--metrics-targets", "{elsewhere}/mine.json"], "not a targets file"),
        (["--metrics", "--metrics-targets", "{elsewhere}/link.json"], "not a regular file"),
        (["--metrics", "--metrics-targets", "{elsewhere}"], "not a regular file"),
    ],
)
def test_bad_metrics_flags_are_refused_before_anything_runs(
    tmp_path, tmp_path_factory, capsys, flags, message
):
    """Bad flags are refused before anything runs; a named targets file is never made in
    a folder that does not exist, and an existing file that is not one is left alone."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "notes.txt").write_text("keep me\n")
    (elsewhere / "mine.json").write_text('[{"targets": ["db:9100"], "labels": {}}]\n')
    (elsewhere / "link.json").symlink_to(elsewhere / "notes.txt")
    flags = [f.replace("{elsewhere}", str(elsewhere)) for f in flags]
    argv = ["run", str(SPEC), "--transport", "inprocess", "--out", str(tmp_path), "--no-progress"]
    assert main(argv + flags) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no run directory, no targets file
    assert sorted(p.name for p in elsewhere.iterdir()) == ["link.json", "mine.json", "notes.txt"]
    assert (elsewhere / "notes.txt").read_text() == "keep me\n"


def test_a_targets_file_a_killed_run_left_is_replaced_and_removed(tmp_path) -> None:
    """An earlier targets file (what a run killed with SIGKILL leaves) may be named again."""
    targets = tmp_path / "t.json"
    targets.write_text('[{"labels": {"role": "coordinator"}, "targets": ["127.0.0.1:1"]}]\n')
    argv = ["run", str(SPEC), "--transport", "inprocess", "--out", str(tmp_path / "o")]
    flags = ["--no-progress", "--metrics", "--metrics-linger", "0"]
    assert main(argv + flags + ["--metrics-targets", str(targets)]) == 0
    assert not targets.exists()
