"""Coordinated checkpoints of a run: every host, every shard and the coordinator at one boundary.

A run's checkpoint lives in ``RUN_DIR/checkpoint/``:

* ``manifest.json``: what the checkpoint is (format, run id, the SHA-256 of the
  whole resolved spec and the spec itself, the trace files' digests, the
  simulated time of each variant) and, for each part file, its size and SHA-256;
  the manifest carries a digest of its own contents;
* ``<tag>/<variant>/host-<id>.snap`` and ``shard-<id>.snap``: one part per host
  and per guest shard (whatever the actor grouping), written by the process that
  holds it (:mod:`services.protocol.snapshot`);
* ``<tag>/coordinator.snap``: each variant's coordinator state (where it
  stands, its rows so far) and the stats of the variants already finished.

Every part is written atomically (temporary file, fsync, rename) before the
manifest, which is replaced atomically last; the previous checkpoint's parts are
removed only then. A process killed at any moment therefore leaves the previous
checkpoint or the new one, whole. Loading checks the manifest's own digest, then
every part's size and digest before decoding it: a truncated, corrupted or
foreign checkpoint is refused with :class:`CheckpointError`, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.protocol.snapshot import (
    PartInfo,
    SnapshotError,
    check_name,
    read_part,
    write_part,
)
from services.units import NS_PER_S

from .spec import ExperimentSpec, SpecError, parse_spec, with_trace_root

FORMAT = "overcommit-checkpoint/1"
CHECKPOINT_DIR = "checkpoint"
# one checkpoint's directory: t<time ns, 20 digits>-<16 hex digits> (Checkpoints.begin)
_TAG = re.compile(r"^t\d{20}-[0-9a-f]{16}$")
MANIFEST = "manifest.json"
COORDINATOR_PART = "coordinator.snap"
MAX_SHARDS = 4096
MAX_MANIFEST_BYTES = 1 << 24  # a manifest lists one part per host and shard: far below this
VARIANTS = ("run", "reporting_off")  # the variant directories a checkpoint may hold


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupted, or of another run."""


@dataclass
class Finished:
    """A variant that ran to its end before the checkpoint: its rows and stats."""

    rows: list[dict[str, Any]]
    stats: dict[str, Any]


@dataclass
class Loaded:
    """A checkpoint read back: the spec it belongs to and each variant's state."""

    spec: ExperimentSpec
    run_dir: str
    directory: str  # the tag directory holding the parts
    shards: int  # guest shards of the checkpointed simulations
    time_ns: dict[str, int]  # variant -> simulated time of its state
    finished: dict[str, Finished] = field(default_factory=dict)
    running: dict[str, dict[str, Any]] = field(default_factory=dict)  # coordinator states
    parts: dict[str, list[PartInfo]] = field(default_factory=dict)  # variant -> its parts
    traces: dict[str, Any] = field(default_factory=dict)

    def variant_dir(self, variant: str) -> str:
        return os.path.join(self.directory, variant)

    def restore_args(self, variant: str) -> tuple[str, list[PartInfo], dict[str, Any]]:
        """What ``Simulation.restore`` takes to roll ``variant`` back to this checkpoint."""
        return (
            os.path.abspath(self.variant_dir(variant)),
            self.parts[variant],
            self.running[variant],
        )


