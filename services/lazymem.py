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

Imports numpy only, so every layer may use it (a core model included).
"""

from __future__ import annotations

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
