"""The blocks GuestService clients allocated in one guest, per order, newest on top.

A client may free only blocks it allocated itself: by pfn, or by count (the
``count`` blocks of an order it allocated most recently, newest first). Both must
cost what they free, not what the client holds: a client may hold every page of a
guest (a 1 TiB guest has 2**28 pages), and one ``ApplyOps`` batch may carry 4,096
frees.

Per order, a stack of pfns in the order they were allocated (a growable int64
array; the newest block on top). A block freed by pfn leaves a hole (``DEAD``)
where it was; holes on top are dropped, and the stack is compacted when holes
outnumber the blocks held, so it stays at most about twice what is held. One
array indexed by pfn says where a held block sits (``(index << ORDER_BITS | order)
+ 1``; 0 for a pfn no client block starts at): it is lazily resident
(:func:`services.lazymem.zeroed`), so only the pages of it near held blocks take
memory, and it is rebuilt from the stacks when a checkpoint is restored. No Python
object per block.

A batch is checked before anything is applied (``ApplyOps`` is all or nothing):
:meth:`ClientBlocks.claim_newest` and :meth:`ClientBlocks.claim_pfns` mark the
blocks an op would free (their stack entries become negative: ``~pfn``) so later ops
of the batch see them gone, :meth:`ClientBlocks.release` forgets them once they are freed, and
:meth:`ClientBlocks.end_batch` puts back every claimed block not released (all of
them when the batch was refused).
"""

from __future__ import annotations

import numpy as np

from services.lazymem import zeroed

ORDER_BITS = 5  # orders 0..31 in a position code (MAX_BUDDY_ORDER is 18)
DEAD = np.iinfo(np.int64).min  # a hole: a block freed by pfn, below the top of its stack
MIN_STACK = 16  # entries a stack starts with


