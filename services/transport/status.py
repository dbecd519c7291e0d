"""gRPC edge of the status errors: a :class:`StatusError` becomes the call's status.

Plain code raises :class:`services.transport.errors.StatusError` (no gRPC there).
Servicers end a call with :func:`abort`, which sets the gRPC status code of the
same name, the details (``field=value: reason``) and a ``google.rpc.Status``
with a BadRequest / ResourceInfo / PreconditionFailure / ErrorInfo detail;
:func:`translate_errors` does it for a whole servicer method.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.transport.errors import Status, StatusError, as_status_error

RICH_STATUS_KEY = "grpc-status-details-bin"  # trailing metadata key of google.rpc.Status


def grpc_code(status: Status) -> grpc.StatusCode:
    """The gRPC status code named like ``status``."""
    return grpc.StatusCode[status.name]


def rich_status(err: StatusError) -> status_pb2.Status:
    """The error as a ``google.rpc.Status`` with one typed detail."""
    detail = any_pb2.Any()
    code = err.code()
    if code is Status.INVALID_ARGUMENT:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=err.field, description=err.details()
        )
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    elif code is Status.NOT_FOUND:
        detail.Pack(
            error_details_pb2.ResourceInfo(
                resource_type=err.field, resource_name=str(err.value), description=err.reason
            )
        )
    elif code is Status.FAILED_PRECONDITION:
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=code.name, subject=f"{err.field}={err.value!r}", description=err.reason
        )
        detail.Pack(error_details_pb2.PreconditionFailure(violations=[violation]))
    else:
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason=code.name,
                domain="overcommit.v1",
                metadata={"field": err.field, "value": str(err.value)},
            )
        )
    return status_pb2.Status(
        code=getattr(code_pb2, code.name), message=err.details(), details=[detail]
    )


def abort(context: grpc.ServicerContext | None, err: StatusError) -> NoReturn:
    """End the call with ``err``'s status, details and rich status detail.

    Without a context (an in-process call) the error is raised as is.
    """
    if context is None:
        raise err
    context.set_trailing_metadata(((RICH_STATUS_KEY, rich_status(err).SerializeToString()),))
    context.abort(grpc_code(err.code()), err.details())


def rich_status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a server attached to a failed call, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == RICH_STATUS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def translate_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method: mapped exceptions become the call's status.

    Works for unary methods and for server-streaming methods (generators).
    Exceptions that :func:`as_status_error` does not map propagate (gRPC reports
    them as UNKNOWN and logs them). With ``context=None`` (in-process transports)
    the mapped :class:`StatusError` is raised instead.
    """
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(
            self: Any, request: Any, context: grpc.ServicerContext | None
        ) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as exc:  # mapped or re-raised below
                err = as_status_error(exc)
                if err is None:
                    raise
                abort(context, err)

        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext | None) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # mapped or re-raised below
            err = as_status_error(exc)
            if err is None:
                raise
            abort(context, err)

    return unary_wrapper


def status_field(error: grpc.RpcError) -> str | None:
    """The request field a failed call's rich status names (its BadRequest violation, or
    its ErrorInfo's ``field``), if the server attached one."""
    status = rich_status_of(error)
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad) and bad.field_violations:
            return str(bad.field_violations[0].field)
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and "field" in info.metadata:
            return str(info.metadata["field"])
    return None
