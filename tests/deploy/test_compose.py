"""deploy/compose.yaml and the Grafana provisioning it mounts: the Compose specification
accepts it, Grafana's data source reaches the Prometheus service, the provisioned
dashboards are the mounted ones and use data sources that exist, and every service
listens on loopback only."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from .support import DEPLOY, check_overcommit_args, compose, load_yaml, prometheus_flags

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"  # Grafana's default paths.provisioning
# Names Grafana gives its built-in data sources (annotations, mixed panels).
BUILTIN_DATASOURCES = {"-- Grafana --", "-- Mixed --", "-- Dashboard --", "grafana"}


def _services() -> dict:
    return compose()["services"]


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (relative to deploy/) or volume name."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        out[target] = source
    return out


def _provisioning_dir():
    grafana = _services()["grafana"]
    target = grafana.get("environment", {}).get("GF_PATHS_PROVISIONING", GRAFANA_PROVISIONING)
    return (DEPLOY / _mounts(grafana)[target]).resolve()


def _datasources() -> list[dict]:
    files = sorted((_provisioning_dir() / "datasources").glob("*.y*ml"))
    return [ds for f in files for ds in load_yaml(f)["datasources"]]


def _prometheus_listen(service: dict) -> tuple[str, int]:
    host, _, port = (
        prometheus_flags(service.get("command", []))
        .get("web.listen-address", "0.0.0.0:9090")
        .rpartition(":")
    )
    return host, int(port)


def _reached_by(client: str, url: str) -> list[str]:
    """The compose services that `client` reaches at `url` (Prometheus services only)."""
    services = _services()
    host, port = urlsplit(url).hostname, urlsplit(url).port
    reached = []
    for name, service in services.items():
        if name == client or not service.get("image", "").startswith("prom/prometheus"):
            continue
        bind, listen_port = _prometheus_listen(service)
        if listen_port != port:
            continue
        host_network = service.get("network_mode") == "host"
        if services[client].get("network_mode") == "host":
            # the host's network: loopback reaches host-network services bound to it
            if host_network and host in LOOPBACK and bind in LOOPBACK | {"0.0.0.0", ""}:
                reached.append(name)
        elif not host_network and host == name and bind in {"0.0.0.0", ""}:
            reached.append(name)  # the default network: service names resolve
    return reached


def test_compose_file_follows_the_compose_specification():
    """check-jsonschema's bundled copy of the Compose specification's schema (offline)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafanas_prometheus_data_source_resolves_to_the_prometheus_service():
    datasources = [ds for ds in _datasources() if ds["type"] == "prometheus"]
    assert [ds["uid"] for ds in datasources] == ["prometheus"]  # what the dashboards name
    for ds in datasources:
        assert ds.get("access", "proxy") == "proxy"  # Grafana's server queries, not browsers
        assert _reached_by("grafana", ds["url"]) == ["prometheus"], (
            f"Grafana's data source {ds['url']} reaches no Prometheus service: grafana uses "
            f"network_mode {_services()['grafana'].get('network_mode')!r}"
        )


def test_a_service_name_does_not_resolve_on_the_hosts_network():
    """The mistake this guards against: http://prometheus:9090 with network_mode: host."""
    assert _reached_by("grafana", "http://prometheus:9090") == []
    assert _reached_by("grafana", "http://127.0.0.1:9091") == []


def test_the_dashboards_provider_reads_the_mounted_dashboards():
    grafana = _mounts(_services()["grafana"])
    files = sorted((_provisioning_dir() / "dashboards").glob("*.y*ml"))
    paths = [p["options"]["path"] for f in files for p in load_yaml(f)["providers"]]
    assert paths
    for path in paths:
        assert path in grafana, (
            f"the dashboards provider reads {path}, which compose does not mount"
        )
        assert list((DEPLOY / grafana[path]).glob("*.json")), grafana[path]


def _datasource_refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


def test_every_data_source_the_dashboards_use_is_provisioned():
    """By uid, by name, through a data source variable, or the default (none named)."""
    provisioned = _datasources()
    uids, names = {ds["uid"] for ds in provisioned}, {ds["name"] for ds in provisioned}
    assert any(ds.get("isDefault") for ds in provisioned)
    dashboards = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        board = json.loads(path.read_text())
        variables = {
            v["name"]: v.get("query")
            for v in board.get("templating", {}).get("list", [])
            if v.get("type") == "datasource"
        }
        for ref in _datasource_refs(board):
            uid = ref.get("uid") if isinstance(ref, dict) else ref
            if uid is None or uid in BUILTIN_DATASOURCES:
                continue
            if m := re.fullmatch(r"\$\{?(\w+)\}?", uid):  # a data source variable
                assert variables.get(m[1]) in {ds["type"] for ds in provisioned}, (path, uid)
            elif isinstance(ref, dict):
                assert uid in uids, f"{path.name}: data source uid {uid!r} is not provisioned"
            else:
                assert uid in names | uids, f"{path.name}: data source {uid!r} is not provisioned"


def test_grafana_is_a_version_the_dashboards_target():
    image = _services()["grafana"]["image"]
    major = int(re.fullmatch(r"grafana/grafana(?:-oss)?:(\d+)\.\d+\.\d+", image)[1])
    assert major >= 10


def test_every_service_shares_the_hosts_network_and_listens_on_loopback():
    """The metrics endpoints are loopback only; nothing in compose listens beyond it."""
    services = _services()
    assert {s.get("network_mode") for s in services.values()} == {"host"}
    assert _prometheus_listen(services["prometheus"])[0] in LOOPBACK
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] in LOOPBACK
    command = services["simulator"]["command"]
    assert command[0] == "overcommit"
    assert "--bind" not in command and "--allow-remote" not in command  # serve's default: loopback


def test_the_simulator_runs_a_serve_command_the_cli_takes():
    command = _services()["simulator"]["command"]
    assert command[:2] == ["overcommit", "serve"]
    check_overcommit_args(command[1:], "deploy/compose.yaml simulator")


def test_the_simulator_image_is_the_one_the_kuberay_manifests_run():
    image = _services()["simulator"]["image"]
    for name in ("raycluster.yaml", "rayjob.yaml"):
        spec = load_yaml(DEPLOY / "kuberay" / name)["spec"]
        spec = spec.get("rayClusterSpec", spec)
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["image"] == image, name


def test_prometheus_runs_with_its_mounted_config_and_a_data_volume():
    prometheus = _services()["prometheus"]
    flags, mounts = prometheus_flags(prometheus["command"]), _mounts(prometheus)
    assert mounts[flags["config.file"]] == "./prometheus/prometheus.yml"
    assert mounts[flags["storage.tsdb.path"]] in compose()["volumes"]
    assert PurePosixPath(flags["config.file"]).name == "prometheus.yml"
