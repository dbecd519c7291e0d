"""Per-VM memory usage traces: loaders for the public formats and a synthetic generator.

Every loader returns :class:`UsageTrace` objects: sample times in seconds from the
trace's first sample, the memory in use at each sample in bytes, and the memory
the VM was given (its guest size). Normalised traces (Google 2019, Alibaba 2018)
are scaled to ``machine_bytes``, the memory of the trace's largest machine.

Formats (docs/workloads.md has the details and the quirks):

* ``bitbrains``: GWA-T-12, one CSV per VM, fields separated by ``;`` and a tab.
  The header says ``Timestamp [ms]`` but the values are Unix seconds
  (1376314846 is August 2013): a trace whose first time is below 10^11 is read
  as seconds, and the trace's ``notes`` say so.
* ``google2019``: cluster-data 2019 ``instance_usage`` JSON lines, one trace per
  (collection_id, instance_index); times in microseconds; ``average_usage.memory``
  (or ``maximum_usage.memory``) against ``assigned_memory``.
* ``alibaba2018``: headless ``container_usage`` (with ``container_meta`` for each
  container's ``mem_size``) or ``machine_usage`` CSV; ``mem_util_percent`` 0-100;
  samples outside [0, 100] (the trace's -1 and 101) are dropped and counted.

Malformed input raises :class:`TraceError` naming the file, line and column.
Parsing uses pandas' C parser and pyarrow, never a Python loop per line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .trace_files import (
    MAX_TOTAL_TRACE_BYTES,
    MAX_TRACE_FILE_BYTES,
    MAX_TRACE_FILES,
    TraceError,
    check_file,
    gunzipped,
    trace_file_bytes,
    trace_files,
)

FORMATS = ("bitbrains", "google2019", "alibaba2018")
SHAPES = ("diurnal", "bursty", "step", "high_water_idle")

BITBRAINS_TIME = "Timestamp [ms]"
BITBRAINS_CAPACITY = "Memory capacity provisioned [KB]"
BITBRAINS_USAGE = "Memory usage [KB]"
BITBRAINS_HEADER = (
    BITBRAINS_TIME,
    "CPU cores",
    "CPU capacity provisioned [MHZ]",
    "CPU usage [MHZ]",
    "CPU usage [%]",
    BITBRAINS_CAPACITY,
    BITBRAINS_USAGE,
    "Disk read throughput [KB/s]",
    "Disk write throughput [KB/s]",
    "Network received throughput [KB/s]",
    "Network transmitted throughput [KB/s]",
)
UNIX_SECONDS_BELOW = 10**11  # a "ms" timestamp this small is Unix seconds (year < 5138)
KIB = 1024

# cluster-trace-v2018 schema.txt / schema.md order of the headless container_usage file.
# Analyses of the trace disagree on it, so the order is a parameter (``columns``).
ALIBABA_CONTAINER_USAGE_COLUMNS = (
    "container_id",
    "machine_id",
    "time_stamp",
    "cpu_util_percent",
    "mem_util_percent",
    "cpi",
    "mem_gps",
    "mpki",
    "net_in",
    "net_out",
    "disk_io_percent",
)
ALIBABA_MACHINE_USAGE_COLUMNS = (
    "machine_id",
    "time_stamp",
    "cpu_util_percent",
    "mem_util_percent",
    "mem_gps",
    "mkpi",
    "net_in",
    "net_out",
    "disk_io_percent",
)
ALIBABA_CONTAINER_META_COLUMNS = (
    "container_id",
    "machine_id",
    "time_stamp",
    "app_du",
    "status",
    "cpu_request",
    "cpu_limit",
    "mem_size",
)


@dataclass(frozen=True, eq=False)
class UsageTrace:
    """One VM's memory in use over time."""

    name: str
    source: str  # the file it came from
    times_s: np.ndarray  # float64 seconds from the first sample: 0, ascending strictly
    usage_bytes: np.ndarray  # int64 memory in use at each sample, 0..memory_bytes
    memory_bytes: int  # the memory the VM was given
    start_unix_s: float | None = None  # the first sample's absolute time, when known
    notes: tuple[str, ...] = field(default=())  # how the file was read
    # what reading changed or left out of the file (samples dropped): a run warns of these
    warnings: tuple[str, ...] = field(default=())
    # page cache at each sample beside usage_bytes, when the format has it (google2019's
    # page_cache_memory); usage + cache never exceeds memory_bytes
    cache_bytes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.times_s)


