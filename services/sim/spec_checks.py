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
from services.guest.core.watermarks import guest_watermarks
from services.guest.core.willitscale import PAGE_FAULT2, WillItScaleConfig
from services.guest.core.workloads import GROW, MemhogConfig
from services.units import PAGE_SHIFT

from .core_configs import guest_config, workload_config
from .spec import ExperimentSpec


def spec_warnings(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(field path, message) for every part of the spec that cannot do what it says."""
    out: list[tuple[str, str]] = []
    for gi, group in enumerate(spec.guest_groups):
        if group.is_trace:  # a trace's targets are clipped to the guest's memory
            continue
        cfg = guest_config(group)
        reach = cfg.nr_pages - sum(w[0] for w in guest_watermarks(cfg))
        wl = workload_config(group)
        _check(wl, f"guest_groups.{gi}.workload", cfg.nr_pages, reach, out)
    return out


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
