"""Trace guest groups in specs: one guest per trace, memory from the trace, paths confined,
and a fleet replay run end to end in-process (pure: files in tmp_path, no servers)."""

import os

import numpy as np
import pytest

from services.sim.placement import place
from services.sim.plan import make_plan
from services.sim.spec import SpecError, load_spec, load_spec_text, with_trace_root
from services.sim.trace_groups import group_traces
from services.sim.traces import synthetic, write_bitbrains

GIB = 1 << 30
MIB = 1 << 20

SPEC = """
name: fleet
duration: 4s
hosts: [{{name: h, count: 2, memory: 8GiB}}]
guest_groups:
  - name: vms
    {extra}
    workload: {{kind: trace, format: bitbrains, path: {path}, time_scale: 300}}
"""


def fleet_dir(tmp_path, sizes_mib=(100, 300, 50)):
    d = tmp_path / "traces"
    d.mkdir()
    for i, mib in enumerate(sizes_mib):
        t = synthetic("step", 1, i, memory_bytes=mib * MIB, duration_s=1200)
        write_bitbrains(t, d / f"vm{i:02d}.csv")
    return d


def spec_file(tmp_path, path="traces", extra=""):
    f = tmp_path / "fleet.yaml"
    f.write_text(SPEC.format(path=path, extra=extra))
    return f


def test_one_guest_per_trace_file_sized_by_its_trace(tmp_path):
    fleet_dir(tmp_path)
    spec = load_spec(str(spec_file(tmp_path)))
    _, guests = place(spec, group_traces(spec))
    assert [g.trace.name for g in guests] == ["vm00", "vm01", "vm02"]
    # 100 MiB -> 100 MiB (a multiple of 4 MiB), 300 -> 300, 50 -> 52 (rounded up)
    assert [g.memory // MIB for g in guests] == [100, 300, 52]


def test_count_caps_the_traces_and_memory_scales_them(tmp_path):
    fleet_dir(tmp_path)
    spec = load_spec(str(spec_file(tmp_path, extra="count: 2\n    memory: 1GiB")))
    plan = make_plan(spec, "x", 1)
    assert len(plan.guests) == 2 and all(g.memory == GIB for g in plan.guests)
    init = plan.shard_inits[0][1]
    trace = plan.guests[1].trace
    scale = GIB / trace.memory_bytes
    expect = np.floor(trace.usage_bytes * scale / 4096).astype(np.int64)
    assert np.array_equal(init.workload.target_pages, expect)
    assert init.workload.times_ns[1] == 1_000_000_000  # 300 s of trace at time_scale 300


def test_synthetic_groups_need_count_and_memory(tmp_path):
    text = (
        "name: s\nduration: 2s\nhosts: [{name: h, memory: 8GiB}]\n"
        "guest_groups: [{name: g, count: 3, memory: 256MiB,"
        " workload: {kind: trace, format: synthetic, shape: bursty, trace_duration: 1h}}]\n"
    )
    spec = load_spec_text(text)
    traces = group_traces(spec)
    assert [t.name for t in traces[0]] == ["bursty-00000", "bursty-00001", "bursty-00002"]
    with pytest.raises(SpecError, match="memory is required for synthetic"):
        load_spec_text(text.replace(" memory: 256MiB,", ""))


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("../outside", "must be relative to the trace directory"),
        ("/etc", "must be relative to the trace directory"),
        ("link", "leaves the trace directory"),
    ],
)
def test_served_specs_cannot_reach_outside_the_trace_directory(tmp_path, path, needle):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "link")
    spec = with_trace_root(load_spec_text(SPEC.format(path=path, extra="")), root)
    with pytest.raises(SpecError) as e:
        group_traces(spec)
    assert "guest_groups.0.workload.path" in str(e.value) and needle in str(e.value)


def test_a_spec_without_a_trace_directory_refuses_trace_files():
    with pytest.raises(SpecError, match="trace files need a trace directory"):
        group_traces(load_spec_text(SPEC.format(path="traces", extra="")))


