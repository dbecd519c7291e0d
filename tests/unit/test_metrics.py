"""The Prometheus collectors over a real host core, scraped over loopback HTTP.

A snapshot collector exports a host's counters under the names of
:func:`services.sim.result_rows.metric_samples` (``overcommit_host_<column>``,
page counts as bytes, labelled families): ``*_total`` columns become counters,
the rest gauges. It serves the snapshot it was given, not the live core.
"""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.host.core.config import HostConfig, SwapConfig
from services.host.core.host import Host
from services.metrics import (
    MergedCollector,
    MetricsEndpoint,
    SnapshotCollector,
    WallHistogram,
    entity_rows,
)
from services.sim.metric_catalogue import help_of
from services.sim.result_rows import host_columns, raw_metric_samples
from services.units import PAGE_SIZE

BASE = {"experiment": "exp-1", "run_id": "abc", "variant": "run"}


def busy_host() -> Host:
    """A 64 MiB host whose one 128 MiB guest touched 80 MiB and reported 2 MiB: it swapped."""
    host = Host(0, HostConfig(memory_bytes=64 << 20, swap=SwapConfig(capacity_bytes=1 << 30)))
    host.add_guest(1, 1 << 15)
    host.apply_touch(1, np.array([0, 20_000], np.int64), np.array([12_000, 8_000], np.int64))
    host.apply_report(1, np.array([0], np.int64), np.array([9], np.int64))
    host.reclaim()
    return host


def scrape(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
    with opener.open(url, timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def values(families: dict, name: str, **labels: str) -> list[float]:
    return [
        s.value
        for s in families[name].samples
        if not s.name.endswith("_created") and all(s.labels.get(k) == v for k, v in labels.items())
    ]


@pytest.mark.allow_sockets
def test_a_host_snapshot_is_exported_under_the_result_names() -> None:
    host = busy_host()
    collector = SnapshotCollector(BASE, raw_metric_samples, help_of)
    collector.update(entity_rows("host", {0: host.host_counters()}, {0: "h-0"}))
    endpoint = MetricsEndpoint([collector])
    try:
        families = scrape(endpoint.url)
        counters = host.host_counters()
        columns = host_columns(counters)
        assert columns["swapout_bytes_total"] > 0 and columns["lost_fault_seconds_total"] > 0
        labels = {**BASE, "host": "h-0"}
        assert values(families, "overcommit_host_backed_bytes", **labels) == [
            counters["backed_bytes"]
        ]
        assert families["overcommit_host_swapout_bytes"].type == "counter"
        assert families["overcommit_host_backed_bytes"].type == "gauge"
        assert values(families, "overcommit_host_capacity_bytes") == [
            counters["memory_bytes"] - counters["reserve_bytes"]
        ]
        # page counts as bytes; cost kinds and fault kinds as labels
        assert values(families, "overcommit_host_discarded_bytes") == [
            counters["discarded_pages"] * PAGE_SIZE
        ]
        assert values(families, "overcommit_host_lost_seconds", cost="fault") == [
            counters["lost_fault_ns"] / 1e9
        ]
        assert values(families, "overcommit_host_faults", kind="4k") == [counters["faults_4k"]]
        # the reported pages are exported once, as bytes (reported_bytes_total)
        assert values(families, "overcommit_host_reported_bytes") == [
            counters["reported_pages"] * PAGE_SIZE
        ]
        for family in families.values():
            for sample in family.samples:
                assert {k: sample.labels[k] for k in BASE} == BASE, sample

        # the endpoint serves the snapshot, not the live core: a touch shows after update
        before = values(families, "overcommit_host_touched_bytes")
        host.apply_touch(1, np.array([30_000], np.int64), np.array([512], np.int64))
        assert values(scrape(endpoint.url), "overcommit_host_touched_bytes") == before
        collector.update(entity_rows("host", {0: host.host_counters()}, {0: "h-0"}))
        after = values(scrape(endpoint.url), "overcommit_host_touched_bytes")
        assert after == [host.host_counters()["touched_pages"] * PAGE_SIZE] and after > before
    finally:
        endpoint.close()


@pytest.mark.allow_sockets
def test_merged_sources_share_one_family_per_name() -> None:
    """Two simulations in one process (a run and its baseline): one # TYPE per name."""
    host = busy_host()
    merged = MergedCollector(raw_metric_samples, help_of)
    for variant in ("run", "reporting_off"):
        c = SnapshotCollector({**BASE, "variant": variant}, raw_metric_samples, help_of)
        hist = WallHistogram("overcommit_sim_epoch_wall_seconds", "x")
        hist.observe(0.01, 3)
        c.update(
            entity_rows("host", {0: host.host_counters()}, {0: "h-0"}),
            [hist.family({**BASE, "variant": variant})],
        )
        merged.add(c)
    endpoint = MetricsEndpoint([merged])
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(endpoint.url, timeout=10) as response:
            text = response.read().decode()
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        assert len(types) == len(set(types))
        with opener.open(endpoint.url, timeout=10) as response:  # scraping changes nothing
            assert response.read().decode() == text
        backed = scrape(endpoint.url)["overcommit_host_backed_bytes"].samples
        assert sorted(s.labels["variant"] for s in backed) == ["reporting_off", "run"]
    finally:
        endpoint.close()


def test_wall_histogram_counts_bulk_observations() -> None:
    h = WallHistogram("overcommit_sim_epoch_wall_seconds", "x")
    h.observe(0.003, 10)
    h.observe(100.0, 2)
    h.observe(0.003, 0)
    fam = h.family({"variant": "run"})
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets["0.0025"] == 0 and buckets["0.005"] == 10 and buckets["+Inf"] == 12
    total = [s.value for s in fam.samples if s.name.endswith("_sum")]
    assert total == [pytest.approx(0.03 + 200.0)]


def test_a_metrics_endpoint_serves_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        MetricsEndpoint([], host="0.0.0.0")
