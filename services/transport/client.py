"""Client side: channels, deadlines on every call, retries of UNAVAILABLE, token metadata.

:class:`RpcCaller` is what the service clients call through. Every call gets a
deadline (``timeout_s``). Calls marked idempotent are retried on UNAVAILABLE with
exponential backoff while the deadline allows; that is safe because the host
applies a SyncEpoch once per (shard, epoch, sequence), registrations repeat
harmlessly and reads change nothing. Non-idempotent calls (ApplyOps, Advance,
CreateExperiment, StartWorkload) are never retried here.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import grpc

from services.transport.security import ClientTls, bearer_metadata
from services.transport.server import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for UNAVAILABLE: initial, x multiplier, capped, bounded attempts."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.02
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts}: must be >= 1")
        if self.initial_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("initial_backoff_s must be >= 0 and multiplier >= 1")

    def backoff_s(self, attempt: int) -> float:
        """Pause after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))

    def retry_pause(self, err: grpc.RpcError, attempt: int, time_left_s: float) -> float | None:
        """The pause before trying again after ``err`` ended attempt ``attempt`` (1-based),
        or None when it is not tried again: only UNAVAILABLE is, within ``max_attempts``
        and when the pause ends before the call's deadline (``time_left_s`` away)."""
        pause = self.backoff_s(attempt)
        if (
            err.code() != grpc.StatusCode.UNAVAILABLE
            or attempt >= self.max_attempts
            or pause >= time_left_s
        ):
            return None
        return pause


@dataclass(frozen=True)
class ChannelOptions:
    """Where to connect and how."""

    target: str  # "127.0.0.1:50051"
    tls: ClientTls | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


def make_channel(options: ChannelOptions) -> grpc.Channel:
    """A channel to ``options.target``; TLS (and mutual TLS) when ``options.tls`` is set."""
    channel_args: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
    ]
    if options.tls is None:
        return grpc.insecure_channel(options.target, options=channel_args)
    if options.tls.server_name_override:
        channel_args.append(("grpc.ssl_target_name_override", options.tls.server_name_override))
    return grpc.secure_channel(options.target, options.tls.credentials(), options=channel_args)


class RpcCaller:
    """Calls stub methods with a deadline, token metadata and (if idempotent) retries."""

    def __init__(
        self,
        *,
        token: str | None = None,
        experiment_id: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s}: must be > 0")
        self.experiment_id = experiment_id  # the experiment an experiment token opens
        self.metadata = bearer_metadata(token, experiment_id)
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self.retries = 0  # UNAVAILABLE attempts retried, for tests and metrics

    def unary(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        idempotent: bool,
        timeout_s: float | None = None,
    ) -> Any:
        """One unary call; raises ``grpc.RpcError`` with the final status."""
        deadline = self._clock() + (timeout_s or self.timeout_s)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - self._clock()
            try:
                return method(request, timeout=max(remaining, 0.001), metadata=self.metadata)
            except grpc.RpcError as err:
                pause = (
                    self.retry.retry_pause(err, attempt, deadline - self._clock())
                    if idempotent
                    else None
                )
                if pause is None:
                    raise
                self.retries += 1
                self._sleep(pause)

    def stream(
        self, method: Callable[..., Any], request: Any, *, timeout_s: float | None = None
    ) -> Iterator[Any]:
        """A server-streaming call (not retried: a stream may have been half read)."""
        return method(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata)


class StreamDeadlineExceeded(grpc.RpcError):
    """An answer on a :class:`RequestStream` took longer than its timeout; the stream was
    cancelled."""

    def __init__(self, timeout_s: float):
        self._details = f"no answer on the stream within {timeout_s} s (stream cancelled)"
        super().__init__(self._details)

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return self._details


