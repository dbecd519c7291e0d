"""Validation against published measurements (docs/validation.md; ``make validate``).

The free page reporting v15 cover letter's benchmark table: guest-side costs are
calibrated on the two baseline rows of each benchmark (closed form, from the guest
model's own cost formulas: :func:`calibrate`), then every other cell is predicted with
no further tuning and compared with the letter (:func:`cover_letter_cells`). A cell
passes when |delta_sim - delta_real| <= max(1 pp, 2 x the larger STDEV of the cell
and its baseline). Cells known to fall outside carry their explanation in
:data:`EXPLAINED`; ``make validate`` fails on any other cell outside its tolerance.

Three published host-memory measurements are replayed by small specs under
``experiments/validation/`` (:func:`firecracker`, :func:`mvm`, :func:`idle_drain`),
each with a tolerance stated here and checked.

Everything runs in-process (``Simulation`` with the in-process backend): no files but
the document's figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.guest.core.willitscale import (
    DEFAULT_COPY_BYTES_PER_S,
    DEFAULT_THP_FAULT_NS,
    DEFAULT_UNMAP_NS,
    THP_UNMAP_PAGES,
)
from services.units import PAGE_SIZE

from .backends.inprocess import InProcessBackend
from .simulation import Simulation
from .spec import ExperimentSpec, load_spec, with_overrides

ROOT = Path(__file__).resolve().parents[2]
SEED_V15 = ROOT / "experiments" / "seed-v15.yaml"
VALIDATION_SPECS = ROOT / "experiments" / "validation"
MIB = 1 << 20
GIB = 1 << 30
THP_BYTES = 2 * MIB

# ---------------------------------------------------------------- the cover letter's table

PF1, PF2 = "page_fault1_thp", "page_fault2"
CONFIGS = ("baseline", "applied", "enabled", "shuffle", "shuffle_rfc")
# (benchmark, tasks) -> configuration -> (Process Iter, STDEV %), as printed in the letter
COVER_LETTER: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    (PF1, 1): {
        "baseline": (1208307.25, 0.10),
        "applied": (1206809.00, 0.26),
        "enabled": (1201386.25, 0.21),
        "shuffle": (1173529.00, 1.04),
        "shuffle_rfc": (1193411.00, 0.33),
    },
    (PF1, 16): {
        "baseline": (8865204.75, 0.16),
        "applied": (8814350.50, 0.78),
        "enabled": (8880178.00, 0.08),
        "shuffle": (8384540.25, 0.74),
        "shuffle_rfc": (8812639.75, 0.73),
    },
    (PF2, 1): {
        "baseline": (408596.00, 0.19),
        "applied": (412558.25, 0.32),
        "enabled": (407903.75, 0.32),
        "shuffle": (409006.50, 0.45),
        "shuffle_rfc": (406333.50, 0.09),
    },
    (PF2, 16): {
        "baseline": (3344169.00, 0.60),
        "applied": (3420102.00, 1.16),
        "enabled": (3396700.50, 0.54),
        "shuffle": (3288289.25, 0.41),
        "shuffle_rfc": (3321706.25, 0.53),
    },
}
REPORTING = "guest_groups.0.reporting.enabled"
CONFIG_OVERRIDES: dict[str, dict[str, Any]] = {
    "baseline": {},
    "applied": {},  # the patches without reporting: nothing the model can see
    "enabled": {REPORTING: True},
    "shuffle": {REPORTING: True, "guest_groups.0.shuffle": True},
    "shuffle_rfc": {
        REPORTING: True,
        "guest_groups.0.shuffle": True,
        "hosts.0.discard_mode": "free",
    },
}
STEP = "guest_groups.0.workload.steps.1"

# Cells outside their tolerance, each with why and the simulated change it had when the
# reason was written (percent): make validate fails if one moves more than
# EXPLAINED_BAND_PP from it, so an explained cell cannot drift unnoticed.
EXPLAINED_BAND_PP = 1.0
EXPLAINED: dict[tuple[str, int, str], tuple[str, float]] = {
    (PF1, 1, "shuffle"): (
        "over-predicted: 25 % of the task's THP faults land on reported memory (about 1 GiB/s, "
        "what the worker's per-pass budget reports); the letter's -2.9 % implies about 5 %",
        -13.38,
    ),
    (PF1, 16, "shuffle"): (
        "under-predicted: the 16 tasks share the same ~1 GiB/s of reported memory (2.8 % of "
        "their THP faults), and the host's zero-fill is charged at its one-thread 15.1 GB/s "
        "although 16 tasks are zeroing at the same time (docs/validation.md)",
        -1.46,
    ),
    (PF2, 16, "enabled"): (
        "the letter's +1.6 % is faster than baseline, which reporting cannot cause; the "
        "'applied' row (reporting off) is +2.3 %, so between-boot variation at 16 tasks "
        "is about 2 pp, above the STDEV column",
        -0.08,
    ),
    (PF2, 16, "shuffle"): (
        "-1.7 % in the letter against -0.1 % simulated: within the ~2 pp between-boot "
        "variation the 'applied' row shows; the model's page_fault2 refaults are rare",
        -0.08,
    ),
}
PREDICTED = ("enabled", "shuffle", "shuffle_rfc")  # the cells nothing was fitted on


@dataclass(frozen=True)
class Calibration:
    """Guest-side costs fitted on the baselines (see :func:`calibrate`)."""

    zero_bytes_per_s: int  # page_fault1 THP, one task: the guest's zeroing of 2 MiB
    cow_fault_ns: int  # page_fault2, one task: a copy-on-write fault besides the copy
    memory_bytes_per_s: int  # both, 16 tasks: bandwidth the tasks' zeroing and copies share
    fault_contention: float  # both, 16 tasks: fault handling per other running task


def calibrate(tasks: int = 16) -> Calibration:
    """Fit the four guest-side numbers on the four baseline cells, in closed form.

    The guest model's time per fault, per task (willitscale.py), with R = region pages:
      page_fault1 THP: thp_fault_ns x k + 2 MiB / min(zero, B / n) + unmap_ns x 10 / 512
      page_fault2:     cow_fault_ns x k + 4 KiB / min(copy, B / n) + unmap_ns
    where n is the running tasks, k = 1 + c x (n - 1), B the shared memory bandwidth.
    The letter's counter is 4 KiB pages per second summed over the tasks, so a task's
    time per page is n / counter. One task fixes ``zero`` (page_fault1; the THP fault's
    own handling keeps its default 3 us) and ``cow_fault_ns`` (page_fault2; copies keep
    the default 8 GiB/s). Sixteen tasks then give two equations, linear in c and 1/B.
    """
    pf1_1 = COVER_LETTER[PF1, 1]["baseline"][0]
    pf1_n = COVER_LETTER[PF1, tasks]["baseline"][0]
    pf2_1 = COVER_LETTER[PF2, 1]["baseline"][0]
    pf2_n = COVER_LETTER[PF2, tasks]["baseline"][0]
    thp_pages = THP_BYTES // PAGE_SIZE
    unmap_thp = DEFAULT_UNMAP_NS * THP_UNMAP_PAGES * 1e-9  # s per THP
    unmap_4k = DEFAULT_UNMAP_NS * 1e-9
    # one task
    t1 = thp_pages / pf1_1  # s per THP
    zero = THP_BYTES / (t1 - DEFAULT_THP_FAULT_NS * 1e-9 - unmap_thp)
    u1 = 1 / pf2_1  # s per page
    copy_s = PAGE_SIZE / DEFAULT_COPY_BYTES_PER_S
    cow = u1 - copy_s - unmap_4k
    # n tasks: a1 c + b1 y = r1, a2 c + b2 y = r2 with y = 1/B
    n = tasks
    a1, b1 = DEFAULT_THP_FAULT_NS * 1e-9 * (n - 1), THP_BYTES * n
    r1 = n * thp_pages / pf1_n - DEFAULT_THP_FAULT_NS * 1e-9 - unmap_thp
    a2, b2 = cow * (n - 1), PAGE_SIZE * n
    r2 = n / pf2_n - cow - unmap_4k
    det = a1 * b2 - a2 * b1
    c = (r1 * b2 - r2 * b1) / det
    y = (a1 * r2 - a2 * r1) / det
    return Calibration(
        zero_bytes_per_s=round(zero),
        cow_fault_ns=round(cow * 1e9),
        memory_bytes_per_s=round(1 / y),
        fault_contention=round(c, 5),
    )


def benchmark_workload(bench: str, tasks: int, cal: Calibration, seconds: int) -> dict[str, Any]:
    """The spec's benchmark step (steps.1) for a cell."""
    shared = {
        "tasks": tasks,
        "memory_bandwidth": cal.memory_bytes_per_s,
        "fault_contention": cal.fault_contention,
    }
    if bench == PF1:
        workload = {"kind": "page_fault1", "thp": True, "zero_rate": cal.zero_bytes_per_s}
    else:
        workload = {"kind": "page_fault2", "cow_fault_cost": cal.cow_fault_ns}
    return {"workload": {**workload, **shared}, "duration": f"{seconds}s"}


