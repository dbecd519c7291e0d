"""The unit-test guardrails of tests/unit/conftest.py are in force."""

from __future__ import annotations

import socket

import pytest


def test_unit_tests_cannot_open_connections() -> None:
    with pytest.raises(RuntimeError, match="must not open connections"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(RuntimeError, match="must not open connections"):
            sock.connect(("127.0.0.1", 9))
        with pytest.raises(RuntimeError, match="must not open connections"):
            sock.connect_ex(("127.0.0.1", 9))


def test_unit_tests_cannot_start_ray() -> None:
    ray = pytest.importorskip("ray")
    with pytest.raises(RuntimeError, match="must not start Ray"):
        ray.init()
