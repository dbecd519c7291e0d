"""Load held: a report storm on Ray, and 32 concurrent clients driving `overcommit serve`.

Prints one JSON object.

* ``storm`` (experiments/report-storm.yaml): 1,000 guests of 1 GiB on 20 hosts free
  most of their memory in the same epoch; two seconds later every reporting worker
  runs at once. Real Ray actors, real gRPC. Reported: the wall latency of SyncEpoch
  (p50, p99, max, from every shard's link), the peak RSS of every process (the
  driver and each Ray process, by name), and the report ranges the guests sent in
  calls acknowledged ok, those the hosts applied (``ranges_acknowledged``), those put
  back unreported after a failed call, and ``ranges_lost`` = sent - acknowledged,
  which must be 0.
* ``serve``: ``overcommit serve`` (in-process transport, tokens on) and 32 client
  threads, each creating a small experiment, advancing it, running it to the end,
  streaming its samples and reading its summary, over and over for a bounded time.
  Reported: the calls made and their outcomes by status code (anything but OK and
  the documented RESOURCE_EXHAUSTED is an error), and the server's RSS at the start,
  the middle and the end (bounded: it must not keep growing).

    python bench/load.py --json [--only storm|serve] [--shards N] [--serve-seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc
from proc_tree import rss_bytes, tree_pids  # bench/, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "load-admin-token"
CLIENTS = 32
DOCUMENTED = {"OK", "RESOURCE_EXHAUSTED"}  # create refused while 64 experiments are live
SMALL = """
name: load-client
seed: {seed}
duration: 4s
hosts: [{{name: h, memory: 512MiB, reserve: 32MiB, swap: {{capacity: 256MiB}}}}]
guest_groups:
  - name: g
    count: 2
    memory: 128MiB
    workload:
      kind: memhog
      phases:
        - {{action: grow, target: 0.6, rate: 256MiB, duration: 1s}}
        - {{action: free, target: 0.1, duration: 1s}}
        - {{action: idle, duration: 2s}}
