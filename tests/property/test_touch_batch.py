"""An epoch's touch operations applied in one host call against one call each.

``apply_epoch_ops`` hands the host the touch operations of every guest in a row
that only touched pages in one ``Host.apply_touch_batch`` call. The reference is
``apply_guest_ops`` for each guest in turn: one ``Host.apply_touch`` per operation,
in op_seq order, a guest's remaining operations skipped once the host stopped it.
Both run on twin hosts from the state machine's small configurations (pressure,
swap, zswap, both OOM policies, hugetlbfs); epochs mix touch-only guests, guests
with reports and guests whose runs are not in op order. After every epoch the
whole host state, every counter and every guest's outcome must be the same.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.host.apply import apply_epoch_ops, apply_guest_ops
from services.host.core.config import (
    BACKING_ANON,
    OOM_REFUSE,
    OOM_STOP_LARGEST,
    HostConfig,
    SwapConfig,
)
from services.host.core.host import Host
from services.protocol.messages import GuestOps, GuestOutcome, PageRunOps, ReportOp
from tests.host_helpers import host_state
from tests.property.test_host_state_machine import GRAN, host_configs


def outcome_view(o: GuestOutcome) -> tuple:
    return (o.guest_id, o.acks, dict(o.lost_ns), dict(o.touched_pages))


@st.composite
def guest_epoch(draw, gid: int, n: int):
    """One guest's operations of one epoch: touch operations of 1-4 runs each, with
    reports among them (sometimes); op_seqs in order, or shuffled (other clients may
    send them so)."""
    nops = draw(st.integers(1, 6))
    starts, npages, seqs, reports = [], [], [], []
    for seq in range(1, nops + 1):
        if draw(st.integers(0, 9)) == 0:  # a report (order-0..9 ranges) between touches
            order = draw(st.integers(0, 9))
            pfn = draw(st.integers(0, max(0, n // (1 << order) - 1))) << order
            reports.append(ReportOp(seq, np.array([pfn], np.uint64), np.array([order], np.uint32)))
            continue
        for _ in range(draw(st.integers(1, 4))):
            s = draw(st.integers(0, n - 1))
            starts.append(s)
            npages.append(draw(st.integers(1, min(n - s, 700))))
            seqs.append(seq)
    order = np.arange(len(seqs))
    if draw(st.integers(0, 5)) == 0:
        order = np.array(draw(st.permutations(list(range(len(seqs))))), dtype=np.int64)
    touched = PageRunOps(
        np.array(starts, np.uint64)[order] if seqs else np.zeros(0, np.uint64),
        np.array(npages, np.uint64)[order] if seqs else np.zeros(0, np.uint64),
        np.array(seqs, np.uint64)[order] if seqs else np.zeros(0, np.uint64),
    )
    return GuestOps(guest_id=gid, reports=tuple(reports), touched=touched)


def twin_hosts(config: HostConfig, guests: list[int]) -> tuple[Host, Host, dict[int, int]]:
    hosts = Host(7, config), Host(7, config)
    sizes = {}
    for gid, ngran in enumerate(guests, start=10):
        for h in hosts:
            h.add_guest(gid, ngran * GRAN, "dontneed")
        sizes[gid] = ngran * GRAN
    return hosts[0], hosts[1], sizes


def outcomes_view(outcomes: dict[int, GuestOutcome]) -> list[tuple]:
    return [outcome_view(o) for _, o in sorted(outcomes.items())]


def run_twins(config: HostConfig, guests: list[int], data) -> None:
    batched, reference, sizes = twin_hosts(config, guests)
    for _ in range(data.draw(st.integers(1, 6))):
        ids = data.draw(st.lists(st.sampled_from(sorted(sizes)), unique=True, min_size=1))
        all_ops = [data.draw(guest_epoch(gid, sizes[gid])) for gid in sorted(ids)]
        got = {gid: GuestOutcome(gid) for gid in sizes}
        want = {gid: GuestOutcome(gid) for gid in sizes}
        apply_epoch_ops(batched, all_ops, got)
        for ops in all_ops:
            apply_guest_ops(reference, ops, want)
        assert outcomes_view(got) == outcomes_view(want)
        assert host_state(batched) == host_state(reference)
        if data.draw(st.booleans()):
            got_runs = {g: (s.tolist(), n.tolist()) for g, (s, n) in batched.reclaim().items()}
            want_runs = {g: (s.tolist(), n.tolist()) for g, (s, n) in reference.reclaim().items()}
            assert got_runs == want_runs


SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@SETTINGS
@given(
    config=host_configs(),
    guests=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.data(),
)
def test_epoch_batch_matches_one_call_per_touch(config, guests, data):
    run_twins(config, guests, data)


@pytest.mark.parametrize("policy", [OOM_STOP_LARGEST, OOM_REFUSE])
@SETTINGS
@given(data=st.data())
def test_epoch_batch_under_oom(policy, data):
    """A host too small for its guests: most epochs stop a guest (the one touching, or
    another in the same batch, before or after its turn) or refuse pages."""
    config = HostConfig(
        memory_bytes=2 * GRAN * 4096,
        reserve_bytes=0,
        backing=BACKING_ANON,
        thp=data.draw(st.booleans()),
        swap=SwapConfig(capacity_bytes=data.draw(st.sampled_from([0, 64 * 4096]))),
        oom_policy=policy,
        debug_checks=False,
    )
    run_twins(config, [2, 3, 1], data)


def test_batch_bounds_and_runs_are_checked():
    host, _, _ = twin_hosts(HostConfig(memory_bytes=8 * GRAN * 4096, thp=False), [1, 1])
    starts = np.array([0, 10, 5], np.int64)
    npages = np.array([5, 5, 5], np.int64)
    before = host_state(host)
    for runs, groups in (([0, 1, 3], [0, 1]), ([0, 2, 3], [0, 1, 3]), ([0, 2, 1, 3], [0, 2, 3])):
        with pytest.raises(ValueError, match="bounds"):
            host.apply_touch_batch(
                [10, 11], starts, npages, np.array(runs, np.int64), np.array(groups, np.int64)
            )
    bad = np.array([0, 10, GRAN - 2], np.int64)  # guest 11's run ends past its pages
    with pytest.raises(ValueError, match="guest 11: run at pfn"):
        host.apply_touch_batch([10, 11], bad, npages, np.array([0, 1, 2, 3]), np.array([0, 2, 3]))
    assert host_state(host) == before
    got = host.apply_touch_batch(
        [10, 11], starts, npages, np.array([0, 1, 2, 3]), np.array([0, 2, 3])
    )
    assert [prior["unbacked"] for _, prior in got] == [10, 5]
