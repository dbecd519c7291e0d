"""The Prometheus collector over a real host core, scraped over loopback HTTP.

The collector exports host counters under the public names of
:func:`services.sim.result_rows.host_columns`, renaming nothing: ``*_total``
keys become counters, the rest gauges, labelled by experiment and host.
"""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.host.core.config import HostConfig, SwapConfig
from services.host.core.host import Host
from services.metrics import CounterCollector, MetricsEndpoint
from services.sim.result_rows import host_columns

PREFIX = "overcommit_host"
LABELS = {"experiment": "exp-1", "host": "h-0"}


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


@pytest.mark.allow_sockets
def test_the_endpoint_exports_host_columns_unrenamed_as_counters_and_gauges() -> None:
    host = busy_host()
    collector = CounterCollector(
        PREFIX, "exp-1", "host", lambda: {"h-0": host_columns(host.host_counters())}
    )
    endpoint = MetricsEndpoint([collector])
    try:
        families = scrape(endpoint.url)
        columns = host_columns(host.host_counters())
        assert columns["swapout_bytes_total"] > 0 and columns["lost_fault_seconds_total"] > 0
        assert all(name.startswith(f"{PREFIX}_") for name in families)
        expected_types = {
            f"{PREFIX}_{key[: -len('_total')]}"
            if key.endswith("_total")
            else f"{PREFIX}_{key}": "counter" if key.endswith("_total") else "gauge"
            for key in columns
        }
        assert {name: family.type for name, family in families.items()} == expected_types
        exported = {}
        for family in families.values():
            for sample in family.samples:
                assert sample.labels == LABELS, sample
                exported[sample.name[len(PREFIX) + 1 :]] = sample.value
        assert exported == columns  # same names, same values: nothing renamed or rescaled
        assert exported["backed_bytes"] == host.host_counters()["backed_bytes"]
        assert exported["lost_fault_seconds_total"] == host.host_counters()["lost_fault_ns"] / 1e9

        host.apply_touch(1, np.array([30_000], np.int64), np.array([512], np.int64))
        again = scrape(endpoint.url)[f"{PREFIX}_touched_pages"].samples
        assert [s.value for s in again] == [host.host_counters()["touched_pages"]]
        assert host.host_counters()["touched_pages"] > columns["touched_pages_total"]
    finally:
        endpoint.close()
