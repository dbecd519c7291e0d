"""``overcommit report RUN_DIR``: PNG plots and a self-contained report.html.

Reads only the run's files (``summary.json``, ``timeseries.parquet``); never
Prometheus. Each plot puts the run beside its paired baseline when there is one.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import warnings
from typing import Any

import pandas as pd

from services.units import LOST_KINDS, PAGE_SIZE

from .quantities import format_bytes
from .result_rows import VARIANT_RUN
from .run_files import load_run, replace_file, write_text_file

GIB = float(1 << 30)


def _save_png(fig: Any, path: str) -> None:
    """Save a figure as PNG through :func:`replace_file` (never through a link)."""
    replace_file(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (chosen when plotting, not on import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _runs(ts: pd.DataFrame) -> list[str]:
    return [VARIANT_RUN, *sorted(r for r in ts["variant"].unique() if r != VARIANT_RUN)]


def label(variant: str, ts: pd.DataFrame | None = None) -> str:
    """What the report calls a variant: the run is "reporting on" beside a reporting_off
    baseline (as in the summary table), a baseline is named by what it turns off."""
    if variant == VARIANT_RUN:
        has_off = ts is not None and "reporting_off" in set(ts["variant"].unique())
        return "reporting on" if has_off else "run"
    return variant.replace("_", " ")


def _plain(ax) -> None:
    """Axes read as plain numbers: no offset or scientific notation."""
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def _cluster(ts: pd.DataFrame, kind: str, col: str) -> pd.DataFrame:
    part = ts[ts["kind"] == kind]
    if col not in part:
        return pd.DataFrame()
    return part.groupby(["variant", "time_s"])[col].sum().unstack(0).sort_index()


def _rate(df: pd.DataFrame) -> pd.DataFrame:
    dt = df.index.to_series().diff().replace(0, float("nan"))
    return df.diff().div(dt, axis=0).fillna(0.0)


MAX_HOST_LINES = 4  # hosts drawn one by one in host memory plots; more are summed


def plot_backed(ts: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    part = ts[ts["kind"] == "host"]
    runs = _runs(ts)
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        mine = part[part["variant"] == run]
        if mine["entity"].nunique() > MAX_HOST_LINES:  # one line each would bury the data
            summed = mine.groupby("time_s").sum(numeric_only=True, min_count=1).reset_index()
            mine = summed.assign(entity=f"{part['entity'].nunique()} hosts, summed:")
        for entity, df in mine.groupby("entity", sort=False):
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
        ax.set_title(f"host memory ({label(run, ts)})")
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("GiB")
        _plain(ax)
        ax.legend(fontsize="small")
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


def plot_free_by_order(ts: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    part = ts[(ts["kind"] == "guest_group") & (ts["variant"] == VARIANT_RUN)]
    cols = sorted(
        (c for c in part.columns if c.startswith("free_bytes_order_")),
        key=lambda c: int(c.rsplit("_", 1)[1]),
    )
    df = part.groupby("time_s")[cols].sum().sort_index() / (1 << 20)
    fig, ax = plt.subplots(figsize=(9, 4))
    if not df.empty:
        from matplotlib.colors import LogNorm

        data = df.T.to_numpy()  # one row per order
        positive = data[data > 0]
        norm = (
            LogNorm(vmin=max(positive.min(), 1e-3), vmax=positive.max()) if positive.size else None
        )
        t = df.index.to_numpy()
        image = ax.imshow(
            data.clip(min=norm.vmin if norm else 0),
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            extent=(t[0], t[-1], -0.5, len(cols) - 0.5),
            norm=norm,
            cmap="viridis",
        )
        fig.colorbar(image, ax=ax, label="MiB free (log scale)")
        ax.set_yticks(range(len(cols)), [c.rsplit("_", 1)[1] for c in cols])
    # a heat map, not a stack: order 10 usually holds nearly all free memory, and a
    # stack would show it alone; every order's colour here is its own amount
    ax.set_title(f"guest free memory by order (all guests, {label(VARIANT_RUN, ts)})")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("order")
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


def plot_reported(ts: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    part = ts[(ts["kind"] == "guest_group") & (ts["variant"] == VARIANT_RUN)]
    df = part.groupby("time_s")[["reported_bytes", "reported_pages_total"]].sum().sort_index()
    fig, ax = plt.subplots(figsize=(8, 4))
    if not df.empty:
        ax.plot(df.index, df["reported_bytes"] / GIB, label="free memory now Reported")
        # cumulative, not a per-sample rate: passes run every 2 s, so a rate sampled every
        # second would alias into a sawtooth
        ax.plot(
            df.index,
            df["reported_pages_total"] * PAGE_SIZE / GIB,
            color="tab:orange",
            label="reported since the start (cumulative)",
        )
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("GiB")
    _plain(ax)
    ax.set_title(f"free page reporting ({label(VARIANT_RUN, ts)})")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    _save_png(fig, path)
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
                label=f"{col.split('_')[0]} ({label(run, ts)})",
            )
    ax.set_title("swap traffic (all hosts)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("MiB/s")
    _plain(ax)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


def plot_slowdown(ts: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ops = _cluster(ts, "guest_group", "ops_total")
    for run in ops.columns:
        ax1.plot(ops.index, ops[run] / 1e6, label=label(run, ts))
    ax1.set_title("workload progress (all guests)")
    ax1.set_xlabel("simulated time (s)")
    ax1.set_ylabel("M page operations (cumulative)")
    _plain(ax1)
    ax1.legend(fontsize="small")
    for kind in LOST_KINDS:
        df = _cluster(ts, "guest_group", f"lost_{kind}_seconds_total")
        for run in df.columns:
            if df[run].max() > 0:
                ax2.plot(df.index, df[run], label=f"{kind} ({label(run, ts)})")
    ax2.set_title("guest time lost to host costs")
    ax2.set_xlabel("simulated time (s)")
    ax2.set_ylabel("s lost (cumulative, all guests)")
    _plain(ax2)
    ax2.legend(fontsize="small")
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


PLOTS = (
    ("host_backed.png", "Host backed memory, reporting on and off", plot_backed),
    ("free_by_order.png", "Guest free memory by order", plot_free_by_order),
    ("reported.png", "Reported memory, now and cumulative", plot_reported),
    ("swap.png", "Swap traffic", plot_swap),
    ("slowdown.png", "Guest progress and time lost", plot_slowdown),
)


def _lost(c: dict, kinds: tuple[str, ...]) -> float:
    return sum(g["lost_seconds"].get(k, 0.0) for g in c.values() for k in kinds)


def summary_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The headline table: one column for the run and one per paired baseline."""
    runs = [("reporting on" if summary.get("baselines") else "run", summary)]
    runs += [(label(name), b) for name, b in summary.get("baselines", {}).items()]
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
    for variant, cmp in summary.get("comparison", {}).items():
        name = label(variant)
        progress = -cmp["slowdown"]
        out += [
            (
                f"memory saved vs {name}: mean / peak (demand off - backed on)",
                f"{format_bytes(cmp['memory_saved_mean_bytes'])} / {format_bytes(cmp['memory_saved_peak_bytes'])}",
            ),
            (f"swap-out avoided vs {name}", format_bytes(cmp["swap_out_avoided_bytes"])),
            (f"guest time lost vs {name} (negative: less)", f"{cmp['extra_lost_seconds']:+.3f} s"),
            (f"workload progress vs {name}", f"{100 * progress:+.2f} %"),
        ]
    return out


