"""Trace loaders (each public format, good and broken files), the synthetic generator,
and the trace workload's replay (pure: files in tmp_path, the guest shard in-process)."""

import json

import numpy as np
import pytest

from services.guest.core.config import GuestConfig
from services.guest.core.trace_replay import TraceConfig
from services.guest.shard import GuestInit, GuestShard
from services.sim.traces import (
    ALIBABA_CONTAINER_USAGE_COLUMNS,
    BITBRAINS_HEADER,
    TraceError,
    load_alibaba2018,
    load_bitbrains,
    load_bitbrains_dir,
    load_google2019,
    synthetic,
    write_bitbrains,
)

GIB = 1 << 30
MIB = 1 << 20
HEADER = ";\t".join(BITBRAINS_HEADER)


def bitbrains_row(t, cap_kb, use_kb):
    return f"{t};\t4;\t11703.99824;\t10912.0;\t93.2;\t{cap_kb};\t{use_kb};\t0;\t5.8;\t0;\t0.1"


def write(path, text):
    path.write_text(text)
    return path


# ---------------------------------------------------------------- Bitbrains


def test_bitbrains_reads_unix_seconds_under_a_ms_header_and_says_so(tmp_path):
    rows = [bitbrains_row(1376314846 + 300 * i, 4194304, 1048576 + 1024 * i) for i in range(4)]
    t = load_bitbrains(write(tmp_path / "1.csv", HEADER + "\n" + "\n".join(rows) + "\n"))
    assert t.times_s.tolist() == [0.0, 300.0, 600.0, 900.0]
    assert t.memory_bytes == 4 * GIB
    assert t.usage_bytes.tolist() == [(1048576 + 1024 * i) * 1024 for i in range(4)]
    assert t.start_unix_s == 1376314846
    assert any("Unix seconds" in n for n in t.notes)