class StreamEnded(grpc.RpcError):
    """The server ended a :class:`RequestStream` with OK before answering: the request
    may not have been seen, so it counts as UNAVAILABLE (retry on a new stream)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the server ended the stream before answering"


_END = object()  # closes a RequestStream's request iterator


class _Watch:
    """What a :class:`RequestStream`'s watchdog thread shares with it (not the stream
    itself, so a stream nobody holds is collected, and closed, as usual)."""

    def __init__(self, call: Any, check_s: float, clock: Callable[[], float]):
        self.call = call
        self.check_s = check_s
        self.clock = clock
        self.lock = threading.Lock()  # a deadline's check against an answer's arrival
        self.deadline: float | None = None  # of the answer awaited
        self.timed_out = False
        self.closed = threading.Event()

    def run(self) -> None:
        while not self.closed.wait(self.check_s):
            with self.lock:
                late = self.deadline is not None and self.clock() > self.deadline
                if late:
                    self.timed_out = True
            if late:
                self.call.cancel()
                return


class RequestStream:
    """Request/answer pairs over one bidirectional stream: :meth:`call` sends one request
    and waits for its one answer (here a round trip costs about 70 % of a unary call's).

    A stream has no deadline of its own, so each answer gets a timeout: a watchdog thread
    cancels the stream when an answer is later than that (checked every
    ``min(1 s, timeout_s / 4)``), and :meth:`call` raises
    :class:`StreamDeadlineExceeded`. After any error, or any interruption of a call, the
    stream is finished (``broken``): open a new one to go on (not retried here), so an
    answer can never be taken for the next request's."""

    def __init__(
        self,
        method: Callable[..., Any],
        *,
        metadata: tuple[tuple[str, str], ...] | None,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s}: must be > 0")
        self.timeout_s = timeout_s
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._answers = method(iter(self._requests.get, _END), metadata=metadata)
        self._watch = _Watch(self._answers, min(1.0, timeout_s / 4), clock)
        self.broken = False
        threading.Thread(target=self._watch.run, name="stream-watchdog", daemon=True).start()

    def call(self, request: Any, timeout_s: float | None = None) -> Any:
        """Send ``request``; return its answer, awaited at most ``timeout_s`` (default: the
        stream's). Raises ``grpc.RpcError`` (the stream's status,
        :class:`StreamDeadlineExceeded` or :class:`StreamEnded`)."""
        watch = self._watch
        if self.broken or watch.closed.is_set():
            raise StreamEnded()
        timeout_s = timeout_s or self.timeout_s
        with watch.lock:
            watch.deadline = watch.clock() + timeout_s
        self._requests.put(request)
        try:
            answer = next(self._answers)
        except StopIteration:
            self.broken = True
            raise StreamEnded() from None
        except grpc.RpcError:
            self.broken = True
            if watch.timed_out:
                raise StreamDeadlineExceeded(timeout_s) from None
            raise
        except BaseException:  # interrupted: this request's answer may still come
            self.broken = True
            self._answers.cancel()
            raise
        finally:
            with watch.lock:
                watch.deadline = None
                if watch.timed_out:  # cancelled as the answer came: no later call may use it
                    self.broken = True
        return answer

    def close(self) -> None:
        """End the stream (the server's handler returns) and stop the watchdog."""
        if not self._watch.closed.is_set():
            self._watch.closed.set()
            self._requests.put(_END)
            self._answers.cancel()

    def __del__(self) -> None:
        if hasattr(self, "_watch"):  # not when the call could not be made
            with contextlib.suppress(Exception):  # e.g. gRPC already gone at interpreter exit
                self.close()


class ServiceClient:
    """What every service's client shares: a channel, the generated stub (``stub_class``,
    set by the subclass) and the caller; closes its channel, also as a context manager."""

    stub_class: Callable[[grpc.Channel], Any]

    def __init__(self, channel: grpc.Channel, caller: RpcCaller | None = None):
        self.channel = channel
        self.stub = self.stub_class(channel)
        self.caller = caller or RpcCaller()

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        tls: ClientTls | None = None,
        token: str | None = None,
        experiment_id: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
    ) -> Self:
        """A client for ``target`` ("127.0.0.1:PORT") with a deadline on every call,
        retries of idempotent calls and the bearer token (with ``experiment_id``, an
        experiment's token)."""
        caller = RpcCaller(
            token=token, experiment_id=experiment_id or None, timeout_s=timeout_s, retry=retry
        )
        return cls(make_channel(ChannelOptions(target, tls)), caller)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
