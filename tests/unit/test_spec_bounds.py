"""Spec names and bounds: refused while parsing, naming the field and the bound, before
anything is placed or allocated."""

import pytest

from services.sim import spec as spec_module
from services.sim.spec import SpecError, load_spec_text
from services.sim.spec_base import MAX_SPEC_DEPTH

BASE = """
name: ok
duration: 10s
hosts: [{name: h, count: 1, memory: 1GiB}]
guest_groups: [{name: g, count: 2, memory: 256MiB}]
"""


def errors(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as e:
        load_spec_text(text)
    return e.value.errors


@pytest.mark.parametrize(
    "name", ["../../../x", "a/b", "/etc", "x" * 300, "café", ".", "..", "-x", "", "a b", "x\n"]
)
def test_names_that_could_escape_or_break_are_refused(name):
    errs = errors(BASE.replace("name: ok", f"name: {name!r}"))
    assert errs[0][0] == "name", errs


@pytest.mark.parametrize("name", ["../g", "g/h", "ü"])
def test_group_names_are_checked_too(name):
    errs = errors(BASE.replace("name: g,", f"name: {name!r},"))
    assert errs[0][0] == "guest_groups.0.name", errs


def test_a_safe_name_of_the_longest_length_is_accepted():
    name = "a" * spec_module.MAX_NAME_LENGTH
    assert load_spec_text(BASE.replace("name: ok", f"name: {name}")).name == name


@pytest.mark.parametrize(
    "old,new,field,says",
    [
        ("count: 1, memory: 1GiB", "count: 1000000000, memory: 1GiB", "hosts.0.count", "10000"),
        ("count: 2, memory", "count: 1000000000, memory", "guest_groups.0.count", "100000"),
        ("memory: 256MiB", "memory: 2TiB", "guest_groups.0.memory", "1099511627776"),
        ("memory: 1GiB", "memory: 65TiB", "hosts.0.memory", "70368744177664"),
        ("duration: 10s", "duration: 100000h", "duration", "2592000000000000"),
        ("duration: 10s", "duration: 10s\nepoch: 100us", "epoch", "1000000"),
    ],
)
def test_counts_and_sizes_over_their_bound_name_the_field(old, new, field, says):
    errs = errors(BASE.replace(old, new))
    assert errs[0][0] == field, errs
    assert says in errs[0][1], errs


def test_totals_over_groups_are_bounded_before_placement():
    groups = ", ".join(f"{{name: g{i}, count: 60000, memory: 4MiB}}" for i in range(2))
    errs = errors(
        BASE.replace(
            "guest_groups: [{name: g, count: 2, memory: 256MiB}]", f"guest_groups: [{groups}]"
        )
    )
    assert "120000 guests in all, over the bound of 100000" in errs[0][1]
    hosts = ", ".join(f"{{name: h{i}, count: 6000, memory: 1GiB}}" for i in range(2))
    errs = errors(BASE.replace("hosts: [{name: h, count: 1, memory: 1GiB}]", f"hosts: [{hosts}]"))
    assert "12000 hosts in all" in errs[0][1]
    many = BASE.replace("count: 2, memory: 256MiB", "count: 100000, memory: 1TiB")
    assert "over the bound of 70368744177664" in errors(many)[0][1]


def test_too_many_epochs_or_sweep_runs_are_refused():
    errs = errors(BASE.replace("duration: 10s", "duration: 720h\nepoch: 1ms"))
    assert "epochs, over the bound of 100000000" in errs[0][1]
    grid = "sweep: {grid: {guest_groups.0.count: ["
    grid += ", ".join(str(i) for i in range(1, 201)) + "]}, seeds: ["
    grid += ", ".join(str(i) for i in range(100)) + "]}\n"
    assert "more than 10000 runs" in errors(BASE + grid)[0][1]


def test_yaml_aliases_and_oversized_texts_are_refused():
    bomb = BASE + "x: &a [1, 2]\ny: [*a, *a]\n"
    assert "aliases" in errors(bomb)[0][1]
    huge = BASE + "#" * (spec_module.MAX_SPEC_BYTES + 1)
    assert "over the bound of 1048576" in errors(huge)[0][1]


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_deeply_nested_yaml_is_refused_naming_the_bound_not_the_stack(opener):
    """Hundreds of levels used to end in a RecursionError (UNKNOWN over gRPC)."""
    closer = "]" if opener == "[" else "}"
    for depth in (MAX_SPEC_DEPTH, 400, 5000):
        text = BASE + "x: " + opener * depth + "1" + closer * depth + "\n"
        errs = errors(text)
        assert errs[0][0] == "<yaml>", errs
        assert f"nested deeper than {MAX_SPEC_DEPTH} levels" in errs[0][1], errs
    # one level less than the bound is composed, and refused by validation (an unknown field)
    depth = MAX_SPEC_DEPTH - 2  # the top mapping and the field's value
    errs = errors(BASE + "x: " + opener * depth + "1" + closer * depth + "\n")
    assert errs[0][0] == "x", errs


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (BASE + "name: second\n", "name"),
        (BASE.replace("count: 2,", "count: 2, count: 3,"), "count"),
        (BASE + "seed: 1\nseed: 1\n", "seed"),
    ],
)
def test_a_key_given_twice_is_refused(text, key):
    errs = errors(text)
    assert errs[0][0] == "<yaml>" and f"found the key {key!r} twice" in errs[0][1], errs


