"""Simple, real implementations of the orchestration Protocols, for contract tests only.

``MemoryShard`` implements GuestShardApi over real guest cores (the reference
allocator); ``MemoryExperiments`` implements ExperimentManagerApi over plain
dicts. They stand in for services/sim until the orchestration layer lands.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from services.guest.core.config import GuestConfig
from services.guest.core.guest import Guest
from services.guest.core.reporting import ReportOutcome
from services.guest.guest_service import (
    AllocOp,
    ApplyOpsResult,
    FreeOp,
    GuestInfo,
    GuestOp,
    OpResult,
    TouchOp,
)
from services.sim.experiment_service import ExperimentStatus
from services.transport.errors import failed_precondition


class AckingReporter:
    """A PageReporter that acknowledges every report at once."""

    def report(self, now_ns: int, pfns: np.ndarray, orders: np.ndarray) -> ReportOutcome:
        return ReportOutcome()


class MemoryShard:
    """GuestShardApi over real guests; ``gate`` (if set) blocks apply_ops until released."""

    def __init__(self, nr_pages: int = 1 << 14, guest_ids: Sequence[int] = (1, 2)):
        self.guests = {
            gid: Guest(
                gid, GuestConfig(nr_pages=nr_pages), seed=7, reporter=AckingReporter(), fast=False
            )
            for gid in guest_ids
        }
        self.allocated: dict[int, dict[int, list[int]]] = {gid: {} for gid in guest_ids}
        self.workloads: dict[int, tuple[str, dict[str, Any], int]] = {}
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def _guest(self, guest_id: int) -> Guest:
        if guest_id not in self.guests:
            raise KeyError(f"guest_id {guest_id} is not in this shard")
        return self.guests[guest_id]

    def list_guests(self) -> Sequence[GuestInfo]:
        return [
            GuestInfo(
                gid,
                g.config.nr_pages,
                host_id=0,
                now_ns=g.now_ns,
                workload=self.workloads.get(gid, ("",))[0],
            )
            for gid, g in reversed(self.guests.items())
        ]

    def apply_ops(self, guest_id: int, ops: Sequence[GuestOp]) -> ApplyOpsResult:
        guest = self._guest(guest_id)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=10)
        for op in ops:  # validate first: nothing changes on a bad list
            if isinstance(op, FreeOp) and not len(op.pfns):
                held = self.allocated[guest_id].get(op.order, [])
                if op.count > len(held):
                    raise ValueError(
                        f"count {op.count}: only {len(held)} blocks of order {op.order} held"
                    )
        results = []
        for op in ops:
            held = (
                self.allocated[guest_id].setdefault(op.order, [])
                if not isinstance(op, TouchOp)
                else []
            )
            if isinstance(op, AllocOp):
                pfns = guest.alloc(op.order, op.migratetype, op.count)
                held.extend(pfns.tolist())
                results.append(OpResult(pfns=pfns))
            elif isinstance(op, FreeOp):
                pfns = np.asarray(op.pfns if len(op.pfns) else held[-op.count :], dtype=np.int64)
                guest.free(pfns, op.order)
                for pfn in pfns.tolist():
                    held.remove(pfn)
                results.append(OpResult(pfns=pfns))
            else:
                before = guest.touch_cost_ns
                guest.touch(op.starts, op.npages)
                results.append(OpResult(lost_ns=guest.touch_cost_ns - before))
        return ApplyOpsResult(results, guest.now_ns)

    def start_workload(
        self, guest_id: int, workload: str, params: Mapping[str, Any], duration_ns: int
    ) -> tuple[int, int]:
        guest = self._guest(guest_id)
        if workload not in ("memhog", "idle"):
            raise ValueError(f"workload {workload!r} is not one of memhog, idle")
        self.workloads[guest_id] = (workload, dict(params), duration_ns)
        return guest.now_ns, guest.now_ns + duration_ns

    def guest_state(self, guest_id: int) -> Mapping[str, Any]:
        guest = self._guest(guest_id)
        return guest.state() | {"nr_pages": guest.config.nr_pages}


class MemoryExperiments:
    """ExperimentManagerApi over dicts: time advances, samples are recorded per advance."""

    def __init__(self) -> None:
        self.specs: dict[str, dict[str, Any]] = {}
        self.now_ns: dict[str, int] = {}
        self.state: dict[str, str] = {}

    def _get(self, experiment_id: str) -> dict[str, Any]:
        if experiment_id not in self.specs:
            raise KeyError(f"experiment_id {experiment_id!r} does not exist")
        return self.specs[experiment_id]

    def create(self, spec: str | Mapping[str, Any], call_over=None) -> str:
        parsed = yaml.safe_load(spec) if isinstance(spec, str) else dict(spec)
        if not isinstance(parsed, dict) or "duration_ns" not in parsed:
            raise ValueError("spec.duration_ns is required")
        experiment_id = f"exp-{len(self.specs) + 1}"
        self.specs[experiment_id] = parsed
        self.now_ns[experiment_id] = 0
        self.state[experiment_id] = "created"
        return experiment_id

    def advance(
        self, experiment_id: str, duration_ns: int, should_stop=None, wait_s=None
    ) -> ExperimentStatus:
        spec = self._get(experiment_id)
        if self.state[experiment_id] == "cancelled":
            raise failed_precondition("experiment_id", experiment_id, "experiment was cancelled")
        end = int(spec["duration_ns"])
        self.now_ns[experiment_id] = min(end, self.now_ns[experiment_id] + duration_ns)
        if self.now_ns[experiment_id] == end:
            self.state[experiment_id] = "finished"
        return ExperimentStatus(self.now_ns[experiment_id], self.state[experiment_id])

    def run_to_end(self, experiment_id: str, should_stop=None, wait_s=None) -> ExperimentStatus:
        return self.advance(experiment_id, int(self._get(experiment_id)["duration_ns"]))

    def cancel(self, experiment_id: str) -> ExperimentStatus:
        self._get(experiment_id)
        if self.state[experiment_id] != "finished":
            self.state[experiment_id] = "cancelled"
        return ExperimentStatus(self.now_ns[experiment_id], self.state[experiment_id])

    def summary(self, experiment_id: str, wait_s=None) -> Mapping[str, Any]:
        spec = self._get(experiment_id)
        return {
            "experiment_id": experiment_id,
            "now_ns": self.now_ns[experiment_id],
            "hosts": int(spec.get("hosts", 1)),
            "saved_bytes": np.int64(4096),
        }

    def list_experiments(self, only: str | None = None) -> list[dict[str, Any]]:
        return [
            {
                "experiment_id": e,
                "name": "doubles",
                "state": self.state[e],
                "now_ns": self.now_ns[e],
            }
            for e in self.specs
            if only is None or e == only
        ]

    def resume(self, experiment_id: str, wait_s=None) -> ExperimentStatus:
        self._get(experiment_id)
        if self.state[experiment_id] != "interrupted":
            raise failed_precondition("experiment_id", experiment_id, "not interrupted")
        self.state[experiment_id] = "created"
        return ExperimentStatus(self.now_ns[experiment_id], "created")

    def stream_samples(self, experiment_id: str, is_active=None) -> Iterator[Mapping[str, Any]]:
        self._get(experiment_id)
        for t in range(0, self.now_ns[experiment_id] + 1, 1_000_000_000):
            yield {
                "sim_time_ns": t,
                "entity": "host/0",
                "metrics": {"pool_used_bytes": float(t // 1000), "guests": 2},
            }
