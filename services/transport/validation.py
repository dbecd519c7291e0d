"""Request validation shared by the servicers, and the error it raises.

Every check runs before anything is applied, so a refused request changes no
state. A refusal is a :class:`StatusError`: a gRPC status code plus details that
name the field and its value, e.g.
``guests[0].reports[1].pfns[3]=513: not aligned to 2**order=2 pages``.
Servicers turn it into the call's status with :func:`abort` (which also attaches
a ``google.rpc.Status`` with a BadRequest / ResourceInfo / PreconditionFailure /
ErrorInfo detail); in-process transports raise it as is. Clients read the same
two things from either: ``err.code()`` and ``err.details()``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import grpc
import numpy as np
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

RICH_STATUS_KEY = "grpc-status-details-bin"  # trailing metadata key of google.rpc.Status


class StatusError(Exception):
    """A request refused with a gRPC status code; ``details()`` names field and value."""

    def __init__(self, code: grpc.StatusCode, field: str, value: object, reason: str):
        self._code = code
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(self.details())

    def code(self) -> grpc.StatusCode:
        """The gRPC status code (same accessor as ``grpc.RpcError``)."""
        return self._code

    def details(self) -> str:
        """``field=value: reason`` (same accessor as ``grpc.RpcError``)."""
        if not self.field:
            return self.reason
        return f"{self.field}={self.value!r}: {self.reason}"

    def rich_status(self) -> status_pb2.Status:
        """The error as a ``google.rpc.Status`` with one typed detail."""
        detail = any_pb2.Any()
        if self._code == grpc.StatusCode.INVALID_ARGUMENT:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=self.field, description=self.details()
            )
            detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        elif self._code == grpc.StatusCode.NOT_FOUND:
            detail.Pack(error_details_pb2.ResourceInfo(
                resource_type=self.field, resource_name=str(self.value), description=self.reason
            ))
        elif self._code == grpc.StatusCode.FAILED_PRECONDITION:
            violation = error_details_pb2.PreconditionFailure.Violation(
                type=self._code.name, subject=f"{self.field}={self.value!r}", description=self.reason
            )
            detail.Pack(error_details_pb2.PreconditionFailure(violations=[violation]))
        else:
            detail.Pack(error_details_pb2.ErrorInfo(
                reason=self._code.name, domain="overcommit.v1",
                metadata={"field": self.field, "value": str(self.value)},
            ))
        return status_pb2.Status(
            code=getattr(code_pb2, self._code.name), message=self.details(), details=[detail]
        )


def invalid_argument(field: str, value: object, reason: str) -> StatusError:
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, field, value, reason)


def not_found(field: str, value: object, reason: str) -> StatusError:
    return StatusError(grpc.StatusCode.NOT_FOUND, field, value, reason)


def failed_precondition(field: str, value: object, reason: str) -> StatusError:
    return StatusError(grpc.StatusCode.FAILED_PRECONDITION, field, value, reason)


def permission_denied(field: str, value: object, reason: str) -> StatusError:
    return StatusError(grpc.StatusCode.PERMISSION_DENIED, field, value, reason)


def already_exists(field: str, value: object, reason: str) -> StatusError:
    return StatusError(grpc.StatusCode.ALREADY_EXISTS, field, value, reason)


def as_status_error(exc: BaseException) -> StatusError | None:
    """Map an exception from a plain implementation to a status, or None if unexpected.

    ``StatusError`` stays as is; ``ValueError`` -> INVALID_ARGUMENT; ``LookupError``
    (KeyError, IndexError) -> NOT_FOUND; ``PermissionError`` -> PERMISSION_DENIED.
    """
    if isinstance(exc, StatusError):
        return exc
    reason = str(exc.args[0]) if exc.args else type(exc).__name__
    if isinstance(exc, ValueError):
        return StatusError(grpc.StatusCode.INVALID_ARGUMENT, "", None, reason)
    if isinstance(exc, LookupError):
        return StatusError(grpc.StatusCode.NOT_FOUND, "", None, reason)
    if isinstance(exc, PermissionError):
        return StatusError(grpc.StatusCode.PERMISSION_DENIED, "", None, reason)
    return None


def abort(context: grpc.ServicerContext | None, err: StatusError) -> NoReturn:
    """End the call with ``err``'s status, details and rich status detail.

    Without a context (an in-process call) the error is raised as is.
    """
    if context is None:
        raise err
    context.set_trailing_metadata(((RICH_STATUS_KEY, err.rich_status().SerializeToString()),))
    context.abort(err.code(), err.details())


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
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext | None) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - mapped or re-raised below
                err = as_status_error(exc)
                if err is None:
                    raise
                abort(context, err)

        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext | None) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped or re-raised below
            err = as_status_error(exc)
            if err is None:
                raise
            abort(context, err)

    return unary_wrapper


# ---------------------------------------------------------------- shared checks


def require(condition: bool, field: str, value: object, reason: str) -> None:
    """INVALID_ARGUMENT naming ``field=value`` unless ``condition``."""
    if not condition:
        raise invalid_argument(field, value, reason)


def require_id(field: str, value: str) -> None:
    """An opaque id must be a non-empty string."""
    require(bool(value), field, value, "must not be empty")


def check_same_length(field_a: str, a: np.ndarray, field_b: str, b: np.ndarray) -> None:
    """Parallel packed arrays must have the same length."""
    if len(a) != len(b):
        raise invalid_argument(
            field_b, len(b), f"length differs from {field_a} (length {len(a)})"
        )


def check_report_ranges(
    field: str, pfns: np.ndarray, orders: np.ndarray, *, nr_pages: int, max_order: int,
    capacity: int,
) -> None:
    """One report batch: 1..capacity (pfn, order) ranges, in range, aligned, disjoint.

    ``field`` is the batch's path, e.g. ``guests[0].reports[2]``.
    """
    check_report_batches(field, [pfns], [orders], nr_pages=nr_pages, max_order=max_order,
                         capacity=capacity, single=True)


def check_report_batches(
    field: str, pfns_list: Sequence[np.ndarray], orders_list: Sequence[np.ndarray], *,
    nr_pages: int, max_order: int, capacity: int, single: bool = False,
) -> None:
    """Several report batches of one guest, checked in one vectorised pass.

    ``field`` is the path of the list, e.g. ``guests[0].reports``; errors name
    ``guests[0].reports[2].pfns[5]``. Ranges must be disjoint within a batch
    (a block is reported once per report); batches may repeat a range.
    """
    def path(b: int) -> str:
        return field if single else f"{field}[{b}]"

    lengths = np.fromiter((len(p) for p in pfns_list), dtype=np.int64, count=len(pfns_list))
    for b, (pfns, orders) in enumerate(zip(pfns_list, orders_list, strict=True)):
        check_same_length(f"{path(b)}.pfns", pfns, f"{path(b)}.orders", orders)
        require(0 < len(pfns), f"{path(b)}.pfns", 0, "a report batch carries at least one range")
        require(len(pfns) <= capacity, f"{path(b)}.pfns", len(pfns),
                f"batch carries {len(pfns)} ranges, over capacity {capacity}")
    if not pfns_list:
        return
    pfns = np.concatenate(pfns_list).astype(np.uint64, copy=False)
    orders = np.concatenate(orders_list)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))

    def where(i: int) -> str:
        b = int(np.searchsorted(starts, i, side="right")) - 1
        return f"{path(b)}.%s[{i - int(starts[b])}]"

    bad = np.flatnonzero(orders > max_order)
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(where(i) % "orders", int(orders[i]), f"order out of range 0..{max_order}")
    sizes = np.left_shift(np.uint64(1), orders.astype(np.uint64))
    bad = np.flatnonzero(pfns & (sizes - np.uint64(1)))
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(where(i) % "pfns", int(pfns[i]),
                               f"not aligned to 2**order={int(sizes[i])} pages")
    bad = np.flatnonzero((pfns >= np.uint64(nr_pages)) | (pfns + sizes > np.uint64(nr_pages)))
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(where(i) % "pfns", int(pfns[i]),
                               f"range of {int(sizes[i])} pages outside the guest's {nr_pages} pages")
    batch = np.repeat(np.arange(len(lengths)), lengths)
    order = np.lexsort((pfns, batch))
    sorted_pfns = pfns[order]
    overlap = (sorted_pfns[:-1] + sizes[order][:-1] > sorted_pfns[1:]) & (
        batch[order][:-1] == batch[order][1:])
    bad = np.flatnonzero(overlap)
    if bad.size:
        i = int(order[int(bad[0]) + 1])
        raise invalid_argument(where(i) % "pfns", int(pfns[i]), "range overlaps another range")


def check_page_runs(field: str, starts: np.ndarray, npages: np.ndarray, *, nr_pages: int) -> None:
    """Page runs: npages > 0 and every run inside the guest's ``nr_pages`` pages."""
    check_same_length(f"{field}.starts", starts, f"{field}.npages", npages)
    if len(starts) == 0:
        return
    bad = np.flatnonzero(npages == 0)
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(f"{field}.npages[{i}]", 0, "npages must be > 0")
    bad = np.flatnonzero(starts >= np.uint64(nr_pages))
    if bad.size == 0:
        bad = np.flatnonzero(npages > np.uint64(nr_pages) - starts)
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(f"{field}.starts[{i}]", int(starts[i]),
                               f"run of {int(npages[i])} pages outside the guest's "
                               f"{nr_pages} pages")
