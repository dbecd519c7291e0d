"""The spec's groups as the core models' configs: guest, workload and host configs.

The spec (``services/sim/spec.py``) is validated user input; the cores take
frozen dataclasses. This module is the one place that converts between them.
"""

from __future__ import annotations

from services.guest.core.config import GuestConfig, ReportingConfig
from services.guest.core.kernel_noise import KernelNoiseConfig
from services.guest.core.pagecache import PageCacheConfig
from services.guest.core.script import ScriptConfig, ScriptStep
from services.guest.core.trace_replay import TraceConfig
from services.guest.core.willitscale import WillItScaleConfig
from services.guest.core.workloads import IdleConfig, MemhogConfig, PhaseConfig
from services.host.core.config import HostConfig, SwapConfig, ZswapConfig
from services.host.core.costs import CostModel
from services.units import PAGE_SIZE

from .spec import MAX_DURATION_NS, GuestGroup, HostGroup, SpecError


def guest_config(group: GuestGroup, memory: int | None = None) -> GuestConfig:
    """The guest core's config; ``memory`` (bytes) overrides the group's (trace guests)."""
    r = group.reporting
    size = memory if memory is not None else group.memory
    assert size is not None  # GuestGroup requires memory unless a trace sizes each guest
    return GuestConfig(
        nr_pages=size // PAGE_SIZE,
        zones=group.zones,
        machine=group.machine,
        lowmem_pages=None if group.lowmem is None else group.lowmem // PAGE_SIZE,
        dma_zone=group.dma_zone,
        vcpus=group.vcpus,
        min_free_kbytes=group.min_free_kbytes,
        watermark_scale_factor=group.watermark_scale_factor,
        percpu_pagelist_high_fraction=group.percpu_pagelist_high_fraction,
        profile=group.profile,
        thp=group.thp,
        shuffle=group.shuffle,
        reporting=ReportingConfig(
            enabled=r.enabled,
            order=r.order,
            capacity=r.capacity,
            delay_ns=r.delay,
            budget_divisor=r.budget_divisor,
        ),
    )


def workload_config(
    group: GuestGroup, start_delay_ns: int = 0, trace=None, memory: int | None = None
) -> MemhogConfig | IdleConfig | TraceConfig | WillItScaleConfig:
    """A guest's workload config; trace groups need the guest's trace and memory."""
    if group.workload.kind == "trace":
        from .trace_groups import trace_config

        if trace is None or memory is None:
            raise ValueError(f"guest group {group.name}: a trace workload needs its trace")
        return trace_config(group, trace, memory, start_delay_ns)
    return _core_workload(group.workload, start_delay_ns, group.vcpus)


def _will_it_scale(w, vcpus: int, start_delay_ns: int) -> WillItScaleConfig:
    costs = {
        "fault_ns": w.fault_cost,
        "thp_fault_ns": w.thp_fault_cost,
        "cow_fault_ns": w.cow_fault_cost,
        "zero_bytes_per_s": w.zero_rate,
        "copy_bytes_per_s": w.copy_rate,
        "unmap_ns": w.unmap_cost,
        "memory_bytes_per_s": w.memory_bandwidth,
    }
    return WillItScaleConfig(
        test=w.kind,
        tasks=w.tasks,
        vcpus=vcpus,
        thp=w.thp,
        region_bytes=w.region,
        quantum=w.quantum,
        start_delay_ns=start_delay_ns,
        fault_contention=w.fault_contention,
        **{k: v for k, v in costs.items() if v is not None},
    )


