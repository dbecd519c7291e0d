"""The coordinator: the epoch loop that drives guest shards and hosts.

``run_experiment(spec) -> RunResult`` is the one entry point; the CLI, the
ExperimentService and the tests are thin shells over it. The loop advances
simulated time one sample interval at a time: every shard runs that many
epochs concurrently, syncing with each of its hosts once per epoch while a
host is under memory pressure and once per ``sync_interval`` while all are
calm (the hosts' barrier keeps shards in lockstep and applies their ops epoch
by epoch, in guest-id order, either way). A backend runs several sample
intervals per ``run_chunks`` call and makes that per-interval sync decision
itself, from the hosts' counters at each boundary (on Ray, every shard makes
it from the counters the hosts kept); the coordinator applies the same rule to
the same counters to know how the next call starts. After each interval the coordinator records one sample per
host and per guest group. When no guest has anything to do before a later
sample boundary (idle guests, reporting delay, workload pause), the
coordinator skips ahead in one step. Simulated time never waits on the wall
clock.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Protocol

from services.host.core.counters import any_under_pressure

from .entities import SimPlan, make_plan
from .placement import HostSlot, place
from .results import RunResult, compare, summarize_run, timeseries_frame, write_run
from .spec import ExperimentSpec, baseline_spec

NS_PER_S = 1_000_000_000
CHUNKS_PER_CALL = 10  # sample intervals a backend runs per run_chunks call


class Session(Protocol):
    """One simulation's running entities (in-process objects or Ray actors)."""

    def run_chunks(self, first_epoch: int, chunks: list[tuple[int, int]], epoch_ns: int, calm_sync_epochs: int,
                   pressure: bool, last_hs: dict[int, dict[str, int]], pressure_fraction: float,
                   ) -> tuple[list[int | None], list[dict[str, dict[str, int]]], list[dict[int, dict[str, int]]]]:
        """Run sample intervals ((start ns, epochs) each); each syncs every epoch when
        any host was under pressure at its start (``pressure`` for the first), else
        once per ``calm_sync_epochs``. Returns the shards' next events, and the
        group and host samples after each interval."""
        ...
    def skip_to(self, t_ns: int) -> None: ...
    def group_samples(self) -> dict[str, dict[str, int]]: ...
    def host_samples(self) -> dict[int, dict[str, int]]: ...
    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    nr_shards_default: int

    def start(self, plan: SimPlan) -> Session: ...
    def close(self) -> None: ...


@dataclass
class Progress:
    """Progress reporting on the terminal: simulated time, epochs/s, speed vs real time."""

    enabled: bool
    label: str
    duration_ns: int

    def __post_init__(self) -> None:
        self._bar = None
        if self.enabled:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rp = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.fields[sim]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                transient=False,
            )
            self._rp.start()
            self._bar = self._rp.add_task(self.label, total=self.duration_ns, sim="", rate="")
        self._wall0 = time.perf_counter()

    def update(self, t_ns: int, epochs: int) -> None:
        if self._bar is None:
            return
        wall = max(time.perf_counter() - self._wall0, 1e-9)
        self._rp.update(
            self._bar, completed=t_ns, sim=f"sim {t_ns / NS_PER_S:7.1f}s",
            rate=f"{epochs / wall:7.0f} epochs/s  {t_ns / NS_PER_S / wall:6.1f}x real time",
        )

    def close(self) -> None:
        if self._bar is not None:
            self._rp.stop()


# Host counters that are levels, not running totals (everything else gets ``_total``).
HOST_GAUGES = frozenset({
    "memory_bytes", "reserve_bytes", "limit_bytes", "pool_used_bytes", "swap_capacity_bytes",
    "swap_used_bytes", "zswap_pool_bytes", "lazy_pages", "guests", "guests_stopped", "guest_pages",
    "unbacked_bytes", "backed_bytes", "lazy_bytes", "swapped_bytes", "resident_bytes", "zswap_pages",
})
PAGE_BYTES = 4096


def host_metrics(counters: dict[str, int]) -> dict[str, int]:
    """Host core counters under result names: levels as they are, running totals as
    ``*_total`` (``*_ns`` totals become ``*_ns_total``), plus byte forms of page totals."""
    out: dict[str, int] = {}
    for k, v in counters.items():
        out[k if k in HOST_GAUGES else f"{k}_total"] = int(v)
    if "reported_pages" in counters:
        out["reported_bytes_total"] = int(counters["reported_pages"]) * PAGE_BYTES
    if "refault_pages" in counters:
        out["refaulted_reported_bytes_total"] = int(counters["refault_pages"]) * PAGE_BYTES
    return out


