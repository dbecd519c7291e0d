"""One simulated guest: allocator + reporting worker + backing view, in simulated time.

The guest owns its clock (``now_ns``, integer nanoseconds) and only moves it
forward in :meth:`Guest.advance_to`, which runs the events of its timers in
time order: the reporting worker (pass starts and report-call completions) and,
in the modern profile, the pcp decay (decay_pcp_high at whole seconds, §3.4). After every free or pcp drain that notified (the allocator's
``notify_count`` moved, §2.6) it requests a reporting pass (§4.2). A report
call is priced by the cost port when it starts; when it completes, a
successful report marks the reported blocks DISCARDED in the backing view
before the result goes back to the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from services.units import RNG_KIND_SHUFFLE

from .backing import BackingView, CostPort, NullCostPort
from .config import GuestConfig
from .constants import MIGRATE_TYPES, PAGE_SHIFT, PCP_DECAY_INTERVAL_NS
from .pagecache import PageCache, alloc_reclaiming
from .reporting import PageReporter, PageReportingWorker, ReportOutcome

WORKER_STATE_NAMES = ("idle", "requested", "active")


def make_allocator(config: GuestConfig, rng: np.random.Generator | None, fast: bool):
    """BuddyAllocator (numba fast path) when fast, else the pure-Python reference.

    Each is imported only when asked for: a fast guest never loads the reference,
    and a reference guest never compiles the numba kernels (no silent fallback
    from one to the other).
    """
    if not fast:
        from .reference import ReferenceAllocator

        return ReferenceAllocator(config, rng)
    from .buddy import BuddyAllocator

    return BuddyAllocator(config, rng)


def shuffle_rng(seed: int, guest_id: int) -> np.random.Generator:
    """The guest's shuffle stream: SeedSequence([seed, RNG_KIND_SHUFFLE, guest_id])."""
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, RNG_KIND_SHUFFLE, guest_id]))
    )


class Timer(Protocol):
    """A source of events in a guest's timeline (the reporting worker; later e.g. pcp decay)."""

    def next_event_ns(self) -> int | None: ...
    def run_until(self, now_ns: int) -> None: ...


