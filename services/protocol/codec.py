"""Protobuf <-> the plain protocol types, both ways, in one place.

The only module that knows how an epoch looks on the wire
(``protos/overcommit/v1/host.proto``): the client encodes a submission and
decodes the answer, the servicer decodes the submission and encodes the answer.
Decoding refuses only what validation refuses first too (a message with more guests
than the host has registered, or too many report batches, before building them), with
validation's own errors, so the gRPC and in-process paths refuse the same input with
the same error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np

from overcommit.v1 import common_pb2, host_pb2

from .messages import (
    DISCARD_DISABLED,
    DISCARD_DONTNEED,
    DISCARD_FREE,
    EMPTY_I64,
    EMPTY_RUNS,
    EMPTY_U64,
    EpochOutcome,
    EpochSubmission,
    GuestOps,
    GuestOutcome,
    GuestRegistration,
    PageRunOps,
    ReportAck,
    ReportOp,
)
from .validation import (
    check_guest_count,
    check_report_count,
    check_submission_shape,
    validate_registration,
)

DISCARD_TO_PB = {
    DISCARD_DONTNEED: host_pb2.DISCARD_MODE_DONTNEED,
    DISCARD_FREE: host_pb2.DISCARD_MODE_FREE,
    DISCARD_DISABLED: host_pb2.DISCARD_MODE_DISABLED,
}
DISCARD_FROM_PB = {pb: mode for mode, pb in DISCARD_TO_PB.items()}

_T = TypeVar("_T")


def _u64(values: Iterable[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.uint64)


# ------------------------------------------------------------------ registration


def encode_registration(
    experiment_id: str, host_id: int, reg: GuestRegistration
) -> host_pb2.RegisterGuestRequest:
    """Plain registration -> RegisterGuestRequest; what protobuf cannot carry (an unknown
    discard mode, a negative number) is refused here with the host's own error."""
    validate_registration(reg)
    request = host_pb2.RegisterGuestRequest(
        experiment_id=experiment_id,
        host_id=host_id,
        shard_id=reg.shard_id,
        guest_id=reg.guest_id,
        discard_mode=DISCARD_TO_PB.get(reg.discard_mode, host_pb2.DISCARD_MODE_UNSPECIFIED),
        page_size_bytes=reg.page_size_bytes,
        guest_thp=reg.guest_thp,
        report_capacity=reg.report_capacity,
        max_order=reg.max_order,
    )
    if reg.size_bytes is not None:
        request.size_bytes = reg.size_bytes
    else:
        request.nr_pages = reg.nr_pages
    return request


def decode_registration(request: host_pb2.RegisterGuestRequest) -> GuestRegistration:
    """RegisterGuestRequest -> plain registration (unset fields take their defaults)."""
    mode = DISCARD_FROM_PB.get(request.discard_mode)
    if mode is None:  # validation names the enum value in its refusal
        known = request.discard_mode in host_pb2.DiscardMode.values()
        mode = (
            host_pb2.DiscardMode.Name(request.discard_mode) if known else str(request.discard_mode)
        )
    defaults = GuestRegistration(0, 0, 0, "")
    sized = request.WhichOneof("size") == "size_bytes"
    return GuestRegistration(
        guest_id=request.guest_id,
        shard_id=request.shard_id,
        nr_pages=0 if sized else request.nr_pages,
        discard_mode=mode,
        report_capacity=request.report_capacity or defaults.report_capacity,
        max_order=request.max_order or defaults.max_order,
        guest_thp=request.guest_thp,
        page_size_bytes=request.page_size_bytes or defaults.page_size_bytes,
        size_bytes=request.size_bytes if sized else None,
    )


# ------------------------------------------------------------------ submissions


