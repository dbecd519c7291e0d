"""Bad input to the host core: ValueError naming the field and value, state unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from services.host.core.config import HostConfig, SwapConfig, ZswapConfig
from services.host.core.costs import CostModel
from services.host.core.host import Host
from tests.host_helpers import host_state

MIB = 1 << 20


def busy_host() -> Host:
    """A host with some of everything: huge and split granules, lazy pages, swap."""
    host = Host(3, HostConfig(memory_bytes=8 * MIB, swap=SwapConfig(capacity_bytes=32 * MIB)))
    host.add_guest(1, 2048, "free")
    host.add_guest(2, 2048)
    host.apply_touch(1, np.array([0]), np.array([2048]))
    host.apply_report(1, np.array([0, 520]), np.array([9, 3]))
    host.apply_touch(2, np.array([0]), np.array([1500]))
    return host


I64 = np.int64

BAD_REPORTS = [
    # (guest, pfns, orders, message fragment)
    (2, [0, 2048], [9, 9], "pfn 2048 order 9 ends past nr_pages 2048"),
    (2, [0, 2048], [9, 0], "pfn 2048 order 0 ends past"),
    (2, [0, 8], [9, 9], "pfn 8 is not aligned to order 9"),
    (2, [0, 0], [9, 11], "order 11"),
    (2, [0], [-1], "order -1"),
    (2, [-512], [9], "pfn -512"),
    (9, [0], [9], "guest_id 9"),
    (2, [0, 512], [9], "differ in length"),
    (2, [0.0], [9], "pfns must hold integers"),
    (2, [[0]], [[9]], "pfns must be one-dimensional"),
]


@pytest.mark.parametrize(("gid", "pfns", "orders", "match"), BAD_REPORTS)
def test_bad_report_leaves_state_unchanged(gid, pfns, orders, match):
    host = busy_host()
    before = host_state(host)
    with pytest.raises(ValueError, match=match):
        host.apply_report(gid, np.array(pfns), np.array(orders))
    assert host_state(host) == before


BAD_TOUCHES = [
    (2, [0, 2000], [10, 100], "run at pfn 2000 of 100 pages ends past nr_pages 2048"),
    (2, [0, -1], [10, 1], "start pfn -1"),
    (2, [0, 5], [10, 0], "npages 0"),
    (2, [0], [-3], "npages -3"),
    (7, [0], [1], "guest_id 7"),
    (2, [0, 1], [1], "differ in length"),
    (2, [0.5], [1], "starts must hold integers"),
]


@pytest.mark.parametrize(("gid", "starts", "npages", "match"), BAD_TOUCHES)
def test_bad_touch_leaves_state_unchanged(gid, starts, npages, match):
    host = busy_host()
    before = host_state(host)
    with pytest.raises(ValueError, match=match):
        host.apply_touch(gid, np.array(starts), np.array(npages))
    assert host_state(host) == before


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 2048), "guest_id 1 is already placed"),
        ((5, 1000), "multiple of the 512-page granule, got 1000"),
        ((5, 0), "nr_pages must be a positive int, got 0"),
        ((5, -512), "nr_pages must be a positive int, got -512"),
        ((5, 512, "madvise"), "discard_mode must be one of .* got 'madvise'"),
        (("x", 512), "guest_id must be an int, got 'x'"),
    ],
)
def test_bad_add_guest_leaves_state_unchanged(args, match):
    host = busy_host()
    before = host_state(host)
    with pytest.raises(ValueError, match=match):
        host.add_guest(*args)
    assert host_state(host) == before


def test_add_guest_over_the_overcommit_limit_is_refused():
    host = Host(0, HostConfig(memory_bytes=8 * MIB, max_overcommit_ratio=1.5))
    host.add_guest(1, 2048)  # 1.0
    before = host_state(host)
    with pytest.raises(
        ValueError, match=r"overcommit ratio to 1\.750, over max_overcommit_ratio 1\.5"
    ):
        host.add_guest(2, 1536)
    assert host_state(host) == before
    host.add_guest(2, 1024)  # exactly 1.5 fits
    assert host.host_counters()["guest_pages"] == 3072


def test_stopped_guest_calls_are_rejected_without_change():
    host = Host(0, HostConfig(memory_bytes=8 * MIB))
    host.add_guest(1, 2048)
    host.add_guest(2, 2048)
    host.apply_touch(1, np.array([0]), np.array([2048]))
    host.apply_touch(2, np.array([0]), np.array([1]))
    assert host.is_stopped(1)
    before = host_state(host)
    with pytest.raises(ValueError, match="guest_id 1 was stopped"):
        host.apply_touch(1, np.array([0]), np.array([1]))
    with pytest.raises(ValueError, match="guest_id 1 was stopped"):
        host.apply_report(1, np.array([0]), np.array([9]))
    assert host_state(host) == before


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: HostConfig(memory_bytes=0), "memory_bytes must be > 0, got 0"),
        (lambda: HostConfig(memory_bytes=-4096), "memory_bytes must be > 0, got -4096"),
        (lambda: HostConfig(memory_bytes=5000), "memory_bytes must be a multiple of 4096"),
        (lambda: HostConfig(memory_bytes=MIB, reserve_bytes=MIB), "reserve_bytes must be <"),
        (lambda: HostConfig(memory_bytes=MIB, reserve_bytes=-4096), "reserve_bytes must be >= 0"),
        (lambda: HostConfig(memory_bytes=MIB, backing="shm"), "backing must be one of"),
        (lambda: HostConfig(memory_bytes=MIB, oom_policy="panic"), "oom_policy must be one of"),
        (
            lambda: HostConfig(memory_bytes=MIB, max_overcommit_ratio=0),
            "max_overcommit_ratio must be > 0, got 0",
        ),
        (lambda: HostConfig(memory_bytes=MIB, max_report_order=30), "max_report_order"),
        (
            lambda: HostConfig(memory_bytes=MIB, backing="hugetlb_1g"),
            "smaller than one 1073741824-byte huge page",
        ),
        (lambda: SwapConfig(capacity_bytes=-4096), "swap.capacity_bytes must be >= 0, got -4096"),
        (lambda: ZswapConfig(compression_ratio=1.0), "zswap.compression_ratio must be > 1"),
        (lambda: ZswapConfig(max_pool_bytes=0), "zswap.max_pool_bytes must be > 0, got 0"),
        (lambda: CostModel(fault_4k_ns=-1), "costs.fault_4k_ns must be >= 0, got -1"),
        (lambda: CostModel(zero_2m_bytes_per_s=0), "costs.zero_2m_bytes_per_s must be > 0"),
        (lambda: CostModel(discard_2m_ns=1.5), "costs.discard_2m_ns must be an int"),
    ],
)
def test_config_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()
