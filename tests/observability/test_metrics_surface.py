"""The metrics a simulation exports, scraped over loopback HTTP from a real endpoint,
against the run's own rows, the catalogue (docs/metrics.md) and the historical export."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.sim.backends.inprocess import InProcessBackend
from services.sim.live_metrics import LiveMetrics, MetricsHub
from services.sim.metric_catalogue import HELP, LIVE_ONLY, render
from services.sim.openmetrics import export_openmetrics, iter_samples
from services.sim.result_rows import metric_samples
from services.sim.runner import run_experiment
from services.sim.simulation import Simulation
from services.sim.spec import baseline_spec, load_spec

from .conftest import SPEC

ROOT = Path(__file__).resolve().parents[2]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(url: str) -> dict:
    with _OPENER.open(url, timeout=10) as response:
        text = response.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def live_scrape(tmp_path_factory):
    """A run and its baseline, in-process, scraped half-way and at the end."""
    spec = load_spec(str(SPEC))
    out = tmp_path_factory.mktemp("live")
    hub = MetricsHub(LiveMetrics(targets_path=str(out / "targets.json"), linger_s=0, top_guests=2))
    sims = [
        Simulation(spec, InProcessBackend(), "run", metrics=hub),
        Simulation(
            baseline_spec(spec, "reporting_off"),
            InProcessBackend(),
            "reporting_off",
            run_id=spec.run_id(),
            metrics=hub,
        ),
    ]
    try:
        targets = json.loads((out / "targets.json").read_text())
        for sim in sims:
            sim.advance_to(spec.duration // 2)
        half = scrape(hub.endpoint.url)
        for sim in sims:
            sim.advance_to(spec.duration)
        end = scrape(hub.endpoint.url)
        yield {"sims": sims, "half": half, "end": end, "targets": targets, "hub": hub}
    finally:
        for sim in sims:
            sim.close()
        hub.close()


def test_every_exported_metric_is_in_the_catalogue_and_its_type_follows_the_name(live_scrape):
    families = live_scrape["end"]
    assert len(families) > 60
    missing = sorted(
        name
        for name, fam in families.items()
        if (f"{name}_total" if fam.type == "counter" else name) not in HELP
    )
    assert missing == [], f"exported but not in metric_catalogue.HELP / docs/metrics.md: {missing}"
    for name, fam in families.items():
        assert name.startswith("overcommit_")
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples)
        for sample in fam.samples:
            if name != "overcommit_build_info":
                assert {"experiment", "run_id", "variant"} <= set(sample.labels), sample


def test_no_counter_family_takes_a_gauge_name():
    """A counter X_total's family is X: a gauge named X would make two families of one name."""
    gauges = {f for f in HELP if not f.endswith("_total")}
    assert {f.removesuffix("_total") for f in HELP if f.endswith("_total")} & gauges == set()


def test_docs_metrics_md_is_generated_from_the_catalogue():
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert render(doc) == doc, "run: python -m services.sim.metric_catalogue"
    for family in HELP:
        assert f"`{family}`" in doc


def test_the_scrape_is_the_last_sample_of_each_simulation(live_scrape):
    """Host and group gauges scraped at the end equal the simulations' last rows; the
    clock, at half-way and at the end, is where each simulation stood."""
    for when, scraped in (("half", live_scrape["half"]), ("end", live_scrape["end"])):
        clock = {
            s.labels["variant"]: s.value for s in scraped["overcommit_sim_time_seconds"].samples
        }
        expected = 10.0 if when == "half" else 20.0
        assert clock == {"run": expected, "reporting_off": expected}
    scraped = live_scrape["end"]
    for sim in live_scrape["sims"]:
        last = {(r["kind"], r["entity"]): r for r in sim.rows if r["time_s"] == 20.0}
        assert last, "no row at the end"
        for (kind, entity), row in last.items():
            label = "host" if kind == "host" else "guest_group"
            for family, extra, value in metric_samples(kind, row):
                fam = family.removesuffix("_total") if family.endswith("_total") else family
                got = [
                    s.value
                    for s in scraped[fam].samples
                    if s.labels.get(label) == entity
                    and s.labels["variant"] == sim.variant
                    and (extra is None or s.labels.get(extra[0]) == extra[1])
                    and not s.name.endswith("_created")
                ]
                assert got == [pytest.approx(value)], (family, entity, sim.variant)


