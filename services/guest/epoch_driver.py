"""The one epoch loop: guest shards advance in spans of epochs and sync with their hosts.

:class:`EpochDriver` is a plain class behind two ports: a
:class:`~services.protocol.clients.HostLink` (gRPC or in-process) to reach the
hosts, and a :class:`SyncDecision` (the simulation layer's sync policy) that
says how many epochs one sync covers. The Ray shard actor drives its one shard
with it, the in-process session drives every shard, and ``bench/grpc_sync.py``
drives shards over real gRPC from one thread: the loop exists once.

One sample interval (a *chunk*: ``count`` epochs from ``t0_ns``) is cut into
spans of ``sync_epochs`` epochs. A shard runs a span, submits one message per
host, and after every shard of the driver has submitted, collects the answers.
A shard syncs only in spans in which its guests act (and always in the last
span of a chunk, whose message asks the hosts to keep a sample); it tells each
host the epoch of its next message, so hosts never wait for it in between.
At every sample boundary the driver reads every host's kept counters and asks
the policy whether the next interval syncs every epoch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.protocol.clients import HostLink
from services.protocol.messages import EpochSubmission

from .shard import GuestShard, merge_group_samples

HostSamples = dict[int, dict[str, int]]  # host id -> counters at a sample boundary
GroupSamples = dict[str, dict[str, int]]  # guest group -> summed counters


class SyncDecision(Protocol):
    """The sync policy (``services.sim.sync_policy.SyncPolicy``)."""

    def sync_epochs(self, pressure: bool) -> int: ...
    def under_pressure(
        self, prev: Mapping[int, Mapping[str, int]], cur: Mapping[int, Mapping[str, int]]
    ) -> bool: ...


@dataclass
class ChunkResults:
    """What :meth:`EpochDriver.run_chunks` returns, one entry per sample interval."""

    groups: list[GroupSamples] = field(default_factory=list)  # this driver's shards, summed
    hosts: list[HostSamples] = field(default_factory=list)  # every host's kept counters
    pressure: list[bool] = field(default_factory=list)  # the decision each interval ran with
    guest_wall_s: list[float] = field(default_factory=list)  # wall time in guests (metadata)
    next_pressure: bool = False  # the decision for the interval after the last
    events: list[int | None] = field(default_factory=list)  # each shard's next event after the last


def span_count(epochs: int, sync_epochs: int) -> int:
    """Spans of ``sync_epochs`` epochs needed to cover ``epochs`` (the last may be shorter)."""
    return -(-epochs // sync_epochs)


class EpochDriver:
    """Runs ``shards`` through sample intervals, syncing with hosts through ``link``.

    ``host_ids`` are every host of the experiment (the pressure rule reads them all);
    ``epoch_ns`` is the length of one epoch.
    """

    def __init__(
        self,
        shards: Sequence[GuestShard],
        link: HostLink,
        policy: SyncDecision,
        host_ids: Sequence[int],
        epoch_ns: int,
    ):
        if epoch_ns <= 0:
            raise ValueError(f"epoch_ns={epoch_ns}: must be > 0")
        self.epoch_ns = epoch_ns
        self.shards = list(shards)
        self.link = link
        self.policy = policy
        self.host_ids = sorted(host_ids)
        self._answer_samples: dict[
            tuple[int, int], dict[str, int]
        ] = {}  # (host, epoch) -> counters
        self.wall = {"guests_s": 0.0, "sync_s": 0.0, "samples_s": 0.0}  # metadata, not results

    def run_chunks(
        self,
        first_epoch: int,
        chunks: Sequence[tuple[int, int]],
        pressure: bool,
        last_hosts: HostSamples,
    ) -> ChunkResults:
        """Run sample intervals (``chunks``: (start ns, epochs) each) one after another.

        The first runs as ``pressure`` says; each later one as the policy decides
        from every host's counters at its start (``last_hosts``: at the boundary
        before the first).
        """
        out = ChunkResults()
        epoch, prev = first_epoch, dict(last_hosts)
        for t0_ns, count in chunks:
            before = self.wall["guests_s"]
            out.pressure.append(pressure)
            out.events = self.run_epochs(epoch, t0_ns, count, self.policy.sync_epochs(pressure))
            out.guest_wall_s.append(self.wall["guests_s"] - before)
            epoch += count
            w0 = time.perf_counter()
            out.groups.append(self.group_samples())
            hosts = {h: self._host_sample(h, epoch - 1) for h in self.host_ids}
            out.hosts.append(hosts)
            pressure = self.policy.under_pressure(prev, hosts)
            prev = hosts
            self.wall["samples_s"] += time.perf_counter() - w0
        out.next_pressure = pressure
        return out

    def run_epochs(
        self, first_epoch: int, t0_ns: int, count: int, sync_epochs: int
    ) -> list[int | None]:
        """Run the epochs [first_epoch, first_epoch + count) from ``t0_ns``, syncing once
        per ``sync_epochs`` epochs in the spans in which a shard's guests act; return
        each shard's next event (ns, or None)."""
        epoch_ns = self.epoch_ns
        span_ns = sync_epochs * epoch_ns
        nr_spans = span_count(count, sync_epochs)
        self._answer_samples.clear()  # only this chunk's boundary is asked for
        due = [0] * len(self.shards)  # shard -> the next span it runs
        for k in range(nr_spans):
            t = t0_ns + k * span_ns
            epochs = min(sync_epochs, count - k * sync_epochs)
            ran = [i for i, d in enumerate(due) if d == k]
            sent = []
            for i in ran:
                shard = self.shards[i]
                w0 = time.perf_counter()
                ops = shard.run_span(t, epochs, epoch_ns)
                due[i] = shard.next_sync_index(t0_ns, k, nr_spans, span_ns)
                self.wall["guests_s"] += time.perf_counter() - w0
                next_epoch = first_epoch + due[i] * sync_epochs if due[i] < nr_spans else 0
                for host_id in shard.host_ids():
                    sub = EpochSubmission(
                        shard_id=shard.shard_id,
                        epoch=first_epoch + k * sync_epochs,
                        sequence=0,
                        epoch_end_ns=t + epochs * epoch_ns,
                        guests=tuple(g for g in ops[host_id] if not g.is_empty()),
                        next_epoch=next_epoch,
                        epochs=epochs,
                        sample=k == nr_spans - 1,
                    )
                    self.link.submit(host_id, sub)
                    sent.append((shard, host_id, sub))
            w0 = time.perf_counter()
            for shard, host_id, sub in sent:
                outcome = self.link.collect(host_id, sub)
                if outcome.sample is not None:  # the host's counters at this sample boundary
                    self._answer_samples[(host_id, sub.last_epoch)] = outcome.sample
                shard.apply_outcomes(outcome.guests)
            self.wall["sync_s"] += time.perf_counter() - w0
            for i in ran:  # nothing to do until its next span: skip the time in between
                if k + 1 < due[i] < nr_spans:
                    self.shards[i].skip_to(t0_ns + due[i] * span_ns)
        return [s.next_event_ns() for s in self.shards]

    def _host_sample(self, host_id: int, epoch: int) -> dict[str, int]:
        """A host's counters kept after ``epoch`` (the end of a sample interval): from
        the answer to a sync of this driver, else asked of the host."""
        kept = self._answer_samples.pop((host_id, epoch), None)
        if kept is not None:
            return kept
        return self.link.sample(host_id, epoch)

    def skip_to(self, t_ns: int) -> None:
        for shard in self.shards:
            shard.skip_to(t_ns)

    def group_samples(self) -> GroupSamples:
        return merge_group_samples(s.sample() for s in self.shards)
