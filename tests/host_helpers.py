"""Shared helpers for host core tests."""

from __future__ import annotations

from services.host.core.host import Host
from services.host.core.pagestate import H_LOG_N


def host_state(host: Host) -> dict:
    """Everything a later call could see: page and granule state, the guests' layout,
    pools, the swap-out log, every counter."""
    return {
        "state": host._state.tolist(),
        "gran": host._gran.tolist(),
        "gused": host._gused.tolist(),
        "gstat": host._gstat.tolist(),
        "hs": host._hs.tolist(),
        "offsets": host._offsets.tolist(),
        "log": host._log[: host._hs[H_LOG_N]].tolist(),
        "host": host.host_counters(),
        "guests": {gid: host.guest_counters(gid) for gid in host.guest_ids()},
    }