@dataclass(frozen=True)
class Window:
    """What each cell measures: ``warmup`` s after the benchmark starts, then ``measure`` s."""

    warmup: int = 30  # the memhog's freed memory is reported within about 30 s
    measure: int = 20
    memhog_bound: int = 20  # s the memhog step may take before the benchmark starts


def cell_spec(
    base: ExperimentSpec, bench: str, tasks: int, config: str, cal: Calibration, w: Window
) -> ExperimentSpec:
    bench_s = w.warmup + w.measure + 2
    return with_overrides(
        base,
        {
            **CONFIG_OVERRIDES[config],
            STEP: benchmark_workload(bench, tasks, cal, bench_s),
            "duration": f"{w.memhog_bound + bench_s}s",
        },
    )


def _run(spec: ExperimentSpec) -> list[dict[str, Any]]:
    sim = Simulation(spec, InProcessBackend())
    try:
        sim.advance_to(spec.duration)
        return sim.rows
    finally:
        sim.close()


def benchmark_rate(rows: list[dict[str, Any]], w: Window) -> tuple[float, float]:
    """(the counter per second over the window, the benchmark's start in s). The start is
    the last sample before the counter moved (samples are 1 s apart)."""
    series = [
        (r["time_s"], r.get("benchmark_ops_total") or 0.0)
        for r in rows
        if r["kind"] == "guest_group"
    ]
    start = next(t for t, ops in series if ops > 0) - 1.0
    at = dict(series)
    t0, t1 = start + w.warmup, start + w.warmup + w.measure
    if t1 not in at:
        raise RuntimeError(f"the window ends at {t1} s, after the run: raise memhog_bound")
    return (at[t1] - at[t0]) / w.measure, start


