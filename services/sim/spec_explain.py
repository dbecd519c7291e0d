"""``overcommit validate --explain [FIELD]``: the spec's documented schema, from the models.

Every field of :class:`~services.sim.spec.ExperimentSpec`, recursively, as one line:
its path (``[]`` for a list item; a workload's kind in parentheses), its type, its
default (or ``required``) and its description, with the bounds pydantic enforces.
``FIELD`` keeps the lines under a path (list indexes may be written as numbers or
``[]``: ``guest_groups.0.workload`` and ``guest_groups[].workload`` are the same).
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .spec import ExperimentSpec


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """(suffix, model) for every model an annotation holds: ``[]`` for list items, and for
    a union of workload models each under its ``kind``."""
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    if origin is typing.Annotated:
        return _models_in(get_args(annotation)[0])
    if origin in (list, tuple):
        return [("[]" + s, m) for s, m in _models_in(get_args(annotation)[0])]
    if origin in (typing.Union, types.UnionType):
        found = []
        members = [a for a in get_args(annotation) if a is not type(None)]
        for a in members:
            for s, m in _models_in(a):
                kind = _kind_names(m)
                tag = f" ({kind})" if kind and len(members) > 1 else ""
                found.append((tag + s, m))
        return found
    if origin is dict:
        return [("{}" + s, m) for s, m in _models_in(get_args(annotation)[1])]
    return []


def _kind_names(model: type[BaseModel]) -> str:
    """A workload model's ``kind`` values ('page_fault1/page_fault2'), or ''."""
    field = model.model_fields.get("kind")
    if field is None:
        return ""
    return "/".join(str(a) for a in get_args(field.annotation)) or str(field.default)


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is typing.Annotated:
        name = _type_name(args[0])
    elif origin is Literal:
        name = " | ".join(repr(a) for a in args)
    elif origin in (typing.Union, types.UnionType):
        name = " | ".join(_type_name(a) for a in args)
    elif origin in (list, tuple):
        name = f"list[{_type_name(args[0])}]"
    elif origin is dict:
        name = f"dict[{_type_name(args[0])}, {_type_name(args[1])}]"
    elif annotation is type(None):
        name = "null"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        name = "object"
    else:
        name = getattr(annotation, "__name__", str(annotation))
    return name


def _bounds(field, unit: str | None = None) -> str:
    parts = []
    for m in field.metadata:
        for name, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, name, None)
            if v is not None:
                parts.append(f"{sym} {_human(v, unit)}")
        for name, sym in (("min_length", "length >="), ("max_length", "length <=")):
            v = getattr(m, name, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return f" [{', '.join(parts)}]" if parts else ""


def _quantity_fields(model: type[BaseModel]) -> dict[str, str]:
    """Fields parsed as durations or sizes (by the model's _dur/_size validators)."""
    out: dict[str, str] = {}
    for name, dec in model.__pydantic_decorators__.field_validators.items():
        unit = "duration" if "dur" in name else "size" if "size" in name else None
        if unit:
            for f in dec.info.fields:
                out[f] = unit
    return out


def _human(value: Any, unit: str | None) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or unit is None or value <= 0:
        return repr(value)
    steps = (
        (
            (3_600_000_000_000, "h"),
            (60_000_000_000, "min"),
            (10**9, "s"),
            (10**6, "ms"),
            (10**3, "us"),
        )
        if unit == "duration"
        else ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))
    )
    for size, name in steps:
        if value % size == 0:
            return f"{value // size}{name}"
    return repr(value)


def _kinds(annotation: Any) -> str | None:
    """'memhog | idle | ...' for a union of workload models."""
    kinds = [_kind_names(m) for _, m in _models_in(annotation) if _kind_names(m)]
    return " | ".join(f"kind {k}" for k in kinds) if len(kinds) > 1 else None


def schema_lines(model: type[BaseModel] = ExperimentSpec, prefix: str = "") -> list[str]:
    """One line per field, recursively (see the module docstring)."""
    lines = []
    quantities = _quantity_fields(model)
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        unit = quantities.get(name)
        if field.is_required():
            default = "required"
        elif field.default is PydanticUndefined:
            default = "default: computed"
        else:
            default = f"default {_human(field.default, unit)}"
        kind = _kinds(field.annotation)
        if kind is not None:
            type_name = f"object, one of: {kind}"
        elif unit is not None:
            type_name = f"{unit} ({'e.g. 50ms, 2s; an int is ns' if unit == 'duration' else 'e.g. 4GiB; an int is bytes'})"
        else:
            type_name = _type_name(field.annotation)
        desc = (field.description or "").strip()
        lines.append(f"{path}: {type_name}{_bounds(field, unit)}, {default}. {desc}")
        for suffix, sub in _models_in(field.annotation):
            lines += schema_lines(sub, f"{path}{suffix}.")
    return lines


def _normalise(path: str) -> str:
    """``guest_groups.0.workload`` -> ``guest_groups[].workload``."""
    return re.sub(r"\.(\d+)(?=\.|$)", "[]", path)


def explain(field: str | None = None) -> list[str]:
    """The schema lines under ``field`` (all of them without one); ValueError if none."""
    lines = schema_lines()
    if not field:
        return lines
    want = _normalise(field.strip())
    kept = [
        line
        for line in lines
        if re.sub(r" \([a-z_0-9]+\)", "", line.split(":", 1)[0]).startswith(want)
        or line.split(":", 1)[0].startswith(want)
    ]
    if not kept:
        raise ValueError(f"--explain: no spec field {field!r} (try without a field for all)")
    return kept
