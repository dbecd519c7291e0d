"""Shared pytest fixtures (pure core only; no sockets, no Ray)."""

import pytest

from tests.guest_helpers import allocator_factory  # noqa: F401  (fixture)


@pytest.fixture(scope="session", autouse=True)
def numba_kernels_loaded() -> None:
    """Load (on a fresh cache: compile) the guest's and host's numba kernels once per test
    process, before any test runs. A test that calls a server under a gRPC deadline then
    never waits for a kernel to compile inside that deadline: with the tests spread over
    processes (make test), whichever test a process runs first would otherwise pay for
    minutes of compiling, and whether that test has a deadline would be chance."""
    from services.guest.core.constants import PROFILES
    from services.sim.warm import warm_up_kernels

    warm_up_kernels(PROFILES)
