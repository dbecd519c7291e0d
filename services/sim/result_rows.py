"""Result rows: every public name of a run's results, defined once.

Samples (host counters, guest-group sums) become time-series rows here; rows
become the Parquet time series, the summary and its comparisons here; metrics
(:mod:`services.metrics`) export the same names. Nothing else renames a counter.

* Row keys: ``time_s`` (simulated seconds), ``variant`` (``run`` itself or a
  paired baseline such as ``reporting_off``), ``run_id`` (the run's identity: a
  hash of its resolved spec, the same on its baselines' rows), ``kind``
  (``host`` or ``guest_group``) and ``entity`` (host name or group name).
* Memory saved against a baseline is defined on demand: the baseline's backed
  plus swapped bytes (what its guests wanted resident, even where the host had
  to swap it out) minus the run's backed bytes, so a baseline capped at host
  capacity does not understate the saving.
* Columns: host counters that are levels keep their names (``backed_bytes``);
  running totals get ``_total``; simulated-time totals are seconds
  (``lost_fault_seconds_total``), never nanoseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import pandas as pd

from services.guest.core.willitscale import GUEST_LOST_KINDS
from services.units import LOST_KINDS, NS_PER_S, PAGE_SIZE

from .plan import SimPlan
from .spec import ExperimentSpec

ROW_KEYS = ("time_s", "variant", "run_id", "kind", "entity")
VARIANT_RUN = "run"  # the run itself; baselines are named by their kind (spec ``compare``)

# Host counters that are levels, not running totals (everything else gets ``_total``).
HOST_GAUGES = frozenset(
    {
        "memory_bytes",
        "reserve_bytes",
        "limit_bytes",
        "pool_used_bytes",
        "swap_capacity_bytes",
        "swap_used_bytes",
        "zswap_pool_bytes",
        "lazy_pages",
        "guests",
        "guests_stopped",
        "guest_pages",
        "unbacked_bytes",
        "backed_bytes",
        "lazy_bytes",
        "swapped_bytes",
        "resident_bytes",
        "zswap_pages",
    }
)


def _public(name: str, value: int) -> tuple[str, float]:
    """A running total in ns becomes seconds (``*_ns_total`` -> ``*_seconds_total``)."""
    if name.endswith("_ns_total"):
        return name[: -len("_ns_total")] + "_seconds_total", value / NS_PER_S
    return name, float(value)


def host_columns(counters: Mapping[str, int]) -> dict[str, float]:
    """Host core counters under their public names (levels as they are, running
    totals as ``*_total``, ns totals as seconds, plus byte forms of page totals)."""
    raw: dict[str, int] = {}
    for k, v in counters.items():
        raw[k if k in HOST_GAUGES else f"{k}_total"] = int(v)
    if "reported_pages" in counters:
        raw["reported_bytes_total"] = int(counters["reported_pages"]) * PAGE_SIZE
    if "refault_pages" in counters:
        raw["refaulted_reported_bytes_total"] = int(counters["refault_pages"]) * PAGE_SIZE
    return dict(_public(k, v) for k, v in raw.items())


def group_columns(sums: Mapping[str, int]) -> dict[str, float]:
    """Guest-group sums (already named as levels or ``*_total``) under their public names."""
    return dict(_public(k, int(v)) for k, v in sums.items())


def host_row(
    t_ns: int,
    variant: str,
    run_id: str,
    entity: str,
    counters: Mapping[str, int],
    capacity_bytes: int,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "time_s": t_ns / NS_PER_S,
        "variant": variant,
        "run_id": run_id,
        "kind": "host",
        "entity": entity,
    }
    row.update(host_columns(counters))
    row["capacity_bytes"] = float(capacity_bytes)
    return row


def group_row(
    t_ns: int, variant: str, run_id: str, group: str, sums: Mapping[str, int]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "time_s": t_ns / NS_PER_S,
        "variant": variant,
        "run_id": run_id,
        "kind": "guest_group",
        "entity": group,
    }
    row.update(group_columns(sums))
    return row


def timeseries_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> a DataFrame with a stable column order and row order."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    lead = list(ROW_KEYS)
    rest = sorted(c for c in df.columns if c not in lead)
    df = df[lead + rest].sort_values(["variant", "time_s", "kind", "entity"], kind="stable")
    return df.reset_index(drop=True)


def _stats(series: pd.Series) -> dict[str, float]:
    if series.empty:
        return {"peak": 0.0, "mean": 0.0, "final": 0.0}
    return {
        "peak": float(series.max()),
        "mean": float(series.mean()),
        "final": float(series.iloc[-1]),
    }


def _final(df: pd.DataFrame, col: str) -> float:
    """The last sample of a column (0 where the entity never reported it)."""
    if col not in df or df.empty:
        return 0.0
    value = float(df[col].iloc[-1])
    return 0.0 if math.isnan(value) else value


def _reported(df: pd.DataFrame, col: str) -> bool:
    """The entity reported this column (other groups' columns are NaN in its rows)."""
    return col in df and bool(df[col].notna().any())


WIS_WARMUP_S = 5.0  # will-it-scale discards about its first 5 one-second samples


def will_it_scale_figures(df: pd.DataFrame) -> dict[str, float]:
    """will-it-scale's figures for a group: its counter (pages faulted, summed over tasks)
    per second, averaged after a warm-up of WIS_WARMUP_S (or half the run if shorter),
    in total and per task (the cover letters' "Process Iter" is the total for N tasks)."""
    t = df["time_s"].to_numpy(dtype=float)
    ops = df["benchmark_ops_total"].fillna(0.0).to_numpy(dtype=float)
    # tasks running at once, at most (a script's will-it-scale step may have ended)
    tasks = float(df["benchmark_tasks"].max()) if "benchmark_tasks" in df else 0.0
    warm = min(WIS_WARMUP_S, t[-1] / 2) if len(t) else 0.0
    i = int(np.searchsorted(t, warm))
    span = t[-1] - t[i] if len(t) else 0.0
    rate = (ops[-1] - ops[i]) / span if span > 0 else 0.0
    return {
        "ops": float(ops[-1]) if len(ops) else 0.0,
        "tasks": tasks,
        "warmup_seconds": float(t[i]) if len(t) else 0.0,
        "ops_per_second": rate,
        "ops_per_second_per_task": rate / tasks if tasks else 0.0,
    }


def summarize_run(
    ts: pd.DataFrame, variant: str, physical_bytes: int, guest_bytes: int
) -> dict[str, Any]:
    """Summary of one variant (``run`` or a baseline name) from the time series."""
    part = ts[ts["variant"] == variant]
    hosts: dict[str, Any] = {}
    for entity, unsorted in part[part["kind"] == "host"].groupby("entity", sort=True):
        df = unsorted.sort_values("time_s")
        backed = _stats(df["backed_bytes"])
        hosts[entity] = {
            "backed_bytes": backed,
            "swap_in_bytes": _final(df, "swapin_bytes_total"),
            "swap_out_bytes": _final(df, "swapout_bytes_total"),
            "zeroed_bytes": _final(df, "zeroed_bytes_total"),
            "reported_bytes": _final(df, "reported_bytes_total"),
            "refaulted_reported_bytes": _final(df, "refaulted_reported_bytes_total"),
            "refault_huge_faults": _final(df, "refault_huge_faults_total"),
            "oom_events": _final(df, "oom_events_total"),
        }
    groups: dict[str, Any] = {}
    for entity, unsorted in part[part["kind"] == "guest_group"].groupby("entity", sort=True):
        df = unsorted.sort_values("time_s")
        groups[entity] = {
            "guests": int(_final(df, "guests")),
            "ops_completed": int(_final(df, "ops_total")),
            "alloc_failures": int(_final(df, "alloc_failures_total")),
            "lost_seconds": {k: _final(df, f"lost_{k}_seconds_total") for k in LOST_KINDS},
            "report_calls": int(_final(df, "report_calls_total")),
            "reported_bytes": _final(df, "reported_pages_total") * PAGE_SIZE,
        }
        for k in GUEST_LOST_KINDS:  # the guest's own costs (workloads that price them)
            if _reported(df, f"lost_{k}_seconds_total"):
                groups[entity]["lost_seconds"][k] = _final(df, f"lost_{k}_seconds_total")
        groups[entity]["ops_by_kind"] = {
            c[len("ops_") : -len("_total")]: int(_final(df, c))
            for c in sorted(df.columns)
            if c.startswith("ops_")
            and c.endswith("_total")
            and c != "ops_total"
            and _reported(df, c)
        }
        if _reported(df, "benchmark_ops_total"):
            groups[entity]["will_it_scale"] = will_it_scale_figures(df)
    host_rows = part[part["kind"] == "host"]
    cluster_backed = (
        host_rows.groupby("time_s")["backed_bytes"].sum()
        if not host_rows.empty
        else pd.Series(dtype=float)
    )
    swapped = host_rows["swapped_bytes"].fillna(0.0) if "swapped_bytes" in host_rows else 0.0
    demand = host_rows["backed_bytes"].fillna(0.0) + swapped if not host_rows.empty else None
    cluster_demand = (
        demand.groupby(host_rows["time_s"]).sum() if demand is not None else pd.Series(dtype=float)
    )
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
            "demand_bytes": _stats(
                cluster_demand
            ),  # backed + swapped: what the guests wanted resident
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
        # on demand: the baseline's backed + swapped bytes minus the run's backed bytes
        "memory_saved_mean_bytes": bc["demand_bytes"]["mean"] - rc["backed_bytes"]["mean"],
        "memory_saved_peak_bytes": bc["demand_bytes"]["peak"] - rc["backed_bytes"]["peak"],
        "memory_saved_final_bytes": bc["demand_bytes"]["final"] - rc["backed_bytes"]["final"],
        "swap_out_avoided_bytes": bc["swap_out_bytes"] - rc["swap_out_bytes"],
        "swap_in_avoided_bytes": bc["swap_in_bytes"] - rc["swap_in_bytes"],
        "extra_lost_seconds": rc["lost_seconds"] - bc["lost_seconds"],
        # slowdown: the fraction of the baseline's work that the run did not complete
        "slowdown": (ops_b - ops_r) / ops_b if ops_b else 0.0,
    }


