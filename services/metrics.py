"""Prometheus metrics: read-only views of what a process already keeps.

Metrics observe; they are never the record of a run (that is the run's Parquet
and JSON files). Each process that holds simulation state serves its own
``/metrics`` on loopback: host actors (their hosts, and optionally their
top-k guests by backed memory), guest-shard actors (their part of each guest
group) and the coordinator (the simulated clock, the cluster, and for an
in-process run its hosts and groups too).

A process keeps a *snapshot*: the rows of its last sample, taken by the code
that runs the simulation, never at scrape time, so a scrape sees one
consistent sample and takes no lock the simulation waits on for long. A row is
turned into samples by a *namer* (``services.sim.result_rows.metric_samples``,
passed in by the coordinator: this module imports nothing from the simulator),
so a Parquet column and its metric have related names. Labels are bounded:
``experiment``, ``run_id``, ``variant`` on every sample, then one entity label
(``host``, ``guest_group`` or ``guest``) and at most one more (``order``, ``cost``,
``kind``, ``workload``, ``state``); ``shard`` on guest-shard actors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# (kind, columns) -> [(family, (label, value) or None, value)]
Namer = Callable[[str, Mapping[str, float]], list[tuple[str, tuple[str, str] | None, float]]]
# a row of a snapshot: (kind, entity labels, columns)
Row = tuple[str, Mapping[str, str], Mapping[str, float]]

ENTITY_KINDS = ("host", "guest_group", "guest")
TOP_GUESTS_MAX = 1000  # per host actor: a bound on the per-guest label's series


@dataclass(frozen=True)
class MetricsOptions:
    """What an actor needs to export its metrics (picklable: Ray passes it to actors).

    ``labels``: experiment, run_id, variant. ``names``: entity id -> name (host ids,
    guest ids). ``top_guests``: export this many guests per host actor, by backed
    memory, with a ``guest`` label (0: none)."""

    labels: Mapping[str, str]
    namer: Namer
    help: Callable[[str], str]
    host_names: Mapping[int, str] = field(default_factory=dict)
    guest_names: Mapping[int, str] = field(default_factory=dict)
    top_guests: int = 0

    def __post_init__(self) -> None:
        check_top_guests(self.top_guests)


def check_top_guests(k: int) -> None:
    """Per-guest series are bounded: 0..TOP_GUESTS_MAX guests per host actor."""
    if not 0 <= k <= TOP_GUESTS_MAX:
        raise ValueError(f"top_guests={k}: must be 0..{TOP_GUESTS_MAX}")


def families(
    rows: Iterable[Row], namer: Namer, help_of: Callable[[str], str], extra: Iterable[Metric] = ()
) -> list[Metric]:
    """Rows (their label dicts complete) -> metric families, one per name (a family's
    label names are fixed by its first sample); ``extra`` families of the same name
    are merged, so several sources can share one exposition."""
    fams: dict[str, Metric] = {}
    for kind, labels, columns in rows:
        for name, more, value in namer(kind, columns):
            full = dict(labels)
            if more is not None:
                full[more[0]] = more[1]
            fam = fams.get(name)
            if fam is None:
                if name.endswith("_total"):
                    fam = CounterMetricFamily(name[: -len("_total")], help_of(name), labels=full)
                else:
                    fam = GaugeMetricFamily(name, help_of(name), labels=full)
                fams[name] = fam
                fam._label_names = tuple(full)  # type: ignore[attr-defined]
            fam.add_metric([full[k] for k in fam._label_names], value)  # type: ignore[attr-defined]
    for fam in extra:  # copies: a source's snapshot is never changed by a scrape
        have = fams.get(fam.name)
        if have is None:
            have = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            fams[fam.name] = have
        have.samples.extend(fam.samples)
    return list(fams.values())


class SnapshotCollector(Collector):
    """Exports the rows last given to :meth:`update` (the last sample), each labelled
    with ``base`` (experiment, run_id, variant, ...) as well as its own labels."""

    def __init__(self, base: Mapping[str, str], namer: Namer, help_of: Callable[[str], str]):
        self.base = dict(base)
        self.namer = namer
        self.help_of = help_of
        self._rows: list[Row] = []
        self._extra: list[Metric] = []
        self._lock = threading.Lock()

    def update(self, rows: Sequence[Row], extra: Sequence[Metric] = ()) -> None:
        with self._lock:
            self._rows = [(kind, {**self.base, **labels}, cols) for kind, labels, cols in rows]
            self._extra = list(extra)

    def snapshot(self) -> tuple[list[Row], list[Metric]]:
        with self._lock:
            return self._rows, self._extra

    def collect(self):
        rows, extra = self.snapshot()
        yield from families(rows, self.namer, self.help_of, extra)


class MergedCollector(Collector):
    """Several snapshot collectors in one exposition (a name appears once, with the
    samples of every source): the coordinator's simulations share one endpoint."""

    def __init__(self, namer: Namer, help_of: Callable[[str], str]):
        self.namer = namer
        self.help_of = help_of
        self._sources: dict[int, SnapshotCollector] = {}
        self._lock = threading.Lock()

    def add(self, source: SnapshotCollector) -> None:
        with self._lock:
            self._sources[id(source)] = source

    def remove(self, source: SnapshotCollector) -> None:
        with self._lock:
            self._sources.pop(id(source), None)

    def collect(self):
        with self._lock:
            sources = list(self._sources.values())
        rows: list[Row] = []
        extra: list[Metric] = []
        for source in sources:
            r, e = source.snapshot()
            rows += r
            extra += e
        yield from families(rows, self.namer, self.help_of, extra)


