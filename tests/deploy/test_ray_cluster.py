"""deploy/ray/cluster.yaml against Ray's own cluster launcher schema and CLI (the project's
pinned Ray), and the way the README builds a machine."""

from __future__ import annotations

import copy
import shlex

import pytest

from .support import DEPLOY, load_yaml

CONFIG = load_yaml(DEPLOY / "ray" / "cluster.yaml")
VENV_RAY = "overcommit-sim/.venv/bin/ray"  # what `make venv` builds in the clone
START_COMMANDS = CONFIG["head_start_ray_commands"] + CONFIG["worker_start_ray_commands"]


def test_ray_accepts_the_launcher_config():
    """What `ray up` does first: fill in the provider's defaults, then validate
    (ray-schema.json, no unknown fields)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(CONFIG)))


@pytest.mark.parametrize("command", START_COMMANDS)
def test_ray_commands_are_the_venvs_ray_with_options_ray_has(command):
    """`ray` is not on a fresh machine's PATH: the clone's .venv has it. Each command parses
    with Ray's CLI (click), so an unknown or misspelt option fails here."""
    from ray.scripts.scripts import cli

    words, env = shlex.split(command), []
    while "=" in words[0] and not words[0].startswith("-"):  # NAME=value prefixes
        env.append(words.pop(0))
    assert all(e.split("=")[0].isupper() for e in env), env
    assert words[0] == VENV_RAY, command
    sub = cli.commands[words[1]]
    sub.make_context(f"ray {words[1]}", words[2:])


def test_nodes_are_built_the_way_the_readme_builds_one():
    setup = CONFIG["setup_commands"]
    assert setup[-1] == "cd overcommit-sim && make venv"
    assert any("git clone" in c and c.endswith(" overcommit-sim") for c in setup)


def test_a_runs_actors_share_one_machine():
    """Host and guest-shard actors talk gRPC on loopback (docs/deploy.md, "One machine,
    today"): no worker machines until host actors can listen beyond it."""
    assert CONFIG["provider"]["worker_ips"] == []
    assert CONFIG["max_workers"] == 0