def refaults(rows: list[dict[str, Any]], w: Window, start: float) -> tuple[float, float]:
    """Over the window: (MiB per second the benchmark refaulted that a report had
    discarded, the share of the tasks' time the host charged for it: its fault and
    zero-fill time over the window and the running tasks)."""
    host = {r["time_s"]: r for r in rows if r["kind"] == "host"}
    t0, t1 = start + w.warmup, start + w.warmup + w.measure

    def delta(col: str) -> float:
        return float(host[t1].get(col) or 0.0) - float(host[t0].get(col) or 0.0)

    mib_s = delta("refaulted_reported_bytes_total") / MIB / w.measure
    lost = delta("lost_fault_seconds_total") + delta("lost_zero_seconds_total")
    return mib_s, lost / w.measure


@dataclass
class Cell:
    bench: str
    tasks: int
    config: str
    sim: float
    real: float
    stdev: float
    start_s: float
    refault_mib_s: float = 0.0  # reported memory the benchmark faulted back, MiB/s
    host_time: float = 0.0  # host fault + zero-fill time per second, summed over the tasks
    delta_sim: float = 0.0
    delta_real: float = 0.0
    tolerance: float = 0.0

    @property
    def passes(self) -> bool:
        return abs(self.delta_sim - self.delta_real) <= self.tolerance


