"""Readers shared by the deploy/ tests: files, Dockerfile and Makefile parsing, and the
`overcommit` commands that configs and docs run, checked against the CLI's own parser."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGE_WORKDIR = "/overcommit"  # deploy/Dockerfile's WORKDIR: the repository's layout
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage; continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # Docker drops comments inside continuations too
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).partition(" ")
        pending = ""
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def shell_commands(script: str) -> list[list[str]]:
    """A shell command line as its simple commands (split at &&, ;, |), each as words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def makefile_recipe(target: str) -> list[str]:
    """The Makefile rule's recipe lines with its variables ($(NAME), NAME ?= / := value) expanded."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[?:]?=\s*(.*?)\s*$", text, re.M))
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    expanded = []
    for line in recipe:
        text = line
        for _ in range(5):  # variables defined through other variables
            text = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), text)
        expanded.append(text)
    return expanded


def overcommit_invocations(command: str) -> list[list[str]]:
    """The arguments of every `overcommit` (or `.../bin/overcommit`) in a shell command line,
    also inside quoted arguments (`ray exec CONFIG 'cd x && .venv/bin/overcommit run ...'`)."""
    found = []
    for words in shell_commands(command):
        for i, word in enumerate(words):
            if word == "overcommit" or word.endswith("/bin/overcommit"):
                found.append(words[i + 1 :])
                break
            if " " in word:
                found += overcommit_invocations(word)
    return found


def check_overcommit_args(args: list[str], where: str) -> None:
    """Fail unless `overcommit ARGS` parses with the CLI's parser (sub-command, flags, values),
    and unless a spec it runs from the repository (or the image's copy of it) exists."""
    from services.sim.cli import build_parser

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit as e:
            if e.code:
                pytest.fail(
                    f"{where}: `overcommit {shlex.join(args)}` is not a command the CLI takes:\n"
                    f"{errors.getvalue()}"
                )
            return
    spec = getattr(parsed, "spec", None)
    if spec and spec.endswith((".yaml", ".yml")):
        local = spec.removeprefix(IMAGE_WORKDIR + "/")
        assert (ROOT / local).is_file(), f"{where}: the spec {spec} is not in the repository"


def fenced_code_lines(markdown: str) -> list[str]:
    """The lines of a Markdown file's fenced code blocks, continuation lines joined."""
    lines, pending, inside = [], "", False
    for raw in markdown.splitlines():
        if raw.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw.strip())
        pending = ""
    return lines


def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yaml")


def prometheus_flags(args: list[str]) -> dict[str, str]:
    """`--name=value` flags of a Prometheus command line."""
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