def summarize(
    spec: ExperimentSpec, plan: SimPlan, ts: pd.DataFrame, baselines: list[str]
) -> dict[str, Any]:
    """The run's summary (and each paired baseline's, and what reporting bought against
    it), from the time series and the plan (what was placed on which host)."""
    physical, guest_bytes = plan.physical_bytes, plan.guest_bytes
    summary = summarize_run(ts, VARIANT_RUN, physical, guest_bytes)
    summary["name"] = spec.name
    summary["run_id"] = spec.run_id()
    summary["seed"] = spec.seed
    summary["duration_seconds"] = spec.duration / NS_PER_S
    if baselines:
        summary["baselines"] = {
            label: summarize_run(ts, label, physical, guest_bytes) for label in baselines
        }
        summary["comparison"] = {
            label: compare(summary, summary["baselines"][label]) for label in baselines
        }
    return summary


# -- metric names: the same columns under the ``overcommit_`` prefix ---------------
# A column becomes the metric ``overcommit_<kind>_<column>`` (kind ``host``,
# ``guest_group``, ``guest`` or ``cluster``): ``_total`` columns are counters, the
# rest gauges. Page counts become bytes (``*_pages`` -> ``*_bytes``) unless the row
# already has that byte column, and families of columns become one metric with a
# label: free memory by ``order``, lost time by ``cost``, faults by ``kind``,
# page operations by ``workload`` and reporting workers by ``state``.
METRIC_PREFIX = "overcommit"
_LABELLED: tuple[tuple[str | None, re.Pattern[str], str, str], ...] = (
    ("guest_group", re.compile(r"free_bytes_order_(\d+)"), "free_bytes_by_order", "order"),
    (None, re.compile(r"lost_(\w+)_seconds_total"), "lost_seconds_total", "cost"),
    ("guest_group", re.compile(r"ops_(\w+)_total"), "workload_ops_total", "workload"),
    ("host", re.compile(r"faults_(4k|huge|swapin)_total"), "faults_total", "kind"),
    ("guest_group", re.compile(r"reporting_(\w+)_guests"), "reporting_guests", "state"),
    ("cluster", re.compile(r"memory_saved_bytes_(\w+)"), "memory_saved_bytes", "baseline"),
)
# page columns whose byte form the row carries under another name
_PAGES_AS = {"refault_pages_total": "refaulted_reported_bytes_total"}
# a gauge whose name a counter's family takes (reported_bytes_total's family is
# reported_bytes): the gauge gets a longer name
_RENAMED = {("guest_group", "reported_bytes"): "reported_free_bytes"}
NOT_METRICS = frozenset(ROW_KEYS)


