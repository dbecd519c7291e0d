"""Warnings about specs that are valid but cannot do what they say.

A spec can ask for something the guest can never reach: a memhog ``grow`` to a target
above what the guest can allocate with ``until: done`` (the phase then never ends, or
only at its duration cap), will-it-scale tasks whose regions together exceed the
guest's memory (faults fail and the tasks stall), or a script step that waits
``until: done`` on a workload that never finishes. The run still works; ``validate``
and ``run`` print these warnings, each with its field path, and ``metadata.json``
keeps them.
"""

from __future__ import annotations

from services.guest.core.kernel_noise import KernelNoiseConfig
from services.guest.core.script import ScriptConfig
from services.guest.core.trace_replay import TraceConfig
from services.guest.core.watermarks import guest_watermarks
from services.guest.core.willitscale import PAGE_FAULT2, WillItScaleConfig
from services.guest.core.workloads import GROW, MemhogConfig
from services.units import PAGE_SHIFT

from .core_configs import guest_config, workload_config
from .spec import ExperimentSpec


def spec_warnings(spec: ExperimentSpec, plan=None) -> list[tuple[str, str]]:
    """(field path, message) for every part of the spec that cannot do what it says.
    With the run's plan, trace groups are checked too (their guests come from files)."""
    out: list[tuple[str, str]] = []
    for gi, group in enumerate(spec.guest_groups):
        if group.is_trace:
            continue
        cfg = guest_config(group)
        wl = workload_config(group)
        _check(wl, f"guest_groups.{gi}.workload", cfg.nr_pages, _reach(cfg), out)
    if plan is not None:
        _check_traces(spec, plan, out)
    return out


def _reach(cfg) -> int:
    """Pages the guest can allocate: all but its min watermarks."""
    return cfg.nr_pages - sum(w[0] for w in guest_watermarks(cfg))


def _check_traces(spec: ExperimentSpec, plan, out: list[tuple[str, str]]) -> None:
    """A replayed trace whose memory plus page cache exceeds what the guest can allocate
    churns: kswapd takes the cache and the replay reads it back, sample after sample."""
    names = [g.name for g in spec.guest_groups]
    over: dict[str, list[str]] = {}
    for init in (i for shard in plan.shard_inits for i in shard):
        w = init.workload
        if isinstance(w, TraceConfig) and w.cache_pages is not None:
            peak = int((w.target_pages + w.cache_pages).max())
            if peak > _reach(init.config):
                over.setdefault(init.group, []).append(w.name)
    _trace_warnings(spec, plan, out)
    for group, traces in over.items():
        out.append(
            (
                f"guest_groups.{names.index(group)}.workload.page_cache",
                f"{len(traces)} trace(s) (first: {traces[0]}) ask for memory plus page cache "
                "above what the guest can allocate above its min watermarks: kswapd reclaims "
                "the cache and the replay reads it back, so the cache does not follow the trace",
            )
        )


def _trace_warnings(spec: ExperimentSpec, plan, out: list[tuple[str, str]]) -> None:
    """What the trace readers changed or left out of the files (samples dropped), once
    per group and warning, with the number of traces it applies to."""
    names = [g.name for g in spec.guest_groups]
    seen: dict[tuple[str, str], list[str]] = {}
    for guest in plan.guests:
        if guest.trace is None or guest.trace.source.startswith("synthetic:"):
            continue
        for note in dict.fromkeys(guest.trace.warnings):
            traces = seen.setdefault((guest.group.name, note), [])
            if guest.trace.name not in traces:
                traces.append(guest.trace.name)
    for (group, note), traces in seen.items():
        out.append(
            (
                f"guest_groups.{names.index(group)}.workload.path",
                f"{len(traces)} trace(s) (first: {traces[0]}): {note}",
            )
        )


def _mib(pages: int) -> str:
    return f"{pages >> (20 - PAGE_SHIFT)} MiB"


def _check(wl, field: str, nr_pages: int, reach: int, out: list[tuple[str, str]]) -> None:
    if isinstance(wl, WillItScaleConfig):
        per_task = wl.region_pages * (2 if wl.test == PAGE_FAULT2 else 1)
        need = wl.tasks * per_task
        if need > reach:
            cache = " and its page cache" if wl.test == PAGE_FAULT2 else ""
            out.append(
                (
                    f"{field}.tasks",
                    f"{wl.tasks} tasks x {_mib(per_task)} (each region{cache}) = {_mib(need)}, "
                    f"more than the {_mib(reach)} the guest can allocate above its min "
                    "watermarks: faults will fail and the tasks stall",
                )
            )
    elif isinstance(wl, MemhogConfig):
        block = 512 if wl.thp else 1
        for j, ph in enumerate(wl.phases):
            if ph.action != GROW or not ph.until_done or ph.target is None:
                continue
            target = int(ph.target * nr_pages) // block * block
            if target > reach:
                out.append(
                    (
                        f"{field}.phases.{j}.target",
                        f"grow to {ph.target} ({_mib(target)}) until done can never finish: "
                        f"the guest can allocate at most {_mib(reach)} (its min watermarks stay "
                        "free), so the phase runs to its duration cap",
                    )
                )
    elif isinstance(wl, ScriptConfig):
        for k, step in enumerate(wl.steps):
            sub = f"{field}.steps.{k}"
            _check(step.workload, f"{sub}.workload", nr_pages, reach, out)
            forever = isinstance(step.workload, WillItScaleConfig | KernelNoiseConfig) or (
                isinstance(step.workload, MemhogConfig) and step.workload.repeat
            )
            if step.until_done and forever and step.duration_ns is None:
                out.append(
                    (
                        f"{sub}.until",
                        "until: done on a workload that never finishes (will-it-scale, "
                        "kernel_noise, a repeating memhog): the step never ends unless it has a "
                        "duration",
                    )
                )
