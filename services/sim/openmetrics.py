"""The historical view: a finished run's time series as OpenMetrics with timestamps.

``overcommit export-openmetrics RUN_DIR`` writes every metric the live view has
that a run's files hold (docs/metrics.md lists the live-only ones: wall-clock
speed and epoch wall time), under the same names and labels, one sample per
sample time, at ``start + simulated time`` (``start``: the run's start from
``metadata.json`` unless given). ``promtool tsdb create-blocks-from openmetrics``
turns the file into Prometheus blocks, so a finished run can be browsed in the
same dashboards as a live one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import yaml

from services.units import NS_PER_S

from .live_metrics import epochs_at
from .metric_catalogue import help_of, metric_type
from .result_rows import (
    METRIC_PREFIX,
    VARIANT_RUN,
    cluster_columns,
    exported_columns,
    metric_samples,
)
from .run_files import load_run, replace_file

MAX_START = 4102444800.0  # 2100-01-01: a start beyond it is a mistake, not a run


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


class _Families:
    """Series by family, written one family at a time (OpenMetrics wants each family's
    samples together, and promtool each series' samples in time order)."""

    def __init__(self) -> None:
        # family -> series labels text -> list of (timestamp, value) arrays
        self.series: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}

    def add(self, family: str, labels: dict[str, str], ts: np.ndarray, values: np.ndarray) -> None:
        keep = ~np.isnan(values)
        if keep.any():
            self.series.setdefault(family, {}).setdefault(_labels(labels), []).append(
                (ts[keep], values[keep])
            )

    def write(self, f: IO[str]) -> int:
        n = 0
        for family in sorted(self.series):
            kind = metric_type(family)
            base = family.removesuffix("_total") if kind == "counter" else family
            sample = f"{base}_total" if kind == "counter" else family
            f.write(f"# TYPE {base} {kind}\n# HELP {base} {_escape(help_of(family))}\n")
            for labels, parts in sorted(self.series[family].items()):
                ts = np.concatenate([t for t, _ in parts])
                vals = np.concatenate([v for _, v in parts])
                order = np.argsort(ts, kind="stable")
                for t, v in zip(ts[order].tolist(), vals[order].tolist(), strict=True):
                    f.write(f"{sample}{{{labels}}} {v!r} {t:.3f}\n")
                    n += 1
        f.write("# EOF\n")
        return n


def _entity_series(fams: _Families, ts: pd.DataFrame, base: dict[str, str], start: float) -> None:
    """Host and guest-group rows: every column as its metric (result_rows' rule)."""
    for (variant, kind, entity), rows in ts.groupby(["variant", "kind", "entity"], sort=True):
        part = rows.sort_values("time_s")
        times = start + part["time_s"].to_numpy(dtype=float)
        present = [c for c in part.columns if part[c].notna().any()]
        labels = {**base, "variant": str(variant), str(kind): str(entity)}  # host=, guest_group=
        for column, family, extra, scale in exported_columns(str(kind), present):
            values = part[column].to_numpy(dtype=float) * scale
            fams.add(family, {**labels, **dict([extra] if extra else [])}, times, values)


def _coordinator_series(
    fams: _Families,
    ts: pd.DataFrame,
    base: dict[str, str],
    start: float,
    physical: int,
    committed: int,
    epoch_ns: int,
) -> None:
    """The simulated clock, epochs, the cluster and the memory saved, per variant."""
    hosts = ts[ts["kind"] == "host"]
    cluster: dict[str, dict[float, dict[str, float]]] = {}
    for (variant, t), part in hosts.groupby(["variant", "time_s"], sort=True):
        counters = {
            i: {"backed_bytes": b, "swapped_bytes": s}
            for i, (b, s) in enumerate(
                zip(
                    part["backed_bytes"].fillna(0.0).tolist(),
                    part.get("swapped_bytes", pd.Series(0.0, index=part.index))
                    .fillna(0.0)
                    .tolist(),
                    strict=True,
                )
            )
        }
        cluster.setdefault(str(variant), {})[float(t)] = cluster_columns(
            counters, physical, committed
        )
    for variant, by_time in cluster.items():
        labels = {**base, "variant": variant}
        for t, cols in sorted(by_time.items()):
            row = dict(cols)
            if variant == VARIANT_RUN:  # the saving against each baseline, at the same time
                for other, theirs in cluster.items():
                    if other != VARIANT_RUN and t in theirs:
                        saved = theirs[t]["demand_bytes"] - cols["backed_bytes"]
                        row[f"memory_saved_bytes_{other}"] = saved
            epochs = epochs_at(round(t * NS_PER_S), epoch_ns)
            clock = {"time_seconds": t, "epochs_total": float(epochs)}
            when = np.array([start + t])
            for kind, columns in (("cluster", row), ("sim", clock)):
                for family, extra, value in metric_samples(kind, columns):
                    more = {extra[0]: extra[1]} if extra else {}
                    fams.add(family, {**labels, **more}, when, np.array([value]))


def export_openmetrics(run_dir: str, out: str | None = None, start: float | None = None) -> str:
    """Write ``run_dir``'s metrics as OpenMetrics (default ``RUN_DIR/metrics.om``); return the path."""
    root = Path(run_dir)
    for name in ("timeseries.parquet", "summary.json", "metadata.json", "spec.resolved.yaml"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"run_dir: no {name} in {run_dir} (not a finished run)")
    path = Path(out) if out else root / "metrics.om"
    if path.is_dir() or not path.parent.is_dir():
        raise ValueError(
            f"out={str(path)!r}: "
            + ("is a folder; name a file" if path.is_dir() else "its folder does not exist")
        )
    run = load_run(run_dir)  # each file that is not what a run writes is named
    metadata, summary, ts = run.metadata, run.summary, run.timeseries
    try:
        spec = yaml.safe_load((root / "spec.resolved.yaml").read_text(encoding="utf-8"))
        name, run_id, cluster = str(summary["name"]), str(summary["run_id"]), summary["cluster"]
        physical, guest = int(cluster["physical_bytes"]), int(cluster["guest_bytes"])
        epoch = int(spec["epoch"])
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(
            f"{run_dir}: summary.json or spec.resolved.yaml is not a finished run's "
            f"({type(e).__name__}: {e})"
        ) from None
    if start is None:
        start = float(metadata.get("started_unix", 0.0))
    if not (math.isfinite(start) and 0 <= start <= MAX_START):
        raise ValueError(f"start={start}: must be unix seconds between 0 and {MAX_START:.0f}")
    base = {"experiment": name, "run_id": run_id}
    fams = _Families()
    _entity_series(fams, ts, base, start)
    _coordinator_series(fams, ts, base, start, physical, guest, epoch)
    versions = metadata.get("versions", {})
    info = {
        "version": str(versions.get("overcommit-sim") or ""),
        "python": str(metadata.get("python", "")),
        **{pkg: str(versions.get(pkg) or "") for pkg in ("numpy", "numba", "ray", "grpcio")},
    }
    fams.add(f"{METRIC_PREFIX}_build_info", info, np.array([start]), np.array([1.0]))

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            fams.write(f)

    return replace_file(str(path), write)


def iter_samples(path: str) -> Iterator[tuple[str, str, float, float]]:
    """(metric, labels text, value, timestamp) of each sample line of an OpenMetrics file."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, _, rest = line.partition("{")
            labels, _, tail = rest.rpartition("}")
            value, stamp = tail.split()
            yield name, labels, float(value), float(stamp)
