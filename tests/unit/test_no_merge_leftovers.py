"""No merge-conflict markers in the project's own text files (one reached docs/grpc.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = ("bench", "deploy", "docs", "experiments", "protos", "scripts", "services", "tests")
TOP = ("README.md", "Makefile", "pyproject.toml")
SUFFIXES = {".md", ".py", ".yaml", ".yml", ".proto", ".toml", ".json", ".sh", ".txt", ".cfg"}
MARKER = re.compile(r"^(?:<{7}|>{7})(?: |$)|^={7}$", re.MULTILINE)


def _text_files() -> list[Path]:
    files = [ROOT / name for name in TOP if (ROOT / name).is_file()]
    for tree in TREES:
        files += [
            p
            for p in sorted((ROOT / tree).rglob("*"))
            if p.suffix in SUFFIXES and p.is_file() and "__pycache__" not in p.parts
        ]
    return files


def test_no_file_holds_a_merge_conflict_marker() -> None:
    files = _text_files()
    assert len(files) > 100, "the walk found too few files to mean anything"
    found = [
        f"{p.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
        for p in files
        for text in [p.read_text(encoding="utf-8", errors="replace")]
        for m in MARKER.finditer(text)
    ]
    assert found == []