def _digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_or_copy(src: str, dst: str) -> None:
    """A part of the previous checkpoint into the new one: a hard link (no copy) where
    the file system allows, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise CheckpointError(f"variant {variant!r}: a checkpoint holds only {list(VARIANTS)}")
    return variant


class Checkpoints:
    """Writes the coordinated checkpoints of one run into ``run_dir/checkpoint``."""

    def __init__(self, spec: ExperimentSpec, run_dir: str, traces: Mapping[str, Any], shards: int):
        self.spec = spec
        self.shards = shards  # a restore needs as many shards (one part each)
        self.root = os.path.join(run_dir, CHECKPOINT_DIR)
        self.traces = dict(traces)
        self.saved = 0  # checkpoints written by this process
        self.last_bytes = 0  # size of the last one (parts and coordinator)
        self.wall_s = 0.0  # wall seconds spent writing (metadata)
        # variant -> what Simulation.restore needs to roll back to the last checkpoint
        self.last: dict[str, tuple[str, list[PartInfo], dict[str, Any]]] = {}
        self._pending: tuple | None = None  # a begun checkpoint (begin, then commit)
        self._check_root()  # refused before anything runs

    @property
    def pending(self) -> bool:
        """A checkpoint is begun and not yet committed."""
        return self._pending is not None

    def save(
        self,
        running: Mapping[str, Any],
        finished: Mapping[str, Finished],
        pending: Mapping[str, tuple[str, list[PartInfo], dict[str, Any]]] | None = None,
    ) -> str:
        """Checkpoint now and wait until it is on disk (:meth:`begin`, :meth:`commit`)."""
        self.begin(running, finished, pending)
        return self.commit()

    def begin(
        self,
        running: Mapping[str, Any],
        finished: Mapping[str, Finished],
        pending: Mapping[str, tuple[str, list[PartInfo], dict[str, Any]]] | None = None,
    ) -> None:
        """Start a checkpoint of the simulations in ``running`` (variant -> Simulation,
        all at a sample boundary) and the variants already ``finished``; ``pending``:
        variants of a resumed checkpoint not started again yet (their parts are linked
        into the new checkpoint, so it stays whole). The actors may still be writing
        when this returns; :meth:`commit` waits for them and makes it the last one."""
        if self._pending is not None:
            raise RuntimeError("a checkpoint is already being written: commit or abandon it")
        wall0 = time.perf_counter()
        self._check_root()
        os.makedirs(self.root, exist_ok=True)
        times = {v: sim.now_ns for v, sim in running.items()}
        # a name never used before (a rollback reaches the same boundary again, and an
        # abandoned checkpoint's writers may still be writing into theirs)
        tag = f"t{max(times.values(), default=0):020d}-{uuid.uuid4().hex[:16]}"
        tag_dir = os.path.join(self.root, tag)
        os.makedirs(tag_dir)  # fails rather than reuse a directory
        started = {}
        for variant, sim in running.items():
            vdir = os.path.abspath(os.path.join(tag_dir, _check_variant(variant)))
            os.makedirs(vdir)
            try:
                started[variant] = (vdir, sim, sim.checkpoint_begin(vdir))
            except Exception as e:
                e.variant = variant  # type: ignore[attr-defined]  # which simulation failed
                self._pending = (tag, tag_dir, started, {}, {})
                self.abandon()
                raise
        linked = {}
        for variant, (src, src_parts, state) in (pending or {}).items():
            vdir = os.path.abspath(os.path.join(tag_dir, _check_variant(variant)))
            os.makedirs(vdir)
            for p in src_parts:
                _link_or_copy(os.path.join(src, p.name), os.path.join(vdir, p.name))
            _fsync_dir(vdir)
            linked[variant] = (vdir, list(src_parts), state)
        self._pending = (tag, tag_dir, started, linked, dict(finished))
        self.wall_s += time.perf_counter() - wall0

    def _check_root(self) -> None:
        """The checkpoint directory must be a plain directory of the run (or not exist
        yet): the older checkpoints in it are deleted, so a link to elsewhere would make
        a run delete files it never wrote."""
        if os.path.islink(self.root) or (
            os.path.lexists(self.root) and not os.path.isdir(self.root)
        ):
            raise CheckpointError(
                f"{self.root}: not a directory of this run (a link or a file); "
                "move it away to checkpoint this run"
            )

    def abandon(self) -> None:
        """Drop a begun checkpoint (an actor was lost: its writers' parts are not used)."""
        if self._pending is not None:
            shutil.rmtree(self._pending[1], ignore_errors=True)
            self._pending = None

    def commit(self) -> str:
        """Wait for the begun checkpoint's parts, then write the coordinator's part and
        the manifest: it is the last checkpoint from now on. Returns the manifest's path."""
        if self._pending is None:
            raise RuntimeError("no checkpoint is being written")
        wall0 = time.perf_counter()
        tag, tag_dir, started, linked, finished = self._pending
        last = {}
        try:
            for variant, (vdir, sim, state) in started.items():
                try:
                    written = sim.checkpoint_end()
                except Exception as e:
                    e.variant = variant  # type: ignore[attr-defined]
                    raise
                _fsync_dir(vdir)
                last[variant] = (vdir, list(written), state)
        except Exception:
            self.abandon()
            raise
        self._pending = None
        last.update(linked)
        parts: dict[str, list[dict[str, Any]]] = {}
        coordinator: dict[str, Any] = {"running": {}, "finished": {}}
        times: dict[str, int] = {}
        for variant, (_, written, state) in last.items():
            coordinator["running"][variant] = state
            parts[variant] = [vars(p) for p in written]
            times[variant] = state["now_ns"]
        for variant, done in finished.items():
            coordinator["finished"][_check_variant(variant)] = {
                "rows": done.rows,
                "stats": done.stats,
            }
            times[variant] = self.spec.duration
        coord = write_part(tag_dir, COORDINATOR_PART, coordinator)
        _fsync_dir(tag_dir)
        path = self._write_manifest(tag, parts, times, coord)
        self.last = last
        self.saved += 1
        self.last_bytes = coord.size + sum(p["size"] for ps in parts.values() for p in ps)
        self.wall_s += time.perf_counter() - wall0
        return path

    def _write_manifest(
        self, tag: str, parts: dict[str, Any], times: dict[str, int], coord: PartInfo
    ) -> str:
        """Replace the manifest atomically, then remove the older checkpoints' parts."""
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "name": self.spec.name,
            "run_id": self.spec.run_id(),
            "spec_sha256": self.spec.spec_sha256(),
            "spec": self.spec.resolved_dict(),
            "trace_root": None if self.spec.trace_root is None else str(self.spec.trace_root),
            "trace_absolute_ok": self.spec.trace_absolute_ok,
            "traces": self.traces,
            "tag": tag,
            "shards": self.shards,
            "time_ns": times,
            "parts": parts,
            "coordinator": vars(coord),
            "created_unix": time.time(),  # metadata
        }
        manifest["manifest_sha256"] = _digest(manifest)
        path = os.path.join(self.root, MANIFEST)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.root)
        for entry in os.listdir(self.root):  # the older checkpoints' parts, now unreferenced
            if entry == tag or not _TAG.match(entry):  # only what a checkpoint writes
                continue
            target = os.path.join(self.root, entry)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
        return path


