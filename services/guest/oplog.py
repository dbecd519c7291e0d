"""A guest's log of host-visible operations, and its report port.

Everything a guest does that its host must see (report batches, touched and freed
page runs) is logged here in op-sequence order, with the end of every epoch marked,
and handed over as one :class:`~services.protocol.messages.GuestOps` per sync
(:class:`services.guest.shard.GuestShard` keeps one log per guest).
"""

from __future__ import annotations

import numpy as np

from services.guest.core.reporting import ReportOutcome
from services.protocol.messages import EMPTY_RUNS, EMPTY_U64, GuestOps, PageRunOps, ReportOp
from services.units import RNG_KIND_REPORT_FAULT

REPORT_REJECTED = 5  # EIO: the error a failed report call returns (fault injection)
MAX_PENDING_RUNS = 1 << 20  # page runs a guest's log holds until the next sync


class OpLog:
    """One guest's PageReporter port plus its log of host-visible operations.

    The worker calls :meth:`report` when a report call completes (its latency,
    priced by the guest's cost port, has elapsed): the batch is logged then, in
    the epoch in which the call completes, and acknowledged with 0, as
    virtio-balloon does once the buffer is queued (§6.4, §4.7). The host applies
    it at that epoch's sync and can only refuse input that the guest model
    cannot produce (its acks are checked and counted as ``report_errors``).
    Every operation gets the next op sequence number; :meth:`take` hands the log
    over as the protocol's :class:`GuestOps`.
    """

    def __init__(self, guest_id: int, reject_reports: float = 0.0, seed: int = 0):
        self.guest_id = guest_id
        self._seq = 0
        if not 0.0 <= reject_reports <= 1.0:
            raise ValueError(f"reject_reports={reject_reports}: a fraction in [0, 1]")
        self.reject_reports = reject_reports
        # which calls fail: a stream of this guest's own, so shards never matter
        self._reject_rng = (
            np.random.default_rng(np.random.SeedSequence([seed, RNG_KIND_REPORT_FAULT, guest_id]))
            if reject_reports > 0
            else None
        )
        self.rejected = 0  # report calls failed by fault injection
        self._reports: list[ReportOp] = []
        self._touched = _RunLog()
        self._freed = _RunLog()
        self._epoch_seq_ends: list[int] = []
        self._empty = GuestOps(guest_id)
        self.dirty = False  # an op was logged in the current epoch

    def _clear(self) -> None:
        """An empty log; the run logs are emptied, not rebuilt (a take per guest per sync)."""
        self._reports = []
        self._touched.clear()
        self._freed.clear()
        self._epoch_seq_ends = []

    def _next_seq(self) -> int:
        self._seq += 1
        self.dirty = True
        return self._seq

    def end_epoch(self) -> None:
        """Mark where the current epoch's ops end (a sync may cover several epochs)."""
        self._epoch_seq_ends.append(self._seq)
        self.dirty = False

    def report(self, now_ns: int, pfns: np.ndarray, orders: np.ndarray) -> ReportOutcome:
        if self._reject_rng is not None and self._reject_rng.random() < self.reject_reports:
            # the report function failed (fault injection): nothing reaches the host, and
            # the worker puts the batch back unreported and ends its pass (§4.7)
            self.rejected += 1
            return ReportOutcome(error=REPORT_REJECTED)
        self._reports.append(
            ReportOp(
                self._next_seq(), np.array(pfns, dtype=np.uint64), np.array(orders, dtype=np.uint32)
            )
        )
        return ReportOutcome(error=0)

    def record_touch(self, starts: np.ndarray, npages: np.ndarray) -> None:
        if len(starts):
            self._touched.add(self._next_seq(), starts, npages)

    def record_free(self, starts: np.ndarray, npages: np.ndarray) -> None:
        if len(starts):
            self._freed.add(self._next_seq(), starts, npages)

    def is_empty(self) -> bool:
        return not (self._reports or self._touched.seqs or self._freed.seqs)

    @property
    def pending_runs(self) -> int:
        """Page runs logged and not yet taken by a sync (bounds a client's batches)."""
        return self._touched.nr_runs + self._freed.nr_runs

    def take(self) -> GuestOps:
        """The operations logged since the last take, and a fresh log. A guest that did
        nothing gets one shared empty GuestOps (most guests, most spans: keep it cheap)."""
        if self.is_empty():
            self._epoch_seq_ends = []
            return self._empty
        ends = self._epoch_seq_ends
        ops = GuestOps(
            guest_id=self.guest_id,
            reports=tuple(self._reports),
            touched=self._touched.runs(),
            freed=self._freed.runs(),
            epoch_seq_ends=np.asarray(ends, np.uint64) if len(ends) > 1 else EMPTY_U64,
        )
        self._clear()
        return ops


class _RunLog:
    """Page runs logged op by op, joined into one PageRunOps when taken."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.seqs: list[int] = []
        self._starts: list[np.ndarray] = []
        self._npages: list[np.ndarray] = []
        self.nr_runs = 0

    def add(self, seq: int, starts: np.ndarray, npages: np.ndarray) -> None:
        self.nr_runs += len(starts)
        self.seqs.append(seq)
        self._starts.append(np.asarray(starts, np.int64))
        self._npages.append(np.asarray(npages, np.int64))

    def runs(self) -> PageRunOps:
        if not self.seqs:
            return EMPTY_RUNS
        if len(self.seqs) == 1:  # one operation in the sync (most guests, most syncs)
            starts = self._starts[0]
            return PageRunOps(
                starts=starts.astype(np.uint64),
                npages=self._npages[0].astype(np.uint64),
                op_seqs=np.full(len(starts), self.seqs[0], np.uint64),
            )
        op_seqs = np.repeat(
            np.asarray(self.seqs, np.uint64), [len(s) for s in self._starts]
        ).astype(np.uint64, copy=False)
        return PageRunOps(
            starts=np.concatenate(self._starts).astype(np.uint64),
            npages=np.concatenate(self._npages).astype(np.uint64),
            op_seqs=op_seqs,
        )
