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

# then one LZ4 frame of a protocol-5 pickle. The number changes with the layout of the
# pickled state (4: allocator links in _row order, held blocks as runs), so an older
# checkpoint is refused by name instead of restoring into state it does not fit.
MAGIC = b"OCSIM-SNAPSHOT-4\n"
_MAGIC_STEM = b"OCSIM-SNAPSHOT-"
# LZ4 (fast mode): ~3 GB/s on guest state, which shrinks ~25x (mostly regular arrays);
# zstd level 1 shrinks it ~90x but at ~1.9 GB/s, and a checkpoint's cost is its time
_CHUNK = 1 << 22  # bytes per decompressed read

_BUILTINS = frozenset(
    {"set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool", "bytes"}
    | {"bytearray", "str", "slice", "range", "object", "NoneType"}
)
# exact (module, name) pairs outside this project a snapshot may name: numpy's array and
# scalar reconstructors, dtypes and bit generators (as their pickles name them), plain
# containers. Nothing else: no dotted names, no module of numpy as a whole.
_ALLOWED = frozenset(
    {
        (mod, name)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {("numpy", name) for name in ("ndarray", "dtype")}
    | {
        ("numpy.dtypes", name)
        for name in (
            "Int8DType",
            "Int16DType",
            "Int32DType",
            "Int64DType",
            "UInt8DType",
            "UInt16DType",
            "UInt32DType",
            "UInt64DType",
            "Float32DType",
            "Float64DType",
            "BoolDType",
            "ObjectDType",
            "BytesDType",
            "StrDType",
        )
    }
    | {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
    | {
        ("numpy.random._pickle", name)
        for name in (
            "__generator_ctor",
            "__bit_generator_ctor",
            "__randomstate_ctor",
        )
    }
    | {("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence")}
    | {("numpy.random._generator", "Generator")}
    | {("numpy.random._pcg64", "PCG64"), ("numpy.random._pcg64", "PCG64DXSM")}
    | {("numpy.random._mt19937", "MT19937"), ("numpy.random._philox", "Philox")}
    | {("numpy.random._sfc64", "SFC64"), ("numpy.random.bit_generator", "SeedSequence")}
    | {("collections", "defaultdict"), ("collections", "OrderedDict"), ("collections", "deque")}
    | {("copyreg", "_reconstructor"), ("copyreg", "__newobj__")}
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
        if "." in name:  # a dotted name walks attributes: os.system is a few steps away
            raise SnapshotError(f"snapshot refers to {module}.{name}, which a snapshot never holds")
        if module == "builtins" and name in _BUILTINS:
            return type(None) if name == "NoneType" else super().find_class(module, name)
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "services" or module.startswith("services."):
            found = super().find_class(module, name)
            # a class defined there, not one a project module merely imported
            if isinstance(found, type) and found.__module__ == module:
                return found
            raise SnapshotError(f"snapshot refers to {module}.{name}, which is not a class of it")
        raise SnapshotError(f"snapshot refers to {module}.{name}, which a snapshot never holds")


def host_part(host_id: int) -> str:
    """The part file name of a host's state in a checkpoint."""
    return f"host-{int(host_id)}.snap"


def shard_part(shard_id: int) -> str:
    """The part file name of a guest shard's state in a checkpoint."""
    return f"shard-{int(shard_id)}.snap"


def dumps(obj: Any) -> bytes:
    """``obj`` as a snapshot: the header, then an LZ4 frame of its pickle."""
    return MAGIC + lz4.frame.compress(pickle.dumps(obj, protocol=5))


def loads(blob: bytes) -> Any:
    """The object of a snapshot (its checksum, if any, checked by the caller)."""
    if not blob.startswith(MAGIC):
        if blob.startswith(_MAGIC_STEM):
            other = bytes(blob[: blob.find(b"\n", 0, 40)]).decode("ascii", "replace")
            raise SnapshotError(
                f"a snapshot of another format ({other!r}); this build reads "
                f"{MAGIC.strip().decode()!r}"
            )
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
    check_name(name)
    path = os.path.join(directory, name)
    tmp = f"{path}.{os.getpid()}.tmp"  # two writers of one name never share a tmp file
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
            check_name(name)
        r, w = os.pipe()
        with contextlib.ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(r)
                os.nice(19)  # the lowest priority: the simulation goes first, writing fills gaps
                try:
                    answer: Any = [vars(write_part(directory, n, obj)) for n, obj in items]
                    code = 0
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    answer = {"error": f"{type(e).__name__}: {e}"}
                os.write(w, json.dumps(answer).encode())
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
            answer = json.loads(b"".join(chunks))
        except ValueError as e:
            raise SnapshotError(f"checkpoint writer {self.pid} failed: {e}") from None
        if isinstance(answer, dict):
            raise SnapshotError(f"checkpoint writer {self.pid} failed: {answer.get('error')}")
        infos = [PartInfo(**d) for d in answer]
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
    check_name(info.name)
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


def check_name(name: str) -> None:
    ok = (
        isinstance(name, str)
        and 0 < len(name) <= 64
        and all(c.isalnum() or c in "-_." for c in name)
        and not name.startswith(".")
    )
    if not ok:
        raise SnapshotError(f"part name {name!r}: not a plain file name")
