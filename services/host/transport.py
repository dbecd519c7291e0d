"""Host transport: HostService messages <-> the host core, with the per-epoch barrier.

Layers, top down:

* :class:`HostServicer` (gRPC) and :class:`InProcessHostClient` (no sockets) both
  call the same servicer methods: decode the message into plain types, hand them
  to an endpoint, encode the answer. No domain logic there.
* :class:`HostEndpoint` holds one host core model (``services.host.core.Host``) for
  one experiment. It knows which shards registered guests; :meth:`submit`
  validates a shard's epoch message completely and stores it; once every
  registered shard has submitted epoch E it applies all of them in guest-id
  order, each guest's operations in op-sequence order, runs reclaim and stores
  one result per shard. Arrival order therefore never changes a result.
* :class:`HostDirectory` finds the endpoint for (experiment_id, host_id).

Idempotency: a retried submission with the same (shard, epoch, sequence)
returns the stored result and applies nothing twice. Any other epoch than the
one the host waits for is FAILED_PRECONDITION. Validation runs before anything
is applied: a refused message changes no state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from overcommit.v1 import common_pb2, host_pb2, host_pb2_grpc
from services.host.core.config import (
    DISCARD_DISABLED,
    DISCARD_DONTNEED,
    DISCARD_FREE,
)
from services.host.core.pool import Host
from services.transport.security import check_experiment_binding
from services.transport.server import DEFAULT_MAX_MESSAGE_BYTES, ServiceBinding
from services.transport.validation import (
    StatusError,
    already_exists,
    as_status_error,
    check_page_runs,
    check_report_batches,
    failed_precondition,
    invalid_argument,
    not_found,
    permission_denied,
    require,
    require_id,
    translate_errors,
)

PAGE_SIZE_BYTES = 4096  # the guest base page; pfns count these
DEFAULT_REPORT_CAPACITY = 32  # PAGE_REPORTING_CAPACITY: ranges per report
DEFAULT_MAX_ORDER = 10  # MAX_PAGE_ORDER on x86-64
MAX_WAIT_S = 600.0  # a SyncEpoch without a deadline waits at most this long for other shards
WAIT_SLICE_S = 0.5  # re-check a cancelled call this often while waiting
MAX_KEPT_SAMPLES = 64  # counters kept per host for GetHostState(sample_epoch)

DISCARD_FROM_PB = {
    host_pb2.DISCARD_MODE_DONTNEED: DISCARD_DONTNEED,
    host_pb2.DISCARD_MODE_FREE: DISCARD_FREE,
    host_pb2.DISCARD_MODE_DISABLED: DISCARD_DISABLED,
}
DISCARD_TO_PB = {mode: pb for pb, mode in DISCARD_FROM_PB.items()}
EMPTY_U64 = np.zeros(0, dtype=np.uint64)
EMPTY_I64 = np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------ plain types


@dataclass(frozen=True)
class GuestRegistration:
    """One guest as registered with a host."""

    guest_id: int
    shard_id: int
    nr_pages: int
    discard_mode: str  # services.host.core.config DISCARD_*
    report_capacity: int = DEFAULT_REPORT_CAPACITY
    max_order: int = DEFAULT_MAX_ORDER
    guest_thp: bool = False


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


@dataclass(frozen=True)
class GuestOps:
    """Everything one guest did on the host in one epoch."""

    guest_id: int
    reports: tuple[ReportOp, ...] = ()
    touched: PageRunOps = field(default_factory=PageRunOps)
    freed: PageRunOps = field(default_factory=PageRunOps)
    # for a message covering several epochs: the last op_seq of each (empty: one epoch)
    epoch_seq_ends: np.ndarray = field(default_factory=lambda: EMPTY_U64)  # uint64

    def is_empty(self) -> bool:
        return not (self.reports or len(self.touched.op_seqs) or len(self.freed.op_seqs))

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
            ops = GuestOps(self.guest_id,
                           tuple(r for r, e in zip(self.reports, report_epoch, strict=True) if e == i),
                           touched[i], freed[i])
            out[i] = None if ops.is_empty() else ops
        return out


def _runs_by_epoch(runs: PageRunOps, ends: np.ndarray) -> list[PageRunOps]:
    """Runs split by epoch: op_seqs are ascending, ends[i] is epoch i's last op_seq."""
    if len(runs.op_seqs) == 0:
        return [runs] * len(ends)
    if bool((runs.op_seqs[1:] < runs.op_seqs[:-1]).any()):  # a client may list runs in any order
        order = np.argsort(runs.op_seqs, kind="stable")
        runs = PageRunOps(runs.starts[order], runs.npages[order], runs.op_seqs[order])
    cuts = np.searchsorted(runs.op_seqs, ends, side="right")
    lo = 0
    out = []
    for hi in cuts.tolist():
        out.append(PageRunOps(runs.starts[lo:hi], runs.npages[lo:hi], runs.op_seqs[lo:hi]) if hi > lo
                   else PageRunOps())
        lo = hi
    return out


