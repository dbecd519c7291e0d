"""GuestService's view of a guest shard: client operations between epochs.

Implements :class:`services.guest.guest_service.GuestShardApi` over a
:class:`~services.guest.shard.GuestShard`. Operations run at the shard's current
simulated time; what they do reaches the host with the next sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from services.transport.errors import deadline_exceeded, resource_exhausted

from .guest_service import AllocOp, ApplyOpsResult, FreeOp, GuestInfo, OpResult, TouchOp
from .oplog import MAX_PENDING_RUNS
from .shard import GuestShard

MAX_BATCH_RUNS = 1 << 16  # page runs one ApplyOps may touch


@contextmanager
def shard_within(shard: GuestShard, deadline: float | None) -> Iterator[None]:
    """Hold the shard (it takes calls between epochs) if it can be had before
    ``deadline`` (a ``time.monotonic()`` value; None: wait as long as it takes);
    otherwise DEADLINE_EXCEEDED and nothing is done: a call whose client has given up
    must not allocate blocks whose pfns nobody will read."""
    wait = -1.0 if deadline is None else deadline - time.monotonic()
    if (deadline is not None and wait <= 0) or not shard.lock.acquire(timeout=wait):
        raise deadline_exceeded(
            "deadline",
            None,
            "the call's deadline passed while it waited for the guest's shard (busy with "
            "an epoch); nothing was done",
        )
    try:
        yield
    finally:
        shard.lock.release()


class ShardApi:
    """GuestService's view of a shard (implements ``GuestShardApi``).

    Ops run at the shard's current simulated time, between epochs; what they do
    reaches the host with the next epoch's sync, so the host's prices for touches
    arrive with it (``lost_ns`` here is always 0). A client may free only blocks
    it allocated itself, so it can never free a workload's memory twice.
    """

    def within(self, wait_s: float | None):
        """The shard held if it can be had within ``wait_s`` (None: no deadline); see
        :func:`shard_within`. GuestService's calls that change a guest take it first."""
        return shard_within(self.shard, None if wait_s is None else time.monotonic() + wait_s)

    def __init__(
        self, shard: GuestShard, workload_factory: Callable[[str, dict], Any] | None = None
    ):
        self.shard = shard
        self.workload_factory = workload_factory

    def list_guests(self) -> Sequence[GuestInfo]:
        with self.shard.lock:
            out = []
            for gid, s in self.shard.slots.items():
                running = [w for w in (s.workload, *s.extra_workloads) if not w.finished]
                kind = type(running[-1]).__name__.lower() if running else ""
                out.append(
                    GuestInfo(gid, s.init.config.nr_pages, s.init.host_id, self.shard.now_ns, kind)
                )
            return out

    def apply_ops(self, guest_id: int, ops: Sequence[AllocOp | FreeOp | TouchOp]) -> ApplyOpsResult:
        shard = self.shard
        with shard.lock:
            try:
                return self._apply(guest_id, ops)
            finally:  # blocks the batch's frees claimed and did not free are held again
                shard.end_client_batch(guest_id)

    def _apply(self, guest_id: int, ops: Sequence[AllocOp | FreeOp | TouchOp]) -> ApplyOpsResult:
        shard = self.shard
        frees = self._check(guest_id, ops)  # everything, before changing anything
        results = []
        for i, op in enumerate(ops):
            if isinstance(op, AllocOp):
                results.append(
                    OpResult(pfns=shard.client_alloc(guest_id, op.order, op.migratetype, op.count))
                )
            elif isinstance(op, FreeOp):
                shard.client_free(guest_id, op.order, frees[i])
                results.append(OpResult(pfns=frees[i]))
            else:
                shard.client_touch(guest_id, np.asarray(op.starts), np.asarray(op.npages))
                results.append(OpResult())
        return ApplyOpsResult(results, shard.now_ns)

    def _check(self, guest_id: int, ops: Sequence[AllocOp | FreeOp | TouchOp]) -> dict:
        """Validate a batch as a whole (ValueError or RESOURCE_EXHAUSTED naming the op);
        returns each free's blocks by op index. A free counts the blocks earlier frees of
        the batch release as gone (they are claimed until the batch ends)."""
        shard = self.shard
        slot = shard.slot(guest_id)
        max_order = slot.init.config.max_order
        nr_pages = slot.init.config.nr_pages
        runs = sum(len(op.starts) for op in ops if isinstance(op, TouchOp))
        if runs > MAX_BATCH_RUNS or slot.link.pending_runs + runs > MAX_PENDING_RUNS:
            raise resource_exhausted(
                "touch.runs",
                runs,
                f"at most {MAX_BATCH_RUNS} runs per batch and {MAX_PENDING_RUNS} waiting for "
                "the next sync per guest: advance the experiment to apply them",
            )
        frees = {}
        asked = 0  # pages the batch's allocations ask for
        for i, op in enumerate(ops):
            kind = type(op).__name__[: -len("Op")].lower()
            if isinstance(op, (AllocOp, FreeOp)) and op.order > max_order:
                raise ValueError(
                    f"ops[{i}].{kind}.order={op.order}: above the guest's max_order {max_order}"
                )
            try:
                if isinstance(op, AllocOp):
                    asked += op.count << op.order
                    if asked > nr_pages:
                        raise ValueError(
                            f"alloc.count={op.count}: the batch would allocate {asked} "
                            f"pages, more than the guest's {nr_pages}"
                        )
                elif isinstance(op, FreeOp):
                    pfns = np.asarray(op.pfns, np.int64)
                    frees[i] = shard.check_client_free(guest_id, op.order, pfns, op.count)
                else:
                    shard.check_touch(guest_id, np.asarray(op.starts), np.asarray(op.npages))
            except ValueError as e:
                raise ValueError(f"ops[{i}].{e}") from None
        return frees

    def start_workload(
        self, guest_id: int, workload: str, params: Mapping[str, Any], duration_ns: int
    ) -> tuple[int, int]:
        if self.workload_factory is None:
            raise ValueError("workload: this shard was started without workload support")
        config = self.workload_factory(workload, dict(params))
        with self.shard.lock:
            return self.shard.start_workload(guest_id, config, duration_ns)

    def guest_state(self, guest_id: int) -> Mapping[str, Any]:
        return self.shard.guest_state(guest_id)