def test_a_time_series_too_long_to_hold_is_refused():
    errs = errors(BASE.replace("duration: 10s", "duration: 720h\nsample_interval: 1s"))
    assert errs[0][0] == "<spec>" or "sample_interval" in errs[0][1], errs
    assert "over the bound of 1000000; sample less often" in errs[0][1]
    assert load_spec_text(BASE.replace("duration: 10s", "duration: 720h\nsample_interval: 1h"))


@pytest.mark.parametrize(
    ("workload", "needle"),
    [
        ("{kind: kernel_noise, rate: 2e6}", "less than or equal to 1000000"),
        ("{kind: page_cache, file_size: 2TiB}", "less than or equal to 1099511627776"),
        (
            "{kind: script, steps: [{workload: {kind: page_cache, file_size: 1TiB}, until: done}]}",
            "page_cache files in all",
        ),
    ],
)
def test_workload_sizes_are_bounded(workload, needle):
    text = (
        "name: b\nduration: 1s\nhosts: [{name: h, memory: 1GiB}]\n"
        f"guest_groups: [{{name: g, count: 100, memory: 64MiB, workload: {workload}}}]\n"
    )
    errs = errors(text)
    assert any(needle in msg for _, msg in errs), errs


def test_synthetic_trace_samples_are_bounded_over_the_group():
    text = (
        "name: b\nduration: 1s\nhosts: [{name: h, memory: 1GiB}]\n"
        "guest_groups: [{name: g, count: 10000, memory: 64MiB, workload: "
        "{kind: trace, format: synthetic, trace_duration: 720h, trace_interval: 60s}}]\n"
    )
    errs = errors(text)
    assert any("synthetic trace samples" in msg for _, msg in errs), errs


@pytest.mark.parametrize("value", [".inf", ".nan", "1e30GiB", "1e30h"])
def test_sizes_and_durations_are_finite_and_bounded(value):
    text = (
        "name: b\nduration: 1s\nhosts: [{name: h, memory: 1GiB}]\n"
        f"guest_groups: [{{name: g, memory: 64MiB, workload: {{kind: kernel_noise, start: {value}, "
        f"mean_lifetime: 1s}}}}]\n"
    )
    errs = errors(text)
    assert any(path.endswith("start") for path, _ in errs), errs


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("[" * 3000 + "]" * 3000, "nested deeper than"),
        ("[&a 1, *a]", "aliases (*name) are not allowed"),
        ("{a: 1, a: 2}", "found the key 'a' twice"),
    ],
)
def test_set_values_are_read_as_specs_are(value, needle):
    """--set values go through the spec's own YAML loader, with a long value cut short."""
    with pytest.raises(SpecError) as e:
        load_spec_text(BASE, [f"seed={value}"])
    assert e.value.errors[0][0] == "--set" and needle in e.value.errors[0][1], e.value.errors
    assert len(e.value.errors[0][1]) < 300


