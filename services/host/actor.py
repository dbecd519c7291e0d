"""The host actor: host core models behind one HostService gRPC server.

:class:`HostRunner` is a plain class; :func:`remote_class` makes it a Ray actor.
One actor may hold several hosts (``hosts``: host id -> HostConfig): the server
routes each call by (experiment id, host id), so results do not depend on how
hosts are grouped into actors.
"""

from __future__ import annotations

from services.actor_support import node_id, was_restarted
from services.host.core.config import HostConfig
from services.host.core.host import Host, warm_up
from services.metrics import (
    MetricsEndpoint,
    MetricsOptions,
    SnapshotCollector,
    entity_rows,
    guest_rows,
)
from services.protocol.messages import GuestRegistration
from services.protocol.snapshot import (
    CheckpointWriter,
    PartInfo,
    host_part,
    read_part,
)
from services.transport.faults import ReplyFaultInterceptor, ReplyFaults
from services.transport.security import TokenStore
from services.transport.server import ServerOptions

from .barrier import EpochBarrier
from .directory import HostDirectory
from .servicer import host_server_workers, start_host_server


class HostRunner:
    """Host epoch barriers over host cores, served by one HostService server on loopback."""

    def __init__(
        self,
        experiment_id: str,
        hosts: dict[int, HostConfig],
        token: str | None = None,
        metrics: MetricsOptions | None = None,
        faults: ReplyFaults | None = None,
        shards: int = 1,
    ):
        """``shards``: how many guest shards sync with these hosts (the server's worker
        threads are sized for them, see :func:`host_server_workers`)."""
        self.experiment_id = experiment_id
        distinct: list[HostConfig] = []
        for cfg in hosts.values():
            if cfg not in distinct:  # equal configs run the same kernels: warm each kind once
                distinct.append(cfg)
                warm_up(cfg)  # numba kernels load now, not in the first timed epoch
        self._writer = CheckpointWriter()  # checkpoints written in the background
        self.endpoints = {
            h: EpochBarrier(experiment_id, h, Host(h, cfg)) for h, cfg in sorted(hosts.items())
        }
        self.directory = HostDirectory(self.endpoints.values())
        tokens = TokenStore(tokens={experiment_id: token}) if token else None
        self.faults = ReplyFaultInterceptor(faults) if faults and faults.active else None
        self.server = start_host_server(
            self.directory,
            ServerOptions(
                port=0,
                tokens=tokens,
                interceptors=(self.faults,) if self.faults else (),
                max_workers=host_server_workers(shards),
            ),
        )
        self.server.start()
        self.metrics = metrics
        self._collector: SnapshotCollector | None = None
        self._endpoint: MetricsEndpoint | None = None
        if metrics is not None:  # /metrics on loopback: this actor's hosts at the last sample
            self._collector = SnapshotCollector(metrics.labels, metrics.namer, metrics.help)
            self._endpoint = MetricsEndpoint([self._collector])
            self._export(self.samples())

    def metrics_address(self) -> str | None:
        return self._endpoint.address if self._endpoint else None

    def _export(self, hosts: dict[int, dict[str, int]]) -> None:
        """The snapshot /metrics serves: every host's counters at the last sample and,
        if asked, each host's top-k guests by backed memory (label guest)."""
        m = self.metrics
        if m is None or self._collector is None:
            return
        rows = entity_rows("host", hosts, m.host_names)
        if m.top_guests:
            for h, ep in self.endpoints.items():
                host = m.host_names.get(h, str(h))
                rows += guest_rows(host, ep.host.top_guests(m.top_guests), m.guest_names)
        self._collector.update(rows)

    def address(self) -> str:
        return self.server.address

    def register_guests(self, registrations: list[tuple[int, GuestRegistration]]) -> None:
        """Register (host id, registration) pairs, in guest-id order, before any shard starts.

        A host lays its guests out in registration order, and reclaim walks them
        in that order; the Ray session registers every guest here, once, so the
        layout never depends on which shard actor happens to start first.
        """
        for host_id, reg in sorted(registrations, key=lambda pair: pair[1].guest_id):
            self.endpoints[host_id].register_guest(reg)
        self._export(self.samples())  # /metrics shows the guests from the start

    def samples_at(
        self, epochs: list[int], timeout_s: float = 600.0
    ) -> tuple[list[dict[int, dict[str, int]]], list[float]]:
        """Per epoch of ``epochs`` (each the last of a sample interval): every host's
        counters kept right after it, and this actor's wall seconds spent applying
        epochs by then (metadata)."""
        out = []
        for epoch in epochs:
            out.append({h: ep.sample_at(epoch, timeout_s) for h, ep in self.endpoints.items()})
        if out:
            self._export(out[-1])
        return out, [sum(ep.apply_wall_s_at(e) for ep in self.endpoints.values()) for e in epochs]

    # -- coordinated checkpoints and recovery

    def checkpoint_begin(self, directory: str) -> None:
        """Start writing each host's state as it is now, from a forked copy of this
        process (the hosts go on at once); :meth:`checkpoint_end` collects the parts."""
        self._writer.begin(
            directory,
            [(host_part(h), ep) for h, ep in self.endpoints.items()],
            [ep.lock for ep in self.endpoints.values()],
        )

    def checkpoint_end(self) -> list[PartInfo]:
        return self._writer.end()

    def restore(self, directory: str, parts: list[PartInfo]) -> None:
        """Roll every host of this actor back to a checkpoint (each part checked first)."""
        by_name = {p.name: p for p in parts}
        saved = {h: read_part(directory, by_name[host_part(h)]) for h in self.endpoints}
        for h, ep in self.endpoints.items():
            ep.restore(saved[h])
        self._export(self.samples())

    def process(self) -> dict[str, object]:
        """This actor's worker process id and whether Ray restarted it (fault tests)."""
        import os

        return {"pid": os.getpid(), "restarted": was_restarted(), "node": node_id()}

    def fault_counts(self) -> dict[str, int]:
        """Replies dropped and delayed by fault injection so far."""
        f = self.faults
        return {"dropped": f.dropped if f else 0, "delayed": f.delayed if f else 0}

    def timings(self) -> dict[str, float]:
        """Wall-clock seconds this actor's hosts spent applying epochs (metadata, not results)."""
        return {"apply_s": sum(ep.apply_wall_s for ep in self.endpoints.values())}

    def samples(self) -> dict[int, dict[str, int]]:
        return {h: dict(ep.host.host_counters()) for h, ep in self.endpoints.items()}

    def close(self) -> None:
        self.server.stop()
        if self._endpoint is not None:
            self._endpoint.close()


def remote_class():
    import ray

    return ray.remote(num_cpus=0)(HostRunner)
