"""How a guest shard reaches its hosts: the :class:`HostLink` port and its two implementations.

* :class:`GrpcHostLink`: HostService over real gRPC (one :class:`HostClient` per
  host, one SyncStream per server), encoding and decoding through
  :mod:`services.protocol.codec`.
* :class:`InProcessHostLink`: no sockets and no protobuf; plain messages go
  straight to the hosts' epoch barriers, found through a :class:`HostDirectoryPort`
  it is given (this package never imports the host).

Both run the same validation (on the host side, on the plain types), so the same
bad input is refused with the same status and details on either path (message
size: only when the in-process link is given ``max_message_bytes``).

:class:`HostClient` is the protobuf-level gRPC client (what a hostile or foreign
client speaks); it retries UNAVAILABLE (every HostService call is idempotent) and
puts a deadline on every call. SyncEpoch's deadline also bounds how long the host
waits for the other shards of the epoch.
"""

from __future__ import annotations

import time
from array import array
from typing import Any, Protocol

import grpc

from overcommit.v1 import host_pb2, host_pb2_grpc
from services.transport.client import RequestStream, RetryPolicy, ServiceClient
from services.transport.errors import resource_exhausted
from services.transport.security import ClientTls
from services.transport.status import status_field

from .codec import decode_outcome, encode_registration, encode_submission
from .messages import STREAMS_FIELD, EpochOutcome, EpochSubmission, GuestRegistration

MAX_LATENCY_SAMPLES = 1 << 20  # SyncEpoch latencies a link keeps (8 MiB)
SYNC_TIMEOUT_S = 120.0  # one sync may wait this long for the slowest shard of a host


# ------------------------------------------------------------------ ports


class HostLink(Protocol):
    """What an epoch driver needs of the hosts (the guest side's one port to them)."""

    def register(self, host_id: int, reg: GuestRegistration) -> int:
        """Register a guest; returns the host's next epoch. Idempotent."""
        ...

    def submit(self, host_id: int, sub: EpochSubmission) -> None:
        """Hand over one shard's submission (the host applies it when every due shard is in)."""
        ...

    def collect(self, host_id: int, sub: EpochSubmission) -> EpochOutcome:
        """The answer to a submitted ``sub``, waiting until its epochs are applied."""
        ...

    def sample(self, host_id: int, epoch: int) -> dict[str, int]:
        """The host's counters kept right after ``epoch`` (the end of a sample interval)."""
        ...

    def close(self) -> None: ...


class BarrierPort(Protocol):
    """What the in-process link needs of one host's epoch barrier."""

    def register_guest(self, reg: GuestRegistration) -> int: ...
    def submit(self, sub: EpochSubmission) -> EpochOutcome | None: ...
    def wait(self, shard_id: int, epoch: int, sequence: int, timeout_s: float) -> EpochOutcome: ...
    def sample_at(self, epoch: int, timeout_s: float) -> dict[str, int]: ...


class HostDirectoryPort(Protocol):
    def get(self, experiment_id: str, host_id: int) -> BarrierPort: ...


# ------------------------------------------------------------------ in-process


class InProcessHostLink:
    """Hosts in this process: plain messages to their barriers, no encoding.

    ``submit`` then ``collect`` lets one thread drive several shards of one host:
    submit every shard's message first, then collect the answers. With one thread
    an answer is either there or never comes, so by default (``timeout_s=0``)
    ``collect`` fails at once, naming the shards the host still waits for; give a
    timeout when other threads submit too. ``max_message_bytes`` (off by default:
    it costs an encoding) refuses what a gRPC server of that limit would refuse.
    """

    def __init__(
        self,
        experiment_id: str,
        directory: HostDirectoryPort,
        *,
        timeout_s: float = 0.0,
        max_message_bytes: int | None = None,
    ):
        self.experiment_id = experiment_id
        self.directory = directory
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes

    def _endpoint(self, host_id: int) -> BarrierPort:
        return self.directory.get(self.experiment_id, host_id)

    def register(self, host_id: int, reg: GuestRegistration) -> int:
        return self._endpoint(host_id).register_guest(reg)

    def submit(self, host_id: int, sub: EpochSubmission) -> None:
        if self.max_message_bytes is not None:
            size = encode_submission(self.experiment_id, host_id, sub).ByteSize()
            if size > self.max_message_bytes:
                raise resource_exhausted(
                    "request", size, f"message larger than max ({self.max_message_bytes} bytes)"
                )
        self._endpoint(host_id).submit(sub)

    def collect(self, host_id: int, sub: EpochSubmission) -> EpochOutcome:
        return self._endpoint(host_id).wait(sub.shard_id, sub.epoch, sub.sequence, self.timeout_s)

    def sync(self, host_id: int, sub: EpochSubmission) -> EpochOutcome:
        """Submit and wait for the answer (other threads may submit meanwhile)."""
        self.submit(host_id, sub)
        return self.collect(host_id, sub)

    def sample(self, host_id: int, epoch: int) -> dict[str, int]:
        return self._endpoint(host_id).sample_at(epoch, self.timeout_s)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ gRPC