def _host_row(t_ns: int, label: str, slot: HostSlot, counters: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = {"time_s": t_ns / NS_PER_S, "run": label, "kind": "host", "entity": slot.name}
    for k, v in host_metrics(counters).items():
        if k.endswith("_ns_total"):
            row[k[: -len("_ns_total")] + "_seconds_total"] = v / NS_PER_S
        else:
            row[k] = float(v)
    row["capacity_bytes"] = float(slot.group.memory - slot.group.reserve)
    return row


def _group_row(t_ns: int, label: str, group: str, sums: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = {"time_s": t_ns / NS_PER_S, "run": label, "kind": "guest_group", "entity": group}
    for k, v in sums.items():
        if k.endswith("_ns_total"):
            row[k[: -len("_ns_total")] + "_seconds_total"] = v / NS_PER_S
        else:
            row[k] = float(v)
    return row


class Simulation:
    """One spec on one backend, advanced sample interval by sample interval.

    ``advance_to(t)`` runs whole sample intervals up to ``t`` (or the end);
    ``rows`` holds every sample so far. ``simulate`` runs one to the end;
    ExperimentService drives one step by step.
    """

    def __init__(self, spec: ExperimentSpec, backend: Backend, label: str = "run",
                 shards: int | None = None, progress: bool = False):
        self.spec = spec
        self.label = label
        self.plan = make_plan(spec, f"{spec.name}-{spec.run_id()}-{label}", shards or backend.nr_shards_default)
        self.session = backend.start(self.plan)
        self.rows: list[dict[str, Any]] = []
        self.now_ns = 0
        self.epoch = 0
        self.epochs_run = 0
        self.wall_s = 0.0
        self.closed = False
        self._bar = Progress(progress, f"{spec.name} [{label}]", spec.duration)
        self._last_hs: dict[int, dict[str, int]] = {}
        self._pressure = False
        self.fine_intervals = 0  # sample intervals synced every epoch because a host was under pressure
        self._record(0)

    @property
    def finished(self) -> bool:
        return self.now_ns >= self.spec.duration

    def _record(self, t_ns: int, hs: dict[int, dict[str, int]] | None = None,
                groups: dict[str, dict[str, int]] | None = None) -> None:
        """One sample row per host and per guest group (``hs``/``groups``: taken already)."""
        if hs is None:
            hs = self.session.host_samples()
        self._pressure = any_under_pressure(self._last_hs, hs, self.spec.sync_pressure_fraction)
        self._last_hs = hs
        for h in self.plan.hosts:
            self.rows.append(_host_row(t_ns, self.label, h, hs[h.host_id]))
        if groups is None:
            groups = self.session.group_samples()
        for group, sums in sorted(groups.items()):
            self.rows.append(_group_row(t_ns, self.label, group, sums))

    def advance_to(self, target_ns: int) -> None:
        """Run to ``target_ns`` rounded up to a sample boundary (capped at the end)."""
        spec = self.spec
        wall0 = time.perf_counter()
        limit = min(target_ns, spec.duration)
        calm = spec.sync_interval // spec.epoch
        while self.now_ns < limit:
            chunks, t = [], self.now_ns
            while t < limit and len(chunks) < CHUNKS_PER_CALL:
                t_next = min(t + spec.sample_interval, spec.duration)
                chunks.append((t, max(1, -(-(t_next - t) // spec.epoch))))
                t = t_next
            events, groups, hs = self.session.run_chunks(self.epoch, chunks, spec.epoch, calm, self._pressure,
                                                         self._last_hs, spec.sync_pressure_fraction)
            for i, (t0, count) in enumerate(chunks):
                self.fine_intervals += self._pressure or calm == 1
                self.epoch += count
                self.epochs_run += count
                self.now_ns = min(t0 + spec.sample_interval, spec.duration)
                self._record(self.now_ns, hs[i], groups[i])  # decides the next interval's syncs
            self._skip_ahead(events, limit)
            self._bar.update(self.now_ns, self.epochs_run)
        self.wall_s += time.perf_counter() - wall0

    def _skip_ahead(self, events: list[int | None], limit_ns: int) -> None:
        """Jump whole sample intervals in which no guest has anything to do."""
        spec = self.spec
        pending = [e for e in events if e is not None]
        nxt = min(pending) if pending else spec.duration
        target = min(limit_ns, (nxt // spec.sample_interval) * spec.sample_interval)
        if target <= self.now_ns:
            return
        self.session.skip_to(target)
        last = [dict(r) for r in self.rows[-(len(self.plan.hosts) + self._groups()):]]
        while self.now_ns < target:
            self.now_ns = min(self.now_ns + spec.sample_interval, target)
            for r in last:
                self.rows.append({**r, "time_s": self.now_ns / NS_PER_S})

    def _groups(self) -> int:
        return len({g.group.name for g in self.plan.guests})

    def stats(self) -> dict[str, Any]:
        out = {"epochs_run": self.epochs_run, "wall_seconds": self.wall_s, "shards": len(self.plan.shard_inits),
               "sync_interval_ns": self.spec.sync_interval, "per_epoch_sync_intervals": self.fine_intervals,
               "sim_seconds_per_wall_second": self.now_ns / NS_PER_S / max(self.wall_s, 1e-9)}
        timings = getattr(self.session, "timings", None)
        if timings is not None and not self.closed:
            out["shard_wall_seconds"] = timings()
        host_timings = getattr(self.session, "host_timings", None)
        if host_timings is not None and not self.closed:
            out["host_actor_wall_seconds"] = host_timings()
        critical = getattr(self.session, "critical_s", None)
        if critical is not None:
            out["critical_path_seconds"] = critical
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bar.close()
            self.session.close()


def simulate(spec: ExperimentSpec, backend: Backend, label: str, shards: int | None,
             progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run one spec to its end on ``backend``; return (time-series rows, run stats)."""
    sim = Simulation(spec, backend, label, shards, progress)
    try:
        sim.advance_to(spec.duration)
        stats = sim.stats()
    finally:
        sim.close()
    return sim.rows, stats


def make_backend(transport: str, address: str | None):
    if transport == "inprocess":
        from .inprocess import InProcessBackend

        return InProcessBackend()
    from .raybackend import RayBackend

    return RayBackend(address=address)


def run_experiment(spec: ExperimentSpec, out_dir: str = "runs", shards: int | None = None,
                   address: str | None = None, transport: str = "grpc", progress: bool = False,
                   backend=None) -> RunResult:
    """Run a spec and its paired baselines; write and return the results."""
    own_backend = backend is None
    backend = backend or make_backend(transport, address)
    wall0 = time.time()
    try:
        rows, st = simulate(spec, backend, "run", shards, progress)
        base_rows, stats = run_baselines(spec, backend, shards, progress)
    finally:
        if own_backend:
            backend.close()
    return finish_run(spec, rows + base_rows, {"run": st, **stats}, backend.name, out_dir, wall0,
                      list(spec.compare))


def run_baselines(spec: ExperimentSpec, backend: Backend, shards: int | None,
                  progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run each paired baseline of ``spec`` (same seed); return their rows and stats."""
    rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for kind in spec.compare:
        r, stats[kind] = simulate(baseline_spec(spec, kind), backend, kind, shards, progress)
        rows += r
    return rows, stats


def summarize(spec: ExperimentSpec, ts, baselines: list[str]) -> dict[str, Any]:
    hosts, guests = place(spec)
    physical = sum(h.group.memory for h in hosts)
    guest_bytes = sum(g.group.memory for g in guests)
    summary = summarize_run(ts, "run", physical, guest_bytes)
    summary["name"] = spec.name
    summary["run_id"] = spec.run_id()
    summary["seed"] = spec.seed
    summary["duration_seconds"] = spec.duration / NS_PER_S
    if baselines:
        summary["baselines"] = {label: summarize_run(ts, label, physical, guest_bytes) for label in baselines}
        summary["comparison"] = {label: compare(summary, summary["baselines"][label]) for label in baselines}
    return summary


def finish_run(spec: ExperimentSpec, rows: list[dict[str, Any]], stats: dict[str, Any], backend_name: str,
               out_dir: str, wall0: float, baselines: list[str]) -> RunResult:
    """Summarize and write a finished run (and its baselines) to its run directory."""
    ts = timeseries_frame(rows)
    summary = summarize(spec, ts, baselines)
    run_dir = os.path.join(out_dir, spec.name, spec.run_id())
    metadata = _metadata(spec, backend_name, stats, wall0)
    write_run(run_dir, spec.resolved_dict(), summary, ts, metadata)
    return RunResult(summary, ts, run_dir, metadata)


def _metadata(spec: ExperimentSpec, backend: str, stats: dict[str, Any], wall0: float) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("overcommit-sim", "numpy", "numba", "ray", "grpcio", "protobuf", "pandas", "pyarrow"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "name": spec.name, "run_id": spec.run_id(), "backend": backend, "runs": stats,
        "started_unix": wall0, "wall_seconds": time.time() - wall0,
        "python": platform.python_version(), "machine": platform.machine(), "versions": versions,
    }


def print_summary(result: RunResult) -> None:
    """The table a newcomer reads first: what reporting bought and what it cost."""
    from rich.console import Console
    from rich.table import Table

    from .report import summary_lines, summary_rows

    s = result.summary
    header, rows = summary_rows(s)
    table = Table(title=f"{s['name']} (run {s['run_id']}, seed {s['seed']}, {s['duration_seconds']:.0f} s simulated)")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console = Console()
    console.print(table)
    for label, value in summary_lines(s):
        console.print(f"  {label}: [bold]{value}[/bold]")