def encode_submission(
    experiment_id: str, host_id: int, sub: EpochSubmission
) -> host_pb2.SyncEpochRequest:
    """Plain submission -> SyncEpochRequest (packed arrays; what a guest shard sends)."""
    check_submission_shape(sub)
    request = host_pb2.SyncEpochRequest(
        experiment_id=experiment_id,
        host_id=host_id,
        shard_id=sub.shard_id,
        epoch=sub.epoch,
        sequence=sub.sequence,
        epoch_end_ns=sub.epoch_end_ns,
        next_epoch=sub.next_epoch,
        epochs=sub.epochs if sub.epochs > 1 else 0,
        sample=sub.sample,
    )
    add = request.guests.add
    for ops in sub.guests:  # per guest: only what it has (the shared empties are skipped)
        g = add(guest_id=ops.guest_id)
        ends = ops.epoch_seq_ends
        if ends is not EMPTY_U64 and len(ends):
            g.epoch_seq_ends.extend(_ints(ends))
        for report in ops.reports:
            batch = g.reports.add(op_seq=report.op_seq)
            batch.pfns.extend(_ints(report.pfns))
            batch.orders.extend(_ints(report.orders))
        if ops.touched.has_values():  # the host compares the lengths
            _put_runs(g.touched, ops.touched)
        if ops.freed.has_values():
            _put_runs(g.freed, ops.freed)
    return request


def _put_runs(target: common_pb2.SequencedPageRuns, runs: PageRunOps) -> None:
    target.starts.extend(_ints(runs.starts))
    target.npages.extend(_ints(runs.npages))
    target.op_seqs.extend(_ints(runs.op_seqs))


def _ints(values) -> list[int]:
    """An array's values as Python ints: a numpy array as it is (a shard's), anything
    else (a list a client built) through ``np.asarray``."""
    if type(values) is np.ndarray:
        return values.tolist()
    return np.asarray(values).tolist()


def _assemble(cls: type[_T], fields: dict[str, object]) -> _T:
    """An instance of the dataclass ``cls`` holding ``fields`` (every field of it), built
    without calling its ``__init__``. The decoders build a few per guest of every
    message, where a frozen dataclass's ``__init__`` cost more than the decoding."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


# GuestEpochOps field numbers (protos/overcommit/v1/host.proto), for ListFields
_OPS_GUEST_ID, _OPS_REPORTS, _OPS_TOUCHED, _OPS_FREED, _OPS_ENDS = 1, 2, 3, 4, 5


# A guest's runs with more values than this in all (or epoch ends, or a report's
# ranges, with more in one field) are converted on their own, straight from protobuf's
# storage (np.array over the field: no Python int per value); shorter ones are gathered
# and converted once per message, which is cheaper for the few values most fields hold.
BULK_VALUES = 256
# Once this many values are gathered as Python ints (about 36 bytes each) in a
# message, its later fields are converted on their own (so at most GATHER_MAX +
# BULK_VALUES are). With the guest count (at most the host's registered guests) this
# bounds what decoding a message can take: its arrays, 8 bytes per value, and little
# more.
GATHER_MAX = 1 << 16


def _own_u64(field: Any) -> np.ndarray:
    """A repeated uint64 field as its own read-only array, copied in bulk."""
    arr = np.array(field, dtype=np.uint64)
    arr.flags.writeable = False
    return arr


def decode_header(request: host_pb2.SyncEpochRequest) -> EpochSubmission:
    """A SyncEpochRequest's scalar fields as a submission with no guests (what the host
    checks before decoding the guests)."""
    return _submission(request, ())


def _submission(
    request: host_pb2.SyncEpochRequest, guests: tuple[GuestOps, ...]
) -> EpochSubmission:
    """The submission of ``request``'s scalar fields and ``guests``."""
    return EpochSubmission(
        request.shard_id,
        request.epoch,
        request.sequence,
        request.epoch_end_ns,
        guests,
        request.next_epoch,
        request.epochs or 1,
        request.sample,
    )