class HostClient(ServiceClient):
    """HostService over a channel, message for message. Errors are ``grpc.RpcError``."""

    stub_class = host_pb2_grpc.HostServiceStub

    def register_guest(
        self, request: host_pb2.RegisterGuestRequest, timeout_s: float | None = None
    ) -> host_pb2.RegisterGuestResponse:
        return self.caller.unary(
            self.stub.RegisterGuest, request, idempotent=True, timeout_s=timeout_s
        )

    def sync_epoch(
        self, request: host_pb2.SyncEpochRequest, timeout_s: float | None = None
    ) -> host_pb2.SyncEpochResponse:
        return self.caller.unary(self.stub.SyncEpoch, request, idempotent=True, timeout_s=timeout_s)

    def sync_epochs(
        self, request: host_pb2.SyncEpochsRequest, timeout_s: float | None = None
    ) -> host_pb2.SyncEpochsResponse:
        return self.caller.unary(
            self.stub.SyncEpochs, request, idempotent=True, timeout_s=timeout_s
        )

    def get_host_state(
        self, request: host_pb2.GetHostStateRequest, timeout_s: float | None = None
    ) -> host_pb2.GetHostStateResponse:
        return self.caller.unary(
            self.stub.GetHostState, request, idempotent=True, timeout_s=timeout_s
        )


connect_host = HostClient.connect  # the name callers know


