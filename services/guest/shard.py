"""A guest shard: many guests advanced together in lockstep epochs.

This is a plain state class (no Ray, no gRPC). The Ray actor in
``services/guest/actor.py`` is a thin shell over it, and the in-process runner
uses it directly. In one epoch every guest runs its workload and its reporting
worker up to the epoch's end; everything it did that a host must see (report
batches, touched and freed page runs) is recorded in op-sequence order, one
:class:`~services.protocol.messages.GuestOps` per guest (the protocol's own type), and handed to the host the guest lives on.
One sync covers a span of one or more epochs (:meth:`GuestShard.run_span`);
each guest's log marks where every epoch's ops end. The host's answer
(swapped-out runs, simulated time lost to costs) is applied at the end of the
span. A guest prices its own touches with its host's figures as it makes them
(``GuestInit.touch_cost``) and its workload pays that from its time at once;
the host's answer replaces the price, and only the difference (what the host
did that the guest could not see: swap-outs, reclaim) is subtracted from the
guest's working time in later epochs.

Report calls take time in the guest's timeline (docs/kernel-model.md §4.9): a
call is priced from its host's figures (``GuestInit.report_cost``) when it
starts, and the guest's workload runs on while it is in flight. The op log
records the batch when the call *completes*, so a call still in flight at the
end of an epoch is applied by the host in the epoch in which it completes,
after the guest's touches that precede its completion. Its latency is charged
then as lost time of kind ``report``.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from services.guest.core.backing import HostCostPort, ReportCost, TouchCost
from services.guest.core.config import GuestConfig
from services.guest.core.guest import Guest
from services.guest.core.reporting import PageReportingWorker
from services.guest.core.trace_replay import TraceConfig
from services.guest.core.willitscale import WillItScaleConfig
from services.guest.core.workloads import (
    IdleConfig,
    MemhogConfig,
    leaf_runners,
    make_workload,
    ops_by_kind,
    pfns_to_runs,
)
from services.protocol.messages import (
    DISCARD_DONTNEED,
    GuestOps,
    GuestOutcome,
    GuestRegistration,
)
from services.units import (
    LOST_KINDS,
    PAGE_SHIFT,
    PAGE_SIZE,
    RNG_KIND_WORKLOAD,
)

from .client_blocks import ClientBlocks
from .oplog import OpLog


@dataclass(frozen=True)
class GuestInit:
    """Everything needed to build one guest inside a shard."""

    guest_id: int
    group: str
    host_id: int
    config: GuestConfig
    workload: MemhogConfig | IdleConfig | TraceConfig | WillItScaleConfig
    discard_mode: str = DISCARD_DONTNEED
    # its host's figures for one report call (default: calls take no time)
    report_cost: ReportCost = field(default_factory=ReportCost)
    # its host's figures for a touch, so the guest prices touches as it makes them
    # (default: 0; the host's answer then charges all of it at the sync)
    touch_cost: TouchCost = field(default_factory=TouchCost)
    # fraction of its report calls that fail (fault injection, §4.7; spec faults.reject_reports)
    reject_reports: float = 0.0

    def registration(self, shard_id: int) -> GuestRegistration:
        """How this guest is registered with its host (the one builder of registrations)."""
        c = self.config
        return GuestRegistration(
            guest_id=self.guest_id,
            shard_id=shard_id,
            nr_pages=c.nr_pages,
            discard_mode=self.discard_mode,
            report_capacity=c.reporting.capacity,
            max_order=c.max_order,
            guest_thp=c.thp,
        )


MAX_CLIENT_END_NS = 1 << 62  # a client workload ends before this simulated time
MAX_CLIENT_WORKLOADS = 16  # client-started workloads per guest (finished ones count too)
# the reporting worker's states (§4.2) as sample columns reporting_<state>_guests ("off":
# a guest whose reporting is disabled)
REPORTING_STATES = {
    PageReportingWorker.IDLE: "idle",
    PageReportingWorker.REQUESTED: "requested",
    PageReportingWorker.ACTIVE: "active",
}


class _GuestDriver:
    """What a workload sees: the guest's alloc/free/touch, with host-visible ops logged."""

    def __init__(self, guest: Guest, link: OpLog):
        self.guest = guest
        self.link = link

    def alloc(self, order: int, mt: int, count: int, cpu: int = 0) -> np.ndarray:
        return self.guest.alloc(order, mt, count, cpu)

    def free(self, pfns: np.ndarray, order: int, cpu: int = 0) -> None:
        """A guest free changes nothing on the host (the host learns of free memory only
        from reports): it is not logged, so no run is built and no sync is asked for."""
        self.guest.free(pfns, order, cpu)

    def touch(self, starts: np.ndarray, npages: np.ndarray) -> None:
        self.guest.touch(starts, npages)
        self.link.record_touch(starts, npages)

    def pay_touches(self) -> int:
        return self.guest.pay_touches()

    @property
    def page_cache(self):
        return self.guest.page_cache


