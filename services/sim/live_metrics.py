"""The coordinator's live metrics: its own /metrics and the run's file_sd targets file.

A :class:`MetricsHub` lives as long as the command that owns it (``overcommit run
--metrics``, ``overcommit serve``). It serves the coordinator's ``/metrics`` on
loopback and keeps a Prometheus ``file_sd`` targets file that lists that endpoint
and every actor's (host actors, guest-shard actors), rewritten atomically whenever
a simulation starts or ends, and removed when the hub closes.

Each :class:`~services.sim.simulation.Simulation` attached to the hub exports the
simulated clock, the epoch count, the speed, a histogram of epoch wall time and the
cluster's levels (:func:`~services.sim.result_rows.cluster_columns`); a session
whose actors do not export their own (in-process) also has its hosts and guest
groups exported here. All of it is a snapshot of the last sample the simulation
recorded (:mod:`services.metrics`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily

from services.metrics import (
    MergedCollector,
    MetricsEndpoint,
    MetricsOptions,
    Row,
    SnapshotCollector,
    WallHistogram,
    check_top_guests,
    entity_rows,
    guest_rows,
)
from services.units import NS_PER_S

from .metric_catalogue import help_of
from .result_rows import cluster_columns, raw_metric_samples

if TYPE_CHECKING:
    from .simulation import Simulation

DEFAULT_LINGER_S = 30.0
MAX_LINGER_S = 24 * 3600.0
MAX_TARGETS_FILE_BYTES = 1 << 20  # an earlier targets file this run may replace
MAX_SPEED = 1e6  # simulated seconds per wall second
MIN_SPEED = 1e-6  # slower: a sample interval would wait longer than a clock can count


@dataclass(frozen=True)
class LiveMetrics:
    """What ``--metrics`` asked for. ``targets_path``: the file_sd file; ``port``: the
    coordinator's endpoint (0: a free port); ``linger_s``: how long a finished run
    keeps its endpoints up; ``top_guests``: per-guest series per host actor (0: none);
    ``make_folder``: create the targets file's folder (the default path under OUT; a
    path the user named must be in a folder that exists)."""

    targets_path: str
    port: int = 0
    linger_s: float = DEFAULT_LINGER_S
    top_guests: int = 0
    make_folder: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.linger_s <= MAX_LINGER_S:
            raise ValueError(f"metrics linger={self.linger_s}: must be 0..{MAX_LINGER_S:.0f} s")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"metrics port={self.port}: must be 0..65535")
        check_top_guests(self.top_guests)


def build_info() -> GaugeMetricFamily:
    import importlib.metadata as md
    import platform

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return ""

    labels = {
        "version": version("overcommit-sim"),
        "python": platform.python_version(),
        **{pkg: version(pkg) for pkg in ("numpy", "numba", "ray", "grpcio")},
    }
    fam = GaugeMetricFamily(
        "overcommit_build_info", help_of("overcommit_build_info"), labels=list(labels)
    )
    fam.add_metric(list(labels.values()), 1.0)
    return fam


def sim_labels(sim: Simulation, experiment: str | None = None) -> dict[str, str]:
    """experiment (the spec's name, or the label given: serve's experiment id), run_id,
    variant."""
    return {"experiment": experiment or sim.spec.name, "run_id": sim.run_id, "variant": sim.variant}


def guest_names(plan) -> dict[int, str]:
    """Guest id -> the name a per-guest series is labelled with (``<group>-<index>``)."""
    return {g.guest_id: f"{g.group.name}-{g.index}" for g in plan.guests}


class SimulationMetrics:
    """One simulation's coordinator metrics (registered with the hub's endpoint)."""

    def __init__(self, sim: Simulation, top_guests: int = 0, experiment: str | None = None):
        self.sim = sim
        self.top_guests = top_guests
        self.guest_names = guest_names(sim.plan)
        self.labels = sim_labels(sim, experiment)
        self.collector = SnapshotCollector(self.labels, raw_metric_samples, help_of)
        self.hist = WallHistogram(
            "overcommit_sim_epoch_wall_seconds", help_of("overcommit_sim_epoch_wall_seconds")
        )
        self.saved: dict[str, float] = {}  # baseline -> bytes saved at the last common sample
        self.started = time.monotonic()
        self.entities = not getattr(sim.session, "exports_metrics", False)

    def observe_call(self, wall_s: float, epochs: int) -> None:
        """One call to the session: ``epochs`` epochs run in ``wall_s``."""
        if epochs > 0:
            self.hist.observe(wall_s / epochs, epochs)

    def update(self) -> None:
        """Snapshot the simulation's last sample."""
        sim = self.sim
        hosts, groups = sim.last_hosts, sim.last_groups
        rows: list[Row] = [
            (
                "sim",
                {},
                {
                    "time_seconds": sim.now_ns / NS_PER_S,
                    "epochs_total": float(epochs_at(sim.now_ns, sim.spec.epoch)),
                    "seconds_per_wall_second": sim.now_ns
                    / NS_PER_S
                    / max(time.monotonic() - self.started, 1e-9),
                },
            ),
            ("cluster", {}, self.cluster()),
        ]
        if self.entities:
            rows += entity_rows("host", hosts, sim.plan.host_names)
            rows += entity_rows("guest_group", groups)
            if self.top_guests:
                for h, top in sim.session.top_guests(self.top_guests).items():
                    rows += guest_rows(sim.plan.host_names[h], top, self.guest_names)
        self.collector.update(rows, [self.hist.family(self.labels)])

    def cluster(self) -> dict[str, float]:
        plan = self.sim.plan
        cols = cluster_columns(self.sim.last_hosts, plan.physical_bytes, plan.guest_bytes)
        for baseline, saved in self.saved.items():
            cols[f"memory_saved_bytes_{baseline}"] = saved
        return cols


