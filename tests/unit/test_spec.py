"""Experiment spec validation, overrides, placement and run identity (no Ray, no sockets)."""

from typing import get_args

import pytest

from services.guest.core.config import GuestConfig
from services.guest.core.constants import MACHINES, ZONE_LAYOUTS
from services.guest.core.watermarks import zone_ranges
from services.sim.core_configs import guest_config, host_config
from services.sim.placement import place, shard_guests
from services.sim.quantities import parse_duration_ns, parse_size_bytes
from services.sim.spec import GuestGroup, SpecError, baseline_spec, load_spec, load_spec_text

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
        ("sync_interval: 70ms\n", "sync_interval (70 ms) must be a whole multiple of epoch"),
        ("sync_interval: 300ms\n", "sync_interval (300 ms) must divide sample_interval"),
        ("sync_pressure_fraction: 1.5\n", "sync_pressure_fraction"),
    ],
)
def test_bad_sync_settings_name_the_field(extra, message):
    with pytest.raises(SpecError) as e:
        load_spec_text(BASE + extra)
    assert message in str(e.value)


# --- guest kernel settings: zones, machine, lowmem, dma_zone, vcpus, sysctls ---

GUEST = """
name: t
duration: 10s
hosts: [{name: h, memory: 64GiB}]
guest_groups: [{name: g, memory: 4GiB}]
"""


def _guest_cfg(*overrides: str):
    spec = load_spec_text(GUEST, [f"guest_groups.0.{o}" for o in overrides])
    return guest_config(spec.guest_groups[0])


def test_spec_guest_defaults_are_the_core_defaults():
    group = load_spec_text(GUEST).guest_groups[0]
    assert (group.zones, group.machine, group.lowmem) == ("auto", "q35", None)
    assert guest_config(group) == GuestConfig(nr_pages=(4 << 30) // 4096)


def test_spec_choices_are_the_cores():
    assert set(get_args(GuestGroup.model_fields["zones"].annotation)) == set(ZONE_LAYOUTS)
    assert set(get_args(GuestGroup.model_fields["machine"].annotation)) == set(MACHINES)


@pytest.mark.parametrize(
    "override, field, expected",
    [
        ("zones=single", "zones", "single"),
        ("zones=auto", "zones", "auto"),
        ("machine=pc", "machine", "pc"),
        ("lowmem=2GiB", "lowmem_pages", (2 << 30) // 4096),
        ("lowmem=3072MiB", "lowmem_pages", (3 << 30) // 4096),
        (f"lowmem={8 << 30}", "lowmem_pages", (8 << 30) // 4096),
        ("lowmem=null", "lowmem_pages", None),
        ("dma_zone=false", "dma_zone", False),
        ("vcpus=8", "vcpus", 8),
        ("vcpus=1024", "vcpus", 1024),
        ("min_free_kbytes=67584", "min_free_kbytes", 67584),
        ("watermark_scale_factor=200", "watermark_scale_factor", 200),
        ("watermark_scale_factor=3000", "watermark_scale_factor", 3000),
        ("percpu_pagelist_high_fraction=8", "percpu_pagelist_high_fraction", 8),
        ("percpu_pagelist_high_fraction=0", "percpu_pagelist_high_fraction", 0),
    ],
)
def test_guest_kernel_settings_reach_the_guest_config(override, field, expected):
    assert getattr(_guest_cfg(override), field) == expected


@pytest.mark.parametrize(
    "override, field",
    [
        ("vcpus=0", "vcpus"),
        ("vcpus=2000", "vcpus"),
        ("machine=virt", "machine"),
        ("lowmem=3MiB", "lowmem"),
        ("lowmem=0", "lowmem"),
        ("lowmem=2050MiB", "lowmem"),
        ("lowmem=2TiB", "lowmem"),
        ("lowmem=lots", "lowmem"),
        ("percpu_pagelist_high_fraction=5", "percpu_pagelist_high_fraction"),
        ("percpu_pagelist_high_fraction=-1", "percpu_pagelist_high_fraction"),
        ("watermark_scale_factor=0", "watermark_scale_factor"),
        ("watermark_scale_factor=3001", "watermark_scale_factor"),
        ("min_free_kbytes=0", "min_free_kbytes"),
        ("zones=dma32_normal", "zones"),
        ("dma_zone=maybe", "dma_zone"),
    ],
)
def test_bad_guest_kernel_settings_name_the_field(override, field):
    with pytest.raises(SpecError) as e:
        load_spec_text(GUEST, [f"guest_groups.0.{override}"])
    assert [p for p, _ in e.value.errors] == [f"guest_groups.0.{field}"]
    assert field in str(e.value)


def test_zone_layout_follows_the_machine_and_lowmem():
    gib = (1 << 30) // 4096
    assert zone_ranges(_guest_cfg()) == [(0, 2 * gib), (2 * gib, 4 * gib)]  # q35, 4 GiB
    assert zone_ranges(_guest_cfg("memory=2GiB")) == [(0, 2 * gib)]
    assert zone_ranges(_guest_cfg("memory=2816MiB")) == [(0, 2 * gib), (2 * gib, 2816 * 256)]
    assert zone_ranges(_guest_cfg("machine=pc")) == [(0, 3 * gib), (3 * gib, 4 * gib)]
    assert zone_ranges(_guest_cfg("machine=pc", "memory=3GiB")) == [(0, 3 * gib)]
    assert zone_ranges(_guest_cfg("lowmem=1GiB")) == [(0, gib), (gib, 4 * gib)]
    assert zone_ranges(_guest_cfg("lowmem=4GiB")) == [(0, 4 * gib)]
    assert zone_ranges(_guest_cfg("lowmem=8GiB")) == [(0, 4 * gib)]
    assert zone_ranges(_guest_cfg("zones=single")) == [(0, 4 * gib)]


def test_guest_kernel_settings_are_part_of_the_run_id():
    base = load_spec_text(GUEST).run_id()
    ids = {
        load_spec_text(GUEST, [f"guest_groups.0.{o}"]).run_id()
        for o in ("machine=pc", "lowmem=1GiB", "dma_zone=false", "vcpus=2")
    }
    assert base not in ids and len(ids) == 4
