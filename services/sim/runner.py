"""Run a spec and its paired baselines to the end, and write the results.

``run_experiment(spec) -> RunResult`` is the one entry point (also exported as
``overcommit.run_experiment``); the CLI, the ExperimentService and the tests are
thin shells over it. The run and each baseline of ``spec.compare`` (the same
spec and seed with one thing changed, e.g. ``reporting_off``) are simulated one
after another on the same backend; their rows make one time series, from which
the summary is computed (:mod:`services.sim.result_rows`).
"""

from __future__ import annotations

import contextlib
import platform
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.units import NS_PER_S

from .backends import Backend, backend_for
from .live_metrics import MAX_SPEED, LiveMetrics, MetricsHub, saved_bytes
from .result_rows import VARIANT_RUN, summarize, timeseries_frame
from .run_files import RunResult, results_dir, write_run
from .simulation import CHUNKS_PER_CALL, Simulation
from .spec import ExperimentSpec, baseline_spec
from .trace_groups import trace_digests


def simulate(
    spec: ExperimentSpec,
    backend: Backend,
    variant: str,
    shards: int | None,
    progress: bool = False,
    run_id: str | None = None,
    metrics: MetricsHub | None = None,
) -> tuple[Simulation, dict[str, Any]]:
    """Run one spec to its end on ``backend``; return the closed simulation and its stats."""
    bar = None
    if progress:
        from .console import ProgressBar

        label = "run" if variant == "run" else variant.replace("_", " ")
        bar = ProgressBar(f"{spec.name}: {label}", spec.duration)
    sim = Simulation(
        spec,
        backend,
        variant,
        shards,
        on_progress=bar.update if bar else None,
        run_id=run_id,
        metrics=metrics,
    )
    try:
        sim.advance_to(spec.duration)
        stats = sim.stats()
    finally:
        sim.close()
        if bar is not None:
            bar.close()
    return sim, stats


