"""Requests that cannot be parsed are refused as the caller's error.

gRPC parses a request before any handler runs, and answers a request protobuf cannot
parse (bytes that are not the message, or a ``google.protobuf.Struct`` nested past
protobuf's recursion limit: about 60 levels of a spec) with INTERNAL "Exception
deserializing request!", which reads as the server's fault. :class:`DecodeGuard` wraps
each method's parser so that such a request reaches a handler that refuses it with
INVALID_ARGUMENT naming ``request`` and what protobuf said, having done nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.transport.errors import invalid_argument
from services.transport.status import abort


class _Unparsed:
    """Stands in for a request that could not be parsed."""

    def __init__(self, error: Exception) -> None:
        self.reason = f"cannot be parsed ({type(error).__name__}: {error})"[:300]


def _safe(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RecursionError, ValueError) as e:  # the request's: refused
            return _Unparsed(e)

    return parse_or_mark


def _refuse(request: _Unparsed, context: grpc.ServicerContext) -> None:
    abort(context, invalid_argument("request", "<bytes>", request.reason))


def _refusing(inner: Callable[[Any, grpc.ServicerContext], Any]):
    """A one-request handler that refuses an unparsed request, else calls ``inner``."""

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Unparsed):
            _refuse(request, context)
        return inner(request, context)

    return handle


def _checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, _Unparsed):
            _refuse(request, context)
        yield request


class DecodeGuard(grpc.ServerInterceptor):
    """See the module docstring. Innermost interceptor: it wraps the method's handler."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = _safe(handler.request_deserializer)
        out = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_refusing(handler.unary_unary), parse, out)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_refusing(handler.unary_stream), parse, out)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary
            return grpc.stream_unary_rpc_method_handler(
                lambda requests, context: inner_su(_checked(requests, context), context),
                parse,
                out,
            )
        inner_ss = handler.stream_stream
        return grpc.stream_stream_rpc_method_handler(
            lambda requests, context: inner_ss(_checked(requests, context), context),
            parse,
            out,
        )
