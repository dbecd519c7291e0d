"""Free page reporting worker (§4): state machine, per-zone pass, per-list cycle.

The worker drives any allocator that implements the contract in
docs/core-api.md (the reference or the numba fast path) through three
primitives only: ``zone_report_gate``, ``report_fill`` and ``report_drain``.
The device is injected as a :class:`PageReporter` port, like the kernel's
``prdev->report`` callback, so memory management never depends on the
transport.

Stages, one function each: ``_fill`` (isolate into the batch), ``_report``
(call the device), ``_drain`` (put the batch back), ``_idle`` (end of a pass:
back to IDLE or re-arm). A pass runs atomically at its scheduled instant of
simulated time; report latencies advance a pass-local clock that decides when
the next pass may start.
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
    """What the device answered for one batch."""

    error: int = 0  # 0 = ok; non-zero -> §4.7 error path
    latency_ns: int = 0  # simulated time the call blocked the worker


class PageReporter(Protocol):
    """The device side of reporting (the kernel's prdev->report)."""

    def report(self, now_ns: int, pfns: np.ndarray, orders: np.ndarray) -> ReportOutcome: ...


class PageReportingWorker:
    """page_reporting_process + page_reporting_cycle over one allocator (§4.2-4.7)."""

    IDLE, REQUESTED, ACTIVE = 0, 1, 2

    def __init__(self, allocator, config: ReportingConfig, reporter: PageReporter):
        self.allocator = allocator
        self.config = config
        self.reporter = reporter
        guest = allocator.config
        self.report_order = guest.pageblock_order if config.order is None else config.order
        self.max_order = guest.max_order
        if not 0 <= self.report_order <= self.max_order:
            raise ValueError(
                f"reporting order must be in 0..{self.max_order}, got {self.report_order}"
            )
        self.state = self.IDLE
        self._next_run_ns: int | None = None
        self._busy_until_ns = 0  # end of the last pass (its report latencies included)
        self._batch_pfn = np.zeros(config.capacity, dtype=np.int64)
        self._batch_order = np.zeros(config.capacity, dtype=np.int8)
        self._n = 0  # entries in the batch; the batch is shared by the lists of a zone
        self._clock_ns = 0  # pass-local clock
        self.passes = 0
        self.reports = 0
        self.reported_blocks = 0
        self.reported_pages = 0
        self.report_errors = 0
        self.budget_exhaustions = 0
        self.zones_skipped = 0

    # ------------------------------------------------------------------ state machine (§4.2)

    def register(self, now_ns: int) -> None:
        """Device registration: IDLE, then a request, so the first full pass runs at now + delay."""
        self.state = self.IDLE
        self.request(now_ns)

    def request(self, now_ns: int) -> None:
        """§4.2 page_reporting_request: IDLE -> REQUESTED schedules a pass after the delay."""
        if self.state == self.REQUESTED:
            return
        prev, self.state = self.state, self.REQUESTED
        if prev == self.IDLE:
            # A request while the last pass still "runs" (its reports took simulated time)
            # behaves like ACTIVE -> REQUESTED: the pass end re-arms the delay.
            self._next_run_ns = max(now_ns, self._busy_until_ns) + self.config.delay_ns

    def next_event_ns(self) -> int | None:
        return self._next_run_ns

    def run_until(self, now_ns: int) -> None:
        """Run every pass scheduled at or before now_ns, in order."""
        while self._next_run_ns is not None and self._next_run_ns <= now_ns:
            start_ns, self._next_run_ns = self._next_run_ns, None
            self._run_pass(start_ns)

    def _run_pass(self, start_ns: int) -> None:
        """page_reporting_process: zones ascending until one returns an error."""
        self.state = self.ACTIVE
        self.passes += 1
        self._clock_ns = start_ns
        for zone in range(self.allocator.nr_zones):
            if self._process_zone(zone):
                break
        self._idle()

    def _idle(self) -> None:
        """End of pass: ACTIVE -> IDLE, or re-arm after the delay if requested meanwhile."""
        self._busy_until_ns = self._clock_ns
        if self.state == self.REQUESTED:
            self._next_run_ns = self._clock_ns + self.config.delay_ns
        else:
            self.state = self.IDLE

    # ------------------------------------------------------------------ one zone (§4.3)

    def _process_zone(self, zone: int) -> int:
        """Watermark gate, then orders R..MAX x migratetypes, then the leftover batch."""
        if not self.allocator.zone_report_gate(zone):
            self.zones_skipped += 1  # silently: does not keep the state machine alive
            return 0
        self._n = 0
        for order in range(self.report_order, self.max_order + 1):
            for mt in REPORTED_MIGRATETYPES:
                err = self._cycle(zone, order, mt)
                if err:
                    return err  # §4.7: the leftover step is skipped (batch already drained)
        if self._n:
            err = self._report()  # leftover partial batch at zone end
            self._drain(ok=err == 0)
            return err
        return 0

    # ------------------------------------------------------------------ one list visit (§4.4)

    def _cycle(self, zone: int, order: int, mt: int) -> int:
        """page_reporting_cycle: at most budget + 1 device calls in this list visit."""
        # An empty list costs nothing: report_fill returns LIST_END at once.
        budget = math.ceil(
            self.allocator.nr_free(zone, order)
            / (self.config.capacity * self.config.budget_divisor)
        )
        while True:
            status = self._fill(zone, order, mt, budget)
            if status == REPORT_BUDGET_EXHAUSTED:
                self.budget_exhaustions += 1
                self.state = self.REQUESTED  # guarantees a follow-up pass
                return 0
            if status != REPORT_BATCH_FULL:
                return 0  # end of list, or isolation refused (not an error, §4.7)
            err = self._report()
            budget -= 1
            self._drain(ok=err == 0)
            if err:
                return err  # blocks went back unreported; the pass stops (§4.7)

    def _fill(self, zone: int, order: int, mt: int, budget: int) -> int:
        """Isolate unreported blocks of one list into the shared batch."""
        status, self._n = self.allocator.report_fill(
            zone, order, mt, self._batch_pfn, self._batch_order, self._n, budget
        )
        return status

    def _report(self) -> int:
        """Hand the batch to the device; its latency advances the pass-local clock."""
        n = self._n
        pfns = self._batch_pfn[:n].copy()
        orders = self._batch_order[:n].copy()
        outcome = self.reporter.report(self._clock_ns, pfns, orders)
        self._clock_ns += outcome.latency_ns
        self.reports += 1
        if outcome.error:
            self.report_errors += 1
        else:
            self.reported_blocks += n
            self.reported_pages += int(np.sum(np.left_shift(1, orders.astype(np.int64))))
        return outcome.error

    def _drain(self, ok: bool) -> None:
        """Put the batch back (§4.6): Reported only if ok and still a free head of that order."""
        self.allocator.report_drain(self._batch_pfn, self._batch_order, self._n, ok)
        self._n = 0
