"""Speed of the guest workloads and of the trace loaders.

Prints one JSON object (``--json``):

* per workload kind: one 32 GiB guest on a 48 GiB host, host model in-process
  (``--transport inprocess``), ``sim_seconds_per_wall_second`` and
  ``faults_per_wall_second`` (a fault is one guest page fault: a 4 KiB page, or with
  THP one order-9 allocation and one 2 MiB host touch);
* ``trace_load``: a directory of 1,000 Bitbrains-format files of 9,000 rows each (the
  size of the real GWA-T-12 files) loaded with ``load_bitbrains_dir``:
  ``trace_load_rows_per_second`` and the seconds it took (target: under 20 s). The
  directory is written once (seeded synthetic traces) and kept under the temp dir.

For page_cache and kernel_noise a "fault" is a page allocated (a cache miss, a
kernel allocation's pages); for a script, every page its steps allocated.

    python bench/workloads.py --json [--files 1000] [--rows 9000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))

from scripts.make_synthetic_traces import write_fleet  # noqa: E402
from services.sim.runner import run_experiment  # noqa: E402
from services.sim.spec import load_spec_text, with_trace_root  # noqa: E402
from services.sim.traces import SHAPES, load_bitbrains_dir  # noqa: E402

GIB = 1 << 30
TARGET_TRACE_LOAD_S = 20.0

HOST = "hosts: [{name: h, memory: 48GiB, reserve: 1GiB, swap: {capacity: 16GiB}}]"
WORKLOADS = {
    # a hog that grows to 90 % and frees, repeatedly: first-touch faults all along
    "memhog": """{kind: memhog, repeat: true, phases: [
        {action: grow, target: 0.9, duration: 20s},
        {action: free, target: 0.05, duration: 2s}]}""",
    "memhog_thp": """{kind: memhog, thp: true, repeat: true, phases: [
        {action: grow, target: 0.9, duration: 20s},
        {action: free, target: 0.05, duration: 2s}]}""",
    # a bursty synthetic trace played 60x faster than real time
    "trace": """{kind: trace, format: synthetic, shape: bursty, trace_duration: 24h,
        trace_interval: 60s, time_scale: 60}""",
    # will-it-scale as in the cover letters: 16 tasks on 16 vCPUs
    "page_fault1_thp": "{kind: page_fault1, tasks: 16, thp: true}",
    "page_fault1": "{kind: page_fault1, tasks: 16}",
    "page_fault2": "{kind: page_fault2, tasks: 16}",
    # reads 48 GiB of files into a 32 GiB guest: kswapd reclaims all along
    "page_cache": "{kind: page_cache, file_size: 48GiB, read_rate: 4GiB}",
    "kernel_noise": "{kind: kernel_noise, rate: 20000, mean_lifetime: 5s}",
    "script": """{kind: script, steps: [
        {workload: {kind: kernel_noise, rate: 2000}, overlay: true},
        {workload: {kind: page_cache, file_size: 8GiB, read_rate: 4GiB}, until: done},
        {workload: {kind: memhog, phases: [{action: grow, target: 0.7, until: done},
            {action: free, target: 0, until: done}]}, until: done}]}""",
}
NOT_MEASURED: list[str] = []
# real machine (cover letter, E5-2630 v3, 16 tasks): counter per second
REAL_FAULTS_PER_S = {"page_fault2": 3_344_169, "page_fault1_thp": 8_865_205 / 512}


def workload_speed(kind: str, workload: str, seconds: int, quantum: int | None = None) -> dict:
    if quantum is not None:
        workload = workload.replace("}", f", quantum: {quantum}}}")
    text = f"""
name: bench-{kind.replace("_", "-")}
seed: 1
duration: {seconds}s
{HOST}
guest_groups: [{{name: g, count: 1, memory: 32GiB, vcpus: 16, workload: {workload}}}]
"""
    spec = with_trace_root(load_spec_text(text), ROOT)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = run_experiment(spec, out_dir=out, transport="inprocess")
        wall = time.perf_counter() - t0
    ts = result.timeseries
    g = ts[(ts["variant"] == "run") & ts["pages_allocated_total"].notna()]
    pages = float(g["pages_allocated_total"].iloc[-1])
    if "benchmark_ops_total" in g:  # will-it-scale: its counter (page_fault2's page cache
        pages = float(g["benchmark_ops_total"].iloc[-1])  # fills are not faults it counts)
    faults = pages / 512 if "thp" in kind else pages  # an order-9 fault maps 512 pages
    out = {
        "sim_seconds": seconds,
        "wall_seconds": round(wall, 2),
        "sim_seconds_per_wall_second": round(seconds / wall, 2),
        "faults": int(faults),
        "faults_per_wall_second": round(faults / wall),
    }
    if kind in REAL_FAULTS_PER_S:  # how fast against the real machine's fault rate
        out["x_real_machine_fault_rate"] = round(faults / wall / REAL_FAULTS_PER_S[kind], 2)
    return out


def trace_load(files: int, rows: int) -> dict:
    interval = 300
    hours = rows * interval / 3600
    d = Path(tempfile.gettempdir()) / f"overcommit-bench-bitbrains-{files}x{rows}"
    written = 0.0
    if not (d.is_dir() and len(list(d.glob("*.csv"))) == files):
        t0 = time.perf_counter()
        shapes = tuple(SHAPES[i % len(SHAPES)] for i in range(files))
        write_fleet(d, shapes, 2013, 8 * GIB, int(hours * 3600) - interval, interval)
        written = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in d.glob("*.csv"))
    t0 = time.perf_counter()
    traces = load_bitbrains_dir(d)
    load_s = time.perf_counter() - t0
    total_rows = sum(len(t) for t in traces)
    return {
        "files": len(traces),
        "rows": total_rows,
        "bytes": size,
        "load_seconds": round(load_s, 2),
        "trace_load_rows_per_second": round(total_rows / load_s),
        "target_load_seconds": TARGET_TRACE_LOAD_S,
        "target_met": load_s < TARGET_TRACE_LOAD_S,
        "directory_written_seconds": round(written, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=9000)
    ap.add_argument("--seconds", type=int, default=20, help="simulated seconds per workload")
    ap.add_argument("--only", choices=[*WORKLOADS, "trace_load"], default=None)
    args = ap.parse_args(argv)
    out: dict = {"load_average_1min": round(os.getloadavg()[0], 2), "workloads": {}}
    for kind, workload in WORKLOADS.items():
        if args.only in (None, kind):
            out["workloads"][kind] = workload_speed(kind, workload, args.seconds)
    if args.only in (None, "page_fault2"):  # how much results move with half the quantum
        full = out["workloads"].get("page_fault2") or workload_speed(
            "page_fault2", WORKLOADS["page_fault2"], args.seconds
        )
        half = workload_speed("page_fault2", WORKLOADS["page_fault2"], args.seconds, 512)
        out["quantum"] = {
            "default": 1024,
            "page_fault2_faults_default": full["faults"],
            "page_fault2_faults_half": half["faults"],
            "change_percent": round(100 * (half["faults"] / full["faults"] - 1), 3),
        }
    if args.only in (None, "trace_load"):
        out["trace_load"] = trace_load(args.files, args.rows)
    out["not_measured"] = NOT_MEASURED
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
