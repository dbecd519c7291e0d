"""When guests sync with hosts: the pressure rule and the span of a sync, decided in one place.

A sync may cover several epochs (``sync_interval``) while every host is calm;
guests then feel host costs up to a sync interval late. While any host is under
pressure, the next sample interval syncs every epoch, so guests feel swap-in
and reclaim costs at once. Every decision is made from the hosts' counters kept
at sample boundaries, which every backend and every shard reads alike, so each
decision comes out the same wherever it is evaluated (on Ray, every shard
evaluates it for itself instead of asking the simulation loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Host counters that, when they grew over a sample interval, mean guests paid more
# than fault and zero-fill costs in it: reclaim, swap-in, a guest stopped (OOM).
PRESSURE_COUNTERS = ("reclaim_scanned_pages", "faults_swapin", "guests_stopped", "oom_events")


def host_under_pressure(
    prev: Mapping[str, int] | None, cur: Mapping[str, int], fraction: float
) -> bool:
    """One host, from its counters at two sample boundaries: its pool is at least
    ``fraction`` of its limit, or since ``prev`` it reclaimed, swapped a page in,
    or stopped a guest."""
    if cur["pool_used_bytes"] >= fraction * cur["limit_bytes"]:
        return True
    if prev is None:
        return False
    return any(cur.get(k, 0) > prev.get(k, 0) for k in PRESSURE_COUNTERS)


@dataclass(frozen=True)
class SyncPolicy:
    """The sync rule of one run: ``calm_sync_epochs`` epochs per sync while every host
    is calm, one while any is under pressure (``pressure_fraction``: spec
    ``sync_pressure_fraction``)."""

    calm_sync_epochs: int
    pressure_fraction: float

    def __post_init__(self) -> None:
        if self.calm_sync_epochs < 1:
            raise ValueError(f"calm_sync_epochs={self.calm_sync_epochs}: must be >= 1")
        if not 0 < self.pressure_fraction <= 1:
            raise ValueError(f"pressure_fraction={self.pressure_fraction}: must be in (0, 1]")

    def sync_epochs(self, pressure: bool) -> int:
        """Epochs one sync covers in a sample interval decided as ``pressure``."""
        return 1 if pressure else self.calm_sync_epochs

    def under_pressure(
        self, prev: Mapping[int, Mapping[str, int]], cur: Mapping[int, Mapping[str, int]]
    ) -> bool:
        """The decision for the next sample interval: is any host (host id -> counters
        at this boundary; ``prev`` at the one before) under pressure?"""
        return any(
            host_under_pressure(prev.get(h), c, self.pressure_fraction) for h, c in cur.items()
        )
