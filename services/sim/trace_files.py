"""Trace files on disk, before any format reads them: finding a directory's files,
checking each one, bounding what a spec reads in all, and decompressing ``.gz`` files
within those bounds. The format readers are in :mod:`services.sim.traces`."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

MAX_TRACE_FILES = 100_000  # files one directory may hold (a spec bounds guests separately)
MAX_TRACE_FILE_BYTES = 1 << 30  # one trace file
MAX_TOTAL_TRACE_BYTES = 4 << 30  # every trace file one spec reads, summed before any is read


class TraceError(ValueError):
    """A trace file that cannot be used: names the file, and the line and column if known."""

    def __init__(self, path: str | Path, message: str, line: int | None = None, column=None):
        where = str(path)
        if line is not None:
            where += f":{line}"
        if column is not None:
            where += f": column {column!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.column = str(path), line, column


def check_file(path: Path) -> None:
    if path.is_dir():
        raise TraceError(path, "is a folder; this format reads one file (name it)")
    if not path.is_file():
        raise TraceError(path, "no such file")
    size = path.stat().st_size
    if size == 0:
        raise TraceError(path, "empty file")
    if size > MAX_TRACE_FILE_BYTES:
        raise TraceError(path, f"{size} bytes, more than the limit of {MAX_TRACE_FILE_BYTES}")


def _gzip_chunks(path: Path) -> Iterator[bytes]:
    """A gzip file's decompressed bytes, in chunks; TraceError once they pass
    MAX_TRACE_FILE_BYTES (a small gzip can expand a thousandfold), or if the file is not
    gzip or is truncated."""
    size = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                if size > MAX_TRACE_FILE_BYTES:
                    raise TraceError(
                        path, f"more than {MAX_TRACE_FILE_BYTES} bytes once decompressed"
                    )
                yield chunk
    except (OSError, EOFError) as e:  # not gzip, or truncated
        raise TraceError(path, f"cannot be read: {str(e).splitlines()[0]}") from None


def gunzipped(path: Path) -> io.BytesIO:
    """A .gz trace decompressed in memory (within MAX_TRACE_FILE_BYTES)."""
    out = io.BytesIO()
    for chunk in _gzip_chunks(path):
        out.write(chunk)
    out.seek(0)
    return out


def trace_files(path: str | Path, pattern: str = "*.csv") -> list[Path]:
    """The trace files of a directory (sorted by name: a stable guest order), or [path]."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TraceError(path, "no such file or directory")
    files = sorted(p for p in path.glob(pattern) if p.is_file())
    if not files:
        raise TraceError(path, f"no {pattern} files in the directory")
    if len(files) > MAX_TRACE_FILES:
        raise TraceError(path, f"{len(files)} files, more than the limit of {MAX_TRACE_FILES}")
    return files


def trace_file_bytes(files: list[Path], cap: int | None = None) -> int:
    """The bytes ``files`` hold, summed before any is read so that a spec's total can be
    bounded first: a file's size on disk, or a ``.gz`` file's size once decompressed
    (counted as it streams, never held; a small gzip can expand a thousandfold). Each
    file is checked as the loaders do. Counting stops once the sum passes ``cap``."""
    total = 0
    for f in files:
        check_file(f)
        if f.suffix == ".gz":
            left = MAX_TRACE_FILE_BYTES if cap is None else min(MAX_TRACE_FILE_BYTES, cap - total)
            total += _gzip_size(f, left)
        else:
            total += f.stat().st_size
        if cap is not None and total > cap:
            break
    return total


def _gzip_size(path: Path, cap: int) -> int:
    """A gzip file's decompressed size, counted as it streams (never held); counting
    stops once it passes ``cap``."""
    size = 0
    for chunk in _gzip_chunks(path):
        size += len(chunk)
        if size > cap:
            break
    return size
