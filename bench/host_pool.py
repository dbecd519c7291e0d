"""Benchmark of the host core hot paths: report batches, touch runs, reclaim.

Prints one JSON object with `--json`. Kernels are warmed before timing; each figure
is the best of several rounds (the machine is shared); wall time is read here only
(time.perf_counter_ns), never in the model.

* report_ns_per_2m_range: the report kernel called once per batch of 32 order-9
  ranges (THP backing, every range drops a whole backed 2 MiB granule), numba
  dispatch included; `_api` adds Host.apply_report's validation and pricing;
  `_one_call` is the kernel's own work (all ranges in one call, no dispatch).
* touch_ns_per_page_unbacked / _backed: Host.apply_touch over batches of 256 runs of
  64 pages, 4 KiB backing (THP off: one fault and zero-fill per page);
  `_thp` with host THP (one fault per 2 MiB).
* reclaim_ns_per_page: the reclaim kernel swapping out 16 Ki pages per call from a
  full 1 GiB host (second-chance sweeps included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault(
    "NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".numba_cache")
)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np

from services.host.core.config import HostConfig, SwapConfig
from services.host.core.discard import report_kernel
from services.host.core.host import Host
from services.host.core.pagestate import NER, NEV
from services.host.core.reclaim import reclaim_frames
from services.units import PAGE_SIZE

GIB = 1 << 30
PAGE = PAGE_SIZE
GRAN = 512
BATCH = 32  # PAGE_REPORTING_CAPACITY

TARGET_REPORT_NS = 50
TARGET_TOUCH_NS = 20
TARGET_BYTES_PER_PAGE = 3


def _host(memory_gib: int, thp: bool, swap_gib: int = 0) -> Host:
    cfg = HostConfig(
        memory_bytes=memory_gib * GIB, thp=thp, swap=SwapConfig(capacity_bytes=swap_gib * GIB)
    )
    return Host(0, cfg)


def bench_report_one_call(guest_pages: int, rounds: int) -> float:
    """Kernel work per range without dispatch: every range of the guest in one call."""
    host = _host(8, thp=True)
    host.add_guest(1, guest_pages)
    pfns = np.arange(0, guest_pages, GRAN, dtype=np.int64)
    orders = np.full(pfns.size, 9, np.int64)
    er = np.zeros(NER, np.int64)
    best = None
    for _ in range(rounds + 1):
        host.apply_touch(1, np.array([0]), np.array([guest_pages]))
        t0 = time.perf_counter_ns()
        report_kernel(
            host._state, host._gran, host._gused, host._gstat, host._hs, host._p,
            host._offsets, 0, pfns, orders, 0, er,
        )  # fmt: skip
        ns = (time.perf_counter_ns() - t0) / pfns.size
        best = ns if best is None else min(best, ns)
    return best


def bench_report(guest_pages: int, rounds: int) -> tuple[float, float]:
    host = _host(8, thp=True)
    host.add_guest(1, guest_pages)
    pfns = np.arange(0, guest_pages, GRAN, dtype=np.int64)
    orders = np.full(BATCH, 9, np.int64)
    batches = [pfns[k : k + BATCH] for k in range(0, pfns.size, BATCH)]
    all_pages = (np.array([0]), np.array([guest_pages]))
    er = np.zeros(NER, np.int64)
    kernel_ns, api_ns = [], []
    for r in range(rounds + 1):
        host.apply_touch(1, *all_pages)
        t0 = time.perf_counter_ns()
        for b in batches:
            report_kernel(
                host._state, host._gran, host._gused, host._gstat, host._hs, host._p,
                host._offsets, 0, b, orders, 0, er,
            )  # fmt: skip
        t1 = time.perf_counter_ns()
        host.apply_touch(1, *all_pages)
        t2 = time.perf_counter_ns()
        for b in batches:
            host.apply_report(1, b, orders)
        t3 = time.perf_counter_ns()
        if r:  # round 0 warms up
            kernel_ns.append(t1 - t0)
            api_ns.append(t3 - t2)
    host.check_invariants()
    return min(kernel_ns) / pfns.size, min(api_ns) / pfns.size


def bench_touch(thp: bool, guest_pages: int, rounds: int) -> tuple[float, float]:
    host = _host(8, thp=thp)
    host.add_guest(1, guest_pages, "dontneed")
    run_pages, runs_per_batch = 64, 256
    starts = np.arange(0, guest_pages, run_pages, dtype=np.int64)
    npages = np.full(runs_per_batch, run_pages, np.int64)
    batches = [starts[k : k + runs_per_batch] for k in range(0, starts.size, runs_per_batch)]
    release = np.arange(0, guest_pages, 1024, dtype=np.int64)
    unbacked_ns, backed_ns = [], []
    for r in range(rounds + 1):
        host.apply_report(1, release, np.full(release.size, 10))
        t0 = time.perf_counter_ns()
        for b in batches:
            host.apply_touch(1, b, npages)
        t1 = time.perf_counter_ns()
        for b in batches:
            host.apply_touch(1, b, npages)
        t2 = time.perf_counter_ns()
        if r:
            unbacked_ns.append(t1 - t0)
            backed_ns.append(t2 - t1)
    host.check_invariants()
    return min(unbacked_ns) / guest_pages, min(backed_ns) / guest_pages


def bench_reclaim(rounds: int) -> float:
    host = _host(1, thp=False, swap_gib=4)
    total = GIB // PAGE
    host.add_guest(1, total)
    host.add_guest(2, total)
    host.apply_touch(1, np.array([0]), np.array([total]))
    ev = np.zeros(NEV, np.int64)
    chunk = 16384
    elapsed = []
    for r in range(rounds + 1):
        host._ensure_log_room_pages(chunk)
        t0 = time.perf_counter_ns()
        reclaim_frames(
            host._state, host._gran, host._gused, host._gstat, host._hs, host._p,
            host._offsets, host._log, ev, chunk * PAGE,
        )  # fmt: skip
        if r:
            elapsed.append(time.perf_counter_ns() - t0)
        # Hand the freed frames to guest 2 so the next round must reclaim again.
        host.apply_touch(2, np.array([r * chunk]), np.array([chunk]))
        host.reclaim()  # drain the swap-out log
    host.check_invariants()
    return min(elapsed) / chunk


def bytes_per_page(guest_pages: int) -> float:
    host = _host(8, thp=True)
    host.add_guest(1, guest_pages)
    per_host = host._state.nbytes + host._gran.nbytes + host._gused.nbytes + host._gstat.nbytes
    return per_host / guest_pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    guest_pages = (1 if args.quick else 4) * GIB // PAGE
    rounds = 2 if args.quick else 5
    report_ns, report_api_ns = bench_report(guest_pages, rounds)
    report_work_ns = bench_report_one_call(guest_pages, rounds)
    touch_unbacked, touch_backed = bench_touch(False, guest_pages, rounds)
    touch_unbacked_thp, touch_backed_thp = bench_touch(True, guest_pages, rounds)
    reclaim_ns = bench_reclaim(3 if args.quick else 8)
    bpp = bytes_per_page(guest_pages)
    out = {
        "report_ns_per_2m_range": round(report_ns, 1),
        "report_ns_per_2m_range_api": round(report_api_ns, 1),
        "report_ns_per_2m_range_one_call": round(report_work_ns, 1),
        "touch_ns_per_page_unbacked": round(touch_unbacked, 2),
        "touch_ns_per_page_backed": round(touch_backed, 2),
        "touch_ns_per_page_unbacked_thp": round(touch_unbacked_thp, 2),
        "touch_ns_per_page_backed_thp": round(touch_backed_thp, 2),
        "reclaim_ns_per_page": round(reclaim_ns, 1),
        "bytes_per_page": round(bpp, 3),
        "target_report_ns_per_2m_range": TARGET_REPORT_NS,
        "target_touch_ns_per_page": TARGET_TOUCH_NS,
        "target_bytes_per_page": TARGET_BYTES_PER_PAGE,
        "report_target_met": report_ns <= TARGET_REPORT_NS,
        "touch_unbacked_target_met": touch_unbacked <= TARGET_TOUCH_NS,
        "touch_backed_target_met": touch_backed <= TARGET_TOUCH_NS,
        "bytes_per_page_target_met": bpp <= TARGET_BYTES_PER_PAGE,
        "guest_pages": guest_pages,
        "report_batch_ranges": BATCH,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:36s} {value}")


if __name__ == "__main__":
    main()
