"""``overcommit report RUN_DIR``: PNG plots and a self-contained report.html.

Reads only the run's files (``summary.json``, ``timeseries.parquet``); never
Prometheus. Each plot puts the run beside its paired baseline when there is one.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

import pandas as pd

from services.units import LOST_KINDS, PAGE_SIZE

from .quantities import format_bytes
from .result_rows import VARIANT_RUN
from .run_files import load_run

GIB = float(1 << 30)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (chosen when plotting, not on import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _runs(ts: pd.DataFrame) -> list[str]:
    return [VARIANT_RUN, *sorted(r for r in ts["variant"].unique() if r != VARIANT_RUN)]


def _cluster(ts: pd.DataFrame, kind: str, col: str) -> pd.DataFrame:
    part = ts[ts["kind"] == kind]
    if col not in part:
        return pd.DataFrame()
    return part.groupby(["variant", "time_s"])[col].sum().unstack(0).sort_index()


def _rate(df: pd.DataFrame) -> pd.DataFrame:
    dt = df.index.to_series().diff().replace(0, float("nan"))
    return df.diff().div(dt, axis=0).fillna(0.0)


def plot_backed(ts: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    part = ts[ts["kind"] == "host"]
    runs = _runs(ts)
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        for entity, df in part[part["variant"] == run].groupby("entity"):
            ax.plot(df["time_s"], df["backed_bytes"] / GIB, label=f"{entity} backed")
            if "capacity_bytes" in df:
                ax.plot(
                    df["time_s"],
                    df["capacity_bytes"] / GIB,
                    "--",
                    color="grey",
                    label=f"{entity} capacity",
                )
            if "swapped_bytes" in df:
                ax.plot(df["time_s"], df["swapped_bytes"] / GIB, ":", label=f"{entity} swapped")
        ax.set_title(f"host memory ({run})")
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("GiB")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_free_by_order(ts: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    part = ts[(ts["kind"] == "guest_group") & (ts["variant"] == VARIANT_RUN)]
    cols = sorted(
        (c for c in part.columns if c.startswith("free_bytes_order_")),
        key=lambda c: int(c.rsplit("_", 1)[1]),
    )
    df = part.groupby("time_s")[cols].sum().sort_index() / GIB
    fig, ax = plt.subplots(figsize=(8, 4))
    if not df.empty:
        ax.stackplot(
            df.index, [df[c] for c in cols], labels=[f"order {c.rsplit('_', 1)[1]}" for c in cols]
        )
    ax.set_title("guest free memory by order (all guests, run)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("GiB")
    ax.legend(fontsize="x-small", ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_reported(ts: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    part = ts[(ts["kind"] == "guest_group") & (ts["variant"] == VARIANT_RUN)]
    df = part.groupby("time_s")[["reported_bytes", "reported_pages_total"]].sum().sort_index()
    fig, ax = plt.subplots(figsize=(8, 4))
    if not df.empty:
        ax.plot(df.index, df["reported_bytes"] / GIB, label="Reported free memory (GiB)")
        ax2 = ax.twinx()
        rate = _rate(df[["reported_pages_total"]])["reported_pages_total"] * PAGE_SIZE / GIB
        ax2.plot(df.index, rate, color="tab:orange", label="report rate (GiB/s)")
        ax2.set_ylabel("GiB/s reported")
        ax2.legend(loc="upper right", fontsize="small")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("GiB")
    ax.set_title("free page reporting")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_swap(ts: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for col, style in (("swapout_bytes_total", "-"), ("swapin_bytes_total", "--")):
        df = _cluster(ts, "host", col)
        if df.empty:
            continue
        for run in df.columns:
            ax.plot(
                df.index,
                _rate(df[[run]])[run] / (1 << 20),
                style,
                label=f"{col.split('_')[0]} ({run})",
            )
    ax.set_title("swap traffic (all hosts)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("MiB/s")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_slowdown(ts: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ops = _cluster(ts, "guest_group", "ops_total")
    for run in ops.columns:
        ax1.plot(ops.index, ops[run] * PAGE_SIZE / GIB, label=run)
    ax1.set_title("workload progress (GiB of page operations)")
    ax1.set_xlabel("simulated time (s)")
    ax1.legend(fontsize="small")
    for kind in LOST_KINDS:
        df = _cluster(ts, "guest_group", f"lost_{kind}_seconds_total")
        for run in df.columns:
            if df[run].max() > 0:
                ax2.plot(df.index, df[run], label=f"{kind} ({run})")
    ax2.set_title("guest time lost to host costs (cumulative s)")
    ax2.set_xlabel("simulated time (s)")
    ax2.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


PLOTS = (
    ("host_backed.png", "Host backed memory, run and baseline", plot_backed),
    ("free_by_order.png", "Guest free memory by order", plot_free_by_order),
    ("reported.png", "Reported bytes and report rate", plot_reported),
    ("swap.png", "Swap traffic", plot_swap),
    ("slowdown.png", "Guest progress and time lost", plot_slowdown),
)


def _lost(c: dict, kinds: tuple[str, ...]) -> float:
    return sum(g["lost_seconds"].get(k, 0.0) for g in c.values() for k in kinds)


def summary_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The headline table: one column for the run and one per paired baseline."""
    runs = [("reporting on" if summary.get("baselines") else "run", summary)]
    runs += [(name, b) for name, b in summary.get("baselines", {}).items()]
    header = ["measure"] + [name for name, _ in runs]
    rows = [
        ["overcommit ratio (guest memory / host memory)"]
        + [f"{r['cluster']['overcommit_ratio']:.2f}" for _, r in runs],
        ["host backed memory, mean"]
        + [format_bytes(r["cluster"]["backed_bytes"]["mean"]) for _, r in runs],
        ["host backed memory, peak"]
        + [format_bytes(r["cluster"]["backed_bytes"]["peak"]) for _, r in runs],
        ["swapped out"] + [format_bytes(r["cluster"]["swap_out_bytes"]) for _, r in runs],
        ["swapped back in"] + [format_bytes(r["cluster"]["swap_in_bytes"]) for _, r in runs],
        ["guest time lost to host faults + zero-fill"]
        + [f"{_lost(r['guest_groups'], ('fault', 'zero')):.3f} s" for _, r in runs],
        ["guest time lost to swap-in and reclaim"]
        + [
            f"{_lost(r['guest_groups'], ('swapin', 'decompress', 'reclaim')):.3f} s"
            for _, r in runs
        ],
        ["guest time in report calls (exits + host discards)"]
        + [f"{_lost(r['guest_groups'], ('report',)):.3f} s" for _, r in runs],
        ["workload page operations completed"]
        + [f"{r['cluster']['ops_completed'] / 1e6:.2f} M" for _, r in runs],
    ]
    return header, rows


