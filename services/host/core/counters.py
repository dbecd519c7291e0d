"""Plain-int counters for the metrics layer, and the pricing of one batch of touches.

Per guest: cumulative event counters (a dict kept by `Host`), plus views computed
from the running totals in `gstat` (residency, swap-outs, lazy reclaim, splits).
Per host: capacity, pool and swap, plus every guest counter summed.
"""

from __future__ import annotations

from services.units import LOST_KINDS

from . import costs
from .pagestate import (
    EV_FAULT_4K,
    EV_FAULT_HUGE,
    EV_LAZY_REUSE,
    EV_PRIOR_UNBACKED,
    EV_RECLAIM_DISK,
    EV_RECLAIM_LAZY,
    EV_RECLAIM_ZSWAP,
    EV_REFAULT_HUGE,
    EV_REFAULT_PAGES,
    EV_REFUSED,
    EV_SWAPIN_DISK,
    EV_SWAPIN_ZSWAP,
    G_LAZY_RECLAIMED,
    G_SWAPOUT_DISK,
    G_SWAPOUT_ZSWAP,
    G_THP_SPLITS,
    G_ZSWAP,
    PAGE_SIZE,
    RES_BACKED,
    RES_LAZY,
    RES_NAMES,
)
from .swap import swapin_cost_ns, swapout_cost_ns

GUEST_EVENT_COUNTERS = (
    "reports",
    "report_ranges",
    "reported_pages",
    "discard_ranges",
    "discard_ranges_ignored",
    "discarded_pages",
    "lazyfreed_pages",
    "swap_freed_pages",
    "touched_pages",
    "faults_4k",
    "faults_huge",
    "faults_swapin",
    "swapin_disk_pages",
    "swapin_zswap_pages",
    "refault_pages",
    "refault_huge_faults",
    "lazy_reuse_pages",
    "refused_pages",
    "oom_events",
    "zeroed_bytes",
    "direct_reclaim_pages",
    "lost_report_ns",
    *(f"lost_{k}_ns" for k in LOST_KINDS),
)

_NOT_SUMMED = ("nr_pages", "stopped", "oom_events")  # host has its own oom_events


def new_guest_counters() -> dict[str, int]:
    return dict.fromkeys(GUEST_EVENT_COUNTERS, 0)


_NOTHING_LOST = {"fault": 0, "zero": 0, "swapin": 0, "decompress": 0, "reclaim": 0}
_LOST_COUNTER = {kind: f"lost_{kind}_ns" for kind in LOST_KINDS}  # add_touch, once per call


def price_touch(cm: costs.CostModel, ev: list[int], gran_pages: int) -> dict[str, int]:
    """Simulated time a guest lost to one batch of touches, per kind in LOST_KINDS."""
    huge = ev[EV_FAULT_HUGE]
    if not (
        huge
        or ev[EV_FAULT_4K]
        or ev[EV_SWAPIN_DISK]
        or ev[EV_SWAPIN_ZSWAP]
        or ev[EV_RECLAIM_DISK]
        or ev[EV_RECLAIM_ZSWAP]
    ):  # touches of resident pages only (most batches): every cost is 0 at 0
        return dict(_NOTHING_LOST)
    return price_touch_in_full(cm, ev, gran_pages)


def price_touch_in_full(cm: costs.CostModel, ev: list[int], gran_pages: int) -> dict[str, int]:
    """``price_touch`` with every cost function asked (its shortcut's reference)."""
    huge = ev[EV_FAULT_HUGE]
    if gran_pages == costs.HUGE_1G_BYTES // PAGE_SIZE:
        zero = costs.zero_ns(cm, ev[EV_FAULT_4K], 0, huge)
    else:
        zero = costs.zero_ns(cm, ev[EV_FAULT_4K], huge)
    swapin, decompress = swapin_cost_ns(cm, ev[EV_SWAPIN_DISK], ev[EV_SWAPIN_ZSWAP])
    return {
        "fault": costs.host_fault_ns(cm, ev[EV_FAULT_4K], huge),
        "zero": zero,
        "swapin": swapin,
        "decompress": decompress,
        "reclaim": swapout_cost_ns(cm, ev[EV_RECLAIM_DISK], ev[EV_RECLAIM_ZSWAP]),
    }


def add_touch(
    c: dict[str, int], ev: list[int], lost: dict[str, int], zeroed: int, oom: int
) -> None:
    """Add one batch of touches to a guest's event counters."""
    c["touched_pages"] += sum(ev[EV_PRIOR_UNBACKED : EV_PRIOR_UNBACKED + 4])
    c["faults_4k"] += ev[EV_FAULT_4K]
    c["faults_huge"] += ev[EV_FAULT_HUGE]
    c["faults_swapin"] += ev[EV_SWAPIN_DISK] + ev[EV_SWAPIN_ZSWAP]
    c["swapin_disk_pages"] += ev[EV_SWAPIN_DISK]
    c["swapin_zswap_pages"] += ev[EV_SWAPIN_ZSWAP]
    c["refault_pages"] += ev[EV_REFAULT_PAGES]
    c["refault_huge_faults"] += ev[EV_REFAULT_HUGE]
    c["lazy_reuse_pages"] += ev[EV_LAZY_REUSE]
    c["refused_pages"] += ev[EV_REFUSED]
    c["oom_events"] += oom
    c["zeroed_bytes"] += zeroed
    c["direct_reclaim_pages"] += ev[EV_RECLAIM_DISK] + ev[EV_RECLAIM_ZSWAP] + ev[EV_RECLAIM_LAZY]
    for kind, ns in lost.items():
        c[_LOST_COUNTER[kind]] += ns


def guest_view(gstat_row, counters: dict[str, int], nr_pages: int, stopped: bool) -> dict[str, int]:
    """One guest's counters: residency and reclaim totals, then its event counters."""
    row = gstat_row.tolist()
    out = {"nr_pages": nr_pages, "stopped": int(stopped)}
    for k, name in enumerate(RES_NAMES):
        out[f"{name}_bytes"] = row[k] * PAGE_SIZE
    out["resident_bytes"] = (row[RES_BACKED] + row[RES_LAZY]) * PAGE_SIZE
    out["zswap_pages"] = row[G_ZSWAP]
    out["swapout_disk_pages"] = row[G_SWAPOUT_DISK]
    out["swapout_zswap_pages"] = row[G_SWAPOUT_ZSWAP]
    out["swapout_bytes"] = (row[G_SWAPOUT_DISK] + row[G_SWAPOUT_ZSWAP]) * PAGE_SIZE
    out["lazy_reclaimed_bytes"] = row[G_LAZY_RECLAIMED] * PAGE_SIZE
    out["thp_splits"] = row[G_THP_SPLITS]
    out.update(counters)
    out["swapin_bytes"] = out["faults_swapin"] * PAGE_SIZE
    return out


def sum_guest_views(host: dict[str, int], views: list[dict[str, int]]) -> dict[str, int]:
    """Add the sum over guests of every guest counter to the host's own counters."""
    for view in views:
        for key, value in view.items():
            if key not in _NOT_SUMMED:
                host[key] = host.get(key, 0) + value
    return host
