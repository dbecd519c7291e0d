"""Results do not depend on how sample intervals are grouped into session calls.

``Simulation`` sizes its run_chunks calls by the wall clock (``CallSize``: more
intervals per call while calls are quick). That is only allowed because a call's
intervals are the same intervals whatever the grouping: every golden spec run with
one interval per call, and with seven, gives exactly the frozen results (which were
made ten at a time), idle stretches skipped between calls included.
"""

from __future__ import annotations

import pytest

from services.sim import simulation
from services.sim.backends.inprocess import InProcessBackend
from services.sim.spec import load_spec
from tests.golden.golden import SPECS, expected, golden_outputs


@pytest.mark.parametrize("name", ["determinism", "pressure", "quickstart"])
@pytest.mark.parametrize("per_call", [1, 7])
def test_golden_results_whatever_the_intervals_per_call(name, per_call, tmp_path, monkeypatch):
    monkeypatch.setattr(simulation, "CHUNKS_PER_CALL", per_call)
    monkeypatch.setattr(simulation, "MAX_CHUNKS_PER_CALL", per_call)
    summary, digest = golden_outputs(name, str(tmp_path))
    want_summary, want_digest = expected(name)
    assert digest == want_digest
    assert summary == want_summary


def test_quick_calls_grow():
    """The quickstart's 120 intervals, quick in process, take fewer calls than the
    12 of ten intervals each, and none covers more than MAX_CHUNKS_PER_CALL."""
    spec = load_spec(str(SPECS["quickstart"]))
    sim = simulation.Simulation(spec, InProcessBackend())
    sizes: list[int] = []
    run_chunks = sim.session.run_chunks

    def counted(first_epoch, chunks, pressure, last_hosts):
        sizes.append(len(chunks))
        return run_chunks(first_epoch, chunks, pressure, last_hosts)

    sim.session.run_chunks = counted
    try:
        sim.advance_to(spec.duration)
    finally:
        sim.close()
    assert sum(sizes) == 120
    assert len(sizes) < 12
    assert max(sizes) <= simulation.MAX_CHUNKS_PER_CALL
