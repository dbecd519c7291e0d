"""A pydantic validation error as a spec error: its field path as a spec names it, and
its message, with a bound on a duration or a size also shown in units."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from .quantities import format_bytes, format_duration
from .spec_base import _dur, _dur_or_none, _size, _size_or_none
from .spec_workloads import _WORKLOAD_KINDS


def field_errors(model: type[BaseModel], error: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) for each of the error's failures under ``model``."""
    return [(error_path(e), error_message(model, e)) for e in error.errors()]


def error_path(err: Any) -> str:
    """The field path of a pydantic error, without the workload union's tag (the element
    after ``workload``: ``workload.trace.page_cache`` is ``workload.page_cache``)."""
    loc = err["loc"]
    keep = [
        str(p)
        for i, p in enumerate(loc)
        if not (p in _WORKLOAD_KINDS and i > 0 and loc[i - 1] == "workload")
    ]
    return ".".join(keep) or "<spec>"


_BOUND_ERRORS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt",
                 "less_than_equal": "le"}  # fmt: skip


def error_message(model: type[BaseModel], err: Any) -> str:
    """pydantic's message, and for a bound on a duration or a size, the bound in units:
    ``... greater than or equal to 1000000 (1 ms)``."""
    msg = str(err["msg"])
    bound = (err.get("ctx") or {}).get(_BOUND_ERRORS.get(err["type"], ""))
    if not isinstance(bound, int | float) or isinstance(bound, bool):
        return msg
    kind = quantity_kind(model, err["loc"])
    if kind == "duration":
        return f"{msg} ({format_duration(bound)})"
    if kind == "size":
        return f"{msg} ({format_bytes(bound)})"
    return msg


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The spec models an annotation holds (through Optional, list, dict, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def quantity_kind(model: type[BaseModel], loc: tuple) -> str | None:
    """ "duration" or "size" if the field at ``loc`` (a pydantic error's location under
    ``model``) is read by the duration or size validator, else None. A union's tag in
    ``loc`` (a workload's kind) picks its member."""
    candidates: list[type[BaseModel]] = [model]
    for i, part in enumerate(loc):
        by_tag = [
            c for c in candidates if getattr(c.model_fields.get("kind"), "default", None) == part
        ]
        if by_tag:
            candidates = by_tag
            continue
        owners = [c for c in candidates if isinstance(part, str) and part in c.model_fields]
        if not owners:
            continue  # a list index or a mapping key: the same models
        if i == len(loc) - 1:
            return _validated_as(owners[0], part)
        nested = _models_in(owners[0].model_fields[part].annotation)
        if not nested:
            return None
        candidates = nested
    return None


def _validated_as(model: type[BaseModel], field: str) -> str | None:
    for dec in model.__pydantic_decorators__.field_validators.values():
        func = getattr(dec.func, "__func__", dec.func)
        if field in dec.info.fields and func in (_dur, _dur_or_none):
            return "duration"
        if field in dec.info.fields and func in (_size, _size_or_none):
            return "size"
    return None
