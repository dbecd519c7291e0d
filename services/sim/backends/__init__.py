"""Backends: where a plan's shards and hosts run (in this process, or as Ray actors).

A backend starts a :class:`Session` for a plan; the simulation loop
(:mod:`services.sim.simulation`) drives every session the same way, and every
session runs its shards with the one epoch driver
(:class:`services.guest.epoch_driver.EpochDriver`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from services.guest.epoch_driver import ChunkResults, GroupSamples, HostSamples
from services.metrics import MetricsOptions
from services.protocol.snapshot import PartInfo

from ..plan import SimPlan


class Session(Protocol):
    """One simulation's running entities (in-process objects or Ray actors)."""

    # True: its actors serve /metrics themselves (metrics_targets lists them); False:
    # the coordinator exports its hosts and groups from the samples it records
    exports_metrics: bool
    # True: checkpoint_begin returns before the parts are written (checkpoint_end waits)
    background_checkpoints: bool

    def run_chunks(
        self,
        first_epoch: int,
        chunks: Sequence[tuple[int, int]],
        pressure: bool,
        last_hosts: HostSamples,
    ) -> ChunkResults:
        """Run sample intervals ((start ns, epochs) each), the first as ``pressure``
        says and the others as the sync policy decides; the results cover every
        shard (groups summed) and every host."""
        ...

    def skip_to(self, t_ns: int) -> None: ...
    def group_samples(self) -> GroupSamples: ...
    def host_samples(self) -> HostSamples: ...
    def checkpoint_begin(self, directory: str) -> None:
        """Start a checkpoint of this sample boundary: every host and shard writes its
        state as a part file in ``directory`` (one per host and per shard, whatever the
        actor grouping). The session may go on before the parts are written
        (:meth:`checkpoint_end` waits for them)."""
        ...

    def checkpoint_end(self) -> list[PartInfo]: ...

    def restore(self, directory: str, parts: Sequence[PartInfo]) -> None:
        """Roll every host and shard back to a checkpoint."""
        ...

    def recover(self) -> None:
        """After :class:`ActorLostError`: every host and shard back in its initial state
        (restarted where lost, reset elsewhere), guests registered; the caller then
        restores the last checkpoint, if any."""
        ...

    def stats(self) -> dict[str, object]:
        """Wall-clock timings of the session (metadata, never results)."""
        ...

    def close(self) -> None: ...


class ActorLostError(RuntimeError):
    """An actor of the session died (or was lost with its process). The session's
    :meth:`Session.recover` brings every actor back (restarted ones in their initial
    state); the simulation then rolls back to its last checkpoint."""


def due_kills(plan: SimPlan, done: set[int], chunks: Sequence[tuple[int, int]]) -> list[int]:
    """The plan's kills (indices into ``plan.kills``) not yet done whose time falls in
    the sample intervals ``chunks`` ((start ns, epochs) each)."""
    if not plan.kills or not chunks:
        return []
    t0 = chunks[0][0]
    end = chunks[-1][0] + chunks[-1][1] * plan.epoch_ns
    return [i for i, k in enumerate(plan.kills) if i not in done and t0 <= k.at_ns < end]


class Backend(Protocol):
    name: str
    nr_shards_default: int

    def start(self, plan: SimPlan, metrics: MetricsOptions | None = None) -> Session: ...
    def close(self) -> None: ...


def make_backend(transport: str, address: str | None = None) -> Backend:
    """``inprocess`` (no Ray, no sockets) or ``grpc`` (Ray actors talking gRPC)."""
    if transport == "inprocess":
        from .inprocess import InProcessBackend

        return InProcessBackend()
    if transport != "grpc":
        raise ValueError(f"transport={transport!r}: must be 'grpc' or 'inprocess'")
    from .ray_cluster import RayBackend

    return RayBackend(address=address)


@contextmanager
def backend_for(
    backend: Backend | None, transport: str, address: str | None = None
) -> Iterator[Backend]:
    """``backend`` as it is (the caller owns it), else a new one that is closed on exit."""
    if backend is not None:
        yield backend
        return
    own = make_backend(transport, address)
    try:
        yield own
    finally:
        own.close()
