"""The codec's decoders against plain field-by-field decoding of the same messages.

``decode_submission`` converts a guest's three run arrays in one go and skips
sub-messages that are not set; ``decode_outcome`` skips empty acks and swap-outs.
Any protobuf message a client may send, lengths that differ and sub-messages set
but empty included, must decode to the same plain values as converting every
field on its own (the reference below).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from overcommit.v1 import host_pb2
from services.protocol.codec import decode_outcome, decode_submission

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
def run_fields(draw, runs):
    """Fill a SequencedPageRuns: absent, set but empty, or with lists of any lengths."""
    how = draw(st.sampled_from(["absent", "empty", "lists"]))
    if how == "empty":
        runs.SetInParent()
    elif how == "lists":
        runs.starts.extend(draw(st.lists(U64, max_size=4)))
        runs.npages.extend(draw(SMALL))
        runs.op_seqs.extend(draw(SMALL))


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
            b.pfns.extend(draw(SMALL))
            b.orders.extend(draw(st.lists(st.integers(0, 12), max_size=4)))
        draw(run_fields(g.touched))
        draw(run_fields(g.freed))
        g.epoch_seq_ends.extend(draw(SMALL))
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
