"""Free page reporting worker (§4): state machine, per-zone pass, per-list cycle.

The worker drives any allocator that implements the contract in
docs/core-api.md (the reference or the numba fast path) through three
primitives only: ``zone_report_gate``, ``report_fill`` and ``report_drain``.
The device is injected as a :class:`PageReporter` port, like the kernel's
``prdev->report`` callback, so memory management never depends on the
transport; a :class:`ReportPricer` says how long each call takes.

A pass is a sequence of report calls in the guest's timeline (§4.9). It starts
at its scheduled instant and walks the zones and lists until a batch is ready;
then a call starts and takes its priced latency, during which the batch stays
isolated (the allocator cannot hand it out or merge with it) and the guest's
own allocations and frees go on. When the call completes the device gets the
batch, the batch is drained and the walk resumes where it stopped: in the same
list visit (walked again from its head, with what is left of its budget) after
a call made inside a visit, or at the next zone after a zone's leftover call.
The state carried between calls is small: zone, list visit (order and
migratetype), budget and the batch. Stages, one function each: ``_walk``
(isolate into the batch until a call or the pass end), ``_start_call``,
``_complete_call`` (hand the batch to the device, drain), ``_end_pass`` (back to
IDLE or re-arm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .config import ReportingConfig
from .constants import MIGRATE_ISOLATE, MIGRATE_TYPES

REPORT_LIST_END = 0  # walked to the end of the list
REPORT_BATCH_FULL = 1  # batch full and another unreported block waits: report + drain
REPORT_BUDGET_EXHAUSTED = 2  # allowance of this list visit spent: force another pass
REPORT_ISOLATE_REFUSED = 3  # min watermark refused an isolation (§4.5): not an error

# Migratetypes a pass scans: every type but ISOLATE (§4.3).
REPORTED_MIGRATETYPES = tuple(mt for mt in range(MIGRATE_TYPES) if mt != MIGRATE_ISOLATE)


@dataclass(frozen=True)
class ReportOutcome:
    """What the device answered for one batch, when the call returned."""

    error: int = 0  # 0 = ok; non-zero -> §4.7 error path


class PageReporter(Protocol):
    """The device side of reporting (the kernel's prdev->report).

    Called when a call *completes* (``now_ns`` is its completion time): the
    host has the batch then, and the answer decides the drain (§4.6, §4.7).
    """

    def report(self, now_ns: int, pfns: np.ndarray, orders: np.ndarray) -> ReportOutcome: ...


class ReportPricer(Protocol):
    """How long one report call of this batch blocks the worker, in ns (>= 0)."""

    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int: ...


class _Free:
    """Report calls take no time (tests, pure guest runs)."""

    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int:
        return 0


class PageReportingWorker:
    """page_reporting_process + page_reporting_cycle over one allocator (§4.2-4.7)."""

    IDLE, REQUESTED, ACTIVE = 0, 1, 2

    def __init__(
        self,
        allocator,
        config: ReportingConfig,
        reporter: PageReporter,
        pricer: ReportPricer | None = None,
    ):
        self.allocator = allocator
        self.config = config
        self.reporter = reporter
        self.pricer: ReportPricer = pricer if pricer is not None else _Free()
        guest = allocator.config
        self.report_order = guest.pageblock_order if config.order is None else config.order
        self.max_order = guest.max_order
        if not 0 <= self.report_order <= self.max_order:
            raise ValueError(
                f"reporting order must be in 0..{self.max_order}, got {self.report_order}"
            )
        # The list visits of one zone, in pass order: orders R..MAX, migratetypes ascending.
        self._lists = tuple(
            (order, mt)
            for order in range(self.report_order, self.max_order + 1)
            for mt in REPORTED_MIGRATETYPES
        )
        self.state = self.IDLE
        self._next_run_ns: int | None = None  # the next pass (scheduled work)
        self._batch_pfn = np.zeros(config.capacity, dtype=np.int64)
        self._batch_order = np.zeros(config.capacity, dtype=np.int8)
        self._pages_of_order = tuple(1 << o for o in range(self.max_order + 1))
        self._n = 0  # entries in the batch; the batch is shared by the lists of a zone
        # Where a running pass stands between calls.
        self._zone = 0
        self._visit = -1  # index into _lists; -1: zone not entered; len(_lists): leftover
        self._budget: int | None = None  # of the current list visit (None: not started)
        self._call_end_ns: int | None = None  # completion of the call in flight
        self._call_ns = 0  # its latency
        self.passes = 0
        self.reports = 0  # completed calls
        self.reported_blocks = 0
        self.reported_pages = 0
        self.report_errors = 0
        self.returned_blocks = 0  # blocks of failed calls, put back unreported
        self.budget_exhaustions = 0
        self.zones_skipped = 0
        self.report_ns = 0  # simulated time spent in completed calls (the guest's lost time)

    # ------------------------------------------------------------------ state machine (§4.2)

    def register(self, now_ns: int) -> None:
        """Device registration: IDLE, then a request, so the first full pass runs at now + delay."""
        self.state = self.IDLE
        self.request(now_ns)

    def request(self, now_ns: int) -> None:
        """§4.2 page_reporting_request: IDLE -> REQUESTED schedules a pass after the delay.
        ACTIVE -> REQUESTED (a notify while a call is in flight) re-arms at the pass end."""
        if self.state == self.REQUESTED:
            return
        prev, self.state = self.state, self.REQUESTED
        if prev == self.IDLE:
            self._next_run_ns = now_ns + self.config.delay_ns

    def next_event_ns(self) -> int | None:
        """The completion of the call in flight, else the next scheduled pass (None: none)."""
        if self._call_end_ns is not None:
            return self._call_end_ns
        return self._next_run_ns

    @property
    def in_flight(self) -> bool:
        """A report call has started and not completed (its batch is isolated)."""
        return self._call_end_ns is not None

    def in_flight_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(pfns, orders) of the batch of the call in flight, isolated until it completes
        (empty when no call is in flight). Copies."""
        n = self._n if self._call_end_ns is not None else 0
        return self._batch_pfn[:n].copy(), self._batch_order[:n].astype(np.int64)

    def in_flight_pages(self) -> int:
        """Pages isolated in the batch of the call in flight (0 when none)."""
        _, orders = self.in_flight_batch()
        return int(np.left_shift(1, orders).sum())

    def run_until(self, now_ns: int) -> None:
        """Run every event at or before now_ns, in time order: pass starts and call completions."""
        while True:
            if self._call_end_ns is not None:
                if self._call_end_ns > now_ns:
                    return
                self._complete_call(self._call_end_ns)
            elif self._next_run_ns is not None and self._next_run_ns <= now_ns:
                start_ns, self._next_run_ns = self._next_run_ns, None
                self._start_pass(start_ns)
            else:
                return

    def _start_pass(self, now_ns: int) -> None:
        """page_reporting_process: zones ascending until one returns an error."""
        self.state = self.ACTIVE
        self.passes += 1
        self._zone, self._visit, self._budget = 0, -1, None
        self._walk(now_ns)

    def _end_pass(self, now_ns: int) -> None:
        """End of pass: ACTIVE -> IDLE, or re-arm after the delay if requested meanwhile."""
        if self.state == self.REQUESTED:
            self._next_run_ns = now_ns + self.config.delay_ns
        else:
            self.state = self.IDLE

    # ------------------------------------------------------------------ the walk (§4.3, §4.4)

    def _walk(self, now_ns: int) -> None:
        """Continue the pass at now_ns until a call starts or the pass ends.

        Per zone (§4.3): the watermark gate once, then the list visits (§4.4) with
        one batch shared by all of them, then the leftover partial batch. A visit
        makes at most budget + 1 calls: report_fill refuses with BUDGET_EXHAUSTED
        once the budget is below zero.
        """
        a = self.allocator
        nr_lists = len(self._lists)
        while self._zone < a.nr_zones:
            zone = self._zone
            if self._visit < 0:
                if not a.zone_report_gate(zone):
                    self.zones_skipped += 1  # silently: does not keep the state machine alive
                    self._zone += 1
                    continue
                self._n, self._visit, self._budget = 0, 0, None
            while self._visit < nr_lists:
                order, mt = self._lists[self._visit]
                if self._budget is None:  # entering the visit (an empty list: LIST_END at once)
                    self._budget = math.ceil(
                        a.nr_free(zone, order) / (self.config.capacity * self.config.budget_divisor)
                    )
                status = self._fill(zone, order, mt, self._budget)
                if status == REPORT_BATCH_FULL:
                    self._start_call(now_ns)  # the walk resumes in this visit when it completes
                    return
                if status == REPORT_BUDGET_EXHAUSTED:
                    self.budget_exhaustions += 1
                    self.state = self.REQUESTED  # guarantees a follow-up pass
                # end of list, budget spent, or isolation refused (not an error, §4.7)
                self._visit += 1
                self._budget = None
            if self._n:
                self._start_call(now_ns)  # leftover partial batch at zone end (_visit == nr_lists)
                return
            self._zone, self._visit = self._zone + 1, -1
        self._end_pass(now_ns)

    def _fill(self, zone: int, order: int, mt: int, budget: int) -> int:
        """Isolate unreported blocks of one list into the shared batch."""
        status, self._n = self.allocator.report_fill(
            zone, order, mt, self._batch_pfn, self._batch_order, self._n, budget
        )
        return status

    # ------------------------------------------------------------------ one call (§4.4, §4.6)

    def _start_call(self, now_ns: int) -> None:
        """The zone lock is dropped and the device called: the batch stays isolated until
        the call completes, priced_latency later."""
        n = self._n
        latency = int(self.pricer.price_report(self._batch_pfn[:n], self._batch_order[:n]))
        if latency < 0:
            raise ValueError(f"price_report returned {latency} ns for {n} blocks: must be >= 0")
        self._call_ns = latency
        self._call_end_ns = now_ns + latency

    def _complete_call(self, now_ns: int) -> None:
        """The call returns: the device answers, the batch is drained, the walk goes on."""
        n = self._n
        # the scatterlist is filled from its last slot: the device sees the batch in
        # reverse isolation order, as the drain walks it (§4.4, §4.6)
        pfns = self._batch_pfn[n - 1 :: -1].copy() if n else self._batch_pfn[:0].copy()
        orders = self._batch_order[n - 1 :: -1].copy() if n else self._batch_order[:0].copy()
        self._call_end_ns = None
        outcome = self.reporter.report(now_ns, pfns, orders)
        self.reports += 1
        self.report_ns += self._call_ns
        if outcome.error:
            self.report_errors += 1
            self.returned_blocks += n  # back on the free lists unreported (§4.7)
        else:
            self.reported_blocks += n
            self.reported_pages += sum(map(self._pages_of_order.__getitem__, orders.tolist()))
        self._drain(ok=outcome.error == 0)
        if outcome.error:
            # §4.7: blocks went back unreported; the visit, the zone (its leftover step
            # skipped) and the pass stop.
            self._end_pass(now_ns)
            return
        if self._visit >= len(self._lists):  # the zone's leftover call: next zone
            self._zone, self._visit = self._zone + 1, -1
        else:
            assert self._budget is not None
            self._budget -= 1  # a call made inside this visit; the walk restarts at the head
        self._walk(now_ns)

    def _drain(self, ok: bool) -> None:
        """Put the batch back (§4.6): Reported only if ok and still a free head of that order."""
        self.allocator.report_drain(self._batch_pfn, self._batch_order, self._n, ok)
        self._n = 0