def test_bitbrains_real_milliseconds_are_divided(tmp_path):
    rows = [bitbrains_row(1376314846000 + 300_000 * i, 1024, 512) for i in range(3)]
    t = load_bitbrains(write(tmp_path / "2.csv", HEADER + "\n" + "\n".join(rows) + "\n"))
    assert t.times_s.tolist() == [0.0, 300.0, 600.0] and t.notes == ()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty file"),
        (HEADER + "\n", "no samples"),
        (HEADER.replace("Memory usage [KB]", "Mem [KB]") + "\n" + bitbrains_row(1, 2, 3), ":1:"),
        (
            HEADER + "\n" + bitbrains_row(1, 1024, 3) + "\n" + bitbrains_row(301, 1024, "abc"),
            ":3: column 'Memory usage [KB]': not a number: 'abc'",
        ),
        (
            HEADER + "\n" + bitbrains_row(600, 1024, 3) + "\n" + bitbrains_row(300, 1024, 3),
            ":3: column 'Timestamp [ms]': time goes backwards",
        ),
        (
            HEADER + "\n" + bitbrains_row(1, 1024, 3) + "\n" + bitbrains_row(2, 1024, -5),
            ":3: column 'Memory usage [KB]': negative",
        ),
        (  # found by tests/property/test_spec_fuzz.py: a short first row was a KeyError
            HEADER + "\n1376314846;\t4;\n" + bitbrains_row(2, 1024, 3),
            ":2: fewer fields than the header needs",
        ),
    ],
)
def test_broken_bitbrains_files_name_file_line_and_column(tmp_path, text, needle):
    path = write(tmp_path / "vm.csv", text)
    with pytest.raises(TraceError) as e:
        load_bitbrains(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_a_directory_loads_in_file_name_order(tmp_path):
    for i in (3, 1, 2):
        write_bitbrains(
            synthetic("step", 7, i, memory_bytes=GIB, duration_s=3600), tmp_path / f"{i}.csv"
        )
    traces = load_bitbrains_dir(tmp_path)
    assert [t.name for t in traces] == ["1", "2", "3"]
    assert [t.usage_bytes.tolist() for t in traces] == [
        synthetic("step", 7, i, memory_bytes=GIB, duration_s=3600).usage_bytes.tolist()
        for i in (1, 2, 3)
    ]


# ---------------------------------------------------------------- Google 2019


def google_line(t_us, cid, idx, avg, mx, assigned, cache=None):
    row = {
        "start_time": t_us,
        "end_time": t_us + 300_000_000,
        "collection_id": cid,
        "instance_index": idx,
        "machine_id": 99,
        "average_usage": {"cpus": 0.01, "memory": avg},
        "maximum_usage": {"cpus": 0.02, "memory": mx},
        "assigned_memory": assigned,
    }
    if cache is not None:
        row["page_cache_memory"] = cache
    return json.dumps(row)


def test_google2019_page_cache_memory_is_read_and_capped_by_the_vm(tmp_path):
    lines = [
        google_line(0, 1, 0, 0.002, 0.003, 0.01, cache=0.004),
        google_line(300_000_000, 1, 0, 0.008, 0.009, 0.01, cache=0.004),  # 0.008 + 0.004 > 0.01
    ]
    write(tmp_path / "u.json", "\n".join(lines) + "\n")
    assert load_google2019(tmp_path / "u.json", 256 * GIB)[0].cache_bytes is None  # not asked
    (t,) = load_google2019(tmp_path / "u.json", 256 * GIB, page_cache=True)
    assert t.cache_bytes.tolist() == [
        round(0.004 * 256 * GIB),
        t.memory_bytes - round(0.008 * 256 * GIB),
    ]
    plain = load_google2019(write(tmp_path / "p.json", google_line(0, 1, 0, 0.1, 0.1, 0.5)), GIB)
    assert plain[0].cache_bytes is None
    # protobuf JSON leaves zero fields out: a row without it (or null) has no cache
    rows = [google_line(0, 1, 0, 0.1, 0.1, 0.5, 0.1), google_line(300_000_000, 1, 0, 0.1, 0.1, 0.5)]
    null = json.loads(google_line(600_000_000, 1, 0, 0.1, 0.1, 0.5))
    rows.append(json.dumps({**null, "page_cache_memory": None}))
    gaps = write(tmp_path / "gaps.json", "\n".join(rows) + "\n")
    assert load_google2019(gaps, GIB)[0].cache_bytes is None
    assert load_google2019(gaps, GIB, page_cache=True)[0].cache_bytes.tolist()[1:] == [0, 0]
    neg = write(tmp_path / "n.json", google_line(0, 1, 0, 0.1, 0.1, 0.5, -0.1))
    assert load_google2019(neg, GIB)[0].cache_bytes is None  # not read unless asked
    with pytest.raises(TraceError, match="negative"):
        load_google2019(neg, GIB, page_cache=True)


def test_google2019_one_trace_per_instance_scaled_to_the_machine(tmp_path):
    lines = [
        google_line(600_000_000, 7, 1, 0.002, 0.003, 0.01),
        google_line(300_000_000, 7, 1, 0.001, 0.002, 0.01),
        google_line(300_000_000, 5, 0, 0.004, 0.005, 0.02),
    ]
    traces = load_google2019(write(tmp_path / "u.json", "\n".join(lines) + "\n"), 256 * GIB)
    assert [t.name for t in traces] == ["5-0", "7-1"]
    t = traces[1]
    assert t.times_s.tolist() == [0.0, 300.0]
    assert t.memory_bytes == int(0.01 * 256 * GIB)
    assert t.usage_bytes.tolist() == [round(0.001 * 256 * GIB), round(0.002 * 256 * GIB)]
    mx = load_google2019(tmp_path / "u.json", 256 * GIB, statistic="maximum")[1]
    assert mx.usage_bytes[0] == round(0.002 * 256 * GIB)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json\n", "not JSON lines"),
        (json.dumps({"start_time": 1, "collection_id": 1}) + "\n", "no 'instance_index' field"),
        (google_line(1, 1, 1, 0.1, 0.1, 0.0) + "\n", "assigned_memory is 0"),
        (  # found by tests/property/test_spec_fuzz.py: an OverflowError before
            google_line(1, 1, 1, 0.1, 0.1, 1e23) + "\n",
            ":1: column 'assigned_memory': normalised memory 1e+23 above 1",
        ),
    ],
)
def test_broken_google2019_files_are_refused(tmp_path, text, needle):
    path = write(tmp_path / "u.json", text)
    with pytest.raises(TraceError) as e:
        load_google2019(path, 64 * GIB)
    assert str(path) in str(e.value) and needle in str(e.value)


