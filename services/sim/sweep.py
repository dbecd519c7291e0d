"""``overcommit sweep``: a grid of overrides x seeds, one results table.

Each grid point and seed is an ordinary run (its own run directory, with its
paired baselines); the sweep returns one table with a row per run and writes it
as ``results.parquet``. Plots of it are the report's (:func:`services.sim.report.plot_sweep`).

A sweep stopped part way (Ctrl-C, SIGTERM: each running run stops at its next sample
boundary and checkpoints) continues with ``resume``: runs that finished are read back
from their directories (when the spec written there is the point's), stopped ones
resume from their checkpoints, and the rest run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from typing import Any

import pandas as pd
import yaml

from . import checkpoint
from .backends import Backend, backend_for
from .run_files import held, lock_path, replace_file, results_dir
from .runner import run_experiment
from .spec import RESULT_NEUTRAL_FIELDS, ExperimentSpec, SpecError, with_overrides


def grid_points(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """Every combination of the grid's values, then of the seeds, in a stable order."""
    if spec.sweep is None:
        raise SpecError([("sweep", "the spec has no sweep section")])
    keys = sorted(k for k in spec.sweep.grid if k != "seed")
    # a grid over the seed is a list of seeds (the spec refuses both at once)
    seeds = spec.sweep.seeds or spec.sweep.grid.get("seed") or [spec.seed]
    points = []
    for values in itertools.product(*(spec.sweep.grid[k] for k in keys)):
        for seed in seeds:
            points.append({**dict(zip(keys, values, strict=True)), "seed": seed})
    return points


def point_specs(
    spec: ExperimentSpec, points: list[dict[str, Any]] | None = None
) -> list[ExperimentSpec]:
    """The spec of every grid point (``grid_points`` unless given); SpecError listing
    every point's errors, each under the point's values (``overcommit validate`` runs
    this too, so a value the sweep would refuse is refused there)."""
    errors: list[tuple[str, str]] = []
    specs = []
    for point in points if points is not None else grid_points(spec):
        try:
            specs.append(with_overrides(spec, {**point, "sweep": None}))
        except SpecError as e:
            where = ", ".join(f"{k}={v!r}" for k, v in point.items())
            errors += [(f"sweep point {where}: {path}", msg) for path, msg in e.errors]
    if errors:
        raise SpecError(errors)
    return specs


def _flatten(prefix: str, d: dict[str, Any], out: dict[str, Any]) -> None:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _flatten(key + ".", v, out)
        else:
            out[key] = v


def run_sweep(  # noqa: PLR0913 - the sweep's options, all optional
    spec: ExperimentSpec,
    out_dir: str = "runs",
    shards: int | None = None,
    address: str | None = None,
    transport: str = "grpc",
    progress: bool = False,
    backend: Backend | None = None,
    *,
    resume: bool = False,
    stop: threading.Event | None = None,
) -> pd.DataFrame:
    """Run every grid point x seed; return one row per run (also written to the
    sweep's ``results.parquet``, whose path is ``df.attrs["results_path"]``;
    ``df.attrs["reused"]``: how many finished runs were read back).

    Columns: one per grid parameter (named by its spec path), ``seed``, ``run_id``,
    ``run_dir``, then the headline metrics, ``cluster.*`` and ``comparison.*``.
    ``resume``: read back finished runs, resume stopped ones (see the module
    docstring); without it, a sweep with a stopped run is refused before anything
    runs. ``stop``: when set, every running run stops at its next sample boundary
    and checkpoints (:class:`services.sim.runner.RunInterrupted` is raised).
    """
    sweep_dir = _sweep_dir(spec, out_dir, grid_points(spec))
    with held(lock_path(sweep_dir), sweep_dir):
        return _sweep(spec, out_dir, shards, address, transport, progress, backend, resume, stop)