def cover_letter_cells(w: Window = Window(), log=print) -> tuple[list[Cell], dict]:
    """Every cell of the letter's table, simulated; returns the cells and, for the memory
    plot, the host time series of page_fault1 THP x 16 tasks, baseline and enabled."""
    base = load_spec(str(SEED_V15))
    cal = calibrate()
    cells: list[Cell] = []
    memory: dict[str, list[tuple[float, float]]] = {}
    for (bench, tasks), table in COVER_LETTER.items():
        runs: dict[str, tuple[float, float, float, float]] = {}
        for config in CONFIGS:
            wall = time.perf_counter()
            if config == "applied":  # the same spec as baseline: the same run, bit for bit
                rate, start, mib_s, host_s = runs["baseline"]
            else:
                rows = _run(cell_spec(base, bench, tasks, config, cal, w))
                rate, start = benchmark_rate(rows, w)
                mib_s, host_s = refaults(rows, w, start)
                runs[config] = (rate, start, mib_s, host_s)
            real, stdev = table[config]
            cells.append(Cell(bench, tasks, config, rate, real, stdev, start, mib_s, host_s))
            log(
                f"{bench:16s} {tasks:2d} {config:12s} sim {rate:12.0f}  letter {real:12.0f}"
                f"  ({time.perf_counter() - wall:.1f} s)"
            )
            if bench == PF1 and tasks == 16 and config in ("baseline", "enabled"):
                memory[config] = [
                    (r["time_s"], r["backed_bytes"]) for r in rows if r["kind"] == "host"
                ]
                memory[config + "_start"] = start  # type: ignore[assignment]
    by_key = {(c.bench, c.tasks, c.config): c for c in cells}
    for c in cells:
        b = by_key[c.bench, c.tasks, "baseline"]
        c.delta_sim = 100 * (c.sim / b.sim - 1)
        c.delta_real = 100 * (c.real / b.real - 1)
        c.tolerance = max(1.0, 2 * max(c.stdev, b.stdev))
    return cells, memory


REDUCED_WINDOW = Window(warmup=3, measure=4, memhog_bound=6)


def reduced() -> dict[str, Any]:
    """A small, fast version of the cover letter (a 4 GiB guest, 4 tasks, 4 measured
    seconds) for the golden test: what ``make test`` freezes so a change that moves the
    validation shows in minutes. Rates per benchmark and configuration, and the
    published measurements' figures."""
    base = with_overrides(
        load_spec(str(SEED_V15)),
        {"guest_groups.0.memory": "4GiB", "guest_groups.0.vcpus": 4, "hosts.0.memory": "8GiB"},
    )
    cal = calibrate()
    rates: dict[str, float] = {}
    for bench in (PF1, PF2):
        for config in ("baseline", "enabled", "shuffle", "shuffle_rfc"):
            spec = cell_spec(base, bench, 4, config, cal, REDUCED_WINDOW)
            rates[f"{bench}/{config}"] = benchmark_rate(_run(spec), REDUCED_WINDOW)[0]
    fc = firecracker()
    m = mvm()
    drains = idle_drain((4,))
    return {
        "rates": rates,
        "firecracker_mib": [round(p["sim_mib"], 3) for p in fc["points"]],
        "mvm_first_gib_s": m["first_gib_s"],
        "mvm_end_mib": round(m["end_mib"], 3),
        "idle_4gib_s": drains[0]["seconds_to_99_percent"],
    }


# ---------------------------------------------------------------- host-memory measurements


def _host_backed(rows: list[dict[str, Any]]) -> dict[float, float]:
    return {round(r["time_s"], 1): r["backed_bytes"] / MIB for r in rows if r["kind"] == "host"}


def firecracker() -> dict[str, Any]:
    """A 2 GiB guest frees 900 MiB of tmpfs: host RSS 988 -> 738 (+1 s) -> 482 (+3 s)
    -> 227 (+6 s) -> 91 MiB (+15 s). Our t = 0 is 1.5 s after the free started (see the
    spec's comment); tolerance: within 64 MiB of each published point."""
    spec = load_spec(str(VALIDATION_SPECS / "firecracker-tmpfs.yaml"))
    rows = _run(spec)
    backed = _host_backed(rows)
    t0 = FIRECRACKER_FREE_S + FIRECRACKER_T0_AFTER_FREE_S
    points = []
    for dt, real in ((0, 988), (1, 738), (3, 482), (6, 227), (15, 91)):
        sim = backed[round(t0 + dt, 1)]
        points.append({"t": dt, "real_mib": real, "sim_mib": sim, "ok": abs(sim - real) <= 64})
    return {"points": points, "series": sorted(backed.items()), "t0": t0}


