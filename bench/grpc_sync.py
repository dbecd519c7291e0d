"""Benchmark of the HostService epoch sync over real gRPC on loopback.

Two measurements, printed as one JSON object with ``--json``:

1. Throughput: 1 and 8 guest shards sync epochs with one host. The host runs in
   its own process (as a host actor would) behind a real gRPC server; each
   shard is a client thread with its own channel. Every shard's message per
   epoch carries 8 guests, each with 3 report batches of 32 order-9 ranges and
   16 touched runs. Reported: host epochs/s, SyncEpoch calls/s, report ranges
   applied/s, message size, and the round trip of an empty SyncEpoch, unary and
   on a SyncStream (the transport's floor; the rest of an epoch is the host
   core's work).
2. ``transport_overhead_ratio``: the same small multi-guest simulation (three
   guest shards with real guest cores and workloads, two hosts with the real
   host core) run for the same epochs with the in-process transport and with
   every SyncEpoch over gRPC to a separate host process (the host actor). The
   guest work runs in the same order in both, so the difference is the
   transport. Ratio = gRPC wall time / in-process wall time (best of several
   repeats, measured in this run). The host process can decode and validate a
   shard's message while the next shard computes, so on two cores gRPC may even
   win; ``transport_overhead_ratio_same_process`` puts the host server in this
   process instead (no parallelism to gain: the pure cost of the transport).
   All runs must end with identical host counters.

Usage: python bench/grpc_sync.py [--json] [--seconds S] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overcommit.v1 import host_pb2
from services.host.barrier import EpochBarrier
from services.host.core.config import HostConfig
from services.host.core.host import Host
from services.host.directory import HostDirectory
from services.host.servicer import start_host_server
from services.protocol.clients import connect_host
from services.protocol.codec import encode_submission
from services.protocol.messages import EpochSubmission, GuestOps, PageRunOps, ReportOp
from services.transport.client import RequestStream
from services.transport.server import ServerOptions

EXPERIMENT = "bench"
GUESTS_PER_SHARD = 8
GUEST_PAGES = 1 << 16  # 256 MiB guests
REPORTS_PER_GUEST = 3
RANGES_PER_REPORT = 32  # PAGE_REPORTING_CAPACITY
TOUCH_RUNS_PER_GUEST = 16
EPOCH_NS = 50_000_000

OVERHEAD_SPEC = """
name: grpc-overhead
seed: 7
duration: 60s
epoch: 50ms
sample_interval: 1s
hosts:
  - {name: host, count: 2, memory: 2GiB, reserve: 128MiB, thp: true, discard_mode: dontneed,
     swap: {capacity: 4GiB}}
guest_groups:
  - name: phased
    count: 6
    memory: 512MiB
    workload:
      kind: memhog
      start_stagger: 1s
      repeat: true
      phases:
        - {action: grow, target: 0.6, rate: 1GiB, duration: 1s}
        - {action: touch, rate: 256MiB, duration: 2s}
        - {action: free, target: 0.1, duration: 1s}
        - {action: idle, duration: 3s}
