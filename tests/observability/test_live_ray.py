"""A live run on Ray, watched by a real Prometheus through the run's file_sd targets file.

``overcommit run --metrics`` (a real CLI process: host actors, guest-shard actors and
the coordinator each serve /metrics) is scraped every second while it runs, paced to
2 simulated seconds per wall second; at the end the last scraped values of the
headline metrics are compared with the run's summary.json, and every dashboard
panel's query must return data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.sim.metric_catalogue import HELP

from .conftest import SPEC
from .prom import Prometheus, dashboard_queries, scrape_config

pytestmark = pytest.mark.ray

FINISH_DEADLINE_S = 420.0


class Run:
    """The CLI in a process of its own; its output lines collected by a thread."""

    def __init__(self, args: list[str]):
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.sim.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()  # a line arrived, or the output ended
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_line(self, prefix: str, deadline_s: float) -> str:
        """The first output line starting with ``prefix``, waited for (woken by each new
        line) until the output ends or ``deadline_s`` passes."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines if line.startswith(prefix)][:1]
            return bool(found) or self._eof

        with self._changed:
            self._changed.wait_for(seen, timeout=deadline_s)
        if found:
            return found[0]
        raise AssertionError(f"no line {prefix!r}; output:\n{''.join(self.lines)[-4000:]}")


def test_a_live_ray_run_is_scraped_and_its_last_values_are_its_summary(tmp_path):
    targets = tmp_path / "targets.json"
    prom = Prometheus(tmp_path / "prom", scrape_config(targets))
    run = Run(
        [
            "run",
            str(SPEC),
            "--metrics",
            "--metrics-targets",
            str(targets),
            "--metrics-linger",
            "300",
            "--speed",
            "2",
            "--shards",
            "2",
            "--out",
            str(tmp_path / "runs"),
            "--no-progress",
        ]
    )
    try:
        run.wait_line("metrics: http://127.0.0.1:", 120)
        # while it runs: every actor is a target, up, and the clock moves
        up = prom.wait_for(
            "count by (role) (up == 1)",
            lambda r: {x["metric"]["role"]: int(x["value"][1]) for x in r}.get("shard", 0) >= 4,
            180,
            "the actors' endpoints scraped",
        )
        roles = {x["metric"]["role"]: int(x["value"][1]) for x in up}
        assert roles["coordinator"] == 1 and roles["host"] >= 2, roles  # run + baseline
        moving = prom.wait_for(
            'overcommit_sim_time_seconds{variant="run"}',
            lambda r: r and 0 < float(r[0]["value"][1]) < 20,
            120,
            "the clock scraped mid-run",
        )
        assert moving
        run.wait_line("finished;", FINISH_DEADLINE_S)
        seen = time.time()
        prom.wait_for(
            "overcommit_sim_time_seconds",
            lambda r: len(r) == 2 and all(float(x["value"][1]) == 20.0 for x in r),
            60,
            "the final clock scraped",
        )
        prom.wait_for(  # every actor scraped again after the end
            "min(timestamp(up))", lambda r: r and float(r[0]["value"][1]) > seen + 1, 60, "a scrape"
        )
        at = time.time()
        names = {
            x["metric"]["__name__"]
            for x in prom.query('count by (__name__) ({__name__=~"overcommit_.*"})', at)
        }
        families = {
            n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in names
        }
        undocumented = sorted(f for f in families if f.removesuffix("_created") not in HELP)
        assert len(families) > 60 and undocumented == [], undocumented
        empty = [(title, expr) for title, expr in dashboard_queries() if not prom.query(expr, at)]
        assert empty == [], f"panels whose query returned no data: {empty}"
        run.proc.send_signal(signal.SIGTERM)  # ends the linger; the run's files are written
        assert run.proc.wait(timeout=120) == 0, "".join(run.lines)[-4000:]
        run_dir = run.wait_line("results: ", 5).split(maxsplit=1)[1].strip()
        s = json.loads((Path(run_dir) / "summary.json").read_text())
        for host, h in s["hosts"].items():
            sel = f'{{variant="run",host="{host}"}}'
            assert (
                prom.value(f"overcommit_host_backed_bytes{sel}", at) == h["backed_bytes"]["final"]
            )
            assert (
                prom.value(f"overcommit_host_reported_bytes_total{sel}", at) == h["reported_bytes"]
            )
        base = s["baselines"]["reporting_off"]["cluster"]
        swapped = prom.value('sum(overcommit_host_swapped_bytes{variant="reporting_off"})', at)
        assert swapped == base["demand_bytes"]["final"] - base["backed_bytes"]["final"] > 0
        for group, g in s["guest_groups"].items():  # each shard exports its part: summed
            got = prom.value(
                f'sum(overcommit_guest_group_reported_bytes_total{{variant="run",guest_group="{group}"}})',
                at,
            )
            assert got == g["reported_bytes"]
        saved = prom.value('overcommit_cluster_memory_saved_bytes{baseline="reporting_off"}', at)
        comparison = s["comparison"]["reporting_off"]
        assert saved == comparison["memory_saved_final_bytes"]
        assert not targets.exists(), "the targets file outlived the run"
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        prom.stop()
