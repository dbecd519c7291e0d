"""State snapshots: one entity's state (a host's epoch barrier, a guest shard) as a file and back.

A coordinated checkpoint (:mod:`services.sim.checkpoint`) asks every host and
every shard to write its state at the same sample boundary; each writes one
*part* file here and reports its size and SHA-256, which the coordinator's
manifest records. Reading a part checks both before anything is decoded, so a
truncated, corrupted or swapped file is refused with :class:`SnapshotError`
and never loaded.

The encoding is pickle (protocol 5: numpy arrays are written as raw buffers)
streamed through LZ4 into the file, read back through an unpickler that resolves only classes of this project,
numpy's array reconstructors and plain builtin containers: a part file is never
a way to run arbitrary code, even one whose checksum was forged to match.
Writes are atomic: a temporary file in the same directory, fsync, rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import select
import signal
import time
from dataclasses import dataclass
from typing import Any

import lz4.frame  # type: ignore[import-untyped]  # no stubs published

MAGIC = b"OCSIM-SNAPSHOT-3\n"  # then one LZ4 frame of a protocol-5 pickle
# LZ4 (fast mode): ~3 GB/s on guest state, which shrinks ~25x (mostly regular arrays);
# zstd level 1 shrinks it ~90x but at ~1.9 GB/s, and a checkpoint's cost is its time
_CHUNK = 1 << 22  # bytes per decompressed read

_BUILTINS = frozenset(
    {"set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool", "bytes"}
    | {"bytearray", "str", "slice", "range", "object", "NoneType"}
)
_NUMPY_MODULES = frozenset(
    {
        "numpy",
        "numpy.core.multiarray",
        "numpy._core.multiarray",
        "numpy.core.numeric",
        "numpy._core.numeric",
        "numpy.random._pickle",
        "numpy.random.bit_generator",
        "numpy.random._generator",
        "numpy.random._pcg64",
        "numpy.random._philox",
        "numpy.random._mt19937",
        "numpy.random._sfc64",
        "numpy.dtypes",
    }
)
_OTHER = frozenset(
    {
        ("collections", "defaultdict"),
        ("collections", "OrderedDict"),
        ("collections", "deque"),
        ("copyreg", "_reconstructor"),
        ("copyreg", "__newobj__"),
        ("enum", "Enum"),
    }
)


class SnapshotError(ValueError):
    """A part file that cannot be trusted: missing, truncated, corrupted or foreign."""


@dataclass(frozen=True)
class PartInfo:
    """What the manifest records of one part file."""

    name: str
    size: int
    sha256: str


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module == "builtins" and name in _BUILTINS)
            or module in _NUMPY_MODULES
            or (module, name) in _OTHER
            or module == "services"
            or module.startswith("services.")
        )
        if not allowed:
            raise SnapshotError(f"snapshot refers to {module}.{name}, which a snapshot never holds")
        found = super().find_class(module, name)
        if module.startswith("services") and not isinstance(found, type):
            raise SnapshotError(f"snapshot refers to {module}.{name}, which is not a class")
        if module == "builtins" and name == "NoneType":
            return type(None)
        return found


def host_part(host_id: int) -> str:
    """The part file name of a host's state in a checkpoint."""
    return f"host-{int(host_id)}.snap"


def shard_part(shard_id: int) -> str:
    """The part file name of a guest shard's state in a checkpoint."""
    return f"shard-{int(shard_id)}.snap"


def dumps(obj: Any) -> bytes:
    """``obj`` as a snapshot: the header, then a zstd frame of its pickle."""
    return MAGIC + lz4.frame.compress(pickle.dumps(obj, protocol=5))


def loads(blob: bytes) -> Any:
    """The object of a snapshot (its checksum, if any, checked by the caller)."""
    if not blob.startswith(MAGIC):
        raise SnapshotError("not a snapshot (its header is missing)")
    try:
        raw = io.BytesIO(memoryview(blob)[len(MAGIC) :])
        with lz4.frame.LZ4FrameFile(raw, mode="rb") as frame:
            return _Unpickler(io.BufferedReader(frame, _CHUNK)).load()
    except SnapshotError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or mangled stream raises many types
        raise SnapshotError(f"snapshot does not decode: {type(e).__name__}: {e}") from None


