"""Conversions between the guest shard's op logs and the HostService plain types.

The shard (``services/guest/shard.py``) knows nothing of the wire; this module
turns its per-epoch op logs into ``GuestOps`` (which ``build_sync_request``
packs into a SyncEpochRequest) and the host's ``EpochOutcome`` back into the
shard's ``GuestEpochResult``.
"""

from __future__ import annotations

import numpy as np

from services.guest.shard import GuestEpochOps, GuestEpochResult, GuestInit
from services.host.transport import (
    EpochOutcome,
    GuestOps,
    GuestRegistration,
    PageRunOps,
    ReportOp,
    build_sync_request,
)

EMPTY = np.zeros(0, np.uint64)


def _runs(seqs: list[int], starts: list[np.ndarray], npages: list[np.ndarray]) -> PageRunOps:
    if not seqs:
        return PageRunOps()
    op_seqs = np.concatenate([np.full(len(s), q, np.uint64) for q, s in zip(seqs, starts, strict=True)])
    return PageRunOps(
        starts=np.concatenate(starts).astype(np.uint64),
        npages=np.concatenate(npages).astype(np.uint64),
        op_seqs=op_seqs,
    )


def to_guest_ops(log: GuestEpochOps) -> GuestOps:
    reports = tuple(
        ReportOp(op_seq=q, pfns=p.astype(np.uint64), orders=o.astype(np.uint32))
        for q, p, o in zip(log.report_seq, log.report_pfns, log.report_orders, strict=True)
    )
    return GuestOps(
        guest_id=log.guest_id,
        reports=reports,
        touched=_runs(log.touch_seq, log.touch_start, log.touch_npages),
        freed=_runs(log.free_seq, log.free_start, log.free_npages),
        epoch_seq_ends=np.asarray(log.epoch_seq_ends, np.uint64) if log.epoch_seq_ends else EMPTY,
    )


def from_outcome(outcome: EpochOutcome) -> list[GuestEpochResult]:
    out = []
    for g in outcome.guests:
        out.append(GuestEpochResult(
            guest_id=g.guest_id,
            report_errors=sum(1 for a in g.acks if not a.ok),
            swapped_start=np.asarray(g.swapped_starts, np.int64),
            swapped_npages=np.asarray(g.swapped_npages, np.int64),
            lost_ns={k: int(v) for k, v in g.lost_ns.items()},
        ))
    return out


def registration(init: GuestInit, shard_id: int, discard_mode: str) -> GuestRegistration:
    c = init.config
    return GuestRegistration(
        guest_id=init.guest_id, shard_id=shard_id, nr_pages=c.nr_pages, discard_mode=discard_mode,
        report_capacity=c.reporting.capacity, max_order=c.max_order, guest_thp=c.thp,
    )


def epoch_request(experiment_id: str, host_id: int, shard_id: int, epoch: int, epoch_end_ns: int,
                  logs: list[GuestEpochOps], next_epoch: int, epochs: int = 1, sample: bool = False):
    """One shard's SyncEpochRequest to one host for ``epochs`` epochs from ``epoch``:
    only the guests that did something."""
    return build_sync_request(
        experiment_id, host_id, shard_id, epoch, 0, epoch_end_ns,
        [to_guest_ops(log) for log in logs if not log.is_empty()], next_epoch, epochs, sample,
    )
