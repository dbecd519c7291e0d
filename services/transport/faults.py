"""Fault injection on a server: drop or delay a fraction of some methods' replies.

:class:`ReplyFaultInterceptor` runs the real handler first, so the call takes
effect, and then, for a chosen fraction of calls, either aborts it with
UNAVAILABLE (the reply is "dropped": the client retries, and an idempotent
method answers the retry from its store) or sleeps before replying (a slow
network or a loaded host). The choice comes from a random stream of its own
(``seed``); it never touches simulated state, so a correct client sees results
identical to a run without faults. Used by chaos experiments (the spec's
``faults.drop_replies`` / ``delay_replies``) and by the reliability tests.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

DROPPED_DETAILS = "fault injection: reply dropped after the call was applied"


@dataclass(frozen=True)
class ReplyFaults:
    """Which replies of ``methods`` (full gRPC method names) to drop or delay."""

    methods: tuple[str, ...]
    drop: float = 0.0
    delay: float = 0.0
    delay_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop", "delay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}: a fraction in [0, 1]")
        if not 0.0 <= self.delay_s <= 60.0:
            raise ValueError(f"delay_s={self.delay_s}: 0 to 60 s")

    @property
    def active(self) -> bool:
        return self.drop > 0 or self.delay > 0


class ReplyFaultInterceptor(grpc.ServerInterceptor):
    """Drops (UNAVAILABLE after applying) or delays a fraction of ``faults.methods``' replies."""

    def __init__(self, faults: ReplyFaults, sleep: Callable[[float], None] = time.sleep):
        self.faults = faults
        self._rng = random.Random(faults.seed)  # chaos, not cryptography
        self._lock = threading.Lock()
        self._sleep = sleep
        self.dropped = 0
        self.delayed = 0

    def _draw(self) -> tuple[bool, bool]:
        with self._lock:
            u = self._rng.random()
        drop = u < self.faults.drop
        delay = not drop and u < self.faults.drop + self.faults.delay
        return drop, delay

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self.faults.methods:
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def faulty(request: Any, context: grpc.ServicerContext) -> Any:
                reply = inner(request, context)
                self._fault(context)
                return reply

            return _like(handler, grpc.unary_unary_rpc_method_handler, faulty)
        if handler.stream_stream is not None:  # each reply of the stream, as a unary one
            inner_stream = handler.stream_stream

            def faulty_stream(requests: Any, context: grpc.ServicerContext) -> Any:
                for reply in inner_stream(requests, context):
                    self._fault(context)
                    yield reply

            return _like(handler, grpc.stream_stream_rpc_method_handler, faulty_stream)
        return handler

    def _fault(self, context: grpc.ServicerContext) -> None:
        """After a reply was made: drop it (end the call with UNAVAILABLE), delay it, or
        neither."""
        drop, delay = self._draw()
        if drop:
            with self._lock:
                self.dropped += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, DROPPED_DETAILS)
        if delay:
            with self._lock:
                self.delayed += 1
            self._sleep(self.faults.delay_s)


def _like(handler: Any, factory: Callable[..., Any], behaviour: Callable[..., Any]) -> Any:
    """A method handler made by ``factory`` around ``behaviour``, with ``handler``'s
    (de)serializers."""
    return factory(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
