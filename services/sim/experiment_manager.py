"""``overcommit serve``: the experiments that ExperimentService clients create and drive.

:class:`ExperimentManager` implements the servicer's ``ExperimentManagerApi``:
experiments are created from a spec, advanced step by step or run to the end,
streamed as samples while they run, and written to ``runs/`` like any CLI run
when they finish (with their paired baselines).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.transport.errors import deadline_exceeded, failed_precondition, resource_exhausted
from services.units import NS_PER_S

from . import checkpoint
from .backends import ActorLostError, make_backend
from .live_metrics import LiveMetrics, MetricsHub
from .placement import place
from .result_rows import ROW_KEYS, VARIANT_RUN, summarize, timeseries_frame
from .run_files import results_dir
from .runner import finish_run, run_baselines
from .serve_state import (
    MAX_NUMBER_DIGITS,
    Footprint,
    check_fits,
    default_memory_budget,
    dir_name,
    footprint_bytes,
    read_last_number,
    recorded_footprint,
    write_last_number,
)
from .simulation import Simulation
from .spec import load_spec_text, parse_spec, with_trace_root
from .trace_groups import group_traces, trace_digests

# experiments one server holds; the oldest that ended are forgotten to make room (their
# results stay in runs/)
MAX_EXPERIMENTS = 64
SERVE_DIR = "serve"  # OUT/serve/<experiment id>/: its record and checkpoints
RECORD = "experiment.json"
RECORD_FORMAT = "overcommit-serve-experiment/1"
MAX_RECORD_BYTES = 1 << 22
MAX_SERVE_ENTRIES = 100_000  # records read at start (numbers beyond are never reused)
MAX_RECOVERIES = 8  # actor losses one Advance or RunToEnd call survives
STREAM_WAIT_S = 0.25  # a waiting stream re-checks its client and the server this often
# Calls running on one experiment or waiting for it at once (its lock: Advance, RunToEnd,
# GetSummary of a running one, ResumeExperiment, GuestService's first call); more are
# refused at once with RESOURCE_EXHAUSTED. Each waiting call holds a server worker, so one
# experiment's token never takes more than this many of the 32 (health, other experiments
# and Cancel keep the rest).
MAX_CALLS_PER_EXPERIMENT = 4


class _Experiment:
    def __init__(self, experiment_id: str, spec, footprint: Footprint | None = None):
        self.id = experiment_id
        self.spec = spec
        self.sim: Simulation | None = None
        self.router = None  # GuestService's view of the shards, made on first use
        self.state = "created"
        self.result = None
        self.lock = threading.Lock()  # held while the experiment runs (taken by _hold only)
        self.calls = 0  # calls holding or waiting for the lock (the manager's lock guards it)
        self.cond = threading.Condition()
        self.cancel_requested = threading.Event()  # read between chunks by a running advance
        self.wall0 = time.time()
        self.checkpoints: checkpoint.Checkpoints | None = None
        self.resumed_ns: int | None = None  # an interrupted one: its last checkpoint's time
        # its share of the memory budget (create passes the one its traces gave)
        self.footprint = footprint_bytes(spec) if footprint is None else footprint
        # once it has ended, its simulation is let go (_release); what clients still read:
        self.ended_ns: int | None = None
        self.ended_rows: list[dict[str, Any]] = []  # its samples (a few rows per interval)
        self.ended_summary: Mapping[str, Any] | None = None  # a cancelled one's summary

    @property
    def now_ns(self) -> int:
        if self.sim is not None:
            return self.sim.now_ns
        if self.ended_ns is not None:
            return self.ended_ns
        return self.resumed_ns or 0

    @property
    def shown_state(self) -> str:
        """The state clients see: ``cancelled`` from the moment Cancel is asked (the call
        running on it stops at its next chunk boundary and cleans up then)."""
        if self.cancel_requested.is_set() and self.state in ("created", "interrupted"):
            return "cancelled"
        return self.state

    def rows(self) -> list[dict[str, Any]]:
        return self.sim.rows if self.sim else self.ended_rows


class ExperimentManager:
    """Experiments by id; each runs on the shared backend (Ray, or in-process)."""

    def __init__(  # noqa: PLR0913 - the server's options, all optional
        self,
        out_dir: str = "runs",
        transport: str = "grpc",
        address: str | None = None,
        shards: int | None = None,
        backend=None,
        trace_dir: str | None = None,
        metrics: LiveMetrics | None = None,
        *,
        memory_budget: int | None = None,
    ):
        self.out_dir = out_dir
        # bytes the simulations of experiments that have not ended may need in all
        self.memory_budget = default_memory_budget() if memory_budget is None else memory_budget
        # live metrics: the coordinator's endpoint and every experiment's actors (file_sd)
        self.metrics = MetricsHub(metrics) if metrics is not None else None
        # where clients' trace paths resolve (relative only, never outside); None: refused
        self.trace_dir = None if trace_dir is None else Path(trace_dir).resolve()
        self.shards = shards
        self.backend = backend or make_backend(transport, address)
        self._experiments: dict[str, _Experiment] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.active_streams = 0  # sample streams being served now (read by tests and health)
        # every experiment's record and checkpoints: OUT/serve/<experiment id>/
        self.state_dir = os.path.join(out_dir, SERVE_DIR)
        self._last_number = self._load_interrupted()
        self._ids = itertools.count(self._last_number + 1)

    # -- ExperimentManagerApi ---------------------------------------------------------
    def create(
        self, spec: str | Mapping[str, Any], call_over: Callable[[], bool] | None = None
    ) -> str:
        """A new experiment from a spec; its id. Not created (DEADLINE_EXCEEDED) if
        ``call_over()`` is true when it would be registered: nobody would learn its id."""
        parsed = load_spec_text(spec) if isinstance(spec, str) else parse_spec(dict(spec))
        parsed = with_trace_root(parsed, self.trace_dir, absolute_ok=False)
        traces = None
        if any(g.is_trace for g in parsed.guest_groups):
            traces = group_traces(parsed)  # checked now: a bad file is the caller's error
        place(parsed, traces)  # guests that fit on no host: the caller's error, now
        footprint = footprint_bytes(parsed, traces)
        with self._lock:
            if len(self._experiments) >= MAX_EXPERIMENTS:
                self._evict_ended()
            if len(self._experiments) >= MAX_EXPERIMENTS:
                raise resource_exhausted(
                    "experiments",
                    len(self._experiments),
                    f"this server holds at most {MAX_EXPERIMENTS} experiments that have not "
                    "ended (finish or cancel one)",
                )
            self._check_budget(footprint.running)
            if call_over is not None and call_over():
                raise deadline_exceeded(
                    "CreateExperiment",
                    parsed.name,
                    "the call's deadline passed (or its client went away) before the "
                    "experiment was registered; nothing was created",
                )
            self._last_number = next(self._ids)
            experiment_id = f"{parsed.name}-{parsed.run_id()}-{self._last_number}"
            exp = _Experiment(experiment_id, parsed, footprint)
            self._experiments[experiment_id] = exp
        self._persist(exp)
        return experiment_id

    def memory_in_use(self) -> int:
        """The memory budget the experiments take (estimated): all of it for those that
        have not ended, their samples for those that have and are still held."""
        return sum(
            e.footprint.rows if e.state in ("finished", "cancelled") else e.footprint.running
            for e in self._experiments.values()
        )

    def _check_budget(self, footprint: int) -> None:
        """RESOURCE_EXHAUSTED unless ``footprint`` fits in what is left of the memory
        budget, once ended experiments are forgotten (oldest first) to make room.
        Called with the lock held."""
        while footprint > self.memory_budget - self.memory_in_use() and self._evict_ended():
            pass
        check_fits(footprint, self.memory_budget - self.memory_in_use(), self.memory_budget)

    def _evict_ended(self) -> bool:
        """Forget the oldest finished or cancelled experiment (its results are in runs/),
        so a long-lived server keeps taking new ones; False if none can be. Called with
        the lock held."""
        for experiment_id, exp in self._experiments.items():
            if exp.state in ("finished", "cancelled") and exp.calls == 0:
                del self._experiments[experiment_id]
                self._forget_state(dir_name(experiment_id))
                return True
        return False

    def _forget_state(self, name: str, keep_number: bool = True) -> None:
        """Remove an ended experiment's OUT/serve/<name>/ (its record; its checkpoints
        went when it ended), once the highest number given is kept (``keep_number``:
        written now; else the caller has): nothing is left to list or resume, and a
        long-lived server's state stays as small as its table."""
        if keep_number:
            write_last_number(self.state_dir, self._last_number)
        path = os.path.join(self.state_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)

    def list_experiments(self, only: str | None = None) -> list[dict[str, Any]]:
        """Every experiment (``only``: that one), in creation order: id, name, state and
        simulated time (an interrupted one's: its last checkpoint's)."""
        with self._lock:
            experiments = list(self._experiments.values())
        return [
            {"experiment_id": e.id, "name": e.spec.name, "state": e.shown_state, "now_ns": e.now_ns}
            for e in experiments
            if only is None or e.id == only
        ]

    def resume(self, experiment_id: str, wait_s: float | None = None):
        """Continue an experiment interrupted by a server stop from its last checkpoint
        (from the start if it had none); it is ``created`` again. ``wait_s``: how long
        the call may wait for another call on the experiment (None: no limit)."""
        exp = self._get(experiment_id)
        with self._hold(exp, wait_s):
            if exp.shown_state != "interrupted":
                raise failed_precondition(
                    "experiment_id",
                    experiment_id,
                    f"experiment is {exp.shown_state}, not interrupted",
                )
            loaded = None
            if os.path.exists(checkpoint.manifest_path(self._exp_dir(exp))):
                loaded = checkpoint.load(self._exp_dir(exp), exp.spec, dir_name(exp.id))
            sim = self._sim(exp, shards=loaded.shards if loaded else None)
            if loaded is not None and loaded.traces != trace_digests(sim.plan.guests):
                sim.close()
                exp.sim = None
                raise failed_precondition(
                    "experiment_id", experiment_id, "its trace files changed since its checkpoint"
                )
            if loaded is not None:
                last = loaded.restore_args(VARIANT_RUN)
                sim.restore(*last)
                self._checkpoints(exp).last[VARIANT_RUN] = last
            exp.resumed_ns = None
            exp.state = "created"
            self._persist(exp)
            return self._status(exp)

    def advance(
        self,
        experiment_id: str,
        duration_ns: int,
        should_stop: Callable[[], bool] | None = None,
        wait_s: float | None = None,
    ):
        """Run ``duration_ns`` more of simulated time. Between chunks of sample intervals
        it stops early, consistent and resumable, when ``should_stop()`` says the call
        is over (client gone, deadline passed), on Cancel, or when the server stops.
        ``wait_s``: the call's remaining time (None: no deadline); it waits for another
        call on the experiment no longer than that (DEADLINE_EXCEEDED, nothing changed)."""
        if duration_ns <= 0:
            raise ValueError(f"duration_ns must be > 0, got {duration_ns}")
        deadline_s = _deadline(wait_s)
        exp = self._get(experiment_id)
        with self._hold(exp, wait_s):
            self._check_running(exp)
            sim = self._sim(exp)
            stop = self._stopper(exp, should_stop)
            self._advance_to(exp, sim.now_ns + duration_ns, stop, deadline_s)
            return self._settle(exp)

    def run_to_end(
        self,
        experiment_id: str,
        should_stop: Callable[[], bool] | None = None,
        wait_s: float | None = None,
    ):
        """Run to the end; ``should_stop`` and ``wait_s`` as for :meth:`advance`."""
        deadline_s = _deadline(wait_s)
        exp = self._get(experiment_id)
        with self._hold(exp, wait_s):
            if exp.state == "finished":
                return self._status(exp)
            self._check_running(exp)
            sim = self._sim(exp)
            stop = self._stopper(exp, should_stop)
            while not sim.finished and self._advance_to(
                exp, sim.now_ns + exp.spec.sample_interval, stop, deadline_s
            ):
                self._notify(exp)
            return self._settle(exp)

    def cancel(self, experiment_id: str):
        """Stop the experiment, without waiting for a call running on it: that call sees
        the request at its next chunk boundary, and whichever call holds the experiment
        cleans up as it lets go of it (:meth:`_hold`). A run that already reached its end
        and is writing its results finishes."""
        exp = self._get(experiment_id)
        if exp.state in ("finished", "cancelled"):
            return self._status(exp)
        exp.cancel_requested.set()  # first: a holder that lets go after this cleans up
        self._notify(exp)
        if exp.lock.acquire(blocking=False):
            try:
                self._cancel_now(exp)
            finally:
                exp.lock.release()
        return self._status(exp)

    def summary(self, experiment_id: str, wait_s: float | None = None) -> Mapping[str, Any]:
        """The summary so far; ``wait_s`` as for :meth:`advance`."""
        exp = self._get(experiment_id)
        if exp.result is not None:  # finished: no need to wait for anyone
            return exp.result.summary
        if exp.ended_summary is not None:  # cancelled
            return exp.ended_summary
        with self._hold(exp, wait_s):
            if exp.result is not None:
                return exp.result.summary
            if exp.ended_summary is not None:
                return exp.ended_summary
            return self._summary_so_far(exp)

    def _summary_so_far(self, exp: _Experiment) -> dict[str, Any]:
        """The summary of the samples so far (with the lock held)."""
        rows = exp.rows()
        if not rows or exp.sim is None:
            return {"name": exp.spec.name, "state": exp.shown_state, "now_seconds": 0.0}
        summary = summarize(exp.spec, exp.sim.plan, timeseries_frame(list(rows)), [])
        summary["state"] = exp.shown_state
        summary["now_seconds"] = exp.now_ns / NS_PER_S
        return summary

    def stream_samples(
        self, experiment_id: str, is_active: Callable[[], bool] | None = None
    ) -> Iterator[Mapping[str, Any]]:
        """Samples as they come; ends when the experiment ends, when the client goes away
        (``is_active()`` false) or when the server stops."""
        exp = self._get(experiment_id)
        with self._lock:
            self.active_streams += 1
        try:
            yield from self._stream(exp, is_active)
        finally:
            with self._lock:
                self.active_streams -= 1

    def _stream(
        self, exp: _Experiment, is_active: Callable[[], bool] | None
    ) -> Iterator[Mapping[str, Any]]:
        sent = 0
        while True:
            with exp.cond:
                rows = exp.rows()
                while sent >= len(rows) and exp.state == "created":  # (>=: after a rollback)
                    if self._closing.is_set() or (is_active is not None and not is_active()):
                        return
                    exp.cond.wait(timeout=STREAM_WAIT_S)
                    rows = exp.rows()
                batch = rows[sent:]
                done = exp.state != "created"
            for row in batch:
                if row["variant"] == VARIANT_RUN:
                    yield {
                        # int(): the row's values may be numpy scalars
                        "sim_time_ns": int(round(row["time_s"] * NS_PER_S)),  # noqa: RUF046
                        "entity": f"{row['kind']}/{row['entity']}",
                        "metrics": {k: v for k, v in row.items() if k not in ROW_KEYS and v == v},  # noqa: PLR0124 - drops NaN, any type
                    }
            sent += len(batch)
            if done and sent >= len(exp.rows()):
                return

    # -- internals ------------------------------------------------------------------
    def _get(self, experiment_id: str) -> _Experiment:
        with self._lock:
            exp = self._experiments.get(experiment_id)
        if exp is None:
            raise KeyError(f"experiment_id {experiment_id!r} is unknown")
        return exp

    def _check_running(self, exp: _Experiment) -> None:
        if exp.shown_state != "created":
            raise failed_precondition("experiment_id", exp.id, f"experiment is {exp.shown_state}")

    @contextmanager
    def _hold(self, exp: _Experiment, wait_s: float | None) -> Iterator[None]:
        """Hold the experiment's lock: at most MAX_CALLS_PER_EXPERIMENT calls run on it
        or wait for it at once (more: RESOURCE_EXHAUSTED at once), each waiting no longer
        than ``wait_s`` (then DEADLINE_EXCEEDED; nothing changed). A Cancel asked while
        the lock was held is carried out before it is let go."""
        with self._lock:
            if exp.calls >= MAX_CALLS_PER_EXPERIMENT:
                raise resource_exhausted(
                    "experiment_id",
                    exp.id,
                    f"{exp.calls} calls already run on this experiment or wait for it "
                    f"(at most {MAX_CALLS_PER_EXPERIMENT}); try again when they end",
                )
            exp.calls += 1
        try:
            if not exp.lock.acquire(timeout=-1 if wait_s is None else max(0.0, wait_s)):
                raise deadline_exceeded(
                    "experiment_id",
                    exp.id,
                    f"another call ran on the experiment for the whole {wait_s:.3g} s the "
                    "call had left; nothing was done",
                )
            try:
                yield
            finally:
                try:
                    if exp.cancel_requested.is_set():
                        self._cancel_now(exp)
                finally:
                    exp.lock.release()
        finally:
            with self._lock:
                exp.calls -= 1

    def _sim(self, exp: _Experiment, shards: int | None = None) -> Simulation:
        if exp.sim is None:
            exp.sim = Simulation(
                exp.spec,
                self.backend,
                VARIANT_RUN,
                shards or self.shards,
                metrics=self._metrics_for(exp),
            )
        return exp.sim

    def _advance_to(
        self,
        exp: _Experiment,
        target_ns: int,
        stop: Callable[[], bool],
        deadline_s: float | None = None,
    ) -> bool:
        """advance_to with a coordinated checkpoint every ``checkpoint_interval`` and, if
        an actor is lost, a rollback to the last one. False if stopped early."""
        sim = self._sim(exp)
        every = exp.spec.checkpoint_interval
        limit = min(target_ns, exp.spec.duration)
        losses = 0
        while sim.now_ns < limit:
            due = (sim.now_ns // every + 1) * every if every else None
            try:
                if not sim.advance_to(limit if due is None else min(limit, due), stop, deadline_s):
                    return False
                if due is not None and sim.now_ns >= due and not sim.finished:
                    self._checkpoints(exp).save({VARIANT_RUN: sim}, {})
            except ActorLostError as e:
                losses += 1
                if losses > MAX_RECOVERIES:
                    raise failed_precondition(
                        "experiment_id", exp.id, f"actors lost {losses} times in one call: {e}"
                    ) from e
                self._checkpoints(exp).abandon()
                sim.recover(self._checkpoints(exp).last.get(VARIANT_RUN))
        return True

    def _exp_dir(self, exp: _Experiment) -> str:
        return results_dir(self.state_dir, dir_name(exp.id))

    def _checkpoints(self, exp: _Experiment) -> checkpoint.Checkpoints:
        if exp.checkpoints is None:
            sim = self._sim(exp)
            exp.checkpoints = checkpoint.Checkpoints(
                exp.spec,
                self._exp_dir(exp),
                trace_digests(sim.plan.guests),
                len(sim.plan.shard_inits),
            )
        return exp.checkpoints

    def _persist(self, exp: _Experiment) -> None:
        """The experiment's record (``experiment.json``), written atomically: what a
        restarted server needs to list it and resume it. No token is ever written."""
        path = os.path.join(self._exp_dir(exp), RECORD)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {
            "format": RECORD_FORMAT,
            "experiment_id": exp.id,
            "state": exp.state,
            # its share of the memory budget as estimated at create (trace groups by
            # their traces): a restarted server charges it again
            "footprint": [exp.footprint.sim, exp.footprint.rows],
            "spec": exp.spec.resolved_dict(),
            "created_unix": exp.wall0,
        }
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if exp.state in ("finished", "cancelled"):  # nothing left to resume
            shutil.rmtree(os.path.join(self._exp_dir(exp), checkpoint.CHECKPOINT_DIR), True)

    def _load_interrupted(self) -> int:
        """Experiments a previous server left running become ``interrupted`` (resumable);
        returns the highest experiment number seen, so new ids never collide. A record
        that cannot be read is skipped with a warning, never trusted."""
        highest = read_last_number(self.state_dir)
        try:
            entries = sorted(e for e in os.listdir(self.state_dir) if not e.startswith("."))
        except FileNotFoundError:
            return highest
        ended = []
        for name in entries[:MAX_SERVE_ENTRIES]:
            try:
                exp = self._read_record(name)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                print(f"warning: serve state {name!r} skipped: {e}", file=sys.stderr)
                continue
            number, exp = exp
            highest = max(highest, number)
            if exp is None:
                ended.append(name)
            elif len(self._experiments) < MAX_EXPERIMENTS:
                self._experiments[exp.id] = exp
        self._last_number = highest
        if ended:  # records an earlier server kept of ended experiments
            write_last_number(self.state_dir, highest)
            for name in ended:
                self._forget_state(name, keep_number=False)
        return highest

    def _read_record(self, name: str) -> tuple[int, _Experiment | None]:
        """(the experiment's number, the experiment if it was left running)."""
        path = os.path.join(results_dir(self.state_dir, name), RECORD)
        with open(path, "rb") as f:
            raw = f.read(MAX_RECORD_BYTES + 1)
        if len(raw) > MAX_RECORD_BYTES:
            raise ValueError(f"{path}: over {MAX_RECORD_BYTES} bytes")
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError(f"{path}: not a JSON object")
        experiment_id = record.get("experiment_id")
        if (
            record.get("format") != RECORD_FORMAT
            or not isinstance(experiment_id, str)
            or dir_name(experiment_id) != name
        ):
            raise ValueError(f"{path}: not the record of the experiment of that directory")
        tail = experiment_id.rsplit("-", 1)[-1]
        number = int(tail) if tail.isdigit() and len(tail) <= MAX_NUMBER_DIGITS else 0
        if record["state"] != "created":
            return number, None  # finished or cancelled: its results are in runs/
        spec = with_trace_root(parse_spec(record["spec"]), self.trace_dir, absolute_ok=False)
        exp = _Experiment(experiment_id, spec)
        exp.state = "interrupted"
        exp.wall0 = float(record.get("created_unix", time.time()))
        exp.footprint = recorded_footprint(record.get("footprint"), exp.footprint)
        try:
            manifest = checkpoint.read_manifest(results_dir(self.state_dir, name))
            exp.resumed_ns = int(manifest["time_ns"][VARIANT_RUN])
        except (checkpoint.CheckpointError, KeyError, TypeError, ValueError):
            exp.resumed_ns = 0
        return number, exp

    def _metrics_for(self, exp: _Experiment) -> MetricsHub | None:
        """The hub, labelling the experiment by its id: two experiments of one spec are
        two series."""
        return self.metrics.labelled(exp.id) if self.metrics is not None else None

    def guest_router(self, experiment_id: str):
        """The experiment's guests for GuestService on this server (guest_proxy.py). The
        simulation starts on the first call if no Advance has (time 0, nothing run)."""
        from .guest_proxy import GuestRouter

        exp = self._get(experiment_id)
        self._check_running(exp)  # finished or cancelled: its shards are gone
        if exp.sim is not None and exp.sim.finished:  # at its end, its baselines running
            raise failed_precondition(
                "experiment_id", experiment_id, "the experiment has reached its end"
            )
        if exp.router is None:
            sim = exp.sim
            if sim is None:
                with self._hold(exp, None):  # only to start it; a running Advance made it
                    self._check_running(exp)
                    sim = self._sim(exp)
            exp.router = GuestRouter(sim.session, sim.plan)
        return exp.router

    def _notify(self, exp: _Experiment) -> None:
        with exp.cond:
            exp.cond.notify_all()

    def _stopper(
        self, exp: _Experiment, should_stop: Callable[[], bool] | None
    ) -> Callable[[], bool]:
        def stop() -> bool:
            self._notify(exp)  # streams see the samples of the chunk just run
            return (
                exp.cancel_requested.is_set()
                or self._closing.is_set()
                or (should_stop is not None and should_stop())
            )

        return stop

    def _settle(self, exp: _Experiment):
        """After running (with the lock held): cancel, finish, or stay resumable."""
        self._notify(exp)
        if exp.cancel_requested.is_set():
            self._cancel_now(exp)
        elif exp.sim is not None and exp.sim.finished:
            self._finish(exp)
        return self._status(exp)

    def _cancel_now(self, exp: _Experiment) -> None:
        if exp.state in ("created", "interrupted"):
            exp.state = "cancelled"
            if exp.sim is not None:
                exp.ended_summary = self._summary_so_far(exp)
                self._release(exp)
            self._persist(exp)
        self._notify(exp)

    def _release(self, exp: _Experiment) -> None:
        """Let go of an ended experiment's simulation (its shards and hosts: most of the
        memory it used) and keep what clients still read: its time and samples."""
        sim = exp.sim
        if sim is None:
            return
        sim.close()
        exp.ended_ns, exp.ended_rows = sim.now_ns, sim.rows
        exp.sim = exp.router = exp.checkpoints = None

    def _finish(self, exp: _Experiment) -> None:
        sim = exp.sim
        run_stats = sim.stats()
        sim.close()
        base_rows, stats = run_baselines(
            exp.spec, self.backend, self.shards, metrics=self._metrics_for(exp)
        )
        spec = exp.spec
        exp.result = finish_run(
            spec,
            sim.plan,
            sim.rows,
            base_rows,
            {VARIANT_RUN: run_stats, **stats},
            self.backend.name,
            # its own directory: two experiments of one spec differ by what clients did
            results_dir(self.out_dir, spec.name, dir_name(exp.id)),
            exp.wall0,
        )
        exp.state = "finished"
        self._release(exp)
        self._persist(exp)
        self._notify(exp)

    def _status(self, exp: _Experiment):
        from .experiment_service import ExperimentStatus

        return ExperimentStatus(now_ns=exp.now_ns, state=exp.shown_state)

    def begin_shutdown(self) -> None:
        """Stop waiting streams and running advances (at their next chunk boundary)."""
        self._closing.set()
        with self._lock:
            experiments = list(self._experiments.values())
        for exp in experiments:
            self._notify(exp)

    def close(self) -> None:
        self.begin_shutdown()
        for exp in list(self._experiments.values()):
            with exp.lock:  # a running advance has stopped at a chunk boundary by now
                if exp.sim is not None:
                    if exp.state == "created" and not exp.sim.closed and exp.sim.now_ns > 0:
                        try:  # a restarted server resumes it from here
                            self._checkpoints(exp).save({VARIANT_RUN: exp.sim}, {})
                        except Exception as e:  # noqa: BLE001 - the last checkpoint stays
                            print(f"warning: {exp.id}: no checkpoint at stop: {e}", file=sys.stderr)
                    exp.sim.close()
        self.backend.close()
        if self.metrics is not None:
            self.metrics.close()


def _deadline(wait_s: float | None) -> float | None:
    """The call's deadline as a ``time.monotonic()`` value (None: it has none)."""
    return None if wait_s is None else time.monotonic() + wait_s


__all__ = ["ExperimentManager"]