def _core_workload(w, start_delay_ns: int = 0, vcpus: int = 1):
    """A validated spec workload -> the guest core's workload config."""
    if w.kind == "idle":
        return IdleConfig(initial_fill=w.initial_fill)
    if w.kind == "trace":
        raise ValueError("a trace workload is started from a spec's trace group, not alone")
    if w.kind in ("page_fault1", "page_fault2"):
        return _will_it_scale(w, vcpus, start_delay_ns)
    if w.kind == "kernel_noise":
        return KernelNoiseConfig(
            rate_per_s=w.rate,
            mean_lifetime_ns=w.mean_lifetime,
            lifetime=w.lifetime,
            sigma=w.sigma,
            long_lived_fraction=w.long_lived_fraction,
            unmovable_fraction=w.unmovable_fraction,
            order_weights=tuple(sorted(w.orders.items())),
            start_delay_ns=start_delay_ns + w.start,
        )
    if w.kind == "page_cache":
        rates = {"read_bytes_per_s": w.read_rate, "hit_bytes_per_s": w.hit_rate}
        return PageCacheConfig(
            file_bytes=w.file_size,
            reread=w.reread,
            start_delay_ns=start_delay_ns + w.start,
            drop_caches_ns=tuple(w.drop_caches_at),
            **{k: v for k, v in rates.items() if v is not None},
        )
    if w.kind == "script":
        return ScriptConfig(
            steps=tuple(
                ScriptStep(
                    workload=_core_workload(st.workload, 0, vcpus),
                    at_ns=st.at,
                    after_ns=st.after,
                    until_done=st.until == "done",
                    duration_ns=st.duration,
                    overlay=st.overlay,
                )
                for st in w.steps
            ),
            start_delay_ns=start_delay_ns,
        )
    phases = tuple(
        PhaseConfig(
            action=p.action,
            duration_ns=p.duration if p.duration is not None else MAX_DURATION_NS,
            target=p.target,
            rate_bytes_per_s=p.rate,
            until_done=p.until == "done",
        )
        for p in w.phases
    )
    return MemhogConfig(phases=phases, repeat=w.repeat, thp=w.thp, start_delay_ns=start_delay_ns)


def host_config(group: HostGroup, max_overcommit_ratio: float) -> HostConfig:
    """The host core's config for one host of ``group`` (costs: defaults + overrides)."""
    sw = group.swap
    costs = {
        "swap_read_latency_ns": sw.read_latency,
        "swap_read_bytes_per_s": sw.read_bytes_per_s,
        "swap_write_latency_ns": sw.write_latency,
        "swap_write_bytes_per_s": sw.write_bytes_per_s,
    }
    costs.update(group.costs)
    try:
        cost_model = CostModel(**costs)
    except (TypeError, ValueError) as e:
        raise SpecError([(f"hosts.{group.name}.costs", str(e))]) from None
    zs = group.zswap
    pool = int(group.memory * zs.max_pool_fraction) // PAGE_SIZE * PAGE_SIZE
    return HostConfig(
        memory_bytes=group.memory,
        reserve_bytes=group.reserve,
        backing=group.backing,
        thp=group.thp,
        swap=SwapConfig(capacity_bytes=sw.capacity // PAGE_SIZE * PAGE_SIZE),
        zswap=ZswapConfig(
            enabled=zs.enabled,
            compression_ratio=zs.compression_ratio,
            max_pool_bytes=max(pool, PAGE_SIZE),
        ),
        oom_policy=group.oom_policy,
        max_overcommit_ratio=max_overcommit_ratio,
        costs=cost_model,
    )


MAX_SHOWN_CHARS = 64  # of a client's string quoted back in an error


def workload_from_params(kind: str, params: dict) -> MemhogConfig | IdleConfig | WillItScaleConfig:
    """A GuestService StartWorkload request's workload, validated like a spec's. Errors
    name the field: ``workload`` (the kind, quoted and cut short) or ``params.<path>``."""
    from pydantic import TypeAdapter, ValidationError

    from .spec import Workload

    kinds = workload_kinds()
    if kind not in kinds:
        raise ValueError(
            f"workload={_shown(kind)}: unknown workload kind (one of "
            f"{', '.join(k for k in kinds if k != 'trace')})"
        )
    if kind == "trace":
        raise ValueError(
            "workload='trace': a trace workload is started from a spec's trace group, "
            "not by StartWorkload"
        )
    try:
        w = TypeAdapter(Workload).validate_python({**params, "kind": kind})
    except ValidationError as e:
        err = e.errors()[0]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"][1:])
        raise ValueError(f"params{path}: {err['msg']}") from None
    return _core_workload(w)


def workload_kinds() -> list[str]:
    """Every workload kind a spec may name (the discriminator of ``Workload``)."""
    from typing import get_args

    from .spec import Workload

    models = get_args(get_args(Workload)[0])
    return sorted(k for m in models for k in get_args(m.model_fields["kind"].annotation))


def _shown(text: str) -> str:
    """A client's string as an error quotes it: repr'd, at most MAX_SHOWN_CHARS of it."""
    if len(text) <= MAX_SHOWN_CHARS:
        return repr(text)
    return f"{text[:MAX_SHOWN_CHARS]!r}... ({len(text)} characters)"