def manifest_path(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_DIR, MANIFEST)


def read_manifest(run_dir: str) -> dict[str, Any]:
    """The manifest of ``run_dir``'s checkpoint, its format and digest checked."""
    path = manifest_path(run_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir}: no checkpoint ({path} does not exist)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{path}: over {MAX_MANIFEST_BYTES} bytes, not a manifest")
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not JSON ({e}); truncated or corrupted") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {FORMAT!r}")
    if manifest.get("manifest_sha256") != _digest(manifest):
        raise CheckpointError(f"{path}: its contents do not match its manifest_sha256 (corrupted)")
    return manifest


def load(run_dir: str, spec: ExperimentSpec | None = None, dir_name: str | None = None) -> Loaded:
    """Read and check ``run_dir``'s checkpoint. ``spec`` (optional): the spec the caller
    means to resume, refused unless it is the checkpoint's (same resolved spec).
    ``dir_name``: the name ``run_dir`` must have (default: the run id; serve: the
    experiment id)."""
    m = read_manifest(run_dir)
    path = manifest_path(run_dir)
    try:
        saved = with_trace_root(
            parse_spec(m["spec"]),
            None if m.get("trace_root") is None else Path(m["trace_root"]),
            absolute_ok=bool(m.get("trace_absolute_ok")),
        )
    except SpecError as e:
        raise CheckpointError(f"{path}: its spec no longer validates: {e}") from None
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: field {e} is missing or malformed") from None
    if saved.spec_sha256() != m.get("spec_sha256"):
        raise CheckpointError(f"{path}: spec_sha256 does not match the spec it holds")
    if spec is not None and spec.spec_sha256() != saved.spec_sha256():
        raise CheckpointError(
            f"{path}: a checkpoint of another spec (run {m.get('run_id')} of {m.get('name')!r}; "
            f"the spec given is run {spec.run_id()} of {spec.name!r})"
        )
    expected = dir_name or saved.run_id()
    if os.path.basename(os.path.normpath(run_dir)) != expected:
        raise CheckpointError(
            f"{path}: a checkpoint of {expected}, found in {run_dir!r} (a foreign "
            "checkpoint copied in?)"
        )
    tag = m.get("tag")
    if not isinstance(tag, str) or not tag or "/" in tag or tag.startswith("."):
        raise CheckpointError(f"{path}: tag {tag!r} is not a checkpoint directory name")
    directory = os.path.join(run_dir, CHECKPOINT_DIR, tag)
    try:
        coord = read_part(directory, PartInfo(**m["coordinator"]))
        parts = {
            _check_variant(v): [_checked(PartInfo(**p)) for p in ps] for v, ps in m["parts"].items()
        }
        times = {_check_variant(v): int(t) for v, t in m["time_ns"].items()}
        shards = int(m["shards"])
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"shards={shards}")
    except SnapshotError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{path}: a malformed entry ({type(e).__name__}: {e})") from None
    for variant, ps in parts.items():  # every part is checked before any is restored
        for p in ps:
            try:
                _verify(os.path.join(directory, variant), p)
            except SnapshotError as e:
                raise CheckpointError(f"{path}: {e}") from None
    finished, running = _coordinator(path, coord, parts)
    return Loaded(
        spec=saved,
        run_dir=run_dir,
        directory=directory,
        shards=shards,
        time_ns=times,
        finished=finished,
        running=running,
        parts=parts,
        traces=dict(m.get("traces") or {}),
    )