def _sweep(  # noqa: PLR0913, PLR0917 - run_sweep's options, passed on
    spec: ExperimentSpec,
    out_dir: str,
    shards: int | None,
    address: str | None,
    transport: str,
    progress: bool,
    backend: Backend | None,
    resume: bool,
    stop: threading.Event | None,
) -> pd.DataFrame:
    """run_sweep with the sweep directory's lock held."""
    points = grid_points(spec)
    specs = point_specs(spec, points)  # every point checked before anything runs
    dirs = [results_dir(out_dir, s.name, s.run_id()) for s in specs]
    stopped = [d for d in dirs if os.path.lexists(checkpoint.manifest_path(d))]
    if stopped and not resume:
        raise checkpoint.CheckpointError(
            f"{len(stopped)} run(s) of this sweep were stopped part way (the first: "
            f"{stopped[0]}); continue the sweep with --resume, or remove their "
            f"{checkpoint.CHECKPOINT_DIR}/ directories to start them again"
        )
    reused = [False] * len(points)  # per point: read back, not run (set by its thread)
    rows = []
    bar = _SweepBar(len(points)) if progress else None
    with backend_for(backend, transport, address) as used:
        per_run, at_once = _parallelism(used, shards, len(points))

        def one(i: int) -> dict[str, Any]:
            point, s = points[i], specs[i]
            if bar is not None:
                bar.start(i, point)
            summary = finished_summary(dirs[i], s) if resume else None
            run_dir = dirs[i]
            if summary is not None:
                reused[i] = True
            else:
                loaded = _checkpoint_of(dirs[i], s) if dirs[i] in stopped else None
                result = run_experiment(
                    s if loaded is None else loaded.spec,
                    out_dir=out_dir,
                    shards=per_run,
                    progress=False,
                    backend=used,
                    resume=loaded,
                    stop=stop,
                )
                summary, run_dir = result.summary, result.run_dir
            if bar is not None:
                bar.done()
            row: dict[str, Any] = {**point, "run_id": s.run_id(), "run_dir": run_dir}
            _flatten("cluster.", summary["cluster"], row)
            _flatten("comparison.", summary.get("comparison", {}), row)
            return row

        if at_once == 1:
            rows = [one(i) for i in range(len(points))]
        else:  # runs are independent and deterministic: their order does not matter
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(at_once) as pool:
                rows = list(pool.map(one, range(len(points))))
    sweep_dir = _sweep_dir(spec, out_dir, points)
    os.makedirs(sweep_dir, exist_ok=True)
    if bar is not None:
        bar.close()
    df = pd.DataFrame(rows)
    grid = sorted(k for k in spec.sweep.grid if k != "seed") if spec.sweep else []
    lead = [*grid, "seed", "run_id", "run_dir"]
    # the same columns in the same order whether a run was made or read back
    df = df[lead + sorted(c for c in df.columns if c not in lead)]
    path = os.path.join(sweep_dir, "results.parquet")
    replace_file(path, lambda tmp: df.to_parquet(tmp, index=False))
    df.attrs["results_path"] = path
    df.attrs["grid"] = grid
    df.attrs["reused"] = sum(reused)
    return df


