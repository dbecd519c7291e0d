"""Cost model: defaults from figures.md, exact integer pricing, overrides reach the host."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.host.core import costs
from services.host.core.config import HostConfig, SwapConfig, ZswapConfig
from services.host.core.costs import CostModel
from services.host.core.host import Host


def test_defaults_match_reference_figures():
    cm = CostModel()
    assert cm.zero_4k_bytes_per_s == 13_700_000_000  # clear_pages, 4 KiB chunks
    assert cm.zero_2m_bytes_per_s == 15_100_000_000
    assert cm.zero_1g_bytes_per_s == 38_100_000_000
    assert cm.discard_4k_ns == 430 and cm.discard_2m_ns == 14_000
    assert cm.swap_read_latency_ns == 80_000 and cm.decompress_ns == 1_700
    assert 2_000 <= cm.fault_4k_ns + costs.zero_ns(cm, 1) <= 4_000  # install 2-4 us
    assert 250_000 <= cm.fault_2m_ns + costs.zero_ns(cm, 0, 1) <= 500_000  # 0.25-0.5 ms
    assert 1_000 <= cm.report_exit_ns <= 2_000


def test_pure_functions_are_exact_integers():
    cm = CostModel()
    assert costs.transfer_ns(4096, 4096) == 1_000_000_000
    assert costs.transfer_ns(1, 3) == 333_333_334  # rounded up
    assert costs.zero_ns(cm, 1) == -(-4096 * 10**9 // 13_700_000_000)
    assert costs.zero_ns(cm, 0, 1) == -(-(2 << 20) * 10**9 // 15_100_000_000)
    assert costs.host_fault_ns(cm, 3, 2) == 3 * cm.fault_4k_ns + 2 * cm.fault_2m_ns
    assert costs.discard_ns(cm, 8, 2) == 8 * 430 + 2 * 14_000
    assert costs.report_ns(cm, 2) == 3_000
    assert costs.swapin_ns(cm, 2) == 160_000 + costs.transfer_ns(8192, 3_400_000_000)
    assert costs.swapout_ns(cm, 1) == costs.transfer_ns(4096, 1_900_000_000)
    assert costs.compress_ns(cm, 4) == costs.decompress_ns(cm, 4) == 6_800
    for f in (costs.zero_ns, costs.swapin_ns, costs.swapout_ns):
        assert isinstance(f(cm, 7), int)


def test_every_field_is_overridable():
    for f in dataclasses.fields(CostModel):
        cm = CostModel(**{f.name: 12_345})
        assert getattr(cm, f.name) == 12_345
    with pytest.raises(TypeError):
        CostModel(no_such_cost=1)


def test_overrides_reach_the_host():
    cm = CostModel(fault_4k_ns=7, zero_4k_bytes_per_s=4096 * 10**9, report_exit_ns=11)
    host = Host(0, HostConfig(memory_bytes=1 << 24, thp=False, costs=cm))
    host.add_guest(1, 512)
    res = host.apply_touch(1, np.array([0]), np.array([3]))
    assert res.lost_ns["fault"] == 21 and res.lost_ns["zero"] == 3
    assert host.apply_report(1, np.array([0]), np.array([0])).latency_ns == 11 + cm.discard_4k_ns


def test_zswap_compressed_page_bytes():
    assert ZswapConfig(compression_ratio=4.0).compressed_page_bytes == 1024
    assert ZswapConfig(compression_ratio=2.63).compressed_page_bytes == 1558
    assert SwapConfig().capacity_bytes == 0  # no swap device unless configured