# ---------------------------------------------------------------- Alibaba 2018


def test_alibaba_container_usage_in_the_schema_order_drops_invalid_samples(tmp_path):
    usage = write(
        tmp_path / "container_usage.csv",
        "c_2,m_1,20,10,40,1.0,2,3,4,5,6\n"
        "c_1,m_1,10,10,50,1.0,2,3,4,5,6\n"
        "c_1,m_1,20,10,-1,1.0,2,3,4,5,6\n"
        "c_1,m_1,30,10,101,1.0,2,3,4,5,6\n"
        "c_1,m_1,40,10,25,1.0,2,3,4,5,6\n"
        "c_2,m_1,10,10,20,1.0,2,3,4,5,6\n",
    )
    meta = write(
        tmp_path / "container_meta.csv",
        "c_1,m_1,0,app,started,400,400,3.13\nc_2,m_1,0,app,started,400,400,6.25\n",
    )
    traces, dropped = load_alibaba2018(usage, 100 * GIB, meta)
    assert dropped == 2
    assert [t.name for t in traces] == ["c_1", "c_2"]
    c1, c2 = traces
    assert c1.memory_bytes == int(3.13 / 100 * 100 * GIB)
    assert c1.times_s.tolist() == [0.0, 30.0]
    assert c1.usage_bytes.tolist() == [round(0.5 * c1.memory_bytes), round(0.25 * c1.memory_bytes)]
    assert c2.times_s.tolist() == [0.0, 10.0] and c2.usage_bytes[1] == round(0.4 * c2.memory_bytes)


