"""What decoding a SyncEpochRequest may cost: bounded by the message's arrays.

A message of one long field decodes without a Python int per value (the field is
copied in bulk), a message naming more guests than the host has registered, or
carrying more report batches than any simulation makes, is refused before
anything is built, and fields past ``GATHER_MAX`` gathered values decode as the
ones before them.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from overcommit.v1 import host_pb2
from services.protocol import codec
from services.protocol.codec import decode_submission
from services.protocol.validation import MAX_REPORTS_PER_MESSAGE
from services.transport.errors import StatusError


def _wire(request: host_pb2.SyncEpochRequest) -> host_pb2.SyncEpochRequest:
    return host_pb2.SyncEpochRequest.FromString(request.SerializeToString())


def _traced_peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_field_decodes_in_little_more_than_its_arrays() -> None:
    n = 1_000_000
    values = ((np.arange(n, dtype=np.uint64) % 16_000) + 200).tolist()  # 2-byte varints
    request = host_pb2.SyncEpochRequest(experiment_id="e", host_id=0, shard_id=0)
    g = request.guests.add(guest_id=1)
    for field in (g.touched.starts, g.touched.npages, g.touched.op_seqs):
        field.extend(values)
    wire = _wire(request)
    sub, peak = _traced_peak(lambda: decode_submission(wire))
    runs = sub.guests[0].touched
    arrays = runs.starts.nbytes + runs.npages.nbytes + runs.op_seqs.nbytes
    assert runs.starts.tolist() == values and runs.op_seqs.tolist() == values
    # one Python int per value (as a gathered list) would take 4.5x the arrays
    assert peak < arrays + (4 << 20), (peak, arrays)


def test_more_guests_than_registered_are_refused_before_anything_is_built() -> None:
    request = host_pb2.SyncEpochRequest(experiment_id="e", host_id=0, shard_id=0)
    for i in range(100_000):
        request.guests.add(guest_id=i).touched.starts.append(i)
    wire = _wire(request)
    with pytest.raises(StatusError) as err:
        _traced_peak(lambda: decode_submission(wire, max_guests=3))
    assert err.value.code().name == "INVALID_ARGUMENT"
    assert err.value.details().startswith("guests=100000: ")
    assert "3 guests registered" in err.value.details()

    def refused() -> None:
        with pytest.raises(StatusError):
            decode_submission(wire, max_guests=3)

    _, peak = _traced_peak(refused)
    assert peak < 1 << 20  # nothing per guest was built (100,000 guests take ~100 MB)
    assert len(decode_submission(wire, max_guests=100_000).guests) == 100_000


def test_too_many_report_batches_are_refused_at_the_guest_that_passes_the_limit() -> None:
    request = host_pb2.SyncEpochRequest(experiment_id="e", host_id=0, shard_id=0)
    first = request.guests.add(guest_id=1)
    for _ in range(MAX_REPORTS_PER_MESSAGE - 1):
        first.reports.add(op_seq=1, pfns=[0], orders=[0])
    second = request.guests.add(guest_id=2)
    second.reports.add(op_seq=1, pfns=[0], orders=[0])
    wire = _wire(request)
    assert len(decode_submission(wire).guests[1].reports) == 1  # at the limit: decoded
    second.reports.add(op_seq=2, pfns=[0], orders=[0])
    with pytest.raises(StatusError) as err:
        decode_submission(_wire(request))
    assert err.value.details().startswith(f"guests[1].reports={MAX_REPORTS_PER_MESSAGE + 1}: ")


def test_fields_past_the_gathered_values_decode_as_the_ones_before() -> None:
    request = host_pb2.SyncEpochRequest(experiment_id="e", host_id=0, shard_id=0)
    rng = np.random.default_rng(7)
    per_field = codec.BULK_VALUES // 3 - 5  # a guest's runs are gathered while there is room
    guests = codec.GATHER_MAX // (3 * per_field + 2) + 3
    expect = []
    for i in range(guests):
        g = request.guests.add(guest_id=i)
        cols = [rng.integers(0, 2**63, per_field, dtype=np.uint64).tolist() for _ in range(3)]
        g.touched.starts.extend(cols[0])
        g.touched.npages.extend(cols[1])
        g.touched.op_seqs.extend(cols[2])
        g.epoch_seq_ends.extend(cols[0][:2])
        expect.append((cols, cols[0][:2]))
    sub = decode_submission(_wire(request))
    own = 0
    for ops, (cols, ends) in zip(sub.guests, expect, strict=True):
        got = [ops.touched.starts, ops.touched.npages, ops.touched.op_seqs]
        assert [a.tolist() for a in got] == cols
        assert ops.epoch_seq_ends.tolist() == ends
        assert all(a.dtype == np.uint64 and not a.flags.writeable for a in got)
        own += ops.touched.starts.base is None
    # the first guests' runs are views of the gathered values, the last ones' their own
    assert sub.guests[0].touched.starts.base is not None
    assert 0 < own < guests, "the last guests' runs must be past GATHER_MAX"
