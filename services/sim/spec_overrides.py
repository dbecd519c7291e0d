"""``--set path=value`` overrides: a spec's data with one field replaced by a path."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from .spec_base import SpecError, SpecLoader


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.0.c=value`` applied (value parsed as YAML)."""
    if "=" not in override:
        raise SpecError([("--set", f"expected path=value, got {override!r}")])
    path, raw = override.split("=", 1)
    try:
        value = yaml.load(raw, Loader=SpecLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(
            [("--set", f"{path.strip()}: cannot parse {_shown(raw)} as YAML: {problem}")]
        ) from None
    return set_path(data, path.strip(), value)


def _shown(raw: str, limit: int = 80) -> str:
    """``raw`` quoted for an error message, cut to ``limit`` characters."""
    return repr(raw) if len(raw) <= limit else f"{raw[:limit]!r}... ({len(raw)} characters)"


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    keys = path.split(".")
    node: Any = out
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise SpecError(
                    [(path, f"no list index {k!r} at {'.'.join(keys[:i]) or '<spec>'}")]
                )
            if last:
                node[int(k)] = value
            else:
                node = node[int(k)]
        elif isinstance(node, dict):
            if last:
                node[k] = value
            else:
                if k not in node or node[k] is None:
                    node[k] = {}
                node = node[k]
        else:
            raise SpecError([(path, f"cannot set {k!r} inside a {type(node).__name__}")])
    return out
