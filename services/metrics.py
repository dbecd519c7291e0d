"""Prometheus metrics: read-only views of core counters.

Metrics observe; they are never the record of a run (that is the run's
Parquet and JSON files). A collector asks its source for a snapshot at scrape
time, already under the public names that :mod:`services.sim.result_rows`
defines (base units: ``_bytes``, ``_seconds``), and turns each key into one
metric family: keys ending in ``_total`` become counters, the rest gauges. It
renames nothing. Labels are bounded: ``experiment`` and one entity label
(``host`` or ``guest_group``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


def _families(
    prefix: str, label_names: list[str], samples: Iterable[tuple[list[str], dict[str, float]]]
):
    fams: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    for labels, values in samples:
        for name, value in sorted(values.items()):
            full = f"{prefix}_{name}"
            if full not in fams:
                if name.endswith("_total"):
                    fams[full] = CounterMetricFamily(
                        full[: -len("_total")], f"{name} (simulated)", labels=label_names
                    )
                else:
                    fams[full] = GaugeMetricFamily(full, f"{name} (simulated)", labels=label_names)
            fams[full].add_metric(labels, float(value))
    return list(fams.values())


class CounterCollector(Collector):
    """Exports ``source()`` -> {label value: {public name: value}} under ``prefix``."""

    def __init__(
        self,
        prefix: str,
        experiment: str,
        label: str,
        source: Callable[[], dict[str, dict[str, float]]],
    ):
        self.prefix = prefix
        self.experiment = experiment
        self.label = label
        self.source = source
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            snapshot = self.source()
        samples = [([self.experiment, str(k)], v) for k, v in sorted(snapshot.items())]
        yield from _families(self.prefix, ["experiment", self.label], samples)


class MetricsEndpoint:
    """An HTTP /metrics endpoint on loopback (port 0 picks a free port)."""

    def __init__(self, collectors: list[Collector], host: str = "127.0.0.1", port: int = 0):
        self.registry = CollectorRegistry(auto_describe=False)
        for c in collectors:
            self.registry.register(c)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
