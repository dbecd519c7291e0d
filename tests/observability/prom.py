"""A real Prometheus for the tests: Debian's ``prometheus`` and ``promtool``, on loopback.

``make test`` installs Debian's package when the tools are missing
(scripts/ensure_prometheus.sh); where they still are not on PATH the tests fail
with that message, never skip. A server is started with a temporary config and
data directory, waited for until it logs that it is ready (its output is read by a
thread that copies it to ``prometheus.log``), queried over its HTTP API, and stopped by
PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

READY_DEADLINE_S = 60.0
READY_LINE = b"Server is ready to receive web requests."  # logged once /-/ready answers 200
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH: `make test` installs Debian's prometheus package "
            "(scripts/ensure_prometheus.sh; it needs root or sudo and apt)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10.0) -> dict:
    with _OPENER.open(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


class Prometheus:
    """One Prometheus server on 127.0.0.1 (``config``: its YAML; ``data``: its TSDB)."""

    def __init__(
        self, workdir: Path, config: str, data: Path | None = None, retention: str = "100y"
    ):
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(config, encoding="utf-8")
        self.data = data or workdir / "data"
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data}",
                f"--storage.tsdb.retention.time={retention}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-admin-api",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._ready = threading.Event()  # set by the ready line, or when the output ends
        self._saw_ready = False
        self._copier = threading.Thread(target=self._copy_output, daemon=True)
        self._copier.start()
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _copy_output(self) -> None:
        """Copy the server's output to prometheus.log line by line, watching for READY_LINE."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            if READY_LINE in line:
                self._saw_ready = True
                self._ready.set()
        self._ready.set()  # the server exited: _wait_ready reports it

    def _wait_ready(self) -> None:
        """Wait for the ready line (no polling), then check /-/ready once."""
        if not self._ready.wait(READY_DEADLINE_S):
            raise TimeoutError(f"prometheus not ready in {READY_DEADLINE_S} s: {self.tail()}")
        if not self._saw_ready:  # the output ended first: the server exited
            raise RuntimeError(f"prometheus exited ({self.proc.wait(timeout=30)}): {self.tail()}")
        with _OPENER.open(f"{self.url}/-/ready", timeout=10) as r:
            if r.status != 200:
                raise RuntimeError(f"prometheus logged ready, /-/ready says {r.status}")

    def tail(self) -> str:
        self.log.flush()
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-3000:]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query's result vector (raises on a PromQL error)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        if body.get("status") != "success":
            raise AssertionError(f"{expr}: {body}")
        return body["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        """The single value of an instant query."""
        result = self.query(expr, at)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, ok, deadline_s: float, what: str) -> list[dict]:
        """Poll an instant query until ``ok(result)`` (a deadline, not a timing assertion)."""
        end = time.monotonic() + deadline_s
        result: list[dict] = []
        while time.monotonic() < end:
            result = self.query(expr)
            if ok(result):
                return result
            time.sleep(0.5)
        raise TimeoutError(f"{what}: {expr} gave {result} after {deadline_s} s\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._copier.join(timeout=30)  # the pipe closes with the server
        self.log.close()


def scrape_config(targets_file: Path, interval: str = "1s") -> str:
    return (
        f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
        "scrape_configs:\n  - job_name: overcommit\n    file_sd_configs:\n"
        f"      - files: ['{targets_file}']\n        refresh_interval: 1s\n"
    )


def backfill(openmetrics: Path, data: Path) -> str:
    """``promtool tsdb create-blocks-from openmetrics``: the file's samples as blocks in ``data``."""
    out = subprocess.run(
        [
            tool("promtool"),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(openmetrics),
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"promtool failed ({out.returncode}): {out.stderr[-3000:]}")
    return out.stdout


def dashboard_queries(values: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(dashboard: panel, PromQL) of every panel query of the committed dashboards, and a
    query per ``label_values(metric, label)`` variable, with the variables substituted
    (default: every experiment and run, host h-0, guest group hog)."""
    import re

    from scripts.dashboards import DASHBOARD_DIR, TEST_VALUES, queries, substitute, variables

    chosen = {**TEST_VALUES, "host": "h-0", "guest_group": "hog", **(values or {})}
    out = []
    boards = sorted(DASHBOARD_DIR.glob("*.json"))
    assert boards, f"no dashboards in {DASHBOARD_DIR}"
    for path in boards:
        board = json.loads(path.read_text(encoding="utf-8"))
        for title, expr in queries(board):
            out.append((f"{board['title']}: {title}", substitute(expr, chosen)))
        for name, definition in variables(board).items():
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition.strip())
            if m:
                expr = substitute(f"count by ({m[2]}) ({m[1]})", chosen)
                out.append((f"{board['title']}: variable {name}", expr))
    return out
