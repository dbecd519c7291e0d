"""The simulation loop stops when asked, also in the middle of a long idle stretch, and
resumes to exactly the results of an uninterrupted run."""

import time

from services.sim.backends.inprocess import InProcessBackend
from services.sim.result_rows import timeseries_frame
from services.sim.simulation import CHUNKS_PER_CALL, SKIP_STEP_INTERVALS, CallSize, Simulation
from services.sim.spec import load_spec_text

IDLE_THEN_BUSY = """
name: idle
seed: 5
duration: 3000s
sample_interval: 1s
hosts: [{name: h, memory: 256MiB}]
guest_groups:
  - name: g
    count: 1
    memory: 64MiB
    workload:
      kind: memhog
      start_stagger: 0s
      phases:
        - {action: idle, duration: 2990s}
        - {action: grow, target: 0.5, rate: 32MiB, duration: 2s}
"""


def _run(stops: list[int] | None) -> tuple[Simulation, list[int]]:
    spec = load_spec_text(IDLE_THEN_BUSY)
    sim = Simulation(spec, InProcessBackend())
    stopped_at = []
    asks = {"n": 0}

    def should_stop() -> bool:
        asks["n"] += 1
        return stops is not None and asks["n"] in stops

    while not sim.finished:
        if not sim.advance_to(spec.duration, should_stop):
            stopped_at.append(sim.now_ns)
    return sim, stopped_at


def test_a_long_idle_stretch_is_skipped_in_steps_that_a_stop_request_interrupts():
    sim, stopped_at = _run(stops=[3, 4])
    step_ns = SKIP_STEP_INTERVALS * 10**9
    assert stopped_at, "the loop never asked whether to stop during the idle stretch"
    assert all(0 < t < 2990 * 10**9 for t in stopped_at), stopped_at  # inside the idle stretch
    # after the first chunk (10 s) the idle stretch is skipped SKIP_STEP_INTERVALS at a time:
    # the third question comes after one step, mid-stretch, far from its end
    assert stopped_at[0] == 10 * 10**9 + step_ns, stopped_at
    reference, _ = _run(stops=None)
    a, b = timeseries_frame(sim.rows), timeseries_frame(reference.rows)
    assert a.equals(b), "an interrupted and resumed run differs from an uninterrupted one"
    assert a[a.kind == "guest_group"]["held_bytes"].iloc[-1] > 0  # the busy phase at the end ran
    sim.close()
    reference.close()


def test_with_a_deadline_a_call_runs_no_more_intervals_than_fit_before_it():
    """A client whose deadline passes during the first call: that call is one interval
    (the pace is unknown), not CHUNKS_PER_CALL; the results are those of any grouping."""
    spec = load_spec_text(IDLE_THEN_BUSY.replace("2990s", "1s").replace("3000s", "30s"))
    sim = Simulation(spec, InProcessBackend())
    asks = {"n": 0}

    def deadline_passed_after_the_first_ask() -> bool:
        asks["n"] += 1
        return asks["n"] > 1

    assert not sim.advance_to(spec.duration, deadline_passed_after_the_first_ask, 0.0)
    assert sim.now_ns == spec.sample_interval  # one interval past the deadline, not ten
    while not sim.finished:  # the rest, paced by a roomy deadline
        sim.advance_to(spec.duration, None, time.monotonic() + 600)
    reference = Simulation(spec, InProcessBackend())
    reference.advance_to(spec.duration)
    assert timeseries_frame(sim.rows).equals(timeseries_frame(reference.rows))
    sim.close()
    reference.close()


def test_call_size_fits_the_calls_to_the_time_left():
    size = CallSize()
    assert size.within(None) == CHUNKS_PER_CALL
    assert size.within(100.0) == 1  # pace unknown
    size.took(4.0, 4)  # 1 s per interval
    assert size.within(2.5) == 2
    assert size.within(0.1) == 1  # always at least one
    assert size.within(1000.0) == size.chunks  # never more than without a deadline
