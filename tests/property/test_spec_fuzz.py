"""Hostile specs and trace files: every example spec, mutated at random (a value replaced by a value of
another type, a huge, negative, empty or non-finite one; a key dropped or added; a list
emptied or repeated), is either a valid spec that plans, or refused with errors that
name a field. Never a traceback (any other exception), never a plan that crashes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.sim.plan import make_plan
from services.sim.spec import SpecError, load_spec_text, with_trace_root
from services.sim.spec_checks import spec_warnings
from services.sim.traces import TraceError, load_alibaba2018, load_bitbrains, load_google2019

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(
    [
        *ROOT.glob("experiments/*.yaml"),
        *ROOT.glob("experiments/validation/*.yaml"),
        *ROOT.glob("tests/golden/specs/*.yaml"),
    ]
)
TEXTS = {p: p.read_text(encoding="utf-8") for p in SPECS}

HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["", "0", "-1GiB", "1e400", "nan", "inf", "1 TiB", "../../etc/passwd", "x" * 300]
    ),
    st.sampled_from(["4GiB", "1PiB", "50ms", "0s", "-5s", "1e30s", "10%", "0.5"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["kind", "name", "count", "x"]), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    """Every path into the parsed YAML (dict keys and list indexes)."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


@st.composite
def mutated(draw):
    path = draw(st.sampled_from(SPECS))
    data = yaml.safe_load(TEXTS[path])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        target = draw(st.sampled_from(paths))
        parent, key = _get(data, target[:-1]), target[-1]
        action = draw(st.sampled_from(["replace", "replace", "drop", "add", "empty", "repeat"]))
        if action == "replace":
            parent[key] = draw(HOSTILE)
        elif action == "drop" and isinstance(parent, dict):
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "count", "memory", "kind"]))] = draw(HOSTILE)
        elif action == "empty" and isinstance(parent[key], list | dict):
            parent[key] = type(parent[key])()
        elif action == "repeat" and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key] * draw(st.integers(min_value=2, max_value=50))
    return path, data


def _dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@settings(
    max_examples=int(os.environ.get("SPEC_FUZZ_EXAMPLES", "400")),  # more: make fuzz-style runs
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated())
def test_a_mutated_spec_plans_or_is_refused_with_field_paths(case):
    path, data = case
    try:
        text = _dump(data)
    except (yaml.YAMLError, OverflowError, ValueError):  # not representable as YAML
        return
    try:
        spec = with_trace_root(load_spec_text(text), path.parent, absolute_ok=True)
        plan = make_plan(spec, "fuzz", 2)
        spec_warnings(spec, plan)
    except SpecError as e:
        assert e.errors, "a SpecError with no error"
        for field, message in e.errors:
            assert isinstance(field, str) and field and isinstance(message, str) and message


def test_the_fuzz_covers_every_example_spec():
    assert len(SPECS) >= 12
    for p in SPECS:  # each unmutated spec is valid and plans
        spec = with_trace_root(load_spec_text(TEXTS[p]), p.parent, absolute_ok=True)
        make_plan(spec, "fuzz", 2)
        assert not math.isnan(spec.duration)


@pytest.mark.parametrize(
    "junk", ["", "- a\n- b\n", "{", "a: [1, 2", "\x00", "!!python/object:os.system {}"]
)
def test_junk_yaml_is_refused_with_a_path(junk):
    with pytest.raises(SpecError) as e:
        load_spec_text(junk)
    assert e.value.errors and all(f for f, _ in e.value.errors)


GIB = 1 << 30
BITBRAINS = (ROOT / "tests" / "golden" / "specs" / "traces" / "vm-0000.csv").read_bytes()
GOOGLE = "\n".join(
    json.dumps(
        {
            "start_time": t * 300_000_000,
            "end_time": (t + 1) * 300_000_000,
            "collection_id": c,
            "instance_index": i,
            "machine_id": 9,
            "average_usage": {"cpus": 0.01, "memory": 0.001 * (t + 1)},
            "maximum_usage": {"cpus": 0.02, "memory": 0.002 * (t + 1)},
            "assigned_memory": 0.01,
            "page_cache_memory": 0.0005,
        }
    )
    for t in range(6)
    for c, i in ((1, 0), (1, 1), (2, 0))
).encode()
ALIBABA = b"".join(
    b"m_%d,%d,10,%d,1,2,3,4,5\n" % (m, t * 60, 20 + t) for m in (1, 2) for t in range(8)
)
FORMATS = {  # seed bytes, field separator, loader
    "bitbrains": (BITBRAINS, b";", lambda p: [load_bitbrains(p)]),
    "google2019": (GOOGLE, b",", lambda p: load_google2019(p, 64 * GIB, page_cache=True)),
    "alibaba2018": (ALIBABA, b",", lambda p: load_alibaba2018(p, 64 * GIB, kind="machine")[0]),
}
TOKENS = [
    b"nan", b"-1", b"1e400", b"", b"abc", b"99999999999999999999999", b"-0", b"inf",
    b"\x00\xff", b"null", b"{}", b"[]", b'"x"',
]  # fmt: skip


@st.composite
def mutated_trace(draw) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    seed, sep, _ = FORMATS[fmt]
    lines = seed.split(b"\n")[:40]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        action = draw(st.sampled_from(["field", "field", "drop", "repeat", "swap", "cut", "junk"]))
        if action == "field":
            fields = lines[i].split(sep)
            j = draw(st.integers(min_value=0, max_value=len(fields) - 1))
            head, colon, _ = fields[j].partition(b": ")  # a JSON field keeps its key
            fields[j] = (head + colon if colon else b"") + draw(st.sampled_from(TOKENS))
            lines[i] = sep.join(fields)
        elif action == "drop" and len(lines) > 1:
            del lines[i]
        elif action == "repeat":
            lines.insert(i, lines[i])
        elif action == "swap":
            k = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[i], lines[k] = lines[k], lines[i]
        elif action == "cut":
            lines[i] = lines[i][: draw(st.integers(min_value=0, max_value=len(lines[i])))]
        else:
            lines[i] = draw(st.binary(max_size=40))
    return fmt, b"\n".join(lines)


@settings(
    max_examples=int(os.environ.get("TRACE_FUZZ_EXAMPLES", "600")), deadline=None, derandomize=True
)
@given(mutated_trace())
def test_a_mutated_trace_file_loads_or_is_refused_naming_the_file(case):
    fmt, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.data"
        path.write_bytes(data)
        try:
            traces = FORMATS[fmt][2](path)
        except TraceError as e:
            assert "trace.data" in str(e)
            return
        for trace in traces:  # what the loaders promise of a trace they accept
            assert len(trace) >= 1 and trace.times_s[0] == 0
            assert np.isfinite(trace.times_s).all() and (np.diff(trace.times_s) > 0).all()
            assert trace.memory_bytes > 0
            assert ((trace.usage_bytes >= 0) & (trace.usage_bytes <= trace.memory_bytes)).all()
            if trace.cache_bytes is not None:
                total = trace.usage_bytes + trace.cache_bytes
                assert (trace.cache_bytes >= 0).all() and (total <= trace.memory_bytes).all()


def test_the_trace_seeds_load():
    for fmt, (seed, _, load) in FORMATS.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.data"
            path.write_bytes(seed)
            assert load(path), fmt