def summary_lines(summary: dict) -> list[tuple[str, str]]:
    """What reporting bought, relative to each paired baseline, as (label, value) pairs."""
    out = []
    for name, cmp in summary.get("comparison", {}).items():
        progress = -cmp["slowdown"]
        out += [
            (
                f"memory saved vs {name}, mean / peak",
                f"{format_bytes(cmp['memory_saved_mean_bytes'])} / {format_bytes(cmp['memory_saved_peak_bytes'])}",
            ),
            (f"swap-out avoided vs {name}", format_bytes(cmp["swap_out_avoided_bytes"])),
            (f"guest time lost vs {name} (negative: less)", f"{cmp['extra_lost_seconds']:+.3f} s"),
            (f"workload progress vs {name}", f"{100 * progress:+.2f} %"),
        ]
    return out


def write_report(run_dir: str) -> str:
    """Write the PNGs and report.html into ``run_dir``; return the report's path."""
    result = load_run(run_dir)
    ts = result.timeseries
    for fname, _, fn in PLOTS:
        fn(ts, os.path.join(run_dir, fname))
    header, table = summary_rows(result.summary)
    rows = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    rows += "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table
    )
    rows += "".join(
        f"<tr><th>{html.escape(k)}</th><td colspan='{len(header) - 1}'>{html.escape(v)}</td></tr>"
        for k, v in summary_lines(result.summary)
    )
    figs = "".join(
        f"<h2>{html.escape(title)}</h2><img src='{fname}' alt='{html.escape(title)}'>"
        for fname, title, _ in PLOTS
    )
    name = html.escape(result.metadata.get("name", os.path.basename(os.path.dirname(run_dir))))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>overcommit-sim: {name}</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto}}th{{text-align:left;padding-right:2em}}
img{{max-width:100%}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head><body>
<h1>overcommit-sim report: {name}</h1><table>{rows}</table>{figs}
<h2>summary.json</h2><pre>{html.escape(json.dumps(result.summary, indent=2, sort_keys=True))}</pre>
</body></html>"""
    path = os.path.join(run_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def plot_sweep(df: pd.DataFrame, sweep_dir: str) -> list[str]:
    """One PNG per grid parameter: the headline figures against it (mean, min-max over
    seeds). Returns the files written."""
    plt = _pyplot()
    known = {"seed", "run_id", "run_dir"}
    params = df.attrs.get("grid") or [
        c for c in df.columns if c not in known and not c.startswith(("cluster.", "comparison."))
    ]
    metrics = [
        c
        for c in (
            "comparison.reporting_off.memory_saved_mean_bytes",
            "cluster.backed_bytes.mean",
            "cluster.swap_out_bytes",
            "comparison.reporting_off.slowdown",
        )
        if c in df
    ]
    written = []
    for p in params:
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
        for ax, m in zip(axes[0], metrics, strict=True):
            g = df.groupby(p)[m].agg(["mean", "min", "max"]).sort_index()
            x = [str(v) for v in g.index]
            ax.errorbar(x, g["mean"], yerr=[g["mean"] - g["min"], g["max"] - g["mean"]], marker="o")
            ax.set_title(m.split(".", 1)[1], fontsize="small")
            ax.set_xlabel(p)
        fig.tight_layout()
        path = os.path.join(sweep_dir, f"sweep_{p.replace('.', '_')}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