# ---------------------------------------------------------------- shared checks


LineOf = int | Callable[[int], int]  # the file line of data row i: first line + i, or a map


def _line(first_line: LineOf, i: int) -> int:
    return first_line(i) if callable(first_line) else first_line + i


def _data_line(path: Path, row: int, header_lines: int) -> int:
    """The file line of data row ``row`` (0-based) when blank and whitespace-only lines are
    skipped, as the parsers skip them (lines end with LF, CRLF or CR). Only called to
    report an error: it reads the file again."""
    n = 0
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        if n <= header_lines or not line.strip():
            continue
        if row == 0:
            return n
        row -= 1
    return n


def _numeric(path: Path, values, column: str, first_line: LineOf) -> np.ndarray:
    """A column as float64; a non-numeric or missing field names its line."""
    import pandas as pd

    col = pd.to_numeric(values, errors="coerce")
    arr = np.asarray(col, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raw = values.iloc[i] if hasattr(values, "iloc") else values[i]
        raise TraceError(path, f"not a number: {str(raw)[:40]!r}", _line(first_line, i), column)
    return arr


def _ascending(path: Path, times: np.ndarray, column: str, first_line: LineOf) -> None:
    if len(times) > 1:
        back = np.diff(times) <= 0
        if back.any():
            i = int(np.argmax(back)) + 1
            raise TraceError(
                path,
                f"time goes backwards or repeats: {float(times[i])!r} after {float(times[i - 1])!r}",
                _line(first_line, i),
                column,
            )


# ---------------------------------------------------------------- Bitbrains GWA-T-12


def _read_bitbrains(path: Path, idx: list[int], dtype):
    import pandas as pd

    try:
        df = pd.read_csv(
            path,
            sep=";",
            engine="c",
            header=None,
            skiprows=1,
            usecols=idx,
            dtype=dtype,
        )
    except pd.errors.EmptyDataError:
        raise TraceError(path, "no samples after the header", 2) from None
    except pd.errors.ParserError as e:
        raise TraceError(path, f"not a Bitbrains CSV: {str(e).splitlines()[0]}") from None
    if any(i not in df.columns for i in idx):  # the first row set the width: too few fields
        raise TraceError(
            path, f"fewer fields than the header needs ({max(idx) + 1})", _data_line(path, 0, 1)
        )
    return df


def _bitbrains_columns(path: Path, idx: list[int]) -> tuple[np.ndarray, ...]:
    """(time, capacity KB, usage KB) as float64. The C parser reads the numbers itself
    (it skips the tab after each ';'); only a file it refuses is read again as text to
    find the field at fault (line = row + 2: the header is line 1)."""
    try:
        df = _read_bitbrains(path, idx, np.float64)
        cols = [df[i].to_numpy(dtype=np.float64) for i in idx]
        if len(df) and all(np.isfinite(c).all() for c in cols):
            return tuple(cols)
    except ValueError:
        pass  # a non-numeric field: located below
    try:
        df = _read_bitbrains(path, idx, str)
    except ValueError as e:
        raise TraceError(path, f"not a Bitbrains CSV: {str(e).splitlines()[0][:200]}") from None
    if len(df) == 0:
        raise TraceError(path, "no samples after the header", 2)
    names = (BITBRAINS_TIME, BITBRAINS_CAPACITY, BITBRAINS_USAGE)
    return tuple(
        _numeric(path, df[i].fillna("").str.strip(), name, _bitbrains_line(path))
        for i, name in zip(idx, names, strict=True)
    )


def _bitbrains_line(path: Path) -> Callable[[int], int]:
    """Data row -> file line (the header is line 1; blank lines are skipped)."""
    return lambda row: _data_line(path, row, 1)


def load_bitbrains(path: str | Path) -> UsageTrace:
    """One GWA-T-12 VM file (fastStorage / Rnd layout)."""

    path = Path(path)
    check_file(path)
    with path.open("rb") as f:
        header_line = f.readline(1 << 16).decode("utf-8-sig", errors="replace")
    names = [h.strip() for h in header_line.split(";")]
    for col in (BITBRAINS_TIME, BITBRAINS_CAPACITY, BITBRAINS_USAGE):
        if col not in names:
            shown = ", ".join(repr(n[:32]) for n in names[:4])
            raise TraceError(
                path, f"header has no {col!r} field ({len(names)} fields: {shown}, ...)", 1
            )
    idx = [names.index(c) for c in (BITBRAINS_TIME, BITBRAINS_CAPACITY, BITBRAINS_USAGE)]
    times, capacity_kb, usage_kb = _bitbrains_columns(path, idx)
    line_of = _bitbrains_line(path)
    _ascending(path, times, BITBRAINS_TIME, line_of)
    notes = []
    if times[0] < UNIX_SECONDS_BELOW and times[-1] >= UNIX_SECONDS_BELOW:
        i = int(np.argmax(times >= UNIX_SECONDS_BELOW))
        raise TraceError(
            path,
            f"'{BITBRAINS_TIME}' mixes Unix seconds (first sample {int(times[0])}) with "
            f"milliseconds ({int(times[i])})",
            line_of(i),
            BITBRAINS_TIME,
        )
    if times[0] < UNIX_SECONDS_BELOW:
        notes.append(
            f"'{BITBRAINS_TIME}' values are Unix seconds (first sample {int(times[0])}), "
            "not milliseconds: read as seconds"
        )
    else:
        times = times / 1000.0
    if (usage_kb < 0).any():
        i = int(np.argmax(usage_kb < 0))
        raise TraceError(
            path, f"negative memory usage {usage_kb[i]:g}", line_of(i), BITBRAINS_USAGE
        )
    memory = int(capacity_kb.max()) * KIB
    if memory <= 0:
        raise TraceError(path, "memory capacity provisioned is 0", 2, BITBRAINS_CAPACITY)
    usage = np.minimum(np.round(usage_kb * KIB), memory).astype(np.int64)
    return UsageTrace(
        name=path.stem,
        source=str(path),
        times_s=times - times[0],
        usage_bytes=usage,
        memory_bytes=memory,
        start_unix_s=float(times[0]),
        notes=tuple(notes),
    )


def write_bitbrains(trace: UsageTrace, path: str | Path, start_unix_s: int = 1376314846) -> None:
    """Write a trace as a GWA-T-12 file (times as Unix seconds, as the real files have)."""
    import pandas as pd

    kb_cap = trace.memory_bytes // KIB
    n = len(trace)
    cols = {
        BITBRAINS_TIME: (start_unix_s + np.round(trace.times_s)).astype(np.int64),
        "CPU cores": np.full(n, 4),
        "CPU capacity provisioned [MHZ]": np.full(n, 11703.99824),
        "CPU usage [MHZ]": np.full(n, 0.0),
        "CPU usage [%]": np.full(n, 0.0),
        BITBRAINS_CAPACITY: np.full(n, kb_cap),
        BITBRAINS_USAGE: np.round(trace.usage_bytes / KIB, 6),
        "Disk read throughput [KB/s]": np.zeros(n),
        "Disk write throughput [KB/s]": np.zeros(n),
        "Network received throughput [KB/s]": np.zeros(n),
        "Network transmitted throughput [KB/s]": np.zeros(n),
    }
    text = pd.DataFrame(cols).to_csv(sep=";", index=False, header=False, lineterminator="\n")
    body = text.replace(";", ";\t")
    Path(path).write_text(";\t".join(BITBRAINS_HEADER) + "\n" + body)


# ---------------------------------------------------------------- Google cluster-data 2019


def _check_fractions(path: Path, df, usage_col: str, line_of) -> None:
    """google2019's memory figures are normalised to the largest machine: 0..1."""
    for col, name in (
        ("mem", f"{usage_col}.memory"),
        ("assigned", "assigned_memory"),
        ("cache", "page_cache_memory"),
    ):
        if (df[col] < 0).any():
            row = int(np.argmax((df[col] < 0).to_numpy()))
            raise TraceError(path, "negative normalised memory", line_of(row), name)
        if (df[col] > 1.0).any():
            row = int(np.argmax((df[col] > 1.0).to_numpy()))
            value = float(df[col].iloc[row])
            raise TraceError(path, f"normalised memory {value:g} above 1", line_of(row), name)


def load_google2019(
    path: str | Path, machine_bytes: int, statistic: str = "average", page_cache: bool = False
) -> list[UsageTrace]:
    """instance_usage JSON lines -> one trace per (collection_id, instance_index), in
    ascending key order. Usage is ``<statistic>_usage.memory`` x machine_bytes; the
    VM's memory is the largest ``assigned_memory`` x machine_bytes. With ``page_cache``,
    ``page_cache_memory`` too (a row without it, or with null, has none: protobuf JSON
    leaves zero fields out); otherwise that field is not read."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    if statistic not in ("average", "maximum"):
        raise ValueError(f"statistic must be 'average' or 'maximum', got {statistic!r}")
    path = Path(path)
    check_file(path)
    try:
        table = pj.read_json(gunzipped(path) if path.suffix == ".gz" else path)
    except pa.ArrowException as e:
        raise TraceError(path, f"not JSON lines: {str(e).splitlines()[0]}") from None
    except (OSError, EOFError) as e:  # a .gz that is not gzip, or a truncated one
        raise TraceError(path, f"cannot be read: {str(e).splitlines()[0]}") from None
    usage_col = f"{statistic}_usage"
    for col in ("start_time", "collection_id", "instance_index", usage_col, "assigned_memory"):
        if col not in table.column_names:
            raise TraceError(path, f"no {col!r} field", 1, col)
    try:
        mem = pc.struct_field(table[usage_col], "memory")
    except (pa.ArrowException, KeyError, TypeError):
        raise TraceError(path, f"{usage_col} has no 'memory' field", 1, usage_col) from None
    import pandas as pd

    has_cache = page_cache and "page_cache_memory" in table.column_names
    df = pd.DataFrame(
        {
            "t": table["start_time"].to_pandas(),
            "cid": table["collection_id"].to_pandas(),
            "idx": table["instance_index"].to_pandas(),
            "mem": mem.to_pandas(),
            "assigned": table["assigned_memory"].to_pandas(),
            "cache": table["page_cache_memory"].to_pandas() if has_cache else 0.0,
        }
    )
    line_of = _headless_line(path)
    df["cache"] = df["cache"].fillna(0.0)  # absent: zero
    for col, name in (
        ("t", "start_time"),
        ("mem", f"{usage_col}.memory"),
        ("assigned", "assigned_memory"),
        ("cache", "page_cache_memory"),
    ):
        df[col] = _numeric(path, df[col], name, line_of)
    _check_fractions(path, df, usage_col, line_of)
    traces = []
    for (cid, idx), group in df.groupby(["cid", "idx"], sort=True):
        g = group.sort_values("t", kind="stable")
        t = g["t"].to_numpy() / 1e6
        rows = g.index.to_numpy()
        _ascending(path, t, "start_time", lambda i, rows=rows: line_of(int(rows[i])))
        assigned = float(g["assigned"].max())
        memory = int(assigned * machine_bytes)
        if memory <= 0:
            raise TraceError(
                path, f"instance {cid}/{idx}: assigned_memory is 0", None, "assigned_memory"
            )
        usage = np.minimum(np.round(g["mem"].to_numpy() * machine_bytes), memory).astype(np.int64)
        cache = None
        if has_cache:
            cache = np.round(g["cache"].to_numpy() * machine_bytes).astype(np.int64)
            cache = np.minimum(cache, memory - usage)
        traces.append(
            UsageTrace(
                name=f"{cid}-{idx}",
                source=str(path),
                times_s=t - t[0],
                usage_bytes=usage,
                memory_bytes=memory,
                start_unix_s=None,
                notes=(f"normalised memory scaled to machine_bytes={machine_bytes}",),
                cache_bytes=cache,
            )
        )
    if not traces:
        raise TraceError(path, "no samples", 1)
    return traces


# ---------------------------------------------------------------- Alibaba cluster-trace-v2018


def _read_headless(path: Path, columns: Sequence[str], dtypes: dict):
    import pandas as pd

    check_file(path)
    with path.open("rb") as f:
        first = f.readline(1 << 16).decode("utf-8-sig", errors="replace").rstrip("\r\n")
    fields = first.count(",") + 1
    if fields != len(columns):
        raise TraceError(path, f"{fields} fields on a line, but the columns name {len(columns)}", 1)
    try:
        df = pd.read_csv(path, sep=",", engine="c", header=None, names=list(columns), dtype=dtypes)
    except (pd.errors.ParserError, ValueError) as e:
        raise TraceError(
            path, f"not a headless CSV of {len(columns)} columns: {str(e).splitlines()[0]}"
        ) from None
    if len(df) == 0:
        raise TraceError(path, "no samples", 1)
    return df


def _headless_line(path: Path) -> Callable[[int], int]:
    """Data row -> file line of a headless CSV (blank lines are skipped)."""
    return lambda row: _data_line(path, row, 0)


def _container_sizes(meta_path: Path) -> dict[str, float]:
    """container_meta: each container's largest normalised mem_size (0-100)."""
    cols = ALIBABA_CONTAINER_META_COLUMNS
    meta = _read_headless(meta_path, cols, dict.fromkeys(cols, str))
    size = _numeric(meta_path, meta["mem_size"], "mem_size", _headless_line(meta_path))
    sizes: dict[str, float] = {}
    for cid, s in zip(meta["container_id"].to_numpy(), size, strict=True):
        sizes[cid] = max(sizes.get(cid, 0.0), s)
    return sizes


def _container_memory(sizes: dict, key: str, meta_path, machine_bytes: int) -> int:
    if key not in sizes:
        raise TraceError(meta_path, f"no container_meta row for container {key!r}")
    return int(sizes[key] / 100.0 * machine_bytes)


def load_alibaba2018(
    usage_path: str | Path,
    machine_bytes: int,
    meta_path: str | Path | None = None,
    kind: str = "container",
    columns: Sequence[str] | None = None,
) -> tuple[list[UsageTrace], int]:
    """container_usage (with container_meta for sizes) or machine_usage -> (traces in
    ascending id order, samples dropped as invalid). ``columns`` names the usage file's
    columns in file order (default: the published schema's)."""
    if kind not in ("container", "machine"):
        raise ValueError(f"kind must be 'container' or 'machine', got {kind!r}")
    usage_path = Path(usage_path)
    if columns is None:
        columns = (
            ALIBABA_CONTAINER_USAGE_COLUMNS
            if kind == "container"
            else ALIBABA_MACHINE_USAGE_COLUMNS
        )
    id_col = "container_id" if kind == "container" else "machine_id"
    for need in (id_col, "time_stamp", "mem_util_percent"):
        if need not in columns:
            raise ValueError(f"columns must include {need!r}, got {list(columns)}")
    df = _read_headless(usage_path, columns, {c: str for c in columns})
    line_of = _headless_line(usage_path)
    t = _numeric(usage_path, df["time_stamp"], "time_stamp", line_of)
    mem = _numeric(
        usage_path,
        df["mem_util_percent"].replace("", np.nan).fillna("-1"),
        "mem_util_percent",
        line_of,
    )
    valid = (mem >= 0) & (mem <= 100)
    dropped = int((~valid).sum())
    df = df.assign(t=t, mem=mem, row=np.arange(len(df)))[valid]
    sizes: dict[str, float] = {}
    if kind == "container":
        if meta_path is None:
            raise ValueError("container_usage needs meta_path (container_meta.csv) for sizes")
        meta_path = Path(meta_path)
        sizes = _container_sizes(meta_path)
    traces = []
    for key, group in df.groupby(df[id_col], sort=True):
        g = group.sort_values("t", kind="stable")
        times = g["t"].to_numpy()
        dup = np.diff(times) <= 0
        if dup.any():
            i = int(np.argmax(dup)) + 1
            raise TraceError(
                usage_path,
                f"{id_col} {key}: two samples at time {float(times[i])!r}",
                line_of(int(g["row"].to_numpy()[i])),
                "time_stamp",
            )
        memory = (
            machine_bytes
            if kind == "machine"
            else _container_memory(sizes, str(key), meta_path, machine_bytes)
        )
        if memory <= 0:
            raise TraceError(meta_path or usage_path, f"{id_col} {key}: memory size is 0")
        usage = np.round(g["mem"].to_numpy() / 100.0 * memory).astype(np.int64)
        traces.append(
            UsageTrace(
                name=str(key),
                source=str(usage_path),
                times_s=times - times[0],
                usage_bytes=usage,
                memory_bytes=memory,
                start_unix_s=float(times[0]),
                warnings=(
                    (f"mem_util_percent outside 0..100 dropped: {dropped} samples in the file",)
                    if dropped
                    else ()
                ),
            )
        )
    if not traces:
        raise TraceError(usage_path, "no valid samples (every mem_util_percent outside 0..100)")
    return traces, dropped


# ---------------------------------------------------------------- synthetic traces


def synthetic(
    shape: str,
    seed: int,
    index: int = 0,
    memory_bytes: int = 4 << 30,
    duration_s: int = 86_400,
    interval_s: int = 300,
) -> UsageTrace:
    """A seeded trace in the common schema. Shapes:

    * ``diurnal``: 30-70 % of memory following a day-long sine, with noise;
    * ``bursty``: 20 % baseline with bursts to 60-95 % lasting a few samples;
    * ``step``: levels held for hours, changing at random times;
    * ``high_water_idle``: climbs to ~90 % in the first tenth of the trace (a CI job's
      build), then sits at ~10 % (what the application holds; the rest of the
      high-water mark was freed, and is what reporting can give back).
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if duration_s <= 0 or interval_s <= 0 or duration_s < interval_s:
        raise ValueError(f"need 0 < interval_s <= duration_s, got {interval_s} and {duration_s}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7472, index]))
    n = duration_s // interval_s + 1
    t = np.arange(n, dtype=np.float64) * interval_s
    if shape == "diurnal":
        phase = rng.uniform(0, 2 * math.pi)
        frac = 0.5 + 0.2 * np.sin(2 * math.pi * t / 86_400 + phase) + rng.normal(0, 0.02, n)
    elif shape == "bursty":
        frac = np.full(n, 0.2) + rng.normal(0, 0.01, n)
        i = 0
        while i < n:
            i += int(rng.geometric(1 / 24))
            length = int(rng.integers(1, 6))
            frac[i : i + length] = rng.uniform(0.6, 0.95)
            i += length
    elif shape == "step":
        frac = np.empty(n)
        i = 0
        while i < n:
            length = int(rng.integers(6, 48))
            frac[i : i + length] = rng.uniform(0.1, 0.9)
            i += length
    else:
        climb = max(1, n // 10)
        frac = np.empty(n)
        frac[:climb] = np.linspace(0.05, 0.9, climb)
        frac[climb:] = 0.1 + rng.normal(0, 0.005, n - climb)
    frac = np.clip(frac, 0.0, 1.0)
    return UsageTrace(
        name=f"{shape}-{index:05d}",
        source=f"synthetic:{shape}:{seed}:{index}",
        times_s=t,
        usage_bytes=np.round(frac * memory_bytes).astype(np.int64),
        memory_bytes=memory_bytes,
        notes=(f"synthetic {shape} trace, seed {seed}, index {index}",),
    )


# ---------------------------------------------------------------- directories


def load_bitbrains_dir(path: str | Path, limit: int | None = None) -> list[UsageTrace]:
    """Every VM of a GWA-T-12 directory, in file-name order (at most ``limit``)."""
    files = trace_files(path)
    if limit is not None:
        files = files[:limit]
    return [load_bitbrains(f) for f in files]


__all__ = [
    "FORMATS",
    "MAX_TOTAL_TRACE_BYTES",
    "MAX_TRACE_FILES",
    "MAX_TRACE_FILE_BYTES",
    "SHAPES",
    "TraceError",
    "UsageTrace",
    "load_alibaba2018",
    "load_bitbrains",
    "load_bitbrains_dir",
    "load_google2019",
    "synthetic",
    "trace_file_bytes",
    "trace_files",
    "write_bitbrains",
]
