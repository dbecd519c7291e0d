"""Fixtures for the deploy/ tests: Prometheus's own tools, which `make test` installs."""

from __future__ import annotations

import shutil

import pytest

MISSING = (
    "{tool} is not on PATH: the deploy/ tests check the Prometheus configs with Prometheus's "
    "own tools; `make test` installs Debian's prometheus package (apt-get install prometheus)"
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # never a silent skip: a missing tool is a broken test setup
        pytest.fail(MISSING.format(tool=name), pytrace=False)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return _tool("prometheus")
