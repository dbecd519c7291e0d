"""The Grafana dashboards, built with grafana-foundation-sdk's typed builders.

``python scripts/gen_dashboards.py`` writes them to deploy/grafana/dashboards/ (one
JSON file per dashboard, keys sorted, so the output is deterministic); ``--check``
fails when the committed files differ. Three dashboards:

* ``overcommit-cluster``: the cluster overview (the overcommit, backed memory against
  capacity and demand, the memory reporting saved, swap, zeroing, guest slowdown, the
  simulation's speed and clock);
* ``overcommit-host``: one or more hosts (``$host``) in detail;
* ``overcommit-guest-group``: one or more guest groups (``$guest_group``) in detail.

Query rules (docs/metrics.md):

* every selector filters ``experiment=~"$experiment",run_id=~"$run"`` (and the
  entity variable); ``job`` and ``instance`` are never used: backfilled series lack them;
* every query aggregates with ``sum by (...)`` (``max by`` for the clock and for
  values the variants share): live, guest-group metrics come per shard (label ``shard``);
* a rate is per *simulated* second: the counter's ``increase`` over ``$__rate_interval``
  divided by the simulated clock's ``increase`` over the same window (simulated time runs
  faster than wall time, so ``rate()`` would be per wall second);
* the ``variant`` label ``run`` (the run itself) is renamed ``reporting on`` with
  ``label_replace``; a baseline keeps its name; legends show ``{{variant}}``.

``queries`` and ``variables`` read a dashboard's JSON back (for the tests and docs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = REPO_ROOT / "deploy" / "grafana" / "dashboards"

DATASOURCE_UID = "prometheus"
DATASOURCE = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
REFRESH = "5s"
TIME_FROM, TIME_TO = "now-15m", "now"
TAGS = ["overcommit-sim"]

# Grafana's own variables a query may use besides the dashboard's
BUILTIN_VARIABLES = frozenset({"__rate_interval", "__interval", "__range"})
# what a test puts in their place to run a query outside Grafana: every value
# (a regex, the variables are used with =~) and fixed windows
TEST_VALUES = {
    "experiment": ".*",
    "run": ".*",
    "host": ".*",
    "guest_group": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "15m",
}
# $name, ${name} and ${name:format}
VARIABLE_RE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")

SIM_CLOCK = "overcommit_sim_time_seconds"
RUN_LABELS = ("experiment", "run_id", "variant")
BASE_MATCHERS = ('experiment=~"$experiment"', 'run_id=~"$run"')
HOST = 'host=~"$host"'
GROUP = 'guest_group=~"$guest_group"'
VARIANT_RUN = 'variant="run"'
RUN_LEGEND = "reporting on"  # the variant "run": the run itself, with reporting as specified

# units (Grafana unit ids); a rate is per simulated second
BYTES, BYTES_RATE, SECONDS, COUNT, COUNT_RATE, OPS_RATE = "bytes", "Bps", "s", "short", "cps", "ops"
NONE = "none"


# ---------------------------------------------------------------------- PromQL
def sel(metric: str, *matchers: str) -> str:
    """``metric{experiment=~"$experiment",run_id=~"$run",<matchers>}``."""
    return f"{metric}{{{','.join((*BASE_MATCHERS, *matchers))}}}"


def _by(labels: Iterable[str]) -> str:
    return ", ".join(labels)


def level(
    metric: str, by: tuple[str, ...] = (), *matchers: str, agg: str = "sum", runs=RUN_LABELS
) -> str:
    """A gauge summed (``agg``) by the run's labels and ``by``."""
    return f"{agg} by ({_by((*runs, *by))}) ({sel(metric, *matchers)})"


def clock_delta() -> str:
    """Simulated seconds run in each window, per run and variant (windows where the
    clock stood still are dropped: no division by zero). ``increase``, not ``delta``: the
    clock only goes up within a run, and a series that starts again (the same spec run
    again on the same port) reads as a reset, not as time running backwards."""
    return f"max by ({_by(RUN_LABELS)}) (increase({sel(SIM_CLOCK)}[$__rate_interval]) > 0)"