def decode_submission(
    request: host_pb2.SyncEpochRequest, max_guests: int | None = None
) -> EpochSubmission:
    """SyncEpochRequest -> plain submission (numpy arrays); validation comes after.

    Every guest's short run arrays and epoch ends are gathered into one list and
    converted once; each guest gets views of that array (lengths as sent: validation
    compares them). Long fields (``BULK_VALUES``), and every field once ``GATHER_MAX``
    values are gathered, are converted on their own. A sub-message set but empty
    decodes as one not set.

    Before anything is built, a message with more guests than ``max_guests`` (the
    host's registered guests; None: not checked) is refused, and so is one whose report
    batches pass ``MAX_REPORTS_PER_MESSAGE``, with the errors validation gives: a
    message of tiny entries would otherwise decode to a hundred times its size."""
    if max_guests is not None:
        check_guest_count(len(request.guests), max_guests)
    values: list[int] = []
    nreports = 0
    # per guest: guest_id, reports, then where its touched runs, freed runs and epoch
    # ends are ((offset, lengths) in values, or converted on their own: _own_runs,
    # _gather_ends), or None for what the guest did not send
    layout: list[tuple] = []
    for gi, g in enumerate(request.guests):
        guest_id, touched, freed, ends = g.guest_id, None, None, None
        reports: tuple[ReportOp, ...] = ()
        for fd, value in g.ListFields():  # only the fields that are set
            number = fd.number
            if number in (_OPS_TOUCHED, _OPS_FREED):
                a, b, c = value.starts, value.npages, value.op_seqs
                at: Any = (len(values), len(a), len(b), len(c))
                if at[1] + at[2] + at[3] > BULK_VALUES or at[0] > GATHER_MAX:
                    at = _own_runs(a, b, c)
                else:  # inline: this is the common case, taken per guest per message
                    values += a[:]
                    values += b[:]
                    values += c[:]
                if number == _OPS_TOUCHED:
                    touched = at
                else:
                    freed = at
            elif number == _OPS_ENDS:
                ends = _gather_ends(value, values)
            elif number == _OPS_REPORTS:
                nreports += len(value)
                check_report_count(gi, nreports)
                reports = tuple(_decode_report(r) for r in value)
        layout.append((guest_id, reports, touched, freed, ends))
    if values:
        arr = np.array(values, dtype=np.uint64)
        arr.flags.writeable = False  # shared by every guest's views
    else:
        arr = EMPTY_U64  # nothing to view (and the shared empty is left as it is)
    guests = tuple(
        _assemble(
            GuestOps,
            {
                "guest_id": guest_id,
                "reports": reports,
                "touched": _runs_view(arr, touched),
                "freed": _runs_view(arr, freed),
                "epoch_seq_ends": _ends_view(arr, ends),
            },
        )
        for guest_id, reports, touched, freed, ends in layout
    )
    return _submission(request, guests)


def _own_runs(starts: Any, npages: Any, op_seqs: Any) -> PageRunOps:
    """Runs whose three fields are converted on their own (long, or past GATHER_MAX)."""
    return _assemble(
        PageRunOps,
        {"starts": _own_u64(starts), "npages": _own_u64(npages), "op_seqs": _own_u64(op_seqs)},
    )


def _gather_ends(value: Any, values: list[int]) -> np.ndarray | tuple[int, int]:
    """A guest's epoch ends: (offset, n) in ``values``, or their own array (as above)."""
    if len(value) > BULK_VALUES or len(values) > GATHER_MAX:
        return _own_u64(value)
    at = (len(values), len(value))
    values += value[:]
    return at


def _decode_report(r: Any) -> ReportOp:
    if len(r.pfns) <= BULK_VALUES and len(r.orders) <= BULK_VALUES:
        return ReportOp(r.op_seq, _u64(r.pfns), np.fromiter(r.orders, dtype=np.uint32))
    return ReportOp(
        r.op_seq, np.array(r.pfns, dtype=np.uint64), np.array(r.orders, dtype=np.uint32)
    )


def _runs_view(arr: np.ndarray, at: Any) -> PageRunOps:
    """The three parallel arrays of one guest's runs: views of ``arr`` (lengths as sent),
    or the runs converted on their own."""
    if at is None:
        return EMPTY_RUNS
    if isinstance(at, PageRunOps):
        return at if at.has_values() else EMPTY_RUNS
    o, a, b, c = at
    if not (a or b or c):
        return EMPTY_RUNS
    return _assemble(
        PageRunOps,
        {
            "starts": arr[o : o + a],
            "npages": arr[o + a : o + a + b],
            "op_seqs": arr[o + a + b : o + a + b + c],
        },
    )


