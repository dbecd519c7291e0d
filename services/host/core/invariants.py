"""Host invariants, recomputed from the page and granule bytes (tests and debug mode).

Checked: per guest, unbacked + backed + lazy + swapped == nr_pages and every
running total equals a recount; per granule, `gused` matches; the pool equals
resident bytes (plus the zswap pool when it counts against host memory) and
stays under capacity - reserve; swap used <= capacity; the zswap pool <= its
limit; the reported marks (a page or granule carries one only while unbacked or
lazily freed, and every lazily freed one carries it); no counter is negative.
Each failure raises AssertionError naming the invariant.
"""

from __future__ import annotations

import numpy as np

from .pagestate import (
    G_ZSWAP,
    GK_EMPTY,
    GK_HUGE,
    GK_HUGE_LAZY,
    GK_MASK,
    GK_PAGES,
    GR_REPORTED,
    H_LAZY_PAGES,
    H_LOG_N,
    H_POOL_BYTES,
    H_SWAP_USED_PAGES,
    H_ZSWAP_BYTES,
    P_ZSWAP_CBYTES,
    P_ZSWAP_COUNTS,
    PAGE_SIZE,
    PG_REPORTED,
    PG_ZSWAP,
    RES_BACKED,
    RES_LAZY,
    RES_MASK,
    RES_SWAPPED,
    RES_UNBACKED,
)


def _fail(what: str) -> None:
    raise AssertionError(f"host invariant broken: {what}")


def _recount_guest(host, rec) -> np.ndarray:
    """[unbacked, backed, lazy, swapped, zswap] of one guest from its bytes; checks gused."""
    shift, gpages = host._shift, host._gran_pages
    lo, hi = int(host._offsets[rec.slot]), int(host._offsets[rec.slot + 1])
    kinds = host._gran[lo >> shift : hi >> shift] & GK_MASK
    gused = host._gused[lo >> shift : hi >> shift].astype(np.int64)
    pages = host._state[lo:hi].reshape(-1, gpages)[kinds == GK_PAGES]
    res = pages & RES_MASK
    counts = np.zeros(5, np.int64)
    counts[RES_UNBACKED] = np.count_nonzero(kinds == GK_EMPTY) * gpages
    counts[RES_BACKED] = np.count_nonzero(kinds == GK_HUGE) * gpages
    counts[RES_LAZY] = np.count_nonzero(kinds == GK_HUGE_LAZY) * gpages
    counts[: RES_SWAPPED + 1] += np.bincount(res.ravel(), minlength=4)
    counts[4] = np.count_nonzero((res == RES_SWAPPED) & (pages & PG_ZSWAP != 0))
    used = np.where(kinds == GK_EMPTY, 0, gpages)
    used[kinds == GK_PAGES] = np.count_nonzero(res != RES_UNBACKED, axis=1)
    if not np.array_equal(used, gused):
        _fail(f"guest {rec.guest_id}: gused differs from the pages not unbacked")
    if host.config.hugetlb and np.any((kinds == GK_PAGES) | (kinds == GK_HUGE_LAZY)):
        _fail(f"guest {rec.guest_id}: hugetlbfs granule split or lazily freed")
    if rec.stopped and counts[RES_UNBACKED] != rec.nr_pages:
        _fail(f"guest {rec.guest_id}: stopped but still holds memory")
    _check_reported_marks(rec, host._gran[lo >> shift : hi >> shift], pages)
    return counts


def _check_reported_marks(rec, gran: np.ndarray, pages: np.ndarray) -> None:
    """A report marks only what the host held, and a touch clears the mark: so a
    marked page is unbacked or lazy, and a lazy page (only a report makes one) is
    marked. `pages` are the page bytes of the guest's GK_PAGES granules."""
    kinds = gran & GK_MASK
    marked = gran & GR_REPORTED != 0
    if np.any(marked & (kinds != GK_EMPTY) & (kinds != GK_HUGE_LAZY)):
        _fail(f"guest {rec.guest_id}: a reported granule is backed or 4 KiB-backed")
    if np.any(~marked & (kinds == GK_HUGE_LAZY)):
        _fail(f"guest {rec.guest_id}: a lazily freed huge granule is not reported")
    res = pages & RES_MASK
    page_marked = pages & PG_REPORTED != 0
    if np.any(page_marked & (res != RES_UNBACKED) & (res != RES_LAZY)):
        _fail(f"guest {rec.guest_id}: a reported page is backed or swapped")
    if np.any(~page_marked & (res == RES_LAZY)):
        _fail(f"guest {rec.guest_id}: a lazily freed page is not reported")


def check_host(host) -> None:
    """Raise AssertionError if any invariant of `host` is broken."""
    totals = np.zeros(5, np.int64)
    for rec in host._by_slot:
        counts = _recount_guest(host, rec)
        if counts[: RES_SWAPPED + 1].sum() != rec.nr_pages:
            _fail(f"guest {rec.guest_id}: unbacked+backed+lazy+swapped != nr_pages")
        row = host._gstat[rec.slot]
        if not np.array_equal(row[: RES_SWAPPED + 1], counts[:4]) or row[G_ZSWAP] != counts[4]:
            _fail(
                f"guest {rec.guest_id}: running totals {row[:5].tolist()} != recount "
                f"{counts.tolist()}"
            )
        totals += counts
    _check_pools(host, totals)
    _check_counters_not_negative(host)


def _check_pools(host, totals: np.ndarray) -> None:
    """The host pool, swap, zswap pool, lazy pages and swap-out log against the recount."""
    hs, p = host._hs, host._p
    cbytes = int(p[P_ZSWAP_CBYTES])
    zswap_bytes = int(totals[4]) * cbytes
    pool = int(totals[RES_BACKED] + totals[RES_LAZY]) * PAGE_SIZE
    if p[P_ZSWAP_COUNTS]:
        pool += zswap_bytes
    if hs[H_POOL_BYTES] != pool:
        _fail(f"pool used {int(hs[H_POOL_BYTES])} != resident (+zswap) bytes {pool}")
    if pool > host.config.limit_bytes:
        _fail(f"pool used {pool} > capacity - reserve {host.config.limit_bytes}")
    swap_pages = int(totals[RES_SWAPPED] - totals[4])
    if hs[H_SWAP_USED_PAGES] != swap_pages:
        _fail(f"swap used {int(hs[H_SWAP_USED_PAGES])} pages != swapped pages {swap_pages}")
    if swap_pages * PAGE_SIZE > host.config.swap.capacity_bytes:
        _fail(f"swap used {swap_pages} pages > capacity")
    if hs[H_ZSWAP_BYTES] != zswap_bytes or zswap_bytes > host.config.zswap.max_pool_bytes:
        _fail(f"zswap pool {int(hs[H_ZSWAP_BYTES])} bytes != {zswap_bytes} or over its limit")
    if hs[H_LAZY_PAGES] != totals[RES_LAZY]:
        _fail(f"lazy pages {int(hs[H_LAZY_PAGES])} != recount {int(totals[RES_LAZY])}")
    if not 0 <= hs[H_LOG_N] <= host._log.size:
        _fail("swap-out log overflow")


def _check_counters_not_negative(host) -> None:
    for rec in host._by_slot:
        for key, value in host.guest_counters(rec.guest_id).items():
            if value < 0:
                _fail(f"guest {rec.guest_id}: counter {key} = {value} < 0")
    for key, value in host.host_counters().items():
        if value < 0:
            _fail(f"host counter {key} = {value} < 0")