@dataclass
class _Slot:
    init: GuestInit
    guest: Guest
    link: OpLog
    driver: _GuestDriver
    workload: object
    client_blocks: ClientBlocks  # blocks allocated by GuestService clients
    stall_ns: int = 0
    lost_ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOST_KINDS, 0))
    report_ns_charged: int = 0  # the worker's report time already in lost_ns["report"]
    touch_ns_taken: int = 0  # guest.touch_cost_ns when the op log was last taken
    touch_ns_unsettled: int = 0  # the guest's price of the touches the host has not answered
    report_errors: int = 0
    stopped: bool = False  # the host stopped the guest (its OOM policy)
    extra_workloads: list = field(default_factory=list)  # started by GuestService clients
    # what the guest will do next, as of the last time it was asked (GuestShard._wake):
    # its earliest event and the earliest stop of a workload; kept until the guest runs,
    # hears from its host or a client reaches it
    wake_ns: int | None = None
    stop_ns: int | None = None
    wake_known: bool = False


class GuestShard:
    """Many guests advanced together; one op log per guest per epoch."""

    def __init__(
        self,
        shard_id: int,
        guests: list[GuestInit],
        seed: int,
        fast: bool = True,
    ):
        self.shard_id = shard_id
        self.seed = seed
        self.now_ns = 0
        self.lock = threading.RLock()  # GuestService calls arrive on server threads
        self.slots: dict[int, _Slot] = {}
        for init in sorted(guests, key=lambda g: g.guest_id):
            link = OpLog(init.guest_id, init.reject_reports, seed)
            guest = Guest(
                init.guest_id,
                init.config,
                seed,
                link,
                fast=fast,
                cost_port=HostCostPort(init.report_cost, init.touch_cost),
            )
            rng = np.random.default_rng(
                np.random.SeedSequence([seed, RNG_KIND_WORKLOAD, init.guest_id])
            )
            workload = make_workload(init.workload, init.config.nr_pages, rng)
            self.slots[init.guest_id] = _Slot(
                init,
                guest,
                link,
                _GuestDriver(guest, link),
                workload,
                ClientBlocks(init.config.nr_pages, init.config.max_order),
            )
        self._host_ids = sorted({s.init.host_id for s in self.slots.values()})

    # -- checkpoints ------------------------------------------------------------
    def __getstate__(self) -> dict:
        """Everything but the lock: a shard's whole state at a sample boundary (a
        coordinated checkpoint, :mod:`services.protocol.snapshot`)."""
        with self.lock:
            state = dict(self.__dict__)
        del state["lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()
        for s in self.slots.values():
            if isinstance(s.client_blocks, dict):  # a checkpoint from before ClientBlocks
                s.client_blocks = ClientBlocks.from_pfn_orders(
                    s.client_blocks, s.init.config.nr_pages, s.init.config.max_order
                )

    def restore(self, saved: GuestShard) -> None:
        """Become ``saved`` (a checkpoint of this shard) in place, so the GuestService
        and the epoch driver that hold this object go on with the restored state."""
        if saved.shard_id != self.shard_id or sorted(saved.slots) != sorted(self.slots):
            raise ValueError(
                f"shard_id={saved.shard_id}: a checkpoint of another shard (guests "
                f"{sorted(saved.slots)[:4]}…, this shard has {sorted(self.slots)[:4]}…)"
            )
        with self.lock:
            state = saved.__getstate__()
            self.__dict__.update(state)

    # -- placement --------------------------------------------------------------
    def host_ids(self) -> list[int]:
        return self._host_ids

    # -- time -------------------------------------------------------------------
    def next_event_ns(self, settle_before: int | None = None) -> int | None:
        """The earliest simulated time at which any guest of this shard does something.
        With ``settle_before``, the first event found before that time is returned at
        once: enough for a caller that only asks whether a guest acts that soon (the
        guests not asked are asked again when they next run or are checked)."""
        now = self.now_ns
        earliest = None
        for s in self.slots.values():
            w = self._next_event(s, now)
            if w is None:
                continue
            if settle_before is not None and w < settle_before:
                return w
            if earliest is None or w < earliest:
                earliest = w
        return earliest

    def _next_event(self, s: _Slot, t_ns: int) -> int | None:
        """A guest's next event as seen at ``t_ns``: a workload past its stop acts now."""
        wake, stop = self._wake(s, t_ns)
        return t_ns if stop is not None and stop <= t_ns else wake

    @staticmethod
    def _wake(s: _Slot, t_ns: int) -> tuple[int | None, int | None]:
        """(the guest's earliest event: a timer of the guest or a workload's next step,
        the earliest stop of a workload or of a runner inside one), None for none.

        Asked at ``t_ns`` and kept until the guest changes (it runs, hears from its host,
        or a client reaches it) or the kept event time comes, so an idle guest is asked
        once, not every epoch. Kept answers stay right: a guest's timers depend only on
        its state, and a workload's next event is a fixed later time until then (up to
        the workload's stop, after which it acts at once). Once that time comes the guest
        is asked again: a workload may then look further (a phase that starts idle).
        """
        if s.wake_known and (s.wake_ns is None or s.wake_ns > t_ns):
            return s.wake_ns, s.stop_ns  # not reached yet: asking again gives the same
        wake = stop = None
        if not s.stopped:
            wake = s.guest.next_event_ns()
            for wl in (s.workload, *s.extra_workloads):
                w = wl.next_event_ns(t_ns)
                if w is not None and (wake is None or w < wake):
                    wake = w
                for r in _unfinished_runners(wl):
                    r_stop = getattr(r, "stop_ns", None)  # an idle workload has none
                    if r_stop is not None and (stop is None or r_stop < stop):
                        stop = r_stop
        s.wake_ns, s.stop_ns, s.wake_known = wake, stop, True
        return wake, stop

    def next_sync_index(self, t0_ns: int, k: int, count: int, epoch_ns: int) -> int:
        """After running step ``k`` of a chunk of ``count`` steps of ``epoch_ns`` each
        (epochs, or spans of epochs synced together) starting at ``t0_ns``: the index
        of the next step in which any guest of this shard does something (``count``
        when that is past the chunk; the last step of a chunk always syncs, so
        samples see every host answer). Steps in between are skipped: the guests
        would do nothing in them, and hosts do not wait for this shard."""
        if k >= count - 1:
            return count
        return min(count - 1, self._next_active(t0_ns, k, count, epoch_ns))

    def _next_active(self, t0_ns: int, j: int, steps: int, step_ns: int) -> int:
        """After step ``j`` of ``steps`` from ``t0_ns``: the next step in which a guest acts
        (``steps``: none)."""
        if j + 1 >= steps:
            return steps
        # Under pressure (steps of one epoch) nearly every guest acts in the next step:
        # the first found settles it, without asking the others (they are asked at this
        # same time when the step runs, by _idle). Any event before the end of step
        # j + 1 gives j + 1 below.
        nxt = self.next_event_ns(settle_before=t0_ns + (j + 2) * step_ns)
        if nxt is None:
            return steps
        return min(steps, max(j + 1, (nxt - t0_ns) // step_ns))

    def run_epoch(self, t0_ns: int, t1_ns: int) -> dict[int, list[GuestOps]]:
        """Advance every guest through [t0, t1); return each host's guest ops, by host id."""
        return self.run_span(t0_ns, 1, t1_ns - t0_ns)

    def run_span(self, t0_ns: int, epochs: int, epoch_ns: int) -> dict[int, list[GuestOps]]:
        """Advance every guest through ``epochs`` epochs from ``t0_ns`` (what one sync
        with the hosts covers); return, by host id, the ops of the guests that did
        something (every host of the shard has an entry, empty or not).

        Epochs after the first in which no guest of the shard acts are skipped
        (as idle time). Each guest's log marks where every epoch's ops end, so a
        host applies them epoch by epoch, interleaved with other guests' exactly
        as if each epoch had been synced on its own.
        """
        out: dict[int, list[GuestOps]] = {h: [] for h in self.host_ids()}
        t_end = t0_ns + epochs * epoch_ns
        with self.lock:
            if t0_ns > self.now_ns:
                self.skip_to(t0_ns)
            j = 0
            while j < epochs:
                t = t0_ns + j * epoch_ns
                for s in self.slots.values():
                    if self._idle(s, t, t + epoch_ns):
                        s.stall_ns = max(0, s.stall_ns - epoch_ns)  # as idle time would
                    else:
                        self._run_guest(s, t, t + epoch_ns)
                    s.link.end_epoch()
                self.now_ns = t + epoch_ns
                nj = self._next_active(t0_ns, j, epochs, epoch_ns)
                if nj > j + 1:  # nothing to do in between: the guests' logs only mark the epochs
                    self.skip_to(t0_ns + nj * epoch_ns)
                    for s in self.slots.values():
                        for _ in range(nj - j - 1):
                            s.link.end_epoch()
                j = nj
            for s in self.slots.values():
                out[s.init.host_id].append(s.link.take())
                priced = s.guest.touch_cost_ns
                s.touch_ns_unsettled += priced - s.touch_ns_taken
                s.touch_ns_taken = priced
            assert self.now_ns == t_end
        return out

    def _idle(self, s: _Slot, t0_ns: int, t1_ns: int) -> bool:
        """True when the guest has nothing to do in [t0, t1): no reporting pass, no
        workload step, nothing a client queued. Running it would change nothing."""
        if s.stopped:
            return True
        wake, stop = self._wake(s, t0_ns)
        if (wake is not None and wake < t1_ns) or (stop is not None and stop <= t0_ns):
            return False
        return not s.link.dirty

    def _run_guest(self, s: _Slot, t0_ns: int, t1_ns: int) -> None:
        s.wake_known = False
        span = t1_ns - t0_ns
        stall = max(-span, min(s.stall_ns, span))  # < 0: time paid ahead and given back
        s.stall_ns -= stall
        work_ns = span - stall
        t = t0_ns
        while t < t1_ns:
            s.guest.advance_to(t)  # reporting passes due at or before t run first
            nxt = s.guest.next_event_ns()
            seg_end = t1_ns if nxt is None or nxt >= t1_ns else max(nxt, t + 1)
            seg_work = (seg_end - t) * work_ns // span
            s.workload.run(s.driver, t, seg_end, seg_work)
            for extra in s.extra_workloads:
                extra.run(s.driver, t, seg_end, seg_work)
            s.stall_ns += s.guest.pay_touches()  # touches no workload paid for (clients')
            t = seg_end
        self._charge_report_time(s)

    @staticmethod
    def _charge_report_time(s: _Slot) -> None:
        """Time the worker spent in report calls that completed is lost time of kind
        ``report``: like a host's answer, it slows the guest's later epochs."""
        ns = s.guest.worker.report_ns - s.report_ns_charged
        if ns:
            s.report_ns_charged += ns
            s.lost_ns["report"] += ns
            s.stall_ns += ns

    def skip_to(self, t_ns: int) -> None:
        """Jump over a stretch in which no guest has anything to do."""
        for s in self.slots.values():
            s.stall_ns = max(0, s.stall_ns - (t_ns - self.now_ns))
        self.now_ns = t_ns

    def apply_outcomes(self, outcomes: Sequence[GuestOutcome]) -> None:
        """Apply a host's answer: report errors, lost time (beyond the guest's own price of
        the touches, felt in later epochs), swap-outs."""
        with self.lock:
            self._apply_outcomes(outcomes)

    def _apply_outcomes(self, outcomes: Sequence[GuestOutcome]) -> None:
        for r in outcomes:
            s = self.slots[r.guest_id]
            s.wake_known = False
            s.report_errors += r.report_errors
            lost = 0
            for kind, ns in r.lost_ns.items():
                s.lost_ns[kind] = s.lost_ns.get(kind, 0) + int(ns)
                lost += int(ns)
            # the host's figure is the record: the guest already spent its own price of
            # these touches, so only the difference (host decisions the guest could not
            # see: swap-outs, lazy frees reclaimed, direct reclaim) is felt now, shared by
            # the vCPUs the guest's workload runs on (a stall takes from each of them)
            unpriced = lost - s.touch_ns_unsettled
            if unpriced:  # most answers: none (the workloads' walk is skipped then)
                s.stall_ns += unpriced // self._parallel(s)
            s.touch_ns_unsettled = 0
            if r.stopped and not s.stopped:  # the host's OOM policy stopped this guest
                self._stop(s)
            if len(r.swapped_starts):
                s.guest.backing.swapped_out(r.swapped_starts, r.swapped_npages)

    @staticmethod
    def _parallel(s: _Slot) -> int:
        """How many vCPUs the guest's running workloads use at once (at least 1)."""
        return max(
            [
                getattr(leaf, "parallel", 1)
                for wl in (s.workload, *s.extra_workloads)
                for leaf in leaf_runners(wl)
                if not getattr(leaf, "finished", False)
            ],
            default=1,
        )

    def _stop(self, s: _Slot) -> None:
        """The host stopped the guest (out of memory): it runs nothing more, its workloads
        end where they are, and it prices no more touches (the host skips its ops)."""
        s.stopped = True
        for wl in (s.workload, *s.extra_workloads):
            wl.finished = True
        s.stall_ns = 0

    # -- observation -----------------------------------------------------------
    def sample(self) -> dict[str, dict[str, int]]:
        """Per guest group sums of what the results and metrics need (integers only,
        so sums over shards do not depend on how guests are split into shards)."""
        groups: dict[str, dict[str, int]] = {}
        for s in self.slots.values():
            g = groups.get(s.init.group)
            if g is None:  # every state present, 0 when no guest is in it
                g = groups[s.init.group] = defaultdict(int)
                for state in (*REPORTING_STATES.values(), "off"):
                    g[f"reporting_{state}_guests"] = 0
            a = s.guest.allocator
            g["guests"] += 1
            g["memory_bytes"] += s.init.config.nr_bytes
            g["free_bytes"] += a.free_pages_total() << PAGE_SHIFT
            g["pcp_bytes"] += a.pcp_pages() << PAGE_SHIFT
            g["reported_bytes"] += a.reported_pages() << PAGE_SHIFT
            g["guest_view_backed_bytes"] += s.guest.backing.counts()["backed"] << PAGE_SHIFT
            for order in range(s.init.config.max_order + 1):
                blocks = sum(a.nr_free(z, order) for z in range(a.nr_zones))
                g[f"free_bytes_order_{order}"] += blocks << (order + PAGE_SHIFT)
            for wl in (s.workload, *s.extra_workloads):
                w = wl.stats
                g["ops_total"] += w.ops
                for kind, ops in ops_by_kind(wl).items():
                    g[f"ops_{kind}_total"] += ops
                g["pages_allocated_total"] += w.pages_allocated
                g["pages_freed_total"] += w.pages_freed
                g["pages_touched_total"] += w.pages_touched
                g["alloc_failures_total"] += w.alloc_failures
                g["held_bytes"] += wl.held.count * (1 << getattr(wl, "order", 0)) * PAGE_SIZE
                if hasattr(wl, "hits"):  # page_cache reads
                    g["page_cache_hits_total"] += wl.hits
                    g["page_cache_misses_total"] += wl.misses
                for leaf in leaf_runners(wl):  # will-it-scale, alone or a script's step
                    if hasattr(leaf, "benchmark_ops"):  # its counter and guest costs
                        g["benchmark_ops_total"] += leaf.benchmark_ops
                        g["benchmark_tasks"] += 0 if leaf.finished else len(leaf.tasks)
                        for kind, ns in leaf.lost_ns.items():
                            g[f"lost_{kind}_ns_total"] += ns
            g["held_bytes"] += s.client_blocks.held_pages() * PAGE_SIZE
            pc = s.guest.page_cache
            if pc.used:  # groups with page cache only (results of other runs unchanged)
                g["page_cache_bytes"] += pc.pages * PAGE_SIZE
                g["kswapd_reclaimed_bytes_total"] += pc.kswapd_reclaimed_pages * PAGE_SIZE
                g["direct_reclaimed_bytes_total"] += pc.direct_reclaimed_pages * PAGE_SIZE
                g["drop_caches_bytes_total"] += pc.dropped_pages * PAGE_SIZE
                g["kswapd_wakeups_total"] += pc.kswapd_wakeups
            for kind, ns in s.lost_ns.items():
                g[f"lost_{kind}_ns_total"] += ns
            wk = s.guest.worker
            state = REPORTING_STATES[wk.state] if s.init.config.reporting.enabled else "off"
            g[f"reporting_{state}_guests"] += 1
            g["report_calls_total"] += wk.reports
            g["reported_pages_total"] += wk.reported_pages
            g["report_passes_total"] += wk.passes
            # refused by the host at the sync, and failed at the call (fault injection)
            g["report_errors_total"] += s.report_errors + s.link.rejected
        return {k: dict(v) for k, v in groups.items()}

    def guest_state(self, guest_id: int) -> dict:
        with self.lock:
            st = self.slot(guest_id).guest.state()
            st["nr_pages"] = self.slot(guest_id).init.config.nr_pages
            return st

    # -- driving guests from outside (GuestService) ---------------------------------
    def slot(self, guest_id: int) -> _Slot:
        s = self.slots.get(guest_id)
        if s is None:
            raise KeyError(f"guest_id {guest_id} is not in shard {self.shard_id}")
        s.wake_known = False  # a client may change what the guest does next
        return s

    def client_alloc(self, guest_id: int, order: int, mt: int, count: int) -> np.ndarray:
        """Allocate ``count`` blocks for a client and touch them (first touch faults)."""
        s = self.slot(guest_id)
        pfns = s.driver.alloc(order, mt, count)
        if len(pfns):
            s.driver.touch(*pfns_to_runs(pfns, 1 << order))
            s.client_blocks.add(order, pfns)
        return pfns

    def check_client_free(
        self, guest_id: int, order: int, pfns: np.ndarray, count: int
    ) -> np.ndarray:
        """The blocks a client free would release (``pfns``, or the ``count`` of ``order``
        it allocated most recently, newest first), claimed: later frees of the batch see
        them gone. ValueError (nothing claimed) if any is not the client's. The batch
        ends with :meth:`end_client_batch`, applied or not."""
        blocks = self.slot(guest_id).client_blocks
        if len(pfns) == 0:
            out = blocks.claim_newest(order, count)
            if out is None:
                raise ValueError(
                    f"free.count={count}: the client holds only "
                    f"{blocks.count(order) - blocks.claimed(order)} blocks of order {order}"
                    + (" not freed earlier in this batch" if blocks.claiming else "")
                )
            return out
        held = blocks.held_orders(pfns)
        bad = np.flatnonzero(held != order)
        if bad.size:
            i = int(bad[0])
            if held[i] == -2:
                raise ValueError(
                    f"free: pfn={int(pfns[i])} is freed by an earlier op of this batch"
                )
            raise ValueError(
                f"free: pfn={int(pfns[i])} order={order} is not a block this client "
                "allocated at that order"
            )
        if len(np.unique(pfns)) != len(pfns):
            raise ValueError("free.pfns: duplicate pfns")
        blocks.claim_pfns(order, pfns)
        return pfns

    def client_free(self, guest_id: int, order: int, pfns: np.ndarray) -> None:
        s = self.slot(guest_id)
        s.driver.free(pfns, order)
        s.client_blocks.release(order, pfns)

    def end_client_batch(self, guest_id: int) -> None:
        """A client batch is over: blocks its frees claimed and did not free are held again."""
        s = self.slots.get(guest_id)
        if s is not None:  # an unknown guest was refused before anything was claimed
            s.client_blocks.end_batch()

    def check_touch(self, guest_id: int, starts: np.ndarray, npages: np.ndarray) -> None:
        nr = self.slot(guest_id).init.config.nr_pages
        if len(starts) and (int((starts + npages).max()) > nr or int(starts.min()) < 0):
            raise ValueError(f"touch.runs: a run ends beyond the guest's {nr} pages")

    def client_touch(self, guest_id: int, starts: np.ndarray, npages: np.ndarray) -> None:
        self.slot(guest_id).driver.touch(starts, npages)

    def start_workload(self, guest_id: int, config, duration_ns: int) -> tuple[int, int]:
        """Run ``config`` (a workload config) from now for ``duration_ns``, beside the spec's workload."""
        s = self.slot(guest_id)
        start, end = self.now_ns, self.now_ns + duration_ns
        if end > MAX_CLIENT_END_NS:
            raise ValueError(
                f"duration_ns={duration_ns}: the workload would end past simulated time 2**62 ns"
            )
        if len(s.extra_workloads) >= MAX_CLIENT_WORKLOADS:
            raise ValueError(
                f"workload: guest {guest_id} already runs {len(s.extra_workloads)} client "
                f"workloads, the most it takes"
            )
        if isinstance(config, WillItScaleConfig):  # tasks spread over this guest's vCPUs
            config = replace(config, vcpus=s.init.config.vcpus)
        rng = np.random.default_rng(
            np.random.SeedSequence(
                [self.seed, RNG_KIND_WORKLOAD, guest_id, 1 + len(s.extra_workloads)]
            )
        )
        s.extra_workloads.append(
            make_workload(config, s.init.config.nr_pages, rng, start_ns=start, stop_ns=end)
        )
        return start, end


def _unfinished_runners(runner) -> list:
    """A workload and every runner running inside it (a script's steps, recursively),
    those not finished: each acts at once when its stop comes."""
    if getattr(runner, "finished", False):
        return []
    out = [runner]
    for run in getattr(runner, "_running", ()):
        out += _unfinished_runners(run.runner)
    return out


def merge_group_samples(
    samples: Iterable[Mapping[str, Mapping[str, int]]],
) -> dict[str, dict[str, int]]:
    """Sum per-group integer samples over shards (exact: the order does not matter)."""
    out: dict[str, dict[str, int]] = {}
    for sample in samples:
        for group, sums in sample.items():
            g = out.setdefault(group, {})
            for k, v in sums.items():
                g[k] = g.get(k, 0) + v
    return out
