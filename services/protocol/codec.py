"""Protobuf <-> the plain protocol types, both ways, in one place.

The only module that knows how an epoch looks on the wire
(``protos/overcommit/v1/host.proto``): the client encodes a submission and
decodes the answer, the servicer decodes the submission and encodes the answer.
Decoding checks nothing that :mod:`services.protocol.validation` checks, so the
gRPC and in-process paths refuse the same input with the same error.
"""

from __future__ import annotations

from collections.abc import Iterable

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
from .validation import check_submission_shape, validate_registration

DISCARD_TO_PB = {
    DISCARD_DONTNEED: host_pb2.DISCARD_MODE_DONTNEED,
    DISCARD_FREE: host_pb2.DISCARD_MODE_FREE,
    DISCARD_DISABLED: host_pb2.DISCARD_MODE_DISABLED,
}
DISCARD_FROM_PB = {pb: mode for mode, pb in DISCARD_TO_PB.items()}


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
    for ops in sub.guests:
        g = request.guests.add(guest_id=ops.guest_id)
        if len(ops.epoch_seq_ends):
            g.epoch_seq_ends.extend(np.asarray(ops.epoch_seq_ends).tolist())
        for report in ops.reports:
            batch = g.reports.add(op_seq=report.op_seq)
            batch.pfns.extend(np.asarray(report.pfns).tolist())
            batch.orders.extend(np.asarray(report.orders).tolist())
        for target, runs in ((g.touched, ops.touched), (g.freed, ops.freed)):
            if len(runs.starts) or len(runs.op_seqs):
                target.starts.extend(np.asarray(runs.starts).tolist())
                target.npages.extend(np.asarray(runs.npages).tolist())
                target.op_seqs.extend(np.asarray(runs.op_seqs).tolist())
    return request


def _runs_from_pb(runs: common_pb2.SequencedPageRuns) -> PageRunOps:
    """The three parallel arrays from one list of their values (one conversion, not
    three; views of it), whatever their lengths (validation compares them)."""
    a, b, c = len(runs.starts), len(runs.npages), len(runs.op_seqs)
    if not (a or b or c):
        return EMPTY_RUNS
    values = np.array([*runs.starts, *runs.npages, *runs.op_seqs], dtype=np.uint64)
    return PageRunOps(values[:a], values[a : a + b], values[a + b :])


def decode_submission(request: host_pb2.SyncEpochRequest) -> EpochSubmission:
    """SyncEpochRequest -> plain submission (numpy arrays); validation comes after."""
    guests = tuple(
        GuestOps(
            guest_id=g.guest_id,
            reports=tuple(
                ReportOp(r.op_seq, _u64(r.pfns), np.fromiter(r.orders, dtype=np.uint32))
                for r in g.reports
            )
            if g.reports
            else (),
            touched=_runs_from_pb(g.touched) if g.HasField("touched") else EMPTY_RUNS,
            freed=_runs_from_pb(g.freed) if g.HasField("freed") else EMPTY_RUNS,
            epoch_seq_ends=_u64(g.epoch_seq_ends) if g.epoch_seq_ends else EMPTY_U64,
        )
        for g in request.guests
    )
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


# ------------------------------------------------------------------ outcomes


def encode_outcome(outcome: EpochOutcome) -> host_pb2.SyncEpochResponse:
    """Plain outcome -> SyncEpochResponse."""
    response = host_pb2.SyncEpochResponse(epoch=outcome.epoch, sequence=outcome.sequence)
    for g in outcome.guests:
        result = response.guests.add(guest_id=g.guest_id, stopped=g.stopped)
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
        result.lost_ns.update(g.lost_ns)
        result.touched_pages.update(g.touched_pages)
    if outcome.sample is not None:
        response.sample_counters.update(outcome.sample)
    return response


def _i64_or_empty(values) -> np.ndarray:
    """A repeated integer field as int64; most answers carry none (shared, never written)."""
    return np.fromiter(values, dtype=np.int64) if len(values) else EMPTY_I64


def decode_outcome(response: host_pb2.SyncEpochResponse) -> EpochOutcome:
    """SyncEpochResponse -> plain outcome (for the guest shard that sent the epoch)."""
    guests = tuple(
        GuestOutcome(
            guest_id=g.guest_id,
            acks=[
                ReportAck(
                    a.op_seq, a.status == host_pb2.REPORT_STATUS_OK, a.discarded_pages, a.latency_ns
                )
                for a in g.report_acks
            ]
            if g.report_acks
            else [],
            swapped_starts=_i64_or_empty(g.swapped_out.starts)
            if g.HasField("swapped_out")
            else EMPTY_I64,
            swapped_npages=_i64_or_empty(g.swapped_out.npages)
            if g.HasField("swapped_out")
            else EMPTY_I64,
            lost_ns={k: g.lost_ns[k] for k in g.lost_ns},
            touched_pages={k: g.touched_pages[k] for k in g.touched_pages},
            stopped=g.stopped,
        )
        for g in response.guests
    )
    return EpochOutcome(
        response.epoch,
        response.sequence,
        guests,
        dict(response.sample_counters) if response.sample_counters else None,
    )
