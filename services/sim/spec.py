"""Experiment specs: YAML validated at the edge by pydantic.

A spec names hosts, guest groups with their workloads, a placement policy,
optional paired baselines and an optional sweep. Every field has a
description (``overcommit validate --explain`` prints them). Sizes accept
``"4GiB"``-style strings, durations ``"50ms"``-style strings; both resolve to
integers (bytes, simulated nanoseconds).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from services.guest.core.constants import (
    MAX_ORDER,
    MAX_VCPUS,
    MIN_PERCPU_PAGELIST_HIGH_FRACTION,
    PAGE_REPORTING_BUDGET_DIVISOR,
    PAGE_REPORTING_CAPACITY,
    PAGE_REPORTING_DELAY_NS,
    PROFILE_MODERN,
)
from services.host.core.config import ZSWAP_LZ4_RATIO
from services.host.core.costs import CostModel
from services.units import NS_PER_S

from .quantities import format_duration
from .spec_base import (
    DEFAULT_SYNC_CAP_NS,
    MAX_BLOCK_BYTES,
    MAX_DURATION_NS,
    MAX_EPOCH_NS,
    MAX_EPOCHS,
    MAX_GROUPS,
    MAX_GUEST_MEMORY_BYTES,
    MAX_GUESTS,
    MAX_HOST_MEMORY_BYTES,
    MAX_HOSTS,
    MAX_NAME_LENGTH,
    MAX_OVERCOMMIT_RATIO,
    MAX_SEED,
    MAX_SPEC_BYTES,
    MAX_SWEEP_RUNS,
    MAX_TIMESERIES_ROWS,
    MAX_TOTAL_GUEST_MEMORY_BYTES,
    MIN_EPOCH_NS,
    NAME_PATTERN,
    SpecError,
    SpecLoader,
    _dur,
    _dur_or_none,
    _Model,
    _size,
    _size_or_none,
)
from .spec_errors import field_errors
from .spec_faults import FaultsSpec
from .spec_overrides import apply_override, set_path
from .spec_workloads import (
    MAX_SYNTHETIC_SAMPLES,
    MAX_TOTAL_FILE_BYTES,
    IdleWorkload,
    Workload,
    _file_bytes,
)


class SwapSpec(_Model):
    capacity: int = Field(
        8 << 30,
        ge=0,
        le=MAX_HOST_MEMORY_BYTES,
        description="Swap device capacity in bytes (0 disables swap; at most 64 TiB).",
    )
    read_bytes_per_s: int = Field(
        CostModel.swap_read_bytes_per_s,
        description="Swap read bandwidth, bytes/s (NVMe sequential read, figures.md Q2).",
    )
    write_bytes_per_s: int = Field(
        CostModel.swap_write_bytes_per_s,
        description="Swap write bandwidth, bytes/s (NVMe sustained write, figures.md Q2).",
    )
    read_latency: int = Field(
        CostModel.swap_read_latency_ns,
        description="Swap-in latency per 4 KiB read, simulated ns (NAND QD1 ~80 us, figures.md Q2).",
    )
    write_latency: int = Field(
        CostModel.swap_write_latency_ns,
        description="Extra swap-out latency per page, simulated ns (writes are batched and buffered).",
    )

    _sizes = field_validator("capacity", "read_bytes_per_s", "write_bytes_per_s", mode="before")(
        _size
    )
    _durs = field_validator("read_latency", "write_latency", mode="before")(_dur)


class ZswapSpec(_Model):
    enabled: bool = Field(False, description="Put a compressed tier (zswap-like) in front of swap.")
    max_pool_fraction: float = Field(
        0.2, gt=0, le=1, description="Largest share of host memory the compressed pool may use."
    )
    compression_ratio: float = Field(
        ZSWAP_LZ4_RATIO, gt=1, description="Uncompressed/compressed size (lz4 in figures.md Q2)."
    )


Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description=f"Letters, digits, '_', '.', '-'; starts with a letter or digit; at most "
        f"{MAX_NAME_LENGTH} characters.",
    ),
]


class HostGroup(_Model):
    name: Name = Field(description="Group name, used in host ids and metric labels.")
    count: int = Field(
        1,
        ge=1,
        le=MAX_HOSTS,
        description=f"Number of identical hosts in the group (at most {MAX_HOSTS}).",
    )
    memory: int = Field(
        gt=0,
        le=MAX_HOST_MEMORY_BYTES,
        description="Physical memory per host, bytes (at most 64 TiB).",
    )
    reserve: int = Field(
        0, ge=0, le=MAX_HOST_MEMORY_BYTES, description="Memory the host keeps for itself, bytes."
    )
    thp: bool = Field(True, description="Back guest memory with 2 MiB transparent huge pages.")
    backing: Literal["anon", "hugetlb_2m", "hugetlb_1g"] = Field(
        "anon", description="Guest RAM backing (docs/kernel-model.md §7.3)."
    )
    discard_mode: Literal["dontneed", "free", "disabled"] = Field(
        "dontneed",
        description="What a report does: MADV_DONTNEED, MADV_FREE, or nothing (VFIO/postcopy, §7.2).",
    )
    swap: SwapSpec = Field(default_factory=SwapSpec, description="Swap device.")
    zswap: ZswapSpec = Field(default_factory=ZswapSpec, description="Optional compressed tier.")
    oom_policy: Literal["stop_largest", "refuse"] = Field(
        "stop_largest",
        description="When swap is full: stop the largest guest, or refuse the touch.",
    )
    costs: dict[str, int] = Field(
        default_factory=dict,
        description="Overrides of host cost-model fields, integers in ns or bytes/s (see services/host/core/costs.py).",
    )

    _sizes = field_validator("memory", "reserve", mode="before")(_size)

    @model_validator(mode="after")
    def _check(self) -> HostGroup:
        if self.memory <= 0:
            raise ValueError(f"memory must be > 0, got {self.memory}")
        if self.reserve >= self.memory:
            raise ValueError(
                f"reserve ({self.reserve}) must be smaller than memory ({self.memory})"
            )
        return self


class ReportingSpec(_Model):
    enabled: bool = Field(True, description="Free page reporting on or off.")
    order: int | None = Field(
        None, ge=0, le=MAX_ORDER, description="Reporting order R (default: pageblock order 9)."
    )
    capacity: int = Field(
        PAGE_REPORTING_CAPACITY, ge=1, description="Entries per report (PAGE_REPORTING_CAPACITY)."
    )
    delay: int = Field(
        PAGE_REPORTING_DELAY_NS,
        description="Delay before a pass after a qualifying free (PAGE_REPORTING_DELAY).",
    )
    budget_divisor: int = Field(
        PAGE_REPORTING_BUDGET_DIVISOR,
        ge=1,
        description="A pass reports about 1/divisor of each free list.",
    )

    _durs = field_validator("delay", mode="before")(_dur)


class GuestGroup(_Model):
    name: Name = Field(description="Group name, used in guest ids and metric labels.")
    count: int | None = Field(
        None,
        ge=1,
        le=MAX_GUESTS,
        description=(
            f"Number of guests (at most {MAX_GUESTS}; default 1). With a trace workload: "
            "default one guest per trace, and a count caps that (synthetic: the count)."
        ),
    )
    memory: int | None = Field(
        None,
        le=MAX_GUEST_MEMORY_BYTES,
        description=(
            "Guest RAM, bytes (a multiple of 4 MiB, at most 1 TiB). Required, except with a "
            "trace workload: then each guest gets its trace's memory (rounded up to 4 MiB), "
            "or this size with the trace's usage scaled to it."
        ),
    )
    profile: Literal["5.7", "6.1", "modern"] = Field(
        PROFILE_MODERN, description="Kernel rules to follow."
    )
    reporting: ReportingSpec = Field(
        default_factory=ReportingSpec, description="Free page reporting."
    )
    shuffle: bool = Field(False, description="page_alloc.shuffle=1 (docs/kernel-model.md §5).")
    thp: bool = Field(True, description="Guest THP on (raises min_free_kbytes).")
    zones: Literal["auto", "single"] = Field(
        "auto",
        description=(
            "Zone layout: auto = as in a QEMU guest, ZONE_DMA32 holds the RAM below 4 GiB "
            "(see machine, lowmem) and ZONE_NORMAL the rest; single = all RAM in one zone "
            "(a what-if; machine and lowmem are then ignored)."
        ),
    )
    machine: Literal["q35", "pc"] = Field(
        "q35",
        description=(
            "QEMU x86 machine type, which sets the RAM below 4 GiB: q35 puts 2 GiB there once "
            "the guest has at least 2.75 GiB, pc puts 3 GiB there once it has at least 3.5 GiB; "
            "a smaller guest is all below 4 GiB (one zone). Ignored when lowmem is set."
        ),
    )
    lowmem: int | None = Field(
        None,
        gt=0,
        le=MAX_GUEST_MEMORY_BYTES,
        description=(
            "Explicit ZONE_DMA32 size, bytes: the guest RAM below 4 GiB (a multiple of 4 MiB, "
            "at most 1 TiB; default: the machine's split). The rest of memory is ZONE_NORMAL; "
            "lowmem >= memory means one zone. Ignored with zones: single."
        ),
    )
    dma_zone: bool = Field(
        True,
        description=(
            "Count x86 ZONE_DMA (the first 16 MiB, not simulated as pages) in the watermark "
            "and min_free_kbytes formulas, as every QEMU guest has it."
        ),
    )
    vcpus: int = Field(
        1,
        ge=1,
        le=MAX_VCPUS,
        description=f"Guest vCPUs (1..{MAX_VCPUS}): each has its own per-CPU page lists.",
    )
    min_free_kbytes: int | None = Field(
        None,
        ge=1,
        le=1 << 30,
        description=(
            "vm.min_free_kbytes override, KiB (1..2**30; default: computed at boot, with "
            "the THP raise when thp is on)."
        ),
    )
    watermark_scale_factor: int = Field(
        10,
        ge=1,
        le=3000,
        description="vm.watermark_scale_factor, in 1/10000 of a zone (1..3000, default 10).",
    )
    percpu_pagelist_high_fraction: int = Field(
        0,
        ge=0,
        le=1 << 30,
        description=(
            f"vm.percpu_pagelist_high_fraction (5.14+): 0 (default) sizes the per-CPU lists "
            f"from the low watermark, otherwise >= {MIN_PERCPU_PAGELIST_HIGH_FRACTION}: "
            f"a zone's lists together hold at most 1/fraction of it."
        ),
    )
    discard_mode: Literal["dontneed", "free", "disabled"] | None = Field(
        None,
        description="Override the host's discard mode for these guests (e.g. disabled for VFIO).",
    )
    workload: Workload = Field(default_factory=IdleWorkload, description="What the guests do.")

    _sizes = field_validator("memory", mode="before")(_size_or_none)
    _lowmem_size = field_validator("lowmem", mode="before")(_size_or_none)

    @field_validator("memory")
    @classmethod
    def _whole_blocks(cls, v: int | None) -> int | None:
        if v is not None and (v <= 0 or v % MAX_BLOCK_BYTES):
            raise ValueError(f"memory must be a positive multiple of 4 MiB, got {v}")
        return v

    @model_validator(mode="after")
    def _memory_given(self) -> GuestGroup:
        if self.memory is None and self.workload.kind != "trace":
            raise ValueError("memory is required (only a trace workload can size its guests)")
        if self.memory is None and self.workload.format == "synthetic":
            raise ValueError("memory is required for synthetic traces")
        return self

    @property
    def is_trace(self) -> bool:
        return self.workload.kind == "trace"

    @property
    def declared_count(self) -> int:
        """Guests as far as the spec alone says (a trace group's cap; 1 if not given)."""
        return 1 if self.count is None else self.count

    @field_validator("lowmem")
    @classmethod
    def _lowmem_whole_blocks(cls, v: int | None) -> int | None:
        if v is not None and (v <= 0 or v % MAX_BLOCK_BYTES):
            raise ValueError(f"lowmem must be a positive multiple of 4 MiB, got {v}")
        return v

    @field_validator("percpu_pagelist_high_fraction")
    @classmethod
    def _pcp_fraction(cls, v: int) -> int:
        if v != 0 and v < MIN_PERCPU_PAGELIST_HIGH_FRACTION:
            raise ValueError(
                f"percpu_pagelist_high_fraction must be 0 or >= "
                f"{MIN_PERCPU_PAGELIST_HIGH_FRACTION}, got {v}"
            )
        return v


class PlacementSpec(_Model):
    policy: Literal["first_fit", "spread"] = Field(
        "first_fit", description="first_fit fills hosts in order; spread balances committed memory."
    )
    max_overcommit_ratio: float = Field(
        2.0,
        gt=0,
        le=MAX_OVERCOMMIT_RATIO,
        description="Largest guest memory / host memory allowed on one host.",
    )


class SweepSpec(_Model):
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Field path -> values; the runs are the cross product."
    )
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=list,
        max_length=MAX_SWEEP_RUNS,
        description="Seeds to run each grid point with (default: the spec's seed).",
    )

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        for path, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{path}: needs at least one value")
            seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
            twice = sorted({values[i] for i, v in enumerate(seen) if seen.count(v) > 1}, key=str)
            if twice:
                raise ValueError(
                    f"grid.{path}: {twice} given more than once (a repeated value is the "
                    "same run, and would narrow the confidence intervals for nothing)"
                )
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise ValueError(
                f"seeds: {repeated} given more than once (a repeated seed is the same run, "
                "and would narrow the confidence intervals for nothing)"
            )
        if self.seeds and "seed" in self.grid:
            raise ValueError("grid.seed and seeds both set the seed: use one of them")
        return self


