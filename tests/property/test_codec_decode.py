"""The codec against plain field-by-field encoding and decoding of the same values.

``decode_submission`` converts every guest's run arrays in one go (views of one
array) and reads only the fields that are set; ``decode_outcome`` likewise.
Any protobuf message a client may send, lengths that differ and sub-messages set
but empty included, must decode to the same plain values as converting every
field on its own (the references below). The encoders skip what a guest did not
do (the shared empties, empty maps) and must build the same message as writing
every field.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from overcommit.v1 import common_pb2, host_pb2
from services.protocol.codec import (
    BULK_VALUES,
    decode_outcome,
    decode_submission,
    encode_outcome,
    encode_submission,
)
from services.protocol.messages import (
    EMPTY_I64,
    EMPTY_RUNS,
    EMPTY_U64,
    EpochOutcome,
    EpochSubmission,
    GuestOps,
    GuestOutcome,
    PageRunOps,
    ReportAck,
    ReportOp,
)

U64 = st.integers(0, 2**64 - 1)
SMALL = st.lists(st.integers(0, 2**20), max_size=4)


def runs_ref(runs):
    return (
        np.fromiter(runs.starts, dtype=np.uint64),
        np.fromiter(runs.npages, dtype=np.uint64),
        np.fromiter(runs.op_seqs, dtype=np.uint64),
    )


def submission_ref(request):
    guests = [
        (
            g.guest_id,
            [(r.op_seq, list(r.pfns), list(r.orders)) for r in g.reports],
            runs_ref(g.touched),
            runs_ref(g.freed),
            list(g.epoch_seq_ends),
        )
        for g in request.guests
    ]
    return (request.shard_id, request.epoch, request.epochs or 1, request.sample, guests)


def submission_view(sub):
    guests = [
        (
            g.guest_id,
            [(r.op_seq, r.pfns.tolist(), r.orders.tolist()) for r in g.reports],
            (g.touched.starts, g.touched.npages, g.touched.op_seqs),
            (g.freed.starts, g.freed.npages, g.freed.op_seqs),
            np.asarray(g.epoch_seq_ends).tolist(),
        )
        for g in sub.guests
    ]
    return (sub.shard_id, sub.epoch, sub.epochs, sub.sample, guests)


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.tolist() == b.tolist()
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@st.composite
def long_values(draw):
    """A list about BULK_VALUES long (either side of it): a few drawn values repeated."""
    n = BULK_VALUES + draw(st.integers(-2, 2))
    pattern = draw(st.lists(U64, min_size=1, max_size=3))
    return (pattern * n)[:n]


def _u32(values):
    return [v & 0xFFFF_FFFF for v in values]


@st.composite
def run_fields(draw, runs):
    """Fill a SequencedPageRuns: absent, set but empty, or with lists of any lengths."""
    how = draw(st.sampled_from(["absent", "empty", "lists", "long"]))
    if how == "empty":
        runs.SetInParent()
    elif how == "lists":
        runs.starts.extend(draw(st.lists(U64, max_size=4)))
        runs.npages.extend(draw(SMALL))
        runs.op_seqs.extend(draw(SMALL))
    elif how == "long":  # around BULK_VALUES: converted on its own past it
        for field in (runs.starts, runs.npages, runs.op_seqs):
            field.extend(draw(long_values()))


@st.composite
def requests(draw):
    r = host_pb2.SyncEpochRequest(
        experiment_id="e",
        host_id=1,
        shard_id=draw(st.integers(0, 9)),
        epoch=draw(st.integers(0, 99)),
        epochs=draw(st.integers(0, 3)),
        sample=draw(st.booleans()),
    )
    for _ in range(draw(st.integers(0, 3))):
        g = r.guests.add(guest_id=draw(st.integers(0, 9)))
        for _ in range(draw(st.integers(0, 2))):
            b = g.reports.add(op_seq=draw(st.integers(0, 9)))
            b.pfns.extend(draw(st.one_of(SMALL, long_values())))
            orders = st.lists(st.integers(0, 2**32 - 1), max_size=4)
            b.orders.extend(draw(st.one_of(orders, long_values().map(_u32))))
        draw(run_fields(g.touched))
        draw(run_fields(g.freed))
        g.epoch_seq_ends.extend(draw(st.one_of(SMALL, long_values())))
    return r


@settings(max_examples=400, deadline=None)
@given(request=requests())
def test_decode_submission_as_field_by_field(request):
    wire = host_pb2.SyncEpochRequest.FromString(request.SerializeToString())
    assert same(submission_view(decode_submission(wire)), submission_ref(wire))


@st.composite
def responses(draw):
    r = host_pb2.SyncEpochResponse(epoch=draw(st.integers(0, 99)))
    for _ in range(draw(st.integers(0, 3))):
        g = r.guests.add(guest_id=draw(st.integers(0, 9)), stopped=draw(st.booleans()))
        for _ in range(draw(st.integers(0, 2))):
            g.report_acks.add(
                op_seq=draw(st.integers(0, 9)),
                status=draw(st.sampled_from([1, 2])),
                discarded_pages=draw(st.integers(0, 99)),
                latency_ns=draw(st.integers(0, 99)),
            )
        how = draw(st.sampled_from(["absent", "empty", "lists"]))
        if how == "empty":
            g.swapped_out.SetInParent()
        elif how == "lists":
            g.swapped_out.starts.extend(draw(SMALL))
            g.swapped_out.npages.extend(draw(SMALL))
        for key in draw(st.lists(st.sampled_from(["fault", "zero", "swapin"]), unique=True)):
            g.lost_ns[key] = draw(st.integers(0, 2**40))
        for key in draw(st.lists(st.sampled_from(["backed", "unbacked"]), unique=True)):
            g.touched_pages[key] = draw(st.integers(0, 2**30))
    if draw(st.booleans()):
        r.sample_counters["pool_used_bytes"] = draw(st.integers(0, 2**40))
    return r


@settings(max_examples=400, deadline=None)
@given(response=responses())
def test_decode_outcome_as_field_by_field(response):
    wire = host_pb2.SyncEpochResponse.FromString(response.SerializeToString())
    got = decode_outcome(wire)
    want = [
        (
            g.guest_id,
            [(a.op_seq, a.status == 1, a.discarded_pages, a.latency_ns) for a in g.report_acks],
            np.fromiter(g.swapped_out.starts, dtype=np.int64),
            np.fromiter(g.swapped_out.npages, dtype=np.int64),
            dict(g.lost_ns),
            dict(g.touched_pages),
            g.stopped,
        )
        for g in wire.guests
    ]
    view = [
        (
            g.guest_id,
            [(a.op_seq, a.ok, a.discarded_pages, a.latency_ns) for a in g.acks],
            g.swapped_starts,
            g.swapped_npages,
            g.lost_ns,
            g.touched_pages,
            g.stopped,
        )
        for g in got.guests
    ]
    assert same(view, want)
    assert got.sample == (dict(wire.sample_counters) if wire.sample_counters else None)


# ------------------------------------------------------------------ encoders

U64_ARRAYS = st.lists(st.integers(0, 2**64 - 1), max_size=4).map(
    lambda v: np.array(v, dtype=np.uint64)
)
# what else the shape check lets through: signed arrays and plain lists of
# non-negative integers (a client's own values; an empty list reads as floats and is
# refused); the encoder must send them alike
INT_VALUES = st.one_of(
    U64_ARRAYS,
    st.lists(st.integers(0, 2**63 - 1), max_size=4).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=4),
)


@st.composite
def plain_runs(draw):
    """A guest's runs as a shard builds them: the shared empty, an empty of its own, or
    three arrays (of any lengths: validation on the host compares them)."""
    how = draw(st.sampled_from(["shared", "own_empty", "arrays"]))
    if how == "shared":
        return EMPTY_RUNS
    if how == "own_empty":
        return PageRunOps(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    return PageRunOps(draw(INT_VALUES), draw(INT_VALUES), draw(INT_VALUES))


@st.composite
def submissions(draw):
    guests = []
    for gid in draw(st.lists(st.integers(0, 2**32), max_size=4)):
        reports = tuple(
            ReportOp(
                draw(st.integers(0, 99)),
                draw(INT_VALUES),
                draw(
                    st.lists(st.integers(0, 12), max_size=4).flatmap(
                        lambda v: st.sampled_from(
                            [v, np.array(v, dtype=np.uint32)]
                            if v
                            else [np.array(v, dtype=np.uint32)]
                        )
                    )
                ),
            )
            for _ in range(draw(st.integers(0, 2)))
        )
        ends = draw(st.sampled_from(["shared", "own_empty", "array"]))
        guests.append(
            GuestOps(
                gid,
                reports,
                draw(plain_runs()),
                draw(plain_runs()),
                EMPTY_U64
                if ends == "shared"
                else np.zeros(0, np.uint64)
                if ends == "own_empty"
                else draw(INT_VALUES),
            )
        )
    return EpochSubmission(
        shard_id=draw(st.integers(0, 9)),
        epoch=draw(st.integers(0, 2**40)),
        sequence=draw(st.integers(0, 9)),
        epoch_end_ns=draw(st.integers(0, 2**62)),
        guests=tuple(guests),
        next_epoch=draw(st.integers(0, 2**40)),
        epochs=draw(st.integers(1, 4)),
        sample=draw(st.booleans()),
    )


def submission_pb_ref(sub):
    """encode_submission written field by field, every guest and array as it is."""
    r = host_pb2.SyncEpochRequest(
        experiment_id="e",
        host_id=3,
        shard_id=sub.shard_id,
        epoch=sub.epoch,
        sequence=sub.sequence,
        epoch_end_ns=sub.epoch_end_ns,
        next_epoch=sub.next_epoch,
        epochs=sub.epochs if sub.epochs > 1 else 0,
        sample=sub.sample,
    )
    for ops in sub.guests:
        g = r.guests.add(guest_id=ops.guest_id)
        g.epoch_seq_ends.extend(int(v) for v in ops.epoch_seq_ends)
        for rep in ops.reports:
            b = g.reports.add(op_seq=rep.op_seq)
            b.pfns.extend(int(v) for v in rep.pfns)
            b.orders.extend(int(v) for v in rep.orders)
        for target, runs in ((g.touched, ops.touched), (g.freed, ops.freed)):
            if len(runs.starts) or len(runs.npages) or len(runs.op_seqs):  # any values
                target.starts.extend(int(v) for v in runs.starts)
                target.npages.extend(int(v) for v in runs.npages)
                target.op_seqs.extend(int(v) for v in runs.op_seqs)
    return r


@settings(max_examples=300, deadline=None)
@given(sub=submissions())
def test_encode_submission_as_field_by_field(sub):
    got = encode_submission("e", 3, sub)
    assert got == submission_pb_ref(sub)
    assert got.SerializeToString() == submission_pb_ref(sub).SerializeToString()
    # and back: the plain values the host decodes are the ones sent
    wire = host_pb2.SyncEpochRequest.FromString(got.SerializeToString())
    assert same(submission_view(decode_submission(wire)), submission_ref(wire))


@st.composite
def outcomes(draw):
    guests = []
    for gid in draw(st.lists(st.integers(0, 2**32), max_size=4)):
        swapped = draw(st.lists(st.tuples(st.integers(0, 2**40), st.integers(1, 512)), max_size=3))
        guests.append(
            GuestOutcome(
                gid,
                acks=[
                    ReportAck(draw(st.integers(0, 99)), draw(st.booleans()), 7, 9)
                    for _ in range(draw(st.integers(0, 2)))
                ],
                swapped_starts=np.array([s for s, _ in swapped], dtype=np.int64)
                if swapped
                else EMPTY_I64,
                swapped_npages=np.array([n for _, n in swapped], dtype=np.int64)
                if swapped
                else EMPTY_I64,
                # zeros included: an encoder sends what it is given
                lost_ns=draw(
                    st.dictionaries(
                        st.sampled_from(["fault", "zero", "swapin"]), st.integers(0, 2**40)
                    )
                ),
                touched_pages=draw(
                    st.dictionaries(st.sampled_from(["backed", "swapped"]), st.integers(0, 2**30))
                ),
                stopped=draw(st.booleans()),
            )
        )
    # a host that keeps a sample always has counters (an empty map reads as no sample)
    sample = draw(
        st.none() | st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 99), min_size=1)
    )
    return EpochOutcome(draw(st.integers(0, 99)), draw(st.integers(0, 9)), tuple(guests), sample)


def outcome_pb_ref(outcome):
    """encode_outcome written with the messages' constructors, every field given."""
    status = {True: host_pb2.REPORT_STATUS_OK, False: host_pb2.REPORT_STATUS_ERROR}
    results = [
        host_pb2.GuestEpochResult(
            guest_id=g.guest_id,
            report_acks=[
                host_pb2.ReportAck(
                    op_seq=a.op_seq,
                    status=status[a.ok],
                    discarded_pages=a.discarded_pages,
                    latency_ns=a.latency_ns,
                )
                for a in g.acks
            ],
            # an empty PageRuns sets nothing (the encoder leaves the field unset)
            swapped_out=common_pb2.PageRuns(
                starts=[int(v) for v in g.swapped_starts],
                npages=[int(v) for v in g.swapped_npages],
            )
            if len(g.swapped_starts)
            else None,
            lost_ns=dict(g.lost_ns),
            touched_pages=dict(g.touched_pages),
            stopped=g.stopped,
        )
        for g in outcome.guests
    ]
    return host_pb2.SyncEpochResponse(
        epoch=outcome.epoch,
        sequence=outcome.sequence,
        guests=results,
        sample_counters=outcome.sample or {},
    )


