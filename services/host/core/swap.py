"""Swap device and compressed tier (zswap-like): where a page goes, what it costs.

The swap device holds `SwapConfig.capacity_bytes / 4096` slots. The optional
compressed tier stores a page in `ZswapConfig.compressed_page_bytes` bytes
while its pool stays under `max_pool_bytes`; it is tried first. When the
pool counts against host memory, storing a page there frees only
`4096 - compressed_page_bytes` bytes of the host pool.

Numba helpers operate on the shared arrays described in pagestate.py; the
pricing helper turns page counts into simulated ns with costs.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import costs
from .pagestate import (
    G_SWAPOUT_DISK,
    G_SWAPOUT_ZSWAP,
    GK_MASK,
    GK_PAGES,
    H_LOG_N,
    H_SWAP_USED_PAGES,
    H_ZSWAP_BYTES,
    P_SWAP_CAP_PAGES,
    P_ZSWAP_CBYTES,
    P_ZSWAP_MAX_BYTES,
    P_ZSWAP_ON,
    RES_MASK,
    RES_SWAPPED,
    page_set_res,
)

SWAP_NONE = 0  # no room anywhere: swap is full
SWAP_TO_ZSWAP = 1
SWAP_TO_DISK = 2


@njit(cache=True, inline="always", _nrt=False)
def swap_dest(hs, p):
    """Where the next swapped-out page goes: the compressed tier first, then the device."""
    if p[P_ZSWAP_ON] and hs[H_ZSWAP_BYTES] + p[P_ZSWAP_CBYTES] <= p[P_ZSWAP_MAX_BYTES]:
        return SWAP_TO_ZSWAP
    if hs[H_SWAP_USED_PAGES] < p[P_SWAP_CAP_PAGES]:
        return SWAP_TO_DISK
    return SWAP_NONE


@njit(cache=True, inline="always", _nrt=False)
def swap_out_page(state, gused, gstat, hs, p, log, slot, i, dest):
    """Swap out backed page i (GK_PAGES granule) to `dest` and log it for the guest."""
    page_set_res(state, gused, gstat, hs, p, slot, i, RES_SWAPPED, dest == SWAP_TO_ZSWAP)
    if dest == SWAP_TO_ZSWAP:
        gstat[slot, G_SWAPOUT_ZSWAP] += 1
    else:
        gstat[slot, G_SWAPOUT_DISK] += 1
    n = hs[H_LOG_N]
    if n >= log.size:  # callers keep room (ST_LOG_FULL); never write out of bounds
        raise IndexError("swap-out log full")
    log[n] = i
    hs[H_LOG_N] = n + 1


@njit(cache=True)
def log_runs_kernel(log, n, state, gran, shift, offsets):
    """The swap-out log's first ``n`` entries (global page indices, in clock order, maybe
    repeated) that are still swapped, as ascending runs that never cross a guest:
    (slots, starts, npages), starts relative to the guest's first page. The clock
    appends in ascending order but for its wrap-around, so a sort is rarely needed."""
    idx = log[:n]
    for k in range(1, n):
        if idx[k] <= idx[k - 1]:
            idx = np.sort(idx)
            break
    slots = np.empty(n, np.int64)
    starts = np.empty(n, np.int64)
    npages = np.empty(n, np.int64)
    m = 0
    slot = 0
    prev = -2
    for k in range(n):
        i = idx[k]
        if (
            i == prev
            or (gran[i >> shift] & GK_MASK) != GK_PAGES
            or (state[i] & RES_MASK) != RES_SWAPPED
        ):
            continue
        while offsets[slot + 1] <= i:
            slot += 1
        if m and i == prev + 1 and slots[m - 1] == slot:
            npages[m - 1] += 1
        else:
            slots[m] = slot
            starts[m] = i - offsets[slot]
            npages[m] = 1
            m += 1
        prev = i
    return slots[:m], starts[:m], npages[:m]


def swapout_cost_ns(cm: costs.CostModel, disk_pages: int, zswap_pages: int) -> int:
    """Reclaim time to write `disk_pages` to the device and compress `zswap_pages`."""
    return costs.swapout_ns(cm, disk_pages) + costs.compress_ns(cm, zswap_pages)


def swapin_cost_ns(cm: costs.CostModel, disk_pages: int, zswap_pages: int) -> tuple[int, int]:
    """(swap-in ns from the device, decompress ns from the compressed tier)."""
    return costs.swapin_ns(cm, disk_pages), costs.decompress_ns(cm, zswap_pages)
