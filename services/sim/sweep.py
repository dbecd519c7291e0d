"""``overcommit sweep``: a grid of overrides x seeds, one results table.

Each grid point and seed is an ordinary run (its own run directory, with its
paired baselines); the sweep returns one table with a row per run and writes it
as ``results.parquet``. Plots of it are the report's (:func:`services.sim.report.plot_sweep`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Any

import pandas as pd

from .backends import Backend, backend_for
from .run_files import results_dir
from .runner import run_experiment
from .spec import ExperimentSpec, SpecError, with_overrides


def grid_points(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """Every combination of the grid's values, then of the seeds, in a stable order."""
    if spec.sweep is None:
        raise SpecError([("sweep", "the spec has no sweep section")])
    keys = sorted(spec.sweep.grid)
    seeds = spec.sweep.seeds or [spec.seed]
    points = []
    for values in itertools.product(*(spec.sweep.grid[k] for k in keys)):
        for seed in seeds:
            points.append({**dict(zip(keys, values, strict=True)), "seed": seed})
    return points


def _flatten(prefix: str, d: dict[str, Any], out: dict[str, Any]) -> None:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _flatten(key + ".", v, out)
        else:
            out[key] = v


def run_sweep(
    spec: ExperimentSpec,
    out_dir: str = "runs",
    shards: int | None = None,
    address: str | None = None,
    transport: str = "grpc",
    progress: bool = False,
    backend: Backend | None = None,
) -> pd.DataFrame:
    """Run every grid point x seed; return one row per run (also written to the
    sweep's ``results.parquet``, whose path is ``df.attrs["results_path"]``).

    Columns: one per grid parameter (named by its spec path), ``seed``, ``run_id``,
    ``run_dir``, then the headline metrics, ``cluster.*`` and ``comparison.*``.
    """
    points = grid_points(spec)
    specs = [
        with_overrides(spec, {**p, "sweep": None}) for p in points
    ]  # validate all before running
    rows = []
    with backend_for(backend, transport, address) as used:
        for point, s in zip(points, specs, strict=True):
            result = run_experiment(
                s, out_dir=out_dir, shards=shards, progress=progress, backend=used
            )
            row: dict[str, Any] = {**point, "run_id": s.run_id(), "run_dir": result.run_dir}
            _flatten("cluster.", result.summary["cluster"], row)
            _flatten("comparison.", result.summary.get("comparison", {}), row)
            rows.append(row)
    digest = hashlib.sha256(
        json.dumps(points, sort_keys=True, default=str).encode() + spec.run_id().encode()
    )
    sweep_dir = results_dir(out_dir, spec.name, f"sweep-{digest.hexdigest()[:12]}")
    os.makedirs(sweep_dir, exist_ok=True)
    df = pd.DataFrame(rows)
    path = os.path.join(sweep_dir, "results.parquet")
    df.to_parquet(path, index=False)
    df.attrs["results_path"] = path
    df.attrs["grid"] = sorted(spec.sweep.grid) if spec.sweep else []
    return df
