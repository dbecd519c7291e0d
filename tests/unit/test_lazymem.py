"""services.lazymem: zeroed arrays take memory only where written (read from
/proc/self/pagemap)."""

from __future__ import annotations

import mmap
import pickle

import numpy as np
import pytest

from services.lazymem import lazy_copy, release_pages, resident_pages, zeroed

PAGE = mmap.PAGESIZE


def rss_of(a: np.ndarray) -> int:
    """Bytes of a's pages that are backed by memory of their own: present and mapped
    exclusively (/proc/self/pagemap bits 63 and 56). A page only read maps the shared
    zero page, which is not exclusive; no root needed (the PFN field is not read)."""
    addr = a.__array_interface__["data"][0]
    lo, hi = addr // PAGE, -(-(addr + a.nbytes) // PAGE)
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        f.seek(lo * 8)
        e = np.frombuffer(f.read((hi - lo) * 8), dtype=np.uint64)
    mine = (e >> np.uint64(63)) & (e >> np.uint64(56)) & np.uint64(1)
    return int(mine.sum()) * PAGE


def test_zeroed_takes_a_page_when_written_not_when_read():
    a = zeroed((1 << 20, 2), np.int32)  # 8 MiB: numpy's own zeros would be huge-page advised
    assert a.shape == (1 << 20, 2) and a.dtype == np.int32 and a.flags.c_contiguous
    assert int(a.sum()) == 0  # every page read
    assert rss_of(a) == 0
    a[12345, 1] = 7
    a[1 << 19, 0] = -1
    assert rss_of(a) == 2 * PAGE
    assert a[12345, 1] == 7 and a[1 << 19, 0] == -1 and int(np.count_nonzero(a)) == 2


def test_small_arrays_are_plain_zeros_and_large_ones_own_mappings():
    small, large = zeroed(100, np.uint8), zeroed(1 << 16, np.uint8)
    assert small.shape == (100,) and not small.any() and small.base is None
    owner = large
    while isinstance(owner, np.ndarray):
        owner = owner.base
    owner = owner.obj if isinstance(owner, memoryview) else owner  # numpy keeps a view of it
    assert isinstance(owner, mmap.mmap) and len(owner) == 1 << 16


@pytest.mark.parametrize("extra", [0, 5000])
def test_lazy_copy_writes_only_the_pages_that_hold_data(extra):
    src = np.zeros(1 << 22, np.uint8)
    src[[3, PAGE * 100 + 9, len(src) - 1]] = [1, 2, 3]
    out = lazy_copy(src, len(src) + extra)
    assert len(out) == len(src) + extra
    assert np.array_equal(out[: len(src)], src) and not out[len(src) :].any()
    assert rss_of(out) == 3 * PAGE


def test_lazy_copy_of_a_2d_array_with_a_partial_last_page():
    rng = np.random.default_rng(3)
    src = np.zeros((70_001, 2), np.int32)  # not a whole number of pages
    idx = rng.choice(len(src), 50, replace=False)
    src[idx] = rng.integers(1, 1 << 30, (50, 2), dtype=np.int32)
    src[-1] = [5, 6]
    out = lazy_copy(src)
    assert np.array_equal(out, src) and out.dtype == src.dtype


def test_lazy_copy_refuses_to_shrink():
    with pytest.raises(ValueError, match="length 3 is shorter"):
        lazy_copy(np.zeros(10, np.uint8), 3)


def test_a_pickled_allocator_comes_back_lazily_resident():
    from services.guest.core.buddy import BuddyAllocator
    from services.guest.core.config import GuestConfig

    a = BuddyAllocator(GuestConfig(nr_pages=1 << 20))
    a.alloc(0, 1, 1000)
    before = rss_of(a.lk)
    assert 0 < before < a.lk.nbytes // 8  # only the rows of the split blocks
    b = pickle.loads(pickle.dumps(a))
    assert np.array_equal(b.lk, a.lk) and np.array_equal(b.pg, a.pg)
    assert rss_of(b.lk) <= before
    assert b.free_list(0, 10, 1) == a.free_list(0, 10, 1) != []
    assert b.pcp_lists(0) == a.pcp_lists(0)


def test_host_page_states_grow_lazily_and_keep_every_guest_s_state():
    from services.host.core.config import HostConfig
    from services.host.core.host import Host

    host = Host(0, HostConfig(memory_bytes=64 << 30, thp=False))
    pages = 1 << 18  # 1 GiB guests
    host.add_guest(1, pages)
    host.apply_touch(1, np.array([1000, 200_000]), np.array([3, 5]))
    before = host.residency(1).copy()
    for gid in (2, 3, 4, 5):  # grows its buffer (doubling) for guests 2, 3 and 5
        host.add_guest(gid, pages)
    host.apply_touch(4, np.array([7]), np.array([1]))
    assert np.array_equal(host.residency(1), before) and before.any()
    assert int((host.residency(4) != host.residency(2)).sum()) == 1
    assert len(host._state) == 5 * pages
    assert rss_of(host._state) <= 4 * PAGE  # only the pages that hold a touched state
    back = pickle.loads(pickle.dumps(host))
    assert np.array_equal(back.residency(1), before)
    assert rss_of(back._state) <= 4 * PAGE