def _saved_series(ts: pd.DataFrame, baseline: str) -> pd.Series:
    """Memory saved at each sample: the baseline's demand (backed + swapped: what its
    guests wanted resident) less what the run's hosts back."""
    hosts = ts[ts["kind"] == "host"]
    swapped = hosts["swapped_bytes"].fillna(0.0) if "swapped_bytes" in hosts else 0.0
    demand = (
        (hosts["backed_bytes"].fillna(0.0) + swapped)
        .groupby([hosts["variant"], hosts["time_s"]])
        .sum()
    )
    backed = hosts.groupby(["variant", "time_s"])["backed_bytes"].sum()
    return (demand.loc[baseline] - backed.loc[VARIANT_RUN]).dropna()


def headline(summary: dict, ts: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The planner's block, per paired baseline: (section, measure, value) rows, what
    reporting bought, what it cost on its own, and the net effect."""
    rows: list[tuple[str, str, str]] = []
    guests = sum(g["guests"] for g in summary["guest_groups"].values()) or 1
    guest_seconds = guests * summary["duration_seconds"]
    hosts = summary["hosts"].values()
    refault_zero = _lost(summary["guest_groups"], ("fault", "zero"))
    reported = sum(h["reported_bytes"] for h in hosts)
    refaulted = sum(h["refaulted_reported_bytes"] for h in hosts)
    zeroed = sum(h["zeroed_bytes"] for h in hosts)
    for name, cmp in summary.get("comparison", {}).items():
        off = label(name)
        saved = _saved_series(ts, name)
        rows += [
            (
                "bought",
                f"memory saved vs {off} at each sample: mean / p95 / largest",
                " / ".join(
                    format_bytes(v) for v in (saved.mean(), saved.quantile(0.95), saved.max())
                ),
            ),
            ("bought", f"swap-out avoided vs {off}", format_bytes(cmp["swap_out_avoided_bytes"])),
        ]
        base = summary["baselines"][name]
        base_zeroed = sum(h["zeroed_bytes"] for h in base["hosts"].values())
        rows += [
            (
                "cost",
                "guest time lost to host faults + zero-fill (refaults of reported memory "
                "among them)",
                f"{refault_zero:.3f} s = {100 * refault_zero / guest_seconds:.3f} % of guest "
                f"time, {refault_zero / guests:.3f} s per guest "
                f"({_lost(base['guest_groups'], ('fault', 'zero')):.3f} s with {off})",
            ),
            (
                "cost",
                "reported memory faulted back in",
                f"{format_bytes(refaulted)} of {format_bytes(reported)} reported"
                + (f" ({100 * refaulted / reported:.1f} %)" if reported else ""),
            ),
            (
                "cost",
                "host zero-fill",
                f"{format_bytes(zeroed)} ({format_bytes(base_zeroed)} with {off})",
            ),
            (
                "cost",
                "guest time in report calls",
                f"{_lost(summary['guest_groups'], ('report',)):.3f} s",
            ),
            (
                "net",
                f"guest time lost vs {off} (all costs; negative: less)",
                f"{cmp['extra_lost_seconds']:+.3f} s",
            ),
            ("net", f"workload progress vs {off}", f"{-100 * cmp['slowdown']:+.2f} %"),
        ]
    return rows


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """Rows of an HTML table: the header as <th>, then one <tr> of <td> per row (escaped)."""
    out = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    return out + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )


def summary_table_html(summary: dict) -> str:
    """The side-by-side table and the comparison lines, as HTML table rows (the report's
    and a notebook's view of what the terminal prints)."""
    header, rows = summary_rows(summary)
    return html_table(header, rows) + "".join(
        f"<tr><th>{html.escape(k)}</th><td colspan='{len(header) - 1}'>{html.escape(v)}</td></tr>"
        for k, v in summary_lines(summary)
    )


def write_report(run_dir: str) -> str:
    """Write the PNGs and report.html into ``run_dir``; return the report's path."""
    result = load_run(run_dir)
    staging = tempfile.mkdtemp(prefix=".report-", dir=run_dir)
    try:
        page = _report_page(run_dir, result, staging)
        for fname, _, _ in PLOTS:  # all made: now replace the old ones
            os.replace(os.path.join(staging, fname), os.path.join(run_dir, fname))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as e:
        raise ValueError(
            f"{run_dir}: summary.json and timeseries.parquet are not those of a run "
            f"({type(e).__name__}: {e}); nothing was written"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return write_text_file(os.path.join(run_dir, "report.html"), page)


def _report_page(run_dir: str, result: Any, staging: str) -> str:
    """The PNGs (into ``staging``) and the page's HTML of a run read back."""
    ts = result.timeseries
    with warnings.catch_warnings():  # an empty plot's legend warns; the page says enough
        warnings.simplefilter("ignore", UserWarning)
        for fname, _, fn in PLOTS:
            fn(ts, os.path.join(staging, fname))
    rows = summary_table_html(result.summary)
    paired = bool(result.summary.get("baselines"))
    titles = [
        (fname, html.escape(title if paired else title.replace(", reporting on and off", "")))
        for fname, title, _ in PLOTS
    ]
    figs = "".join(f"<h2>{t}</h2><img src='{fname}' alt='{t}'>" for fname, t in titles)
    head = headline(result.summary, ts)
    sections = {"bought": "What reporting bought", "cost": "What it cost", "net": "Net effect"}
    block = "".join(
        f"<tr class='{sec}'><th>{html.escape(sections[sec])}</th><td>{html.escape(measure)}</td>"
        f"<td class='value'>{html.escape(value)}</td></tr>"
        for sec, measure, value in head
    )
    s = result.summary
    headline_html = (
        f'<h2>Headline</h2><table id="headline">{block}</table>'
        if block
        else "<p>No paired baseline (the spec's <code>compare</code>), so no headline of "
        "what reporting bought: the table below is this run alone.</p>"
    )
    name = html.escape(s.get("name", os.path.basename(os.path.dirname(run_dir))))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>overcommit-sim: {name}</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto}}th{{text-align:left;padding-right:2em}}
td{{padding-right:2em}}img{{max-width:100%}}table{{border-collapse:collapse;margin-bottom:1.5em}}
tr.cost td,tr.cost th{{color:#8a2a0a}}.value{{font-weight:bold}}</style></head><body>
<h1>overcommit-sim report: {name}</h1>
<p>run {html.escape(str(s.get("run_id", "")))}, seed {html.escape(str(s.get("seed", "")))},
{s.get("duration_seconds", 0):.0f} s simulated</p>
{headline_html}
<h2>{"Reporting on and off, side by side" if paired else "Summary"}</h2><table id="summary">{rows}</table>{figs}
<p>All figures: <a href="summary.json">summary.json</a>; the time series:
<code>timeseries.parquet</code> (docs/results.md).</p>
</body></html>"""
    return page


def _grid_of(df: pd.DataFrame) -> list[str]:
    known = {"seed", "run_id", "run_dir"}
    return df.attrs.get("grid") or [
        c for c in df.columns if c not in known and not c.startswith(("cluster.", "comparison."))
    ]


def plot_sweep(df: pd.DataFrame, sweep_dir: str) -> list[str]:
    """One PNG per grid parameter: each headline metric against it, the mean over seeds
    with its 95 % confidence interval (a band, or bars for a non-numeric axis).
    Returns the files written."""
    from .sweep import SWEEP_METRICS, t95

    plt = _pyplot()
    metrics = [m for m in SWEEP_METRICS if m[0] in df]
    written = []
    for p in _grid_of(df):
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
        for ax, (col, heading, scale, unit) in zip(axes[0], metrics, strict=True):
            g = (df[col].astype(float) * scale).groupby(df[p]).agg(["mean", "std", "count"])
            g = g.sort_index()
            half = [
                t95(int(n)) * sd / n**0.5 if n > 1 else 0.0
                for sd, n in zip(g["std"].fillna(0.0), g["count"], strict=True)
            ]
            numeric = pd.api.types.is_numeric_dtype(g.index)
            x = g.index.to_numpy() if numeric else [str(v) for v in g.index]
            ax.plot(x, g["mean"], marker="o", label="mean over seeds")
            if numeric and len(x) <= 12:
                ax.set_xticks(x)  # the grid's own values, not 8.25, 8.5, ...
            if numeric:
                lo = g["mean"] - half
                hi = g["mean"] + half
                ax.fill_between(x, lo, hi, alpha=0.25, label="95 % CI")
            else:
                ax.errorbar(x, g["mean"], yerr=half, fmt="none", capsize=4, label="95 % CI")
            ax.set_title(heading)
            ax.set_xlabel(p.rsplit(".", 1)[-1] if "." in p else p)
            ax.set_ylabel(unit)
            _plain(ax)
            ax.legend(fontsize="small")
        fig.suptitle(f"against {p}", fontsize="small")
        fig.tight_layout()
        path = os.path.join(sweep_dir, f"sweep_{p.replace('.', '_')}.png")
        _save_png(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def write_sweep_report(sweep_dir: str) -> str:
    """report.html for a sweep directory: the table (mean ± 95 % CI over seeds per grid
    point) and one plot per grid axis; returns its path."""
    from .sweep import sweep_table

    df = pd.read_parquet(os.path.join(sweep_dir, "results.parquet"))
    grid = _grid_of(df)
    pngs = plot_sweep(df, sweep_dir)
    header, rows = sweep_table(df, grid)
    table = html_table(header, rows)
    figs = "".join(
        f"<img src='{os.path.basename(p)}' alt='{html.escape(os.path.basename(p))}'>" for p in pngs
    )
    name = html.escape(os.path.basename(os.path.dirname(os.path.abspath(sweep_dir))))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>overcommit-sim sweep: {name}</title>
<style>body{{font-family:sans-serif;max-width:1500px;margin:2em auto}}th,td{{text-align:right;padding:0 1em}}
img{{max-width:100%}}table{{border-collapse:collapse;margin-bottom:1.5em}}</style></head><body>
<h1>overcommit-sim sweep: {name}</h1>
<p>{len(df)} runs: {len(rows)} grid points x seeds. Each cell: the mean over seeds ± the half-width of
its 95 % confidence interval (Student t).</p>
<table id="sweep">{table}</table>{figs}
<p>Every run's figures: <a href="results.parquet">results.parquet</a> (one row per run, with its run_dir).</p>
</body></html>"""
    path = os.path.join(sweep_dir, "report.html")
    return write_text_file(path, page)
