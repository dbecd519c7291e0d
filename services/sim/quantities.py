"""Parsing of human-written sizes and durations in experiment specs.

Sizes: an int (bytes) or a string such as ``"4GiB"``, ``"512MiB"``, ``"2 GB"`` (units
up to EiB; a size must stay below 2**62 bytes, 4 EiB).
Durations: an int (simulated nanoseconds) or a string such as ``"50ms"``,
``"2s"``, ``"5m"``, ``"1h"``. Results are always ints: simulated time is an
integer number of nanoseconds.
"""

from __future__ import annotations

import math
import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 10**3,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 10**6,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 10**9,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 10**12,
    "tib": 1 << 40,
    "p": 1 << 50,
    "pb": 10**15,
    "pib": 1 << 50,
    "e": 1 << 60,
    "eb": 10**18,
    "eib": 1 << 60,
}
_TIME_UNITS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "min": 60 * 10**9,
    "h": 3600 * 10**9,
}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-zµ]*)\s*$")


MAX_QUANTITY = 1 << 62  # sizes and durations stay far inside int64 when added up


def _bounded(value: float, field: str, what: str) -> int:
    if not math.isfinite(value) or value > MAX_QUANTITY:
        raise ValueError(f"{field}: {what} {value!r} is not a finite number up to 2**62")
    return round(value)


def parse_size_bytes(value: int | float | str, field: str = "size") -> int:
    """Return a size in bytes; raises ValueError naming ``field`` and the value."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field}: size must be >= 0, got {value}")
        return _bounded(value, field, "size")
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0 or value != int(value):
            raise ValueError(f"{field}: size must be a whole number of bytes, got {value}")
        return _bounded(value, field, "size")
    m = _NUMBER.match(str(value))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"{field}: cannot parse size {value!r} (use e.g. 4GiB, 512MiB)")
    return _bounded(float(m.group(1)) * _SIZE_UNITS[unit], field, "size")


def parse_duration_ns(value: int | float | str, field: str = "duration") -> int:
    """Return a duration in integer nanoseconds; raises ValueError naming ``field``."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field}: duration must be >= 0, got {value}")
        return _bounded(value, field, "duration")
    if isinstance(value, float):
        raise ValueError(f"{field}: give a unit (e.g. '2s'), got the bare float {value}")
    m = _NUMBER.match(str(value))
    unit = m.group(2) if m else None
    if not m or unit not in _TIME_UNITS:
        raise ValueError(f"{field}: cannot parse duration {value!r} (use e.g. 50ms, 2s, 5m)")
    return _bounded(float(m.group(1)) * _TIME_UNITS[unit], field, "duration")


def format_bytes(n: float) -> str:
    """Human-readable binary size, e.g. ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def format_duration(ns: float) -> str:
    """Human-readable duration in a unit a spec accepts, e.g. ``1 ms``, ``720 h``."""
    for unit, size in (("h", 3600 * 10**9), ("min", 60 * 10**9), ("s", 10**9),
                       ("ms", 10**6), ("us", 10**3)):  # fmt: skip
        if abs(ns) >= size:
            return f"{ns / size:g} {unit}"
    return f"{ns:g} ns"
