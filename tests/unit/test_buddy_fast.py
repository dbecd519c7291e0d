"""Fast-path specifics of BuddyAllocator: array sizes, batch validation, batching.

Semantics shared with the reference are covered by the differential test
(tests/property/test_guest_differential.py) and the contract tests; these check
what only the numpy/numba implementation can get wrong. No timing assertions.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.guest.core import _kernels as k
from services.guest.core.backing import BackingView
from services.guest.core.buddy import BuddyAllocator
from services.guest.core.config import GuestConfig, PcpConfig, ReportingConfig
from services.guest.core.constants import MIGRATE_MOVABLE, MIGRATE_UNMOVABLE
from tests.guest_helpers import check_invariants, snapshot

BYTES_PER_PAGE_BUDGET = 12  # design budget: allocator state + BackingView byte

DMA32_END_PFN = (4 << 30) >> 12  # an explicit 4 GiB DMA32/Normal split


def raw_state(a: BuddyAllocator) -> bytes:
    """Every state array, byte for byte (catches scratch bits left behind)."""
    arrays = (a.lk, a.pg, a.pbmt, a.fl, a.pcp, a.nr_free_arr, a.zone, a.g)
    return b"".join(x.tobytes() for x in arrays)


def test_per_page_arrays_are_compact():
    cfg = GuestConfig(nr_pages=1 << 16)
    a = BuddyAllocator(cfg)
    assert a.lk.shape == (cfg.nr_pages, 2) and a.lk.dtype == np.int32
    assert a.pg.shape == (cfg.nr_pages, 2) and a.pg.dtype == np.uint8
    assert a.pbmt.shape == (cfg.nr_pages >> cfg.pageblock_order,) and a.pbmt.dtype == np.int8
    per_page = a.per_page_nbytes() / cfg.nr_pages
    assert per_page == 10 + 1 / (1 << cfg.pageblock_order)
    backing = BackingView(cfg.nr_pages).state.nbytes / cfg.nr_pages
    assert per_page + backing <= BYTES_PER_PAGE_BUDGET


def test_small_arrays_do_not_grow_with_the_guest():
    small = BuddyAllocator(GuestConfig(nr_pages=1 << 12))
    large = BuddyAllocator(GuestConfig(nr_pages=1 << 18))
    for name in ("fl", "pcp", "nr_free_arr", "zone", "g", "pcp_idx"):
        assert getattr(small, name).shape == getattr(large, name).shape, name


@pytest.mark.parametrize(
    "tail, order, reason",
    [
        (-1, 0, "out of range"),
        (1 << 20, 0, "out of range"),
        (None, 0, "duplicate"),
        ("unallocated", 0, "not allocated"),
        ("misaligned", 2, "aligned"),
    ],
)
def test_bad_last_entry_leaves_state_byte_identical(tail, order, reason):
    a = BuddyAllocator(GuestConfig(nr_pages=1 << 14, pcp=PcpConfig(batch=4, high=12)))
    blocks = a.alloc(order, MIGRATE_MOVABLE, 40)
    a.free(blocks[:5], order)
    good = blocks[5:]
    if tail is None:
        bad = int(good[0])
    elif tail == "unallocated":
        bad = int(blocks[0])  # already freed
    elif tail == "misaligned":
        bad = int(good[0]) + 1
    else:
        bad = tail
    before, snap = raw_state(a), snapshot(a)
    with pytest.raises(ValueError, match=reason) as info:
        a.free(np.append(good, bad), order)
    assert f"pfn {bad}" in str(info.value) and f"order {order}" in str(info.value)
    assert raw_state(a) == before
    assert snapshot(a) == snap
    a.free(good, order)  # the valid part still works afterwards
    check_invariants(a)


def test_report_drain_rejects_whole_batch_before_any_putback():
    cfg = GuestConfig(nr_pages=1 << 16, reporting=ReportingConfig(capacity=4))
    a = BuddyAllocator(cfg)
    batch_pfn, batch_order = np.zeros(4, np.int64), np.zeros(4, np.int8)
    status, n = a.report_fill(0, cfg.max_order, MIGRATE_MOVABLE, batch_pfn, batch_order, 0, 1)
    assert (status, n) == (k.REPORT_BATCH_FULL, 4)
    batch_order[3] = cfg.max_order - 1  # wrong order on the last entry
    before = raw_state(a)
    with pytest.raises(ValueError, match=f"pfn {batch_pfn[3]} order {cfg.max_order - 1}"):
        a.report_drain(batch_pfn, batch_order, n, True)
    assert raw_state(a) == before
    batch_order[3] = cfg.max_order
    a.report_drain(batch_pfn, batch_order, n, True)
    assert a.reported_pages() == 4 << cfg.max_order
    check_invariants(a)


@pytest.mark.parametrize("profile", ["5.7", "6.1", "modern"])
@pytest.mark.parametrize("order", [0, 3, 9])
def test_one_batch_equals_one_call_per_block(profile, order):
    """Batching is an implementation detail: state after a batch == state after singles."""
    cfg = GuestConfig(nr_pages=1 << 14, profile=profile, pcp=PcpConfig(batch=7, high=30))
    a, b = BuddyAllocator(cfg), BuddyAllocator(cfg)
    got_a = a.alloc(order, MIGRATE_UNMOVABLE, 25)
    got_b = np.concatenate([b.alloc(order, MIGRATE_UNMOVABLE, 1) for _ in range(25)])
    assert got_a.tolist() == got_b.tolist()
    freed = np.random.default_rng(7).permutation(got_a)
    a.free(freed, order)
    for pfn in freed:
        b.free([pfn], order)
    assert snapshot(a) == snapshot(b)
    assert raw_state(a) == raw_state(b)


def test_full_4gib_cycle_returns_every_page():
    cfg = GuestConfig(nr_pages=1 << 20, zones="single")
    a = BuddyAllocator(cfg)
    wmin = a.watermarks(0)[0]
    blocks = a.alloc(0, MIGRATE_MOVABLE, cfg.nr_pages)
    assert blocks.dtype == np.int64
    assert len(blocks) + a.pcp_pages() + a.nr_free_pages(0) == cfg.nr_pages
    assert a.nr_free_pages(0) - 1 < wmin  # stopped at the min watermark
    a.free(np.random.default_rng(1).permutation(blocks), 0)
    a.drain_pcp()
    assert a.nr_free(0, cfg.max_order) == cfg.nr_pages >> cfg.max_order
    assert a.nr_free_pages(0) == cfg.nr_pages and a.pcp_pages() == 0


def test_two_zones_split_at_dma32_end():
    cfg = GuestConfig(nr_pages=DMA32_END_PFN + (1 << 16), lowmem_pages=DMA32_END_PFN)
    a = BuddyAllocator(cfg)
    assert a.nr_zones == 2
    assert a.zone_range(0) == (0, DMA32_END_PFN)
    assert a.zone_range(1) == (DMA32_END_PFN, cfg.nr_pages)
    first = a.alloc(9, MIGRATE_MOVABLE, 1)
    assert first[0] >= DMA32_END_PFN  # the highest zone is tried first
    a.free(first, 9)
    a.drain_pcp()
    assert a.nr_free_pages(1) == 1 << 16


def test_shuffle_consumes_coins_in_word_order():
    """Coin words drawn ahead of need are used in stream order (LSB first)."""
    cfg = GuestConfig(nr_pages=1 << 14, shuffle=True, pcp=PcpConfig(enabled=False))
    a = BuddyAllocator(cfg, np.random.default_rng(5))
    blocks = a.alloc(cfg.max_order, MIGRATE_MOVABLE, 16)
    a.free(blocks, cfg.max_order)
    assert a.g[k.G_COIN_POS] == len(blocks)  # one coin per order-max free
    stream = np.random.default_rng(5)
    probe = BuddyAllocator(cfg, stream)  # same boot shuffle draws
    assert probe.free_list(0, cfg.max_order, MIGRATE_MOVABLE) != []
    word = int(stream.integers(0, 2**64, dtype=np.uint64))
    assert int(a.coins[0]) == word


@pytest.mark.parametrize("profile", ["5.7", "6.1", "modern"])
def test_two_zone_guest_matches_reference(profile):
    """The differential test uses single-zone guests; this covers the DMA32/Normal walk
    (ALLOC_NOFRAGMENT first) with a fixed script against the reference."""
    from services.guest.core.reference import ReferenceAllocator

    cfg = GuestConfig(
        nr_pages=DMA32_END_PFN + (1 << 14),
        lowmem_pages=DMA32_END_PFN,
        profile=profile,
        pcp=PcpConfig(batch=8, high=40),
        reporting=ReportingConfig(capacity=4),
    )
    allocators = [ReferenceAllocator(cfg), BuddyAllocator(cfg)]
    rng = np.random.default_rng(3)
    script = [
        (int(o), int(mt), int(c))
        for o, mt, c in zip(
            rng.integers(0, 11, 60), rng.integers(0, 3, 60), rng.integers(1, 40, 60), strict=True
        )
    ]
    held = [[], []]
    for step, (order, mt, count) in enumerate(script):
        outs = [a.alloc(order, mt, count).tolist() for a in allocators]
        assert outs[0] == outs[1], f"step {step}: alloc({order}, {mt}, {count})"
        for h, out in zip(held, outs, strict=True):
            h.extend((p, order) for p in out)
        if step % 3 == 2:
            pick = sorted(
                np.random.default_rng(step).permutation(len(held[0]))[: len(held[0]) // 2]
            )
            for a, h in zip(allocators, held, strict=True):
                chosen = [h[i] for i in pick]
                for order_ in sorted({o for _, o in chosen}):
                    a.free([p for p, o in chosen if o == order_], order_)
                h[:] = [x for i, x in enumerate(h) if i not in set(pick)]
        if step % 7 == 6:
            for a in allocators:
                a.drain_pcp()
    batches = []
    for a in allocators:
        pfns, orders = np.zeros(4, np.int64), np.zeros(4, np.int8)
        status, n = a.report_fill(1, cfg.max_order, MIGRATE_MOVABLE, pfns, orders, 0, 0)
        a.report_drain(pfns, orders, n, True)
        batches.append((status, n, pfns[:n].tolist()))
    assert batches[0] == batches[1]
    ref, fast = allocators
    for z in range(2):
        for o in range(cfg.max_order + 1):
            assert ref.nr_free(z, o) == fast.nr_free(z, o)
            for mt in range(6):
                assert ref.free_list(z, o, mt) == fast.free_list(z, o, mt), (z, o, mt)
        assert ref.nr_free_pages(z) == fast.nr_free_pages(z)
        assert ref.pcp_list(z, 0, MIGRATE_MOVABLE) == fast.pcp_list(z, 0, MIGRATE_MOVABLE)
    pbs = range(0, cfg.nr_pages, 1 << cfg.pageblock_order)
    assert [ref.pageblock_mt(p) for p in pbs] == [fast.pageblock_mt(p) for p in pbs]
    assert ref.notify_count == fast.notify_count
    assert ref.reported_pages() == fast.reported_pages()


@pytest.mark.parametrize("nr_pages", [1, 511, 512, 1000, 4099])
def test_link_rows_are_a_permutation_and_the_scalar_and_array_forms_agree(nr_pages):
    pfns = np.arange(nr_pages, dtype=np.int64)
    rows = k.page_rows(pfns, nr_pages)
    assert sorted(rows.tolist()) == list(range(nr_pages))  # one row per pfn, none left over
    assert rows.tolist() == [k.page_row(int(p), nr_pages) for p in pfns]
    aligned = pfns[pfns % (1 << k.ROW_SHIFT) == 0]
    assert rows[aligned].tolist() == list(range(len(aligned)))  # aligned pfns first