def metric_name(kind: str, column: str) -> tuple[str, str, str, float] | None:
    """(metric family, label name or "", label value, scale) of a row column; None for
    a column that is not exported (a row key, or a page count kept in bytes already)."""
    if column in NOT_METRICS:
        return None
    for only, pattern, family, label in _LABELLED:
        m = pattern.fullmatch(column)
        if m and (only is None or only == kind):
            return f"{METRIC_PREFIX}_{kind}_{family}", label, m.group(1), 1.0
    if column in _PAGES_AS:
        return None
    column = _RENAMED.get((kind, column), column)
    for suffix, as_bytes in (("_pages", "_bytes"), ("_pages_total", "_bytes_total")):
        if column.endswith(suffix):
            column = column[: -len(suffix)] + as_bytes
            return f"{METRIC_PREFIX}_{kind}_{column}", "", "", float(PAGE_SIZE)
    return f"{METRIC_PREFIX}_{kind}_{column}", "", "", 1.0


def exported_columns(
    kind: str, columns: Collection[str]
) -> list[tuple[str, str, tuple[str, str] | None, float]]:
    """(column, metric family, (label, value) or None, scale) of each of a row's columns
    that is exported. A page column whose byte form the row also has is left out (it
    would be exported twice)."""
    out = []
    for column in columns:
        named = metric_name(kind, column)
        if named is None:
            continue
        family, label, label_value, scale = named
        if scale != 1.0 and family.removeprefix(f"{METRIC_PREFIX}_{kind}_") in columns:
            continue
        out.append((column, family, (label, label_value) if label else None, scale))
    return out