class ClientBlocks:
    """The blocks clients hold in one guest of ``nr_pages`` pages (orders 0..max_order)."""

    def __init__(self, nr_pages: int, max_order: int) -> None:
        if max_order >= 1 << ORDER_BITS:
            raise ValueError(f"max_order={max_order}: at most {(1 << ORDER_BITS) - 1}")
        self.nr_pages = nr_pages
        self._stacks = [np.zeros(0, np.int64) for _ in range(max_order + 1)]
        self._top = [0] * (max_order + 1)  # entries in use, holes included
        self._held = [0] * (max_order + 1)  # blocks held (entries that are neither)
        self._where: np.ndarray | None = None  # by pfn: position code, 0 = not held
        self._claims: list[tuple[int, np.ndarray, np.ndarray]] = []  # (order, index, pfn)
        self._claimed: dict[int, int] = {}  # by order: blocks claimed in this batch
        self._cursor: dict[int, int] = {}  # by order: where this batch's count frees go on

    # -- checkpoints: the index by pfn is rebuilt, not saved ----------------------
    def __getstate__(self) -> dict:
        if self._claims:
            raise RuntimeError("a batch's claims are pending: end the batch first")
        state = dict(self.__dict__)
        state["_where"] = None
        state["_stacks"] = [
            st[:top].copy() for st, top in zip(self._stacks, self._top, strict=True)
        ]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._where = None
        for order in range(len(self._stacks)):
            self._index(order, 0)

    @classmethod
    def from_pfn_orders(cls, blocks: dict[int, int], nr_pages: int, max_order: int) -> ClientBlocks:
        """From a dict pfn -> order in the order the blocks were allocated (how a shard
        kept them before: its checkpoints)."""
        out = cls(nr_pages, max_order)
        pfns = np.fromiter(blocks.keys(), np.int64, len(blocks))
        orders = np.fromiter(blocks.values(), np.int64, len(blocks))
        for order in range(max_order + 1):
            out.add(order, pfns[orders == order])
        return out

    # -- reading --------------------------------------------------------------
    def count(self, order: int) -> int:
        """Blocks of ``order`` held (claimed ones included)."""
        return self._held[order]

    def claimed(self, order: int) -> int:
        """Blocks of ``order`` claimed by the batch's earlier ops."""
        return self._claimed.get(order, 0)

    def held_pages(self) -> int:
        return sum(n << order for order, n in enumerate(self._held))

    def blocks(self, order: int) -> np.ndarray:
        """The held blocks of ``order``, oldest first (claimed ones included)."""
        st = self._stacks[order][: self._top[order]]
        st = np.where(st < 0, ~st, st)[st != DEAD]
        return st

    def by_order(self) -> dict[int, list[int]]:
        """Every order's held blocks, oldest first (orders holding none left out): a
        plain view for tests and debugging."""
        return {o: self.blocks(o).tolist() for o in range(len(self._stacks)) if self._held[o]}

    @property
    def nbytes(self) -> int:
        """Memory of the stacks (the index by pfn is resident only near held blocks)."""
        return sum(st.nbytes for st in self._stacks)

    def held_orders(self, pfns: np.ndarray) -> np.ndarray:
        """The order each pfn is held at, -1 where it is not (beyond the guest too),
        and -2 where an earlier op of the batch claimed it."""
        pfns = np.asarray(pfns, np.int64)
        out = np.full(len(pfns), -1, np.int64)
        if self._where is None or len(pfns) == 0:
            return out
        inside = np.flatnonzero((pfns >= 0) & (pfns < self.nr_pages))
        code = self._where[pfns[inside]]
        mask = code > 0
        inside, code = inside[mask], code[mask] - 1
        order = code & ((1 << ORDER_BITS) - 1)
        index = code >> ORDER_BITS
        entry = np.empty(len(inside), np.int64)
        for o in np.unique(order).tolist():
            at = order == o
            entry[at] = self._stacks[o][index[at]]
        out[inside] = np.where(entry < 0, -2, order)
        return out

    # -- allocating and freeing -----------------------------------------------
    def add(self, order: int, pfns: np.ndarray) -> None:
        """Blocks of ``order`` the client got, in the order it got them (the last is newest)."""
        pfns = np.asarray(pfns, np.int64)
        n = len(pfns)
        if n == 0:
            return
        top = self._top[order]
        st = self._stacks[order]
        if top + n > len(st):
            grown = np.zeros(max(MIN_STACK, top + n, 2 * len(st)), np.int64)
            grown[:top] = st[:top]
            st = self._stacks[order] = grown
        st[top : top + n] = pfns
        self._top[order] = top + n
        self._held[order] += n
        self._index(order, top)

    def claim_newest(self, order: int, count: int) -> np.ndarray | None:
        """Claim the ``count`` newest blocks of ``order`` not claimed yet in this batch,
        newest first; None (nothing claimed) if there are fewer."""
        if count > self._held[order] - self._claimed.get(order, 0):
            return None
        st = self._stacks[order]
        end = self._cursor.get(order, self._top[order])  # above it: all claimed or holes
        found: list[np.ndarray] = []
        want = count
        window = count + MIN_STACK
        while want:  # holes and claimed entries are skipped a window at a time
            lo = max(0, end - window)
            live = np.flatnonzero(st[lo:end] >= 0)[::-1][:want] + lo
            found.append(live)
            want -= len(live)
            if want and lo == 0:  # cannot be: the count says they are there
                raise AssertionError(f"order {order}: {want} held blocks not in the stack")
            end = int(live[-1]) if len(live) and not want else lo
            window *= 2
        self._cursor[order] = end
        return self._mark(order, np.concatenate(found))

    def claim_pfns(self, order: int, pfns: np.ndarray) -> None:
        """Claim blocks by pfn (each must be held at ``order`` and not claimed yet: the
        caller checks with :meth:`held_orders`)."""
        pfns = np.asarray(pfns, np.int64)
        if len(pfns):
            assert self._where is not None
            self._mark(order, (self._where[pfns] - 1) >> ORDER_BITS)

    def release(self, order: int, pfns: np.ndarray) -> None:
        """Forget claimed blocks of ``order``: they were freed."""
        pfns = np.asarray(pfns, np.int64)
        if len(pfns):
            assert self._where is not None
            index = (self._where[pfns] - 1) >> ORDER_BITS
            self._stacks[order][index] = DEAD
            self._where[pfns] = 0
            self._held[order] -= len(pfns)

    def end_batch(self) -> None:
        """The batch is over, applied or refused: the blocks it released are gone, every
        other block it claimed is held as before (all of them when it was refused)."""
        for order, index, pfns in reversed(self._claims):
            st = self._stacks[order]
            kept = st[index] != DEAD
            st[index[kept]] = pfns[kept]
        orders = set(self._claimed)
        self._claims.clear()
        self._claimed.clear()
        self._cursor.clear()
        for order in orders:
            self._trim(order)

    @property
    def claiming(self) -> bool:
        """Whether an earlier op of the batch claimed blocks."""
        return bool(self._claims)

    # -- inside ----------------------------------------------------------------
    def _mark(self, order: int, index: np.ndarray) -> np.ndarray:
        st = self._stacks[order]
        pfns = st[index].copy()
        st[index] = ~pfns
        self._claims.append((order, index, pfns))
        self._claimed[order] = self._claimed.get(order, 0) + len(index)
        return pfns

    def _index(self, order: int, first: int) -> None:
        """Record where the held blocks of stack entries first.. sit."""
        st = self._stacks[order][first : self._top[order]]
        live = np.flatnonzero(st >= 0)
        if len(live) == 0:
            return
        if self._where is None:
            self._where = zeroed(self.nr_pages, np.int64)
        self._where[st[live]] = ((live + first) << ORDER_BITS | order) + 1

    def _trim(self, order: int) -> None:
        """Drop the holes on top; compact the stack when holes outnumber held blocks."""
        st = self._stacks[order]
        top = self._top[order]
        window = MIN_STACK
        while top and st[top - 1] == DEAD:  # a window at a time: what is dropped pays
            lo = max(0, top - window)
            live = np.flatnonzero(st[lo:top] != DEAD)
            top = lo + int(live[-1]) + 1 if len(live) else lo
            window *= 2
        self._top[order] = top
        held = self._held[order]
        if top - held > max(held, MIN_STACK):
            kept = st[:top][st[:top] != DEAD]
            st[: len(kept)] = kept
            self._top[order] = len(kept)
            self._index(order, 0)