def test_alibaba_column_order_is_explicit(tmp_path):
    """The same samples written in another column order read the same with ``columns``."""
    other = (
        "machine_id",
        "container_id",
        "time_stamp",
        "mem_util_percent",
        "cpu_util_percent",
        *ALIBABA_CONTAINER_USAGE_COLUMNS[5:],
    )
    usage = write(
        tmp_path / "u.csv", "m_1,c_1,10,50,10,1,2,3,4,5,6\nm_1,c_1,20,25,10,1,2,3,4,5,6\n"
    )
    meta = write(tmp_path / "m.csv", "c_1,m_1,0,app,started,400,400,10\n")
    (t,), _ = load_alibaba2018(usage, 10 * GIB, meta, columns=other)
    assert t.usage_bytes.tolist() == [GIB // 2, GIB // 4]
    with pytest.raises(TraceError, match="no container_meta row for container 'm_1'"):
        load_alibaba2018(usage, 10 * GIB, meta)  # read in the schema order: ids are m_1


def test_alibaba_machine_usage_and_broken_files(tmp_path):
    usage = write(tmp_path / "machine_usage.csv", "m_1,0,10,50,1,2,3,4,5\nm_1,60,10,60,1,2,3,4,5\n")
    (t,), dropped = load_alibaba2018(usage, 64 * GIB, kind="machine")
    assert dropped == 0 and t.memory_bytes == 64 * GIB and t.usage_bytes[1] == round(0.6 * 64 * GIB)
    dup = write(tmp_path / "dup.csv", "m_1,0,10,50,1,2,3,4,5\nm_1,0,10,60,1,2,3,4,5\n")
    with pytest.raises(TraceError, match=r"dup.csv:2: column 'time_stamp': .* two samples"):
        load_alibaba2018(dup, GIB, kind="machine")
    bad = write(tmp_path / "bad.csv", "m_1,zero,10,50,1,2,3,4,5\n")
    with pytest.raises(TraceError, match=r"bad.csv:1: column 'time_stamp': not a number"):
        load_alibaba2018(bad, GIB, kind="machine")
    with pytest.raises(TraceError, match="empty file"):
        load_alibaba2018(write(tmp_path / "e.csv", ""), GIB, kind="machine")


# ---------------------------------------------------------------- synthetic


@pytest.mark.parametrize("shape", ["diurnal", "bursty", "step", "high_water_idle"])
def test_synthetic_traces_are_seeded_and_round_trip_through_bitbrains(tmp_path, shape):
    a = synthetic(shape, 11, 4, memory_bytes=8 * GIB)
    b = synthetic(shape, 11, 4, memory_bytes=8 * GIB)
    c = synthetic(shape, 11, 5, memory_bytes=8 * GIB)
    assert np.array_equal(a.usage_bytes, b.usage_bytes)
    assert not np.array_equal(a.usage_bytes, c.usage_bytes)
    assert a.usage_bytes.min() >= 0 and a.usage_bytes.max() <= 8 * GIB
    write_bitbrains(a, tmp_path / "a.csv")
    r = load_bitbrains(tmp_path / "a.csv")
    assert np.array_equal(r.times_s, a.times_s) and r.memory_bytes == a.memory_bytes
    assert np.abs(r.usage_bytes - a.usage_bytes).max() <= 1


def test_high_water_then_idle_is_the_ci_runner_shape():
    t = synthetic("high_water_idle", 3, 0, memory_bytes=10 * GIB)
    frac = t.usage_bytes / t.memory_bytes
    climb = len(t) // 10
    assert frac[:climb].max() >= 0.85 and abs(float(np.median(frac[climb:])) - 0.1) < 0.01


# ---------------------------------------------------------------- replay


NR_PAGES = (256 * MIB) >> 12
EPOCH = 50_000_000


def replay(config, t_end, fast=False):
    shard = GuestShard(
        0, [GuestInit(0, "g", 0, GuestConfig(nr_pages=NR_PAGES), config)], seed=3, fast=fast
    )
    wl = shard.slots[0].workload
    held = {}
    t = 0
    while t < t_end:
        shard.run_epoch(t, t + EPOCH)
        t += EPOCH
        held[t] = wl.held.count
    return wl, held


@pytest.mark.parametrize("thp", [False, True])
def test_replay_holds_each_sample_by_the_next_one(thp):
    """Invariant: at every sample time, the memory held is the previous sample's usage,
    rounded down to whole blocks (so within one block of the trace)."""
    s = 1_000_000_000
    times = np.array([0, 1, 2, 3, 5]) * s
    frac = np.array([0.1, 0.5, 0.2, 0.6, 0.0])
    pages = (frac * NR_PAGES).astype(np.int64) + 7  # not block multiples
    wl, held = replay(TraceConfig(times_ns=times, target_pages=pages, thp=thp), 7 * s)
    block = 512 if thp else 1
    for i in range(len(times) - 1):
        assert held[int(times[i + 1])] * block <= pages[i] < (held[int(times[i + 1])] + 1) * block
    assert wl.finished and wl.held.count == pages[-1] // block  # the last sample, held
    assert wl.stats.pages_allocated - wl.stats.pages_freed == wl.held.count * block


def test_replay_with_page_cache_holds_each_sample_by_the_next_one():
    """Invariant: anonymous memory and page cache each reach the previous sample's target by
    the next sample (exactly: order-0 pages); a shrinking cache gives pages back to the
    buddy allocator (counted with drop_caches) and the guest's cache holds the trace's."""
    s = 1_000_000_000
    times = np.array([0, 1, 2, 3]) * s
    anon = (np.array([0.1, 0.3, 0.2, 0.1]) * NR_PAGES).astype(np.int64)
    cache = (np.array([0.2, 0.4, 0.1, 0.0]) * NR_PAGES).astype(np.int64)
    shard = GuestShard(
        0,
        [
            GuestInit(
                0,
                "g",
                0,
                GuestConfig(nr_pages=NR_PAGES),
                TraceConfig(times, anon, cache_pages=cache),
            )
        ],
        seed=3,
    )
    wl = shard.slots[0].workload
    pc = shard.slots[0].guest.page_cache
    seen = {}
    t = 0
    while t < 5 * s:
        shard.run_epoch(t, t + EPOCH)
        t += EPOCH
        seen[t] = (wl.held.count, wl.cache_held, pc.pages)
    for i in range(len(times) - 1):
        assert seen[int(times[i + 1])] == (anon[i], cache[i], cache[i]), i
    assert wl.finished and wl.cache_held == 0 and pc.pages == 0
    assert pc.dropped_pages == cache.max()  # every page read was given back by shrinking
    a = shard.slots[0].guest.allocator
    assert a.free_pages_total() + a.pcp_pages() == NR_PAGES - anon[-1]


def test_replay_is_paced_by_the_grow_rate():
    """At 64 MiB/s, 128 MiB takes two simulated seconds: half way at 1 s."""
    pages = np.array([(128 * MIB) >> 12])
    cfg = TraceConfig(times_ns=np.array([0]), target_pages=pages, grow_bytes_per_s=64 * MIB)
    _, held = replay(cfg, 3_000_000_000)
    assert held[1_000_000_000] == pages[0] // 2
    assert held[2_000_000_000] == pages[0]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"times_ns": np.array([0, 5, 5]), "target_pages": np.array([1, 2, 3])},
            "strictly ascending",
        ),
        ({"times_ns": np.array([0, 1]), "target_pages": np.array([1])}, "one length"),
        ({"times_ns": np.array([0]), "target_pages": np.array([-1])}, ">= 0"),
        ({"times_ns": np.array([]), "target_pages": np.array([])}, "non-empty"),
        (
            {"times_ns": np.array([0]), "target_pages": np.array([1]), "cache_pages": [1, 2]},
            "cache_pages",
        ),
    ],
)
def test_bad_trace_configs_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TraceConfig(**kwargs)


