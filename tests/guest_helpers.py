"""Shared helpers for guest core tests: allocator kinds, recording reporter, snapshots.

Everything here uses only the allocator contract (docs/core-api.md), so the same
checks run against the reference and the numba fast path.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import pytest

from services.guest.core.config import GuestConfig, PcpConfig, ReportingConfig
from services.guest.core.constants import (
    MIGRATE_ISOLATE,
    MIGRATE_TYPES,
    PROFILE_5_7,
)
from services.guest.core.reference import ReferenceAllocator, is_mergeable
from services.guest.core.reporting import ReportOutcome

SEC_NS = 1_000_000_000


def fast_allocator_class():
    """BuddyAllocator if services.guest.core.buddy imports, else None."""
    try:
        module = importlib.import_module("services.guest.core.buddy")
    except ImportError:
        return None
    return getattr(module, "BuddyAllocator", None)


@dataclass(frozen=True)
class AllocatorKind:
    """One allocator implementation: its name, Guest's `fast` flag and its class."""

    name: str
    fast: bool
    cls: type

    def __call__(self, config: GuestConfig, rng=None):
        return self.cls(config, rng)


def allocator_kind_params() -> list:
    """pytest params: the reference, and the fast path (skipped until buddy.py exists)."""
    params = [pytest.param("reference", id="reference")]
    marks = (
        ()
        if fast_allocator_class() is not None
        else pytest.mark.skip("buddy.py not importable yet")
    )
    params.append(pytest.param("fast", id="fast", marks=marks))
    return params


def allocator_kind(name: str) -> AllocatorKind:
    if name == "reference":
        return AllocatorKind("reference", False, ReferenceAllocator)
    cls = fast_allocator_class()
    if cls is None:
        pytest.skip("services.guest.core.buddy is not importable yet")
    return AllocatorKind("fast", True, cls)


@pytest.fixture(params=allocator_kind_params())
def allocator_factory(request) -> AllocatorKind:
    """Yields the reference allocator kind, then the fast one when buddy.py imports."""
    return allocator_kind(request.param)


def small_config(
    nr_pages: int = 8192,
    profile: str = "modern",
    capacity: int = 4,
    order: int | None = None,
    pcp: PcpConfig | None = None,
    **kw,
) -> GuestConfig:
    """A small guest whose zone passes the reporting gate (capacity << R below free memory)."""
    return GuestConfig(
        nr_pages=nr_pages,
        profile=profile,
        reporting=ReportingConfig(capacity=capacity, order=order),
        pcp=pcp if pcp is not None else PcpConfig(),
        **kw,
    )


@dataclass
class RecordingReporter:
    """In-process PageReporter and pricer: records every call (at its completion time);
    errors follow a script, then ok; every call takes ``latency_ns``.

    Pass it as the worker's pricer too (``PageReportingWorker(a, cfg, rec, rec)``), or
    to a Guest as its cost port (``cost_port=rec``), for the latency to apply."""

    errors: list[int] = field(default_factory=list)
    latency_ns: int = 0
    calls: list[tuple[int, list[int], list[int], int]] = field(default_factory=list)
    on_report: object = None  # optional callback(now_ns, pfns, orders) run at completion

    def price_report(self, pfns: np.ndarray, orders: np.ndarray) -> int:
        return self.latency_ns

    def price_touch(self, counts: np.ndarray) -> int:
        return 0

    def discard_view(self, backing, pfns: np.ndarray, orders: np.ndarray) -> None:
        backing.discard(pfns, orders)

    def report(self, now_ns: int, pfns: np.ndarray, orders: np.ndarray) -> ReportOutcome:
        err = self.errors.pop(0) if self.errors else 0
        self.calls.append((now_ns, [int(p) for p in pfns], [int(o) for o in orders], err))
        if self.on_report is not None:
            self.on_report(now_ns, pfns, orders)
        return ReportOutcome(error=err)

    def reported_blocks(self) -> list[tuple[int, int]]:
        """(pfn, order) of every entry of every successful call."""
        return [
            (p, o)
            for _, ps, os_, err in self.calls
            if not err
            for p, o in zip(ps, os_, strict=True)
        ]


def snapshot(a) -> dict:
    """Every observable of an allocator through the contract (small guests only)."""
    cfg = a.config
    snap = {"notify_count": a.notify_count, "pcp_pages": a.pcp_pages()}
    snap["free_pages_total"] = a.free_pages_total()
    snap["reported_pages"] = a.reported_pages()
    zones = []
    for z in range(a.nr_zones):
        zones.append(
            {
                "range": tuple(a.zone_range(z)),
                "nr_free": [a.nr_free(z, o) for o in range(cfg.max_order + 1)],
                "nr_free_pages": a.nr_free_pages(z),
                "free_lists": {
                    (o, mt): [(int(p), bool(r)) for p, r in a.free_list(z, o, mt)]
                    for o in range(cfg.max_order + 1)
                    for mt in range(MIGRATE_TYPES)
                },
                "pcp": [
                    (a.pcp_state(z, cpu), [[int(p) for p in lst] for lst in a.pcp_lists(z, cpu)])
                    for cpu in range(cfg.vcpus)
                ],
                "watermarks": tuple(a.watermarks(z)),
            }
        )
    snap["zones"] = zones
    snap["pageblock_mt"] = [
        a.pageblock_mt(p) for p in range(0, cfg.nr_pages, 1 << cfg.pageblock_order)
    ]
    snap["allocated"] = {p: o for p in range(cfg.nr_pages) if (o := a.allocated_order(p)) >= 0}
    return snap


