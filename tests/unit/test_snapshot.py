"""Part files of a checkpoint: written atomically, checked before decoding, never a way to run code."""

import hashlib
import os
import pickle

import lz4.frame
import numpy as np
import pytest

from services.protocol.snapshot import (
    MAGIC,
    BackgroundWrite,
    CheckpointWriter,
    PartInfo,
    SnapshotError,
    dumps,
    loads,
    read_part,
    write_part,
)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_round_trip_keeps_arrays_and_containers(tmp_path):
    obj = {"a": np.arange(1000, dtype=np.int32), "b": [1, (2, 3)], "c": {4, 5}}
    info = write_part(str(tmp_path), "x.snap", obj)
    assert info.size == os.path.getsize(tmp_path / "x.snap")
    assert info.sha256 == hashlib.sha256((tmp_path / "x.snap").read_bytes()).hexdigest()
    back = read_part(str(tmp_path), info)
    assert np.array_equal(back["a"], obj["a"]) and back["a"].dtype == np.int32
    assert back["b"] == [1, (2, 3)] and back["c"] == {4, 5}
    assert not (tmp_path / "x.snap.tmp").exists()


def test_truncated_and_corrupted_parts_are_refused(tmp_path):
    info = write_part(str(tmp_path), "x.snap", {"a": np.arange(10_000)})
    path = tmp_path / "x.snap"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SnapshotError, match="truncated"):
        read_part(str(tmp_path), info)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(flipped))
    with pytest.raises(SnapshotError, match="corrupted"):
        read_part(str(tmp_path), info)
    path.unlink()
    with pytest.raises(SnapshotError, match="cannot be read"):
        read_part(str(tmp_path), info)


def test_a_forged_part_with_a_matching_checksum_cannot_run_code(tmp_path):
    blob = MAGIC + lz4.frame.compress(pickle.dumps(_Evil(), protocol=5))
    (tmp_path / "x.snap").write_bytes(blob)
    info = PartInfo("x.snap", len(blob), hashlib.sha256(blob).hexdigest())
    with pytest.raises(SnapshotError, match=r"(posix|os)\.system"):
        read_part(str(tmp_path), info)
    # and a project function (not a class) is refused too
    with pytest.raises(SnapshotError, match="not a class"):
        loads(MAGIC + lz4.frame.compress(pickle.dumps(write_part, protocol=5)))


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("numpy", "lib._npyio_impl.os.system"),  # a dotted name walks to os.system
        ("numpy", "load"),  # a numpy function, not an array reconstructor
        ("services.sim.checkpoint", "shutil"),  # a module a project module imported
        ("services.guest.actor", "RetryPolicy"),  # a class it imported, defined elsewhere
        ("builtins", "eval"),
    ],
)
def test_only_exact_names_resolve(module, name):
    """A hand-built pickle naming anything but the allowed classes is refused before
    the name is even looked up further."""
    payload = (
        b"\x80\x05\x95\x00\x00\x00\x00\x00\x00\x00\x00"
        + b"\x8c" + bytes([len(module)]) + module.encode()
        + b"\x94\x8c" + bytes([len(name)]) + name.encode()
        + b"\x94\x93\x94."
    )  # fmt: skip
    with pytest.raises(SnapshotError, match=r"never holds|not a class"):
        loads(MAGIC + lz4.frame.compress(payload))


def test_not_a_snapshot_and_garbage_are_refused():
    with pytest.raises(SnapshotError, match="header"):
        loads(b"not a snapshot")
    with pytest.raises(SnapshotError, match="does not decode"):
        loads(MAGIC + b"\x80\x05garbage")
    assert loads(dumps([1, 2])) == [1, 2]


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", ".hidden", "", "a/b", "x" * 65])
def test_part_names_are_plain_file_names(tmp_path, name):
    with pytest.raises(SnapshotError, match="plain file name"):
        write_part(str(tmp_path), name, 1)
    with pytest.raises(SnapshotError, match="plain file name"):
        read_part(str(tmp_path), PartInfo(name, 1, "0" * 64))


def test_a_background_write_sees_the_state_at_its_start_and_reports_its_parts(tmp_path):
    """The forked writer writes the objects as they were when it began, however the
    caller changes them meanwhile; a lock held by the caller does not block it."""
    import threading

    state = {"a": np.arange(100_000)}
    lock = threading.RLock()
    writing = BackgroundWrite(str(tmp_path), [("x.snap", state)], [lock])
    state["a"][:] = -1  # the caller goes on at once
    with lock:
        (info,) = writing.result()
    back = read_part(str(tmp_path), info)
    assert np.array_equal(back["a"], np.arange(100_000))


def test_a_failed_background_write_is_an_error(tmp_path):
    writing = BackgroundWrite(str(tmp_path / "missing-dir"), [("x.snap", 1)], [])
    with pytest.raises(SnapshotError, match="failed"):
        writing.result()


def test_a_checkpoint_writer_waits_for_an_abandoned_write_and_ends_once(tmp_path):
    writer = CheckpointWriter()
    with pytest.raises(RuntimeError, match="no checkpoint"):
        writer.end()
    writer.begin(str(tmp_path), [("a.snap", 1)], [])
    writer.begin(str(tmp_path), [("b.snap", 2)], [])  # the first is abandoned, then reaped
    (info,) = writer.end()
    assert info.name == "b.snap" and read_part(str(tmp_path), info) == 2
    with pytest.raises(RuntimeError, match="no checkpoint"):
        writer.end()


def test_a_snapshot_of_an_older_format_is_refused_by_name():
    old = b"OCSIM-SNAPSHOT-3\n" + lz4.frame.compress(pickle.dumps({"a": 1}, protocol=5))
    with pytest.raises(SnapshotError, match=r"another format \('OCSIM-SNAPSHOT-3'\)"):
        loads(old)
    assert loads(dumps({"a": 1})) == {"a": 1}