# spec fields that never change a result, kept out of the run id (ExperimentSpec.run_id)
RESULT_NEUTRAL_FIELDS = ("checkpoint_interval",)


# experiment names whose results directory, OUT/<name>/, is the server's own
# (services.sim.experiment_manager.SERVE_DIR)
RESERVED_NAMES = ("serve",)


class ExperimentSpec(_Model):
    # Where relative trace paths resolve (not a field: the spec file's directory, or serve's
    # --trace-dir; None: trace workloads with a path are refused). See with_trace_root.
    _trace_root: Path | None = PrivateAttr(default=None)
    _trace_absolute_ok: bool = PrivateAttr(default=False)

    name: Name = Field(description="Experiment name; results go to runs/<name>/<run_id>/.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Root of every random stream.")
    duration: int = Field(
        gt=0, le=MAX_DURATION_NS, description="Simulated time to run (at most 30 simulated days)."
    )
    epoch: int = Field(
        50_000_000,
        ge=MIN_EPOCH_NS,
        le=MAX_EPOCH_NS,
        description="Lockstep epoch length (default 50 ms; 1 ms to 60 s).",
    )
    sample_interval: int = Field(
        1_000_000_000, description="Time-series sample interval (default 1 s; at least one epoch)."
    )
    sync_interval: int | None = Field(
        None,
        description=(
            "Simulated time covered by one SyncEpoch between a guest shard and a host: a whole multiple of "
            "epoch that divides sample_interval. Hosts still apply every epoch on its own (all guests in "
            "guest-id order, reclaim after each), so host state is the same as with per-epoch syncs; what "
            "an answer carries back to guests (time lost to host faults, zero-fill, swap-in and reclaim; "
            "swap-outs) reaches them at the end of the interval instead of the next epoch. This interval is "
            "used only while every host is calm (see sync_pressure_fraction); otherwise shards sync every "
            "epoch. Default: the largest such multiple up to 1 s. Set it equal to epoch for per-epoch "
            "feedback throughout."
        ),
    )
    sync_pressure_fraction: float = Field(
        0.85,
        gt=0,
        le=1,
        description=(
            "A host is under pressure when, at a sample, its pool holds at least this share of its limit, "
            "or it reclaimed, swapped in or stopped a guest during the last sample interval. While any host "
            "is under pressure the next sample interval syncs every epoch, so guests feel the host costs "
            "they could not price themselves (swap-outs, reclaim) one epoch later, as with per-epoch syncs."
        ),
    )
    checkpoint_interval: int = Field(
        60 * NS_PER_S,
        ge=0,
        le=MAX_DURATION_NS,
        description=(
            "Simulated time between coordinated checkpoints (default 60 s; 0: none): every host, "
            "every guest shard and the coordinator save their state at the same sample boundary, "
            "the first one at or after each multiple of this interval. A lost actor rolls the run "
            "back to the last one, and `overcommit run --resume RUN_DIR` continues a stopped run "
            "from it, with the results of an uninterrupted run. Not part of the run id: checkpoints "
            "never change results."
        ),
    )
    faults: FaultsSpec = Field(
        default_factory=FaultsSpec,
        description="Faults injected into the run: actor kills, dropped or delayed replies, "
        "rejected reports.",
    )
    hosts: list[HostGroup] = Field(min_length=1, max_length=MAX_GROUPS, description="Host groups.")
    guest_groups: list[GuestGroup] = Field(
        min_length=1, max_length=MAX_GROUPS, description="Guest groups."
    )
    placement: PlacementSpec = Field(
        default_factory=PlacementSpec, description="How guests are placed on hosts."
    )
    compare: list[Literal["reporting_off"]] = Field(
        default_factory=list, description="Paired baselines run with the same seed."
    )
    sweep: SweepSpec | None = Field(
        None, description="Grid of overrides x seeds (overcommit sweep)."
    )

    _durs = field_validator(
        "duration", "epoch", "sample_interval", "checkpoint_interval", mode="before"
    )(_dur)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_NAMES:
            raise ValueError(
                f"{v!r} is reserved: OUT/{v}/ holds overcommit serve's state, which a "
                "server prunes (choose another name)"
            )
        return v

    _sync_dur = field_validator("sync_interval", mode="before")(_dur_or_none)

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        if self.epoch <= 0:
            raise ValueError("epoch must be > 0")
        if self.duration <= 0:
            raise ValueError("duration must be > 0")
        if self.duration < self.epoch:
            raise ValueError(
                f"duration ({self.duration} ns) is shorter than one epoch ({self.epoch} ns); "
                "a duration without a unit is in nanoseconds (write 120s)"
            )
        if self.sample_interval < self.epoch or self.sample_interval % self.epoch:
            raise ValueError(
                f"sample_interval ({format_duration(self.sample_interval)}) must be a whole "
                f"multiple of epoch ({format_duration(self.epoch)})"
            )
        if self.sync_interval is None:  # resolved here, so run ids and resolved specs carry it
            object.__setattr__(
                self, "sync_interval", default_sync_interval(self.epoch, self.sample_interval)
            )
        elif self.sync_interval <= 0 or self.sync_interval % self.epoch:
            raise ValueError(
                f"sync_interval ({format_duration(self.sync_interval)}) must be a whole multiple "
                f"of epoch ({format_duration(self.epoch)})"
            )
        elif self.sample_interval % self.sync_interval:
            raise ValueError(
                f"sync_interval ({format_duration(self.sync_interval)}) must divide "
                f"sample_interval ({format_duration(self.sample_interval)})"
            )
        self._check_bounds()
        nr_hosts = sum(h.count for h in self.hosts)
        for i, kill in enumerate(self.faults.kill):
            if kill.actor == "host" and kill.index >= nr_hosts:
                raise ValueError(
                    f"faults.kill.{i}.index ({kill.index}): the spec has hosts 0..{nr_hosts - 1}"
                )
            if kill.at >= self.duration:
                raise ValueError(
                    f"faults.kill.{i}.at ({format_duration(kill.at)}) must be before the end "
                    f"({format_duration(self.duration)})"
                )
        names = [h.name for h in self.hosts] + [g.name for g in self.guest_groups]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"group names must be unique, repeated: {sorted(dup)}")
        return self

    def _check_bounds(self) -> None:
        """Totals over groups, checked before anything is placed or allocated."""
        epochs = -(-self.duration // self.epoch)
        if epochs > MAX_EPOCHS:
            raise ValueError(f"duration / epoch = {epochs} epochs, over the bound of {MAX_EPOCHS}")
        hosts = sum(h.count for h in self.hosts)
        if hosts > MAX_HOSTS:
            raise ValueError(f"hosts: {hosts} hosts in all, over the bound of {MAX_HOSTS}")
        guests = sum(g.declared_count for g in self.guest_groups)
        if guests > MAX_GUESTS:
            raise ValueError(
                f"guest_groups: {guests} guests in all, over the bound of {MAX_GUESTS}"
            )
        # trace groups sized by their traces are checked again once the traces are read
        files = sum(g.declared_count * _file_bytes(g.workload) for g in self.guest_groups)
        if files > MAX_TOTAL_FILE_BYTES:
            raise ValueError(
                f"guest_groups: {files} bytes of page_cache files in all, over the bound of "
                f"{MAX_TOTAL_FILE_BYTES} (64 TiB)"
            )
        for gi, g in enumerate(self.guest_groups):
            w = g.workload
            if w.kind == "trace" and w.format == "synthetic":
                samples = g.declared_count * (w.trace_duration // w.trace_interval + 1)
                if samples > MAX_SYNTHETIC_SAMPLES:
                    raise ValueError(
                        f"guest_groups.{gi}: {samples} synthetic trace samples, over the "
                        f"bound of {MAX_SYNTHETIC_SAMPLES}; sample less often"
                    )
        total = sum(g.declared_count * (g.memory or 0) for g in self.guest_groups)
        if total > MAX_TOTAL_GUEST_MEMORY_BYTES:
            raise ValueError(
                f"guest_groups: {total} bytes of guest memory in all, over the bound of "
                f"{MAX_TOTAL_GUEST_MEMORY_BYTES} (64 TiB)"
            )
        rows = (self.duration // self.sample_interval + 1) * (hosts + len(self.guest_groups))
        rows *= 1 + len(self.compare)
        if rows > MAX_TIMESERIES_ROWS:
            raise ValueError(
                f"sample_interval: {rows} time-series rows (samples x (hosts + guest groups) x "
                f"variants), over the bound of {MAX_TIMESERIES_ROWS}; sample less often"
            )
        if self.sweep is not None:
            runs = max(1, len(self.sweep.seeds))
            for values in self.sweep.grid.values():
                runs *= max(1, len(values))
                if runs > MAX_SWEEP_RUNS:
                    raise ValueError(
                        f"sweep: more than {MAX_SWEEP_RUNS} runs (grid points x seeds)"
                    )

    @property
    def trace_root(self) -> Path | None:
        return self._trace_root

    @property
    def trace_absolute_ok(self) -> bool:
        return self._trace_absolute_ok

    def resolved_dict(self) -> dict[str, Any]:
        """The spec with every default filled in, sizes and times as integers."""
        return self.model_dump(mode="json")

    def run_id(self) -> str:
        """A run's identity: a hash of its resolved spec less the fields that never change
        a result (RESULT_NEUTRAL_FIELDS); wall time is not in it."""
        data = self.resolved_dict()
        for key in RESULT_NEUTRAL_FIELDS:
            data.pop(key, None)
        rejected = data.pop("faults")["reject_reports"]
        if rejected:  # the one fault that changes results
            data["faults"] = {"reject_reports": rejected}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def spec_sha256(self) -> str:
        """A digest of the whole resolved spec (checkpoints carry it)."""
        blob = json.dumps(self.resolved_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def default_sync_interval(epoch: int, sample_interval: int, cap: int = DEFAULT_SYNC_CAP_NS) -> int:
    """The largest whole multiple of ``epoch`` up to ``cap`` (at least one epoch) that
    divides ``sample_interval``."""
    for m in range(max(1, cap // epoch), 0, -1):
        if sample_interval % (m * epoch) == 0:
            return m * epoch
    return epoch


def parse_spec(data: dict[str, Any]) -> ExperimentSpec:
    """Validate a spec dict; raises SpecError listing every error with its field path."""
    if not isinstance(data, dict):
        raise SpecError([("<spec>", f"expected a mapping at top level, got {type(data).__name__}")])
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(field_errors(ExperimentSpec, e)) from None


def load_spec_text(
    text: str, overrides: list[str] | None = None, source: str | None = None
) -> ExperimentSpec:
    """Parse YAML text, apply ``path=value`` overrides, validate (``source``: the file
    the text came from, named in YAML errors)."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError([("<spec>", f"{len(text)} characters, over the bound of {MAX_SPEC_BYTES}")])
    stream: Any = text
    if source is not None:  # PyYAML names a file-like stream's marks by its name
        stream = io.StringIO(text)
        stream.name = source
    try:
        data = yaml.load(stream, Loader=SpecLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpecError([("<yaml>", str(e).replace("\n", " "))]) from None
    if isinstance(data, dict):
        for ov in overrides or []:
            data = apply_override(data, ov)
    return parse_spec(data)


def load_spec(path: str, overrides: list[str] | None = None) -> ExperimentSpec:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SpecError([("<file>", f"cannot read {path}: {e.strerror}")]) from None
    except UnicodeDecodeError as e:
        raise SpecError(
            [("<file>", f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at {e.start})")]
        ) from None
    return with_trace_root(
        load_spec_text(text, overrides, source=path), Path(path).resolve().parent, absolute_ok=True
    )


def with_overrides(spec: ExperimentSpec, changes: dict[str, Any]) -> ExperimentSpec:
    """A new validated spec with field paths replaced (used by baselines and sweeps)."""
    data = spec.resolved_dict()
    for path, value in changes.items():
        data = set_path(data, path, value)
    return with_trace_root(parse_spec(data), spec.trace_root, spec.trace_absolute_ok)


def with_trace_root(
    spec: ExperimentSpec, root: Path | None, absolute_ok: bool = False
) -> ExperimentSpec:
    """The spec, with relative trace paths resolving under ``root``; ``absolute_ok``
    (the CLI: the user's own files) also allows absolute paths and '..'."""
    spec._trace_root = None if root is None else Path(root)
    spec._trace_absolute_ok = absolute_ok
    return spec


def baseline_spec(spec: ExperimentSpec, kind: str) -> ExperimentSpec:
    """The paired baseline: the same spec and seed with reporting off in every group."""
    if kind != "reporting_off":
        raise SpecError([("compare", f"unknown baseline {kind!r}")])
    changes = {f"guest_groups.{i}.reporting.enabled": False for i in range(len(spec.guest_groups))}
    changes["compare"] = []
    changes["sweep"] = None
    return with_overrides(spec, changes)
