"""Every exported metric with its meaning: the ``# HELP`` text and docs/metrics.md.

The names come from :mod:`services.sim.result_rows` (one rule from a row column);
this module only says what each one means. ``python -m services.sim.metric_catalogue``
rewrites the generated table in docs/metrics.md; a test fails when a metric that a
live run exports is missing here, or the document is stale.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .result_rows import _LABELLED, METRIC_PREFIX

P = METRIC_PREFIX
BASE_LABELS = ("experiment", "run_id", "variant")

# family -> meaning. Simulated quantities unless the text says wall clock.
HELP: dict[str, str] = {
    # the coordinator: the simulated clock, the cluster, the process
    f"{P}_sim_time_seconds": "The simulation's clock: simulated seconds run so far (design rates on it, docs/metrics.md)",
    f"{P}_sim_epochs_total": "Simulated epochs completed (skipped idle stretches included)",
    f"{P}_sim_seconds_per_wall_second": "Speed since the simulation started: simulated seconds per wall-clock second (paced runs included)",
    f"{P}_sim_epoch_wall_seconds": "Wall-clock seconds per epoch run (each call's wall time spread over its epochs)",
    f"{P}_cluster_physical_bytes": "Memory of every host (the spec's host memory, before reserve)",
    f"{P}_cluster_committed_bytes": "Memory configured for every guest (what the guests were promised)",
    f"{P}_cluster_overcommit_ratio": "Committed guest memory / host memory (the spec's overcommit)",
    f"{P}_cluster_backed_bytes": "Guest memory backed by host frames, summed over hosts",
    f"{P}_cluster_demand_bytes": "Backed plus swapped guest memory, summed over hosts (what the guests wanted resident)",
    f"{P}_cluster_memory_saved_bytes": "Memory saved against the paired baseline: its demand minus this run's backed bytes (variant run, label baseline)",
    f"{P}_build_info": "Always 1; the labels name the simulator's and its libraries' versions",
    # hosts
    f"{P}_host_memory_bytes": "Host memory (before reserve)",
    f"{P}_host_reserve_bytes": "Host memory kept back for the host itself",
    f"{P}_host_capacity_bytes": "Memory the host can give guests (memory minus reserve)",
    f"{P}_host_limit_bytes": "Pool limit: reclaim starts above it",
    f"{P}_host_pool_used_bytes": "Host frames in use (guest memory backed, lazily freed or in the compressed pool)",
    f"{P}_host_backed_bytes": "Guest memory backed by host frames",
    f"{P}_host_lazy_bytes": "Guest memory freed lazily (MADV_FREE) and not yet reclaimed",
    f"{P}_host_unbacked_bytes": "Guest memory with no host frame (never touched, or discarded)",
    f"{P}_host_swapped_bytes": "Guest memory swapped out (to disk or to the compressed tier)",
    f"{P}_host_resident_bytes": "Backed plus lazily freed guest memory",
    f"{P}_host_swap_capacity_bytes": "Swap device size",
    f"{P}_host_swap_used_bytes": "Swap in use",
    f"{P}_host_zswap_pool_bytes": "Compressed-tier pool size (compressed bytes)",
    f"{P}_host_zswap_bytes": "Guest memory held in the compressed tier (its uncompressed size)",
    f"{P}_host_guests": "Guests placed on the host",
    f"{P}_host_guests_stopped": "Guests the host's OOM policy stopped",
    f"{P}_host_guest_bytes": "Memory configured for the host's guests",
    f"{P}_host_reports_total": "Page-report batches received",
    f"{P}_host_report_ranges_total": "Ranges in the page reports received",
    f"{P}_host_reported_bytes_total": "Memory reported free by guests",
    f"{P}_host_discard_ranges_total": "Ranges discarded (MADV_DONTNEED or MADV_FREE)",
    f"{P}_host_discard_ranges_ignored_total": "Reported ranges not discarded (VFIO guests, or not backed)",
    f"{P}_host_discarded_bytes_total": "Backed memory discarded by reports",
    f"{P}_host_lazyfreed_bytes_total": "Memory freed lazily (MADV_FREE) by reports",
    f"{P}_host_lazy_reuse_bytes_total": "Lazily freed memory touched again before reclaim (backed again at no cost)",
    f"{P}_host_lazy_reclaimed_bytes_total": "Lazily freed memory reclaimed by the host",
    f"{P}_host_touched_bytes_total": "Guest memory touched, whatever its state",
    f"{P}_host_faults_total": "Host faults by kind: 4k (a 4 KiB page), huge (a THP or hugetlbfs granule), swapin (a swapped page); first-touch faults are the 4k and huge faults less the refaults",
    f"{P}_host_refaulted_reported_bytes_total": "Memory a report discarded while backed, faulted again (refaults of reported memory)",
    f"{P}_host_refault_huge_faults_total": "Huge faults among those refaults",
    f"{P}_host_refused_bytes_total": "Touches refused for want of memory (OOM policy refuse)",
    f"{P}_host_oom_events_total": "Times the host ran out of memory",
    f"{P}_host_zeroed_bytes_total": "Memory zero-filled on fault",
    f"{P}_host_swapin_bytes_total": "Memory swapped in (disk and compressed tier)",
    f"{P}_host_swapin_disk_bytes_total": "Memory swapped in from the disk",
    f"{P}_host_swapin_zswap_bytes_total": "Memory decompressed from the compressed tier",
    f"{P}_host_swapout_bytes_total": "Memory swapped out (disk and compressed tier)",
    f"{P}_host_swapout_disk_bytes_total": "Memory swapped out to the disk",
    f"{P}_host_swapout_zswap_bytes_total": "Memory compressed into the compressed tier",
    f"{P}_host_swap_freed_bytes_total": "Swap slots freed because a report discarded a swapped page",
    f"{P}_host_direct_reclaim_bytes_total": "Memory reclaimed in a guest's fault (direct reclaim)",
    f"{P}_host_background_reclaim_bytes_total": "Memory reclaimed in the background (kswapd)",
    f"{P}_host_background_reclaim_seconds_total": "Time the host's background reclaim ran",
    f"{P}_host_reclaim_scanned_bytes_total": "Memory scanned by reclaim",
    f"{P}_host_thp_splits_total": "Huge granules split (a discard or reclaim of part of one)",
    f"{P}_host_lost_seconds_total": "Time the host's guests lost, by cost (fault, zero, swapin, decompress, reclaim, report)",
    # one guest (per host actor, its top-k by backed memory; off by default)
    f"{P}_guest_backed_bytes": "One guest's memory backed by host frames (top-k guests only)",
    f"{P}_guest_lazy_bytes": "One guest's lazily freed memory (top-k guests only)",
    f"{P}_guest_swapped_bytes": "One guest's swapped memory (top-k guests only)",
    f"{P}_guest_reported_bytes_total": "Memory one guest reported (top-k guests only)",
    f"{P}_guest_refaulted_reported_bytes_total": "One guest's refaults of reported memory (top-k guests only)",
    # guest groups (sums over the group's guests; live, over each shard's part: sum by guest_group)
    f"{P}_guest_group_guests": "Guests in the group",
    f"{P}_guest_group_memory_bytes": "Memory configured for the group's guests",
    f"{P}_guest_group_free_bytes": "Free memory in the guests' buddy allocators (isolated blocks excluded)",
    f"{P}_guest_group_free_bytes_by_order": "Free memory by buddy order (label order, 0..max order)",
    f"{P}_guest_group_pcp_bytes": "Memory held in the guests' per-CPU page lists",
    f"{P}_guest_group_reported_free_bytes": "Free memory carrying the Reported flag now (column reported_bytes)",
    f"{P}_guest_group_guest_view_backed_bytes": "Memory the guests believe backed (their view of the host)",
    f"{P}_guest_group_held_bytes": "Memory the workloads hold",
    f"{P}_guest_group_page_cache_bytes": "Page cache in the guests",
    f"{P}_guest_group_reporting_guests": "Guests by reporting-worker state (off, idle, requested, active; §4.2)",
    f"{P}_guest_group_report_calls_total": "Report calls completed",
    f"{P}_guest_group_reported_bytes_total": "Memory reported (completed calls)",
    f"{P}_guest_group_report_passes_total": "Reporting passes run",
    f"{P}_guest_group_report_errors_total": "Report calls the host answered with an error",
    f"{P}_guest_group_ops_total": "Page operations completed (allocated + freed + touched pages)",
    f"{P}_guest_group_workload_ops_total": "Page operations by workload kind (label workload)",
    f"{P}_guest_group_pages_allocated_total": "Pages allocated by workloads (a count of pages)",
    f"{P}_guest_group_pages_freed_total": "Pages freed by workloads (a count of pages)",
    f"{P}_guest_group_pages_touched_total": "Pages touched by workloads (a count of pages)",
    f"{P}_guest_group_alloc_failures_total": "Allocations that failed",
    f"{P}_guest_group_lost_seconds_total": "Time the guests lost, by cost (host costs as for hosts; guest_fault, guest_zero, guest_copy, guest_unmap for will-it-scale)",
    f"{P}_guest_group_benchmark_ops_total": "will-it-scale's counter (pages faulted, summed over tasks)",
    f"{P}_guest_group_benchmark_tasks": "will-it-scale tasks running",
    f"{P}_guest_group_page_cache_hits_total": "Page-cache reads that hit",
    f"{P}_guest_group_page_cache_misses_total": "Page-cache reads that missed (read in)",
    f"{P}_guest_group_kswapd_reclaimed_bytes_total": "Page cache reclaimed by the guests' kswapd",
    f"{P}_guest_group_direct_reclaimed_bytes_total": "Page cache reclaimed in the guests' allocations (direct reclaim)",
    f"{P}_guest_group_drop_caches_bytes_total": "Page cache dropped (drop_caches)",
    f"{P}_guest_group_kswapd_wakeups_total": "Times the guests' kswapd woke",
}

# labels beyond experiment, run_id, variant and the entity label, by family
EXTRA_LABELS = {f"{P}_{kind or '*'}_{family}": label for kind, _, family, label in _LABELLED}
LIVE_ONLY = {
    f"{P}_sim_seconds_per_wall_second",
    f"{P}_sim_epoch_wall_seconds",
    # per guest: the time series holds hosts and group sums only
    *(f for f in HELP if f.startswith(f"{P}_guest_") and not f.startswith(f"{P}_guest_group_")),
}


def help_of(family: str) -> str:
    return HELP.get(family, "see docs/metrics.md")


def labels_of(family: str) -> list[str]:
    labels = list(BASE_LABELS)
    kind = family.removeprefix(f"{P}_").split("_")[0]
    if family.startswith(f"{P}_guest_group_"):
        labels += ["guest_group", "shard (live, Ray)"]
    elif kind in ("host", "guest"):
        labels.append(kind)
        if kind == "guest":
            labels.append("host")
    elif family == f"{P}_build_info":
        labels = ["version", "python", "numpy", "numba", "ray", "grpcio"]
    for pattern, label in EXTRA_LABELS.items():
        if re.fullmatch(pattern.replace("*", r"[a-z_]+"), family):
            labels.append(label)
    return labels


def metric_type(family: str) -> str:
    if family == f"{P}_sim_epoch_wall_seconds":
        return "histogram"
    return "counter" if family.endswith("_total") else "gauge"


def unit_of(family: str) -> str:
    for suffix, unit in (
        ("_bytes", "bytes"),
        ("_seconds", "seconds"),
        ("_ratio", "ratio"),
        ("_per_wall_second", "ratio"),
        ("_total", "count"),
    ):
        if family.removesuffix("_total").endswith(suffix) or family.endswith(suffix):
            return unit
    return "count"


def table() -> str:
    rows = ["| metric | type | unit | labels | meaning |", "|---|---|---|---|---|"]
    for family in sorted(HELP):
        live = " (live only)" if family in LIVE_ONLY else ""
        rows.append(
            f"| `{family}` | {metric_type(family)} | {unit_of(family)} | "
            f"{', '.join(labels_of(family))} | {HELP[family]}{live} |"
        )
    return "\n".join(rows)


BEGIN, END = "<!-- generated:metrics -->", "<!-- /generated:metrics -->"


def render(doc: str) -> str:
    """``doc`` with its generated table replaced by the current one."""
    head, sep, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"docs/metrics.md: no {BEGIN} ... {END} block")
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="rewrite docs/metrics.md's metric table")
    ap.add_argument("--doc", default="docs/metrics.md")
    args = ap.parse_args(argv)
    path = Path(args.doc)
    path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
