"""Applying one guest's operations to the host core, and merging what guests learn.

Plain functions the epoch barrier calls (:mod:`services.host.barrier`); no
transport, no threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import numpy as np

from services.host.core.host import Host
from services.protocol.messages import GuestOps, GuestOutcome, ReportAck

SMALL_GROUPING = 64  # runs up to which _groups_by_seq groups in plain Python


def has_news(outcome: GuestOutcome) -> bool:
    return bool(len(outcome.swapped_starts) or outcome.stopped)


def merge_outcomes(first: GuestOutcome, then: GuestOutcome) -> GuestOutcome:
    """What a guest learns at once about two stretches of epochs (swap-outs, stop)."""
    merged = GuestOutcome(
        then.guest_id, acks=then.acks, lost_ns=then.lost_ns, touched_pages=then.touched_pages
    )
    merged.swapped_starts = np.concatenate([first.swapped_starts, then.swapped_starts])
    merged.swapped_npages = np.concatenate([first.swapped_npages, then.swapped_npages])
    merged.stopped = first.stopped or then.stopped
    return merged


def apply_guest_ops(host: Host, ops: GuestOps, outcomes: dict[int, GuestOutcome]) -> None:
    """Apply one guest's operations in op-sequence order (runs sharing an op_seq together).

    Freed runs are not applied: a guest's free is invisible to the host (discards
    come through reports). Once the host has stopped the guest (out-of-memory
    policy, possibly during this epoch) its remaining operations are skipped and
    its reports acknowledged with an error.
    """
    steps: list[tuple[int, str, Any]] = [(r.op_seq, "report", r) for r in ops.reports]
    steps += [(seq, "touch", idx) for seq, idx in _groups_by_seq(ops.touched.op_seqs)]
    steps.sort(key=lambda step: step[0])
    outcome = outcomes[ops.guest_id]
    for _, kind, what in steps:
        if host.is_stopped(ops.guest_id):
            if kind == "report":
                outcome.acks.append(ReportAck(what.op_seq, ok=False))
            continue
        if kind == "report":
            result = host.apply_report(
                ops.guest_id, what.pfns.astype(np.int64), what.orders.astype(np.int64)
            )
            outcome.acks.append(
                ReportAck(
                    op_seq=what.op_seq,
                    ok=True,
                    discarded_pages=int(result.released_pages) + int(result.lazy_pages),
                    latency_ns=int(result.latency_ns),
                )
            )
        else:
            result = host.apply_touch(
                ops.guest_id,
                ops.touched.starts[what].astype(np.int64),
                ops.touched.npages[what].astype(np.int64),
            )
            _add_counts(outcome.lost_ns, result.lost_ns)
            _add_counts(outcome.touched_pages, result.prior_pages)


def apply_epoch_ops(host: Host, all_ops: list[GuestOps], outcomes: dict[int, GuestOutcome]) -> None:
    """``apply_guest_ops`` for each guest of one epoch, in the order given (guest-id
    order), the same in effect: guests in a row that only touched pages go to the host
    in one ``Host.apply_touch_batch`` call; a guest with reports (or runs out of op
    order) takes ``apply_guest_ops``."""
    batch: list[tuple[GuestOps, list[tuple[int, np.ndarray | slice]]]] = []
    for ops in all_ops:
        groups = _groups_by_seq(ops.touched.op_seqs)
        if not ops.reports and all(isinstance(idx, slice) for _, idx in groups):
            if groups and not host.is_stopped(ops.guest_id):
                batch.append((ops, groups))
            continue
        _apply_touch_batch(host, batch, outcomes)
        batch = []
        apply_guest_ops(host, ops, outcomes)
    _apply_touch_batch(host, batch, outcomes)


def _apply_touch_batch(
    host: Host,
    batch: list[tuple[GuestOps, list[tuple[int, np.ndarray | slice]]]],
    outcomes: dict[int, GuestOutcome],
) -> None:
    """Guests whose touch runs are logged in op order (each operation a slice of them)."""
    if not batch:
        return
    starts, npages, run_bounds, group_bounds = [], [], [0], [0]
    for ops, groups in batch:
        lo = groups[0][1].start  # type: ignore[union-attr]
        hi = groups[-1][1].stop  # type: ignore[union-attr]
        starts.append(ops.touched.starts[lo:hi])
        npages.append(ops.touched.npages[lo:hi])
        base = run_bounds[-1] - lo
        run_bounds += [base + idx.stop for _, idx in groups]  # type: ignore[union-attr]
        group_bounds.append(len(run_bounds) - 1)
    results = host.apply_touch_batch(
        [ops.guest_id for ops, _ in batch],
        np.concatenate(starts).astype(np.int64),
        np.concatenate(npages).astype(np.int64),
        np.array(run_bounds, dtype=np.int64),
        np.array(group_bounds, dtype=np.int64),
    )
    for (ops, _), result in zip(batch, results, strict=True):
        if result is not None:
            outcome = outcomes[ops.guest_id]
            _add_counts(outcome.lost_ns, result[0])
            _add_counts(outcome.touched_pages, result[1])


def _groups_by_seq(op_seqs: np.ndarray) -> list[tuple[int, np.ndarray | slice]]:
    """Indices of runs grouped by op_seq, groups in op_seq order, runs in listed order."""
    n = len(op_seqs)
    if n == 0:
        return []
    if n <= SMALL_GROUPING:  # a guest's runs of one epoch, mostly: plain ints are faster
        groups = _sorted_groups(op_seqs.tolist())
        if groups is not None:
            return groups
    if (op_seqs[1:] >= op_seqs[:-1]).all():  # logged in op order (the simulator's guests)
        cuts = np.flatnonzero(op_seqs[1:] != op_seqs[:-1]) + 1
        bounds = [0, *cuts.tolist(), n]
        return [(int(op_seqs[a]), slice(a, b)) for a, b in pairwise(bounds)]
    order = np.argsort(op_seqs, kind="stable")
    seqs = op_seqs[order]
    cuts = np.flatnonzero(seqs[1:] != seqs[:-1]) + 1
    # a group's op_seq is that of its first run (group[0] indexes op_seqs, not seqs)
    return [(int(op_seqs[group[0]]), group) for group in np.split(order, cuts)]


def _sorted_groups(seqs: list[int]) -> list[tuple[int, np.ndarray | slice]] | None:
    """``_groups_by_seq`` of op_seqs in non-decreasing order; None if they are not."""
    groups: list[tuple[int, np.ndarray | slice]] = []
    first, prev = 0, seqs[0]
    for i, seq in enumerate(seqs):
        if seq != prev:
            if seq < prev:
                return None
            groups.append((prev, slice(first, i)))
            first, prev = i, seq
    groups.append((prev, slice(first, len(seqs))))
    return groups


def _add_counts(total: dict[str, int], more: Mapping[str, int]) -> None:
    """Add ``more`` into ``total``, kind by kind. Kinds with nothing (0) are left out:
    an answer carries only what happened (a guest adds what it gets; a proto3 map
    gives 0 for a kind it lacks), and most of a busy host's answers are mostly 0s."""
    for key, value in more.items():
        if value:
            total[key] = total.get(key, 0) + int(value)


def record_swapped(
    outcomes: dict[int, GuestOutcome], swapped: Mapping[int, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Append reclaim's swap-outs (guest -> (starts, npages)) to the guests' outcomes."""
    for guest_id, (starts, npages) in swapped.items():
        if len(starts) == 0:
            continue
        g = outcomes[guest_id]
        g.swapped_starts = np.concatenate([g.swapped_starts, np.asarray(starts, dtype=np.int64)])
        g.swapped_npages = np.concatenate([g.swapped_npages, np.asarray(npages, dtype=np.int64)])