def _ends_view(arr: np.ndarray, ends: Any) -> np.ndarray:
    """One guest's epoch ends: a view of ``arr``, the array converted on its own, or the
    shared empty."""
    if ends is None:
        return EMPTY_U64
    if isinstance(ends, np.ndarray):
        return ends
    return arr[ends[0] : ends[0] + ends[1]]


# ------------------------------------------------------------------ outcomes


def encode_outcome(outcome: EpochOutcome) -> host_pb2.SyncEpochResponse:
    """Plain outcome -> SyncEpochResponse."""
    response = host_pb2.SyncEpochResponse(epoch=outcome.epoch, sequence=outcome.sequence)
    add = response.guests.add
    for g in outcome.guests:
        result = add(guest_id=g.guest_id, stopped=g.stopped)
        for ack in g.acks:
            result.report_acks.add(
                op_seq=ack.op_seq,
                status=host_pb2.REPORT_STATUS_OK if ack.ok else host_pb2.REPORT_STATUS_ERROR,
                discarded_pages=ack.discarded_pages,
                latency_ns=ack.latency_ns,
            )
        if len(g.swapped_starts):
            result.swapped_out.starts.extend(g.swapped_starts.tolist())
            result.swapped_out.npages.extend(g.swapped_npages.tolist())
        if g.lost_ns:
            _put_map(result.lost_ns, g.lost_ns)
        if g.touched_pages:
            _put_map(result.touched_pages, g.touched_pages)
    if outcome.sample is not None:
        _put_map(response.sample_counters, outcome.sample)
    return response


def _put_map(target: Any, values: dict[str, int]) -> None:
    """Set a protobuf map's entries item by item: its update() goes through
    collections.abc, several times slower."""
    for key, value in values.items():
        target[key] = value


def _i64_or_empty(values) -> np.ndarray:
    """A repeated integer field as int64; most answers carry none (shared, never written)."""
    return np.fromiter(values, dtype=np.int64) if len(values) else EMPTY_I64


def _map_dict(entries: Any) -> dict[str, int]:
    """A protobuf map as a dict, key by key (faster than dict() over its ABC views)."""
    return {key: entries[key] for key in entries}


# GuestEpochResult field numbers (protos/overcommit/v1/host.proto), for ListFields
_RES_GUEST_ID, _RES_ACKS, _RES_SWAPPED, _RES_LOST, _RES_TOUCHED, _RES_STOPPED = 1, 2, 3, 4, 5, 6


def decode_outcome(response: host_pb2.SyncEpochResponse) -> EpochOutcome:
    """SyncEpochResponse -> plain outcome (for the guest shard that sent the epoch).
    Per guest only the fields that are set are read (most answers carry no acks,
    swap-outs or costs)."""
    guests = []
    for g in response.guests:
        fields: dict[str, object] = {
            "guest_id": 0,
            "acks": [],
            "swapped_starts": EMPTY_I64,
            "swapped_npages": EMPTY_I64,
            "lost_ns": {},
            "touched_pages": {},
            "stopped": False,
        }
        for fd, value in g.ListFields():  # only the fields that are set
            number = fd.number
            if number == _RES_LOST:
                fields["lost_ns"] = _map_dict(value)
            elif number == _RES_TOUCHED:
                fields["touched_pages"] = _map_dict(value)
            elif number == _RES_GUEST_ID:
                fields["guest_id"] = value
            elif number == _RES_SWAPPED:
                fields["swapped_starts"] = _i64_or_empty(value.starts)
                fields["swapped_npages"] = _i64_or_empty(value.npages)
            elif number == _RES_ACKS:
                fields["acks"] = [
                    ReportAck(
                        a.op_seq,
                        a.status == host_pb2.REPORT_STATUS_OK,
                        a.discarded_pages,
                        a.latency_ns,
                    )
                    for a in value
                ]
            elif number == _RES_STOPPED:
                fields["stopped"] = value
        guests.append(_assemble(GuestOutcome, fields))
    return EpochOutcome(
        response.epoch,
        response.sequence,
        tuple(guests),
        _map_dict(response.sample_counters) if response.sample_counters else None,
    )