def test_a_broken_trace_file_names_the_field_and_the_file(tmp_path):
    d = fleet_dir(tmp_path)
    (d / "vm01.csv").write_text("garbage\n1;2\n")
    with pytest.raises(SpecError) as e:
        group_traces(load_spec(str(spec_file(tmp_path))))
    assert "guest_groups.0.workload.path" in str(e.value) and "vm01.csv:1" in str(e.value)


def test_fleet_replay_runs_and_held_memory_follows_the_traces(tmp_path):
    """In-process run, samples every simulated second = every trace sample (300 s at
    time_scale 300): the group's held memory at second k is the sum of the guests'
    sample k-1 (each reached within the second, none of it yet moved to sample k)."""
    from services.sim.runner import run_experiment

    fleet_dir(tmp_path, (64, 128))
    spec = load_spec(str(spec_file(tmp_path)))
    result = run_experiment(spec, out_dir=str(tmp_path / "runs"), transport="inprocess")
    ts = result.timeseries
    held = ts[(ts["variant"] == "run") & ts["held_bytes"].notna()].set_index("time_s")["held_bytes"]
    inits = make_plan(spec, "x", 1).shard_inits[0]
    for k in range(1, 5):
        expect = sum(int(i.workload.target_pages[k - 1]) for i in inits) * 4096
        assert held[float(k)] == expect, k


def test_the_bundled_fleet_replay_and_its_baseline_validate_and_place():
    """experiments/fleet-replay.yaml: 8 VMs of 2 GiB from the bundled directory; its
    reporting_off baseline (a copy through resolved_dict) keeps the trace directory."""
    from services.sim.spec import baseline_spec

    spec = load_spec("experiments/fleet-replay.yaml")
    base = baseline_spec(spec, "reporting_off")
    for s in (spec, base):
        _, guests = place(s, group_traces(s))
        assert len(guests) == 8 and {g.memory for g in guests} == {2 * GIB}
    assert base.trace_root == spec.trace_root


def test_run_metadata_carries_a_digest_of_the_trace_files(tmp_path):
    """The run id hashes the spec, not the files: metadata.json names how many trace files
    a group replays and a SHA-256 of their contents, which moves when a file changes."""
    from services.sim.trace_groups import trace_digests

    d = fleet_dir(tmp_path, (64, 128))
    spec = load_spec(str(spec_file(tmp_path)))
    first = trace_digests(make_plan(spec, "x", 1).guests)
    assert first["vms"]["files"] == 2
    text = (d / "vm01.csv").read_text()
    (d / "vm01.csv").write_text(text.replace(";\t0.0;\t0.0\n", ";\t0.0;\t1.0\n", 1))
    second = trace_digests(make_plan(spec, "x", 1).guests)
    assert second["vms"]["sha256"] != first["vms"]["sha256"]
    assert spec.run_id() == load_spec(str(spec_file(tmp_path))).run_id()


def test_page_cache_share_and_google_page_cache_reach_the_core(tmp_path):
    fleet_dir(tmp_path)
    spec = load_spec(str(spec_file(tmp_path)))
    text = (
        spec_file(tmp_path)
        .read_text()
        .replace("time_scale: 300", "time_scale: 300, page_cache: 0.25")
    )
    (tmp_path / "fleet.yaml").write_text(text)
    plan = make_plan(load_spec(str(tmp_path / "fleet.yaml")), "x", 1)
    base = make_plan(spec, "x", 1)
    for with_cache, plain in zip(plan.shard_inits[0], base.shard_inits[0], strict=True):
        total = plain.workload.target_pages
        cache = with_cache.workload.cache_pages
        assert np.array_equal(cache, np.floor(total * 0.25).astype(np.int64))
        assert np.array_equal(with_cache.workload.target_pages + cache, total)
    with pytest.raises(SpecError, match="page_cache"):
        load_spec_text(
            SPEC.format(path="traces", extra="").replace("time_scale: 300", "page_cache: trace")
        )


