"""Run a spec and its paired baselines to the end, and write the results.

``run_experiment(spec) -> RunResult`` is the one entry point (also exported as
``overcommit.run_experiment``); the CLI, the ExperimentService and the tests are
thin shells over it. The run and each baseline of ``spec.compare`` (the same
spec and seed with one thing changed, e.g. ``reporting_off``) are simulated one
after another on the same backend; their rows make one time series, from which
the summary is computed (:mod:`services.sim.result_rows`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.units import NS_PER_S

from . import checkpoint
from .backends import ActorLostError, Backend, backend_for
from .live_metrics import MAX_SPEED, MIN_SPEED, LiveMetrics, MetricsHub, saved_bytes
from .result_rows import VARIANT_RUN, summarize, timeseries_frame
from .run_files import RunResult, held, lock_path, replace_file, results_dir, write_run
from .simulation import CHUNKS_PER_CALL, Simulation
from .spec import ExperimentSpec, baseline_spec
from .trace_groups import trace_digests


def simulate(
    spec: ExperimentSpec,
    backend: Backend,
    variant: str,
    shards: int | None,
    progress: bool = False,
    run_id: str | None = None,
    metrics: MetricsHub | None = None,
) -> tuple[Simulation, dict[str, Any]]:
    """Run one spec to its end on ``backend``; return the closed simulation and its stats."""
    bar = None
    if progress:
        from .console import ProgressBar

        label = "run" if variant == "run" else variant.replace("_", " ")
        bar = ProgressBar(f"{spec.name}: {label}", spec.duration)
    sim = Simulation(
        spec,
        backend,
        variant,
        shards,
        on_progress=bar.update if bar else None,
        run_id=run_id,
        metrics=metrics,
    )
    try:
        sim.advance_to(spec.duration)
        stats = sim.stats()
    finally:
        sim.close()
        if bar is not None:
            bar.close()
    return sim, stats


def run_baselines(
    spec: ExperimentSpec,
    backend: Backend,
    shards: int | None,
    progress: bool = False,
    metrics: MetricsHub | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run each paired baseline of ``spec`` (same seed); return their rows and stats."""
    rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for kind in spec.compare:
        sim, stats[kind] = simulate(
            baseline_spec(spec, kind),
            backend,
            kind,
            shards,
            progress,
            spec.run_id(),
            metrics,
        )
        rows += sim.rows
    return rows, stats


@dataclass(frozen=True)
class LiveRun:
    """How a run is watched while it runs. ``metrics``: serve live metrics (the run and
    its baselines then advance together, so a dashboard shows both and the memory
    saved); ``on_metrics(hub)`` is called once they are up (the CLI prints where).
    ``speed``: pace the run to this many simulated seconds per wall second."""

    metrics: LiveMetrics | None = None
    speed: float | None = None
    on_metrics: Callable[[MetricsHub], None] | None = None

    def __post_init__(self) -> None:
        if self.speed is not None and not MIN_SPEED <= self.speed <= MAX_SPEED:
            raise ValueError(
                f"speed={self.speed}: must be >= {MIN_SPEED:g} and <= {MAX_SPEED:g} simulated "
                "s per wall s"
            )


class RunInterrupted(Exception):  # noqa: N818 - not an error: the run stopped as asked
    """A run stopped on request (Ctrl-C, SIGTERM) at a sample boundary, its checkpoint kept."""

    def __init__(self, run_dir: str, now_ns: int, checkpoint: str | None):
        self.run_dir, self.now_ns, self.checkpoint = run_dir, now_ns, checkpoint
        where = f"checkpoint: {checkpoint}; " if checkpoint else ""
        super().__init__(
            f"stopped at simulated {now_ns / NS_PER_S:g} s; {where}partial time series: "
            f"{os.path.join(run_dir, PARTIAL_TIMESERIES)}; continue with: "
            f"overcommit run --resume {run_dir}"
        )


PARTIAL_TIMESERIES = "timeseries.partial.parquet"
# actor losses a simulation survives beyond its planned kills (each rolls back to the
# last checkpoint)
MAX_RECOVERIES = 8
RECOVER_ATTEMPTS = 3  # tries to bring a simulation back after one loss


