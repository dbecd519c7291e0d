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
    from services.guest.core.config import PROFILES, GuestConfig
    from services.guest.core.guest import warm_up as guest_warm_up
    from services.host.core.config import HostConfig, SwapConfig
    from services.host.core.host import warm_up as host_warm_up

    host_warm_up(HostConfig(memory_bytes=1 << 30, swap=SwapConfig(capacity_bytes=1 << 30)))
    for profile in PROFILES:
        guest_warm_up(GuestConfig(nr_pages=1 << 16, profile=profile))