placement: {policy: spread, max_overcommit_ratio: 2.0}
"""
OVERHEAD_SHARDS = 3


# ------------------------------------------------------------- throughput


def _serve_host(conn) -> None:
    """Child process: one host behind a gRPC server; reports the port, stops on request."""
    host = Host(0, HostConfig(memory_bytes=64 << 30))
    server = start_host_server(
        HostDirectory([EpochBarrier(EXPERIMENT, 0, host)]), ServerOptions(max_workers=32)
    )
    with server:
        conn.send(server.port)
        conn.recv()  # "stop"


def _shard_message(shard_id: int, seed: int) -> host_pb2.SyncEpochRequest:
    rng = np.random.default_rng([seed, shard_id])
    guests = []
    for k in range(GUESTS_PER_SHARD):
        guest_id = shard_id * GUESTS_PER_SHARD + k
        blocks = rng.choice(
            GUEST_PAGES >> 9, size=REPORTS_PER_GUEST * RANGES_PER_REPORT, replace=False
        ).astype(np.uint64) << np.uint64(9)
        reports = tuple(
            ReportOp(
                op_seq=2 * r + 2,
                pfns=np.sort(blocks[r * RANGES_PER_REPORT : (r + 1) * RANGES_PER_REPORT]),
                orders=np.full(RANGES_PER_REPORT, 9, np.uint32),
            )
            for r in range(REPORTS_PER_GUEST)
        )
        starts = np.sort(rng.choice(GUEST_PAGES // 64, TOUCH_RUNS_PER_GUEST, replace=False)) * 64
        seqs = np.repeat(
            np.arange(REPORTS_PER_GUEST + 1) * 2 + 1,
            -(-TOUCH_RUNS_PER_GUEST // (REPORTS_PER_GUEST + 1)),
        )
        touched = PageRunOps(
            starts.astype(np.uint64),
            np.full(TOUCH_RUNS_PER_GUEST, 64, np.uint64),
            seqs[:TOUCH_RUNS_PER_GUEST].astype(np.uint64),
        )
        guests.append(GuestOps(guest_id, reports, touched))
    return encode_submission(
        EXPERIMENT, 0, EpochSubmission(shard_id, 0, 0, EPOCH_NS, tuple(guests))
    )


def measure_throughput(nr_shards: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_host, args=(child,), daemon=True)
    proc.start()
    try:
        port = parent.recv()
        target = f"127.0.0.1:{port}"
        clients = [connect_host(target, timeout_s=60) for _ in range(nr_shards)]
        messages = [_shard_message(s, seed=1) for s in range(nr_shards)]
        for s, client in enumerate(clients):
            for k in range(GUESTS_PER_SHARD):
                client.register_guest(
                    host_pb2.RegisterGuestRequest(
                        experiment_id=EXPERIMENT,
                        host_id=0,
                        shard_id=s,
                        guest_id=s * GUESTS_PER_SHARD + k,
                        nr_pages=GUEST_PAGES,
                        discard_mode=host_pb2.DISCARD_MODE_DONTNEED,
                    )
                )

        def shard_loop(s: int, first: int, end: list[int]) -> int:
            """Sync epochs first, first+1, ... until epoch ``end[0]`` (read as it goes)."""
            message, client = messages[s], clients[s]
            e = first
            while e < end[0]:
                message.epoch = message.sequence = e
                message.epoch_end_ns = (e + 1) * EPOCH_NS
                client.sync_epoch(message)
                e += 1
            return e

        warmup = 20
        with ThreadPoolExecutor(nr_shards) as pool:
            list(pool.map(lambda s: shard_loop(s, 0, [warmup]), range(nr_shards)))
            end = [1 << 60]
            t0 = time.perf_counter()
            futures = [pool.submit(shard_loop, s, warmup, end) for s in range(nr_shards)]
            while time.perf_counter() - t0 < seconds:
                time.sleep(0.05)
            # Shards are at most one epoch apart (the host's barrier): stop all at one epoch.
            end[0] = max(m.epoch for m in messages) + 2
            done = [f.result() for f in futures]
            wall = time.perf_counter() - t0
        assert len(set(done)) == 1, done
        epochs = done[0] - warmup
        floor = _empty_sync_latency_s(clients[0], done[0]) if nr_shards == 1 else None
        stream_floor = (
            _empty_stream_latency_s(clients[0], done[0] + 300) if nr_shards == 1 else None
        )
        ranges = epochs * nr_shards * GUESTS_PER_SHARD * REPORTS_PER_GUEST * RANGES_PER_REPORT
        for client in clients:
            client.close()
        return {
            "sync_epochs_per_s": round(epochs / wall, 1),
            "sync_calls_per_s": round(epochs * nr_shards / wall, 1),
            "ranges_per_s": round(ranges / wall),
            "message_bytes": messages[0].ByteSize(),
            "epochs": epochs,
            "empty_sync_p50_ms": None if floor is None else round(floor * 1e3, 3),
            "empty_sync_stream_p50_ms": None
            if stream_floor is None
            else round(stream_floor * 1e3, 3),
        }
    finally:
        parent.send("stop")
        proc.join(timeout=30)


def _empty_sync_latency_s(client, first_epoch: int, calls: int = 300) -> float:
    """Median round trip of a SyncEpoch that carries no guest ops: the transport floor."""
    message = host_pb2.SyncEpochRequest(experiment_id=EXPERIMENT, host_id=0, shard_id=0)
    return _median_round_trip(lambda: client.sync_epoch(message), message, first_epoch, calls)


def _empty_stream_latency_s(client, first_epoch: int, calls: int = 300) -> float:
    """The same floor over a SyncStream (what a shard that syncs every epoch uses)."""
    request = host_pb2.SyncEpochsRequest(
        requests=[host_pb2.SyncEpochRequest(experiment_id=EXPERIMENT, host_id=0, shard_id=0)]
    )
    stream = RequestStream(client.stub.SyncStream, metadata=client.caller.metadata, timeout_s=60)
    try:
        return _median_round_trip(
            lambda: stream.call(request), request.requests[0], first_epoch, calls
        )
    finally:
        stream.close()


def _median_round_trip(send, message, first_epoch: int, calls: int) -> float:
    """Median seconds of ``send()`` with ``message`` set to epochs first_epoch, ..."""
    latencies = []
    for e in range(first_epoch, first_epoch + calls):
        message.epoch = message.sequence = e
        message.epoch_end_ns = (e + 1) * EPOCH_NS
        t0 = time.perf_counter()
        send()
        latencies.append(time.perf_counter() - t0)
    return float(np.median(latencies))


# ------------------------------------------------------- transport overhead


def _plan():
    from services.sim.plan import make_plan
    from services.sim.spec import load_spec_text

    return make_plan(load_spec_text(OVERHEAD_SPEC), EXPERIMENT, OVERHEAD_SHARDS)


def run_in_process(epochs: int) -> tuple[float, dict]:
    """The epoch driver over the in-process link (plain messages, no protobuf)."""
    from services.sim.backends.inprocess import InProcessSession

    session = InProcessSession(_plan())
    t0 = time.perf_counter()
    session.driver.run_epochs(0, 0, epochs, sync_epochs=1)
    wall = time.perf_counter() - t0
    return wall, session.host_samples()


def _serve_plan_hosts(conn) -> None:
    """Child process: the plan's hosts behind one gRPC server (like a host actor holding
    several hosts). On "reset" it rebuilds them fresh and sends the new port."""
    plan = _plan()
    while conn.recv() == "reset":
        directory = HostDirectory(
            EpochBarrier(plan.experiment_id, h, Host(h, cfg))
            for h, cfg in plan.host_configs.items()
        )
        server = start_host_server(directory, ServerOptions())
        server.start()
        conn.send(server.port)
        conn.recv()  # "done": the parent has read the state
        server.stop(0)


class _LocalHosts:
    """The plan's hosts behind a gRPC server in this process (no parallelism to gain)."""

    def __init__(self) -> None:
        self.server = None

    def send(self, message: str) -> None:
        if message == "reset":
            plan = _plan()
            directory = HostDirectory(
                EpochBarrier(plan.experiment_id, h, Host(h, cfg))
                for h, cfg in plan.host_configs.items()
            )
            self.server = start_host_server(directory, ServerOptions())
            self.server.start()
        elif self.server is not None:
            self.server.stop(0)
            self.server = None

    def recv(self) -> int:
        return self.server.port


