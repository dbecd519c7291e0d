"""The plain message types of the guest-host protocol: one shape from shard to host and back.

A guest shard logs what each guest did in an epoch as one :class:`GuestOps`
(report batches, touched and freed page runs, each stamped with an op sequence
number) and sends a host one :class:`EpochSubmission` per sync; the host answers
with one :class:`EpochOutcome` holding a :class:`GuestOutcome` per guest.
Guests are announced once with a :class:`GuestRegistration`. These are the
types both sides use; protobuf (``protos/overcommit/v1/host.proto``) is only
their encoding on the wire (:mod:`services.protocol.codec`).

Arrays are numpy: pfns, page runs and op sequence numbers ``uint64``, orders
``uint32``; :mod:`services.protocol.validation` checks them before a host
applies anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.units import PAGE_SIZE

REPORT_CAPACITY = 32  # PAGE_REPORTING_CAPACITY: ranges per report (the default a guest registers)
MAX_ORDER = 10  # MAX_PAGE_ORDER on x86-64: the default highest order a guest reports

# What a report does on the host (§7.3): MADV_DONTNEED, MADV_FREE, or nothing.
DISCARD_DONTNEED = "dontneed"
DISCARD_FREE = "free"
DISCARD_DISABLED = "disabled"
DISCARD_MODES = (DISCARD_DONTNEED, DISCARD_FREE, DISCARD_DISABLED)

EMPTY_U64 = np.zeros(0, dtype=np.uint64)
EMPTY_I64 = np.zeros(0, dtype=np.int64)

# the gRPC method name of HostService.SyncEpoch (fault injection picks its replies)
SYNC_EPOCH_METHOD = "/overcommit.v1.HostService/SyncEpoch"
SYNC_EPOCHS_METHOD = "/overcommit.v1.HostService/SyncEpochs"  # several hosts in one call
SYNC_STREAM_METHOD = "/overcommit.v1.HostService/SyncStream"  # SyncEpochs calls on one stream
# the field a server names when it refuses one SyncStream stream too many
STREAMS_FIELD = "streams"


@dataclass(frozen=True)
class GuestRegistration:
    """One guest as registered with a host.

    Give the size as ``nr_pages`` or as ``size_bytes`` (a multiple of
    ``page_size_bytes``); validation returns the registration with ``nr_pages`` set.
    """

    guest_id: int
    shard_id: int
    nr_pages: int
    discard_mode: str  # one of DISCARD_MODES
    report_capacity: int = REPORT_CAPACITY
    max_order: int = MAX_ORDER
    guest_thp: bool = False
    page_size_bytes: int = PAGE_SIZE
    size_bytes: int | None = None  # alternative to nr_pages (None: not given)


@dataclass(frozen=True)
class ReportOp:
    """One report batch: ranges [pfns[i], pfns[i] + 2**orders[i])."""

    op_seq: int
    pfns: np.ndarray  # uint64
    orders: np.ndarray  # uint32


@dataclass(frozen=True)
class PageRunOps:
    """Page runs [starts[i], starts[i] + npages[i]), each stamped with an op sequence number."""

    starts: np.ndarray = field(default_factory=lambda: EMPTY_U64)  # uint64
    npages: np.ndarray = field(default_factory=lambda: EMPTY_U64)  # uint64
    op_seqs: np.ndarray = field(default_factory=lambda: EMPTY_U64)  # uint64

    def __len__(self) -> int:
        return len(self.op_seqs)

    def has_values(self) -> bool:
        """Whether any of the three arrays holds a value (lengths that differ included:
        such runs are sent, and refused by validation, never taken for no runs)."""
        return self is not EMPTY_RUNS and bool(
            len(self.starts) or len(self.npages) or len(self.op_seqs)
        )


EMPTY_RUNS = PageRunOps()  # no runs: frozen, over the shared empty arrays


@dataclass(frozen=True)
class GuestOps:
    """Everything one guest did on the host in the epochs one sync covers."""

    guest_id: int
    reports: tuple[ReportOp, ...] = ()
    touched: PageRunOps = field(default_factory=PageRunOps)
    freed: PageRunOps = field(default_factory=PageRunOps)
    # for a message covering several epochs: the last op_seq of each (empty: one epoch)
    epoch_seq_ends: np.ndarray = field(default_factory=lambda: EMPTY_U64)  # uint64

    def is_empty(self) -> bool:
        return not (self.reports or len(self.touched) or len(self.freed))

    def by_epoch(self, epochs: int) -> list[GuestOps | None]:
        """The operations of each covered epoch (None: nothing in it); one entry per epoch."""
        ends = self.epoch_seq_ends
        if len(ends) == 0:
            return [self] + [None] * (epochs - 1)
        out: list[GuestOps | None] = [None] * epochs
        report_epoch = np.searchsorted(ends, [r.op_seq for r in self.reports], side="left")
        touched = _runs_by_epoch(self.touched, ends)
        freed = _runs_by_epoch(self.freed, ends)
        for i in range(epochs):
            ops = GuestOps(
                self.guest_id,
                tuple(r for r, e in zip(self.reports, report_epoch, strict=True) if e == i),
                touched[i],
                freed[i],
            )
            out[i] = None if ops.is_empty() else ops
        return out


def _runs_by_epoch(runs: PageRunOps, ends: np.ndarray) -> list[PageRunOps]:
    """Runs split by epoch: ends[i] is epoch i's last op_seq (runs may come in any order)."""
    if len(runs.op_seqs) == 0:
        return [runs] * len(ends)
    if bool((runs.op_seqs[1:] < runs.op_seqs[:-1]).any()):
        order = np.argsort(runs.op_seqs, kind="stable")
        runs = PageRunOps(runs.starts[order], runs.npages[order], runs.op_seqs[order])
    cuts = np.searchsorted(runs.op_seqs, ends, side="right")
    lo = 0
    out = []
    for hi in cuts.tolist():
        out.append(
            PageRunOps(runs.starts[lo:hi], runs.npages[lo:hi], runs.op_seqs[lo:hi])
            if hi > lo
            else EMPTY_RUNS
        )
        lo = hi
    return out