def _sweep_dir(spec: ExperimentSpec, out_dir: str, points: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256(
        json.dumps(points, sort_keys=True, default=str).encode() + spec.run_id().encode()
    )
    return results_dir(out_dir, spec.name, f"sweep-{digest.hexdigest()[:12]}")


def finished_summary(run_dir: str, spec: ExperimentSpec) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``spec`` in ``run_dir``; None when the
    directory holds no finished run, a stopped one (its checkpoint), a run of another
    spec, or files that cannot be read (the run is then made again)."""
    if os.path.lexists(checkpoint.manifest_path(run_dir)):
        return None
    try:
        with open(os.path.join(run_dir, "spec.resolved.yaml"), encoding="utf-8") as f:
            written = yaml.safe_load(f)
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    same = _canonical(_results_part(written)) == _canonical(_results_part(spec.resolved_dict()))
    if not same or not isinstance(summary, dict) or not isinstance(summary.get("cluster"), dict):
        return None
    return summary


def _checkpoint_of(run_dir: str, spec: ExperimentSpec) -> checkpoint.Loaded:
    """A stopped run's checkpoint, with its own spec: it may differ from the grid point's
    in result-neutral fields (checkpoint_interval), never in its run id."""
    loaded = checkpoint.load(run_dir, None)
    if loaded.spec.run_id() != spec.run_id():
        raise checkpoint.CheckpointError(
            f"{run_dir}: the checkpoint is of run {loaded.spec.run_id()}, not of this grid "
            f"point's run {spec.run_id()}"
        )
    return loaded


def _results_part(spec_dict: Any) -> Any:
    """A resolved spec without the fields that never change a result (checkpoint_interval):
    a run made with another value of them is the same run."""
    if not isinstance(spec_dict, dict):
        return spec_dict
    return {k: v for k, v in spec_dict.items() if k not in RESULT_NEUTRAL_FIELDS}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _parallelism(backend: Backend, shards: int | None, points: int) -> tuple[int | None, int]:
    """(shards per run, runs at once). On Ray, a cluster with room runs several points at
    once: each gets an equal share of the cluster's CPUs as shards (or ``shards``), and as
    many run together as the CPUs allow. In-process runs share one interpreter: one at
    a time."""
    cpus = getattr(backend, "nr_shards_default", 1)
    if not hasattr(backend, "ray") or cpus <= 1 or points <= 1:
        return shards, 1
    per_run = shards or max(1, cpus // points)
    return per_run, max(1, min(points, cpus // per_run))


class _SweepBar:
    """One progress bar for the whole sweep, naming the grid point and seed that runs."""

    def __init__(self, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._rp = Progress(
            TextColumn("[bold]sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
        )
        self._rp.start()
        self._task = self._rp.add_task("", total=total)

    def start(self, i: int, point: dict[str, Any]) -> None:
        what = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())
        self._rp.update(self._task, description=f"started {what}")

    def done(self) -> None:
        self._rp.advance(self._task)

    def close(self) -> None:
        self._rp.stop()


# Student t, 95 % two-sided, by degrees of freedom (more than 30: the normal's 1.96)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip
SWEEP_METRICS = (  # column, heading, scale, unit
    (
        "comparison.reporting_off.memory_saved_mean_bytes",
        "memory saved, mean",
        1 / (1 << 30),
        "GiB",
    ),
    ("comparison.reporting_off.swap_out_avoided_bytes", "swap-out avoided", 1 / (1 << 30), "GiB"),
    ("cluster.backed_bytes.mean", "host backed, mean", 1 / (1 << 30), "GiB"),
    ("comparison.reporting_off.slowdown", "slowdown vs reporting off", 100.0, "%"),
)


def t95(n: int) -> float:
    """The 95 % two-sided t quantile for n samples (n - 1 degrees of freedom)."""
    df = n - 1
    if df <= 0:
        return float("nan")
    keys = sorted(k for k in _T95 if k >= df)
    return _T95[keys[0]] if keys else 1.96


def sweep_table(df: pd.DataFrame, grid: list[str]) -> tuple[list[str], list[list[str]]]:
    """Per grid point: each headline metric as mean ± half-width of its 95 % confidence
    interval over the seeds (a single seed: the value alone)."""
    metrics = [m for m in SWEEP_METRICS if m[0] in df]
    header = [*(g.rsplit(".", 1)[-1] for g in grid), "seeds"] + [
        f"{h} ({u})" for _, h, _, u in metrics
    ]
    rows = []
    # no grid parameter: one point, every seed in it
    parts = df.groupby(grid, sort=True) if grid else [((), df)]
    for key, part in parts:  # a list of keys: key is a tuple
        n = len(part)
        row = [*(str(v) for v in key[: len(grid)]), str(n)]
        for col, _, scale, _ in metrics:
            x = part[col].astype(float) * scale
            if n > 1:
                half = t95(n) * float(x.std(ddof=1)) / n**0.5
                row.append(f"{x.mean():.3f} ± {half:.3f}")
            else:
                row.append(f"{x.mean():.3f}")
        rows.append(row)
    return header, rows
