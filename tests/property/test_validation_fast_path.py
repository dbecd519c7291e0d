"""``validate_submission``'s fast path against the full check it answers for.

The fast path checks the touched runs of every touch-only guest of a message in
three array operations; at any doubt it hands over to
``validate_submission_in_full``. Whatever the message, good or bad, both must
accept it, or refuse it with the same status, field, value and reason.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from services.protocol.messages import (
    EpochSubmission,
    GuestOps,
    GuestRegistration,
    PageRunOps,
    ReportOp,
)
from services.protocol.validation import (
    _submission_valid,
    validate_submission,
    validate_submission_in_full,
)
from services.transport.errors import StatusError

SHARD = 3
SIZES = (64, 512, 4096)


def outcome(check, sub, guests):
    try:
        check(sub, guests)
    except StatusError as err:
        return (err.code(), err.field, repr(err.value), err.reason)
    return None


def arr(values, dtype=np.uint64):
    return np.array(values, dtype=dtype)


@st.composite
def runs(draw, nr_pages: int, seqs: list[int]):
    """Touched or freed runs: mostly inside the guest, sometimes not (zero pages, past
    the end, an op_seq missing, a signed array)."""
    n = draw(st.integers(0, 4))
    starts = [draw(st.integers(0, nr_pages - 1)) for _ in range(n)]
    npages = [draw(st.integers(1, nr_pages - s)) for s in starts]
    op_seqs = [draw(st.sampled_from(seqs)) for _ in range(n)]
    fault = draw(st.sampled_from(["none"] * 6 + ["zero", "past", "seq_len", "npages_len", "neg"]))
    dtype = np.uint64
    if n and fault == "zero":
        npages[draw(st.integers(0, n - 1))] = 0
    elif n and fault == "past":
        i = draw(st.integers(0, n - 1))
        if draw(st.booleans()):
            starts[i] = nr_pages + draw(st.integers(0, 3))
        else:
            npages[i] = nr_pages - starts[i] + draw(st.integers(1, 3))
    elif fault == "seq_len":
        op_seqs = op_seqs[:-1] if n else [1]
    elif fault == "npages_len":
        npages = [*npages, 1]
    elif n and fault == "neg":
        dtype = np.int64
        starts[0] = -1
    return PageRunOps(arr(starts, dtype), arr(npages), arr(op_seqs))


@st.composite
def guest_ops(draw, guest_id: int, nr_pages: int, epochs: int):
    seqs = list(range(1, 9))
    reports = ()
    if draw(st.integers(0, 3)) == 0:
        order = draw(st.integers(0, 3))
        pfn = draw(st.integers(0, nr_pages // (1 << order) - 1)) << order
        if draw(st.integers(0, 4)) == 0:
            pfn += 1  # misaligned for order > 0
        reports = (ReportOp(draw(st.sampled_from(seqs)), arr([pfn]), arr([order], np.uint32)),)
    touched = draw(runs(nr_pages, seqs))
    freed = draw(runs(nr_pages, seqs)) if draw(st.integers(0, 3)) == 0 else PageRunOps()
    ends = np.zeros(0, np.uint64)
    if epochs > 1 or draw(st.integers(0, 9)) == 0:
        # one entry per epoch, sometimes none or one too many
        size = draw(st.sampled_from([epochs] * 4 + [0, epochs + 1]))
        ends = arr(sorted(draw(st.lists(st.integers(0, 9), min_size=size, max_size=size))))
    return GuestOps(guest_id, reports, touched, freed, ends)


@st.composite
def cases(draw):
    guests = {}
    for gid in range(10, 10 + draw(st.integers(1, 4))):
        shard = SHARD if draw(st.integers(0, 6)) else SHARD + 1
        guests[gid] = GuestRegistration(gid, shard, draw(st.sampled_from(SIZES)), "dontneed")
    epochs = draw(st.sampled_from([1, 1, 1, 2]))
    ids = draw(st.lists(st.sampled_from([*guests, 99]), min_size=0, max_size=5))
    ops = tuple(
        draw(guest_ops(gid, guests[gid].nr_pages if gid in guests else 64, epochs)) for gid in ids
    )
    return EpochSubmission(SHARD, 5, 0, 1_000, ops, 6, epochs), guests


def touch_only(gid, starts, npages):
    n = len(starts)
    return GuestOps(gid, touched=PageRunOps(arr(starts), arr(npages), arr([1] * n)))


REG = {gid: GuestRegistration(gid, SHARD, 64, "dontneed") for gid in (10, 11)}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
@example(  # good, touch-only: the fast path's own answer
    case=(EpochSubmission(SHARD, 5, 0, 1, (touch_only(10, [0], [64]),), 6, 1), REG)
)
@example(  # the second guest's run ends one page past the guest
    case=(
        EpochSubmission(
            SHARD, 5, 0, 1, (touch_only(10, [0], [64]), touch_only(11, [60], [5])), 6, 1
        ),
        REG,
    )
)
@example(  # a start past the end whose npages would wrap
    case=(EpochSubmission(SHARD, 5, 0, 1, (touch_only(11, [70], [1]),), 6, 1), REG)
)
@example(  # freed runs with npages only (the fast path once took them for no runs)
    case=(
        EpochSubmission(
            SHARD, 5, 0, 1, (GuestOps(11, freed=PageRunOps(arr([]), arr([1]), arr([]))),), 6, 1
        ),
        REG,
    )
)
def test_fast_path_answers_as_the_full_check(case):
    sub, guests = case
    want = outcome(validate_submission_in_full, sub, guests)
    assert outcome(validate_submission, sub, guests) == want
    event("refused" if want else "accepted")
    event(f"fast path: {_submission_valid(sub, guests)}")
