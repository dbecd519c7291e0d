"""Fixtures of the observability tests: one finished in-process run of specs/metrics.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parent / "specs" / "metrics.yaml"


@pytest.fixture(scope="session")
def metrics_run(tmp_path_factory):
    """The spec run in-process with live metrics on (run and baseline in one loop)."""
    from services.sim.live_metrics import LiveMetrics
    from services.sim.runner import LiveRun, run_experiment
    from services.sim.spec import load_spec

    out = tmp_path_factory.mktemp("metrics-run")
    scrapes: list[str] = []
    live = LiveRun(
        metrics=LiveMetrics(targets_path=str(out / "targets.json"), linger_s=0),
        on_metrics=lambda hub: scrapes.append(hub.endpoint.url),
    )
    return run_experiment(load_spec(str(SPEC)), out_dir=str(out), transport="inprocess", live=live)
