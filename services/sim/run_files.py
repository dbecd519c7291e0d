"""Run results on disk: the record of a run is files, never metrics.

``runs/<name>/<run_id>/`` holds ``spec.resolved.yaml``, ``metadata.json``
(versions, wall time, shards: everything that may differ between identical
runs), ``summary.json`` and ``timeseries.parquet`` (both depend on the spec and
seed only). The summary schema is documented in ``docs/results.md``; the names
in both are defined in :mod:`services.sim.result_rows`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml

# One path component a run directory may be built from: what a spec name allows (see
# services/sim/spec.py NAME_PATTERN), a run id, or "sweep-<hash>".
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def results_dir(out_dir: str, *components: str) -> str:
    """``out_dir/<component>/...``, refusing any component that could leave ``out_dir``
    (a separator, ``..``, an absolute path, odd characters): paths are never built
    from unchecked input, even when the spec was validated upstream."""
    for c in components:
        if not isinstance(c, str) or not _COMPONENT.match(c):
            raise ValueError(f"name {c!r}: not a safe results directory name")
    base = os.path.realpath(out_dir)
    path = os.path.realpath(os.path.join(base, *components))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(f"name {'/'.join(components)!r}: leaves the results folder {out_dir!r}")
    return os.path.join(out_dir, *components)


def replace_file(path: str, write: Callable[[str], object]) -> str:
    """Write ``path`` as a new file: ``write(tmp)`` fills a fresh file beside it, which
    then replaces ``path`` in one rename. A reader never sees half a file, a failed write
    (a full disk) leaves the old file as it was, and a symbolic link at ``path`` is
    replaced, never written through (a run directory's files may have been tampered
    with). The new file gets the mode any new file gets (0666 less the umask)."""
    tmp = os.path.join(
        os.path.dirname(path) or ".",
        f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp",
    )
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o666)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    return path


@contextlib.contextmanager
def held(path: str, what: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if need be, never through a link)
    for the ``with`` block: RuntimeError naming ``what`` if another process holds it.
    Two runs of one spec into one OUT, or two sweeps, would write each other's
    checkpoints and results (and take a live run's checkpoint for a stopped one).
    Folders made for the lock alone are removed again if nothing else was written in
    them (a spec refused before it ran leaves no results folder)."""
    import fcntl

    made = _missing_dirs(os.path.dirname(path) or ".")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process holds it
            raise RuntimeError(
                f"{what} is being written by another overcommit process (it holds {path}); "
                "wait for it to end, or give this one another --out"
            ) from None
        except OSError:  # a file system without locks (some NFS): written unlocked
            pass
        yield
    finally:
        if made and os.listdir(made[0]) == [os.path.basename(path)]:
            with contextlib.suppress(OSError):
                os.remove(path)
                for d in made:  # deepest first; stops at the first that is not empty
                    os.rmdir(d)
        os.close(fd)


def _missing_dirs(directory: str) -> list[str]:
    """The folders of ``directory`` that do not exist yet, deepest first."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return missing


def lock_path(directory: str) -> str:
    """The lock file of a run or sweep directory: beside it, hidden."""
    parent, name = os.path.split(os.path.normpath(directory))
    return os.path.join(parent, f".{name}.lock")


def write_text_file(path: str, text: str) -> str:
    """``replace_file`` of UTF-8 text."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return replace_file(path, write)


@dataclass
class RunResult:
    """What ``run_experiment`` returns: the summary, the time series and where they live."""

    summary: dict[str, Any]
    timeseries: pd.DataFrame
    run_dir: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def variants(self) -> list[str]:
        """``run`` and the paired baselines' names, in the time series."""
        return sorted(self.timeseries["variant"].unique(), key=lambda v: (v != "run", v))

    def frame(self, kind: str = "host", variant: str = "run") -> pd.DataFrame:
        """One variant's rows of one kind (``host`` or ``guest_group``), its columns that
        hold values only: the frame to plot (``result.frame("host").plot(x="time_s",
        y="backed_bytes")`` draws the run alone, not the run and a baseline as one line)."""
        if variant not in self.variants:
            raise KeyError(f"variant {variant!r}: this run has {self.variants}")
        if kind not in ("host", "guest_group"):
            raise KeyError(f"kind {kind!r}: host or guest_group")
        ts = self.timeseries
        part = ts[(ts["variant"] == variant) & (ts["kind"] == kind)]
        return part.dropna(axis=1, how="all").reset_index(drop=True)

    def hosts(self, variant: str = "run") -> pd.DataFrame:
        return self.frame("host", variant)

    def guest_groups(self, variant: str = "run") -> pd.DataFrame:
        return self.frame("guest_group", variant)

    def _repr_html_(self) -> str:
        """The headline table in a notebook (the same as the terminal's)."""
        import html

        from .report import summary_table_html

        s = self.summary
        title = f"{s['name']} (run {s['run_id']}, seed {s['seed']}): {self.run_dir}"
        return f"<table><caption>{html.escape(title)}</caption>{summary_table_html(s)}</table>"


def write_run(
    run_dir: str,
    spec_dict: dict[str, Any],
    summary: dict[str, Any],
    ts: pd.DataFrame,
    metadata: dict[str, Any],
) -> None:
    """The run's files, each replaced whole (:func:`replace_file`); ``summary.json`` last,
    so a directory with one is a finished run."""
    os.makedirs(run_dir, exist_ok=True)
    write_text_file(
        os.path.join(run_dir, "spec.resolved.yaml"), yaml.safe_dump(spec_dict, sort_keys=True)
    )
    replace_file(
        os.path.join(run_dir, "timeseries.parquet"), lambda tmp: ts.to_parquet(tmp, index=False)
    )
    write_text_file(
        os.path.join(run_dir, "metadata.json"),
        json.dumps(metadata, indent=2, sort_keys=True) + "\n",
    )
    write_text_file(
        os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n"
    )


def _read_json_object(path: str) -> dict[str, Any]:
    """A JSON object from a run's file; anything else is refused naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a run's JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a run's JSON (a {type(data).__name__}, not an object)")
    return data


def load_run(run_dir: str) -> RunResult:
    """A run's files read back; a file that is not what a run writes is named."""
    summary = _read_json_object(os.path.join(run_dir, "summary.json"))
    meta_path = os.path.join(run_dir, "metadata.json")
    metadata = _read_json_object(meta_path) if os.path.exists(meta_path) else {}
    ts_path = os.path.join(run_dir, "timeseries.parquet")
    try:
        ts = pd.read_parquet(ts_path)
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        raise ValueError(f"{ts_path}: not a run's time series ({str(e).splitlines()[0]})") from None
    return RunResult(summary, ts, run_dir, metadata)