def run_experiment(  # noqa: PLR0913, PLR0917 - the one entry point's options, all optional
    spec: ExperimentSpec,
    out_dir: str = "runs",
    shards: int | None = None,
    address: str | None = None,
    transport: str = "grpc",
    progress: bool = False,
    backend: Backend | None = None,
    live: LiveRun | None = None,
    resume: checkpoint.Loaded | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Run a spec and its paired baselines; write and return the results.

    ``transport``: ``grpc`` (Ray actors talking gRPC; ``address`` names a Ray
    cluster, default an embedded local one) or ``inprocess``. A ``backend`` passed
    in is reused and left open. ``live``: metrics and pacing (:class:`LiveRun`).
    Every ``spec.checkpoint_interval`` the run checkpoints (:mod:`services.sim.checkpoint`);
    ``resume``: a checkpoint read back (its spec is the run's; ``spec`` must be it), from
    which the run continues. ``stop``: when set, the run stops at the next sample
    boundary, checkpoints and raises :class:`RunInterrupted`.
    """
    wall0 = time.time()
    run_dir = results_dir(out_dir, spec.name, spec.run_id())
    if resume is not None:
        if resume.spec.spec_sha256() != spec.spec_sha256():
            raise checkpoint.CheckpointError("the spec given is not the checkpoint's")
        run_dir = resume.run_dir
    with held(lock_path(run_dir), run_dir):
        return _run_locked(spec, run_dir, wall0, shards, address, transport, progress,
                           backend, live, resume, stop)  # fmt: skip


def _run_locked(  # noqa: PLR0913, PLR0917 - run_experiment's options, passed on
    spec: ExperimentSpec,
    run_dir: str,
    wall0: float,
    shards: int | None,
    address: str | None,
    transport: str,
    progress: bool,
    backend: Backend | None,
    live: LiveRun | None,
    resume: checkpoint.Loaded | None,
    stop: threading.Event | None,
) -> RunResult:
    """run_experiment with the run directory's lock held."""
    if resume is None and os.path.lexists(checkpoint.manifest_path(run_dir)):
        # a stopped run of this spec: starting again would replace its checkpoint
        raise checkpoint.CheckpointError(
            f"{run_dir} holds the checkpoint of a stopped run of this spec: continue it with "
            f"`overcommit run --resume {run_dir}`, or remove "
            f"{os.path.join(run_dir, checkpoint.CHECKPOINT_DIR)} to start again"
        )
    with backend_for(backend, transport, address) as used:
        driver = _RunDriver(spec, used, shards, live, run_dir, resume, stop)
        plan, run_rows, base_rows, all_stats = driver.run(progress)
    result = finish_run(
        spec,
        plan,
        run_rows,
        base_rows,
        all_stats,
        used.name,
        run_dir,
        wall0,
        {"checkpoints": driver.checkpoint_stats()},
    )
    shutil.rmtree(os.path.join(run_dir, checkpoint.CHECKPOINT_DIR), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(run_dir, PARTIAL_TIMESERIES))
    return result


def _now(sim: Simulation) -> int:
    return sim.now_ns


class _RunDriver:
    """The run and its baselines to the end: one after another, or (with live metrics
    or pacing) advanced together a sample interval at a time while paced (else
    CHUNKS_PER_CALL), with live metrics if asked. Each simulation is independent:
    the results are those of running them one after another. Coordinated
    checkpoints every ``spec.checkpoint_interval``; a lost actor rolls the variants
    in progress back to the last one."""

    def __init__(
        self,
        spec: ExperimentSpec,
        backend: Backend,
        shards: int | None,
        live: LiveRun | None,
        run_dir: str,
        resume: checkpoint.Loaded | None,
        stop: threading.Event | None,
    ):
        self.spec, self.backend, self.live = spec, backend, live
        self.shards = shards if resume is None else resume.shards
        self.together = live is not None and (live.metrics is not None or live.speed is not None)
        self.run_dir, self.resume, self.stop = run_dir, resume, stop or threading.Event()
        self.sims: dict[str, Simulation] = {}
        self.finished: dict[str, checkpoint.Finished] = dict(resume.finished) if resume else {}
        self.hub: MetricsHub | None = None
        self.checkpoints: checkpoint.Checkpoints | None = None
        self.recoveries = 0
        self.rollbacks: list[dict[str, Any]] = []  # each recovery: variant, lost at, back to
        self.plans: dict[str, Any] = {}  # variant -> its plan
        self._last: dict[str, Any] | None = None  # the last checkpoint: variant -> restore args

    def checkpoint_stats(self) -> dict[str, Any]:
        """Checkpoint figures of this process (metadata, never results)."""
        c = self.checkpoints
        out: dict[str, Any] = {"interval_ns": self.spec.checkpoint_interval}
        if c is not None:
            out.update(written=c.saved, last_bytes=c.last_bytes, wall_seconds=c.wall_s)
        if self.resume is not None:
            out["resumed_from_ns"] = dict(self.resume.time_ns)
        out["recoveries"] = self.recoveries
        out["rollbacks"] = self.rollbacks
        return out

    def run(self, progress: bool):
        """Returns the run's plan, its rows, the baselines' rows and every variant's stats."""
        spec, live = self.spec, self.live
        variants = [VARIANT_RUN, *spec.compare]
        todo = [v for v in variants if v not in self.finished]
        try:
            if live is not None and live.metrics is not None:
                self.hub = MetricsHub(live.metrics)
                if live.on_metrics is not None:
                    live.on_metrics(self.hub)
            if self.together:
                for v in todo:
                    self._start(v)
                self._advance_together(progress)
                self._finish_all(close=False)  # closed after the linger, below
                self._linger()
            else:
                for v in todo:
                    self._start(v)
                    self._advance_alone(self.sims[v], progress)
                    self._finish_all()
        finally:
            with contextlib.ExitStack() as stack:  # every close runs, even if one raises
                if self.hub is not None:
                    stack.callback(self.hub.close)
                for sim in self.sims.values():
                    stack.callback(sim.close)
        run = self.finished[VARIANT_RUN]
        base_rows = [row for kind in spec.compare for row in self.finished[kind].rows]
        stats = {v: self.finished[v].stats for v in variants}
        return self._plan(), run.rows, base_rows, stats

    def _plan(self):
        if VARIANT_RUN in self.plans:
            return self.plans[VARIANT_RUN]
        from .plan import make_plan

        n = self.shards or self.backend.nr_shards_default
        return make_plan(self.spec, f"{self.spec.name}-{self.spec.run_id()}-{VARIANT_RUN}", n)

    def _start(self, variant: str) -> None:
        spec = self.spec if variant == VARIANT_RUN else baseline_spec(self.spec, variant)
        sim = Simulation(
            spec,
            self.backend,
            variant,
            self.shards,
            run_id=self.spec.run_id(),
            metrics=self.hub,
        )
        self.sims[variant] = sim
        self.plans = {**self.plans, variant: sim.plan}
        if self.checkpoints is None:
            traces = trace_digests(sim.plan.guests)
            if self.resume is not None and self.resume.traces != traces:
                raise checkpoint.CheckpointError(
                    f"the trace files changed since the checkpoint (now {traces}, "
                    f"then {self.resume.traces})"
                )
            self.checkpoints = checkpoint.Checkpoints(
                self.spec, self.run_dir, traces, len(sim.plan.shard_inits)
            )
            if self.resume is not None:  # where each variant rolls back to, until the next
                for v in self.resume.running:
                    self.checkpoints.last[v] = self.resume.restore_args(v)
        if self.resume is not None and variant in self.resume.running:
            sim.restore(*self.checkpoints.last[variant])

    def _finish_all(self, close: bool = True) -> None:
        """Record the simulations that reached their end; ``close`` them (not while
        live metrics linger: their endpoints stay up until the run's end)."""
        if self.checkpoints is not None and self.checkpoints.pending:
            self._commit_or_recover()  # its writers finish before their actors close
        for variant, sim in list(self.sims.items()):
            if sim.finished and variant not in self.finished:
                self.finished[variant] = checkpoint.Finished(sim.rows, sim.stats())
                if close:
                    sim.close()

    def _due(self, now_ns: int) -> int | None:
        every = self.spec.checkpoint_interval
        return None if not every else (now_ns // every + 1) * every

    def _begin(self) -> bool:
        """Begin a checkpoint of this boundary (the actors write it in the background
        while the run goes on); False if nothing runs."""
        running = {v: s for v, s in self.sims.items() if not s.closed and not s.finished}
        if self.checkpoints is None or not running:
            return False
        pending = {}  # resumed variants not started again yet
        if self.resume is not None:
            last = self.checkpoints.last
            pending = {v: last[v] for v in self.resume.running if v not in self.sims}
        self.checkpoints.begin(running, self.finished, pending)
        return True

    def _save(self) -> str | None:
        """Checkpoint this boundary and wait until it is on disk."""
        if self.checkpoints is not None and self.checkpoints.pending:
            self.checkpoints.commit()
        return self.checkpoints.commit() if self._begin() else None

    def _lost(self, e: ActorLostError) -> None:
        """Roll the simulation that lost an actor (all running ones, if unknown) back."""
        lost = getattr(e, "variant", None)
        for variant, sim in self.sims.items():
            if not sim.closed and not sim.finished and lost in (None, variant):
                self._recover(sim, e)

    def _commit_or_recover(self) -> None:
        try:
            self.checkpoints.commit()
        except ActorLostError as e:
            self._lost(e)

    def _save_or_recover(self) -> None:
        """At a checkpoint boundary: commit the checkpoint begun at the last one and
        begin this one. Actors write it in the background, at the lowest priority; it is
        committed at the next boundary, or when the run ends or stops (at once where
        the parts are written synchronously, in process). If an actor turns out lost
        (killed after its last call returned), roll back to the last committed one."""
        try:
            if self.checkpoints is not None and self.checkpoints.pending:
                self.checkpoints.commit()
            if self._begin() and not any(
                s.session.background_checkpoints for s in self.sims.values() if not s.closed
            ):
                self.checkpoints.commit()
        except ActorLostError as e:
            self._lost(e)

    def _after_step(self, sim: Simulation, due: int | None) -> None:
        """After a step: if ``sim`` reached the checkpoint boundary ``due``, commit the
        checkpoint begun at the last one (its writers had a whole interval) and begin
        this one."""
        if due is not None and sim.now_ns >= due and not sim.finished:
            self._save_or_recover()

    def _interrupted(self, sim: Simulation) -> RunInterrupted:
        path = self._save()
        rows = [r for done in self.finished.values() for r in done.rows]
        rows += [r for s in self.sims.values() if not s.closed for r in s.rows]
        frame = timeseries_frame(rows)
        replace_file(os.path.join(self.run_dir, PARTIAL_TIMESERIES), frame.to_parquet)
        return RunInterrupted(self.run_dir, sim.now_ns, path)

    def _advance_alone(self, sim: Simulation, progress: bool) -> None:
        bar = None
        if progress:
            from .console import ProgressBar

            label = "run" if sim.variant == VARIANT_RUN else sim.variant.replace("_", " ")
            bar = ProgressBar(f"{self.spec.name}: {label}", self.spec.duration)
            sim.on_progress = bar.update
        try:
            while not sim.finished:
                due = self._due(sim.now_ns)
                target = self.spec.duration if due is None else due
                try:
                    if not sim.advance_to(target, should_stop=self.stop.is_set):
                        raise self._interrupted(sim)
                except ActorLostError as e:
                    self._recover(sim, e)
                    continue
                self._after_step(sim, due)
        finally:
            if bar is not None:
                bar.close()

    def _advance_together(self, progress: bool) -> None:
        spec, speed = self.spec, self.live.speed if self.live else None
        # the run leads (a resumed checkpoint may hold only baselines still running)
        run = self.sims.get(VARIANT_RUN) or next(iter(self.sims.values()))
        bar = None
        if progress:
            from .console import ProgressBar

            label = "run and baselines" if spec.compare else "run"
            bar = ProgressBar(f"{spec.name}: {label}", spec.duration)
        try:
            pace0 = time.monotonic() - run.now_ns / NS_PER_S / speed if speed else 0.0
            while not all(sim.finished for sim in self.sims.values()):
                if self.stop.is_set():
                    raise self._interrupted(run)
                # every simulation to the same boundary (one rolled back catches up)
                lead = min((s for s in self.sims.values() if not s.finished), key=_now)
                target = lead.now_ns + spec.sample_interval * (1 if speed else CHUNKS_PER_CALL)
                due = self._due(lead.now_ns)
                if due is not None:
                    target = min(target, due)
                for sim in self.sims.values():
                    try:
                        sim.advance_to(target)
                    except ActorLostError as e:
                        self._recover(sim, e)
                self._share_savings()
                self._after_step(lead, due)
                if bar is not None:
                    bar.update(run.now_ns, run.epochs_run)
                if speed:  # the wall clock only paces the loop; simulated time never reads it
                    ahead = pace0 + run.now_ns / NS_PER_S / speed - time.monotonic()
                    if ahead > 0:
                        self.stop.wait(ahead)  # a stop ends the wait at once
        finally:
            if bar is not None:
                bar.close()

    def _recover(self, sim: Simulation, err: Exception) -> None:
        """An actor was lost: roll ``sim`` back to the last checkpoint (or its start)."""
        if self.checkpoints is not None:
            self.checkpoints.abandon()  # begun with the lost actor: never committed
        self.recoveries += 1
        # planned kills (faults.kill) come on top of the losses a run survives
        limit = (MAX_RECOVERIES + len(self.spec.faults.kill)) * (1 + len(self.spec.compare))
        if self.recoveries > limit:
            raise RuntimeError(
                f"{sim.variant}: actors lost {self.recoveries} times (at most {limit}); "
                f"the last: {err}"
            ) from err
        last = self.checkpoints.last.get(sim.variant) if self.checkpoints else None
        back = last[2]["now_ns"] if last else 0
        print(
            f"warning: {sim.variant}: {err}; rolled back to simulated {back / NS_PER_S:g} s "
            f"(recovery {self.recoveries} of at most {limit})",
            file=sys.stderr,
            flush=True,
        )
        self.rollbacks.append({"variant": sim.variant, "lost_after_ns": sim.now_ns, "to_ns": back})
        for attempt in range(RECOVER_ATTEMPTS):
            try:
                sim.recover(last)
                return
            except ActorLostError as again:  # lost once more while coming back
                if attempt == RECOVER_ATTEMPTS - 1:
                    raise
                print(f"warning: {sim.variant}: {again}; recovering again", file=sys.stderr)

    def _share_savings(self) -> None:
        """The run's memory saved against each baseline at their common last sample."""
        run = self.sims.get(VARIANT_RUN)
        if run is None or run.metrics is None:
            return
        mine = run.metrics.cluster()
        for kind, sim in self.sims.items():
            if kind != VARIANT_RUN and sim.metrics is not None and sim.now_ns == run.now_ns:
                run.metrics.saved[kind] = saved_bytes(mine, sim.metrics.cluster())
        run.metrics.update()

    def _linger(self) -> None:
        metrics = self.live.metrics if self.live else None
        if self.hub is None or metrics is None or metrics.linger_s <= 0:
            return
        print(
            f"finished; metrics stay up for {metrics.linger_s:g} s "
            "(the last scrape sees the final values; Ctrl-C or SIGTERM ends the wait)",
            flush=True,
        )
        # SIGINT and SIGTERM end the wait, then the run writes its files: handlers of our
        # own, since a shell starts background jobs with SIGINT ignored
        done = threading.Event()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: done.set())
        try:
            done.wait(metrics.linger_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def finish_run(  # noqa: PLR0913, PLR0917
    spec: ExperimentSpec,
    plan: Any,
    run_rows: list[dict[str, Any]],
    baseline_rows: list[dict[str, Any]],
    stats: dict[str, Any],
    backend_name: str,
    run_dir: str,
    wall0: float,
    extra_metadata: dict[str, Any] | None = None,
) -> RunResult:
    """Summarize and write a finished run (and its baselines) to ``run_dir``."""
    ts = timeseries_frame(run_rows + baseline_rows)
    summary = summarize(spec, plan, ts, list(spec.compare))
    metadata = {**_metadata(spec, backend_name, stats, wall0), **(extra_metadata or {})}
    from .spec_checks import spec_warnings

    warnings = spec_warnings(spec, plan)
    if warnings:
        metadata["warnings"] = [f"{field}: {message}" for field, message in warnings]
    traces = trace_digests(plan.guests)
    if traces:  # the run id hashes the spec, not the trace files it names
        metadata["traces"] = traces
    write_run(run_dir, spec.resolved_dict(), summary, ts, metadata)
    return RunResult(summary, ts, run_dir, metadata)


def _metadata(
    spec: ExperimentSpec, backend: str, stats: dict[str, Any], wall0: float
) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in (
        "overcommit-sim",
        "numpy",
        "numba",
        "ray",
        "grpcio",
        "protobuf",
        "pandas",
        "pyarrow",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "name": spec.name,
        "run_id": spec.run_id(),
        "backend": backend,
        "runs": stats,
        "started_unix": wall0,
        "wall_seconds": time.time() - wall0,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "versions": versions,
    }
