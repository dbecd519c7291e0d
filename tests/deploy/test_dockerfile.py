"""deploy/Dockerfile, read statically (no container engine here): it installs the way the
Makefile does, copies files that exist, and runs a command the CLI takes."""

from __future__ import annotations

import json
import re
import shlex
import tomllib

from .support import (
    DEPLOY,
    IMAGE_WORKDIR,
    ROOT,
    check_overcommit_args,
    compose,
    dockerfile_stages,
    makefile_recipe,
    shell_commands,
)

STAGES = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
FINAL = STAGES[-1]


def _args(stage, instruction: str) -> list[str]:
    return [args for name, args in stage if name == instruction]


def _run_commands(stage) -> list[list[str]]:
    return [words for script in _args(stage, "RUN") for words in shell_commands(script)]


def _env(stage) -> dict[str, str]:
    env = {}
    for args in _args(stage, "ENV"):
        env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def test_every_stage_runs_the_python_the_project_is_pinned_for():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"
    assert "Python 3.11" in (ROOT / "constraints.txt").read_text().splitlines()[0]
    for stage in STAGES:
        image = _args(stage, "FROM")[0].split()[0]
        assert re.fullmatch(r"python:3\.11(-slim)?", image), image


def test_the_venv_is_installed_by_the_makefiles_venv_rule_with_ray_instead_of_dev():
    """Same commands as `make venv` (python3 -m venv, pip upgrade, pip install -c
    constraints.txt), installing '.[ray]' instead of the editable dev tree."""
    make = [
        shlex.split(line)
        for line in makefile_recipe("$(STAMP)")
        if line.startswith("python3 -m venv") or "pip install " in line
    ]
    editable = ["-e", ".[dev]", "--config-settings", "editable_mode=compat"]
    assert make[-1][-len(editable) :] == editable, "the Makefile's install line changed"
    expected = [*make[:-1], [*make[-1][: -len(editable)], ".[ray]"]]
    (build,) = [s for s in STAGES if _args(s, "FROM")[0].endswith(" AS build")]
    assert _run_commands(build) == expected
    assert _args(build, "WORKDIR") == [IMAGE_WORKDIR]


def test_what_it_copies_exists_and_is_what_pip_needs():
    sources = []
    for stage in STAGES:
        for args in _args(stage, "COPY"):
            words = args.split()
            if not any(w.startswith("--from=") for w in words):
                sources += words[:-1]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository (build context)"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {"pyproject.toml", "constraints.txt", project["project"]["readme"]}
    needed |= {p.rstrip("*") for p in packages}
    assert needed <= set(sources), needed - set(sources)
    assert "experiments" in sources  # the specs `overcommit run` is pointed at in the image


def test_the_image_has_what_kuberay_runs_in_a_ray_container():
    """KubeRay starts `ray start` with /bin/bash -c in the first container and probes it with
    `wget ... | grep success` (KubeRay's BaseWgetHealthCommand)."""
    installs = [c for c in _run_commands(FINAL) if c[:2] == ["apt-get", "install"]]
    assert any("wget" in c for c in installs)
    path = _env(FINAL)["PATH"].split(":")
    assert path[0] == f"{IMAGE_WORKDIR}/.venv/bin"  # overcommit and ray
    assert ["COPY", f"--from=build {IMAGE_WORKDIR}/.venv .venv"] in [list(i) for i in FINAL]


def test_it_runs_as_a_user_in_the_repository_layout():
    assert _args(FINAL, "USER") == ["1000"]
    assert any(c[:3] == ["useradd", "--uid", "1000"] for c in _run_commands(FINAL))
    assert _args(FINAL, "WORKDIR") == [IMAGE_WORKDIR]  # `--out runs` is /overcommit/runs
    env = _env(FINAL)
    assert env["NUMBA_CACHE_DIR"] == f"{IMAGE_WORKDIR}/.numba_cache"  # as the Makefile's
    writable = next(c for c in _run_commands(FINAL) if c[0] == "chown")
    assert {"runs", ".numba_cache"} <= set(writable[2:])


def test_its_command_is_one_the_cli_takes():
    (cmd,) = _args(FINAL, "CMD")
    argv = json.loads(cmd)  # exec form: no shell between Docker and the signals serve handles
    assert argv[0] == "overcommit"
    check_overcommit_args(argv[1:], "deploy/Dockerfile CMD")


def test_compose_builds_this_dockerfile_from_the_repository_root():
    build = compose()["services"]["simulator"]["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