def metric_samples(
    kind: str, columns: Mapping[str, float]
) -> list[tuple[str, tuple[str, str] | None, float]]:
    """The metrics of one row: (family, (label, value) or None, value) each."""
    return [
        (family, extra, float(columns[column]) * scale)
        for column, family, extra, scale in exported_columns(kind, columns)
        if columns[column] == columns[column]
    ]


def cluster_columns(
    hosts: Mapping[int, Mapping[str, int]], physical_bytes: int, guest_bytes: int
) -> dict[str, float]:
    """The cluster's levels at one sample: host memory, the guests' configured memory and
    their ratio, backed and demand (backed + swapped) bytes summed over hosts."""
    backed = sum(int(c.get("backed_bytes", 0)) for c in hosts.values())
    swapped = sum(int(c.get("swapped_bytes", 0)) for c in hosts.values())
    return {
        "physical_bytes": float(physical_bytes),
        "committed_bytes": float(guest_bytes),
        "overcommit_ratio": guest_bytes / physical_bytes if physical_bytes else 0.0,
        "backed_bytes": float(backed),
        "demand_bytes": float(backed + swapped),
    }


# the per-guest metrics a host actor exports for its top-k guests (columns of host_columns)
GUEST_METRIC_COLUMNS = (
    "backed_bytes",
    "lazy_bytes",
    "swapped_bytes",
    "reported_bytes_total",
    "refaulted_reported_bytes_total",
)


def raw_metric_samples(
    kind: str, raw: Mapping[str, float]
) -> list[tuple[str, tuple[str, str] | None, float]]:
    """:func:`metric_samples` of raw counters as a process keeps them: a host's core
    counters (``host``, or one guest's for ``guest``), a shard's group sums
    (``guest_group``), or columns already public (``cluster``, ``sim``)."""
    if kind == "host":
        cols = host_columns({k: int(v) for k, v in raw.items()})
        cols["capacity_bytes"] = float(raw["memory_bytes"] - raw["reserve_bytes"])
    elif kind == "guest":
        every = host_columns({k: int(v) for k, v in raw.items()})
        cols = {k: every[k] for k in GUEST_METRIC_COLUMNS if k in every}
    elif kind == "guest_group":
        cols = group_columns({k: int(v) for k, v in raw.items()})
    else:
        cols = dict(raw)
    return metric_samples(kind, cols)