@dataclass(frozen=True)
class EpochSubmission:
    """One shard's message for ``epochs`` consecutive epochs from ``epoch``."""

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


@dataclass(frozen=True)
class ReportAckResult:
    """The host's answer to one report batch."""

    op_seq: int
    ok: bool
    discarded_pages: int = 0
    latency_ns: int = 0


@dataclass
class GuestEpochOutcome:
    """What one epoch changed for one guest."""

    guest_id: int
    acks: list[ReportAckResult] = field(default_factory=list)
    swapped_starts: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    swapped_npages: np.ndarray = field(default_factory=lambda: EMPTY_I64)
    lost_ns: dict[str, int] = field(default_factory=dict)
    touched_pages: dict[str, int] = field(default_factory=dict)
    stopped: bool = False  # the host stopped the guest (out-of-memory policy)


@dataclass(frozen=True)
class EpochOutcome:
    """A host's answer to one shard for one epoch: every guest the shard registered."""

    epoch: int
    sequence: int
    guests: tuple[GuestEpochOutcome, ...]
    sample: dict[str, int] | None = None  # host counters after the epochs, if they ended a sample interval


# ------------------------------------------------------------ message decoding


def _u64(values: Iterable[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.uint64)


def _runs_from_pb(runs: common_pb2.SequencedPageRuns) -> PageRunOps:
    if not runs.starts and not runs.npages and not runs.op_seqs:
        return PageRunOps()
    return PageRunOps(_u64(runs.starts), _u64(runs.npages), _u64(runs.op_seqs))


def decode_sync(request: host_pb2.SyncEpochRequest) -> EpochSubmission:
    """SyncEpochRequest -> plain submission (numpy arrays); no validation yet."""
    guests = tuple(
        GuestOps(
            guest_id=g.guest_id,
            reports=tuple(
                ReportOp(r.op_seq, _u64(r.pfns), np.fromiter(r.orders, dtype=np.uint32))
                for r in g.reports
            ),
            touched=_runs_from_pb(g.touched),
            freed=_runs_from_pb(g.freed),
            epoch_seq_ends=_u64(g.epoch_seq_ends) if g.epoch_seq_ends else EMPTY_U64,
        )
        for g in request.guests
    )
    return EpochSubmission(request.shard_id, request.epoch, request.sequence,
                           request.epoch_end_ns, guests, request.next_epoch, request.epochs or 1,
                           request.sample)


def decode_registration(request: host_pb2.RegisterGuestRequest) -> GuestRegistration:
    """RegisterGuestRequest -> plain registration, validating what needs no host state."""
    page_size = request.page_size_bytes or PAGE_SIZE_BYTES
    require(page_size == PAGE_SIZE_BYTES, "page_size_bytes", request.page_size_bytes,
            f"only {PAGE_SIZE_BYTES}-byte guest pages are simulated")
    which = request.WhichOneof("size")
    if which == "size_bytes":
        require(request.size_bytes > 0 and request.size_bytes % page_size == 0, "size_bytes",
                request.size_bytes, f"must be a positive multiple of {page_size}")
        nr_pages = request.size_bytes // page_size
    else:
        require(request.nr_pages > 0, "nr_pages", request.nr_pages, "must be > 0")
        nr_pages = request.nr_pages
    require(request.discard_mode in DISCARD_FROM_PB, "discard_mode",
            host_pb2.DiscardMode.Name(request.discard_mode)
            if request.discard_mode in host_pb2.DiscardMode.values() else request.discard_mode,
            "must be DONTNEED, FREE or DISABLED")
    return GuestRegistration(
        guest_id=request.guest_id, shard_id=request.shard_id, nr_pages=nr_pages,
        discard_mode=DISCARD_FROM_PB[request.discard_mode],
        report_capacity=request.report_capacity or DEFAULT_REPORT_CAPACITY,
        max_order=request.max_order or DEFAULT_MAX_ORDER, guest_thp=request.guest_thp,
    )


# ------------------------------------------------------------ message encoding


def encode_outcome(outcome: EpochOutcome) -> host_pb2.SyncEpochResponse:
    """Plain outcome -> SyncEpochResponse."""
    response = host_pb2.SyncEpochResponse(epoch=outcome.epoch, sequence=outcome.sequence)
    for g in outcome.guests:
        result = response.guests.add(guest_id=g.guest_id, stopped=g.stopped)
        for ack in g.acks:
            result.report_acks.add(
                op_seq=ack.op_seq,
                status=host_pb2.REPORT_STATUS_OK if ack.ok else host_pb2.REPORT_STATUS_ERROR,
                discarded_pages=ack.discarded_pages, latency_ns=ack.latency_ns,
            )
        if len(g.swapped_starts):
            result.swapped_out.starts.extend(g.swapped_starts.tolist())
            result.swapped_out.npages.extend(g.swapped_npages.tolist())
        result.lost_ns.update(g.lost_ns)
        result.touched_pages.update(g.touched_pages)
    if outcome.sample is not None:
        response.sample_counters.update(outcome.sample)
    return response


def decode_outcome(response: host_pb2.SyncEpochResponse) -> EpochOutcome:
    """SyncEpochResponse -> plain outcome (for the guest shard that sent the epoch)."""
    guests = tuple(
        GuestEpochOutcome(
            guest_id=g.guest_id,
            acks=[ReportAckResult(a.op_seq, a.status == host_pb2.REPORT_STATUS_OK,
                                  a.discarded_pages, a.latency_ns) for a in g.report_acks],
            swapped_starts=np.fromiter(g.swapped_out.starts, dtype=np.int64),
            swapped_npages=np.fromiter(g.swapped_out.npages, dtype=np.int64),
            lost_ns=dict(g.lost_ns), touched_pages=dict(g.touched_pages), stopped=g.stopped,
        )
        for g in response.guests
    )
    return EpochOutcome(response.epoch, response.sequence, guests,
                        dict(response.sample_counters) if response.sample_counters else None)


def build_sync_request(
    experiment_id: str, host_id: int, shard_id: int, epoch: int, sequence: int,
    epoch_end_ns: int, guests: Sequence[GuestOps], next_epoch: int = 0, epochs: int = 1,
    sample: bool = False,
) -> host_pb2.SyncEpochRequest:
    """Plain per-guest ops -> SyncEpochRequest (packed arrays; what a guest shard sends)."""
    request = host_pb2.SyncEpochRequest(
        experiment_id=experiment_id, host_id=host_id, shard_id=shard_id, epoch=epoch,
        sequence=sequence, epoch_end_ns=epoch_end_ns, next_epoch=next_epoch,
        epochs=epochs if epochs > 1 else 0, sample=sample,
    )
    for ops in guests:
        g = request.guests.add(guest_id=ops.guest_id)
        if len(ops.epoch_seq_ends):
            g.epoch_seq_ends.extend(np.asarray(ops.epoch_seq_ends).tolist())
        for report in ops.reports:
            batch = g.reports.add(op_seq=report.op_seq)
            batch.pfns.extend(np.asarray(report.pfns).tolist())
            batch.orders.extend(np.asarray(report.orders).tolist())
        for target, runs in ((g.touched, ops.touched), (g.freed, ops.freed)):
            if len(runs.starts):
                target.starts.extend(np.asarray(runs.starts).tolist())
                target.npages.extend(np.asarray(runs.npages).tolist())
                target.op_seqs.extend(np.asarray(runs.op_seqs).tolist())
    return request


# ------------------------------------------------------------------ validation


def validate_submission(sub: EpochSubmission, guests: Mapping[int, GuestRegistration]) -> None:
    """Everything about one shard's epoch message that can be checked before applying."""
    seen: set[int] = set()
    for gi, ops in enumerate(sub.guests):
        path = f"guests[{gi}]"
        reg = guests.get(ops.guest_id)
        if reg is None:
            raise not_found(f"{path}.guest_id", ops.guest_id, "guest is not registered with this host")
        if reg.shard_id != sub.shard_id:
            raise permission_denied(f"{path}.guest_id", ops.guest_id,
                                    f"guest was registered by shard {reg.shard_id}, "
                                    f"not shard {sub.shard_id}")
        require(ops.guest_id not in seen, f"{path}.guest_id", ops.guest_id,
                "guest appears twice in one message")
        seen.add(ops.guest_id)
        _validate_guest_ops(path, ops, reg)
        _validate_epoch_seq_ends(path, ops, sub.epochs)


def _validate_epoch_seq_ends(path: str, ops: GuestOps, epochs: int) -> None:
    ends = ops.epoch_seq_ends
    name = f"{path}.epoch_seq_ends"
    if epochs == 1:
        require(len(ends) == 0, name, len(ends), "must be empty when the message covers one epoch")
        return
    require(len(ends) == epochs, name, len(ends), f"needs one entry per covered epoch ({epochs})")
    if len(ends) > 1 and bool((ends[1:] < ends[:-1]).any()):
        i = int(np.flatnonzero(ends[1:] < ends[:-1])[0]) + 1
        raise invalid_argument(f"{name}[{i}]", int(ends[i]), "must not be below the previous entry")
    seqs = [int(r.op_seq) for r in ops.reports]
    for runs in (ops.touched, ops.freed):
        if len(runs.op_seqs):
            seqs.append(int(runs.op_seqs.max()))
    if seqs and max(seqs) > int(ends[-1]):
        raise invalid_argument(f"{name}[{epochs - 1}]", int(ends[-1]),
                               f"below op_seq {max(seqs)}: every operation must fall in a covered epoch")


def _validate_guest_ops(path: str, ops: GuestOps, reg: GuestRegistration) -> None:
    check_report_batches(f"{path}.reports", [r.pfns for r in ops.reports],
                         [r.orders for r in ops.reports], nr_pages=reg.nr_pages,
                         max_order=reg.max_order, capacity=reg.report_capacity)
    report_seqs: set[int] = set()
    for ri, report in enumerate(ops.reports):
        require(report.op_seq not in report_seqs, f"{path}.reports[{ri}].op_seq", report.op_seq,
                "op_seq used by another report batch")
        report_seqs.add(report.op_seq)
    taken = report_seqs
    for name, runs in (("touched", ops.touched), ("freed", ops.freed)):
        check_page_runs(f"{path}.{name}", runs.starts, runs.npages, nr_pages=reg.nr_pages)
        if len(runs.op_seqs) != len(runs.starts):
            raise invalid_argument(f"{path}.{name}.op_seqs", len(runs.op_seqs),
                                   f"length differs from {path}.{name}.starts "
                                   f"(length {len(runs.starts)})")
        seqs = set(runs.op_seqs.tolist())
        if seqs & taken:
            i = next(i for i, q in enumerate(runs.op_seqs.tolist()) if q in taken)
            owner = "a report batch" if runs.op_seqs[i] in report_seqs else "touched runs"
            raise invalid_argument(f"{path}.{name}.op_seqs[{i}]", int(runs.op_seqs[i]),
                                   f"op_seq already used by {owner}")
        taken = taken | seqs


# ------------------------------------------------------------------- endpoint


@dataclass(frozen=True)
class _StoredOutcome:
    epoch: int
    sequence: int
    outcome: EpochOutcome


class HostEndpoint:
    """One host core model behind the per-epoch barrier. Thread-safe.

    ``host`` is a ``services.host.core.Host`` (or anything with its API). Epochs
    start at ``first_epoch`` and go up by one. Each shard that registered a guest
    tells the host, with every message, the epoch of its next one
    (``next_epoch``; by default the following epoch). The host applies epoch E
    once every shard due at E has sent it, in guest-id order, and does not wait
    for shards that promised to have nothing before a later epoch: their
    guests' swap-outs are kept and handed over with their next answer. Which
    shards are due depends only on the shards' own simulated schedules, so the
    result never depends on arrival order or on how guests are split into shards.
    """

    def __init__(self, experiment_id: str, host_id: int, host: Host, *, first_epoch: int = 0):
        self.experiment_id = experiment_id
        self.host_id = host_id
        self.host = host
        self._cond = threading.Condition()
        self._guests: dict[int, GuestRegistration] = {}
        self._shards: set[int] = set()
        self._expect: dict[int, int] = {}  # shard -> the epoch it sends next
        self._first_epoch = first_epoch
        self._applied_epoch = first_epoch - 1  # the last epoch applied
        self._epoch_end_ns = 0
        self._pending: dict[int, EpochSubmission] = {}
        self._done: dict[int, _StoredOutcome] = {}
        self._carry: dict[int, GuestEpochOutcome] = {}  # swap-outs for guests of shards not due
        self._broken: StatusError | None = None
        self.apply_wall_s = 0.0  # wall-clock seconds spent applying epochs (metadata, not results)
        self._samples: dict[int, dict[str, int]] = {}  # last epoch of a sample interval -> counters
        self._sample_wall_s: dict[int, float] = {}  # ... -> apply_wall_s then (metadata)

    @property
    def _next_epoch(self) -> int:
        """The epoch the host applies next: the earliest any shard is due."""
        return min(self._expect.values(), default=self._applied_epoch + 1)

    # -- registration

    def register_guest(self, reg: GuestRegistration) -> int:
        """Add a guest to the host core; returns the next epoch. Idempotent."""
        with self._cond:
            self._check_broken()
            known = self._guests.get(reg.guest_id)
            if known is not None:
                if known != reg:
                    raise already_exists("guest_id", reg.guest_id,
                                         f"guest already registered differently: {known}")
                return self._next_epoch
            limit = self.host.config.max_report_order
            require(reg.max_order <= limit, "max_order", reg.max_order,
                    f"host handles reports up to order {limit}")
            try:
                self.host.add_guest(reg.guest_id, reg.nr_pages, reg.discard_mode)
            except ValueError as exc:
                raise invalid_argument("nr_pages", reg.nr_pages, str(exc)) from exc
            self._guests[reg.guest_id] = reg
            if reg.shard_id not in self._shards:
                self._shards.add(reg.shard_id)
                self._expect[reg.shard_id] = self._applied_epoch + 1
            return self._next_epoch

    # -- the epoch barrier

    def submit(self, sub: EpochSubmission) -> EpochOutcome | None:
        """Validate and store one shard's epoch; apply every epoch that is complete.

        Returns the shard's outcome when its epoch is applied (at once when no
        other shard is due at that epoch, or for a retry of an applied epoch),
        else None: collect it later with :meth:`collect` or :meth:`wait`.
        """
        with self._cond:
            self._check_broken()
            stored = self._done.get(sub.shard_id)
            if stored is not None and (stored.epoch, stored.sequence) == (sub.epoch, sub.sequence):
                return stored.outcome
            pending = self._pending.get(sub.shard_id)
            if pending is not None and pending.epoch == sub.epoch:
                if pending.sequence == sub.sequence:
                    return None  # a retry while the epoch waits for other shards
                raise failed_precondition("sequence", sub.sequence,
                                          f"shard {sub.shard_id} already sent epoch {sub.epoch} "
                                          f"with sequence {pending.sequence}")
            self._check_epoch(sub)
            validate_submission(sub, self._guests)
            self._pending[sub.shard_id] = sub
            self._apply_ready()
            self._cond.notify_all()  # waiters for an outcome, and for a stored submission
            stored = self._done.get(sub.shard_id)
            if stored is not None and (stored.epoch, stored.sequence) == (sub.epoch, sub.sequence):
                return stored.outcome
            return None

    def collect(self, shard_id: int, epoch: int, sequence: int) -> EpochOutcome | None:
        """The shard's outcome for ``epoch`` once applied, else None."""
        with self._cond:
            self._check_broken()
            stored = self._done.get(shard_id)
            if stored is not None and (stored.epoch, stored.sequence) == (epoch, sequence):
                return stored.outcome
            return None

    def wait(self, shard_id: int, epoch: int, sequence: int, timeout_s: float,
             is_active: Any = None) -> EpochOutcome:
        """Block until the epoch is applied; DEADLINE_EXCEEDED after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                outcome = self.collect(shard_id, epoch, sequence)
                if outcome is not None:
                    return outcome
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (is_active is not None and not is_active()):
                    raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "epoch", epoch,
                                      f"host still waits for shards {self._missing()}")
                self._cond.wait(min(remaining, WAIT_SLICE_S))

    # -- state

    def pending_shards(self) -> list[int]:
        """Shards whose message is stored, waiting for the other shards due at its epoch."""
        with self._cond:
            return sorted(self._pending)

    def wait_pending(self, shards: list[int], timeout_s: float) -> bool:
        """Block until exactly ``shards`` have a stored message waiting; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: sorted(self._pending) == sorted(shards), timeout_s)

    def sample_at(self, epoch: int, timeout_s: float) -> dict[str, int]:
        """The host counters kept right after ``epoch`` (which ended a sample interval),
        waiting up to ``timeout_s`` for it to be applied."""
        if not self.wait_applied(epoch, timeout_s):
            raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "sample_epoch", epoch,
                              f"host {self.host_id} has not applied it yet")
        with self._cond:
            self._check_broken()
            if not self._shards:  # no guest ever: nothing changes, every sample is the current state
                return dict(self.host.host_counters())
            sample = self._samples.get(epoch)
            if sample is None:
                raise failed_precondition("sample_epoch", epoch,
                                          f"host {self.host_id} kept no sample after it (kept: "
                                          f"{sorted(self._samples)[-3:]})")
            return dict(sample)

    def apply_wall_s_at(self, epoch: int) -> float:
        """apply_wall_s as it was when the sample after ``epoch`` was kept (metadata)."""
        with self._cond:
            return self._sample_wall_s.get(epoch, self.apply_wall_s)

    def wait_applied(self, epoch: int, timeout_s: float) -> bool:
        """Block until the host has applied ``epoch`` (True at once if no shard is registered)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._applied_epoch >= epoch or not self._shards or self._broken is not None, timeout_s)

    def state(self) -> dict[str, Any]:
        """Counters of the host and of every guest, plus the barrier's position."""
        with self._cond:
            return {
                "host_id": self.host_id,
                "next_epoch": self._next_epoch,
                "epoch_end_ns": self._epoch_end_ns,
                "counters": dict(self.host.host_counters()),
                "guests": [
                    (reg.guest_id, reg.shard_id, reg.nr_pages,
                     dict(self.host.guest_counters(reg.guest_id)))
                    for reg in sorted(self._guests.values(), key=lambda r: r.guest_id)
                ],
                "shard_ids": sorted(self._shards),
            }

    # -- internals

    def _check_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    def _missing(self) -> list[int]:
        due = self._next_epoch
        return sorted(s for s, e in self._expect.items()
                      if e == due and (s not in self._pending or self._pending[s].epoch != due))

    def _check_epoch(self, sub: EpochSubmission) -> None:
        if sub.shard_id not in self._shards:
            raise not_found("shard_id", sub.shard_id, "shard registered no guest with this host")
        expected = self._expect[sub.shard_id]
        if sub.epoch < expected:
            raise failed_precondition("epoch", sub.epoch,
                                      f"stale: host {self.host_id} expects epoch {expected} "
                                      f"from shard {sub.shard_id}")
        if sub.epoch > expected:
            raise failed_precondition("epoch", sub.epoch,
                                      f"future: host {self.host_id} expects epoch {expected} "
                                      f"from shard {sub.shard_id}")
        require(sub.epochs >= 1, "epochs", sub.epochs, "must be at least 1")
        require(sub.next_epoch == 0 or sub.next_epoch >= sub.epoch + sub.epochs, "next_epoch",
                sub.next_epoch, f"must be 0 or at least {sub.epoch + sub.epochs} (after the covered epochs)")
        require(sub.epoch_end_ns >= self._epoch_end_ns, "epoch_end_ns", sub.epoch_end_ns,
                f"before the previous epoch's end {self._epoch_end_ns}")
        for other in self._pending.values():
            if other.shard_id != sub.shard_id and other.epoch == sub.epoch:
                if other.epochs != sub.epochs:
                    raise invalid_argument("epochs", sub.epochs,
                                           f"shard {other.shard_id} covers {other.epochs} epochs "
                                           f"from the same epoch")
                if other.epoch_end_ns != sub.epoch_end_ns:
                    raise invalid_argument("epoch_end_ns", sub.epoch_end_ns,
                                           f"shard {other.shard_id} sent {other.epoch_end_ns} "
                                           f"for the same epoch")

    def _apply_ready(self) -> bool:
        """Apply epochs, earliest first, while every shard due at one has sent it."""
        applied = False
        while self._expect:
            epoch = self._next_epoch
            due = sorted(s for s, e in self._expect.items() if e == epoch)
            subs = [self._pending.get(s) for s in due]
            if any(sub is None or sub.epoch != epoch for sub in subs):
                return applied
            self._apply_epoch(epoch, subs)
            applied = True
        return applied

    def _apply_epoch(self, epoch: int, subs: list[EpochSubmission]) -> None:
        """Apply one epoch's submissions in guest-id order, reclaim, store outcomes."""
        wall0 = time.perf_counter()
        outcomes = {gid: GuestEpochOutcome(gid) for gid in self._guests}
        all_ops = sorted((ops for sub in subs for ops in sub.guests), key=lambda ops: ops.guest_id)
        try:
            epochs = subs[0].epochs
            split = [ops.by_epoch(epochs) for ops in all_ops]
            for i in range(epochs):  # one epoch at a time, reclaim after each
                for per_epoch in split:
                    if per_epoch[i] is not None:
                        apply_guest_ops(self.host, per_epoch[i], outcomes)
                record_swapped(outcomes, self.host.reclaim())
            for gid, outcome in outcomes.items():
                outcome.stopped = bool(self.host.is_stopped(gid))
        except Exception as exc:
            # Validation let through something the core refused: the epoch is
            # half applied, so the endpoint refuses everything from now on.
            self._broken = StatusError(grpc.StatusCode.INTERNAL, "epoch", epoch,
                                       f"host core failed while applying: {exc!r}")
            raise self._broken from exc
        submitted = {sub.shard_id for sub in subs}
        for gid, outcome in outcomes.items():
            carried = self._carry.pop(gid, None)
            if carried is not None:
                outcome = _merge_outcomes(carried, outcome)
                outcomes[gid] = outcome
            if self._guests[gid].shard_id not in submitted:
                if _has_news(outcome):
                    self._carry[gid] = outcome
            elif len(outcome.swapped_starts):
                # pages swapped out and touched again before the answer are resident
                outcome.swapped_starts, outcome.swapped_npages = self.host.swapped_runs(
                    gid, outcome.swapped_starts, outcome.swapped_npages)
        last = epoch + subs[0].epochs - 1
        if any(sub.sample for sub in subs):
            self._samples[last] = dict(self.host.host_counters())
            while len(self._samples) > MAX_KEPT_SAMPLES:
                oldest = min(self._samples)
                del self._samples[oldest]
                self._sample_wall_s.pop(oldest, None)
        for sub in subs:
            mine = tuple(outcomes[gid] for gid in sorted(outcomes)
                         if self._guests[gid].shard_id == sub.shard_id)
            self._done[sub.shard_id] = _StoredOutcome(epoch, sub.sequence, EpochOutcome(
                epoch, sub.sequence, mine, self._samples.get(last) if sub.sample else None))
            self._expect[sub.shard_id] = sub.following_epoch
            del self._pending[sub.shard_id]
        self._epoch_end_ns = subs[0].epoch_end_ns
        self._applied_epoch = epoch + subs[0].epochs - 1
        self.apply_wall_s += time.perf_counter() - wall0
        if self._applied_epoch in self._samples:
            self._sample_wall_s[self._applied_epoch] = self.apply_wall_s


