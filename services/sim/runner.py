"""Run a spec and its paired baselines to the end, and write the results.

``run_experiment(spec) -> RunResult`` is the one entry point (also exported as
``overcommit.run_experiment``); the CLI, the ExperimentService and the tests are
thin shells over it. The run and each baseline of ``spec.compare`` (the same
spec and seed with one thing changed, e.g. ``reporting_off``) are simulated one
after another on the same backend; their rows make one time series, from which
the summary is computed (:mod:`services.sim.result_rows`).
"""

from __future__ import annotations

import platform
import time
from typing import Any

from .backends import Backend, backend_for
from .result_rows import VARIANT_RUN, summarize, timeseries_frame
from .run_files import RunResult, results_dir, write_run
from .simulation import Simulation
from .spec import ExperimentSpec, baseline_spec
from .trace_groups import trace_digests


def simulate(
    spec: ExperimentSpec,
    backend: Backend,
    variant: str,
    shards: int | None,
    progress: bool = False,
    run_id: str | None = None,
) -> tuple[Simulation, dict[str, Any]]:
    """Run one spec to its end on ``backend``; return the closed simulation and its stats."""
    bar = None
    if progress:
        from .console import ProgressBar

        label = "run" if variant == "run" else variant.replace("_", " ")
        bar = ProgressBar(f"{spec.name}: {label}", spec.duration)
    sim = Simulation(
        spec, backend, variant, shards, on_progress=bar.update if bar else None, run_id=run_id
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
    spec: ExperimentSpec, backend: Backend, shards: int | None, progress: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run each paired baseline of ``spec`` (same seed); return their rows and stats."""
    rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for kind in spec.compare:
        sim, stats[kind] = simulate(
            baseline_spec(spec, kind), backend, kind, shards, progress, spec.run_id()
        )
        rows += sim.rows
    return rows, stats


def run_experiment(
    spec: ExperimentSpec,
    out_dir: str = "runs",
    shards: int | None = None,
    address: str | None = None,
    transport: str = "grpc",
    progress: bool = False,
    backend: Backend | None = None,
) -> RunResult:
    """Run a spec and its paired baselines; write and return the results.

    ``transport``: ``grpc`` (Ray actors talking gRPC; ``address`` names a Ray
    cluster, default an embedded local one) or ``inprocess``. A ``backend`` passed
    in is reused and left open.
    """
    wall0 = time.time()
    with backend_for(backend, transport, address) as used:
        sim, stats = simulate(spec, used, VARIANT_RUN, shards, progress)
        base_rows, base_stats = run_baselines(spec, used, shards, progress)
    return finish_run(sim, base_rows, {VARIANT_RUN: stats, **base_stats}, used.name, out_dir, wall0)


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
