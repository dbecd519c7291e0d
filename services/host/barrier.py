"""The host's epoch barrier: a plain, thread-safe class between the transport and the host core.

:class:`EpochBarrier` holds one host core model (``services.host.core.Host``) for
one experiment. It knows which shards registered guests; :meth:`EpochBarrier.submit`
validates a shard's submission completely (:mod:`services.protocol.validation`)
and stores it; once every shard due at epoch E has submitted it, the barrier
applies all of them in guest-id order, each guest's operations in op-sequence
order (:mod:`services.host.apply`), reclaims, and stores one outcome per shard.
Arrival order therefore never changes a result.

Idempotency: a retried submission with the same (shard, epoch, sequence)
returns the stored outcome and applies nothing twice. Any other epoch than the
one the host waits for is FAILED_PRECONDITION. A refused submission changes no
state. No gRPC here: the servicer (:mod:`services.host.servicer`) and the
in-process link (:class:`services.protocol.clients.InProcessHostLink`) both call it.
The wall clock is read only to bound waits and to time applying (metadata).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.host.core.host import Host
from services.protocol.messages import (
    EpochOutcome,
    EpochSubmission,
    GuestOutcome,
    GuestRegistration,
)
from services.protocol.validation import validate_registration, validate_submission
from services.transport.errors import (
    StatusError,
    already_exists,
    deadline_exceeded,
    failed_precondition,
    internal,
    invalid_argument,
    not_found,
    require,
)

from .apply import apply_epoch_ops, has_news, merge_outcomes, record_swapped

WAIT_SLICE_S = 0.5  # re-check a cancelled call this often while waiting
MAX_KEPT_SAMPLES = 64  # counters kept per host for sample_at (GetHostState.sample_epoch)


@dataclass(frozen=True)
class _StoredOutcome:
    epoch: int
    sequence: int
    outcome: EpochOutcome


class EpochBarrier:
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
        self._carry: dict[int, GuestOutcome] = {}  # swap-outs for guests of shards not due
        self._broken: StatusError | None = None
        self.apply_wall_s = 0.0  # wall-clock seconds spent applying epochs (metadata, not results)
        self._samples: dict[int, dict[str, int]] = {}  # last epoch of a sample interval -> counters
        self._sample_wall_s: dict[int, float] = {}  # ... -> apply_wall_s then (metadata)

    @property
    def lock(self) -> threading.Condition:
        """The barrier's lock (held by a checkpoint writer across its fork)."""
        return self._cond

    @property
    def _next_epoch(self) -> int:
        """The epoch the host applies next: the earliest any shard is due."""
        return min(self._expect.values(), default=self._applied_epoch + 1)

    # -- registration

    def register_guest(self, reg: GuestRegistration) -> int:
        """Validate and add a guest to the host core; returns the next epoch. Idempotent."""
        reg = validate_registration(reg)
        with self._cond:
            self._check_broken()
            known = self._guests.get(reg.guest_id)
            if known is not None:
                if known != reg:
                    raise already_exists(
                        "guest_id", reg.guest_id, f"guest already registered differently: {known}"
                    )
                return self._next_epoch
            limit = self.host.config.max_report_order
            require(
                reg.max_order <= limit,
                "max_order",
                reg.max_order,
                f"host handles reports up to order {limit}",
            )
            try:
                self.host.add_guest(reg.guest_id, reg.nr_pages, reg.discard_mode)
            except ValueError as exc:
                raise invalid_argument("nr_pages", reg.nr_pages, str(exc)) from exc
            self._guests[reg.guest_id] = reg
            if reg.shard_id not in self._shards:
                self._shards.add(reg.shard_id)
                self._expect[reg.shard_id] = self._applied_epoch + 1
            return self._next_epoch

    def guest_count(self) -> int:
        """Guests registered with this host, every shard's (the most one message may name).
        Read without the lock, which an epoch being applied holds: a shard syncs only
        after its registrations returned, so the count a message of its guests is
        checked against is never below what it may name."""
        return len(self._guests)

    def check_header(self, header: EpochSubmission) -> bool:
        """Refuse a message for what its header shows (``header``: its scalar fields, no
        guests), exactly as :meth:`submit` would and in the same order: a broken
        barrier, then its shard and epoch. The gRPC path asks this before it decodes
        the guests, so every message is refused alike on both paths. True for a new
        message (its guests are then decoded against :meth:`guest_count`), False for a
        retry of one already stored."""
        with self._cond:
            return self._check(header, validate=False) is None

    def registration(self, guest_id: int) -> GuestRegistration:
        """The registration a guest was accepted with (normalised: ``nr_pages`` set)."""
        with self._cond:
            reg = self._guests.get(guest_id)
            if reg is None:
                raise not_found("guest_id", guest_id, "guest is not registered with this host")
            return reg

    # -- the epoch barrier

    def submit(self, sub: EpochSubmission, *, checked: bool = False) -> EpochOutcome | None:
        """Validate and store one shard's epoch; apply every epoch that is complete.

        Returns the shard's outcome when its epoch is applied (at once when no
        other shard is due at that epoch, or for a retry of an applied epoch),
        else None: collect it later with :meth:`collect` or :meth:`wait`.
        ``checked``: :meth:`check` accepted ``sub`` (its operations are not validated
        twice).
        """
        with self._cond:
            known = self._check(sub, validate=not checked)
            if known is not None:
                return known.outcome if isinstance(known, _StoredOutcome) else None
            self._pending[sub.shard_id] = sub
            self._apply_ready()
            self._cond.notify_all()  # waiters for an outcome, and for a stored submission
            stored = self._done.get(sub.shard_id)
            if stored is not None and (stored.epoch, stored.sequence) == (sub.epoch, sub.sequence):
                return stored.outcome
            return None

    def check(self, sub: EpochSubmission) -> None:
        """Refuse ``sub`` exactly as :meth:`submit` would, storing nothing (SyncEpochs
        checks every host's message before it submits any)."""
        with self._cond:
            self._check(sub)

    def _check(
        self, sub: EpochSubmission, *, validate: bool = True
    ) -> _StoredOutcome | EpochSubmission | None:
        """Refuse a bad ``sub``; for a retry, return what is known of it (its stored
        outcome, or its submission waiting for other shards); None for a new one.
        ``validate=False``: its operations passed :meth:`check` already (they stay valid:
        guests are only ever added), only its place in the epoch order is checked again."""
        self._check_broken()
        stored = self._done.get(sub.shard_id)
        if stored is not None and (stored.epoch, stored.sequence) == (sub.epoch, sub.sequence):
            return stored
        pending = self._pending.get(sub.shard_id)
        if pending is not None and pending.epoch == sub.epoch:
            if pending.sequence == sub.sequence:
                return pending  # a retry while the epoch waits for other shards
            raise failed_precondition(
                "sequence",
                sub.sequence,
                f"shard {sub.shard_id} already sent epoch {sub.epoch} "
                f"with sequence {pending.sequence}",
            )
        self._check_epoch(sub)
        if validate:
            validate_submission(sub, self._guests)
        return None

    def collect(self, shard_id: int, epoch: int, sequence: int) -> EpochOutcome | None:
        """The shard's outcome for ``epoch`` once applied, else None."""
        with self._cond:
            self._check_broken()
            stored = self._done.get(shard_id)
            if stored is not None and (stored.epoch, stored.sequence) == (epoch, sequence):
                return stored.outcome
            return None

    def wait(
        self,
        shard_id: int,
        epoch: int,
        sequence: int,
        timeout_s: float,
        is_active: Callable[[], bool] | None = None,
    ) -> EpochOutcome:
        """Block until the epoch is applied; DEADLINE_EXCEEDED after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                outcome = self.collect(shard_id, epoch, sequence)
                if outcome is not None:
                    return outcome
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (is_active is not None and not is_active()):
                    raise deadline_exceeded(
                        "epoch", epoch, f"host still waits for shards {self._missing()}"
                    )
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
            raise deadline_exceeded(
                "sample_epoch", epoch, f"host {self.host_id} has not applied it yet"
            )
        with self._cond:
            self._check_broken()
            if (
                not self._shards
            ):  # no guest ever: nothing changes, every sample is the current state
                return dict(self.host.host_counters())
            sample = self._samples.get(epoch)
            if sample is None:
                raise failed_precondition(
                    "sample_epoch",
                    epoch,
                    f"host {self.host_id} kept no sample after it (kept: "
                    f"{sorted(self._samples)[-3:]})",
                )
            return dict(sample)

    def apply_wall_s_at(self, epoch: int) -> float:
        """apply_wall_s as it was when the sample after ``epoch`` was kept (metadata)."""
        with self._cond:
            return self._sample_wall_s.get(epoch, self.apply_wall_s)

    def wait_applied(self, epoch: int, timeout_s: float) -> bool:
        """Block until the host has applied ``epoch`` (True at once if no shard is registered)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (
                    self._applied_epoch >= epoch or not self._shards or self._broken is not None
                ),
                timeout_s,
            )

    def state(self) -> dict[str, Any]:
        """Counters of the host and of every guest, plus the barrier's position."""
        with self._cond:
            return {
                "host_id": self.host_id,
                "next_epoch": self._next_epoch,
                "epoch_end_ns": self._epoch_end_ns,
                "counters": dict(self.host.host_counters()),
                "guests": [
                    (
                        reg.guest_id,
                        reg.shard_id,
                        reg.nr_pages,
                        dict(self.host.guest_counters(reg.guest_id)),
                    )
                    for reg in sorted(self._guests.values(), key=lambda r: r.guest_id)
                ],
                "shard_ids": sorted(self._shards),
            }

    # -- checkpoints

    _TRANSIENT = ("_cond", "apply_wall_s", "_sample_wall_s")  # not state: lock and metadata

    def __getstate__(self) -> dict[str, Any]:
        """The barrier's state and its host core at a sample boundary (nothing pending):
        what a coordinated checkpoint keeps (:mod:`services.protocol.snapshot`)."""
        with self._cond:
            if self._pending:
                raise failed_precondition(
                    "checkpoint",
                    self.host_id,
                    f"host {self.host_id} holds submissions of shards {sorted(self._pending)} "
                    "for an epoch not yet applied",
                )
            return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cond = threading.Condition()
        self.apply_wall_s = 0.0
        self._sample_wall_s = {}

    def restore(self, saved: EpochBarrier) -> None:
        """Become ``saved`` (a checkpoint of this host) in place: the servers and links
        that hold this object go on from the checkpoint's epoch. Waiters are woken."""
        if (saved.experiment_id, saved.host_id) != (self.experiment_id, self.host_id):
            raise failed_precondition(
                "checkpoint",
                saved.host_id,
                f"a checkpoint of host {saved.host_id} of {saved.experiment_id!r}, "
                f"not of host {self.host_id} of {self.experiment_id!r}",
            )
        state = saved.__getstate__()
        with self._cond:
            self.__dict__.update(state)
            self._cond.notify_all()

    # -- internals

    def _check_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    def _missing(self) -> list[int]:
        due = self._next_epoch
        return sorted(
            s
            for s, e in self._expect.items()
            if e == due and (s not in self._pending or self._pending[s].epoch != due)
        )

    def _check_epoch(self, sub: EpochSubmission) -> None:
        if sub.shard_id not in self._shards:
            raise not_found("shard_id", sub.shard_id, "shard registered no guest with this host")
        expected = self._expect[sub.shard_id]
        if sub.epoch < expected:
            raise failed_precondition(
                "epoch",
                sub.epoch,
                f"stale: host {self.host_id} expects epoch {expected} from shard {sub.shard_id}",
            )
        if sub.epoch > expected:
            raise failed_precondition(
                "epoch",
                sub.epoch,
                f"future: host {self.host_id} expects epoch {expected} from shard {sub.shard_id}",
            )
        require(sub.epochs >= 1, "epochs", sub.epochs, "must be at least 1")
        require(
            sub.next_epoch == 0 or sub.next_epoch >= sub.epoch + sub.epochs,
            "next_epoch",
            sub.next_epoch,
            f"must be 0 or at least {sub.epoch + sub.epochs} (after the covered epochs)",
        )
        require(
            sub.epoch_end_ns >= self._epoch_end_ns,
            "epoch_end_ns",
            sub.epoch_end_ns,
            f"before the previous epoch's end {self._epoch_end_ns}",
        )
        for other in self._pending.values():
            if other.shard_id != sub.shard_id and other.epoch == sub.epoch:
                if other.epochs != sub.epochs:
                    raise invalid_argument(
                        "epochs",
                        sub.epochs,
                        f"shard {other.shard_id} covers {other.epochs} epochs from the same epoch",
                    )
                if other.epoch_end_ns != sub.epoch_end_ns:
                    raise invalid_argument(
                        "epoch_end_ns",
                        sub.epoch_end_ns,
                        f"shard {other.shard_id} sent {other.epoch_end_ns} for the same epoch",
                    )

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
        outcomes = {gid: GuestOutcome(gid) for gid in self._guests}
        all_ops = sorted((ops for sub in subs for ops in sub.guests), key=lambda ops: ops.guest_id)
        try:
            epochs = subs[0].epochs
            split = [ops.by_epoch(epochs) for ops in all_ops]
            for i in range(epochs):  # one epoch at a time, reclaim after each
                ops_i = [per_epoch[i] for per_epoch in split if per_epoch[i] is not None]
                apply_epoch_ops(self.host, ops_i, outcomes)
                record_swapped(outcomes, self.host.reclaim())
            for gid, outcome in outcomes.items():
                outcome.stopped = bool(self.host.is_stopped(gid))
        except Exception as exc:
            # Validation let through something the core refused: the epoch is
            # half applied, so the endpoint refuses everything from now on.
            self._broken = internal("epoch", epoch, f"host core failed while applying: {exc!r}")
            raise self._broken from exc
        self._merge_carried(outcomes, {sub.shard_id for sub in subs})
        last = epoch + subs[0].epochs - 1
        if any(sub.sample for sub in subs):
            self._keep_sample(last)
        for sub in subs:
            mine = tuple(
                outcomes[gid]
                for gid in sorted(outcomes)
                if self._guests[gid].shard_id == sub.shard_id
            )
            self._done[sub.shard_id] = _StoredOutcome(
                epoch,
                sub.sequence,
                EpochOutcome(
                    epoch, sub.sequence, mine, self._samples.get(last) if sub.sample else None
                ),
            )
            self._expect[sub.shard_id] = sub.following_epoch
            del self._pending[sub.shard_id]
        self._epoch_end_ns = subs[0].epoch_end_ns
        self._applied_epoch = epoch + subs[0].epochs - 1
        self.apply_wall_s += time.perf_counter() - wall0
        if self._applied_epoch in self._samples:
            self._sample_wall_s[self._applied_epoch] = self.apply_wall_s

    def _merge_carried(self, outcomes: dict[int, GuestOutcome], submitted: set[int]) -> None:
        """Fold carried outcomes in; carry those of shards that did not submit this epoch."""
        for gid, fresh in outcomes.items():
            carried = self._carry.pop(gid, None)
            outcome = fresh
            if carried is not None:
                outcome = merge_outcomes(carried, fresh)
                outcomes[gid] = outcome
            if self._guests[gid].shard_id not in submitted:
                if has_news(outcome):
                    self._carry[gid] = outcome
            elif len(outcome.swapped_starts):
                # pages swapped out and touched again before the answer are resident
                outcome.swapped_starts, outcome.swapped_npages = self.host.swapped_runs(
                    gid, outcome.swapped_starts, outcome.swapped_npages
                )

    def _keep_sample(self, epoch: int) -> None:
        """Store the host counters sampled after ``epoch``; drop the oldest over the limit."""
        self._samples[epoch] = dict(self.host.host_counters())
        while len(self._samples) > MAX_KEPT_SAMPLES:
            oldest = min(self._samples)
            del self._samples[oldest]
            self._sample_wall_s.pop(oldest, None)