def test_garbage_and_wrong_shapes_are_trace_errors(tmp_path):
    good = HEADER + "\n" + bitbrains_row(1, 1024, 3) + "\n"
    path = tmp_path / "g.csv"
    path.write_bytes(good.encode() + bytes(range(256)) * 8)
    with pytest.raises(TraceError, match=r"g\.csv"):
        load_bitbrains(path)
    bom = write(tmp_path / "bom.csv", "\ufeff" + good)
    assert load_bitbrains(bom).memory_bytes == 1024 * 1024  # a byte-order mark is fine
    g = write(
        tmp_path / "u.json",
        json.dumps(
            {
                "start_time": 1,
                "collection_id": 1,
                "instance_index": 0,
                "average_usage": 0.5,
                "assigned_memory": 0.1,
            }
        )
        + "\n",
    )
    with pytest.raises(TraceError, match="average_usage has no 'memory' field"):
        load_google2019(g, GIB)
    three = write(tmp_path / "c.csv", "c_1,m_1,10,10,50,1.0,2,3,4,5,6\n")
    with pytest.raises(TraceError, match="11 fields on a line, but the columns name 3"):
        load_alibaba2018(
            three, GIB, three, columns=("container_id", "time_stamp", "mem_util_percent")
        )


# ---------------------------------------------------------------- line numbers (hostile input)


