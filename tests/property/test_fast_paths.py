"""Differential tests of issue 16's fast paths against plain reference code.

* the host's grouping of a guest's touched runs by op_seq (fast paths for one op and
  for runs logged in op order) against a dictionary grouping;
* the swap-out log turned into runs by a numba kernel against the numpy code it
  replaced (np.unique, then per-guest runs);
* the shard's kept next events (``GuestShard._wake``) and its next active step (which
  stops at the first guest that acts in it) against asking every guest and workload
  afresh, epoch after epoch, on a real shard with scripted workloads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.guest.shard import GuestShard
from services.host.apply import SMALL_GROUPING, _groups_by_seq
from services.host.core.pagestate import GK_MASK, GK_PAGES, RES_MASK, RES_SWAPPED
from services.host.core.swap import log_runs_kernel
from services.sim.plan import make_plan
from services.sim.runner import run_experiment
from services.sim.spec import load_spec, load_spec_text
from services.units import NS_PER_S
from tests.golden.golden import SPECS, expected, golden_outputs


def _reference_groups(op_seqs: np.ndarray) -> list[tuple[int, list[int]]]:
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(op_seqs.tolist()):
        groups.setdefault(seq, []).append(i)
    return sorted(groups.items())


@settings(max_examples=300, deadline=None)
@given(
    # up to SMALL_GROUPING runs are grouped in plain Python, more with numpy
    st.lists(st.integers(1, 6), max_size=2 * SMALL_GROUPING),
    st.booleans(),
)
def test_touch_groups_match_a_dictionary_grouping(seqs: list[int], ordered: bool) -> None:
    op_seqs = np.array(sorted(seqs) if ordered else seqs, dtype=np.uint64)
    got = [(seq, np.arange(len(op_seqs))[idx].tolist()) for seq, idx in _groups_by_seq(op_seqs)]
    assert got == _reference_groups(op_seqs)


def _reference_log_runs(log, n, state, gran, shift, offsets):
    idx = np.unique(log[:n])
    live = (state[idx] & RES_MASK == RES_SWAPPED) & (gran[idx >> shift] & GK_MASK == GK_PAGES)
    idx = idx[live]
    out = []
    slots = np.searchsorted(offsets, idx, side="right") - 1
    for slot in np.unique(slots):
        local = idx[slots == slot] - offsets[slot]
        breaks = np.flatnonzero(np.diff(local) != 1) + 1
        starts = local[np.concatenate(([0], breaks))]
        ends = local[np.concatenate((breaks - 1, [local.size - 1]))] + 1
        out += [(int(slot), int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)]
    return out


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_swap_log_runs_match_the_numpy_reference(data) -> None:
    shift = 3  # granules of 8 pages: small enough to mix page and huge granules
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))  # granules per guest
    offsets = np.concatenate(([0], np.cumsum(sizes) << shift)).astype(np.int64)
    total = int(offsets[-1])
    state = np.array(
        data.draw(st.lists(st.integers(0, 31), min_size=total, max_size=total)), np.uint8
    )
    gran = np.array(
        data.draw(st.lists(st.integers(0, 3), min_size=total >> shift, max_size=total >> shift)),
        np.uint8,
    )
    entries = data.draw(st.lists(st.integers(0, total - 1), max_size=3 * total))
    if data.draw(st.booleans()):  # mostly ascending, as the clock appends
        entries = sorted(entries)
    log = np.array([*entries, 0, 0], np.int64)  # room past n, as the host's log has
    n = len(entries)
    slots, starts, npages = log_runs_kernel(log, n, state, gran, shift, offsets)
    got = list(zip(slots.tolist(), starts.tolist(), npages.tolist(), strict=True))
    assert got == _reference_log_runs(log, n, state, gran, shift, offsets)


def _asked_every_time_next_event_ns(self) -> int | None:
    """GuestShard.next_event_ns as it was before answers were kept: every guest and
    workload asked at every question."""
    events = []
    for s in self.slots.values():
        if s.stopped:
            continue
        for wl in (s.workload, *s.extra_workloads):
            w = wl.next_event_ns(self.now_ns)
            if w is not None:
                events.append(w)
        g = s.guest.next_event_ns()
        if g is not None:
            events.append(g)
    return min(events) if events else None


def _asked_every_time_next_active(self, t0_ns: int, j: int, steps: int, step_ns: int) -> int:
    """GuestShard._next_active as it was before it stopped at the first guest that acts
    in the next step: the earliest event of every guest."""
    if j + 1 >= steps:
        return steps
    nxt = self.next_event_ns()
    if nxt is None:
        return steps
    return min(steps, max(j + 1, (nxt - t0_ns) // step_ns))


def _asked_every_time_idle(self, s, t0_ns: int, t1_ns: int) -> bool:
    """GuestShard._idle as it was before answers were kept."""
    if s.stopped:
        return True
    g = s.guest.next_event_ns()
    if g is not None and g < t1_ns:
        return False
    for wl in (s.workload, *s.extra_workloads):
        w = wl.next_event_ns(t0_ns)
        if w is not None and w < t1_ns:
            return False
    return not s.link.dirty


@pytest.mark.parametrize("name", ["workloads", "determinism", "edges"])
def test_kept_next_events_change_nothing(name: str, monkeypatch, tmp_path) -> None:
    """Whole runs (the golden specs: traces, will-it-scale, scripts with stops and
    overlays, kernel noise, page cache, memhog; and the edge cases below) give the same
    summary and time series as the code that asked every guest at every question. For a
    golden spec the kept run's results are the golden files (test_golden holds them to
    it), so only the asking run is made and held to those files."""
    monkeypatch.setattr(GuestShard, "next_event_ns", _asked_every_time_next_event_ns)
    monkeypatch.setattr(GuestShard, "_idle", _asked_every_time_idle)
    monkeypatch.setattr(GuestShard, "_next_active", _asked_every_time_next_active)
    if name in SPECS:
        assert golden_outputs(name, str(tmp_path / "asked")) == expected(name)
        return
    spec = load_spec_text(EDGES)
    asked = run_experiment(spec, out_dir=str(tmp_path / "asked"), transport="inprocess")
    monkeypatch.undo()
    kept = run_experiment(spec, out_dir=str(tmp_path / "kept"), transport="inprocess")
    assert kept.summary == asked.summary
    pd.testing.assert_frame_equal(kept.timeseries, asked.timeseries)


# Workloads whose next event, asked when it comes, looks further: a memhog that starts
# (staggered on epoch boundaries) with an idle phase, and one whose grow is done at once.
EDGES = """
name: edges
seed: 3
duration: 8s
epoch: 50ms
sample_interval: 1s
hosts: [{name: h, count: 1, memory: 4GiB}]
guest_groups:
  - name: idle-first
    count: 3
    memory: 256MiB
    workload:
      kind: memhog
      start_stagger: 1s
      repeat: true
      phases:
        - {action: idle, duration: 1s}
        - {action: grow, target: 0.2, rate: 256MiB, duration: 1s}
        - {action: free, target: 0.0, duration: 500ms}
  - name: done-at-once
    count: 2
    memory: 256MiB
    workload:
      kind: memhog
      start_stagger: 500ms
      phases:
        - {action: grow, target: 0.0, rate: 256MiB, duration: 1s}
        - {action: idle, duration: 2s}
        - {action: touch, rate: 64MiB, duration: 1s}