class WallHistogram:
    """A histogram of wall seconds observed in bulk (``observe(v, n)``: n observations
    of v), exported under fixed labels. prometheus_client's Histogram has no bulk form."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self, name: str, help_text: str):
        self.name = name
        self.help = help_text
        self.counts = [0] * (len(self.BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        if n <= 0:
            return
        i = next((k for k, b in enumerate(self.BUCKETS) if value <= b), len(self.BUCKETS))
        self.counts[i] += n
        self.sum += value * n

    def family(self, labels: Mapping[str, str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.help, labels=list(labels))
        cumulative, buckets = 0, []
        for bound, count in zip((*self.BUCKETS, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        fam.add_metric(list(labels.values()), buckets, self.sum)
        return fam


class MetricsEndpoint:
    """An HTTP ``/metrics`` endpoint on loopback (port 0 picks a free port)."""

    def __init__(
        self, collectors: Iterable[Collector] = (), host: str = "127.0.0.1", port: int = 0
    ):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"metrics bind={host!r}: metrics endpoints serve loopback only")
        self.registry = CollectorRegistry(auto_describe=False)
        for c in collectors:
            self.registry.register(c)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise OSError(
                f"metrics port {port} on {host}: {e.strerror or e} (port 0 picks a free one)"
            ) from None
        self.host = host
        self.port = self._server.server_address[1]

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def entity_rows(kind: str, samples: Mapping, names: Mapping | None = None) -> list[Row]:
    """Rows of one kind (its entity label is the kind: host, guest_group, guest) from
    {entity id or name: raw counters}, each a copy (a snapshot keeps what it was given)."""
    if kind not in ENTITY_KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {ENTITY_KINDS}")
    names = names or {}
    return [(kind, {kind: str(names.get(k, k))}, dict(v)) for k, v in sorted(samples.items())]


def guest_rows(
    host: str, guests: Iterable[tuple[int, Mapping]], names: Mapping[int, str]
) -> list[Row]:
    """Rows of one host's per-guest series (labels guest and host) from (guest id,
    counters) pairs, such as ``Host.top_guests``."""
    return [("guest", {"guest": str(names.get(g, g)), "host": host}, dict(c)) for g, c in guests]