def test_blank_lines_are_skipped_and_errors_name_the_real_line(tmp_path):
    """Blank lines are skipped as the CSV parser skips them; an error after them names the
    line it is really on, in both formats (hostile-input finding)."""
    rows = [bitbrains_row(1376314846 + 300 * i, 1024, 512) for i in range(4)]
    ok = write(tmp_path / "ok.csv", HEADER + "\n\n" + "\n\n".join(rows) + "\n")
    assert len(load_bitbrains(ok)) == 4
    rows[2] = bitbrains_row(1376314846 + 600, 1024, "abc")
    bad = write(tmp_path / "bad.csv", HEADER + "\n\n" + "\n\n".join(rows) + "\n")
    with pytest.raises(TraceError, match=r"bad\.csv:7: column 'Memory usage \[KB\]'"):
        load_bitbrains(bad)
    rows[2] = bitbrains_row(1376314846, 1024, 512)  # time repeats the first sample's
    back = write(tmp_path / "back.csv", HEADER + "\n\n" + "\n\n".join(rows) + "\n")
    with pytest.raises(TraceError, match=r"back\.csv:7: column 'Timestamp \[ms\]'"):
        load_bitbrains(back)
    usage = write(
        tmp_path / "u.csv",
        "c_1,m_1,10,10,50,1.0,2,3,4,5,6\n\n\nc_1,m_1,x,10,25,1.0,2,3,4,5,6\n",
    )
    meta = write(tmp_path / "m.csv", "c_1,m_1,0,app,started,400,400,3.13\n")
    with pytest.raises(TraceError, match=r"u\.csv:4: column 'time_stamp'"):
        load_alibaba2018(usage, 100 * GIB, meta)
    dup = write(
        tmp_path / "d.csv", "c_1,m_1,10,10,50,1.0,2,3,4,5,6\n\nc_1,m_1,10,10,25,1.0,2,3,4,5,6\n"
    )
    with pytest.raises(TraceError, match=r"d\.csv:3: column 'time_stamp'"):
        load_alibaba2018(dup, 100 * GIB, meta)


def test_bitbrains_mixing_seconds_and_milliseconds_is_refused(tmp_path):
    rows = [bitbrains_row(1376314846, 1024, 512), bitbrains_row(1376315146000, 1024, 512)]
    path = write(tmp_path / "mix.csv", HEADER + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(TraceError, match=r"mix\.csv:3: .*mixes Unix seconds"):
        load_bitbrains(path)


def test_whitespace_and_cr_only_lines_and_google_blank_lines_keep_line_numbers(tmp_path):
    rows = [bitbrains_row(1376314846 + 300 * i, 1024, 512) for i in range(4)]
    rows[3] = bitbrains_row(1376314846 + 900, 1024, "abc")
    text = HEADER + "\n" + rows[0] + "\n   \n\t\n" + "\n".join(rows[1:]) + "\n"
    with pytest.raises(TraceError, match=r"ws\.csv:7:"):
        load_bitbrains(write(tmp_path / "ws.csv", text))
    with pytest.raises(TraceError, match=r"cr\.csv:5:"):
        load_bitbrains(
            write(tmp_path / "cr.csv", (HEADER + "\n" + "\n".join(rows)).replace("\n", "\r"))
        )
    lines = [google_line(300_000_000 * i, 1, 0, 0.1, 0.1, 0.5) for i in range(4)]
    lines[3] = google_line(900_000_000, 1, 0, -0.1, 0.1, 0.5)
    text = "\n".join(lines[:2]) + "\n\n \n" + "\n".join(lines[2:]) + "\n"
    with pytest.raises(TraceError, match=r"g\.json:6:"):
        load_google2019(write(tmp_path / "g.json", text), GIB)


def test_a_google2019_gz_that_is_not_gzip_or_is_cut_short_names_the_file(tmp_path):
    import gzip

    text = google_line(0, 1, 0, 0.1, 0.1, 0.5) + "\n"
    plain = write(tmp_path / "fake.json.gz", text)  # plain text under a .gz name
    with pytest.raises(TraceError, match=r"fake\.json\.gz: cannot be read"):
        load_google2019(plain, GIB)
    lines = "".join(google_line(i * 300_000_000, 1, 0, 0.1, 0.1, 0.5) + "\n" for i in range(200))
    whole = gzip.compress(lines.encode())
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TraceError, match=r"cut\.json\.gz: "):
        load_google2019(cut, GIB)
    good = tmp_path / "good.json.gz"
    good.write_bytes(whole)
    assert len(load_google2019(good, GIB)) == 1
