"""Spec models of the guest workloads (docs/workloads.md): one per ``kind``.

``Workload`` is the discriminated union a guest group takes; ``StepWorkload`` the kinds
a script step may run. Validated like the rest of the spec (``services/sim/spec.py``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from services.guest.core.constants import MAX_ORDER

from .quantities import parse_duration_ns
from .spec_base import (
    MAX_DURATION_NS,
    MAX_GUEST_MEMORY_BYTES,
    MAX_HOST_MEMORY_BYTES,
    MAX_PHASES,
    _dur,
    _dur_or_none,
    _Model,
    _size_or_none,
)


class Phase(_Model):
    action: Literal["grow", "free", "idle", "touch"] = Field(
        description="grow: allocate and touch; free: release; idle: nothing; touch: re-touch held memory."
    )
    duration: int | None = Field(
        None,
        gt=0,
        le=MAX_DURATION_NS,
        description="Phase length (required unless until: done, where it is a cap).",
    )
    until: Literal["done"] | None = Field(
        None,
        description="grow/free: end when the target is reached; the next phase starts then.",
    )
    target: float | None = Field(
        None,
        ge=0,
        le=1,
        description="grow/free: held memory at the end of the phase, as a fraction of guest memory.",
    )
    rate: int | None = Field(
        None,
        ge=1,
        description="grow/free/touch: bytes per simulated second (default: as fast as possible within one epoch).",
    )

    _durs = field_validator("duration", mode="before")(_dur_or_none)
    _sizes = field_validator("rate", mode="before")(_size_or_none)

    @model_validator(mode="after")
    def _check(self) -> Phase:
        if self.action in ("grow", "free") and self.target is None:
            raise ValueError(f"a {self.action} phase needs a target fraction")
        if self.until == "done" and self.action not in ("grow", "free"):
            raise ValueError(f"until: done applies to grow and free phases, not {self.action}")
        if self.duration is None and self.until is None:
            raise ValueError("a phase needs a duration (or until: done)")
        return self


class _Staggered(_Model):
    """A workload whose guests can start at different times (plan.start_delay_ns)."""

    start_stagger: int = Field(
        0,
        le=MAX_DURATION_NS,
        description="Guest i of the group starts i x start_stagger late (take turns).",
    )
    start_jitter: int = Field(
        0,
        le=MAX_DURATION_NS,
        description="Each guest starts after a further seeded random delay in [0, start_jitter).",
    )

    _durs = field_validator("start_stagger", "start_jitter", mode="before")(_dur)


class MemhogWorkload(_Staggered):
    kind: Literal["memhog"] = "memhog"
    phases: list[Phase] = Field(
        min_length=1, max_length=MAX_PHASES, description="Phases run in order."
    )
    repeat: bool = Field(False, description="Start again from the first phase after the last.")
    thp: bool = Field(
        False, description="Allocate 2 MiB (order-9) blocks like an MADV_HUGEPAGE region."
    )


class IdleWorkload(_Model):
    kind: Literal["idle"] = "idle"
    initial_fill: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Fraction of memory allocated, touched and then freed at start (boot noise).",
    )


MAX_NOISE_RATE = 1e6  # kernel_noise allocations per simulated second
MAX_TOTAL_FILE_BYTES = 64 << 40  # page_cache file bytes over all guests
MAX_SYNTHETIC_SAMPLES = 10**7  # synthetic trace samples over all guests of a group
MAX_RATE = 1 << 40  # bytes per simulated second of any workload rate (1 TiB/s)


def _order_key(v: Any) -> Any:
    """An order given as a mapping key: an integer, or its digits as a string (a JSON or
    Struct spec has string keys only)."""
    return int(v) if isinstance(v, str) and v.isascii() and v.isdigit() else v


OrderKey = Annotated[int, BeforeValidator(_order_key)]


class KernelNoiseWorkload(_Model):
    kind: Literal["kernel_noise"] = "kernel_noise"
    rate: float = Field(
        2000.0,
        gt=0,
        le=MAX_NOISE_RATE,
        allow_inf_nan=False,
        description=f"Kernel allocations per simulated second (Poisson; at most {MAX_NOISE_RATE:.0e}).",
    )
    mean_lifetime: int = Field(
        5_000_000_000,
        gt=0,
        le=MAX_DURATION_NS,
        description="Mean time an allocation is held (default 5 s, at most 30 days).",
    )
    lifetime: Literal["exponential", "lognormal"] = Field(
        "exponential", description="Lifetime distribution."
    )
    sigma: float = Field(
        1.0, gt=0, le=10, allow_inf_nan=False, description="lognormal: the shape parameter."
    )
    long_lived_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Share of allocations never freed (held for good).",
    )
    unmovable_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Share that is UNMOVABLE; the rest is RECLAIMABLE.",
    )
    orders: dict[OrderKey, float] = Field(
        default_factory=lambda: {0: 0.9, 1: 0.05, 2: 0.03, 3: 0.02},
        max_length=11,
        description="Order -> weight of the allocation sizes (orders 0..10).",
    )
    start: int = Field(
        0, ge=0, le=MAX_DURATION_NS, description="Start this long after the run starts."
    )

    _durs = field_validator("mean_lifetime", "start", mode="before")(_dur)

    @field_validator("orders")
    @classmethod
    def _orders(cls, v: dict[int, float]) -> dict[int, float]:
        bad = any(not 0 <= o <= MAX_ORDER or not math.isfinite(w) or w < 0 for o, w in v.items())
        if bad or sum(v.values()) <= 0:
            raise ValueError("orders: keys 0..10, finite weights >= 0, not all 0")
        return v


MAX_DROP_CACHES = 1_000  # drop_caches times of one page_cache workload


class PageCacheWorkload(_Model):
    kind: Literal["page_cache"] = "page_cache"
    file_size: int = Field(
        ge=1 << 20,
        le=MAX_GUEST_MEMORY_BYTES,
        description=(
            "Bytes of files read sequentially into the page cache (cached pages are never "
            "reported; kswapd reclaims the oldest below the low watermark)."
        ),
    )
    read_rate: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description="Bytes per second of a cache miss (from disk; default 1 GiB/s).",
    )
    hit_rate: int | None = Field(
        None, ge=1, le=MAX_RATE, description="Bytes per second of a cache hit (default 8 GiB/s)."
    )
    reread: bool = Field(
        False, description="Read the files again and again (hits, and misses for evicted pages)."
    )
    start: int = Field(
        0, ge=0, le=MAX_DURATION_NS, description="Start this long after the run starts."
    )
    drop_caches_at: list[int] = Field(
        default_factory=list,
        max_length=MAX_DROP_CACHES,
        description="Times after the start to echo 1 > /proc/sys/vm/drop_caches.",
    )

    _sizes = field_validator("file_size", "read_rate", "hit_rate", mode="before")(_size_or_none)
    _durs = field_validator("start", mode="before")(_dur)

    @field_validator("drop_caches_at", mode="before")
    @classmethod
    def _drop_times(cls, v: Any) -> Any:
        if isinstance(v, list):
            times = [parse_duration_ns(t, "drop_caches_at") for t in v]
            if any(t > MAX_DURATION_NS for t in times):
                raise ValueError("drop_caches_at: times are at most 30 days")
            return times
        return v


MAX_WIS_TASKS = 1024  # will-it-scale tasks of one guest


class WillItScaleWorkload(_Model):
    kind: Literal["page_fault1", "page_fault2"] = Field(
        description=(
            "will-it-scale (docs/workloads.md): page_fault1 faults in 128 MiB of anonymous "
            "memory a page at a time and unmaps it; page_fault2 does the same on a private "
            "file mapping (copy-on-write of page-cache pages that stay)."
        )
    )
    tasks: int = Field(
        1, ge=1, le=MAX_WIS_TASKS, description="Concurrent tasks; task i runs on vCPU i mod vcpus."
    )
    thp: bool = Field(False, description="page_fault1 with MADV_HUGEPAGE: 2 MiB faults.")
    region: int = Field(
        128 << 20,
        gt=0,
        le=1 << 40,
        description="Bytes each task maps per iteration (a multiple of 2 MiB; default 128 MiB).",
    )
    quantum: int = Field(
        1024, ge=1, le=1 << 20, description="Faults a task makes per turn on its vCPU."
    )
    fault_cost: int | None = Field(
        None, ge=0, description="Guest handling of one 4 KiB anonymous fault, ns (default 700 ns)."
    )
    thp_fault_cost: int | None = Field(
        None, ge=0, description="Guest handling of one THP fault, besides zeroing (default 3 us)."
    )
    cow_fault_cost: int | None = Field(
        None, ge=0, description="page_fault2: one copy-on-write fault, besides the copy (900 ns)."
    )
    zero_rate: int | None = Field(
        None, ge=1, le=MAX_RATE, description="Guest zeroing, bytes per second (default 10 GiB/s)."
    )
    copy_rate: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description="page_fault2 copies, bytes per second (default 8 GiB/s).",
    )
    unmap_cost: int | None = Field(
        None, ge=0, description="munmap per 4 KiB page, ns (a 2 MiB mapping costs ten; 60 ns)."
    )
    memory_bandwidth: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description=(
            "The guest's memory bandwidth, bytes per second, shared by tasks that zero or copy "
            "at once: each zeroes and copies at min(zero_rate, memory_bandwidth / running "
            "tasks) (default: unshared)."
        ),
    )
    fault_contention: float = Field(
        0.0,
        ge=0,
        le=10,
        allow_inf_nan=False,
        description=(
            "Each fault's own handling costs (1 + fault_contention x (running tasks - 1)) "
            "times the one-task figure (locks and cache lines the tasks share; default 0)."
        ),
    )

    _durs = field_validator(
        "fault_cost", "thp_fault_cost", "cow_fault_cost", "unmap_cost", mode="before"
    )(_dur_or_none)
    _sizes = field_validator("region", "zero_rate", "copy_rate", "memory_bandwidth", mode="before")(
        _size_or_none
    )

    @model_validator(mode="after")
    def _check(self) -> WillItScaleWorkload:
        if self.region % (2 << 20):
            raise ValueError(f"region must be a multiple of 2 MiB, got {self.region}")
        if self.thp and self.kind != "page_fault1":
            raise ValueError("thp applies to page_fault1 only")
        return self


MAX_TRACE_PATH = 4096  # characters of a trace path
TRACE_FORMATS = ("bitbrains", "google2019", "alibaba2018", "synthetic")
TRACE_SHAPES = ("diurnal", "bursty", "step", "high_water_idle")


class TraceWorkload(_Model):
    kind: Literal["trace"] = "trace"
    format: Literal["bitbrains", "google2019", "alibaba2018", "synthetic"] = Field(
        description=(
            "bitbrains: a directory of GWA-T-12 VM files (one guest per file, name order) or "
            "one file; google2019: an instance_usage JSON-lines file (one guest per instance); "
            "alibaba2018: a container_usage or machine_usage CSV (one guest per id); "
            "synthetic: seeded traces of a shape (count guests)."
        )
    )
    path: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TRACE_PATH,
        description=(
            "Trace file or directory, relative to the spec file's directory (the CLI) or to "
            "serve's --trace-dir (which refuses absolute paths and '..'). Not for synthetic."
        ),
    )
    meta_path: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TRACE_PATH,
        description="alibaba2018 containers: the container_meta.csv giving each mem_size.",
    )
    table: Literal["container", "machine"] = Field(
        "container", description="alibaba2018: container_usage or machine_usage rows."
    )
    columns: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None,
        max_length=32,
        description=(
            "alibaba2018: the usage file's column names in file order (the published "
            "schemas disagree; default: schema.txt's order)."
        ),
    )
    statistic: Literal["average", "maximum"] = Field(
        "average", description="google2019: follow average_usage or maximum_usage memory."
    )
    machine_memory: int | None = Field(
        None,
        gt=0,
        le=MAX_HOST_MEMORY_BYTES,
        description=(
            "google2019 / alibaba2018: the memory a normalised 1.0 (or 100 %) stands for, bytes."
        ),
    )
    shape: Literal["diurnal", "bursty", "step", "high_water_idle"] = Field(
        "high_water_idle", description="synthetic: the trace shape (docs/workloads.md)."
    )
    trace_duration: int = Field(
        86_400 * 1_000_000_000,
        gt=0,
        le=MAX_DURATION_NS * 1000,
        description="synthetic: trace length (trace time, before time_scale).",
    )
    trace_interval: int = Field(
        300 * 1_000_000_000,
        gt=0,
        description="synthetic: sample interval (trace time).",
    )
    time_scale: float = Field(
        1.0,
        ge=1e-3,
        le=1e6,
        allow_inf_nan=False,
        description="Trace seconds per simulated second (300 plays a 5-minute sample in 1 s).",
    )
    thp: bool = Field(False, description="Grow in 2 MiB (order-9) blocks.")
    page_cache: float | Literal["trace"] | None = Field(
        None,
        description=(
            "Replay part of the memory as clean page cache (file reads the guest's kswapd "
            "and drop_caches can reclaim, never reported while cached): a fraction 0..1 of "
            "each sample's usage (any format), or 'trace' (google2019: each sample's "
            "page_cache_memory, beside its memory usage). Default: all anonymous."
        ),
    )
    grow_rate: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description="Bytes per simulated second while growing (default 2 GiB/s).",
    )
    free_rate: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description="Bytes per simulated second while shrinking (default 16 GiB/s).",
    )

    _durs = field_validator("trace_duration", "trace_interval", mode="before")(_dur)

    @field_validator("page_cache", mode="before")
    @classmethod
    def _page_cache(cls, v: Any, info) -> Any:
        """A share 0..1 or 'trace' (google2019 only), named as this field when wrong."""
        if v is None:
            return v
        if v == "trace":
            if info.data.get("format") != "google2019":
                raise ValueError("'trace' needs format google2019 (its page_cache_memory)")
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
            raise ValueError(f"must be a share from 0 to 1, or 'trace'; got {v!r}")
        return float(v)

    _sizes = field_validator("machine_memory", "grow_rate", "free_rate", mode="before")(
        _size_or_none
    )

    @field_validator("path", "meta_path")
    @classmethod
    def _plain_path(cls, v: str | None) -> str | None:
        if v is not None and ("\x00" in v or any(ord(c) < 32 for c in v)):
            raise ValueError("a trace path may not hold control characters")
        return v

    @model_validator(mode="after")
    def _check(self) -> TraceWorkload:
        if self.format != "synthetic" and self.path is None:
            raise ValueError(f"a {self.format} trace needs a path")
        if self.format in ("google2019", "alibaba2018") and self.machine_memory is None:
            raise ValueError(f"a {self.format} trace is normalised: it needs machine_memory")
        if self.format == "alibaba2018" and self.table == "container" and self.meta_path is None:
            raise ValueError("alibaba2018 container_usage needs meta_path (container_meta.csv)")
        self._check_columns()
        if self.trace_interval > self.trace_duration:
            raise ValueError("trace_interval must not exceed trace_duration")
        if self.format == "synthetic":
            if self.trace_duration // self.trace_interval > 1_000_000:
                raise ValueError("a synthetic trace may have at most 1,000,000 samples")
            if self.trace_interval % 1_000_000_000 or self.trace_duration % 1_000_000_000:
                raise ValueError("synthetic trace_interval and trace_duration are whole seconds")
            if self.path is not None or self.meta_path is not None:
                raise ValueError("a synthetic trace reads no file: remove path")
        if self.format == "synthetic" and self.trace_duration / self.time_scale > MAX_DURATION_NS:
            raise ValueError("trace_duration / time_scale is over 30 simulated days")
        return self

    def _check_columns(self) -> None:
        if self.columns is None:
            return
        id_col = "container_id" if self.table == "container" else "machine_id"
        missing = [c for c in (id_col, "time_stamp", "mem_util_percent") if c not in self.columns]
        if missing:
            raise ValueError(f"columns must include {missing}")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("columns must name each column once")


StepWorkload = Annotated[
    MemhogWorkload | IdleWorkload | WillItScaleWorkload | PageCacheWorkload | KernelNoiseWorkload,
    Field(discriminator="kind"),
]


class ScriptStep(_Model):
    workload: StepWorkload = Field(
        description="The step's workload (any kind but trace and script)."
    )
    at: int | None = Field(
        None, ge=0, le=MAX_DURATION_NS, description="Start this long after the script starts."
    )
    after: int = Field(
        0, ge=0, le=MAX_DURATION_NS, description="Else start this long after the step before ends."
    )
    until: Literal["done"] | None = Field(
        None, description="End when the workload is done (a hog's phases ran out, a read pass)."
    )
    duration: int | None = Field(
        None, gt=0, le=MAX_DURATION_NS, description="End (stop the workload) after this long."
    )
    overlay: bool = Field(
        False, description="Run in the background: the next step starts without waiting."
    )

    _durs = field_validator("at", "after", "duration", mode="before")(_dur_or_none)

    @model_validator(mode="after")
    def _check(self) -> ScriptStep:
        if not self.overlay and self.until is None and self.duration is None:
            raise ValueError("a step needs until: done or a duration (or overlay: true)")
        return self


class ScriptWorkload(_Staggered):
    kind: Literal["script"] = "script"
    steps: list[ScriptStep] = Field(
        min_length=1, max_length=MAX_PHASES, description="Steps, started in order."
    )


Workload = Annotated[
    MemhogWorkload
    | IdleWorkload
    | TraceWorkload
    | WillItScaleWorkload
    | PageCacheWorkload
    | KernelNoiseWorkload
    | ScriptWorkload,
    Field(discriminator="kind"),
]


_WORKLOAD_KINDS = (
    "memhog",
    "idle",
    "trace",
    "page_fault1",
    "page_fault2",
    "page_cache",
    "kernel_noise",
    "script",
)


def _file_bytes(w) -> int:
    """page_cache file bytes of a workload (a script's steps summed)."""
    if w.kind == "page_cache":
        return w.file_size
    if w.kind == "script":
        return sum(_file_bytes(step.workload) for step in w.steps)
    return 0
