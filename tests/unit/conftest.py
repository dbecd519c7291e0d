"""Guardrails for unit tests: no Ray, no outbound connections.

Every test under tests/unit runs with ``ray.init`` (when Ray is installed) and
outbound socket connections replaced by functions that raise. A test that
needs loopback networking (the metrics endpoint) says so with
``@pytest.mark.allow_sockets``.
"""

from __future__ import annotations

import socket

import pytest

SOCKETS_MESSAGE = "unit tests must not open connections"
RAY_MESSAGE = "unit tests must not start Ray"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_sockets: a unit test that may open (loopback) connections"
    )


def _refuse(message: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(message)

    return refuse


@pytest.fixture(autouse=True)
def no_ray_no_connections(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import ray
    except ImportError:
        ray = None
    if ray is not None:
        monkeypatch.setattr(ray, "init", _refuse(RAY_MESSAGE))
    if request.node.get_closest_marker("allow_sockets") is None:
        monkeypatch.setattr(socket.socket, "connect", _refuse(SOCKETS_MESSAGE))
        monkeypatch.setattr(socket.socket, "connect_ex", _refuse(SOCKETS_MESSAGE))
        monkeypatch.setattr(socket, "create_connection", _refuse(SOCKETS_MESSAGE))
