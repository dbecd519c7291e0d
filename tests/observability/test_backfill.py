"""The historical view: a finished run exported as OpenMetrics, turned into blocks by the
real ``promtool tsdb create-blocks-from openmetrics``, served by a real Prometheus, and
queried: the answers are the run's summary.json."""

from __future__ import annotations

import pytest

from services.sim.openmetrics import export_openmetrics

from .prom import Prometheus, backfill, dashboard_queries

START = 1_700_000_000.0  # simulated time 0 on the wall clock (any fixed instant)


@pytest.fixture(scope="module")
def backfilled(metrics_run, tmp_path_factory):
    work = tmp_path_factory.mktemp("backfill")
    om = export_openmetrics(metrics_run.run_dir, str(work / "run.om"), start=START)
    backfill(work / "run.om", work / "data")
    prom = Prometheus(work / "prom", "global: {scrape_interval: 15s}\n", data=work / "data")
    try:
        yield prom, metrics_run.summary, om
    finally:
        prom.stop()


def test_backfilled_blocks_answer_like_the_summary(backfilled):
    prom, s, _ = backfilled
    end = START + s["duration_seconds"]
    window = f"[{int(s['duration_seconds'] * 1000) + 500}ms]"  # every sample, t = 0 included
    peak = prom.value(
        f'max_over_time(overcommit_cluster_backed_bytes{{variant="run"}}{window})', end
    )
    assert peak == s["cluster"]["backed_bytes"]["peak"] > 0
    mean = prom.value(
        f'avg_over_time(overcommit_cluster_backed_bytes{{variant="run"}}{window})', end
    )
    assert mean == pytest.approx(s["cluster"]["backed_bytes"]["mean"], rel=1e-12)
    for host, h in s["hosts"].items():
        sel = f'{{variant="run",host="{host}"}}'
        assert prom.value(f"overcommit_host_backed_bytes{sel}", end) == h["backed_bytes"]["final"]
        assert prom.value(f"overcommit_host_reported_bytes_total{sel}", end) == h["reported_bytes"]
        assert prom.value(f"overcommit_host_zeroed_bytes_total{sel}", end) == h["zeroed_bytes"]
    base = s["baselines"]["reporting_off"]
    swap_out = prom.value('sum(overcommit_host_swapout_bytes_total{variant="reporting_off"})', end)
    assert swap_out == base["cluster"]["swap_out_bytes"] > 0
    swapped = prom.value('sum(overcommit_host_swapped_bytes{variant="reporting_off"})', end)
    cluster = base["cluster"]
    assert swapped == cluster["demand_bytes"]["final"] - cluster["backed_bytes"]["final"]
    saved = prom.value(
        f'avg_over_time(overcommit_cluster_memory_saved_bytes{{baseline="reporting_off"}}{window})',
        end,
    )
    assert saved == pytest.approx(s["comparison"]["reporting_off"]["memory_saved_mean_bytes"])
    for group, g in s["guest_groups"].items():
        sel = f'{{variant="run",guest_group="{group}"}}'
        assert (
            prom.value(f"overcommit_guest_group_reported_bytes_total{sel}", end)
            == g["reported_bytes"]
        )
    assert prom.value('overcommit_sim_time_seconds{variant="run"}', end) == s["duration_seconds"]


def test_samples_sit_at_start_plus_simulated_time(backfilled):
    prom, _, _ = backfilled
    t = prom.value('timestamp(overcommit_sim_time_seconds{variant="run"})', START + 7.5)
    clock = prom.value('overcommit_sim_time_seconds{variant="run"}', START + 7.5)
    assert (t, clock) == (START + 7.0, 7.0)  # sampled every simulated second
    assert prom.query('overcommit_sim_time_seconds{variant="run"}', START - 1) == []


def test_every_dashboard_query_returns_data_from_the_blocks(backfilled):
    """Every panel of the committed dashboards, over a finished run (its variables set)."""
    prom, s, _ = backfilled
    queries = dashboard_queries()
    assert len(queries) > 30
    at = START + s["duration_seconds"]
    empty = [(title, expr) for title, expr in queries if not prom.query(expr, at)]
    assert empty == [], f"panels whose query returned no data: {empty}"
