"""``overcommit sweep``: a grid of overrides x seeds, one results table.

Each grid point and seed is an ordinary run (its own run directory, with its
paired baselines); the sweep writes one ``results.parquet`` with a row per run
and comparison plots of the headline figures against each grid parameter.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Any

import pandas as pd

from .coordinator import make_backend, run_experiment
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


def run_sweep(spec: ExperimentSpec, out_dir: str = "runs", shards: int | None = None,
              address: str | None = None, transport: str = "grpc", progress: bool = False) -> str:
    points = grid_points(spec)
    specs = [with_overrides(spec, {**p, "sweep": None}) for p in points]  # validate all before running
    backend = make_backend(transport, address)
    rows = []
    try:
        for point, s in zip(points, specs, strict=True):
            result = run_experiment(s, out_dir=out_dir, shards=shards, progress=progress, backend=backend)
            row: dict[str, Any] = {**{f"param.{k}": v for k, v in point.items()}, "run_id": s.run_id(),
                                   "run_dir": result.run_dir}
            _flatten("cluster.", result.summary["cluster"], row)
            _flatten("comparison.", result.summary.get("comparison", {}), row)
            rows.append(row)
    finally:
        backend.close()
    digest = hashlib.sha256(json.dumps(points, sort_keys=True, default=str).encode() + spec.run_id().encode())
    sweep_dir = os.path.join(out_dir, spec.name, f"sweep-{digest.hexdigest()[:12]}")
    os.makedirs(sweep_dir, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_parquet(os.path.join(sweep_dir, "results.parquet"), index=False)
    plot_sweep(df, sweep_dir)
    return os.path.join(sweep_dir, "results.parquet")


def plot_sweep(df: pd.DataFrame, sweep_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [c for c in df.columns if c.startswith("param.") and c != "param.seed"]
    metrics = [c for c in ("comparison.reporting_off.memory_saved_mean_bytes", "cluster.backed_bytes.mean",
                           "cluster.swap_out_bytes", "comparison.reporting_off.slowdown") if c in df]
    for p in params:
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
        for ax, m in zip(axes[0], metrics, strict=True):
            g = df.groupby(p)[m].agg(["mean", "min", "max"]).sort_index()
            x = [str(v) for v in g.index]
            ax.errorbar(x, g["mean"], yerr=[g["mean"] - g["min"], g["max"] - g["mean"]], marker="o")
            ax.set_title(m.split(".", 1)[1], fontsize="small")
            ax.set_xlabel(p[len("param."):])
        fig.tight_layout()
        fig.savefig(os.path.join(sweep_dir, f"sweep_{p[len('param.'):].replace('.', '_')}.png"), dpi=90)
        plt.close(fig)
