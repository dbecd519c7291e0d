"""Refusals with a status: plain errors that name the field and value they refuse.

This module imports no gRPC, so plain classes (the host's epoch barrier, the
protocol's validation, the experiment manager) raise the same errors whether a
call came over gRPC or in-process. :mod:`services.transport.status` maps them to
gRPC status codes at the servicer's edge. Clients read the same two things from
either kind of error: ``err.code()`` (compare ``.name``) and ``err.details()``,
e.g. ``guests[0].reports[1].pfns[3]=513: not aligned to 2**order=2 pages``.
"""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """The status codes the services use, named as gRPC names them."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAUTHENTICATED = 16


# a refused value is echoed in the status at most this long (its repr), and a reason at
# most MAX_REASON_CHARS: a status travels in HTTP/2 trailers, and a 20,000-character id
# echoed whole made gRPC drop the status for RESOURCE_EXHAUSTED "Stream removed"
MAX_VALUE_CHARS = 200
MAX_REASON_CHARS = 2000


def _bounded_value(value: object) -> object:
    text = repr(value)
    if len(text) <= MAX_VALUE_CHARS:
        return value
    return _Elided(f"{text[:MAX_VALUE_CHARS]}... ({len(text)} characters)")


class _Elided(str):
    """A value too long to echo: its repr's beginning, shown as it is."""

    def __repr__(self) -> str:
        return str(self)


class StatusError(Exception):
    """A request refused with a status; ``details()`` names field and value."""

    def __init__(self, code: Status, field: str, value: object, reason: str):
        self._code = code
        self.field = field[:MAX_VALUE_CHARS]
        self.value = _bounded_value(value)
        self.reason = (
            reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "..."
        )
        super().__init__(self.details())

    def code(self) -> Status:
        """The status (``code().name`` equals the gRPC status code's name)."""
        return self._code

    def details(self) -> str:
        """``field=value: reason`` (same accessor as ``grpc.RpcError``)."""
        if not self.field:
            return self.reason
        return f"{self.field}={self.value!r}: {self.reason}"


def invalid_argument(field: str, value: object, reason: str) -> StatusError:
    return StatusError(Status.INVALID_ARGUMENT, field, value, reason)


def not_found(field: str, value: object, reason: str) -> StatusError:
    return StatusError(Status.NOT_FOUND, field, value, reason)


def failed_precondition(field: str, value: object, reason: str) -> StatusError:
    return StatusError(Status.FAILED_PRECONDITION, field, value, reason)


def permission_denied(field: str, value: object, reason: str) -> StatusError:
    return StatusError(Status.PERMISSION_DENIED, field, value, reason)


def already_exists(field: str, value: object, reason: str) -> StatusError:
    return StatusError(Status.ALREADY_EXISTS, field, value, reason)


def deadline_exceeded(field: str, value: object, reason: str) -> StatusError:
    return StatusError(Status.DEADLINE_EXCEEDED, field, value, reason)


def resource_exhausted(field: str, value: object, reason: str) -> StatusError:
    return StatusError(Status.RESOURCE_EXHAUSTED, field, value, reason)


def internal(field: str, value: object, reason: str) -> StatusError:
    return StatusError(Status.INTERNAL, field, value, reason)


def require(condition: bool, field: str, value: object, reason: str) -> None:
    """INVALID_ARGUMENT naming ``field=value`` unless ``condition``."""
    if not condition:
        raise invalid_argument(field, value, reason)


def require_id(field: str, value: str) -> None:
    """An opaque id must be a non-empty string."""
    require(bool(value), field, value, "must not be empty")


def as_status_error(exc: BaseException) -> StatusError | None:
    """Map an exception from a plain implementation to a status, or None if unexpected.

    ``StatusError`` stays as is; ``ValueError`` -> INVALID_ARGUMENT; ``LookupError``
    (KeyError, IndexError) -> NOT_FOUND; ``PermissionError`` -> PERMISSION_DENIED.
    """
    if isinstance(exc, StatusError):
        return exc
    reason = str(exc.args[0]) if exc.args else type(exc).__name__
    if isinstance(exc, ValueError):
        return StatusError(Status.INVALID_ARGUMENT, "", None, reason)
    if isinstance(exc, LookupError):
        return StatusError(Status.NOT_FOUND, "", None, reason)
    if isinstance(exc, PermissionError):
        return StatusError(Status.PERMISSION_DENIED, "", None, reason)
    return None