def test_google_page_cache_trace_needs_the_field(tmp_path):
    import json

    row = {
        "start_time": 0, "collection_id": 1, "instance_index": 0,
        "average_usage": {"memory": 0.1}, "maximum_usage": {"memory": 0.1},
        "assigned_memory": 0.5,
    }  # fmt: skip
    (tmp_path / "u.json").write_text(json.dumps(row) + "\n")
    text = SPEC.format(path="u.json", extra="").replace(
        "format: bitbrains", "format: google2019, machine_memory: 4GiB, page_cache: trace"
    )
    (tmp_path / "g.yaml").write_text(text)
    with pytest.raises(SpecError, match=r"workload\.page_cache.*page_cache_memory"):
        group_traces(load_spec(str(tmp_path / "g.yaml")))
    row["page_cache_memory"] = 0.2
    (tmp_path / "u.json").write_text(json.dumps(row) + "\n")
    (init,) = make_plan(load_spec(str(tmp_path / "g.yaml")), "x", 1).shard_inits[0]
    assert init.workload.cache_pages.tolist() == [int(0.2 * 4 * GIB) // 4096]
    assert init.workload.target_pages.tolist() == [int(0.1 * 4 * GIB) // 4096]


def test_a_corrupt_timestamp_far_in_the_future_is_refused_before_the_run(tmp_path):
    """A sample 3,000 years after the first would overflow simulated time (hostile input)."""
    d = tmp_path / "traces"
    d.mkdir()
    t = synthetic("step", 1, 0, memory_bytes=256 * MIB, duration_s=1200)
    write_bitbrains(t, d / "vm00.csv")
    lines = (d / "vm00.csv").read_text().splitlines()
    lines[-1] = "99999999999" + lines[-1][lines[-1].index(";") :]
    (d / "vm00.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError, match=r"workload\.path.*vm00\.csv.*over 30 simulated days"):
        group_traces(load_spec(str(spec_file(tmp_path))))


def test_trace_cache_above_what_the_guest_can_allocate_is_warned(tmp_path):
    from services.sim.spec_checks import spec_warnings

    fleet_dir(tmp_path, (100,))
    full = (
        spec_file(tmp_path)
        .read_text()
        .replace("time_scale: 300", "time_scale: 300, page_cache: 0.5")
    )
    (tmp_path / "fleet.yaml").write_text(full)
    spec = load_spec(str(tmp_path / "fleet.yaml"))
    assert spec_warnings(spec, make_plan(spec, "x", 1)) == []  # the step shape stays below
    plan = make_plan(spec, "x", 1)
    init = plan.shard_inits[0][0]
    object.__setattr__(
        init.workload, "cache_pages", init.workload.cache_pages * 0 + init.config.nr_pages
    )
    ((field, message),) = spec_warnings(spec, plan)
    assert field == "guest_groups.0.workload.page_cache" and "vm00" in message


def test_the_trace_files_of_a_spec_are_bounded_in_all_before_any_is_read(tmp_path, monkeypatch):
    """Many files each under the one-file bound are refused by their sum, naming the field,
    before any is parsed (the bound is lowered to the fleet's size to keep the test small)."""
    from services.sim import trace_groups

    d = fleet_dir(tmp_path)
    total = sum(f.stat().st_size for f in d.iterdir())
    spec = load_spec(str(spec_file(tmp_path)))
    monkeypatch.setattr(trace_groups, "MAX_TOTAL_TRACE_BYTES", total)
    assert len(group_traces(spec)[0]) == 3  # exactly the bound: read
    monkeypatch.setattr(trace_groups, "MAX_TOTAL_TRACE_BYTES", total - 1)
    (d / "vm01.csv").write_text("garbage that a read would trip on\n" * 2000)
    with pytest.raises(SpecError) as e:
        group_traces(spec)
    assert "guest_groups.0.workload.path" in str(e.value) and "in all" in str(e.value)


def test_a_gzip_trace_that_expands_past_the_file_bound_is_refused(tmp_path, monkeypatch):
    """A small .gz can expand a thousandfold: decompression stops at the one-file bound."""
    import gzip
    import json

    from services.sim import trace_files

    row = {
        "start_time": 0, "collection_id": 1, "instance_index": 0,
        "average_usage": {"memory": 0.1}, "maximum_usage": {"memory": 0.1},
        "assigned_memory": 0.5,
    }  # fmt: skip
    text = "".join(  # 100 VMs of 20 samples, 5 minutes apart
        json.dumps({**row, "collection_id": c, "start_time": i * 300_000_000}) + "\n"
        for c in range(1, 101)
        for i in range(20)
    )
    with gzip.open(tmp_path / "u.json.gz", "wt") as f:
        f.write(text)
    assert (tmp_path / "u.json.gz").stat().st_size < len(text) // 20
    spec_text = SPEC.format(path="u.json.gz", extra="").replace(
        "format: bitbrains", "format: google2019, machine_memory: 4GiB"
    )
    (tmp_path / "g.yaml").write_text(spec_text)
    spec = load_spec(str(tmp_path / "g.yaml"))
    assert len(group_traces(spec)[0]) == 100  # under the bound: read as before
    from services.sim import trace_groups

    # the spec's total counts a .gz decompressed: its compressed size would pass
    monkeypatch.setattr(trace_groups, "MAX_TOTAL_TRACE_BYTES", len(text) - 1)
    with pytest.raises(SpecError, match=r"workload\.path.*\.gz file counted decompressed"):
        group_traces(spec)
    monkeypatch.setattr(trace_groups, "MAX_TOTAL_TRACE_BYTES", 4 << 30)
    monkeypatch.setattr(trace_files, "MAX_TRACE_FILE_BYTES", len(text) - 1)
    with pytest.raises(SpecError, match=r"workload\.path.*decompressed"):
        group_traces(spec)


def test_samples_a_trace_reader_dropped_are_warned_once_per_group(tmp_path, capsys):
    """Alibaba samples outside 0..100 % are dropped as the format's notes say; the run
    says so once for the group (both containers come from one file), after the run."""
    from services.sim.cli import main
    from services.sim.spec_checks import spec_warnings

    (tmp_path / "u.csv").write_text(
        "c_1,m_1,0,10,50,1,2,3,4,5,6\nc_1,m_1,300,10,101,1,2,3,4,5,6\n"
        "c_1,m_1,600,10,25,1,2,3,4,5,6\nc_2,m_1,0,10,20,1,2,3,4,5,6\n"
        "c_2,m_1,300,10,-1,1,2,3,4,5,6\nc_2,m_1,600,10,40,1,2,3,4,5,6\n"
    )
    (tmp_path / "m.csv").write_text(
        "c_1,m_1,0,app,started,400,400,1.0\nc_2,m_1,0,app,started,400,400,2.0\n"
    )
    text = SPEC.format(path="u.csv", extra="").replace(
        "format: bitbrains",
        "format: alibaba2018, machine_memory: 16GiB, meta_path: m.csv",
    )
    (tmp_path / "a.yaml").write_text(text)
    spec = load_spec(str(tmp_path / "a.yaml"))
    warned = [w for w in spec_warnings(spec, make_plan(spec, "x", 1)) if "dropped" in w[1]]
    assert warned == [
        (
            "guest_groups.0.workload.path",
            "2 trace(s) (first: c_1): mem_util_percent outside 0..100 dropped: 2 samples "
            "in the file",
        )
    ]
    argv = ["run", str(tmp_path / "a.yaml"), "--transport", "inprocess", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--set", "duration=1s"]) == 0
    assert capsys.readouterr().err.count("dropped: 2 samples") == 1
