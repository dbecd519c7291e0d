"""Validation of report and touch batches, whole batch before any change.

A compiled pass finds whether anything is wrong (the common case costs one
call); only then the numpy slow path finds the error to report, naming the
guest, the field and the value.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def first_bad_run(starts, npages, nr_pages):
    """(start pfn, npages): start >= 0, npages > 0, inside the guest."""
    for k in range(starts.size):
        if starts[k] < 0 or npages[k] <= 0 or starts[k] + npages[k] > nr_pages:
            return k
    return -1


def _int_array(name: str, values) -> np.ndarray:
    if type(values) is np.ndarray and values.dtype == np.int64 and values.ndim == 1:
        return values  # the fast path: kernels only read it
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=True)


def validate_ranges(guest_id: int, nr_pages: int, max_order: int, pfns, orders):
    """Whole report batch -> int64 arrays, or ValueError naming the first bad pfn and order."""
    pfns = _int_array("pfns", pfns)
    orders = _int_array("orders", orders)
    if pfns.size != orders.size:
        raise ValueError(f"pfns and orders differ in length: {pfns.size} != {orders.size}")
    if first_bad_range(pfns, orders, nr_pages, max_order) < 0:
        return pfns, orders
    # Slow path: find the error to report.
    bad = np.flatnonzero((orders < 0) | (orders > max_order))
    if bad.size:
        k = bad[0]
        raise ValueError(
            f"guest {guest_id}: order {orders[k]} (pfn {pfns[k]}) out of range 0..{max_order}"
        )
    bad = np.flatnonzero(pfns < 0)
    if bad.size:
        k = bad[0]
        raise ValueError(f"guest {guest_id}: pfn {pfns[k]} (order {orders[k]}) is negative")
    size = np.left_shift(np.int64(1), orders)
    bad = np.flatnonzero(pfns & (size - 1))
    if bad.size:
        k = bad[0]
        raise ValueError(f"guest {guest_id}: pfn {pfns[k]} is not aligned to order {orders[k]}")
    bad = np.flatnonzero(pfns + size > nr_pages)
    if bad.size:
        k = bad[0]
        raise ValueError(
            f"guest {guest_id}: pfn {pfns[k]} order {orders[k]} ends past nr_pages {nr_pages}"
        )
    return pfns, orders


def validate_runs(guest_id: int, nr_pages: int, starts, npages):
    """Whole touch batch -> int64 arrays, or ValueError naming the first bad run."""
    starts = _int_array("starts", starts)
    npages = _int_array("npages", npages)
    if starts.size != npages.size:
        raise ValueError(f"starts and npages differ in length: {starts.size} != {npages.size}")
    if first_bad_run(starts, npages, nr_pages) < 0:
        return starts, npages
    # Slow path: find the error to report.
    bad = np.flatnonzero(starts < 0)
    if bad.size:
        raise ValueError(f"guest {guest_id}: start pfn {starts[bad[0]]} is negative")
    bad = np.flatnonzero(npages <= 0)
    if bad.size:
        k = bad[0]
        raise ValueError(
            f"guest {guest_id}: npages {npages[k]} (start pfn {starts[k]}) must be > 0"
        )
    bad = np.flatnonzero(starts + npages > nr_pages)
    if bad.size:
        k = bad[0]
        raise ValueError(
            f"guest {guest_id}: run at pfn {starts[k]} of {npages[k]} pages ends past "
            f"nr_pages {nr_pages}"
        )
    return starts, npages