class MetricsHub:
    """The coordinator process's endpoint and its file_sd targets file."""

    def __init__(self, options: LiveMetrics):
        self.options = options
        self.experiment_label: str | None = None
        self.targets_path = Path(options.targets_path)
        try:
            if options.make_folder:
                self.targets_path.parent.mkdir(parents=True, exist_ok=True)
            check_targets_path(self.targets_path)
        except OSError as e:
            raise OSError(f"metrics targets {options.targets_path}: {e.strerror or e}") from None
        self._lock = threading.Lock()
        self._info = SnapshotCollector({}, raw_metric_samples, help_of)
        self._info.update([], [build_info()])
        self.collector = MergedCollector(raw_metric_samples, help_of)
        self.collector.add(self._info)
        self.endpoint = MetricsEndpoint([self.collector], port=options.port)
        self._targets: dict[int, list[tuple[str, dict[str, str]]]] = {}
        try:
            with self._lock:
                self._write_targets()
        except BaseException:
            self.endpoint.close()
            raise

    @property
    def address(self) -> str:
        return self.endpoint.address

    def labelled(self, experiment: str) -> MetricsHub:
        """This hub (same endpoint, targets file and lock), labelling the simulations
        attached through it ``experiment=<experiment>`` instead of the spec's name."""
        view = copy.copy(self)
        view.experiment_label = experiment
        return view

    def actor_options(self, sim: Simulation) -> MetricsOptions:
        plan = sim.plan
        return MetricsOptions(
            labels=sim_labels(sim, self.experiment_label),
            namer=raw_metric_samples,
            help=help_of,
            host_names=dict(plan.host_names),
            guest_names=guest_names(plan),
            top_guests=self.options.top_guests,
        )

    def attach(self, sim: Simulation) -> SimulationMetrics:
        m = SimulationMetrics(sim, self.options.top_guests, self.experiment_label)
        # only the role: the samples carry experiment, run_id and variant themselves (a
        # target label of the same name would push theirs aside as exported_*)
        targets = getattr(sim.session, "metrics_targets", list)()
        with self._lock:
            self._targets[id(m)] = [(addr, dict(extra)) for addr, extra in targets]
            try:
                self._write_targets()
            except BaseException:
                del self._targets[id(m)]
                raise
        self.collector.add(m.collector)
        return m

    def detach(self, m: SimulationMetrics) -> None:
        """Stop exporting a simulation (never raises: a simulation closing must close)."""
        self.collector.remove(m.collector)
        with self._lock:
            self._targets.pop(id(m), None)
            try:
                self._write_targets()
            except OSError as e:  # the file's folder went away: nothing left to list
                print(f"warning: metrics targets {self.targets_path}: {e}", file=sys.stderr)

    def _write_targets(self) -> None:
        """Rewrite the file_sd file atomically (Prometheus never reads half a file),
        readable by a Prometheus running as another user. Called with the lock held, so
        two simulations starting at once cannot undo each other's entries."""
        groups = [{"targets": [self.address], "labels": {"role": "coordinator"}}]
        for entries in self._targets.values():
            for addr, labels in entries:
                groups.append({"targets": [addr], "labels": dict(labels)})
        data = json.dumps(groups, indent=1, sort_keys=True) + "\n"
        if self.options.make_folder:
            self.targets_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.targets_path.parent, prefix=".targets-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, self.targets_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.targets_path.unlink()
        self.endpoint.close()


def check_targets_path(path: Path) -> None:
    """The targets file is replaced while the run lasts and removed at its end, so the
    path must name a folder that exists and either nothing or a targets file an earlier
    run wrote (a JSON list of ``{"targets": [...]}`` groups, the coordinator's first, as
    a run that was killed leaves): never a link, a folder, a file_sd file of the user's
    or some other file. OSError naming what is wrong."""
    if not path.parent.is_dir():
        raise OSError(f"its folder {path.parent} does not exist")
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise OSError("exists and is not a regular file (a link or a folder is never replaced)")
    try:
        if st.st_size > MAX_TARGETS_FILE_BYTES:
            raise ValueError("too large")
        groups = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("targets"), list) for g in groups
        ):
            raise ValueError("not a list of target groups")
        if not groups or groups[0].get("labels") != {"role": "coordinator"}:
            raise ValueError("not one an overcommit run wrote")
    except (ValueError, UnicodeDecodeError):
        raise OSError(
            "exists and is not a targets file an overcommit run wrote (its first group is "
            "the coordinator's); it would be replaced and then removed (name a new file)"
        ) from None


def epochs_at(t_ns: int, epoch_ns: int) -> int:
    """Epochs that have begun by ``t_ns`` (the last of a run may be shorter than one epoch)."""
    return -(-t_ns // epoch_ns)


def saved_bytes(run: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """Memory saved at one sample: the baseline's demand minus the run's backed bytes
    (result_rows.compare's definition, at one instant)."""
    return baseline["demand_bytes"] - run["backed_bytes"]
