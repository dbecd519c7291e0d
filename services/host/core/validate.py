"""Fast whole-batch validity checks (one compiled pass; pool.py builds the error message).

Each returns the index of the first bad entry, or -1 when the batch is valid.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def first_bad_range(pfns, orders, nr_pages, max_order):
    """(pfn, order): order in 0..max_order, pfn >= 0, aligned, inside the guest."""
    for k in range(pfns.size):
        order = orders[k]
        pfn = pfns[k]
        if order < 0 or order > max_order or pfn < 0:
            return k
        if pfn & ((1 << order) - 1) or pfn + (1 << order) > nr_pages:
            return k
    return -1


@njit(cache=True)
def first_bad_run(starts, npages, nr_pages):
    """(start pfn, npages): start >= 0, npages > 0, inside the guest."""
    for k in range(starts.size):
        if starts[k] < 0 or npages[k] <= 0 or starts[k] + npages[k] > nr_pages:
            return k
    return -1
