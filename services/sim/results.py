"""Run results: the record of a run is files, never metrics.

``runs/<name>/<run_id>/`` holds ``spec.resolved.yaml``, ``metadata.json``
(versions, wall time, shards: everything that may differ between identical
runs), ``summary.json`` and ``timeseries.parquet`` (both depend on the spec and
seed only). The summary schema is documented in ``docs/results.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml

SUMMARY_SCHEMA_VERSION = 1


@dataclass
class RunResult:
    """What ``run_experiment`` returns: the summary, the time series and where they live."""

    summary: dict[str, Any]
    timeseries: pd.DataFrame
    run_dir: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _stats(series: pd.Series) -> dict[str, float]:
    if series.empty:
        return {"peak": 0.0, "mean": 0.0, "final": 0.0}
    return {"peak": float(series.max()), "mean": float(series.mean()), "final": float(series.iloc[-1])}


def _final(df: pd.DataFrame, col: str) -> float:
    """The last sample of a column (0 where the entity never reported it)."""
    if col not in df or df.empty:
        return 0.0
    value = float(df[col].iloc[-1])
    return 0.0 if value != value else value


def summarize_run(ts: pd.DataFrame, run: str, physical_bytes: int, guest_bytes: int) -> dict[str, Any]:
    """Summary of one run (``run`` = "run" or a baseline name) from its time series."""
    part = ts[ts["run"] == run]
    hosts: dict[str, Any] = {}
    for entity, df in part[part["kind"] == "host"].groupby("entity", sort=True):
        df = df.sort_values("time_s")
        backed = _stats(df["backed_bytes"])
        hosts[entity] = {
            "backed_bytes": backed,
            "swap_in_bytes": _final(df, "swapin_bytes_total"),
            "swap_out_bytes": _final(df, "swapout_bytes_total"),
            "zeroed_bytes": _final(df, "zeroed_bytes_total"),
            "reported_bytes": _final(df, "reported_bytes_total"),
            "refaulted_reported_bytes": _final(df, "refaulted_reported_bytes_total"),
            "oom_events": _final(df, "oom_events_total"),
        }
    groups: dict[str, Any] = {}
    for entity, df in part[part["kind"] == "guest_group"].groupby("entity", sort=True):
        df = df.sort_values("time_s")
        groups[entity] = {
            "guests": int(_final(df, "guests")),
            "ops_completed": int(_final(df, "ops_total")),
            "alloc_failures": int(_final(df, "alloc_failures_total")),
            "lost_seconds": {
                k: _final(df, f"lost_{k}_seconds_total") for k in ("fault", "zero", "swapin", "decompress", "reclaim")
            },
            "report_calls": int(_final(df, "report_calls_total")),
            "reported_bytes": _final(df, "reported_pages_total") * 4096,
        }
    host_rows = part[part["kind"] == "host"]
    cluster_backed = host_rows.groupby("time_s")["backed_bytes"].sum() if not host_rows.empty else pd.Series(dtype=float)
    total_swap_out = sum(h["swap_out_bytes"] for h in hosts.values())
    total_lost = sum(sum(g["lost_seconds"].values()) for g in groups.values())
    return {
        "hosts": hosts,
        "guest_groups": groups,
        "cluster": {
            "physical_bytes": physical_bytes,
            "guest_bytes": guest_bytes,
            "overcommit_ratio": guest_bytes / physical_bytes if physical_bytes else 0.0,
            "backed_bytes": _stats(cluster_backed),
            "swap_out_bytes": total_swap_out,
            "swap_in_bytes": sum(h["swap_in_bytes"] for h in hosts.values()),
            "ops_completed": sum(g["ops_completed"] for g in groups.values()),
            "lost_seconds": total_lost,
        },
    }


def compare(run: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """What reporting bought relative to a paired baseline."""
    rc, bc = run["cluster"], base["cluster"]
    ops_r, ops_b = rc["ops_completed"], bc["ops_completed"]
    return {
        "memory_saved_mean_bytes": bc["backed_bytes"]["mean"] - rc["backed_bytes"]["mean"],
        "memory_saved_peak_bytes": bc["backed_bytes"]["peak"] - rc["backed_bytes"]["peak"],
        "memory_saved_final_bytes": bc["backed_bytes"]["final"] - rc["backed_bytes"]["final"],
        "swap_out_avoided_bytes": bc["swap_out_bytes"] - rc["swap_out_bytes"],
        "swap_in_avoided_bytes": bc["swap_in_bytes"] - rc["swap_in_bytes"],
        "extra_lost_seconds": rc["lost_seconds"] - bc["lost_seconds"],
        # slowdown: the fraction of the baseline's work that the run did not complete
        "slowdown": (ops_b - ops_r) / ops_b if ops_b else 0.0,
    }


def write_run(run_dir: str, spec_dict: dict[str, Any], summary: dict[str, Any], ts: pd.DataFrame,
              metadata: dict[str, Any]) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "spec.resolved.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(spec_dict, f, sort_keys=True)
    with open(os.path.join(run_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(run_dir, "metadata.json"), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
        f.write("\n")
    ts.to_parquet(os.path.join(run_dir, "timeseries.parquet"), index=False)


def load_run(run_dir: str) -> RunResult:
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    meta_path = os.path.join(run_dir, "metadata.json")
    metadata = {}
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            metadata = json.load(f)
    ts = pd.read_parquet(os.path.join(run_dir, "timeseries.parquet"))
    return RunResult(summary, ts, run_dir, metadata)


def timeseries_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> a DataFrame with a stable column order and row order."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    lead = ["time_s", "run", "kind", "entity"]
    rest = sorted(c for c in df.columns if c not in lead)
    df = df[lead + rest].sort_values(["run", "time_s", "kind", "entity"], kind="stable")
    return df.reset_index(drop=True)