@pytest.mark.parametrize(
    ("override", "field", "needle"),
    [
        ("placement.max_overcommit_ratio=.inf", "placement.max_overcommit_ratio", "1000"),
        ("placement.max_overcommit_ratio=1e308", "placement.max_overcommit_ratio", "1000"),
        ("duration=120", "<spec>", "a duration without a unit is in nanoseconds"),
        ("sweep={grid: {guest_groups.0.count: []}}", "sweep", "grid.guest_groups.0.count: needs"),
        ("sweep={seeds: [1, 2, 1]}", "sweep", "seeds: [1] given more than once"),
        ("sweep={grid: {seed: [1, 2]}, seeds: [3]}", "sweep", "grid.seed and seeds both"),
    ],
)
def test_values_that_used_to_crash_or_mislead_later_are_refused(override, field, needle):
    with pytest.raises(SpecError) as e:
        load_spec_text(BASE, [override])
    assert e.value.errors[0][0] == field and needle in e.value.errors[0][1], e.value.errors


def test_a_spec_file_that_is_not_utf8_is_named(tmp_path):
    from services.sim.spec import load_spec

    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: x\n\xff\xfe")
    with pytest.raises(SpecError, match=r"bin\.yaml: not UTF-8 text \(byte 0xff at 8\)"):
        load_spec(str(path))


@pytest.mark.parametrize(
    "change, field",
    [
        ("count: '4'", "guest_groups.0.count"),
        ("count: true", "guest_groups.0.count"),
        ("count: 4.5", "guest_groups.0.count"),
        ("reporting: {order: true}", "guest_groups.0.reporting.order"),
        ("reporting: {enabled: 'yes'}", "guest_groups.0.reporting.enabled"),
        ("reporting: {enabled: yes}", "guest_groups.0.reporting.enabled"),
        ("reporting: {enabled: on}", "guest_groups.0.reporting.enabled"),
        ("reporting: {enabled: 1}", "guest_groups.0.reporting.enabled"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_not_coerced(change, field) -> None:
    """A count given as a string or a boolean, or a switch given as a number, is refused
    naming its field (pydantic's lax mode would have read "4" as 4 and true as 1)."""
    text = (
        "name: t\nduration: 1s\nhosts: [{name: h, memory: 1GiB}]\n"
        f"guest_groups: [{{name: g, memory: 64MiB, {change}}}]\n"
    )
    assert field in [path for path, _ in errors(text)]


def test_numbers_yaml_1_1_reads_as_strings_are_numbers() -> None:
    """2e6 and 1.5e6 (no dot, or no exponent sign) are numbers in a spec, as in YAML 1.2."""
    spec = load_spec_text(
        "name: t\nduration: 1s\nhosts: [{name: h, memory: 1GiB}]\n"
        "guest_groups: [{name: g, count: 1, memory: 64MiB,"
        " workload: {kind: kernel_noise, rate: 2e5}}]\n"
    )
    assert spec.guest_groups[0].workload.rate == 200_000.0


@pytest.mark.parametrize(("written", "count"), [("010", 10), ("0x10", 16), ("1_000", 1000)])
def test_integers_read_as_yaml_1_2_reads_them(written, count) -> None:
    """YAML 1.1 read count: 010 as eight (octal) and 1:00 as sixty (base 60)."""
    spec = load_spec_text(BASE.replace("count: 2", f"count: {written}"))
    assert spec.guest_groups[0].count == count


def test_a_name_yaml_1_1_would_read_as_false_is_a_name() -> None:
    assert load_spec_text(BASE.replace("name: ok", "name: NO")).name == "NO"


def test_a_base_60_number_is_refused_as_a_count() -> None:
    assert "guest_groups.0.count" in [p for p, _ in errors(BASE.replace("count: 2", "count: 1:00"))]


@pytest.mark.parametrize(
    ("change", "field", "shown"),
    [
        ("epoch: 1us", "epoch", "(1 ms)"),
        ("duration: 100000h", "duration", "(720 h)"),
        ("hosts: [{name: h, count: 1, memory: 1PiB}]", "hosts.0.memory", "(64.00 TiB)"),
    ],
)
def test_a_bound_on_a_duration_or_a_size_is_shown_in_units(change, field, shown) -> None:
    """pydantic states bounds in nanoseconds and bytes (1000000 for 1 ms)."""
    key = change.split(":")[0]
    text = "\n".join(change if line.startswith(f"{key}:") else line for line in BASE.splitlines())
    text += "" if f"\n{key}:" in BASE else f"\n{change}\n"
    messages = dict(errors(text))
    assert messages[field].endswith(shown), messages


def test_a_bound_on_a_count_is_shown_as_it_is() -> None:
    messages = dict(errors(BASE.replace("count: 2", "count: 100001")))
    assert messages["guest_groups.0.count"].endswith("100000"), messages
