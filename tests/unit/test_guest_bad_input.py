"""Bad input to the allocator: ValueError naming pfn and order, state unchanged."""

from __future__ import annotations

import re

import numpy as np
import pytest

from services.guest.core.constants import MIGRATE_ISOLATE, MIGRATE_MOVABLE, MIGRATE_TYPES
from tests.guest_helpers import check_invariants, small_config, snapshot


def prepared(kind):
    """A guest with order-0, order-2 and order-9 blocks allocated and some pcp content."""
    a = kind(small_config())
    small = a.alloc(0, MIGRATE_MOVABLE, 8)
    mid = a.alloc(2, MIGRATE_MOVABLE, 4)
    big = a.alloc(9, MIGRATE_MOVABLE, 2)
    a.free(small[:3], 0)  # leaves something in the pcp lists
    return a, small[3:], mid, big


def names(msg: str, field: str, value: int) -> bool:
    return re.search(rf"{field}\W{{0,3}}{value}\b", msg) is not None


def assert_rejected(a, pfns, order, bad_pfn):
    before = snapshot(a)
    with pytest.raises(ValueError) as info:
        a.free(np.asarray(pfns, dtype=np.int64), order)
    msg = str(info.value)
    assert names(msg, "pfn", bad_pfn), msg
    assert names(msg, "order", order), msg
    assert snapshot(a) == before


def test_order_above_max_order(allocator_factory):
    a, small, _, _ = prepared(allocator_factory)
    assert_rejected(a, [int(small[0])], 11, int(small[0]))


def test_negative_order(allocator_factory):
    a, small, _, _ = prepared(allocator_factory)
    assert_rejected(a, [int(small[0])], -1, int(small[0]))


def test_double_free(allocator_factory):
    a, _small, mid, _ = prepared(allocator_factory)
    a.free([int(mid[0])], 2)
    assert_rejected(a, [int(mid[1]), int(mid[0])], 2, int(mid[0]))


def test_wrong_order(allocator_factory):
    a, _, mid, _ = prepared(allocator_factory)
    assert_rejected(a, [int(mid[0])], 1, int(mid[0]))


def test_misaligned_pfn(allocator_factory):
    a, _, _, big = prepared(allocator_factory)
    assert_rejected(a, [int(big[0]), int(big[1]) + 4], 9, int(big[1]) + 4)


@pytest.mark.parametrize("bad", [-1, 8192, 1 << 40])
def test_pfn_out_of_range(allocator_factory, bad):
    a, small, _, _ = prepared(allocator_factory)
    assert_rejected(a, [int(small[0]), bad], 0, bad)


def test_duplicate_in_batch(allocator_factory):
    a, small, _, _ = prepared(allocator_factory)
    assert_rejected(a, [int(small[0]), int(small[1]), int(small[0])], 0, int(small[0]))


def test_free_of_pcp_held_page_is_double_free(allocator_factory):
    a, _, _, _ = prepared(allocator_factory)
    held = [p for mt in range(3) for p in a.pcp_list(0, 0, mt)]
    assert held
    assert_rejected(a, [held[0]], 0, held[0])


def test_valid_batch_after_rejection_still_works(allocator_factory):
    a, small, mid, big = prepared(allocator_factory)
    with pytest.raises(ValueError):
        a.free([int(big[0]), 12345], 9)
    a.free(big, 9)
    a.free(mid, 2)
    a.free(small, 0)
    check_invariants(a)


@pytest.mark.parametrize("mt", [-1, MIGRATE_ISOLATE, MIGRATE_TYPES])
def test_alloc_bad_migratetype(allocator_factory, mt):
    a, _, _, _ = prepared(allocator_factory)
    before = snapshot(a)
    with pytest.raises(ValueError, match=rf"(mt|migratetype)\W{{0,3}}{mt}\b"):
        a.alloc(0, mt, 1)
    assert snapshot(a) == before


@pytest.mark.parametrize("order", [-1, 11])
def test_alloc_bad_order(allocator_factory, order):
    a, _, _, _ = prepared(allocator_factory)
    before = snapshot(a)
    with pytest.raises(ValueError, match="order"):
        a.alloc(order, MIGRATE_MOVABLE, 1)
    assert snapshot(a) == before
