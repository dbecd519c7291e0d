"""Guest groups that replay traces: their files, their guests, and each guest's workload.

A trace group becomes one guest per trace (a Bitbrains file, a Google instance, an
Alibaba container or machine, or a synthetic index), in a stable order, capped by the
group's ``count``. Each guest's memory is its trace's (rounded up to 4 MiB) unless
the group sets one, in which case the trace's usage is scaled to it.

Paths come from a spec, so they are checked before any file is opened: relative to
the spec's trace root, and when the spec came over the network (``serve``), never
absolute and never outside that root (symlinks resolved).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.guest.core.trace_replay import TraceConfig
from services.units import NS_PER_S, PAGE_SIZE

from .spec import (
    MAX_BLOCK_BYTES,
    MAX_DURATION_NS,
    MAX_GUEST_MEMORY_BYTES,
    MAX_GUESTS,
    MAX_TOTAL_GUEST_MEMORY_BYTES,
    ExperimentSpec,
    GuestGroup,
    SpecError,
)
from .spec_workloads import TraceWorkload
from .trace_files import MAX_TOTAL_TRACE_BYTES, trace_file_bytes
from .traces import (
    TraceError,
    UsageTrace,
    load_alibaba2018,
    load_bitbrains,
    load_google2019,
    synthetic,
    trace_files,
)


def resolve_trace_path(value: str, root: Path | None, absolute_ok: bool, field: str) -> Path:
    """A spec's trace path as a file system path, or SpecError naming ``field``."""
    if root is None:
        raise SpecError(
            [
                (
                    field,
                    "trace files need a trace directory (run from a spec file, or serve --trace-dir)",
                )
            ]
        )
    p = Path(value)
    if not absolute_ok:
        if p.is_absolute() or ".." in p.parts:
            raise SpecError([(field, f"must be relative to the trace directory, got {value!r}")])
        full = (root / p).resolve()
        if not full.is_relative_to(root.resolve()):
            raise SpecError([(field, f"leaves the trace directory: {value!r}")])
        return full
    return (root / p).resolve()


class _ReadBudget:
    """What is left of MAX_TOTAL_TRACE_BYTES for one spec's trace files."""

    def __init__(self) -> None:
        self.left = MAX_TOTAL_TRACE_BYTES

    def take(self, files: list[Path], field: str) -> None:
        size = trace_file_bytes(files, cap=self.left)
        if size > self.left:
            raise SpecError(
                [
                    (
                        field,
                        f"{len(files)} trace file(s) of more than {self.left} bytes (a .gz "
                        f"file counted decompressed); the spec's trace files may hold "
                        f"{MAX_TOTAL_TRACE_BYTES} bytes in all (4 GiB), and {self.left} are "
                        "left",
                    )
                ]
            )
        self.left -= size


def _load(
    w: TraceWorkload, spec: ExperimentSpec, field: str, limit: int | None, budget: _ReadBudget
) -> list[UsageTrace]:
    root, ok = spec.trace_root, spec.trace_absolute_ok
    if w.format == "synthetic":
        raise AssertionError("synthetic traces are generated per guest")
    assert w.path is not None  # TraceWorkload requires it for files
    path = resolve_trace_path(w.path, root, ok, f"{field}.path")
    if w.format == "bitbrains":
        files = trace_files(path)[:limit]
        if not ok and root is not None:  # a served spec: no file may lead out, symlinks neither
            top = root.resolve()
            for f in files:
                if not f.resolve().is_relative_to(top):
                    raise SpecError([(f"{field}.path", f"{f.name} leaves the trace directory")])
        budget.take(files, f"{field}.path")
        return [load_bitbrains(f) for f in files]
    assert w.machine_memory is not None  # required for normalised formats
    if w.format == "google2019":
        budget.take([path], f"{field}.path")
        return load_google2019(
            path, w.machine_memory, w.statistic, page_cache=w.page_cache == "trace"
        )[:limit]
    meta = None
    if w.meta_path is not None:
        meta = resolve_trace_path(w.meta_path, root, ok, f"{field}.meta_path")
        budget.take([meta], f"{field}.meta_path")
    budget.take([path], f"{field}.path")
    traces, _dropped = load_alibaba2018(path, w.machine_memory, meta, w.table, w.columns)
    return traces[:limit]


def _trace_error(spec: ExperimentSpec, w: TraceWorkload, field: str, e: TraceError):
    """(field, message) for a bad trace file: meta_path's file under meta_path; for a
    served spec, paths relative to the trace directory (no server paths in messages)."""
    message = str(e)
    meta = w.meta_path is not None and Path(e.path).name == Path(w.meta_path).name
    if not spec.trace_absolute_ok and spec.trace_root is not None:
        message = message.replace(str(spec.trace_root.resolve()) + "/", "")
    return (f"{field}.meta_path" if meta else f"{field}.path", message)