def _coordinator(path: str, coord: Any, parts: dict[str, list[PartInfo]]):
    """The coordinator part's finished and running variants, checked against the parts."""
    try:
        finished = {
            _check_variant(v): Finished(list(d["rows"]), dict(d["stats"]))
            for v, d in coord["finished"].items()
        }
        running = {_check_variant(v): dict(st) for v, st in coord["running"].items()}
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{path}: a malformed coordinator part ({e})") from None
    if set(running) != set(parts) or any(len(ps) < 2 for ps in parts.values()):
        raise CheckpointError(f"{path}: the parts do not cover the variants it holds")
    return finished, running


def _checked(info: PartInfo) -> PartInfo:
    """A manifest's part entry, its name a plain file name (SnapshotError if not)."""
    check_name(info.name)
    if not isinstance(info.size, int) or not isinstance(info.sha256, str):
        raise SnapshotError(f"part {info.name!r}: size and sha256 must be an integer and text")
    return info


def _verify(directory: str, info: PartInfo) -> None:
    """Size and digest of a part, read in chunks (parts can be large); SnapshotError if off."""
    path = os.path.join(directory, info.name)
    try:
        size = os.path.getsize(path)
        if size != info.size:
            raise SnapshotError(
                f"{path}: {size} bytes, the manifest says {info.size} (truncated or replaced)"
            )
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    except OSError as e:
        raise SnapshotError(f"{path}: cannot be read ({e.strerror})") from None
    if h.hexdigest() != info.sha256:
        raise SnapshotError(f"{path}: its checksum is not the manifest's (corrupted)")


def describe(loaded: Loaded) -> str:
    """One line for the console: where the checkpoint stands."""
    parts = []
    for variant in sorted(loaded.time_ns, key=lambda v: (v != "run", v)):
        t = loaded.time_ns[variant] / NS_PER_S
        state = "finished" if variant in loaded.finished else f"at {t:g} s"
        parts.append(f"{variant} {state}")
    return ", ".join(parts)