FIRECRACKER_FREE_S = 10  # the spec's free starts here (after the guest has filled 988 MiB)
FIRECRACKER_T0_AFTER_FREE_S = 1.5  # the user's t = 0 (any value in [1.0, 2.0) fits)
MVM_FREE_S = 10


def mvm() -> dict[str, Any]:
    """A 2 GiB guest frees 1.5 GiB: footprint 1,610 -> 78 MiB, the first 1 GiB returned
    10.9 s after the free. Tolerance: the time within 25 %, the end within 64 MiB."""
    spec = load_spec(str(VALIDATION_SPECS / "mvm-hvf.yaml"))
    rows = _run(spec)
    backed = _host_backed(rows)
    before = backed[MVM_FREE_S]
    t_gib = next(t for t, b in sorted(backed.items()) if t > MVM_FREE_S and b <= before - 1024)
    end = backed[max(backed)]
    return {
        "before_mib": before,
        "end_mib": end,
        "first_gib_s": t_gib - MVM_FREE_S,
        "ok": abs((t_gib - MVM_FREE_S) - 10.9) <= 0.25 * 10.9 and abs(end - 78) <= 64,
        "series": sorted(backed.items()),
    }


def idle_drain(sizes_gib=(4, 32, 128)) -> list[dict[str, Any]]:
    """The kernel's claim: an idle system's free memory is all reported in about 30 s.
    A fully free guest of each size; the time until 99 % of its free memory is reported,
    and the passes it took. Tolerance: 15-45 s."""
    base = load_spec(str(VALIDATION_SPECS / "idle-drain.yaml"))
    out = []
    for gib in sizes_gib:
        spec = with_overrides(base, {"guest_groups.0.memory": f"{gib}GiB"})
        rows = _run(spec)
        g = [r for r in rows if r["kind"] == "guest_group"]
        done = next(r for r in g if r["reported_bytes"] >= 0.99 * r["free_bytes"] > 0)
        out.append(
            {
                "guest_gib": gib,
                "seconds_to_99_percent": done["time_s"],
                "passes": done["report_passes_total"],
                "ok": 15 <= done["time_s"] <= 45,
                "series": [(r["time_s"], r["reported_bytes"] / r["free_bytes"]) for r in g],
            }
        )
    return out


# ---------------------------------------------------------------- the document