def run_grpc(epochs: int, conn) -> tuple[float, dict]:
    """The same epoch driver, with every SyncEpoch over gRPC to a host server.

    ``conn`` reaches the host server: a pipe to a host process, or _LocalHosts.
    Shards run their spans one after another in this thread, exactly as in the
    in-process run; each span's SyncEpoch calls of all shards go out together
    (the host applies an epoch once every shard is in) and their answers are
    applied when they return.
    """
    from services.guest.epoch_driver import EpochDriver
    from services.guest.shard import GuestShard
    from services.protocol.clients import GrpcHostLink

    plan = _plan()
    conn.send("reset")
    target = f"127.0.0.1:{conn.recv()}"
    link = GrpcHostLink(plan.experiment_id, dict.fromkeys(plan.host_configs, target))
    for host_id, reg in plan.registrations():
        link.register(host_id, reg)
    shards = [GuestShard(i, inits, plan.seed) for i, inits in enumerate(plan.shard_inits)]
    driver = EpochDriver(shards, link, plan.policy, sorted(plan.host_configs), EPOCH_NS)
    t0 = time.perf_counter()
    driver.run_epochs(0, 0, epochs, sync_epochs=1)
    wall = time.perf_counter() - t0
    client = link.client(next(iter(plan.host_configs)))
    counters = {
        h: dict(
            client.get_host_state(
                host_pb2.GetHostStateRequest(experiment_id=plan.experiment_id, host_id=h)
            ).counters
        )
        for h in plan.host_configs
    }
    link.close()
    conn.send("done")
    return wall, counters


