"""docs/deploy.md and deploy/README.md: the `overcommit` commands they show are ones the
CLI takes, and the files they name exist."""

from __future__ import annotations

import re

import pytest

from .support import DEPLOY, ROOT, check_overcommit_args, fenced_code_lines, overcommit_invocations

DOCS = [ROOT / "docs" / "deploy.md", DEPLOY / "README.md"]
# repository paths in backquotes: deploy/..., docs/..., experiments/..., tests/...
PATH = re.compile(r"`((?:deploy|docs|experiments|tests)/[\w.*/-]+)`")


def _commands() -> list[tuple[str, list[str]]]:
    out = []
    for doc in DOCS:
        for line in fenced_code_lines(doc.read_text()):
            out += [(f"{doc.name}: {line}", args) for args in overcommit_invocations(line)]
    return out


def test_the_docs_show_overcommit_commands():
    assert len(_commands()) >= 5  # laptop, compose, history, launcher, KubeRay


@pytest.mark.parametrize(("where", "args"), _commands(), ids=[w for w, _ in _commands()])
def test_overcommit_commands_in_the_docs_are_ones_the_cli_takes(where, args):
    check_overcommit_args(args, where)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_files_the_docs_name_exist(doc):
    text = doc.read_text()
    paths = set(PATH.findall(text))
    if doc.parent == DEPLOY:  # deploy/README.md's table names files relative to deploy/
        paths |= {f"deploy/{p}" for p in re.findall(r"^\| `([\w./-]+)`", text, re.M)}
    assert paths
    for path in sorted(paths):
        assert list(ROOT.glob(path)), f"{doc.name} names {path}, which does not exist"
