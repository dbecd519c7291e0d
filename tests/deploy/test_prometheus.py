"""The Prometheus configs: promtool accepts them, their file_sd paths are where the
simulator writes targets (in compose, in the KubeRay pods, and in the repository), and a
real Prometheus scrapes what a targets file in runs/targets/ lists."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .support import DEPLOY, ROOT, compose, fenced_code_lines, load_yaml, prometheus_flags

CONTAINER_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
LOCAL_CONFIG = DEPLOY / "prometheus" / "local.yml"
CONFIGMAP = DEPLOY / "kuberay" / "prometheus-config.yaml"
# what `overcommit run --metrics` writes: a file_sd list of target groups
TARGETS = [{"targets": ["127.0.0.1:9400"], "labels": {"role": "coordinator"}}]


def _check(promtool: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, "check", "config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _file_sd_globs(config: dict) -> list[str]:
    return [
        f for job in config["scrape_configs"] for sd in job["file_sd_configs"] for f in sd["files"]
    ]


def _configmap_config(tmp_path: Path) -> Path:
    path = tmp_path / "configmap-prometheus.yml"
    path.write_text(load_yaml(CONFIGMAP)["data"]["prometheus.yml"])
    return path


@pytest.mark.parametrize("name", ["container", "local", "configmap"])
def test_promtool_accepts_the_config(promtool, tmp_path, name):
    config = {"container": CONTAINER_CONFIG, "local": LOCAL_CONFIG}.get(name)
    config = config or _configmap_config(tmp_path)
    result = _check(promtool, config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_configs_differ_only_in_where_the_targets_are():
    container, local = load_yaml(CONTAINER_CONFIG), load_yaml(LOCAL_CONFIG)
    assert container["global"]["scrape_interval"] == "1s"
    for config in (container, local):
        for job in config["scrape_configs"]:
            for sd in job["file_sd_configs"]:
                sd["files"] = ["<targets>"]
    assert container == local


def test_the_kuberay_configmap_is_a_copy_of_the_container_config():
    assert load_yaml(CONFIGMAP)["data"]["prometheus.yml"] == CONTAINER_CONFIG.read_text()


def test_local_config_reads_the_repositorys_runs_targets(promtool, tmp_path):
    """file_sd paths are relative to the config file: copied into a tree laid out like the
    repository, promtool validates the targets file in <tree>/runs/targets/ (a bad one fails)."""
    config = tmp_path / "deploy" / "prometheus" / "local.yml"
    config.parent.mkdir(parents=True)
    shutil.copy(LOCAL_CONFIG, config)
    targets = tmp_path / "runs" / "targets" / "quickstart.json"
    targets.parent.mkdir(parents=True)
    targets.write_text(json.dumps(TARGETS))
    good = _check(promtool, config)
    assert good.returncode == 0 and "does not exist" not in good.stdout + good.stderr, good
    targets.write_text(json.dumps({"targets": "not a list of groups"}))
    bad = _check(promtool, config)
    assert bad.returncode != 0 and str(targets.parent) in bad.stdout + bad.stderr, bad
    assert (LOCAL_CONFIG.parent / _file_sd_globs(load_yaml(LOCAL_CONFIG))[0]).resolve() == (
        ROOT / "runs" / "targets" / "*.json"
    )


def test_container_config_reads_the_volume_the_simulator_writes_targets_to():
    """compose: the simulator's results root (its `--out`, default runs/ in the image's
    /overcommit) is a volume that Prometheus mounts where its config looks."""
    services = compose()["services"]
    (glob,) = _file_sd_globs(load_yaml(CONTAINER_CONFIG))

    def mount(service: str, volume: str) -> str:
        for entry in services[service]["volumes"]:
            source, target, *_ = entry.split(":")
            if source == volume:
                return target
        raise AssertionError(f"{service} does not mount {volume}")

    assert mount("simulator", "runs") == "/overcommit/runs"
    assert "--out" not in services["simulator"]["command"]  # so serve writes /overcommit/runs
    assert glob == f"{mount('prometheus', 'runs')}/targets/*.json"
    config_mount = mount("prometheus", "./prometheus/prometheus.yml")
    assert prometheus_flags(services["prometheus"]["command"])["config.file"] == config_mount


def test_kuberay_sidecars_read_the_runs_volume_where_the_config_looks():
    (glob,) = _file_sd_globs(load_yaml(CONTAINER_CONFIG))
    for name in ("raycluster.yaml", "rayjob.yaml"):
        spec = load_yaml(DEPLOY / "kuberay" / name)["spec"]
        spec = spec.get("rayClusterSpec", spec)
        ray, sidecar = spec["headGroupSpec"]["template"]["spec"]["containers"]
        runs = {m["name"] for m in ray["volumeMounts"] if m["mountPath"] == "/overcommit/runs"}
        (volume,) = runs
        (mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == volume]
        assert glob == f"{mount['mountPath']}/targets/*.json", name
        assert mount.get("readOnly") is True, name


def test_every_prometheus_command_uses_flags_prometheus_has(prometheus):
    """compose's command, the KubeRay sidecars' args and docs/deploy.md's command lines."""
    help_text = subprocess.run(
        [prometheus, "--help-long"], check=False, capture_output=True, text=True, timeout=60
    )
    known = set(help_text.stdout.split()) | set(help_text.stderr.split())
    known = {w.split("=")[0] for w in known if w.startswith("--")}
    commands = [compose()["services"]["prometheus"]["command"]]
    for name in ("raycluster.yaml", "rayjob.yaml"):
        spec = load_yaml(DEPLOY / "kuberay" / name)["spec"]
        spec = spec.get("rayClusterSpec", spec)
        commands.append(spec["headGroupSpec"]["template"]["spec"]["containers"][1]["args"])
    docs = fenced_code_lines((ROOT / "docs" / "deploy.md").read_text())
    commands += [line.split()[1:] for line in docs if line.startswith("prometheus ")]
    assert len(commands) > 3
    for args in commands:
        flags = {a.split("=")[0] for a in args if a.startswith("--")}
        assert flags <= known, f"{args}: unknown {flags - known}"