class _PcpDecayTimer:
    """vmstat_update's decay_pcp_high (modern profile): at every whole second of guest time
    while some pcp has high above high_min or pages above high (§3.4). It has no event
    when nothing is left to decay, so an idle guest can still be skipped ahead."""

    def __init__(self, guest: Guest, interval_ns: int):
        self.guest = guest
        self.interval_ns = interval_ns
        self.ticks = 0
        self._last_tick_ns = -1

    def next_event_ns(self) -> int | None:
        """The first whole second at or after the guest clock that has not ticked yet."""
        if not self.guest.allocator.pcp_decay_pending():
            return None
        step = self.interval_ns
        tick = -(-self.guest.now_ns // step) * step
        return tick if tick > self._last_tick_ns else self._last_tick_ns + step

    def run_until(self, now_ns: int) -> None:
        tick = self.next_event_ns()
        while tick is not None and tick <= now_ns:
            self.guest.now_ns = tick
            self._last_tick_ns = tick
            self.guest.allocator.decay_pcp_high()
            self.ticks += 1
            self.guest._notify()  # the freed pages may end in blocks of order >= R
            tick = self.next_event_ns()


class _GuestDevice:
    """The worker's device: the cost port prices a call when it starts; when it completes,
    the device port gets the batch and a successful report discards the blocks in the
    backing view."""

    def __init__(self, reporter: PageReporter, backing: BackingView, cost_port: CostPort):
        self.reporter = reporter
        self.backing = backing
        self.cost_port = cost_port

    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int:
        return int(self.cost_port.price_report(pfns, orders))

    def report(self, now_ns: int, pfns: np.ndarray, orders: np.ndarray) -> ReportOutcome:
        outcome = self.reporter.report(now_ns, pfns, orders)
        if outcome.error == 0:
            self.cost_port.discard_view(self.backing, pfns, orders)
        return outcome


class Guest:
    """A guest advanced in simulated time; see docs/core-api.md."""

    def __init__(
        self,
        guest_id: int,
        config: GuestConfig,
        seed: int,
        reporter: PageReporter,
        fast: bool = True,
        cost_port: CostPort | None = None,
    ):
        self.guest_id = guest_id
        self.config = config
        self.now_ns = 0
        rng = shuffle_rng(seed, guest_id) if config.shuffle else None
        self.allocator = make_allocator(config, rng, fast)
        self.cost_port = cost_port if cost_port is not None else NullCostPort()
        touch_cost = getattr(self.cost_port, "touch", None)  # a HostCostPort's TouchCost
        self.backing = (
            BackingView(config.nr_pages, touch_cost.gran_shift, touch_cost.huge_faults)
            if touch_cost is not None
            else BackingView(config.nr_pages)
        )
        self.touch_cost_ns = 0  # every touch's price, summed
        self.unpaid_touch_ns = 0  # the part no workload has spent yet (pay_touches)
        device = _GuestDevice(reporter, self.backing, self.cost_port)
        self.worker = PageReportingWorker(self.allocator, config.reporting, device, device)
        self._timers: list[Timer] = [self.worker]
        if config.is_modern and config.pcp.enabled:
            self.pcp_decay = _PcpDecayTimer(self, PCP_DECAY_INTERVAL_NS)
            self._timers.append(self.pcp_decay)
        self.page_cache = PageCache(self)  # kswapd: a timer only while it is awake
        self._timers.append(self.page_cache)
        self._notify_seen = self.allocator.notify_count
        if config.reporting.enabled:
            self.worker.register(self.now_ns)

    def add_timer(self, timer: Timer) -> None:
        """Add an event source; advance_to runs it in time order with the others (ties:
        the order timers were added, the reporting worker first)."""
        self._timers.append(timer)

    def alloc(self, order: int, mt: int, count: int = 1, cpu: int = 0) -> np.ndarray:
        """Allocate on vCPU cpu. A failed block drains the pcp lists, which can notify; with
        page cache it also reclaims, and kswapd wakes below the low watermark."""
        pfns = alloc_reclaiming(self, order, mt, count, cpu)
        self._notify()
        return pfns

    def free(self, pfns: np.ndarray | Sequence[int], order: int, cpu: int = 0) -> None:
        self.allocator.free(pfns, order, cpu)
        self._notify()

    def drain_pcp(self) -> None:
        self.allocator.drain_pcp()
        self._notify()

    def _notify(self) -> None:
        """page_reporting_notify_free: request a pass if a free ended at order >= R."""
        if self.allocator.notify_count != self._notify_seen:
            self._notify_seen = self.allocator.notify_count
            if self.config.reporting.enabled:
                self.worker.request(self.now_ns)

    def touch(self, starts, npages) -> np.ndarray:
        """Touch page ranges; returns the backing view's counts, and prices them."""
        counts = self.backing.touch(starts, npages)
        ns = int(self.cost_port.price_touch(counts))
        self.touch_cost_ns += ns
        self.unpaid_touch_ns += ns
        return counts

    def pay_touches(self) -> int:
        """The price of the touches since the last call: the workload that made them spends
        it from its own time, so its progress slows as it pays (docs/workloads.md)."""
        ns, self.unpaid_touch_ns = self.unpaid_touch_ns, 0
        return ns

    def advance_to(self, now_ns: int) -> None:
        """Move the clock forward to now_ns, running every timer event due by then in time
        order; the clock reads each event's time while it runs."""
        if now_ns < self.now_ns:
            raise ValueError(f"now_ns={now_ns} is before the guest clock {self.now_ns}")
        while True:
            due: Timer | None = None
            due_ns = now_ns
            for timer in self._timers:
                t = timer.next_event_ns()
                if t is not None and (t < due_ns or (due is None and t == due_ns)):
                    due, due_ns = timer, t
            if due is None:
                break
            self.now_ns = max(self.now_ns, due_ns)
            due.run_until(due_ns)
        self.now_ns = now_ns

    def next_event_ns(self) -> int | None:
        """The earliest event of any timer (None: nothing scheduled)."""
        best = None
        for timer in self._timers:  # a loop: asked for every guest that runs, every epoch
            t = timer.next_event_ns()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def state(self) -> dict:
        """A snapshot for metrics and results."""
        a = self.allocator
        free_blocks = {
            order: {
                mt: sum(len(a.free_list(z, order, mt)) for z in range(a.nr_zones))
                for mt in range(MIGRATE_TYPES)
            }
            for order in range(self.config.max_order + 1)
        }
        backing = self.backing.counts()
        return {
            "guest_id": self.guest_id,
            "now_ns": self.now_ns,
            "free_blocks": free_blocks,
            "free_bytes": a.free_pages_total() << PAGE_SHIFT,
            "pcp_bytes": a.pcp_pages() << PAGE_SHIFT,
            "reported_bytes": a.reported_pages() << PAGE_SHIFT,
            "backed_bytes": backing["backed"] << PAGE_SHIFT,
            "discarded_bytes": backing["discarded"] << PAGE_SHIFT,
            "worker_state": WORKER_STATE_NAMES[self.worker.state],
            "reports": self.worker.reports,
            "passes": self.worker.passes,
            "report_ns": self.worker.report_ns,
            "report_in_flight_bytes": self.worker.in_flight_pages() << PAGE_SHIFT,
            "touch_cost_ns": self.touch_cost_ns,
        }


class _AckAll:
    def report(self, now_ns: int, pfns: np.ndarray, orders: np.ndarray) -> ReportOutcome:
        return ReportOutcome(error=0)


def warm_up(config: GuestConfig) -> None:
    """Load (or compile) every numba kernel a guest with ``config`` runs, on a small
    throwaway guest, so the first epoch of a timed run does not pay for it.
    Nothing of it is kept; the simulation's own guests are untouched."""
    from dataclasses import replace

    small = replace(config, nr_pages=min(config.nr_pages, 64 << config.max_order))
    g = Guest(0, small, 0, _AckAll())
    for order in (0, config.pageblock_order):
        pfns = g.alloc(order, 0, 8)
        g.touch(pfns, np.full(len(pfns), 1 << order, np.int64))
        g.free(pfns, order)
    g.drain_pcp()
    release = getattr(g.allocator, "release_unlisted_links", None)  # the fast path's sweep
    if release is not None:
        release()
    g.advance_to(g.next_event_ns() or 0)
    g.advance_to(max(g.now_ns, g.next_event_ns() or 0))
    g.state()
