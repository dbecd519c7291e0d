"""A run directory whose entries were replaced by symbolic links (tampering, or a shared
scratch folder): nothing outside the results folder is deleted or written through a link,
and a result file is replaced whole, never left half-written."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from services.sim import checkpoint, run_files
from services.sim.openmetrics import export_openmetrics
from services.sim.report import write_report
from services.sim.runner import RunInterrupted, run_experiment
from services.sim.spec import load_spec_text

SPEC = (Path(__file__).resolve().parent.parent / "golden" / "specs" / "determinism.yaml").read_text(
    encoding="utf-8"
)


def victim_dir(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("keep\n")
    (victim / "sub" / "deep.txt").write_text("keep\n")
    return victim


def untouched(victim: Path) -> list[str]:
    return sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))


def test_a_checkpoint_link_to_elsewhere_is_refused_before_the_run_and_deletes_nothing(tmp_path):
    spec = load_spec_text(SPEC + "checkpoint_interval: 1s\n")
    victim = victim_dir(tmp_path)
    run_dir = tmp_path / "out" / spec.name / spec.run_id()
    run_dir.mkdir(parents=True)
    os.symlink(victim, run_dir / checkpoint.CHECKPOINT_DIR)
    with pytest.raises(checkpoint.CheckpointError, match="not a directory of this run"):
        run_experiment(spec, out_dir=str(tmp_path / "out"), transport="inprocess")
    assert untouched(victim) == ["notes.txt", "sub", "sub/deep.txt"]
    assert not (run_dir / "summary.json").exists()


def test_a_checkpoint_removes_older_checkpoints_only(tmp_path, monkeypatch):
    """Between checkpoints the older ones' directories go; anything else stays."""
    spec = load_spec_text(SPEC + "checkpoint_interval: 1s\n")
    root = tmp_path / "out" / spec.name / spec.run_id() / checkpoint.CHECKPOINT_DIR
    root.mkdir(parents=True)
    (root / "my-notes.txt").write_text("a user's file\n")
    (root / "my-dir").mkdir()
    stop, commit = threading.Event(), checkpoint.Checkpoints.commit

    def counting(self, *args):
        path = commit(self, *args)
        if self.saved == 3:
            stop.set()
        return path

    monkeypatch.setattr(checkpoint.Checkpoints, "commit", counting)
    with pytest.raises(RunInterrupted):
        run_experiment(spec, out_dir=str(tmp_path / "out"), transport="inprocess", stop=stop)
    tags = [p.name for p in root.iterdir() if checkpoint._TAG.match(p.name)]
    assert len(tags) == 1, sorted(p.name for p in root.iterdir())
    assert (root / "my-notes.txt").read_text() == "a user's file\n" and (root / "my-dir").is_dir()


def test_result_files_replace_links_instead_of_writing_through_them(tmp_path):
    spec = load_spec_text(SPEC)
    out = tmp_path / "out"
    run_dir = out / spec.name / spec.run_id()
    run_dir.mkdir(parents=True)
    victims = {}
    for name in ("summary.json", "timeseries.parquet", "report.html", "swap.png", "metrics.om"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text("keep\n")
        os.symlink(victims[name], run_dir / name)
    result = run_experiment(spec, out_dir=str(out), transport="inprocess")
    write_report(result.run_dir)
    export_openmetrics(result.run_dir)
    for name, victim in victims.items():
        assert victim.read_text() == "keep\n", name
        assert not (run_dir / name).is_symlink(), name
    assert not list(run_dir.glob(".*.tmp"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old\n")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        run_files.replace_file(str(path), fail)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    run_files.write_text_file(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("summary", "needle"),
    [("{}", "not a finished run's (KeyError"), ("not json", "summary.json: not a run's JSON")],
)
def test_export_of_a_tampered_run_names_the_file_and_writes_nothing(tmp_path, summary, needle):
    spec = load_spec_text(SPEC)
    result = run_experiment(spec, out_dir=str(tmp_path / "out"), transport="inprocess")
    run_dir = Path(result.run_dir)
    (run_dir / "summary.json").write_text(summary)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        export_openmetrics(str(run_dir))
    assert not (run_dir / "metrics.om").exists()
    with pytest.raises(ValueError, match="is a folder"):
        export_openmetrics(str(run_dir), str(tmp_path))
    with pytest.raises(ValueError, match="its folder does not exist"):
        export_openmetrics(str(run_dir), str(tmp_path / "no" / "x.om"))
