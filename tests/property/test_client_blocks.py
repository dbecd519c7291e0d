"""ClientBlocks (stacks per order, an index by pfn) against the dict it replaced: the
same blocks held, and every batch of frees claims the same blocks in the same order,
whatever mix of allocations, frees by pfn and by count, refused batches and
checkpoints comes before."""

from __future__ import annotations

import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.guest.client_blocks import ClientBlocks

NR_PAGES = 1 << 12
MAX_ORDER = 3


class Model:
    """The shard's old record: a dict pfn -> order in allocation order; a free by count
    takes the newest blocks of its order not freed earlier in the batch, newest first."""

    def __init__(self) -> None:
        self.blocks: dict[int, int] = {}

    def add(self, order: int, pfns: list[int]) -> None:
        for p in pfns:
            self.blocks[p] = order

    def newest(self, order: int, count: int, claimed: set[int]) -> list[int] | None:
        mine = [p for p, o in self.blocks.items() if o == order and p not in claimed]
        return None if len(mine) < count else mine[len(mine) - count :][::-1]

    def by_order(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for p, o in self.blocks.items():
            out.setdefault(o, []).append(p)
        return out


@st.composite
def programs(draw):
    """Batches of ops: ("alloc", order, n) takes n unused blocks, ("count", order, n),
    ("pfns", order, picks) frees blocks picked among those held (or not), and a batch
    either applies or is refused at its end."""
    steps = []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["alloc", "alloc", "batch", "checkpoint"]))
        if kind == "alloc":
            steps.append(("alloc", draw(st.integers(0, MAX_ORDER)), draw(st.integers(1, 40))))
        elif kind == "checkpoint":
            steps.append(("checkpoint",))
        else:
            ops = []
            for _ in range(draw(st.integers(1, 5))):
                order = draw(st.integers(0, MAX_ORDER))
                if draw(st.booleans()):
                    ops.append(("count", order, draw(st.integers(1, 30))))
                else:
                    ops.append(("pfns", order, draw(st.lists(st.integers(0, 10**6), max_size=6))))
            steps.append(("batch", ops, draw(st.booleans())))
    return steps


@settings(max_examples=300, deadline=None)
@given(programs(), st.integers(0, 2**32))
def test_the_same_blocks_are_freed_in_the_same_order(steps, seed):
    blocks, model = ClientBlocks(NR_PAGES, MAX_ORDER), Model()
    rng = np.random.default_rng(seed)  # which blocks an allocation gets
    free_pfns = {
        o: rng.permutation(np.arange(0, NR_PAGES, 1 << o)).tolist() for o in range(MAX_ORDER + 1)
    }
    used: set[int] = set()
    for step in steps:
        if step[0] == "alloc":
            _, order, n = step
            got = [p for p in free_pfns[order] if p not in used][:n]
            used.update(got)
            blocks.add(order, np.array(got, np.int64))
            model.add(order, got)
        elif step[0] == "checkpoint":
            blocks = pickle.loads(pickle.dumps(blocks))
        else:
            for p in run_batch(blocks, model, *step[1:]):
                used.discard(p)
        assert blocks.by_order() == model.by_order()
        for o in range(MAX_ORDER + 1):
            assert blocks.count(o) == len(model.by_order().get(o, []))
        assert blocks.held_pages() == sum(1 << o for o in model.blocks.values())


def run_batch(blocks: ClientBlocks, model: Model, ops: list, apply: bool) -> list[int]:
    """Claim each op's blocks in both (the same ones, or both refuse it: the batch ends
    there), release them if ``apply``, and end the batch; returns the pfns freed."""
    claimed: set[int] = set()
    frees = []
    for kind, order, arg in ops:
        if kind == "count":
            want = model.newest(order, arg, claimed)
            got = blocks.claim_newest(order, arg)
            assert (got is None) == (want is None)
            if got is None:
                break
            assert got.tolist() == want
        else:  # pfns held at any order, never held or beyond the guest, maybe twice
            held = list(model.blocks)
            pfns = [held[i % len(held)] if held and i % 3 else i for i in arg]
            orders = blocks.held_orders(np.array(pfns, np.int64)).tolist()
            assert orders == [-2 if p in claimed else model.blocks.get(p, -1) for p in pfns]
            if any(o != order for o in orders) or len(set(pfns)) < len(pfns):
                break
            blocks.claim_pfns(order, np.array(pfns, np.int64))
            want = pfns
        claimed.update(want)
        frees.append((order, want))
    freed = []
    if apply:
        for order, pfns in frees:
            blocks.release(order, np.array(pfns, np.int64))
            for p in pfns:
                del model.blocks[p]
            freed += pfns
    blocks.end_batch()
    return freed


def test_holes_are_dropped_and_the_stack_stays_compact():
    """Frees by pfn leave holes; the stack is compacted before they outnumber the blocks
    held, and a free by count skips them (its result does not change)."""
    blocks = ClientBlocks(1 << 16, 0)
    blocks.add(0, np.arange(1 << 16))
    blocks.claim_pfns(0, np.arange(0, 1 << 16, 2))  # every other block
    blocks.release(0, np.arange(0, 1 << 16, 2))
    blocks.end_batch()
    assert blocks.count(0) == 1 << 15
    assert blocks.claim_newest(0, 3).tolist() == [(1 << 16) - 1, (1 << 16) - 3, (1 << 16) - 5]
    blocks.end_batch()
    blocks.claim_pfns(0, np.arange(1, 1 << 15, 2))
    blocks.release(0, np.arange(1, 1 << 15, 2))
    blocks.end_batch()
    assert blocks._top[0] <= 2 * blocks.count(0)  # compacted
    assert blocks.blocks(0).tolist() == list(range((1 << 15) + 1, 1 << 16, 2))


def test_a_checkpoint_from_before_keeps_the_order_of_its_blocks():
    """A shard checkpointed when clients' blocks were a dict pfn -> order (allocation
    order) frees the same blocks by count once restored."""
    old = {40: 0, 8: 3, 41: 0, 16: 3, 7: 0}
    blocks = ClientBlocks.from_pfn_orders(old, NR_PAGES, MAX_ORDER)
    assert blocks.by_order() == {0: [40, 41, 7], 3: [8, 16]}
    assert blocks.claim_newest(0, 2).tolist() == [7, 41]
