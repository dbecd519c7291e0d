"""HeldBlocks (runs) against a plain list of pfns: the same blocks, in the same order,
whatever the sequence of adds, frees and cyclic slices."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.guest.core.workloads import HeldBlocks, pfns_to_runs

STEPS = st.sampled_from([1, 8, 512])


@st.composite
def batches(draw, step):
    """pfns as a workload gets them: runs of consecutive blocks, some broken."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, 400)) * step
        n = draw(st.integers(1, 12))
        out.extend(range(start, start + n * step, step))
    if draw(st.booleans()):
        out = draw(st.permutations(out))
    return np.asarray(out, np.int64)


@st.composite
def programs(draw):
    step = draw(STEPS)
    ops = []
    used: set[int] = set()  # a block is held once at most (never freed here: simpler)
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["add", "add", "take", "slice", "all", "clear"]))
        if kind == "add":
            batch = [int(p) for p in dict.fromkeys(draw(batches(step)).tolist()) if p not in used]
            used.update(batch)
            ops.append(("add", np.asarray(batch, np.int64)))
        elif kind in ("take", "slice"):
            ops.append((kind, draw(st.integers(-3, 200)), draw(st.integers(-2, 60))))
        else:
            ops.append((kind,))
    return step, ops


@settings(max_examples=300, deadline=None)
@given(programs())
def test_runs_match_a_list_of_pfns(program):
    step, ops = program
    held, ref = HeldBlocks(step), []
    for op in ops:
        if op[0] == "add":
            held.add(op[1])
            ref.extend(int(p) for p in op[1])
        elif op[0] == "take":
            n = max(0, min(op[1], len(ref)))
            want = ref[len(ref) - n :][::-1]
            del ref[len(ref) - n :]
            assert held.take_last(op[1]).tolist() == want
        elif op[0] == "slice":
            start, n = op[1], op[2]
            want = []
            if ref and n > 0:
                s = start % len(ref)
                want = [ref[(s + i) % len(ref)] for i in range(min(n, len(ref)))]
            assert held.slice_cyclic(start, n).tolist() == want
            starts, npages, blocks = held.page_runs_cyclic(start, n)
            runs = pfns_to_runs(np.asarray(want, np.int64), step)
            assert blocks == len(want)
            assert starts.tolist() == runs[0].tolist() and npages.tolist() == runs[1].tolist()
        elif op[0] == "all":
            assert held.all().tolist() == ref
        else:
            held.clear()
            ref.clear()
        assert held.count == len(ref)
    assert held.all().tolist() == ref


def test_a_memhog_region_is_a_few_runs():
    held = HeldBlocks()
    for lo in range(0, 1 << 20, 4096):  # a million pages in batches, consecutive
        held.add(np.arange(lo, lo + 4096, dtype=np.int64))
    assert held.count == 1 << 20 and held.nbytes <= 1024
    assert held.take_last(3).tolist() == [(1 << 20) - 1, (1 << 20) - 2, (1 << 20) - 3]
    assert held.slice_cyclic((1 << 20) - 5, 4).tolist() == [
        (1 << 20) - 5,
        (1 << 20) - 4,
        0,
        1,
    ]


def test_freed_blocks_got_back_continue_the_shortened_run():
    """A memhog frees its newest blocks and faults the same pfns in again: they go on
    from the run take_last shortened, in one run, for every step."""
    for step in (1, 512):
        held = HeldBlocks(step)
        held.add(np.arange(0, 100 * step, step, dtype=np.int64))
        held.add(np.arange(1000 * step, 1010 * step, step, dtype=np.int64))
        freed = held.take_last(30)  # the second run and 20 blocks of the first
        assert held.count == 80 and held.nbytes == 2 * 16 * 8
        held.add(freed[::-1][:25])  # 20 continue run one, then 5 start a new run
        ref = [*range(0, 100 * step, step), *range(1000 * step, 1005 * step, step)]
        assert held.all().tolist() == ref and held._runs == 2
        assert held.take_last(6).tolist() == ref[-6:][::-1]
        assert held._runs == 1 and held.all().tolist() == ref[:-6]
