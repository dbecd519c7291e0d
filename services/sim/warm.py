"""Load (or, on a fresh cache, compile) the guest's and host's numba kernels up front.

For whoever has no spec yet to warm up from: ``serve`` before its first client's call,
the tests before their first test. A backend that has its plan warms up from the
plan's own configs instead (backends/inprocess.py, the actors)."""

from __future__ import annotations

from collections.abc import Iterable

from services.guest.core.config import GuestConfig
from services.guest.core.constants import PROFILE_MODERN
from services.guest.core.guest import warm_up as guest_warm_up
from services.host.core.config import HostConfig, SwapConfig
from services.host.core.host import warm_up as host_warm_up


def warm_up_kernels(profiles: Iterable[str] = (PROFILE_MODERN,)) -> None:
    """A small throwaway host under pressure and a guest of each kernel profile."""
    host_warm_up(HostConfig(memory_bytes=1 << 30, swap=SwapConfig(capacity_bytes=1 << 30)))
    for profile in profiles:
        guest_warm_up(GuestConfig(nr_pages=1 << 16, profile=profile))
