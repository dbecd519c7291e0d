"""Differential test: the numba fast path against the reference allocator.

Random sequences of alloc, free, touch, drain_pcp and simulated-time advances
(reporting passes with an in-process recording reporter that also returns
errors) drive two guests, one per allocator. After every step the two must be
indistinguishable through the contract: same blocks in the same list positions,
same Reported flags, same pcp lists, same counters, same report calls.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.guest.core.config import GuestConfig, PcpConfig, ReportingConfig
from services.guest.core.constants import MIGRATE_MOVABLE
from services.guest.core.guest import Guest
from tests.guest_helpers import RecordingReporter, fast_allocator_class, snapshot

pytestmark = pytest.mark.skipif(
    fast_allocator_class() is None, reason="services.guest.core.buddy not importable yet"
)

MS_NS = 1_000_000
# Longer hunts: GUEST_DIFF_EXAMPLES=2000 pytest tests/property/test_guest_differential.py
MAX_EXAMPLES = int(os.environ.get("GUEST_DIFF_EXAMPLES", "80"))


def config_for(shape: int, profile: str, shuffle: bool, small_pcp: bool) -> GuestConfig:
    """Small guests, including small max_order / pageblock_order geometries, two-zone
    guests (DMA32 + Normal) and two vCPUs. The small pcp has batch > 1, so THP refills
    take 2 blocks, and in `modern` it auto-tunes high between 12 and 48."""
    pcp = PcpConfig(batch=4, high=12, high_max=48) if small_pcp else PcpConfig()
    shapes = [
        dict(nr_pages=4096, reporting=ReportingConfig(capacity=2)),
        dict(nr_pages=8192, reporting=ReportingConfig(capacity=4, order=7)),
        dict(
            nr_pages=1024,
            max_order=6,
            pageblock_order=3,
            reporting=ReportingConfig(capacity=4, order=4),
        ),
        dict(nr_pages=256, max_order=4, pageblock_order=2, reporting=ReportingConfig(capacity=2)),
        dict(
            nr_pages=512,
            max_order=5,
            pageblock_order=5,
            reporting=ReportingConfig(capacity=2, order=3),
        ),
        dict(nr_pages=4096, lowmem_pages=2048, vcpus=2, reporting=ReportingConfig(capacity=2)),
        dict(
            nr_pages=2048,
            max_order=7,
            pageblock_order=5,
            lowmem_pages=1024,
            reporting=ReportingConfig(capacity=2, order=5),
        ),
        dict(nr_pages=8192, vcpus=3, reporting=ReportingConfig(capacity=4, order=8)),
    ]
    return GuestConfig(profile=profile, shuffle=shuffle, pcp=pcp, **shapes[shape])


op_strategy = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 20), st.integers(0, 3), st.integers(1, 12)),
    st.tuples(st.just("alloc"), st.integers(0, 20), st.integers(0, 3), st.integers(100, 3000)),
    st.tuples(st.just("free"), st.integers(0, 2**16), st.integers(1, 12), st.integers(0, 20)),
    st.tuples(st.just("free"), st.integers(0, 2**16), st.integers(50, 3000), st.integers(0, 20)),
    st.tuples(st.just("decay"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("touch"), st.integers(0, 2**16), st.integers(0, 300), st.just(0)),
    st.tuples(st.just("drain"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("reclaim"), st.integers(0, 1), st.just(0), st.just(0)),
    st.tuples(st.just("advance"), st.integers(0, 5000), st.just(0), st.just(0)),
)


def pick_order(raw: int, max_order: int) -> int:
    """Mostly small orders, sometimes the big ones."""
    return raw % 4 if raw < 12 else raw % (max_order + 1)


def observe(g: Guest, rec: RecordingReporter) -> dict:
    w = g.worker
    return {
        "alloc": snapshot(g.allocator),
        "calls": list(rec.calls),
        "worker": (
            w.state,
            w.next_event_ns(),
            w.passes,
            w.reports,
            w.reported_blocks,
            w.reported_pages,
            w.report_errors,
            w.budget_exhaustions,
            w.zones_skipped,
        ),
        "backing": g.backing.state.tobytes(),
    }


def apply(g: Guest, held: dict[int, list[int]], op: tuple) -> object:  # noqa: PLR0911
    """Apply one op to one guest; returns what the op returned (for comparison)."""
    kind, a, b, c = op
    cfg = g.config
    cpu = (a + b + c) % cfg.vcpus  # the vCPU the task runs on
    if kind == "alloc":
        order = pick_order(a, cfg.max_order)
        pfns = g.alloc(order, b, c, cpu).tolist()
        held.setdefault(order, []).extend(pfns)
        return pfns
    if kind == "decay":
        return g.allocator.decay_pcp_high()
    if kind == "free":
        orders = sorted(o for o, blocks in held.items() if blocks)
        if not orders:
            return None
        order = orders[c % len(orders)]
        blocks = held[order]
        rng = np.random.default_rng(a)
        chosen = rng.permutation(len(blocks))[: min(b, len(blocks))]
        pfns = [blocks[i] for i in sorted(chosen)]
        held[order] = [p for i, p in enumerate(blocks) if i not in set(chosen.tolist())]
        g.free(pfns, order, cpu)
        return pfns
    if kind == "touch":
        start = a % cfg.nr_pages
        return g.touch([start], [min(b, cfg.nr_pages - start)]).tolist()
    if kind == "drain":
        g.drain_pcp()
        return None
    if kind == "reclaim":  # kswapd starts or stops balancing (pcp high clamped meanwhile)
        g.allocator.set_reclaim_active(bool(a))
        return g.allocator.reclaim_active()
    g.advance_to(g.now_ns + a * MS_NS)
    return g.now_ns


@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.integers(0, 7),
    profile=st.sampled_from(["5.7", "6.1", "modern"]),
    shuffle=st.booleans(),
    small_pcp=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    errors=st.lists(st.sampled_from([0, 0, 0, 0, 5]), max_size=12),
    latency_ms=st.sampled_from([0, 0, 30, 2500]),
    ops=st.lists(op_strategy, min_size=10, max_size=60),
    release_at=st.sampled_from([None, None, 1, 64]),
)
def test_fast_path_matches_reference(
    shape, profile, shuffle, small_pcp, seed, errors, latency_ms, ops, release_at
):
    cfg = config_for(shape, profile, shuffle, small_pcp)
    recs = [RecordingReporter(errors=list(errors), latency_ns=latency_ms * MS_NS) for _ in range(2)]
    ref = Guest(0, cfg, seed, recs[0], fast=False, cost_port=recs[0])  # calls take latency_ns
    fast = Guest(0, cfg, seed, recs[1], fast=True, cost_port=recs[1])
    if release_at is not None:  # links given back after every (or every 64th) page allocated
        fast.allocator.link_release_at = release_at
    helds: list[dict[int, list[int]]] = [{}, {}]
    assert observe(fast, recs[1]) == observe(ref, recs[0]), "after boot"
    for step, op in enumerate(ops):
        out_ref = apply(ref, helds[0], op)
        out_fast = apply(fast, helds[1], op)
        assert out_fast == out_ref, f"step {step} {op}: results differ"
        assert observe(fast, recs[1]) == observe(ref, recs[0]), f"step {step} {op}: state differs"


# memhog's cycle (workloads.fault_in / unmap_newest): grow in chunks, give back the
# newest blocks, grow again. The frees fill the pcp lists and grow their free counts, so
# the next chunks pop runs of blocks from a populated list: k_alloc's pop run (the
# highest zone's list, with one zone or two), which the random ops above rarely reach
# (a run of 2+ pops with free_count >= 2 in 0 of 300 examples, measured).
grow_shrink_ops = st.lists(
    st.tuples(
        st.sampled_from(["grow", "shrink"]),
        st.integers(1, 400),
        st.sampled_from([0, 0, 0, 1, 2, 3]),  # mostly order 0, as memhog's faults
    ),
    min_size=4,
    max_size=24,
)


@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.integers(0, 7),  # one zone (the direct path) or two (the walk), 1-3 vCPUs
    profile=st.sampled_from(["5.7", "6.1", "modern"]),
    small_pcp=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    ops=grow_shrink_ops,
)
@example(  # a run of 10 pops from a list whose free count is 30: free_count >> 10
    shape=0,
    profile="modern",
    small_pcp=False,
    seed=1,
    ops=[("grow", 40, 0), ("shrink", 30, 0), ("grow", 10, 0)],
)
def test_fast_path_matches_reference_growing_and_shrinking(shape, profile, small_pcp, seed, ops):
    cfg = config_for(shape, profile, False, small_pcp)
    recs = [RecordingReporter() for _ in range(2)]
    guests = [
        Guest(0, cfg, seed, recs[0], fast=False, cost_port=recs[0]),
        Guest(0, cfg, seed, recs[1], fast=True, cost_port=recs[1]),
    ]
    helds: list[list[int]] = [[], []]
    for step, (kind, n, raw_order) in enumerate(ops):
        order = raw_order if raw_order < 3 else cfg.pageblock_order  # a THP-sized block
        outs = []
        for g, held in zip(guests, helds, strict=True):
            if kind == "grow":
                pfns = g.alloc(order, MIGRATE_MOVABLE, n).tolist()
                held.extend((p, order) for p in pfns)
            else:  # munmap of the newest blocks, newest first, one free call per order
                k = min(n, len(held))
                newest = held[len(held) - k :][::-1]
                del held[len(held) - k :]
                pfns = [p for p, _ in newest]
                for o in sorted({o for _, o in newest}):
                    g.free([p for p, po in newest if po == o], o)
            outs.append(pfns)
        assert outs[1] == outs[0], f"step {step} {kind} {n}: results differ"
        assert observe(guests[1], recs[1]) == observe(guests[0], recs[0]), (
            f"step {step} {kind} {n}: state differs"
        )