@settings(max_examples=300, deadline=None)
@given(outcome=outcomes())
def test_encode_outcome_as_field_by_field_and_back(outcome):
    got = encode_outcome(outcome)
    assert got == outcome_pb_ref(outcome)
    back = decode_outcome(host_pb2.SyncEpochResponse.FromString(got.SerializeToString()))
    assert back == outcome


def test_decoding_leaves_the_shared_empties_as_they_were():
    """A message with no arrays decodes to the shared empties, which stay as they were
    made, writable (only a message's own array is read-only). Every decode in this
    process before this test went through the same code, so a decoder that froze them
    shows here whatever the test order."""
    before = (True, True)  # np.zeros: writable
    request = host_pb2.SyncEpochRequest(experiment_id="e", host_id=1)
    request.guests.add(guest_id=1)
    sub = decode_submission(host_pb2.SyncEpochRequest.FromString(request.SerializeToString()))
    assert sub.guests[0].touched is EMPTY_RUNS and sub.guests[0].epoch_seq_ends is EMPTY_U64
    assert (EMPTY_U64.flags.writeable, EMPTY_RUNS.starts.flags.writeable) == before
    # a message with arrays: its guests' views cannot write into each other's values
    request.guests[0].touched.starts.extend([1, 2])
    request.guests[0].touched.npages.extend([1, 1])
    request.guests[0].touched.op_seqs.extend([0, 0])
    runs = decode_submission(request).guests[0].touched
    assert not runs.starts.flags.writeable and runs.starts.tolist() == [1, 2]