def _plot_memory(memory: dict, path: Path) -> None:
    from .report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for config, label in (("baseline", "reporting off"), ("enabled", "reporting on")):
        t, b = zip(*memory[config], strict=True)
        ax.plot(t, [x / GIB for x in b], label=label)
    ax.axvline(memory["enabled_start"], color="grey", ls=":", label="page_fault1 starts")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("host memory backing the guest (GiB)")
    ax.set_title("32 GiB guest: memhog, then page_fault1 THP x 16 tasks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_series(series: dict[str, list], path: Path, title: str, ylabel: str, marks=None) -> None:
    from .report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, pts in series.items():
        t, v = zip(*pts, strict=True)
        ax.plot(t, v, label=label)
    if marks:
        t, v = zip(*marks, strict=True)
        ax.plot(t, v, "o", color="black", label="published")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cover_table(cells: list[Cell]) -> list[str]:
    lines = [
        "| benchmark | tasks | configuration | letter | Δ letter | sim | Δ sim "
        "| difference | tolerance | | refaulted MiB/s | host s/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for c in cells:
        mark = "pass" if c.passes else ("explained" if _key(c) in EXPLAINED else "**FAIL**")
        lines.append(
            f"| {c.bench} | {c.tasks} | {c.config} | {c.real:,.0f} | {c.delta_real:+.2f} % | "
            f"{c.sim:,.0f} | {c.delta_sim:+.2f} % | {abs(c.delta_sim - c.delta_real):.2f} pp | "
            f"{c.tolerance:.2f} pp | {mark} | {c.refault_mib_s:,.0f} | {c.host_time:.3f} |"
        )
    return lines


def _key(c: Cell) -> tuple[str, int, str]:
    return (c.bench, c.tasks, c.config)


def explained_drift(cells: list[Cell]) -> list[str]:
    """Explained cells whose simulated change left its band (empty: none)."""
    out = []
    for c in cells:
        if _key(c) in EXPLAINED:
            _, was = EXPLAINED[_key(c)]
            if abs(c.delta_sim - was) > EXPLAINED_BAND_PP:
                out.append(f"{_key(c)}: {c.delta_sim:+.2f} % (explained at {was:+.2f} %)")
    return out


def scores(cells: list[Cell]) -> dict[str, int]:
    """How the predicted cells (not the fitted baselines, not 'applied', which is the
    baseline run) fare, beside a null model that says reporting changes nothing."""
    predicted = [c for c in cells if c.config in PREDICTED]
    return {
        "predicted": len(predicted),
        "simulator": sum(c.passes for c in predicted),
        "null_model": sum(abs(c.delta_real) <= c.tolerance for c in predicted),
        "all_cells": len(cells),
        "all_cells_simulator": sum(c.passes for c in cells),
    }


def orderings(cells: list[Cell]) -> list[tuple[str, bool, bool]]:
    """The orderings the letter draws for page_fault1 with THP, per task count:
    (statement, holds in the letter, holds in the simulation)."""
    by = {_key(c): c for c in cells}
    out = []
    for tasks in (1, 16):
        d = {
            cfg: (by[PF1, tasks, cfg].delta_real, by[PF1, tasks, cfg].delta_sim) for cfg in CONFIGS
        }
        worse = (d["shuffle"][0] < d["enabled"][0] - 1, d["shuffle"][1] < d["enabled"][1] - 1)
        out.append(
            (f"page_fault1 THP x {tasks}: shuffle costs clearly more than reporting alone", *worse)
        )
        recovers = tuple(
            d["shuffle_rfc"][i] - d["shuffle"][i] >= 0.5 * (d["enabled"][i] - d["shuffle"][i])
            for i in (0, 1)
        )
        out.append(
            (f"page_fault1 THP x {tasks}: MADV_FREE recovers most of shuffle's cost", *recovers)
        )
    return out


def memory_observation(memory: dict) -> dict[str, float]:
    """The letter: with reporting on, host memory drops to a few GiB when the page fault
    tests start; off, it stays high. Host GiB 30 s into page_fault1 THP x 16 tasks (the
    warm-up: reporting has worked through what memhog freed)."""
    out = {}
    for config in ("baseline", "enabled"):
        at = memory[config + "_start"] + 30
        out[config] = next(b for t, b in memory[config] if t >= at) / GIB
    out["ok"] = out["enabled"] <= 6 and out["baseline"] >= 25  # type: ignore[assignment]
    return out


DOC = ROOT / "docs" / "validation.md"


def splice(doc: Path, name: str, lines: list[str]) -> None:
    """Replace what lies between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
    in ``doc`` (the document keeps its prose; the figures are regenerated)."""
    text = doc.read_text(encoding="utf-8")
    head, tag, tail = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->", ""
    if head not in text or tag not in text:
        raise ValueError(f"{doc}: no {head} ... {tag} section")
    before, rest = text.split(head, 1)
    _, tail = rest.split(tag, 1)
    doc.write_text(before + head + "\n" + "\n".join(lines) + "\n" + tag + tail, encoding="utf-8")


def _cover(args, out: Path, report: list[str]) -> bool:
    """The cover letter's table, its plot and checks; True when every cell is in
    tolerance or explained, the memory observation holds and the window is long enough."""
    cal = calibrate()
    report.append(f"calibration: {cal}")
    cells, memory = cover_letter_cells(Window(args.warmup, args.measure))
    report += cover_table(cells)
    if args.doc:
        splice(Path(args.doc), "cover", cover_table(cells))
        splice(Path(args.doc), "calibration", [f"`{cal}`"])
    _plot_memory(memory, out / "memory-v15.png")
    ok = not [c for c in cells if not c.passes and _key(c) not in EXPLAINED]
    drift = explained_drift(cells)
    report += [f"explained cell moved: {d}" for d in drift]
    ok &= not drift
    sc = scores(cells)
    report.append(
        f"predicted cells (enabled, shuffle, shuffle+RFC): {sc['simulator']} of {sc['predicted']} "
        f"within tolerance; a null model (reporting changes nothing) passes {sc['null_model']}; "
        f"all cells: {sc['all_cells_simulator']} of {sc['all_cells']}"
    )
    for statement, letter, sim in orderings(cells):
        report.append(
            f"{statement}: letter {'yes' if letter else 'no'}, simulated {'yes' if sim else 'no'}"
        )
        ok &= sim or not letter
    obs = memory_observation(memory)
    report.append(
        f"memory 30 s into page_fault1 THP x 16: reporting off {obs['baseline']:.1f} GiB, "
        f"on {obs['enabled']:.1f} GiB"
    )
    ok &= bool(obs["ok"])
    if args.window_check:
        longer, _ = cover_letter_cells(Window(args.warmup, 2 * args.measure))
        moves = {
            _key(a): abs(a.delta_sim - b.delta_sim) for a, b in zip(cells, longer, strict=True)
        }
        worst = max(moves, key=moves.__getitem__)
        report.append(
            f"window check: {2 * args.measure} s instead of {args.measure} s moves every "
            f"cell by at most {moves[worst]:.2f} pp ({worst})"
        )
        ok &= moves[worst] <= 0.3
    return ok


def _published(out: Path, report: list[str]) -> bool:
    """The three published host-memory measurements, their plots and tolerances."""
    fc = firecracker()
    report.append(
        f"firecracker (t, published MiB, simulated MiB): "
        f"{[(p['t'], p['real_mib'], round(p['sim_mib'])) for p in fc['points']]}"
    )
    _plot_series(
        {"simulated": [(t - fc["t0"], b) for t, b in fc["series"]]},
        out / "firecracker.png",
        "2 GiB guest frees 900 MiB of tmpfs (Firecracker)",
        "host memory (MiB)",
        [(p["t"], p["real_mib"]) for p in fc["points"]],
    )
    m = mvm()
    report.append(
        f"mvm: the first GiB back {m['first_gib_s']:.1f} s after the free (published 10.9 s), "
        f"{m['before_mib']:.0f} -> {m['end_mib']:.0f} MiB (published 1,610 -> 78)"
    )
    _plot_series(
        {"simulated": [(t - MVM_FREE_S, b) for t, b in m["series"]]},
        out / "mvm.png",
        "2 GiB guest frees 1.5 GiB (mvm, HVF)",
        "host footprint (MiB)",
    )
    drains = idle_drain()
    for d in drains:
        report.append(
            f"idle {d['guest_gib']} GiB guest: 99 % of its free memory reported after "
            f"{d['seconds_to_99_percent']:.0f} s, {d['passes']:.0f} passes"
        )
    _plot_series(
        {f"{d['guest_gib']} GiB": d["series"] for d in drains},
        out / "idle-drain.png",
        "A fully free, idle guest: share of free memory reported",
        "reported / free",
    )
    return all(p["ok"] for p in fc["points"]) and m["ok"] and all(d["ok"] for d in drains)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "validation"))
    ap.add_argument("--warmup", type=int, default=Window.warmup)
    ap.add_argument("--measure", type=int, default=Window.measure)
    ap.add_argument("--only", choices=("cover", "published"), default=None)
    ap.add_argument(
        "--doc", default=None, help="also rewrite the generated sections of this markdown file"
    )
    ap.add_argument(
        "--window-check",
        action="store_true",
        help="run the cover letter again with twice the measured seconds: no cell may move "
        "by more than 0.3 percentage points",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    ok = True
    report: list[str] = []
    if args.only in (None, "cover"):
        ok &= _cover(args, out, report)
    if args.only in (None, "published"):
        ok &= _published(out, report)
    if args.doc:
        splice(Path(args.doc), "summary", [f"- {x}" for x in report if not x.startswith("|")])
    report.append(f"wall time {time.perf_counter() - wall:.0f} s; {'ok' if ok else 'FAILED'}")
    (out / "results.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["calibrate", "cover_letter_cells", "firecracker", "idle_drain", "main", "mvm"]
