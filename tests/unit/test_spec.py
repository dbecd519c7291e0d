"""Experiment spec validation, overrides, placement and run identity (no Ray, no sockets)."""

import pytest

from services.sim.core_configs import host_config
from services.sim.placement import place, shard_guests
from services.sim.quantities import parse_duration_ns, parse_size_bytes
from services.sim.spec import SpecError, baseline_spec, load_spec, load_spec_text

BASE = """
name: t
seed: 1
duration: 10s
hosts: [{name: h, count: 2, memory: 4GiB}]
guest_groups:
  - {name: a, count: 3, memory: 2GiB}
  - {name: b, count: 2, memory: 1GiB, workload: {kind: memhog, phases: [{action: grow, target: 0.5, duration: 1s}]}}
"""


def test_units_parse_and_name_the_field():
    assert parse_size_bytes("4GiB") == 4 << 30
    assert parse_size_bytes("512 MiB") == 512 << 20
    assert parse_size_bytes("2GB") == 2 * 10**9
    assert parse_duration_ns("50ms") == 50_000_000
    assert parse_duration_ns("5m") == 300 * 10**9
    with pytest.raises(ValueError, match="memory: cannot parse size '4 gigs'"):
        parse_size_bytes("4 gigs", "memory")
    with pytest.raises(ValueError, match="epoch"):
        parse_duration_ns(0.5, "epoch")


def test_quickstart_spec_is_valid():
    spec = load_spec("experiments/quickstart.yaml")
    hosts, guests = place(spec)
    assert spec.compare == ["reporting_off"]
    total_guest = sum(g.group.memory for g in guests)
    total_host = sum(h.group.memory for h in hosts)
    assert total_guest / total_host == pytest.approx(2.0)


def test_every_error_is_listed_with_its_path():
    bad = BASE.replace("duration: 10s", "duration: soon").replace("memory: 1GiB", "memory: 3MiB")
    bad = bad.replace("target: 0.5, ", "")
    with pytest.raises(SpecError) as e:
        load_spec_text(bad)
    paths = [p for p, _ in e.value.errors]
    assert "duration" in paths
    assert "guest_groups.1.memory" in paths
    assert any(p.startswith("guest_groups.1.workload.phases.0") for p in paths)


def test_unknown_field_is_refused():
    with pytest.raises(SpecError) as e:
        load_spec_text(BASE + "\nbogus: 1\n")
    assert e.value.errors[0][0] == "bogus"


def test_set_overrides_any_field_and_changes_run_id():
    a = load_spec_text(BASE)
    b = load_spec_text(BASE, ["guest_groups.0.reporting.order=10", "seed=7"])
    assert b.guest_groups[0].reporting.order == 10 and b.seed == 7
    assert a.run_id() != b.run_id()
    assert load_spec_text(BASE).run_id() == a.run_id()
    with pytest.raises(SpecError, match="no list index"):
        load_spec_text(BASE, ["guest_groups.9.count=1"])


def test_baseline_turns_reporting_off_everywhere_and_keeps_seed():
    spec = load_spec_text(BASE)
    base = baseline_spec(spec, "reporting_off")
    assert all(not g.reporting.enabled for g in base.guest_groups)
    assert base.seed == spec.seed and base.compare == []


def test_placement_first_fit_and_spread_respect_the_ratio():
    spec = load_spec_text(BASE)
    _, guests = place(spec)
    assert [g.host_id for g in guests] == [0, 0, 0, 0, 0]  # 2+2+2+1+1 = 8 GiB = 2.0 x 4 GiB
    spread = load_spec_text(BASE, ["placement.policy=spread"])
    _, guests = place(spread)
    # committed/memory after each: h0 .5 | h1 .5 | tie -> h0 1.0 | h1 .75 | h1 1.0
    assert [g.host_id for g in guests] == [0, 1, 0, 1, 1]
    crowded = load_spec_text(BASE, ["guest_groups.1.count=3"])
    _, guests = place(crowded)
    assert [g.host_id for g in guests] == [0, 0, 0, 0, 0, 1]
    tight = load_spec_text(BASE, ["placement.max_overcommit_ratio=0.5"])
    with pytest.raises(SpecError, match="fits on no host"):
        place(tight)


def test_shards_are_contiguous_by_host_and_cover_every_guest():
    spec = load_spec_text(BASE)
    _, guests = place(spec)
    for n in (1, 2, 3, 7):
        shards = shard_guests(guests, n)
        ids = [g.guest_id for s in shards for g in s]
        assert sorted(ids) == list(range(len(guests)))
        assert len(shards) == min(n, len(guests))


def test_host_config_maps_swap_costs_and_rejects_bad_cost_override():
    spec = load_spec_text(BASE, ["hosts.0.swap.read_latency=10us"])
    cfg = host_config(spec.hosts[0], 2.0)
    assert cfg.costs.swap_read_latency_ns == 10_000
    spec = load_spec_text(BASE, ["hosts.0.costs={fault_4k_ns: -1}"])
    with pytest.raises(SpecError, match="fault_4k_ns"):
        host_config(spec.hosts[0], 2.0)


def test_sync_interval_defaults_to_the_largest_multiple_of_epoch_up_to_1s_dividing_the_sample_interval():
    assert load_spec_text(BASE).sync_interval == 1_000_000_000
    assert load_spec_text(BASE + "sample_interval: 150ms\n").sync_interval == 150_000_000
    assert load_spec_text(BASE + "sample_interval: 3s\n").sync_interval == 1_000_000_000
    assert load_spec_text(BASE + "sample_interval: 1500ms\n").sync_interval == 750_000_000
    assert (
        load_spec_text(BASE + "epoch: 40ms\nsample_interval: 1s\n").sync_interval == 1_000_000_000
    )
    explicit = load_spec_text(BASE + "sync_interval: 200ms\n")
    assert explicit.sync_interval == 200_000_000
    # the resolved value is part of the run's identity
    assert explicit.run_id() != load_spec_text(BASE).run_id()


@pytest.mark.parametrize(
    "extra, message",
    [
        ("sync_interval: 70ms\n", "sync_interval (70000000 ns) must be a whole multiple of epoch"),
        ("sync_interval: 300ms\n", "sync_interval (300000000 ns) must divide sample_interval"),
        ("sync_pressure_fraction: 1.5\n", "sync_pressure_fraction"),
    ],
)
def test_bad_sync_settings_name_the_field(extra, message):
    with pytest.raises(SpecError) as e:
        load_spec_text(BASE + extra)
    assert message in str(e.value)