def per_sim_second(metric: str, by: tuple[str, ...] = (), *matchers: str) -> str:
    """A counter's increase per simulated second, summed by the run's labels and ``by``:
    its increase over the window divided by the simulated clock's over the same window
    (both extrapolated alike by ``increase``)."""
    num = (
        f"sum by ({_by((*RUN_LABELS, *by))}) (increase({sel(metric, *matchers)}[$__rate_interval]))"
    )
    return f"{num} / on ({_by(RUN_LABELS)}) group_left {clock_delta()}"


def named(expr: str) -> str:
    """``expr`` with the variant ``run`` renamed ``reporting on`` (baselines keep theirs)."""
    return f'label_replace({expr}, "variant", "{RUN_LEGEND}", "variant", "run")'


# ---------------------------------------------------------------------- panels
def target(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .range()
        .datasource(DATASOURCE)
    )


def _targets(panel, series: list[tuple[str, str]]) -> None:
    for i, (expr, legend) in enumerate(series):
        panel.with_target(target(expr, legend, chr(ord("A") + i)))


def graph(
    title: str,
    unit: str,
    series: list[tuple[str, str]],
    description: str,
    *,
    stacked: bool = False,
    width: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    """A time-series panel; ``series``: (query, legend) pairs."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(30 if stacked else 10)
        .legend(
            common_builder.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        .tooltip(
            common_builder.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if stacked:
        panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))
    _targets(panel, series)
    return panel


def single_stat(
    title: str,
    unit: str,
    series: list[tuple[str, str]],
    description: str,
    *,
    decimals: int | None = None,
    width: int = 8,
    height: int = 4,
) -> stat.Panel:
    """A stat panel showing each series' last value (with its sparkline)."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.NONE)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if decimals is not None:
        panel.decimals(decimals)
    _targets(panel, series)
    return panel


# ---------------------------------------------------------------------- variables
def query_variable(
    name: str, label: str, query: str, *, multi: bool, description: str
) -> dashboard_builder.QueryVariable:
    var = (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    if multi:
        var.all_value(".*")
    return var


def run_variables() -> list[dashboard_builder.QueryVariable]:
    return [
        query_variable(
            "experiment",
            "experiment",
            f"label_values({SIM_CLOCK}, experiment)",
            multi=False,
            description="The experiment (the spec's name)",
        ),
        query_variable(
            "run",
            "run",
            f'label_values({SIM_CLOCK}{{experiment=~"$experiment"}}, run_id)',
            multi=False,
            description="The run (its id; the run and its baselines share it, label variant)",
        ),
    ]


def new_dashboard(uid: str, title: str, description: str) -> dashboard_builder.Dashboard:
    board = (
        dashboard_builder.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh(REFRESH)
        .time(TIME_FROM, TIME_TO)
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
    )
    for var in run_variables():
        board.with_variable(var)
    return board


def _add(board: dashboard_builder.Dashboard, panels: list) -> dashboard_builder.Dashboard:
    for i, panel in enumerate(panels, start=1):
        board.with_panel(panel.id(i))
    return board


# ---------------------------------------------------------------------- dashboards
def cluster_dashboard() -> dashboard_builder.Dashboard:
    board = new_dashboard(
        "overcommit-cluster",
        "overcommit-sim / cluster",
        "The cluster of one run and its baselines: overcommit, memory, swap, guest slowdown, "
        "the simulation's progress. Rates are per simulated second.",
    )
    v = "{{variant}}"
    return _add(
        board,
        [
            single_stat(
                "Overcommit ratio",
                NONE,
                [
                    (
                        level(
                            "overcommit_cluster_overcommit_ratio",
                            agg="max",
                            runs=("experiment", "run_id"),
                        ),
                        "{{run_id}}",
                    )
                ],
                "Committed guest memory / host memory (the spec's overcommit).",
                decimals=2,
            ),
            single_stat(
                "Simulated clock",
                SECONDS,
                [(named(level(SIM_CLOCK, agg="max")), v)],
                "Simulated seconds run so far, per variant.",
            ),
            single_stat(
                "Simulation speed",
                NONE,
                [(named(speed()), v)],
                "Simulated seconds per wall-clock second since the simulation started (live "
                "runs). A backfilled run has no wall clock (its samples sit at start + simulated "
                "time): there the clock's slope stands in, and reads 1.",
                decimals=1,
            ),
            graph(
                "Backed memory vs capacity per host",
                BYTES,
                [
                    (
                        named(level("overcommit_host_backed_bytes", ("host",))),
                        "backed · {{host}} · " + v,
                    ),
                    (
                        level(
                            "overcommit_host_capacity_bytes",
                            ("host",),
                            agg="max",
                            runs=("experiment", "run_id"),
                        ),
                        "capacity · {{host}}",
                    ),
                ],
                "Guest memory backed by host frames, per host and variant, against the memory "
                "the host can give guests (memory minus reserve).",
            ),
            graph(
                "Memory saved by reporting",
                BYTES,
                [
                    (
                        level(
                            "overcommit_cluster_memory_saved_bytes",
                            ("baseline",),
                            VARIANT_RUN,
                            runs=("experiment", "run_id"),
                        ),
                        "saved vs {{baseline}}",
                    )
                ],
                "Each baseline's demand (backed + swapped) minus this run's backed memory, at "
                "the same simulated time.",
            ),
            graph(
                "Cluster backed memory vs demand",
                BYTES,
                [
                    (named(level("overcommit_cluster_backed_bytes")), "backed · " + v),
                    (named(level("overcommit_cluster_demand_bytes")), "demand · " + v),
                ],
                "Guest memory backed by host frames and the guests' demand (backed + swapped), "
                "summed over hosts, per variant.",
            ),
            graph(
                "Swap traffic",
                BYTES_RATE,
                [
                    (named(per_sim_second("overcommit_host_swapout_bytes_total")), "out · " + v),
                    (named(per_sim_second("overcommit_host_swapin_bytes_total")), "in · " + v),
                ],
                "Bytes swapped out and in (disk and compressed tier), all hosts, per simulated "
                "second.",
            ),
            graph(
                "Zero-filled on fault",
                BYTES_RATE,
                [(named(per_sim_second("overcommit_host_zeroed_bytes_total")), v)],
                "Memory the hosts zero-filled on fault, per simulated second.",
            ),
            graph(
                "Guest slowdown",
                NONE,
                [(named(per_sim_second("overcommit_guest_group_lost_seconds_total")), v)],
                "Seconds all guests lost to memory costs (every cost summed), per simulated "
                "second: 0.5 means the guests together lost half a second each second.",
            ),
        ],
    )


def speed() -> str:
    """The exported speed (live runs), else the clock's slope over wall time."""
    exported = level("overcommit_sim_seconds_per_wall_second", agg="max")
    slope = f"max by ({_by(RUN_LABELS)}) (deriv({sel(SIM_CLOCK)}[$__rate_interval]))"
    return f"{exported} or {slope}"


def host_dashboard() -> dashboard_builder.Dashboard:
    board = new_dashboard(
        "overcommit-host",
        "overcommit-sim / host",
        "One or more hosts of a run and its baselines in detail. Rates are per simulated second.",
    )
    board.with_variable(
        query_variable(
            "host",
            "host",
            f"label_values({sel('overcommit_host_backed_bytes')}, host)",
            multi=True,
            description="The hosts shown",
        )
    )
    h = ("host",)
    hv = "{{host}} · {{variant}}"

    def hlevel(metric: str) -> str:
        return named(level(metric, h, HOST))

    def hrate(metric: str, by: tuple[str, ...] = ()) -> str:
        return named(per_sim_second(metric, (*h, *by), HOST))

    return _add(
        board,
        [
            graph(
                "Memory by state",
                BYTES,
                [
                    (hlevel("overcommit_host_backed_bytes"), "backed · " + hv),
                    (hlevel("overcommit_host_lazy_bytes"), "lazily freed · " + hv),
                    (hlevel("overcommit_host_swapped_bytes"), "swapped · " + hv),
                    (
                        level(
                            "overcommit_host_capacity_bytes",
                            h,
                            HOST,
                            agg="max",
                            runs=("experiment", "run_id"),
                        ),
                        "capacity · {{host}}",
                    ),
                ],
                "Guest memory backed by host frames, freed lazily (MADV_FREE) and not yet "
                "reclaimed, and swapped out; the host's capacity (memory minus reserve).",
                height=9,
            ),
            graph(
                "Swap in / out",
                BYTES_RATE,
                [
                    (hrate("overcommit_host_swapout_bytes_total"), "out · " + hv),
                    (hrate("overcommit_host_swapin_bytes_total"), "in · " + hv),
                ],
                "Bytes swapped out and in (disk and compressed tier), per simulated second.",
                height=9,
            ),
            graph(
                "Faults by kind",
                COUNT_RATE,
                [(hrate("overcommit_host_faults_total", ("kind",)), "{{kind}} · " + hv)],
                "Host faults per simulated second: 4k (a 4 KiB page), huge (a THP or hugetlbfs "
                "granule), swapin (a swapped page).",
            ),
            graph(
                "Refaults of reported memory",
                BYTES_RATE,
                [(hrate("overcommit_host_refaulted_reported_bytes_total"), hv)],
                "Memory a report discarded while backed and the guest faulted in again, per "
                "simulated second.",
            ),
            graph(
                "Page reports received",
                COUNT_RATE,
                [(hrate("overcommit_host_reports_total"), hv)],
                "Page-report batches the host received, per simulated second.",
            ),
            graph(
                "Memory reported and discarded",
                BYTES_RATE,
                [
                    (hrate("overcommit_host_reported_bytes_total"), "reported · " + hv),
                    (hrate("overcommit_host_discarded_bytes_total"), "discarded · " + hv),
                ],
                "Memory the guests reported free, and the backed memory the host discarded "
                "because of those reports, per simulated second.",
            ),
            graph(
                "Guest time lost by cost",
                NONE,
                [(hrate("overcommit_host_lost_seconds_total", ("cost",)), "{{cost}} · " + hv)],
                "Seconds the host's guests lost per simulated second, by cost (fault, zero, "
                "swapin, decompress, reclaim, report).",
            ),
            graph(
                "OOM events",
                COUNT,
                [
                    (hlevel("overcommit_host_oom_events_total"), "OOM events · " + hv),
                    (hlevel("overcommit_host_guests_stopped"), "guests stopped · " + hv),
                ],
                "Times the host ran out of memory (a running count), and the guests its OOM "
                "policy stopped.",
            ),
        ],
    )


def guest_group_dashboard() -> dashboard_builder.Dashboard:
    board = new_dashboard(
        "overcommit-guest-group",
        "overcommit-sim / guest group",
        "One or more guest groups of a run and its baselines in detail (sums over the groups' "
        "guests and, live, over shards). Rates are per simulated second.",
    )
    board.with_variable(
        query_variable(
            "guest_group",
            "guest group",
            f"label_values({sel('overcommit_guest_group_guests')}, guest_group)",
            multi=True,
            description="The guest groups shown",
        )
    )
    g = ("guest_group",)
    gv = "{{guest_group}} · {{variant}}"

    def glevel(metric: str, by: tuple[str, ...] = ()) -> str:
        return named(level(metric, (*g, *by), GROUP))

    def grate(metric: str, by: tuple[str, ...] = ()) -> str:
        return named(per_sim_second(metric, (*g, *by), GROUP))

    return _add(
        board,
        [
            graph(
                "Free memory by order (reporting on)",
                BYTES,
                [
                    (
                        level(
                            "overcommit_guest_group_free_bytes_by_order",
                            ("order",),
                            GROUP,
                            VARIANT_RUN,
                            runs=("experiment", "run_id"),
                        ),
                        "order {{order}}",
                    )
                ],
                "Free memory in the guests' buddy allocators by order (block size 4 KiB << "
                "order), stacked, summed over the selected groups, for the run itself.",
                stacked=True,
                height=9,
            ),
            graph(
                "Free and reported memory",
                BYTES,
                [
                    (glevel("overcommit_guest_group_free_bytes"), "free · " + gv),
                    (glevel("overcommit_guest_group_reported_free_bytes"), "reported now · " + gv),
                ],
                "Free memory in the buddy allocators (isolated blocks excluded), and the part "
                "of it carrying the Reported flag now.",
                height=9,
            ),
            graph(
                "Report calls",
                COUNT_RATE,
                [
                    (grate("overcommit_guest_group_report_calls_total"), "calls · " + gv),
                    (grate("overcommit_guest_group_report_errors_total"), "errors · " + gv),
                ],
                "Report calls completed, and those the host answered with an error, per "
                "simulated second.",
            ),
            graph(
                "Memory reported",
                BYTES_RATE,
                [(grate("overcommit_guest_group_reported_bytes_total"), gv)],
                "Memory reported free by completed report calls, per simulated second.",
            ),
            graph(
                "Refaults of reported memory (by host)",
                BYTES_RATE,
                [
                    (
                        named(
                            per_sim_second(
                                "overcommit_host_refaulted_reported_bytes_total", ("host",)
                            )
                        ),
                        "{{host}} · {{variant}}",
                    )
                ],
                "Memory a report discarded and a guest faulted in again, per simulated second. "
                "A host metric: every host of the run, whichever groups it holds.",
            ),
            graph(
                "Per-CPU page lists",
                BYTES,
                [(glevel("overcommit_guest_group_pcp_bytes"), gv)],
                "Memory held in the guests' per-CPU page lists (not reportable while there).",
            ),
            graph(
                "Reporting workers by state",
                COUNT,
                [
                    (
                        glevel("overcommit_guest_group_reporting_guests", ("state",)),
                        "{{state}} · " + gv,
                    )
                ],
                "Guests by reporting-worker state: off, idle, requested, active.",
            ),
            graph(
                "Guest time lost by cost",
                NONE,
                [
                    (
                        grate("overcommit_guest_group_lost_seconds_total", ("cost",)),
                        "{{cost}} · " + gv,
                    )
                ],
                "Seconds the groups' guests lost per simulated second, by cost (host costs, and "
                "guest_fault, guest_zero, guest_copy, guest_unmap for will-it-scale).",
            ),
            graph(
                "Workload operations",
                OPS_RATE,
                [
                    (
                        grate("overcommit_guest_group_workload_ops_total", ("workload",)),
                        "{{workload}} · " + gv,
                    )
                ],
                "Page operations (allocated + freed + touched pages) by workload kind, per "
                "simulated second.",
                width=24,
            ),
        ],
    )


# name (the file's stem, also the uid) -> builder
DASHBOARDS: dict[str, Callable[[], dashboard_builder.Dashboard]] = {
    "overcommit-cluster": cluster_dashboard,
    "overcommit-host": host_dashboard,
    "overcommit-guest-group": guest_group_dashboard,
}


# ---------------------------------------------------------------------- output
def render(board: dashboard_builder.Dashboard) -> str:
    """The dashboard's JSON: keys sorted, indent 2, a trailing newline."""
    return (
        json.dumps(board.build(), cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False)
        + "\n"
    )


def generate() -> dict[str, str]:
    """File name -> JSON text for every dashboard."""
    return {f"{name}.json": render(build()) for name, build in DASHBOARDS.items()}


def dashboard_json(name: str) -> dict:
    return json.loads(render(DASHBOARDS[name]()))


def stale_files(directory: Path = DASHBOARD_DIR) -> list[str]:
    """Files in ``directory`` that differ from the generated ones, are missing, or are
    not generated at all (the folder holds generated dashboards only)."""
    fresh = generate()
    stale = []
    for name, text in fresh.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    stale += sorted(p.name for p in directory.glob("overcommit-*.json") if p.name not in fresh)
    return stale


def write(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """Write every dashboard to ``directory`` and remove JSON files not generated."""
    directory.mkdir(parents=True, exist_ok=True)
    fresh = generate()
    written = []
    for name, text in fresh.items():
        path = directory / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    for path in sorted(directory.glob("overcommit-*.json")):  # ours only: others are kept
        if path.name not in fresh:
            path.unlink()
    return written


# ---------------------------------------------------------------------- reading back
def _panels(board: dict) -> list[dict]:
    out = []
    for panel in board.get("panels") or []:
        out.append(panel)
        out += panel.get("panels") or []  # a row's panels
    return out


def queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query of every panel."""
    return [
        (panel.get("title", ""), t["expr"])
        for panel in _panels(board)
        for t in panel.get("targets") or []
        if t.get("expr")
    ]


def variables(board: dict) -> dict[str, str]:
    """Variable name -> its definition query."""
    out = {}
    for var in (board.get("templating") or {}).get("list") or []:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        out[var["name"]] = var.get("definition") or query or ""
    return out


def used_variables(text: str) -> set[str]:
    """Names of the variables ``text`` uses ($name, ${name}, ${name:format})."""
    return {a or b for a, b in VARIABLE_RE.findall(text)}


def substitute(text: str, values: dict[str, str] | None = None) -> str:
    """``text`` with its variables replaced (by default with TEST_VALUES); an unknown
    variable raises KeyError."""
    values = TEST_VALUES if values is None else values
    return VARIABLE_RE.sub(lambda m: values[m.group(1) or m.group(2)], text)
