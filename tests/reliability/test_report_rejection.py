"""A host rejecting reports (spec faults.reject_reports, §4.7): the guest puts the batch
back unreported, the pass stops, reporting resumes on the next qualifying free.

This changes results by design, so it is compared against the reference allocator (the
same plan run with the pure-Python allocator), across shard counts, and against exact
accounting: every page the host counts as reported is one a guest reported and got an
ok for; nothing a failed call carried reached the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sim.backends.inprocess import InProcessSession
from services.sim.plan import make_plan
from services.sim.runner import run_experiment
from services.sim.spec import load_spec_text
from tests.guest_helpers import check_invariants

SPEC = (Path(__file__).resolve().parent.parent / "golden" / "specs" / "determinism.yaml").read_text(
    encoding="utf-8"
)
REJECTING = SPEC + "\nfaults: {reject_reports: 0.3}\n"


def run_intervals(session: InProcessSession, plan, spec, intervals: int):
    """Drive a session one sample interval at a time; yield (groups, hosts) after each."""
    epochs = spec.sample_interval // spec.epoch
    pressure, last = False, session.host_samples()
    for i in range(intervals):
        results = session.run_chunks(
            i * epochs, [(i * spec.sample_interval, epochs)], pressure, last
        )
        pressure, last = results.next_pressure, results.hosts[-1]
        yield results.groups[-1], results.hosts[-1]


def test_rejection_matches_the_reference_allocator_and_accounts_exactly():
    spec = load_spec_text(REJECTING)
    plan = make_plan(spec, "reject", 2)
    fast, ref = InProcessSession(plan, fast=True), InProcessSession(plan, fast=False)
    intervals = spec.duration // spec.sample_interval
    for (g_fast, h_fast), (g_ref, h_ref) in zip(
        run_intervals(fast, plan, spec, intervals),
        run_intervals(ref, plan, spec, intervals),
        strict=True,
    ):
        assert g_fast == g_ref and h_fast == h_ref
        guest_reported = sum(g["reported_pages_total"] for g in g_fast.values())
        host_reported = sum(h["reported_pages"] for h in h_fast.values())
        assert guest_reported == host_reported  # only ok calls reached the host
    errors = sum(g["report_errors_total"] for g in g_fast.values())
    calls = sum(g["report_calls_total"] for g in g_fast.values())
    assert 0 < errors < calls
    rejected = sum(s.link.rejected for sh in fast.driver.shards for s in sh.slots.values())
    assert rejected == errors  # the host refused nothing itself
    for session in (fast, ref):
        for shard in session.driver.shards:
            for slot in shard.slots.values():
                check_invariants(slot.guest.allocator)
                # blocks a failed call carried went back unreported: the guest's Reported
                # pages are exactly what it reported and got an ok for, less what it
                # allocated since (never more than it reported)
                assert slot.guest.allocator.reported_pages() <= slot.guest.worker.reported_pages


def test_rejection_is_the_same_whatever_the_shards_and_changes_results(tmp_path):
    spec = load_spec_text(REJECTING)
    one = run_experiment(spec, out_dir=str(tmp_path / "1"), transport="inprocess", shards=1)
    three = run_experiment(spec, out_dir=str(tmp_path / "3"), transport="inprocess", shards=3)
    assert one.summary == three.summary
    assert one.timeseries.equals(three.timeseries)
    clean = run_experiment(load_spec_text(SPEC), out_dir=str(tmp_path / "c"), transport="inprocess")
    assert one.summary["run_id"] != clean.summary["run_id"]
    groups = one.guest_groups()
    assert groups["report_errors_total"].max() > 0
    hog = lambda r: r.summary["guest_groups"]["hog"]  # noqa: E731
    assert hog(one) != hog(clean)


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_a_fraction_out_of_range_is_refused(fraction):
    from services.sim.spec import SpecError

    with pytest.raises(SpecError, match=r"faults\.reject_reports"):
        load_spec_text(SPEC + f"\nfaults: {{reject_reports: {fraction}}}\n")
