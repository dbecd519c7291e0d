"""The sync policy: when a host is under pressure, and how many epochs a sync covers."""

import pytest

from services.host.core.config import HostConfig
from services.host.core.host import Host
from services.sim.sync_policy import PRESSURE_COUNTERS, SyncPolicy, host_under_pressure

CALM = {"pool_used_bytes": 50, "limit_bytes": 100, "reclaim_scanned_pages": 7, "faults_swapin": 3}


def test_a_host_is_under_pressure_near_its_limit_or_after_reclaim_swap_in_or_stop():
    assert not host_under_pressure(None, CALM, 0.85)
    assert not host_under_pressure(CALM, dict(CALM), 0.85)
    assert host_under_pressure(None, {**CALM, "pool_used_bytes": 85}, 0.85)
    assert not host_under_pressure(None, {**CALM, "pool_used_bytes": 84}, 0.85)
    for key in ("reclaim_scanned_pages", "faults_swapin", "guests_stopped", "oom_events"):
        assert host_under_pressure(CALM, {**CALM, key: CALM.get(key, 0) + 1}, 0.85), key


def test_the_pressure_counters_are_counters_a_real_host_keeps():
    host = Host(0, HostConfig(memory_bytes=64 << 20))
    host.add_guest(1, 4096, "dontneed")
    counters = host.host_counters()
    assert set(PRESSURE_COUNTERS) <= set(counters)
    assert {"pool_used_bytes", "limit_bytes"} <= set(counters)


def test_one_host_under_pressure_makes_the_next_interval_sync_every_epoch():
    policy = SyncPolicy(calm_sync_epochs=20, pressure_fraction=0.85)
    calm = {0: CALM, 1: CALM}
    assert not policy.under_pressure(calm, {0: CALM, 1: dict(CALM)})
    assert policy.under_pressure(calm, {0: CALM, 1: {**CALM, "faults_swapin": 4}})
    assert policy.under_pressure({}, {0: {**CALM, "pool_used_bytes": 90}})
    assert (policy.sync_epochs(False), policy.sync_epochs(True)) == (20, 1)


@pytest.mark.parametrize("epochs,fraction", [(0, 0.5), (4, 0.0), (4, 1.5)])
def test_a_bad_policy_is_refused(epochs, fraction):
    with pytest.raises(ValueError):
        SyncPolicy(epochs, fraction)