def test_out_of_mappings_falls_back_to_plain_zeros(monkeypatch):
    """When the process has no mapping left (vm.max_map_count: exhausting it for real
    would starve the test process), the array is still a correct zero array."""
    import services.lazymem as lm

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(lm.mmap, "mmap", refuse)
    a = lm.zeroed((1 << 16, 2), np.int32)
    assert a.shape == (1 << 16, 2) and a.dtype == np.int32 and not a.any()
    a[5, 1] = 3
    assert int(a.sum()) == 3


@pytest.mark.parametrize("mapped", [True, False])
def test_released_pages_read_as_zeros_and_cost_nothing(mapped):
    """A mapped array gives its whole pages back (pagemap shows them gone); a partial
    last page, and a plain array, are written with zeros. Only the named pages change."""
    shape = (50_001, 2)  # 400 KB: not a whole number of pages
    a = zeroed(shape, np.int32) if mapped else np.zeros(shape, np.int32)
    rows_per_page = PAGE // 8
    a[:] = 7
    pages = -(-a.nbytes // PAGE)
    assert a.nbytes % PAGE and (rss_of(a) == pages * PAGE or not mapped)
    done = release_pages(a, np.array([2, 10, pages - 1]), np.array([5, 11, pages + 3]))
    assert done == 4 * PAGE + (a.nbytes - (pages - 1) * PAGE)
    resident = resident_pages(a)  # before reading: a page read maps the zero page
    flat_pages = [a[p * rows_per_page : (p + 1) * rows_per_page] for p in range(pages)]
    zero = {p for p in range(pages) if not flat_pages[p].any()}
    assert zero == {2, 3, 4, 10, pages - 1}
    assert all((flat_pages[p] == 7).all() for p in set(range(pages)) - zero)
    if mapped:  # the partial last page is written, not given back (it is not all a's)
        assert rss_of(a) == (pages - 4) * PAGE
        assert resident is not None and set(np.flatnonzero(resident == 0)) == {2, 3, 4, 10}
    else:
        assert resident is None


def test_releasing_pages_never_written_leaves_them_unwritten():
    """Where pages cannot be given back they are zeroed only if they hold data: a
    release must not make never-written memory resident."""
    a = zeroed(1 << 21, np.uint8)[: (1 << 21) - 100]  # a view: its last page is partial
    a[5 * PAGE] = 1
    b = np.zeros(1 << 21, np.uint8)
    b[5 * PAGE] = 1
    before = rss_of(b)
    for x in (a, b):
        release_pages(x, np.array([0]), np.array([1 << 21]))
        assert not x.any()
    assert rss_of(a) == 0 and rss_of(b) <= before


def test_a_swapped_out_page_of_links_is_never_given_back(monkeypatch):
    """mincore says "not resident" of a page swapped out as of one never written: the
    sweep leaves such pages alone, so links swapped out survive it."""
    from services.guest.core import buddy
    from services.guest.core.config import GuestConfig

    a = buddy.BuddyAllocator(GuestConfig(nr_pages=1 << 18))
    a.link_release_at = 1 << 62
    held = a.alloc(0, 1, 150_000)
    a.free(held[::3], 0)
    lk, lists, pcp = a.lk.copy(), a.free_list(0, 0, 1), a.pcp_lists(0)
    assert lists and any(pcp)
    monkeypatch.setattr(
        buddy, "resident_pages", lambda arr: np.zeros(-(-arr.nbytes // PAGE), np.uint8)
    )
    a.release_unlisted_links()
    assert np.array_equal(a.lk, lk)
    monkeypatch.undo()
    a.release_unlisted_links()  # with mincore: the dead pages go
    assert not np.array_equal(a.lk, lk)
    assert a.free_list(0, 0, 1) == lists and a.pcp_lists(0) == pcp


def test_release_pages_refuses_backward_ranges():
    a = zeroed(1 << 16, np.uint8)
    with pytest.raises(ValueError, match="ascending"):
        release_pages(a, np.array([3]), np.array([2]))


def test_a_guest_holding_most_of_its_memory_keeps_few_pages_of_links():
    """The allocator gives back the pages of its links no listed page uses once its
    free memory has fallen far enough; what it does afterwards is what it did before
    (the differential test holds the sweep to the reference allocator too)."""
    from services.guest.core.buddy import BuddyAllocator
    from services.guest.core.config import GuestConfig

    cfg = GuestConfig(nr_pages=1 << 20)
    kept, swept = BuddyAllocator(cfg), BuddyAllocator(cfg)
    kept.link_release_at = 1 << 62  # never
    held = [[a.alloc(0, 1, 4096) for _ in range(200)] for a in (kept, swept)]
    assert np.array_equal(np.concatenate(held[0]), np.concatenate(held[1]))
    assert swept.link_releases >= 5 and kept.link_releases == 0
    assert rss_of(kept.lk) > 6 << 20  # the links of ~800k pages allocated
    assert rss_of(swept.lk) < 1 << 20
    for a, blocks in zip((kept, swept), held, strict=True):
        for b in blocks[::2]:
            a.free(b, 0)
    assert kept.free_list(0, 0, 1) == swept.free_list(0, 0, 1) != []
    assert kept.pcp_lists(0) == swept.pcp_lists(0)
    assert np.array_equal(kept.alloc(0, 1, 50_000), swept.alloc(0, 1, 50_000))
    assert np.array_equal(kept.pg, swept.pg)