def _has_news(outcome: GuestEpochOutcome) -> bool:
    return bool(len(outcome.swapped_starts) or outcome.stopped)


def _merge_outcomes(first: GuestEpochOutcome, then: GuestEpochOutcome) -> GuestEpochOutcome:
    """What a guest learns at once about two stretches of epochs (swap-outs, stop)."""
    merged = GuestEpochOutcome(then.guest_id, acks=then.acks, lost_ns=then.lost_ns,
                               touched_pages=then.touched_pages)
    merged.swapped_starts = np.concatenate([first.swapped_starts, then.swapped_starts])
    merged.swapped_npages = np.concatenate([first.swapped_npages, then.swapped_npages])
    merged.stopped = first.stopped or then.stopped
    return merged


def apply_guest_ops(host: Host, ops: GuestOps, outcomes: dict[int, GuestEpochOutcome]) -> None:
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
                outcome.acks.append(ReportAckResult(what.op_seq, ok=False))
            continue
        if kind == "report":
            result = host.apply_report(ops.guest_id, what.pfns.astype(np.int64),
                                       what.orders.astype(np.int64))
            outcome.acks.append(ReportAckResult(
                op_seq=what.op_seq, ok=True,
                discarded_pages=int(result.released_pages) + int(result.lazy_pages),
                latency_ns=int(result.latency_ns)))
        else:
            result = host.apply_touch(ops.guest_id, ops.touched.starts[what].astype(np.int64),
                                      ops.touched.npages[what].astype(np.int64))
            _add_counts(outcome.lost_ns, result.lost_ns)
            _add_counts(outcome.touched_pages, result.prior_pages)