def run_baselines(
    spec: ExperimentSpec,
    backend: Backend,
    shards: int | None,
    progress: bool = False,
    metrics: MetricsHub | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run each paired baseline of ``spec`` (same seed); return their rows and stats."""
    rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for kind in spec.compare:
        sim, stats[kind] = simulate(
            baseline_spec(spec, kind),
            backend,
            kind,
            shards,
            progress,
            spec.run_id(),
            metrics,
        )
        rows += sim.rows
    return rows, stats


@dataclass(frozen=True)
class LiveRun:
    """How a run is watched while it runs. ``metrics``: serve live metrics (the run and
    its baselines then advance together, so a dashboard shows both and the memory
    saved); ``on_metrics(hub)`` is called once they are up (the CLI prints where).
    ``speed``: pace the run to this many simulated seconds per wall second."""

    metrics: LiveMetrics | None = None
    speed: float | None = None
    on_metrics: Callable[[MetricsHub], None] | None = None

    def __post_init__(self) -> None:
        if self.speed is not None and not 0 < self.speed <= MAX_SPEED:
            raise ValueError(
                f"speed={self.speed}: must be > 0 and <= {MAX_SPEED:g} simulated s per wall s"
            )


def run_experiment(  # noqa: PLR0913, PLR0917 - the one entry point's options, all optional
    spec: ExperimentSpec,
    out_dir: str = "runs",
    shards: int | None = None,
    address: str | None = None,
    transport: str = "grpc",
    progress: bool = False,
    backend: Backend | None = None,
    live: LiveRun | None = None,
) -> RunResult:
    """Run a spec and its paired baselines; write and return the results.

    ``transport``: ``grpc`` (Ray actors talking gRPC; ``address`` names a Ray
    cluster, default an embedded local one) or ``inprocess``. A ``backend`` passed
    in is reused and left open. ``live``: metrics and pacing (:class:`LiveRun`).
    """
    wall0 = time.time()
    with backend_for(backend, transport, address) as used:
        if live is None or (live.metrics is None and live.speed is None):
            sim, stats = simulate(spec, used, VARIANT_RUN, shards, progress)
            base_rows, base_stats = run_baselines(spec, used, shards, progress)
            all_stats = {VARIANT_RUN: stats, **base_stats}
        else:
            sim, base_rows, all_stats = _Together(spec, used, shards, live).run(progress)
    return finish_run(sim, base_rows, all_stats, used.name, out_dir, wall0)


class _Together:
    """The run and its baselines advanced together, a sample interval at a time while
    paced (else CHUNKS_PER_CALL), with live metrics if asked. Each simulation is
    independent: the results are those of running them one after another."""

    def __init__(self, spec: ExperimentSpec, backend: Backend, shards: int | None, live: LiveRun):
        self.spec, self.backend, self.shards, self.live = spec, backend, shards, live
        self.sims: dict[str, Simulation] = {}
        self.hub: MetricsHub | None = None

    def run(self, progress: bool) -> tuple[Simulation, list[dict[str, Any]], dict[str, Any]]:
        """Returns the closed run, the baselines' rows and every simulation's stats."""
        spec, live = self.spec, self.live
        try:
            if live.metrics is not None:
                self.hub = MetricsHub(live.metrics)
                if live.on_metrics is not None:
                    live.on_metrics(self.hub)
            self._start()
            self._advance(progress)
            stats = {variant: sim.stats() for variant, sim in self.sims.items()}
            self._linger()
        finally:
            with contextlib.ExitStack() as stack:  # every close runs, even if one raises
                if self.hub is not None:
                    stack.callback(self.hub.close)
                for sim in self.sims.values():
                    stack.callback(sim.close)
        base_rows = [row for kind in spec.compare for row in self.sims[kind].rows]
        return self.sims[VARIANT_RUN], base_rows, stats

    def _start(self) -> None:
        spec, hub = self.spec, self.hub
        self.sims[VARIANT_RUN] = Simulation(
            spec, self.backend, VARIANT_RUN, self.shards, metrics=hub
        )
        for kind in spec.compare:
            self.sims[kind] = Simulation(
                baseline_spec(spec, kind),
                self.backend,
                kind,
                self.shards,
                run_id=spec.run_id(),
                metrics=hub,
            )

    def _advance(self, progress: bool) -> None:
        spec, speed = self.spec, self.live.speed
        run = self.sims[VARIANT_RUN]
        bar = None
        if progress:
            from .console import ProgressBar

            label = "run and baselines" if spec.compare else "run"
            bar = ProgressBar(f"{spec.name}: {label}", spec.duration)
        try:
            pace0 = time.monotonic()
            while not run.finished:
                target = run.now_ns + spec.sample_interval * (1 if speed else CHUNKS_PER_CALL)
                for sim in self.sims.values():
                    sim.advance_to(target)
                self._share_savings()
                if bar is not None:
                    bar.update(run.now_ns, run.epochs_run)
                if speed:  # the wall clock only paces the loop; simulated time never reads it
                    ahead = pace0 + run.now_ns / NS_PER_S / speed - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        finally:
            if bar is not None:
                bar.close()

    def _share_savings(self) -> None:
        """The run's memory saved against each baseline at their common last sample."""
        run = self.sims[VARIANT_RUN]
        if run.metrics is None:
            return
        mine = run.metrics.cluster()
        for kind, sim in self.sims.items():
            if kind != VARIANT_RUN and sim.metrics is not None and sim.now_ns == run.now_ns:
                run.metrics.saved[kind] = saved_bytes(mine, sim.metrics.cluster())
        run.metrics.update()

    def _linger(self) -> None:
        metrics = self.live.metrics
        if self.hub is None or metrics is None or metrics.linger_s <= 0:
            return
        print(
            f"finished; metrics stay up for {metrics.linger_s:g} s "
            "(the last scrape sees the final values; Ctrl-C or SIGTERM ends the wait)",
            flush=True,
        )
        # SIGINT and SIGTERM end the wait, then the run writes its files: handlers of our
        # own, since a shell starts background jobs with SIGINT ignored
        done = threading.Event()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: done.set())
        try:
            done.wait(metrics.linger_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def finish_run(
    sim: Simulation,
    baseline_rows: list[dict[str, Any]],
    stats: dict[str, Any],
    backend_name: str,
    out_dir: str,
    wall0: float,
) -> RunResult:
    """Summarize and write a finished run (and its baselines) to its run directory."""
    spec = sim.spec
    ts = timeseries_frame(sim.rows + baseline_rows)
    summary = summarize(spec, sim.plan, ts, list(spec.compare))
    run_dir = results_dir(out_dir, spec.name, spec.run_id())
    metadata = _metadata(spec, backend_name, stats, wall0)
    from .spec_checks import spec_warnings

    warnings = spec_warnings(spec, sim.plan)
    if warnings:
        metadata["warnings"] = [f"{field}: {message}" for field, message in warnings]
    traces = trace_digests(sim.plan.guests)
    if traces:  # the run id hashes the spec, not the trace files it names
        metadata["traces"] = traces
    write_run(run_dir, spec.resolved_dict(), summary, ts, metadata)
    return RunResult(summary, ts, run_dir, metadata)


def _metadata(
    spec: ExperimentSpec, backend: str, stats: dict[str, Any], wall0: float
) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in (
        "overcommit-sim",
        "numpy",
        "numba",
        "ray",
        "grpcio",
        "protobuf",
        "pandas",
        "pyarrow",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "name": spec.name,
        "run_id": spec.run_id(),
        "backend": backend,
        "runs": stats,
        "started_unix": wall0,
        "wall_seconds": time.time() - wall0,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "versions": versions,
    }
