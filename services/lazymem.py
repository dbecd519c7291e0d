"""Zeroed arrays whose memory is taken page by page, as it is written.

A guest's per-page arrays (its allocator's links, its backing view, the host's
state of its pages) are mostly never written: a calm guest's free memory sits in
large blocks whose state lives in a few rows. ``np.zeros`` does not promise that
the rest costs nothing. glibc serves a request below its (self-raising) mmap
threshold from the heap, clearing reused memory with a memset, and numpy asks
for transparent huge pages on arrays of 4 MiB and more, so one written byte
makes 2 MiB resident. :func:`zeroed` maps its own anonymous memory without huge
pages instead: a 4 KiB page becomes resident when it is first written, and only
then.

:func:`lazy_copy` copies an array into such memory, skipping the pages that are
all zero: an array restored from a checkpoint keeps the footprint it had.

:func:`release_pages` gives pages of such an array back (``MADV_DONTNEED``): they
read as zeros again and cost nothing until written. For rows whose contents no
longer matter (an allocator's links of pages that left every list).

Imports numpy only, so every layer may use it (a core model included).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

import numpy as np
from numpy.typing import DTypeLike

_MIN_BYTES = 1 << 16  # smaller arrays: plain np.zeros (a mapping each is not worth it)


def zeroed(shape: int | tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """A C-contiguous zero array whose pages become resident only when written."""
    dt = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if nbytes < _MIN_BYTES:
        return np.zeros(shape, dt)
    try:
        mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            mm.madvise(mmap.MADV_NOHUGEPAGE)
    except OSError:  # out of mappings (vm.max_map_count): correct, only not lazy
        return np.zeros(shape, dt)
    return np.frombuffer(mm, dtype=dt).reshape(shape)


def lazy_copy(src: np.ndarray, length: int | None = None) -> np.ndarray:
    """``src`` copied into :func:`zeroed` memory, its all-zero pages not written.

    With ``length`` (>= ``len(src)``), the copy has that many rows and the rest is
    zero: a lazily grown array.
    """
    src = np.ascontiguousarray(src)
    rows = len(src) if length is None else length
    if rows < len(src):
        raise ValueError(f"length {rows} is shorter than the array ({len(src)})")
    out = zeroed((rows, *src.shape[1:]), src.dtype)
    flat_src = src.reshape(-1).view(np.uint8)
    flat_out = out.reshape(-1).view(np.uint8)[: flat_src.size]
    page = mmap.PAGESIZE
    whole = flat_src.size // page * page
    if whole == 0:
        flat_out[:] = flat_src
        return out
    chunks = flat_src[:whole].reshape(-1, page)
    written = chunks.any(axis=1)
    flat_out[:whole].reshape(-1, page)[written] = chunks[written]
    flat_out[whole:] = flat_src[whole:]
    return out


def _mapping(a: np.ndarray) -> mmap.mmap | None:
    """The anonymous mapping :func:`zeroed` made for ``a`` (or a view of it), if any."""
    owner = a.base
    while isinstance(owner, np.ndarray):
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    return owner if isinstance(owner, mmap.mmap) else None


def _load_mincore():
    """libc's mincore(2), or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        fn = libc.mincore
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    fn.restype = ctypes.c_int
    return fn


_MINCORE = _load_mincore()


def resident_pages(a: np.ndarray) -> np.ndarray | None:
    """One byte per page of a :func:`zeroed` array's memory, nonzero where the page is
    resident (mincore(2)); None for any other array, or where mincore is missing.
    A page only read may count as resident (it maps the shared zero page); a page
    swapped out counts as not resident, though it holds data."""
    if _MINCORE is None or not a.flags.c_contiguous or _mapping(a) is None:
        return None
    page = mmap.PAGESIZE
    addr = a.__array_interface__["data"][0]
    if addr % page:
        return None
    out = np.zeros(-(-a.nbytes // page), dtype=np.uint8)
    if _MINCORE(addr, a.nbytes, out.ctypes.data) != 0:
        return None
    return out & 1


def release_pages(a: np.ndarray, first: np.ndarray, end: np.ndarray) -> int:
    """Zero the pages [first[i], end[i]) of ``a``'s memory (pages of ``mmap.PAGESIZE``
    bytes counted from its first byte, the last one ending with ``a``) and give back
    what can be: the whole pages of a :func:`zeroed` array go back to the kernel
    (``MADV_DONTNEED``: they read as zeros and cost nothing until written). Elsewhere
    (a partial last page, an array that is not such a mapping) only pages that hold a
    nonzero byte are written with zeros, so memory never written stays untouched.
    Returns the bytes that read as zeros afterwards."""
    if not a.flags.c_contiguous:
        raise ValueError("release_pages: the array must be C-contiguous")
    page = mmap.PAGESIZE
    first = np.asarray(first, dtype=np.int64)
    end = np.minimum(np.asarray(end, dtype=np.int64), -(-a.nbytes // page))
    if len(first) and (int(first.min()) < 0 or bool((end < first).any())):
        raise ValueError("release_pages: page ranges must be ascending and start at >= 0")
    mm = _mapping(a)
    flat = a.reshape(-1).view(np.uint8)
    offset = 0
    if mm is not None:
        offset = a.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8).ctypes.data
        if offset % page:
            mm = None  # not page-aligned in its mapping: write zeros instead
    whole_pages = a.nbytes // page  # pages that end inside the array
    done = 0
    for lo, hi in zip(first.tolist(), end.tolist(), strict=True):
        if hi <= lo:
            continue
        advised = min(hi, whole_pages) if mm is not None else lo
        if advised > lo:
            mm.madvise(mmap.MADV_DONTNEED, offset + lo * page, (advised - lo) * page)
        for p in range(advised, hi):  # the rest: zero only what is not zero already
            chunk = flat[p * page : min((p + 1) * page, a.nbytes)]
            if chunk.any():
                chunk[:] = 0
        done += min(hi * page, a.nbytes) - lo * page
    return done