def group_traces(spec: ExperimentSpec) -> dict[int, list[UsageTrace]]:
    """Every trace group's traces (index of the group -> traces, one per guest).
    Raises SpecError naming the group's field for a bad path, file or total."""
    out: dict[int, list[UsageTrace]] = {}
    budget = _ReadBudget()
    total_guests = 0
    total_bytes = 0
    for gi, group in enumerate(spec.guest_groups):
        if not group.is_trace:
            total_guests += group.declared_count
            total_bytes += group.declared_count * (group.memory or 0)
            continue
        w = group.workload
        assert isinstance(w, TraceWorkload)
        field = f"guest_groups.{gi}.workload"
        if w.format == "synthetic":
            assert group.memory is not None  # GuestGroup requires it for synthetic traces
            n = group.declared_count
            traces = [
                synthetic(
                    w.shape,
                    spec.seed,
                    i,
                    group.memory,
                    max(1, w.trace_duration // NS_PER_S),
                    max(1, w.trace_interval // NS_PER_S),
                )
                for i in range(n)
            ]
        else:
            try:
                traces = _load(w, spec, field, group.count, budget)
            except TraceError as e:
                raise SpecError([_trace_error(spec, w, field, e)]) from None
            if w.page_cache == "trace" and any(t.cache_bytes is None for t in traces):
                raise SpecError(
                    [(f"{field}.page_cache", "'trace': the file has no page_cache_memory field")]
                )
            _check_span(traces, w, field)
        out[gi] = traces
        total_guests += len(traces)
        total_bytes += sum(guest_memory(group, t, f"guest_groups.{gi}") for t in traces)
    if total_guests > MAX_GUESTS:
        raise SpecError([("guest_groups", f"{total_guests} guests in all, over {MAX_GUESTS}")])
    if total_bytes > MAX_TOTAL_GUEST_MEMORY_BYTES:
        raise SpecError(
            [("guest_groups", f"{total_bytes} bytes of guest memory in all, over the bound")]
        )
    return out


def _check_span(traces: list[UsageTrace], w: TraceWorkload, field: str) -> None:
    """Every sample must fall within 30 simulated days of its trace's first at time_scale
    (a corrupt timestamp far in the future would otherwise overflow simulated time)."""
    limit_s = MAX_DURATION_NS / NS_PER_S * w.time_scale  # trace seconds
    for t in traces:
        if len(t) and not float(t.times_s[-1]) <= limit_s:
            i = int(np.argmax(~(t.times_s <= limit_s)))
            raise SpecError(
                [
                    (
                        f"{field}.path",
                        f"trace {t.name} ({Path(t.source).name}): sample {i + 1} is "
                        f"{float(t.times_s[i]):.0f} s after the first, over 30 simulated days "
                        f"at time_scale {w.time_scale:g} (a corrupt timestamp?)",
                    )
                ]
            )


def guest_memory(group: GuestGroup, trace: UsageTrace | None, field: str = "guest_groups") -> int:
    """A guest's RAM: the group's, or its trace's rounded up to whole 4 MiB blocks."""
    if group.memory is not None or trace is None:
        assert group.memory is not None
        return group.memory
    size = -(-trace.memory_bytes // MAX_BLOCK_BYTES) * MAX_BLOCK_BYTES
    if size > MAX_GUEST_MEMORY_BYTES:
        raise SpecError(
            [(field, f"trace {trace.name} ({trace.source}): VM of {size} bytes, over 1 TiB")]
        )
    return size


def trace_config(
    group: GuestGroup, trace: UsageTrace, memory: int, start_delay_ns: int = 0
) -> TraceConfig:
    """The guest core's replay of ``trace`` in a guest of ``memory`` bytes."""
    w = group.workload
    assert isinstance(w, TraceWorkload)
    times_ns = np.round(trace.times_s * (NS_PER_S / w.time_scale)).astype(np.int64)
    keep = np.concatenate((np.diff(times_ns) > 0, [True]))  # samples < 1 ns apart: the last
    scale = memory / trace.memory_bytes if group.memory is not None else 1.0
    pages = np.minimum(np.floor(trace.usage_bytes * scale / PAGE_SIZE), memory // PAGE_SIZE)
    kwargs: dict = {}
    if w.page_cache == "trace":  # the trace's own page cache, beside its usage
        assert trace.cache_bytes is not None  # group_traces checked
        cache = np.floor(trace.cache_bytes * scale / PAGE_SIZE)
        kwargs["cache_pages"] = np.minimum(cache, memory // PAGE_SIZE - pages).astype(np.int64)[
            keep
        ]
    elif w.page_cache is not None:  # that share of each sample is page cache
        cache = np.floor(pages * w.page_cache)
        kwargs["cache_pages"] = cache.astype(np.int64)[keep]
        pages = pages - cache
    if w.grow_rate is not None:
        kwargs["grow_bytes_per_s"] = w.grow_rate
    if w.free_rate is not None:
        kwargs["free_bytes_per_s"] = w.free_rate
    return TraceConfig(
        times_ns=times_ns[keep],
        target_pages=pages.astype(np.int64)[keep],
        thp=w.thp,
        start_delay_ns=start_delay_ns,
        name=trace.name,
        **kwargs,
    )


def trace_digests(guests) -> dict[str, dict[str, object]]:
    """Per trace group: how many trace files its guests replay and a SHA-256 over their
    contents (in guest order), for a run's metadata: the run id hashes the spec, not the
    files it names, so a changed file shows here."""
    import hashlib

    out: dict[str, dict[str, object]] = {}
    seen: dict[str, list[str]] = {}
    for g in guests:
        if g.trace is not None and not g.trace.source.startswith("synthetic:"):
            files = seen.setdefault(g.group.name, [])
            if g.trace.source not in files:
                files.append(g.trace.source)
    for name, files in seen.items():
        h = hashlib.sha256()
        for f in files:
            h.update(Path(f).name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(chunk)
        out[name] = {"files": len(files), "sha256": h.hexdigest()}
    return out