def merge_forbidden(cfg: GuestConfig, mt: int, bmt: int, order: int) -> bool:
    """§2.2: the profile rule that may refuse a merge at order >= pageblock_order."""
    if order < cfg.pageblock_order:
        return False
    if cfg.profile == PROFILE_5_7:
        return (mt == MIGRATE_ISOLATE) != (bmt == MIGRATE_ISOLATE)
    return bmt != mt and not (is_mergeable(mt) and is_mergeable(bmt))


def check_invariants(a, isolated_pages: int = 0) -> None:
    """Conservation, alignment, no overlap, merged buddies, counters (contract level)."""
    cfg = a.config
    owner = np.zeros(cfg.nr_pages, dtype=np.int8)  # 0 unseen, 1 free, 2 pcp, 3 allocated
    free_heads: dict[int, tuple[int, int]] = {}
    reported_pages = 0
    for z in range(a.nr_zones):
        start, end = a.zone_range(z)
        pages_on_lists = 0
        for o in range(cfg.max_order + 1):
            blocks = 0
            for mt in range(MIGRATE_TYPES):
                for pfn, reported in a.free_list(z, o, mt):
                    assert pfn % (1 << o) == 0, f"free block {pfn} misaligned for order {o}"
                    assert start <= pfn and pfn + (1 << o) <= end, (
                        f"free block {pfn} outside zone {z}"
                    )
                    assert not owner[pfn : pfn + (1 << o)].any(), f"free block {pfn}/{o} overlaps"
                    owner[pfn : pfn + (1 << o)] = 1
                    free_heads[pfn] = (o, mt)
                    blocks += 1
                    pages_on_lists += (1 << o) if mt != MIGRATE_ISOLATE else 0
                    reported_pages += (1 << o) if reported else 0
            assert a.nr_free(z, o) == blocks, f"nr_free({z},{o}) != blocks on its lists"
        assert a.nr_free_pages(z) == pages_on_lists, f"NR_FREE_PAGES of zone {z} wrong"
        for cpu in range(cfg.vcpus):
            pcp_pages = 0
            for (o, _), lst in zip(cfg.pcp_list_keys, a.pcp_lists(z, cpu), strict=True):
                for pfn in lst:
                    assert pfn % (1 << o) == 0 and not owner[pfn : pfn + (1 << o)].any()
                    assert start <= pfn < end, f"pcp block {pfn} outside zone {z}"
                    owner[pfn : pfn + (1 << o)] = 2
                    pcp_pages += 1 << o
            assert a.pcp_state(z, cpu)["count"] == pcp_pages, f"pcp count of {z}/{cpu} wrong"
    allocated_pages = 0
    for pfn in range(cfg.nr_pages):
        o = a.allocated_order(pfn)
        if o >= 0:
            assert not owner[pfn : pfn + (1 << o)].any(), f"allocated {pfn}/{o} overlaps"
            owner[pfn : pfn + (1 << o)] = 3
            allocated_pages += 1 << o
    total = a.free_pages_total() + a.pcp_pages() + isolated_pages + allocated_pages
    assert total == cfg.nr_pages, f"pages not conserved: {total} != {cfg.nr_pages}"
    assert int((owner == 2).sum()) == a.pcp_pages(), "pcp count != pages on pcp lists"
    assert a.reported_pages() == reported_pages, "reported_pages != Reported heads on lists"
    for pfn, (o, mt) in free_heads.items():
        if o == cfg.max_order:
            continue
        buddy = pfn ^ (1 << o)
        if buddy in free_heads and free_heads[buddy][0] == o:
            bmt = a.pageblock_mt(buddy)
            assert merge_forbidden(cfg, mt, bmt, o), (
                f"free buddies {pfn},{buddy} at order {o} unmerged"
            )


def op_view(ops) -> list:
    """One host's guest logs, as comparable lists: reports, touched and freed runs."""
    return [
        (
            op.guest_id,
            [(r.op_seq, r.pfns.tolist(), r.orders.tolist()) for r in op.reports],
            [x.tolist() for x in (op.touched.starts, op.touched.npages, op.touched.op_seqs)],
            [x.tolist() for x in (op.freed.starts, op.freed.npages, op.freed.op_seqs)],
        )
        for op in ops
    ]


def run_in_lockstep(fast, ref, t_end: int, epoch: int, full_every_ns: int = 0) -> dict:
    """Run two guest shards, one on the fast allocator and one on the reference, through
    the same epochs from their clock to t_end. After every epoch their ops, and every
    guest's pcp lists and counters, must agree: a counter gone wrong can heal within a
    few epochs, before it shows in the ops. Every full_every_ns, the whole allocator
    state too. Returns how much was compared."""
    t = fast.now_ns
    seen = {"epochs": 0, "reports": 0, "snapshots": 0}
    while t < t_end:
        got = [s.run_epoch(t, t + epoch) for s in (fast, ref)]
        assert sorted(got[0]) == sorted(got[1]), f"epoch at {t} ns: hosts differ"
        for host, ops in got[0].items():
            assert op_view(ops) == op_view(got[1][host]), f"epoch at {t} ns: ops differ"
            seen["reports"] += sum(len(op.reports) for op in ops)
        t += epoch
        seen["epochs"] += 1
        for gid, slot in fast.slots.items():
            a, b = slot.guest.allocator, ref.slots[gid].guest.allocator
            for z in range(a.nr_zones):
                for cpu in range(a.config.vcpus):
                    where = f"at {t} ns, guest {gid} zone {z} vCPU {cpu}"
                    assert a.pcp_state(z, cpu) == b.pcp_state(z, cpu), f"{where}: pcp counters"
                    assert a.pcp_lists(z, cpu) == b.pcp_lists(z, cpu), f"{where}: pcp lists"
            if full_every_ns and t % full_every_ns == 0:
                assert snapshot(a) == snapshot(b), f"at {t} ns, guest {gid}: allocator state"
                seen["snapshots"] += 1
    return seen