"""


@pytest.mark.parametrize("name", ["workloads", "quickstart", "edges"])
def test_kept_next_events_agree_with_asking_afresh_after_every_epoch(name: str) -> None:
    """A shard driven epoch by epoch (no host: the ops are dropped): after every epoch,
    every guest's kept next event means what asking it afresh gives (a time at or
    before now both mean "acts now")."""
    spec = load_spec_text(EDGES) if name == "edges" else load_spec(str(SPECS[name]))
    plan = make_plan(spec, "fast-paths", 1)
    shard = GuestShard(0, plan.shard_inits[0], plan.seed)
    epoch_ns, compared = spec.epoch, 0
    for k in range(int(min(spec.duration, 8 * NS_PER_S) // epoch_ns)):
        shard.run_span(k * epoch_ns, 1, epoch_ns)
        now = shard.now_ns
        for s in shard.slots.values():
            kept = shard._next_event(s, now)
            saved = (s.wake_ns, s.stop_ns, s.wake_known)
            s.wake_known = False
            fresh = shard._next_event(s, now)
            s.wake_ns, s.stop_ns, s.wake_known = saved
            assert (None if kept is None else max(kept, now)) == (
                None if fresh is None else max(fresh, now)
            ), (name, k, s.init.guest_id)
            compared += 1
        # the next step in which a guest acts, for steps of 1 and of 4 epochs just run
        for step_ns in (epoch_ns, 4 * epoch_ns):
            for s in shard.slots.values():  # as asked afresh, and then as kept
                s.wake_known = False
            fresh_step = _asked_every_time_next_active(shard, now - step_ns, 0, 20, step_ns)
            for s in shard.slots.values():
                s.wake_known = False
            assert shard._next_active(now - step_ns, 0, 20, step_ns) == fresh_step, (name, k)
    assert compared > 0
