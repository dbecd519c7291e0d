"""script: steps in sequence and as overlays, ending when done or after a duration
(pure: a guest shard, no host); and the spec's script kind."""

import pytest

from services.guest.core.config import GuestConfig
from services.guest.core.kernel_noise import KernelNoiseConfig
from services.guest.core.pagecache import PageCacheConfig
from services.guest.core.script import ScriptConfig, ScriptStep
from services.guest.core.willitscale import WillItScaleConfig
from services.guest.core.workloads import MemhogConfig, PhaseConfig
from services.guest.shard import GuestInit, GuestShard
from services.sim.core_configs import workload_config
from services.sim.spec import SpecError, load_spec_text

MIB = 1 << 20
S = 1_000_000_000


def hog(target, rate_mib):
    return MemhogConfig(
        phases=(
            PhaseConfig("grow", 10 * S, target, rate_mib * MIB, until_done=True),
            PhaseConfig("free", 10 * S, 0.0, 2 * rate_mib * MIB, until_done=True),
        )
    )


def run(config, t_end, epoch):
    sh = GuestShard(0, [GuestInit(0, "g", 0, GuestConfig(nr_pages=65536), config)], seed=2)
    t = 0
    while t < t_end:
        sh.run_epoch(t, t + epoch)
        t += epoch
    return sh.slots[0].workload


@pytest.mark.parametrize("epoch", [10_000_000, 50_000_000])
def test_a_step_that_ends_when_done_starts_the_next_at_that_moment(epoch):
    """hog 1 (grow 40 % at 64 MiB/s, free at 128 MiB/s) then, 250 ms after it is done,
    hog 2: its start is hog 1's exact end, whatever the epoch."""
    script = ScriptConfig(
        steps=(
            ScriptStep(hog(0.4, 64), until_done=True),
            ScriptStep(hog(0.2, 64), after_ns=250_000_000, until_done=True),
        )
    )
    w = run(script, 6 * S, epoch)
    first, second = w._all[0].runner, w._all[1].runner
    pages = int(0.4 * 65536)
    expect = (pages * 4096 * S) // (64 * MIB) + (pages * 4096 * S) // (128 * MIB)
    assert abs(first.finished_ns - expect) <= 2
    assert w._all[1].start_ns == first.finished_ns + 250_000_000
    assert second.finished and w.finished


def test_durations_overlays_and_at_times():
    """kernel_noise in the background from the start; a page_fault1 step for exactly
    500 ms; then a page cache fill until done; a hog at an absolute 2 s."""
    script = ScriptConfig(
        steps=(
            ScriptStep(KernelNoiseConfig(rate_per_s=500), overlay=True),
            ScriptStep(WillItScaleConfig("page_fault1", region_bytes=16 * MIB), duration_ns=S // 2),
            ScriptStep(PageCacheConfig(file_bytes=32 * MIB), until_done=True),
            ScriptStep(hog(0.3, 256), at_ns=2 * S, until_done=True),
        )
    )
    w = run(script, 3 * S, 20_000_000)
    noise, wis, cache, h = (r.runner for r in w._all)
    starts = [r.start_ns for r in w._all]
    assert starts[:2] == [0, 0] and starts[2] == S // 2 and starts[3] == 2 * S
    assert wis.finished and wis.benchmark_ops > 0
    assert cache.finished and cache.misses == (32 * MIB) >> 12
    assert h.finished and noise.stats.pages_allocated > 0 and not noise.finished
    assert not w.finished  # the overlay runs on


def test_a_spec_script_builds_the_core_steps():
    text = """
name: s
duration: 4s
hosts: [{name: h, memory: 1GiB}]
guest_groups:
  - name: g
    memory: 512MiB
    workload:
      kind: script
      steps:
        - {workload: {kind: kernel_noise, rate: 100}, overlay: true}
        - {workload: {kind: page_cache, file_size: 64MiB}, until: done}
        - workload:
            kind: memhog
            phases: [{action: grow, target: 0.5, until: done}, {action: free, target: 0, until: done}]
          until: done
          after: 1s
        - {workload: {kind: page_fault2, tasks: 2}, duration: 1s}
"""
    spec = load_spec_text(text)
    cfg = workload_config(spec.guest_groups[0])
    assert isinstance(cfg, ScriptConfig) and len(cfg.steps) == 4
    assert cfg.steps[2].after_ns == S and cfg.steps[2].workload.phases[0].until_done
    assert cfg.steps[3].duration_ns == S and cfg.steps[0].overlay


@pytest.mark.parametrize(
    ("steps", "needle"),
    [
        ("[{workload: {kind: idle}}]", "until: done or a duration"),
        ("[{workload: {kind: trace, format: synthetic}, until: done}]", "workload"),
        (
            "[{workload: {kind: memhog, phases: [{action: idle, until: done}]}, until: done}]",
            "until: done applies",
        ),
        (
            "[{workload: {kind: memhog, phases: [{action: grow, target: 0.5}]}, until: done}]",
            "needs a duration",
        ),
        ("[]", "steps"),
    ],
)
def test_bad_scripts_name_the_field(steps, needle):
    text = f"""
name: s
duration: 4s
hosts: [{{name: h, memory: 1GiB}}]
guest_groups: [{{name: g, memory: 512MiB, workload: {{kind: script, steps: {steps}}}}}]
"""
    with pytest.raises(SpecError) as e:
        load_spec_text(text)
    assert needle in str(e.value) and "guest_groups.0.workload" in str(e.value)


def test_phases_done_on_arrival_in_a_repeat_do_not_spin():
    """grow to 0 and free to 0, both until done, repeated: every phase is done at once;
    the epoch still ends (hostile-input finding)."""
    wl = MemhogConfig(
        phases=(
            PhaseConfig("grow", 10 * S, 0.0, None, until_done=True),
            PhaseConfig("free", 10 * S, 0.0, None, until_done=True),
        ),
        repeat=True,
    )
    w = run(wl, 100_000_000, 10_000_000)
    assert not w.finished and w.held.count == 0
