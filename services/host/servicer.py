"""HostService over gRPC: decode, call the epoch barrier, encode. No domain logic here.

::

    directory = HostDirectory([EpochBarrier("exp-1", 0, Host(0, config))])
    with start_host_server(directory, ServerOptions(port=0)) as server:
        link = GrpcHostLink("exp-1", {0: server.address})
        link.register(0, registration)
        outcome = link.sync(0, submission)

Validation runs in the barrier on the decoded plain types (the in-process link
runs the same); a refusal ends the call with the status of the same name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from overcommit.v1 import host_pb2, host_pb2_grpc
from services.protocol.codec import (
    decode_header,
    decode_registration,
    decode_submission,
    encode_outcome,
)
from services.protocol.messages import STREAMS_FIELD, EpochSubmission
from services.transport.errors import StatusError, require, resource_exhausted
from services.transport.security import check_experiment_binding
from services.transport.server import (
    DEFAULT_MAX_WORKERS,
    GrpcServer,
    ServerOptions,
    ServiceBinding,
    build_server,
)
from services.transport.status import translate_errors

from .barrier import EpochBarrier
from .directory import HostDirectory

MAX_WAIT_S = 600.0  # a SyncEpoch without a deadline waits at most this long for other shards
MAX_BATCH = 1024  # messages in one SyncEpochs call (each for a different host)


def streams_allowed(workers: int) -> int:
    """SyncStream streams a server of ``workers`` worker threads lets in at once: each
    holds a worker while open, so at most half; the rest serve unary calls."""
    return workers // 2


MAX_STREAMS = streams_allowed(DEFAULT_MAX_WORKERS)  # a servicer built without options: 16


def host_server_workers(shards: int) -> int:
    """Worker threads for a host server that ``shards`` shards sync with: each shard holds
    one while its stream is open (or its unary sync waits for the other shards), and as
    many again are left for samples, registrations and shards that fall back to unary
    calls."""
    if shards < 0:
        raise ValueError(f"shards={shards}: must be >= 0")
    return max(DEFAULT_MAX_WORKERS, 2 * shards + 8)


def _timeout_s(context: grpc.ServicerContext, max_wait_s: float) -> float:
    remaining = context.time_remaining()
    return max_wait_s if remaining is None else min(remaining, max_wait_s)


class HostServicer(host_pb2_grpc.HostServiceServicer):
    """HostService for the barriers in ``directory``."""

    def __init__(
        self,
        directory: HostDirectory,
        *,
        max_wait_s: float = MAX_WAIT_S,
        max_streams: int = MAX_STREAMS,
    ):
        self.directory = directory
        self.max_wait_s = max_wait_s
        self.max_streams = max_streams
        self._streams = 0  # SyncStream streams open
        self._lock = threading.Lock()

    @property
    def open_streams(self) -> int:
        """SyncStream streams open now."""
        return self._streams

    @translate_errors
    def RegisterGuest(
        self, request: host_pb2.RegisterGuestRequest, context: grpc.ServicerContext
    ) -> host_pb2.RegisterGuestResponse:
        check_experiment_binding(context, request.experiment_id)
        barrier = self.directory.get(request.experiment_id, request.host_id)
        reg = decode_registration(request)
        next_epoch = barrier.register_guest(reg)
        nr_pages = barrier.registration(reg.guest_id).nr_pages
        return host_pb2.RegisterGuestResponse(
            guest_id=reg.guest_id, host_id=barrier.host_id, nr_pages=nr_pages, next_epoch=next_epoch
        )

    @translate_errors
    def SyncEpoch(
        self, request: host_pb2.SyncEpochRequest, context: grpc.ServicerContext
    ) -> host_pb2.SyncEpochResponse:
        check_experiment_binding(context, request.experiment_id)
        barrier = self.directory.get(request.experiment_id, request.host_id)
        outcome = barrier.submit(_decode_checked(barrier, request))
        if outcome is None:
            outcome = barrier.wait(
                request.shard_id,
                request.epoch,
                request.sequence,
                _timeout_s(context, self.max_wait_s),
                context.is_active,
            )
        return encode_outcome(outcome)

    @translate_errors
    def SyncEpochs(
        self, request: host_pb2.SyncEpochsRequest, context: grpc.ServicerContext
    ) -> host_pb2.SyncEpochsResponse:
        return self._sync_epochs(request, context, True)

    @translate_errors
    def SyncStream(
        self, request_iterator: Iterator[host_pb2.SyncEpochsRequest], context: grpc.ServicerContext
    ) -> Iterator[host_pb2.SyncEpochsResponse]:
        """SyncEpochs, request by request, over one stream. A stream holds a worker
        thread while it is open, so at most ``max_streams`` are open at once; one more is
        refused with RESOURCE_EXHAUSTED (field ``streams``) and its client falls back to
        SyncEpochs calls."""
        with self._lock:
            room = self._streams < self.max_streams
            if room:
                self._streams += 1
        if not room:
            raise resource_exhausted(
                STREAMS_FIELD,
                self.max_streams,
                "as many SyncStream streams are open as this server allows; use SyncEpochs",
            )
        try:
            for request in _until_cancelled(request_iterator):
                # a one-message request is refused as SyncEpoch would refuse it
                yield self._sync_epochs(request, context, len(request.requests) > 1)
        finally:
            with self._lock:
                self._streams -= 1

    def _sync_epochs(
        self, request: host_pb2.SyncEpochsRequest, context: grpc.ServicerContext, named: bool
    ) -> host_pb2.SyncEpochsResponse:
        """SyncEpochs; a refusal names its message's fields ``requests[i].field`` when
        ``named``, else as SyncEpoch does (``field``)."""
        messages = request.requests
        require(
            1 <= len(messages) <= MAX_BATCH,
            "requests",
            len(messages),
            f"must hold 1 to {MAX_BATCH} messages",
        )
        first = messages[0]
        check_experiment_binding(context, first.experiment_id)
        plan: list[tuple[EpochBarrier, EpochSubmission]] = []
        hosts: set[int] = set()
        for i, message in enumerate(messages):
            for name in ("experiment_id", "shard_id", "epoch", "sequence"):
                require(
                    getattr(message, name) == getattr(first, name),
                    f"requests[{i}].{name}",
                    getattr(message, name),
                    f"every message of a call has the first one's {name}",
                )
            require(
                message.host_id not in hosts,
                f"requests[{i}].host_id",
                message.host_id,
                "a host appears twice in one call",
            )
            hosts.add(message.host_id)
            with _element(i, named):
                barrier = self.directory.get(message.experiment_id, message.host_id)
                sub = _decode_checked(barrier, message)
                barrier.check(sub)
            plan.append((barrier, sub))
        outcomes = []
        for i, (barrier, sub) in enumerate(plan):
            with _element(i, named):
                outcomes.append(barrier.submit(sub, checked=True))
        timeout_s = _timeout_s(context, self.max_wait_s)
        response = host_pb2.SyncEpochsResponse()
        for i, ((barrier, sub), stored) in enumerate(zip(plan, outcomes, strict=True)):
            outcome = stored
            if outcome is None:
                with _element(i, named):
                    outcome = barrier.wait(
                        sub.shard_id, sub.epoch, sub.sequence, timeout_s, context.is_active
                    )
            response.responses.append(encode_outcome(outcome))
        return response

    @translate_errors
    def GetHostState(
        self, request: host_pb2.GetHostStateRequest, context: grpc.ServicerContext
    ) -> host_pb2.GetHostStateResponse:
        check_experiment_binding(context, request.experiment_id)
        barrier = self.directory.get(request.experiment_id, request.host_id)
        if request.HasField("sample_epoch"):
            counters = barrier.sample_at(request.sample_epoch, _timeout_s(context, self.max_wait_s))
            response = host_pb2.GetHostStateResponse(host_id=request.host_id)
            response.counters.update({k: int(v) for k, v in counters.items()})
            return response
        state = barrier.state()
        response = host_pb2.GetHostStateResponse(
            host_id=state["host_id"],
            next_epoch=state["next_epoch"],
            epoch_end_ns=state["epoch_end_ns"],
            shard_ids=state["shard_ids"],
        )
        response.counters.update({k: int(v) for k, v in state["counters"].items()})
        for guest_id, shard_id, nr_pages, counters in state["guests"]:
            g = response.guests.add(guest_id=guest_id, shard_id=shard_id, nr_pages=nr_pages)
            g.counters.update({k: int(v) for k, v in counters.items()})
        return response


def _decode_checked(barrier: EpochBarrier, message: host_pb2.SyncEpochRequest) -> EpochSubmission:
    """Decode a message's guests once its header passed the barrier's checks, refusing
    more guests than the host has registered before any is built (a retry of a stored
    message is decoded as it is: it was accepted once)."""
    new = barrier.check_header(decode_header(message))
    return decode_submission(message, barrier.guest_count() if new else None)


def _until_cancelled(requests: Iterator[host_pb2.SyncEpochsRequest]) -> Iterator[Any]:
    """The stream's requests until the client half-closes it or goes away (a cancelled
    stream has nobody left to answer)."""
    try:
        yield from requests
    except grpc.RpcError:
        return


@contextmanager
def _element(index: int, named: bool = True) -> Iterator[None]:
    """Name the message of a SyncEpochs call a refusal is about (``requests[i].field``;
    unless not ``named``)."""
    try:
        yield
    except StatusError as err:
        if not named:
            raise
        field = f"requests[{index}].{err.field}" if err.field else f"requests[{index}]"
        raise StatusError(err.code(), field, err.value, err.reason) from err


def host_service_binding(
    directory: HostDirectory, max_streams: int = MAX_STREAMS
) -> ServiceBinding:
    """What :func:`services.transport.server.build_server` needs to serve HostService."""
    return ServiceBinding(
        host_pb2.DESCRIPTOR.services_by_name["HostService"].full_name,
        host_pb2_grpc.add_HostServiceServicer_to_server,
        HostServicer(directory, max_streams=max_streams),
    )


def start_host_server(
    directory: HostDirectory,
    options: ServerOptions | None = None,
    extra_services: tuple[ServiceBinding, ...] = (),
) -> GrpcServer:
    """Build a server for ``directory`` (bound, not started; use ``with`` or ``start()``).
    It lets in SyncStream streams up to half its workers."""
    options = options or ServerOptions()
    binding = host_service_binding(directory, max_streams=streams_allowed(options.max_workers))
    return build_server(options, [binding, *extra_services])