def test_every_promtool_command_in_the_docs_is_one_promtool_has(promtool):
    docs = fenced_code_lines((ROOT / "docs" / "deploy.md").read_text())
    lines = [line.split()[1:] for line in docs if line.startswith("promtool ")]
    assert lines
    for words in lines:
        result = subprocess.run(
            [promtool, *words, "--help"], check=False, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"promtool {' '.join(words)}: {result.stderr}"


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"# TYPE overcommit_test_up gauge\novercommit_test_up 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_with_the_local_config_scrapes_what_runs_targets_lists(prometheus, tmp_path):
    """A real Prometheus, started as docs/deploy.md says (from the repository root), finds a
    targets file in runs/targets/ and scrapes the loopback endpoint it lists every second."""
    tree = tmp_path / "repo"
    config = tree / "deploy" / "prometheus" / "local.yml"
    config.parent.mkdir(parents=True)
    shutil.copy(LOCAL_CONFIG, config)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{server.server_address[1]}"
    targets = tree / "runs" / "targets" / "quickstart.json"
    targets.parent.mkdir(parents=True)
    targets.write_text(json.dumps([{"targets": [target], "labels": {"role": "coordinator"}}]))
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            prometheus,
            "--config.file=deploy/prometheus/local.yml",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.path=runs/prometheus",
        ],
        cwd=tree,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        found, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/api/v1/targets?state=active"
                with urllib.request.urlopen(url, timeout=2) as r:
                    active = json.load(r)["data"]["activeTargets"]
                found = next((t for t in active if t["labels"]["instance"] == target), None)
                if found and found["health"] == "up":
                    break
            except OSError:
                pass
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.shutdown()
        log.close()
    logs = (tmp_path / "prometheus.log").read_text()[-3000:]
    assert found is not None, f"Prometheus never listed {target}:\n{logs}"
    assert found["health"] == "up", f"{found}\n{logs}"
    assert found["labels"]["role"] == "coordinator"
    assert found["scrapeInterval"] == "1s"
