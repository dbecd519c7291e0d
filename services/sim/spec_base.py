"""What every part of a spec shares: the bounds, the error type and the base model.

The bounds are upper limits on what a spec may ask for (docs/security.md lists them);
``services/sim/spec.py`` and ``services/sim/spec_workloads.py`` build on this module.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from services.guest.core.constants import MAX_ORDER
from services.units import PAGE_SIZE

from .quantities import parse_duration_ns, parse_size_bytes

MAX_BLOCK_BYTES = PAGE_SIZE << MAX_ORDER  # guests are whole multiples of an order-10 block (4 MiB)
DEFAULT_SYNC_CAP_NS = 1_000_000_000  # default sync_interval: up to 1 s of simulated time

# Names become directory names (runs/<name>/<run_id>/), experiment ids, tokens' scope and
# metric labels: a safe character set, starting with a letter or digit (so never "." or
# ".."), and bounded length.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_NAME_LENGTH = 64

# Upper bounds on what a spec may ask for. They are checked while the spec is parsed,
# before anything is allocated, and are far above what one machine simulates (a guest
# costs about 12 bytes of state per 4 KiB page): they stop a typo or a hostile spec from
# making `validate` or planning allocate gigabytes. docs/security.md lists them.
MAX_SPEC_BYTES = 1 << 20  # YAML text of one spec
MAX_SPEC_DEPTH = 32  # nesting of a spec's YAML (the specs in experiments/ nest under 10)
MAX_GROUPS = 1_000  # host groups, and guest groups
MAX_OVERCOMMIT_RATIO = 1_000.0  # placement.max_overcommit_ratio (a finite bound)
MAX_HOSTS = 10_000  # hosts in one spec (sum of the host groups' counts)
MAX_GUESTS = 100_000  # guests in one spec (sum of the guest groups' counts)
MAX_HOST_MEMORY_BYTES = 64 << 40  # one host's memory, reserve and swap: 64 TiB each
MAX_GUEST_MEMORY_BYTES = 1 << 40  # one guest: 1 TiB
MAX_TOTAL_GUEST_MEMORY_BYTES = 64 << 40  # every guest together: 64 TiB
MIN_EPOCH_NS = 1_000_000  # 1 ms
MAX_EPOCH_NS = 60_000_000_000  # 60 s
MAX_DURATION_NS = 30 * 24 * 3600 * 1_000_000_000  # 30 simulated days
MAX_EPOCHS = 100_000_000  # duration / epoch
MAX_PHASES = 1_000  # phases of one memhog workload
MAX_SWEEP_RUNS = 10_000  # grid points x seeds
MAX_TIMESERIES_ROWS = 1_000_000  # samples x (hosts + guest groups) x (run + baselines): ~5 GB
MAX_SEED = (1 << 63) - 1


class SpecError(ValueError):
    """A spec failed validation; ``errors`` lists (field path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))


class SpecLoader(yaml.SafeLoader):
    """YAML without aliases, nested at most MAX_SPEC_DEPTH deep, and without a key given
    twice in one mapping. A spec never needs aliases, and nested aliases can make a small
    text expand into a huge structure once validated ("billion laughs"); the composer
    recurses once per level, so a deep text would end in a RecursionError instead of an
    error naming the spec; and a key given twice would silently keep the last value."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a spec", event.start_mark
            )
        if self._depth >= MAX_SPEC_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_SPEC_DEPTH} levels (a spec needs under 10)",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found the key {key_node.value!r} twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Numbers and booleans as YAML 1.2 (and JSON) read them, not YAML 1.1: 2e6 and 1.5e6
# are numbers (1.1: strings), 010 is ten (1.1: octal eight), 1:00 is a string (1.1:
# sixty), only 0x / 0o prefixes change the base, and only true / false are booleans
# (1.1: yes, no, on, off too, so `name: NO` was false). A value must mean what it
# looks like.
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
SpecLoader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789")
)
SpecLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _yaml12_int(loader: SpecLoader, node: Any) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    if text.startswith(("0x", "0o")):
        return int(text[2:], 16 if text[1] == "x" else 8)
    return int(text, 10)


SpecLoader.add_constructor(_INT, _yaml12_int)


class _Model(BaseModel):
    """Strict: a count given as "4" or true is refused naming its field, not coerced (a
    size or a duration is a string with its unit, read by its own validator)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _size(v: Any, info) -> int:
    return parse_size_bytes(v, info.field_name)


def _dur(v: Any, info) -> int:
    return parse_duration_ns(v, info.field_name)


def _size_or_none(v: Any, info) -> int | None:
    return None if v is None else parse_size_bytes(v, info.field_name)


def _dur_or_none(v: Any, info) -> int | None:
    return None if v is None else parse_duration_ns(v, info.field_name)