@dataclass(frozen=True)
class EpochSubmission:
    """One shard's message to one host for ``epochs`` consecutive epochs from ``epoch``."""

    shard_id: int
    epoch: int
    sequence: int
    epoch_end_ns: int
    guests: tuple[GuestOps, ...]
    next_epoch: int = 0  # the shard's next epoch for this host; 0 = epoch + epochs
    epochs: int = 1
    sample: bool = False  # the epochs end a sample interval: keep the host's counters after them

    @property
    def following_epoch(self) -> int:
        return self.next_epoch or self.epoch + self.epochs

    @property
    def last_epoch(self) -> int:
        return self.epoch + self.epochs - 1


@dataclass(frozen=True)
class ReportAck:
    """The host's answer to one report batch."""

    op_seq: int
    ok: bool
    discarded_pages: int = 0
    latency_ns: int = 0


@dataclass
class GuestOutcome:
    """What the covered epochs changed for one guest."""

    guest_id: int
    acks: list[ReportAck] = field(default_factory=list)
    swapped_starts: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    swapped_npages: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    lost_ns: dict[str, int] = field(default_factory=dict)  # per kind in services.units.LOST_KINDS
    touched_pages: dict[str, int] = field(default_factory=dict)
    stopped: bool = False  # the host stopped the guest (out-of-memory policy)

    @property
    def report_errors(self) -> int:
        return sum(1 for ack in self.acks if not ack.ok)

    __hash__ = None  # type: ignore[assignment]  # compared by value and mutable: unhashable

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GuestOutcome):
            return NotImplemented
        return (self.guest_id, self.acks, self.lost_ns, self.touched_pages, self.stopped) == (
            other.guest_id,
            other.acks,
            other.lost_ns,
            other.touched_pages,
            other.stopped,
        ) and (
            np.array_equal(self.swapped_starts, other.swapped_starts)
            and np.array_equal(self.swapped_npages, other.swapped_npages)
        )


@dataclass(frozen=True)
class EpochOutcome:
    """A host's answer to one shard's submission: every guest the shard registered there."""

    epoch: int
    sequence: int
    guests: tuple[GuestOutcome, ...]
    sample: dict[str, int] | None = (
        None  # host counters after the epochs, if they ended a sample interval
    )