class _HashingFile(io.RawIOBase):
    """Writes through to a file, counting and hashing what passes."""

    def __init__(self, f: Any):
        self.f, self.size, self.h = f, 0, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b)
        self.f.write(view)
        self.h.update(view)
        self.size += view.nbytes
        return view.nbytes


def write_part(directory: str, name: str, obj: Any) -> PartInfo:
    """Write ``obj`` to ``directory/name`` atomically; return its size and digest.

    The pickle streams through the compressor into the file (numpy arrays are never
    copied whole). ``name`` is a plain file name made by the caller from fixed words
    and integers."""
    _check_name(name)
    path = os.path.join(directory, name)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        out = _HashingFile(f)
        out.write(MAGIC)
        with lz4.frame.LZ4FrameFile(out, mode="wb") as z:
            pickle.dump(obj, z, protocol=5)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return PartInfo(name, out.size, out.h.hexdigest())


class BackgroundWrite:
    """Parts written by a forked copy of this process, so the caller goes on at once.

    The child sees the objects as they were at the fork (copy-on-write) and writes
    them with :func:`write_part`; :meth:`result` waits for it and returns the parts.
    ``locks`` (the objects' own locks) are held across the fork, so no other thread
    holds one in the child, which has no other threads. The child touches nothing but
    the objects and the files, and leaves with ``os._exit``."""

    def __init__(self, directory: str, items: list[tuple[str, Any]], locks: list[Any]):
        for name, _ in items:
            _check_name(name)
        r, w = os.pipe()
        with contextlib.ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(r)
                infos = [vars(write_part(directory, n, obj)) for n, obj in items]
                os.write(w, json.dumps(infos).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self._r = pid, r

    def result(self, timeout_s: float = 3600.0) -> list[PartInfo]:
        """The parts, once the child has written them; SnapshotError if it failed."""
        chunks, deadline = [], time.monotonic() + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    os.kill(self.pid, signal.SIGKILL)
                    raise SnapshotError(
                        f"checkpoint writer {self.pid}: no answer in {timeout_s:g} s"
                    )
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self._r)
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # reaped already (a host process ignoring SIGCHLD)
                status = 0
        try:  # the child writes its answer last, whole, or nothing
            infos = [PartInfo(**d) for d in json.loads(b"".join(chunks))]
        except (ValueError, TypeError) as e:
            raise SnapshotError(f"checkpoint writer {self.pid} failed: {e}") from None
        if status != 0 or not infos:
            raise SnapshotError(f"checkpoint writer {self.pid} failed (wait status {status})")
        return infos


class CheckpointWriter:
    """An actor's checkpoint in the background: :meth:`begin` forks a writer
    (:class:`BackgroundWrite`), :meth:`end` collects its parts. One at a time: a begin
    first waits for an abandoned write, whose parts are not used."""

    def __init__(self) -> None:
        self._writing: BackgroundWrite | None = None

    def begin(self, directory: str, items: list[tuple[str, Any]], locks: list[Any]) -> None:
        if self._writing is not None:
            with contextlib.suppress(Exception):
                self.end()
        self._writing = BackgroundWrite(directory, items, locks)

    def end(self) -> list[PartInfo]:
        writing, self._writing = self._writing, None
        if writing is None:
            raise RuntimeError("no checkpoint is being written")
        return writing.result()


def read_part(directory: str, info: PartInfo) -> Any:
    """The object in ``directory/info.name``, after its size and digest are checked."""
    _check_name(info.name)
    path = os.path.join(directory, info.name)
    try:
        with open(path, "rb") as f:
            blob = f.read(info.size + 1)
    except OSError as e:
        raise SnapshotError(f"{path}: cannot be read ({e.strerror})") from None
    if len(blob) != info.size:
        raise SnapshotError(
            f"{path}: {len(blob)} bytes{'+' if len(blob) > info.size else ''}, "
            f"the manifest says {info.size} (truncated or replaced)"
        )
    digest = hashlib.sha256(blob).hexdigest()
    if digest != info.sha256:
        raise SnapshotError(f"{path}: checksum {digest[:16]}… is not the manifest's (corrupted)")
    return loads(blob)


def _check_name(name: str) -> None:
    ok = (
        isinstance(name, str)
        and 0 < len(name) <= 64
        and all(c.isalnum() or c in "-_." for c in name)
        and not name.startswith(".")
    )
    if not ok:
        raise SnapshotError(f"part name {name!r}: not a plain file name")