def measure_overhead(epochs: int, repeats: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_plan_hosts, args=(child,), daemon=True)
    proc.start()
    local_hosts = _LocalHosts()
    try:
        run_in_process(10)  # compile the numba kernels and warm caches
        run_grpc(10, parent)  # the same in the host process
        times: dict[str, list[float]] = {"grpc": [], "grpc_same_process": [], "inprocess": []}
        counters = {}
        for _ in range(repeats):
            wall, counters["grpc"] = run_grpc(epochs, parent)
            times["grpc"].append(wall)
            wall, counters["grpc_same_process"] = run_grpc(epochs, local_hosts)
            times["grpc_same_process"].append(wall)
            wall, counters["inprocess"] = run_in_process(epochs)
            times["inprocess"].append(wall)
    finally:
        parent.send("stop")
        proc.join(timeout=30)
    if not counters["grpc"] == counters["grpc_same_process"] == counters["inprocess"]:
        raise AssertionError("gRPC and in-process runs ended with different host counters")
    best = {k: min(v) for k, v in times.items()}
    return {
        "transport_overhead_ratio": round(best["grpc"] / best["inprocess"], 3),
        "transport_overhead_ratio_same_process": round(
            best["grpc_same_process"] / best["inprocess"], 3
        ),
        "overhead_grpc_wall_s": round(best["grpc"], 3),
        "overhead_grpc_same_process_wall_s": round(best["grpc_same_process"], 3),
        "overhead_inprocess_wall_s": round(best["inprocess"], 3),
        "overhead_epochs": epochs,
        "overhead_shards": OVERHEAD_SHARDS,
        "overhead_hosts": len(counters["inprocess"]),
        "overhead_results_identical": True,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=3.0, help="throughput run length per case")
    parser.add_argument("--epochs", type=int, default=400, help="epochs of the overhead run")
    parser.add_argument("--repeats", type=int, default=3, help="overhead runs per transport")
    args = parser.parse_args(argv)
    one = measure_throughput(1, args.seconds)
    eight = measure_throughput(8, args.seconds)
    result = {
        "sync_epochs_per_s": {
            "1_shard": one["sync_epochs_per_s"],
            "8_shards": eight["sync_epochs_per_s"],
        },
        "sync_calls_per_s": {
            "1_shard": one["sync_calls_per_s"],
            "8_shards": eight["sync_calls_per_s"],
        },
        "ranges_per_s": {"1_shard": one["ranges_per_s"], "8_shards": eight["ranges_per_s"]},
        "message_bytes_per_shard": one["message_bytes"],
        "empty_sync_p50_ms": one["empty_sync_p50_ms"],
        "empty_sync_stream_p50_ms": one["empty_sync_stream_p50_ms"],
        "guests_per_shard": GUESTS_PER_SHARD,
        "report_batches_per_guest": REPORTS_PER_GUEST,
        "ranges_per_batch": RANGES_PER_REPORT,
        "touch_runs_per_guest": TOUCH_RUNS_PER_GUEST,
        **measure_overhead(args.epochs, args.repeats),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(
            os.getloadavg()[0], 2
        ),  # other work on the machine skews all figures
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