def _groups_by_seq(op_seqs: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Indices of runs grouped by op_seq, groups in op_seq order, runs in listed order."""
    if len(op_seqs) == 0:
        return []
    order = np.argsort(op_seqs, kind="stable")
    seqs = op_seqs[order]
    cuts = np.flatnonzero(seqs[1:] != seqs[:-1]) + 1
    return [(int(seqs[group[0]]), group) for group in np.split(order, cuts)]


def _add_counts(total: dict[str, int], more: Mapping[str, int]) -> None:
    for key, value in more.items():
        total[key] = total.get(key, 0) + int(value)


def record_swapped(outcomes: dict[int, GuestEpochOutcome],
                   swapped: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """Append reclaim's swap-outs (guest -> (starts, npages)) to the guests' outcomes."""
    for guest_id, (starts, npages) in swapped.items():
        if len(starts) == 0:
            continue
        g = outcomes[guest_id]
        g.swapped_starts = np.concatenate([g.swapped_starts, np.asarray(starts, dtype=np.int64)])
        g.swapped_npages = np.concatenate([g.swapped_npages, np.asarray(npages, dtype=np.int64)])


class HostDirectory:
    """The host endpoints one server (or in-process transport) serves. Thread-safe."""

    def __init__(self, endpoints: Iterable[HostEndpoint] = ()):
        self._lock = threading.Lock()
        self._endpoints: dict[tuple[str, int], HostEndpoint] = {}
        for endpoint in endpoints:
            self.add(endpoint)

    def add(self, endpoint: HostEndpoint) -> HostEndpoint:
        key = (endpoint.experiment_id, endpoint.host_id)
        with self._lock:
            if key in self._endpoints:
                raise ValueError(f"host {endpoint.host_id} of experiment "
                                 f"{endpoint.experiment_id!r} is already served")
            self._endpoints[key] = endpoint
        return endpoint

    def remove_experiment(self, experiment_id: str) -> None:
        with self._lock:
            for key in [k for k in self._endpoints if k[0] == experiment_id]:
                del self._endpoints[key]

    def get(self, experiment_id: str, host_id: int) -> HostEndpoint:
        require_id("experiment_id", experiment_id)
        with self._lock:
            endpoint = self._endpoints.get((experiment_id, host_id))
            if endpoint is None:
                if not any(k[0] == experiment_id for k in self._endpoints):
                    raise not_found("experiment_id", experiment_id, "no such experiment here")
                raise not_found("host_id", host_id,
                                f"experiment {experiment_id!r} has no such host here")
            return endpoint


# ------------------------------------------------------------------- servicer


class HostServicer(host_pb2_grpc.HostServiceServicer):
    """HostService: decode, call the endpoint, encode. No domain logic."""

    def __init__(self, directory: HostDirectory, *, max_wait_s: float = MAX_WAIT_S):
        self.directory = directory
        self.max_wait_s = max_wait_s

    @translate_errors
    def RegisterGuest(self, request: host_pb2.RegisterGuestRequest,
                      context: grpc.ServicerContext | None) -> host_pb2.RegisterGuestResponse:
        check_experiment_binding(context, request.experiment_id)
        endpoint = self.directory.get(request.experiment_id, request.host_id)
        reg = decode_registration(request)
        next_epoch = endpoint.register_guest(reg)
        return host_pb2.RegisterGuestResponse(guest_id=reg.guest_id, host_id=endpoint.host_id,
                                              nr_pages=reg.nr_pages, next_epoch=next_epoch)

    def submit(self, request: host_pb2.SyncEpochRequest,
               context: grpc.ServicerContext | None = None) -> tuple[HostEndpoint, EpochOutcome | None]:
        """The first half of SyncEpoch: decode, validate, store (apply if all shards are in)."""
        endpoint = self.directory.get(request.experiment_id, request.host_id)
        return endpoint, endpoint.submit(decode_sync(request))

    @translate_errors
    def SyncEpoch(self, request: host_pb2.SyncEpochRequest,
                  context: grpc.ServicerContext | None) -> host_pb2.SyncEpochResponse:
        check_experiment_binding(context, request.experiment_id)
        endpoint, outcome = self.submit(request, context)
        if outcome is None:
            remaining = context.time_remaining() if context is not None else None
            timeout_s = self.max_wait_s if remaining is None else min(remaining, self.max_wait_s)
            outcome = endpoint.wait(request.shard_id, request.epoch, request.sequence, timeout_s,
                                    context.is_active if context is not None else None)
        return encode_outcome(outcome)

    @translate_errors
    def GetHostState(self, request: host_pb2.GetHostStateRequest,
                     context: grpc.ServicerContext | None) -> host_pb2.GetHostStateResponse:
        check_experiment_binding(context, request.experiment_id)
        endpoint = self.directory.get(request.experiment_id, request.host_id)
        if request.HasField("sample_epoch"):
            remaining = context.time_remaining() if context is not None else None
            timeout = min(self.max_wait_s, remaining) if remaining is not None else self.max_wait_s
            counters = endpoint.sample_at(request.sample_epoch, timeout)
            response = host_pb2.GetHostStateResponse(host_id=request.host_id)
            response.counters.update({k: int(v) for k, v in counters.items()})
            return response
        state = endpoint.state()
        response = host_pb2.GetHostStateResponse(
            host_id=state["host_id"], next_epoch=state["next_epoch"],
            epoch_end_ns=state["epoch_end_ns"], shard_ids=state["shard_ids"],
        )
        response.counters.update({k: int(v) for k, v in state["counters"].items()})
        for guest_id, shard_id, nr_pages, counters in state["guests"]:
            g = response.guests.add(guest_id=guest_id, shard_id=shard_id, nr_pages=nr_pages)
            g.counters.update({k: int(v) for k, v in counters.items()})
        return response


def host_service_binding(directory: HostDirectory) -> ServiceBinding:
    """What :func:`services.transport.server.build_server` needs to serve HostService."""
    return ServiceBinding(host_pb2.DESCRIPTOR.services_by_name["HostService"].full_name,
                          host_pb2_grpc.add_HostServiceServicer_to_server,
                          HostServicer(directory))


# ------------------------------------------------------ in-process transport


class InProcessHostClient:
    """HostService without sockets: the same servicer code, the same messages and errors.

    Methods mirror :class:`services.host.server.HostClient` and raise
    :class:`~services.transport.validation.StatusError` (``.code()``, ``.details()``)
    where the gRPC client raises ``grpc.RpcError``. Oversized messages are refused
    with RESOURCE_EXHAUSTED as gRPC would. ``submit`` and ``collect`` split
    SyncEpoch so one thread can drive several shards of one host.
    """

    def __init__(self, directory: HostDirectory, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.servicer = HostServicer(directory)
        self.max_message_bytes = max_message_bytes

    def _check_size(self, request: Any) -> None:
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, "request", size,
                              f"message larger than max ({self.max_message_bytes} bytes)")

    def register_guest(self, request: host_pb2.RegisterGuestRequest) -> host_pb2.RegisterGuestResponse:
        self._check_size(request)
        return _local_call(self.servicer.RegisterGuest, request)

    def sync_epoch(self, request: host_pb2.SyncEpochRequest,
                   timeout_s: float | None = None) -> host_pb2.SyncEpochResponse:
        """Submit and wait until the epoch is applied (other shards may submit meanwhile)."""
        self._check_size(request)
        endpoint, outcome = _local_call(self.servicer.submit, request)
        if outcome is None:
            outcome = endpoint.wait(request.shard_id, request.epoch, request.sequence,
                                    timeout_s or self.servicer.max_wait_s)
        return encode_outcome(outcome)

    def submit(self, request: host_pb2.SyncEpochRequest) -> None:
        """Validate and store one shard's epoch message (applies when all shards are in)."""
        self._check_size(request)
        _local_call(self.servicer.submit, request)

    def collect(self, request: host_pb2.SyncEpochRequest) -> host_pb2.SyncEpochResponse | None:
        """The response to a submitted request once its epoch is applied, else None."""
        endpoint = self.servicer.directory.get(request.experiment_id, request.host_id)
        outcome = endpoint.collect(request.shard_id, request.epoch, request.sequence)
        return None if outcome is None else encode_outcome(outcome)

    def get_host_state(self, request: host_pb2.GetHostStateRequest) -> host_pb2.GetHostStateResponse:
        return _local_call(self.servicer.GetHostState, request)


def _local_call(method: Any, request: Any) -> Any:
    """Call a servicer method with no gRPC context; a refusal raises StatusError."""
    try:
        return method(request, None)
    except StatusError:
        raise
    except Exception as exc:
        err = as_status_error(exc)
        if err is None:
            raise
        raise err from exc