class GrpcHostLink:
    """Hosts behind HostService servers (``targets``: host id -> "host:port").

    ``submit`` encodes; ``collect`` sends and waits (see there). Channels open on
    first use.
    """

    def __init__(
        self,
        experiment_id: str,
        targets: dict[int, str],
        *,
        token: str | None = None,
        tls: ClientTls | None = None,
        timeout_s: float = SYNC_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        streaming: bool = True,
    ):
        self.experiment_id = experiment_id
        self.targets = dict(targets)
        self.token = token
        self.tls = tls
        self.timeout_s = timeout_s
        self.retry = retry
        self.streaming = streaming
        self._clients: dict[int, HostClient] = {}
        self._streams: dict[str, RequestStream] = {}  # per server (target)
        self._unary_only: set[str] = set()  # servers that refused a stream
        self.stream_retries = 0  # broken streams whose message was sent again
        # wall seconds of each SyncEpoch call, from sending to the answer (metadata)
        self.sync_latency_s: array[float] = array("d")
        self._pending: dict[tuple[int, int, int, int], tuple[host_pb2.SyncEpochRequest, Any]] = {}
        # answers that came with another host's, in one SyncEpochs call
        self._answers: dict[tuple[int, int, int, int], host_pb2.SyncEpochResponse] = {}

    def client(self, host_id: int) -> HostClient:
        client = self._clients.get(host_id)
        if client is None:
            client = self._clients[host_id] = connect_host(
                self.targets[host_id],
                tls=self.tls,
                token=self.token,
                experiment_id=self.experiment_id,
                timeout_s=self.timeout_s,
                retry=self.retry,
            )
        return client

    def register(self, host_id: int, reg: GuestRegistration) -> int:
        response = self.client(host_id).register_guest(
            encode_registration(self.experiment_id, host_id, reg)
        )
        return response.next_epoch

    def submit(self, host_id: int, sub: EpochSubmission) -> None:
        """Encode the submission; it is sent by :meth:`collect` (see there)."""
        request = encode_submission(self.experiment_id, host_id, sub)
        key = (host_id, sub.shard_id, sub.epoch, sub.sequence)
        self._answers.pop(key, None)  # an answer left by a call that failed is stale now
        self._pending[key] = (request, None)

    def collect(self, host_id: int, sub: EpochSubmission) -> EpochOutcome:
        """Send the submission and wait for the answer.

        A link that carries one shard (a Ray shard actor) sends, as one SyncEpochs
        request on its stream to that server (or one blocking call, if the server
        refuses streams), its messages of this epoch to every host of the same server
        (a host actor serves several hosts); the answers of the others are kept for
        their own ``collect``. When submissions of other shards are pending too (one
        thread driving several shards), every pending one goes out at once as a
        SyncEpoch future first: the host applies an epoch only when all its shards
        are in. UNAVAILABLE is retried (both calls are idempotent)."""
        key = (host_id, sub.shard_id, sub.epoch, sub.sequence)
        answered = self._answers.pop(key, None)
        if answered is not None:
            return decode_outcome(answered)
        if any(k[1] != sub.shard_id for k in self._pending):
            self._send_pending()
        request, future = self._pending[key]
        client = self.client(host_id)
        t0 = time.perf_counter()
        if future is None:
            response = self._call(client, host_id, key, request)
        else:
            try:
                response = future.result()
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                response = client.sync_epoch(request, timeout_s=self.timeout_s)
        del self._pending[key]  # answered (a failed call leaves it to be sent again)
        if len(self.sync_latency_s) < MAX_LATENCY_SAMPLES:  # metadata (bench/load.py)
            self.sync_latency_s.append(time.perf_counter() - t0)
        return decode_outcome(response)

    def _call(
        self,
        client: HostClient,
        host_id: int,
        key: tuple[int, int, int, int],
        request: host_pb2.SyncEpochRequest,
    ) -> host_pb2.SyncEpochResponse:
        """One blocking call for ``request`` and every unsent message of the same shard,
        epoch and sequence to a host of the same server."""
        target = self.targets[host_id]
        more = [
            k
            for k, (_, f) in self._pending.items()
            if f is None and k != key and k[1:] == key[1:] and self.targets[k[0]] == target
        ]
        batch = host_pb2.SyncEpochsRequest(requests=[request, *(self._pending[k][0] for k in more)])
        responses = None
        if self.streaming and target not in self._unary_only:
            responses = self._on_stream(target, client, batch)
        if responses is None:
            if not more:
                return client.sync_epoch(request, timeout_s=self.timeout_s)
            responses = client.sync_epochs(batch, timeout_s=self.timeout_s).responses
        if len(responses) != len(batch.requests):
            raise ValueError(
                f"SyncEpochs answered {len(responses)} of {len(batch.requests)} messages"
            )
        for k in more:  # sent and answered (a failed call leaves them to be sent again)
            del self._pending[k]
        self._answers.update(zip(more, responses[1:], strict=True))
        return responses[0]

    def _on_stream(self, target: str, client: HostClient, batch: host_pb2.SyncEpochsRequest) -> Any:
        """The answers to ``batch`` over the server's SyncStream, opened on first use; or
        None when the server refuses a stream (no room, or no SyncStream): this link then
        uses unary calls with that server. A broken stream (UNAVAILABLE) is replaced and
        the batch sent again, as unary calls are retried (every message is idempotent)."""
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            stream = self._streams.get(target)
            fresh = stream is None
            if stream is None:
                stream = self._streams[target] = RequestStream(
                    client.stub.SyncStream,
                    metadata=client.caller.metadata,
                    timeout_s=self.timeout_s,
                )
            try:  # every attempt within the sync's one deadline, as unary retries are
                answer = stream.call(batch, max(deadline - time.monotonic(), 0.001))
                _check_answers(batch, answer.responses)
            except grpc.RpcError as err:
                self._drop_stream(target)
                if fresh and _stream_refused(err):
                    self._unary_only.add(target)
                    return None
                pause = client.caller.retry.retry_pause(err, attempt, deadline - time.monotonic())
                if pause is None:
                    raise
                self.stream_retries += 1
                time.sleep(pause)
            except ValueError:  # a stream that answers out of turn is not used again
                self._drop_stream(target)
                raise
            else:
                return answer.responses

    def _drop_stream(self, target: str) -> None:
        self._streams.pop(target).close()

    def _send_pending(self) -> None:
        for key, (request, future) in self._pending.items():
            if future is None:
                client = self.client(key[0])
                self._pending[key] = (
                    request,
                    client.stub.SyncEpoch.future(
                        request, timeout=self.timeout_s, metadata=client.caller.metadata
                    ),
                )

    def sync(self, host_id: int, sub: EpochSubmission) -> EpochOutcome:
        self.submit(host_id, sub)
        return self.collect(host_id, sub)

    def sample(self, host_id: int, epoch: int) -> dict[str, int]:
        response = self.client(host_id).get_host_state(
            host_pb2.GetHostStateRequest(
                experiment_id=self.experiment_id, host_id=host_id, sample_epoch=epoch
            ),
            timeout_s=self.timeout_s,
        )
        return dict(response.counters)

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._answers.clear()


def _check_answers(batch: host_pb2.SyncEpochsRequest, responses: Any) -> None:
    """The answers are to these requests (one each, for their epoch and sequence):
    anything else is a broken protocol, never results to apply."""
    got = [(a.epoch, a.sequence) for a in responses]
    sent = [(r.epoch, r.sequence) for r in batch.requests]
    if got != sent:
        raise ValueError(f"SyncStream answered (epoch, sequence) {got} to requests for {sent}")


def _stream_refused(err: grpc.RpcError) -> bool:
    """The server has no SyncStream, or no room for one more stream."""
    if err.code() == grpc.StatusCode.UNIMPLEMENTED:
        return True
    if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    return status_field(err) == STREAMS_FIELD