"""


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(p.decode(errors="replace") for p in parts if p)
    m = re.match(r"(ray::\w+)", text)
    if m:
        return m.group(1)
    return os.path.basename(parts[0].decode(errors="replace")) if parts and parts[0] else "?"


class PeakByProcess:
    """Peak RSS of every process under ``root`` (sampled every ``interval_s``)."""

    def __init__(self, root: int, interval_s: float = 0.5):
        self.root, self.interval_s = root, interval_s
        self.peaks: dict[int, tuple[str, int]] = {}
        self.samples: list[int] = []  # the tree's total at each sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in tree_pids(self.root):
                rss = rss_bytes([pid])
                total += rss
                _, peak = self.peaks.get(pid, (None, 0))
                if rss > peak:  # named now: a Ray worker takes its actor's name after start
                    self.peaks[pid] = (_name(pid), rss)
            self.samples.append(total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakByProcess:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        by_name: dict[str, dict[str, int]] = {}
        for name, peak in self.peaks.values():
            entry = by_name.setdefault(name, {"processes": 0, "peak_rss_bytes_max": 0})
            entry["processes"] += 1
            entry["peak_rss_bytes_max"] = max(entry["peak_rss_bytes_max"], peak)
        return {
            "peak_rss_bytes_total": max(self.samples, default=0),
            "by_process": dict(sorted(by_name.items())),
        }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def storm(shards: int | None) -> dict:
    from services.sim.backends.ray_cluster import RayBackend
    from services.sim.simulation import Simulation
    from services.sim.spec import load_spec

    spec = load_spec(os.path.join(ROOT, "experiments", "report-storm.yaml"))
    backend = RayBackend()
    try:
        with PeakByProcess(os.getpid()) as rss:
            sim = Simulation(spec, backend, "run", shards)
            try:
                t0 = time.perf_counter()
                sim.advance_to(spec.duration)
                wall = time.perf_counter() - t0
                ray = backend.ray
                figures = ray.get([a.load_figures.remote() for a in sim.session.shard_actors])
                hosts = sim.last_hosts
            finally:
                sim.close()
    finally:
        backend.close()
    latencies = [x for f in figures for x in f["sync_latency_s"]]
    sent = sum(f["ranges_sent"] for f in figures)
    acknowledged = sum(int(h["report_ranges"]) for h in hosts.values())
    return {
        "spec": "experiments/report-storm.yaml",
        "guests": sum(g.count for g in spec.guest_groups),
        "hosts": len(hosts),
        "shards": len(figures),
        "simulated_seconds": spec.duration / 1e9,
        "wall_seconds": round(wall, 2),
        "sync_epoch_calls": len(latencies),
        "sync_epoch_latency_p50_ms": round(_percentile(latencies, 0.50) * 1e3, 3),
        "sync_epoch_latency_p99_ms": round(_percentile(latencies, 0.99) * 1e3, 3),
        "sync_epoch_latency_max_ms": round(max(latencies, default=0.0) * 1e3, 3),
        "ranges_reported": sent,
        "ranges_acknowledged": acknowledged,
        "ranges_returned_unreported": sum(f["ranges_returned"] for f in figures),
        "ranges_lost": sent - acknowledged,
        "reported_bytes": sum(int(h["reported_pages"]) for h in hosts.values()) << 12,
        **rss.report(),
    }


def _start_serve(out: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.sim.cli", "serve", "--port", "0", "--token", TOKEN,
         "--transport", "inprocess", "--out", out],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for _ in range(20):
        m = re.search(r"on (\S+:\d+)", proc.stdout.readline())
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("serve did not start")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def serve_load(seconds: float) -> dict:
    from services.sim.experiment_service import connect_experiments

    proc, address = _start_serve(tempfile.mkdtemp(prefix="load-serve-"))
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    rss_marks: list[tuple[float, int]] = [(0.0, rss_bytes([proc.pid]))]
    t_start = time.monotonic()

    def count(code: str) -> None:
        with lock:
            outcomes[code] += 1

    def call(fn, *args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except grpc.RpcError as e:
            count(e.code().name)
            return None
        count("OK")
        return result

    def client(index: int) -> None:
        with connect_experiments(address, token=TOKEN) as admin:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                made = call(admin.create, SMALL.format(seed=index * 100_000 + n))
                if made is None:
                    continue
                experiment_id, token = made
                with connect_experiments(address, token=token, experiment_id=experiment_id) as c:
                    call(c.advance, experiment_id, 1_000_000_000, timeout_s=120)
                    call(c.run_to_end, experiment_id, timeout_s=300)
                    try:
                        samples = sum(1 for _ in c.stream_samples(experiment_id, timeout_s=60))
                        count("OK")
                    except grpc.RpcError as e:
                        count(e.code().name)
                        samples = 0
                    call(c.summary, experiment_id)
                with lock:
                    outcomes["samples_streamed"] += samples

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        rss_marks.append((time.monotonic() - t_start, rss_bytes([proc.pid])))
    _stop(proc)
    calls = {k: v for k, v in outcomes.items() if k != "samples_streamed"}
    errors = {k: v for k, v in calls.items() if k not in DOCUMENTED}
    middle = rss_marks[len(rss_marks) // 2][1]
    return {
        "clients": CLIENTS,
        "seconds": seconds,
        "wall_seconds": round(time.monotonic() - t_start, 1),
        "calls_by_status": dict(sorted(calls.items())),
        "samples_streamed": outcomes["samples_streamed"],
        "undocumented_errors": errors,
        "server_rss_bytes_start": rss_marks[0][1],
        "server_rss_bytes_middle": middle,
        "server_rss_bytes_end": rss_marks[-1][1],
        "server_rss_bytes_peak": max(r for _, r in rss_marks),
        "server_rss_growth_second_half": round(rss_marks[-1][1] / max(middle, 1) - 1, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    ap.add_argument("--only", choices=("storm", "serve"), default=None)
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--serve-seconds", type=float, default=60.0)
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(ROOT, ".numba_cache"))
    out = {}
    if args.only in (None, "storm"):
        out["storm"] = storm(args.shards)
    if args.only in (None, "serve"):
        out["serve"] = serve_load(args.serve_seconds)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