def test_memory_saved_and_cluster_levels(live_scrape):
    scraped = live_scrape["end"]
    run, base = live_scrape["sims"]
    backed = {
        s.labels["variant"]: s.value for s in scraped["overcommit_cluster_backed_bytes"].samples
    }
    assert backed["run"] == sum(c["backed_bytes"] for c in run.last_hosts.values())
    demand_base = sum(c["backed_bytes"] + c["swapped_bytes"] for c in base.last_hosts.values())
    assert demand_base > 0
    # the hub does not pair simulations by itself: the run loop does (runner._Together)
    assert "overcommit_cluster_memory_saved_bytes" not in scraped or not [
        s for s in scraped["overcommit_cluster_memory_saved_bytes"].samples
    ]
    ratio = scraped["overcommit_cluster_overcommit_ratio"].samples[0].value
    assert ratio == pytest.approx(run.plan.guest_bytes / run.plan.physical_bytes)


def test_the_targets_file_lists_the_coordinator_and_is_removed_at_close(tmp_path):
    hub = MetricsHub(LiveMetrics(targets_path=str(tmp_path / "t" / "targets.json"), linger_s=0))
    try:
        groups = json.loads((tmp_path / "t" / "targets.json").read_text())
        assert groups == [{"labels": {"role": "coordinator"}, "targets": [hub.address]}]
        assert "overcommit_build_info" in scrape(hub.endpoint.url)
    finally:
        hub.close()
    assert not (tmp_path / "t" / "targets.json").exists()


def test_live_metrics_change_no_result(metrics_run, tmp_path):
    """With live metrics the run and its baseline advance together: the results are those
    of running them one after the other."""
    plain = run_experiment(load_spec(str(SPEC)), out_dir=str(tmp_path), transport="inprocess")
    assert metrics_run.summary == plain.summary
    assert metrics_run.timeseries.equals(plain.timeseries)


def test_the_historical_export_has_every_metric_of_the_live_view(
    metrics_run, live_scrape, tmp_path
):
    path = export_openmetrics(metrics_run.run_dir, str(tmp_path / "m.om"), start=1_700_000_000)
    exported = {name for name, _, _, _ in iter_samples(path)}
    live = {
        s.name
        for fam in live_scrape["end"].values()
        for s in fam.samples
        if not s.name.endswith("_created")
    }
    live_only = {n for n in live if any(n.startswith(f) for f in LIVE_ONLY)}
    assert live - live_only - exported == set()
    assert "overcommit_cluster_memory_saved_bytes" in exported
    text = Path(path).read_text(encoding="utf-8")
    assert text.endswith("# EOF\n")


def test_export_refuses_what_is_not_a_finished_run(tmp_path, metrics_run):
    with pytest.raises(FileNotFoundError, match=r"no timeseries\.parquet"):
        export_openmetrics(str(tmp_path))
    with pytest.raises(ValueError, match="start=-5"):
        export_openmetrics(metrics_run.run_dir, str(tmp_path / "x.om"), start=-5)
    assert not (tmp_path / "x.om").exists()


def test_top_guests_are_each_hosts_largest_by_backed_memory(live_scrape):
    scraped = live_scrape["end"]
    run = live_scrape["sims"][0]
    samples = [
        s for s in scraped["overcommit_guest_backed_bytes"].samples if s.labels["variant"] == "run"
    ]
    barriers = run.session.barriers
    for host_id, barrier in barriers.items():
        name = run.plan.host_names[host_id]
        mine = {s.labels["guest"]: s.value for s in samples if s.labels["host"] == name}
        every = sorted(
            (barrier.host.guest_counters(g)["backed_bytes"] for g in barrier.host.guest_ids()),
            reverse=True,
        )
        assert len(mine) == min(2, len(every))
        assert sorted(mine.values(), reverse=True) == every[:2]
