"""Validation of the plain protocol types, shared by every path to a host.

Every check runs on :mod:`services.protocol.messages` types before anything is
applied, so a refused message changes no state, and the gRPC path (after
decoding) and the in-process path run exactly the same checks and raise the same
:class:`~services.transport.errors.StatusError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.transport.errors import invalid_argument, not_found, permission_denied, require
from services.units import PAGE_SIZE

from .messages import (
    DISCARD_MODES,
    EMPTY_RUNS,
    EMPTY_U64,
    EpochSubmission,
    GuestOps,
    GuestRegistration,
    PageRunOps,
)

MAX_REPORT_CAPACITY = 1 << 16  # ranges per report a host accepts at most (the kernel's is 32)
MAX_ORDER_LIMIT = 20  # orders a registration may declare (x86-64 uses up to 10)
# Report batches one message may carry over all its guests. A guest's reporting pass
# makes about one batch per 16 x capacity free blocks of each list it visits (its
# budget, §4.4): a few for a 4 GiB guest, a few hundred for a 256 GiB one. This
# is far above what a host's guests send in one sync; it bounds what decoding a
# message may build (a batch takes about 0.6 KB decoded and a few bytes on the wire).
MAX_REPORTS_PER_MESSAGE = 1 << 17


def check_same_length(field_a: str, a: np.ndarray, field_b: str, b: np.ndarray) -> None:
    """Parallel packed arrays must have the same length."""
    if len(a) != len(b):
        raise invalid_argument(field_b, len(b), f"length differs from {field_a} (length {len(a)})")


def check_report_batches(
    field: str,
    pfns_list: Sequence[np.ndarray],
    orders_list: Sequence[np.ndarray],
    *,
    nr_pages: int,
    max_order: int,
    capacity: int,
) -> None:
    """Several report batches of one guest, checked in one vectorised pass.

    ``field`` is the path of the list, e.g. ``guests[0].reports``; errors name
    ``guests[0].reports[2].pfns[5]``. Ranges must be disjoint within a batch
    (a block is reported once per report); batches may repeat a range.
    """

    def path(b: int) -> str:
        return f"{field}[{b}]"

    lengths = np.fromiter((len(p) for p in pfns_list), dtype=np.int64, count=len(pfns_list))
    for b, (pfns, orders) in enumerate(zip(pfns_list, orders_list, strict=True)):
        check_same_length(f"{path(b)}.pfns", pfns, f"{path(b)}.orders", orders)
        require(len(pfns) > 0, f"{path(b)}.pfns", 0, "a report batch carries at least one range")
        require(
            len(pfns) <= capacity,
            f"{path(b)}.pfns",
            len(pfns),
            f"batch carries {len(pfns)} ranges, over capacity {capacity}",
        )
    if not pfns_list:
        return
    pfns = np.concatenate(pfns_list).astype(np.uint64, copy=False)
    orders = np.concatenate(orders_list)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))

    def where(i: int) -> str:
        b = int(np.searchsorted(starts, i, side="right")) - 1
        return f"{path(b)}.%s[{i - int(starts[b])}]"

    bad = np.flatnonzero(orders > max_order)
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(
            where(i) % "orders", int(orders[i]), f"order out of range 0..{max_order}"
        )
    sizes = np.left_shift(np.uint64(1), orders.astype(np.uint64))
    bad = np.flatnonzero(pfns & (sizes - np.uint64(1)))
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(
            where(i) % "pfns", int(pfns[i]), f"not aligned to 2**order={int(sizes[i])} pages"
        )
    bad = np.flatnonzero((pfns >= np.uint64(nr_pages)) | (pfns + sizes > np.uint64(nr_pages)))
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(
            where(i) % "pfns",
            int(pfns[i]),
            f"range of {int(sizes[i])} pages outside the guest's {nr_pages} pages",
        )
    batch = np.repeat(np.arange(len(lengths)), lengths)
    order = np.lexsort((pfns, batch))
    sorted_pfns = pfns[order]
    overlap = (sorted_pfns[:-1] + sizes[order][:-1] > sorted_pfns[1:]) & (
        batch[order][:-1] == batch[order][1:]
    )
    bad = np.flatnonzero(overlap)
    if bad.size:
        i = int(order[int(bad[0]) + 1])
        raise invalid_argument(where(i) % "pfns", int(pfns[i]), "range overlaps another range")


def check_page_runs(field: str, starts: np.ndarray, npages: np.ndarray, *, nr_pages: int) -> None:
    """Page runs: npages > 0 and every run inside the guest's ``nr_pages`` pages."""
    check_same_length(f"{field}.starts", starts, f"{field}.npages", npages)
    if len(starts) == 0:
        return
    bad = np.flatnonzero(npages == 0)
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(f"{field}.npages[{i}]", 0, "npages must be > 0")
    bad = np.flatnonzero(starts >= np.uint64(nr_pages))
    if bad.size == 0:
        bad = np.flatnonzero(npages > np.uint64(nr_pages) - starts)
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(
            f"{field}.starts[{i}]",
            int(starts[i]),
            f"run of {int(npages[i])} pages outside the guest's {nr_pages} pages",
        )


# ------------------------------------------------------------------ registration


def validate_registration(reg: GuestRegistration) -> GuestRegistration:
    """Check a registration that needs no host state; return it with ``nr_pages`` set."""
    _require_unsigned("guest_id", reg.guest_id)
    _require_unsigned("shard_id", reg.shard_id)
    require(
        reg.page_size_bytes == PAGE_SIZE,
        "page_size_bytes",
        reg.page_size_bytes,
        f"only {PAGE_SIZE}-byte guest pages are simulated",
    )
    nr_pages = reg.nr_pages
    if reg.size_bytes is not None:
        require(
            reg.size_bytes > 0 and reg.size_bytes % PAGE_SIZE == 0,
            "size_bytes",
            reg.size_bytes,
            f"must be a positive multiple of {PAGE_SIZE}",
        )
        require(
            not nr_pages or nr_pages * PAGE_SIZE == reg.size_bytes,
            "nr_pages",
            nr_pages,
            f"disagrees with size_bytes={reg.size_bytes}",
        )
        nr_pages = reg.size_bytes // PAGE_SIZE
    else:
        require(nr_pages > 0, "nr_pages", nr_pages, "must be > 0")
    require(
        reg.discard_mode in DISCARD_MODES,
        "discard_mode",
        reg.discard_mode,
        "must be DONTNEED, FREE or DISABLED",
    )
    require(
        0 < reg.report_capacity <= MAX_REPORT_CAPACITY,
        "report_capacity",
        reg.report_capacity,
        f"must be in 1..{MAX_REPORT_CAPACITY}",
    )
    require(
        0 <= reg.max_order <= MAX_ORDER_LIMIT,
        "max_order",
        reg.max_order,
        f"must be in 0..{MAX_ORDER_LIMIT}",
    )
    if nr_pages == reg.nr_pages and reg.size_bytes is None:
        return reg
    return GuestRegistration(
        reg.guest_id,
        reg.shard_id,
        nr_pages,
        reg.discard_mode,
        reg.report_capacity,
        reg.max_order,
        reg.guest_thp,
        reg.page_size_bytes,
    )


# ------------------------------------------------------------------ submissions


def check_submission_shape(sub: EpochSubmission) -> None:
    """What can be checked of a submission without knowing the host: numbers are
    unsigned, parallel arrays are whole numbers. The codec runs it before encoding,
    so a plain submission is refused with the same error on every path."""
    if _shape_ok(sub):  # the common case, checked without building field names
        return
    for name in ("shard_id", "epoch", "sequence", "next_epoch"):
        _require_unsigned(name, getattr(sub, name))
    require(sub.epochs >= 1, "epochs", sub.epochs, "must be at least 1")
    for gi, ops in enumerate(sub.guests):
        path = f"guests[{gi}]"
        _require_unsigned(f"{path}.guest_id", ops.guest_id)
        _require_unsigned_array(f"{path}.epoch_seq_ends", ops.epoch_seq_ends)
        for ri, report in enumerate(ops.reports):
            _require_unsigned(f"{path}.reports[{ri}].op_seq", report.op_seq)
            _require_unsigned_array(f"{path}.reports[{ri}].pfns", report.pfns)
            _require_unsigned_array(f"{path}.reports[{ri}].orders", report.orders)
        for name, runs in (("touched", ops.touched), ("freed", ops.freed)):
            for part in ("starts", "npages", "op_seqs"):
                _require_unsigned_array(f"{path}.{name}.{part}", getattr(runs, part))


def check_guest_count(nr_guests: int, registered: int) -> None:
    """A message names each guest at most once, and only guests registered with the
    host: one with more guests than the host has registered is refused first (the
    gRPC path checks it before decoding the message)."""
    require(
        nr_guests <= registered,
        "guests",
        nr_guests,
        f"more than the {registered} guests registered with this host (each may appear once)",
    )


def check_report_count(guest_index: int, total: int) -> None:
    """``total``: the report batches of a message's guests up to guest ``guest_index``."""
    require(
        total <= MAX_REPORTS_PER_MESSAGE,
        f"guests[{guest_index}].reports",
        total,
        f"message carries more than {MAX_REPORTS_PER_MESSAGE} report batches",
    )


def validate_submission(sub: EpochSubmission, guests: Mapping[int, GuestRegistration]) -> None:
    """Everything about one shard's message that can be checked before applying it,
    given the host's registered ``guests`` (the barrier checks the epochs)."""
    if _submission_valid(sub, guests):
        return
    validate_submission_in_full(sub, guests)  # raises the error, naming the first bad field


def _submission_valid(sub: EpochSubmission, guests: Mapping[int, GuestRegistration]) -> bool:
    """Whether ``validate_submission_in_full`` accepts ``sub``, answered faster: the
    touched runs of guests that only touched pages are checked together, in three
    array operations for the whole message, instead of guest by guest (validation
    was a third of a host actor's time under pressure); a guest with reports, freed
    runs or several epochs is checked as in full. False at any doubt: the full check
    then names the first bad field, as it always did."""
    if not _shape_ok(sub) or len(sub.guests) > len(guests):
        return False
    nreports = 0
    starts: list[np.ndarray] = []
    npages: list[np.ndarray] = []
    limits: list[int] = []
    counts: list[int] = []
    seen: set[int] = set()
    for ops in sub.guests:
        reg = guests.get(ops.guest_id)
        if reg is None or reg.shard_id != sub.shard_id or ops.guest_id in seen:
            return False
        seen.add(ops.guest_id)
        runs = ops.touched
        n = len(runs.starts)
        if ops.reports or ops.freed.has_values() or sub.epochs != 1:
            nreports += len(ops.reports)
            try:
                check_report_count(0, nreports)
                _validate_guest_ops("", ops, reg)
                _validate_epoch_seq_ends("", ops, sub.epochs)
            except Exception:  # noqa: BLE001 - the full check raises it (or an earlier one)
                return False
        elif len(ops.epoch_seq_ends) or len(runs.npages) != n or len(runs.op_seqs) != n:
            return False
        elif n:
            starts.append(runs.starts)
            npages.append(runs.npages)
            limits.append(reg.nr_pages)
            counts.append(n)
    if not starts:
        return True
    s = np.concatenate(starts).astype(np.uint64, copy=False)
    p = np.concatenate(npages).astype(np.uint64, copy=False)
    limit = np.repeat(np.array(limits, dtype=np.uint64), counts)
    return not ((p == 0) | (s >= limit) | (p > limit - s)).any()


def validate_submission_in_full(
    sub: EpochSubmission, guests: Mapping[int, GuestRegistration]
) -> None:
    """``validate_submission`` guest by guest, field by field: the first bad field found
    is the one named (the reference of its fast path)."""
    check_submission_shape(sub)
    check_guest_count(len(sub.guests), len(guests))
    nreports = 0
    for gi, ops in enumerate(sub.guests):
        if ops.reports:
            nreports += len(ops.reports)
            check_report_count(gi, nreports)
    seen: set[int] = set()
    for gi, ops in enumerate(sub.guests):
        path = f"guests[{gi}]"
        reg = guests.get(ops.guest_id)
        if reg is None:
            raise not_found(
                f"{path}.guest_id", ops.guest_id, "guest is not registered with this host"
            )
        if reg.shard_id != sub.shard_id:
            raise permission_denied(
                f"{path}.guest_id",
                ops.guest_id,
                f"guest was registered by shard {reg.shard_id}, not shard {sub.shard_id}",
            )
        require(
            ops.guest_id not in seen,
            f"{path}.guest_id",
            ops.guest_id,
            "guest appears twice in one message",
        )
        seen.add(ops.guest_id)
        _validate_guest_ops(path, ops, reg)
        _validate_epoch_seq_ends(path, ops, sub.epochs)


def _unsigned(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and bool(value >= 0)


def _unsigned_array(values: object) -> bool:
    return isinstance(values, np.ndarray) and values.dtype.kind == "u"


def _shape_ok(sub: EpochSubmission) -> bool:
    if not (
        all(_unsigned(v) for v in (sub.shard_id, sub.epoch, sub.sequence, sub.next_epoch))
        and sub.epochs >= 1
    ):
        return False
    for ops in sub.guests:  # the shared empties (most guests' ends, freed runs) are fine
        ends = ops.epoch_seq_ends
        if not (_unsigned(ops.guest_id) and (ends is EMPTY_U64 or _unsigned_array(ends))):
            return False
        for r in ops.reports:
            if not (_unsigned(r.op_seq) and _unsigned_array(r.pfns) and _unsigned_array(r.orders)):
                return False
        for runs in (ops.touched, ops.freed):
            if runs is not EMPTY_RUNS and not (
                _unsigned_array(runs.starts)
                and _unsigned_array(runs.npages)
                and _unsigned_array(runs.op_seqs)
            ):
                return False
    return True


def _require_unsigned(field: str, value: int) -> None:
    require(
        isinstance(value, (int, np.integer)) and value >= 0,
        field,
        value,
        "must be a non-negative integer",
    )


def _require_unsigned_array(field: str, values: np.ndarray) -> None:
    kind = np.asarray(values).dtype.kind
    require(kind in "ui", field, str(np.asarray(values).dtype), "must be an array of integers")
    if kind == "i" and len(values):
        bad = np.flatnonzero(np.asarray(values) < 0)
        if bad.size:
            i = int(bad[0])
            raise invalid_argument(f"{field}[{i}]", int(values[i]), "must not be negative")


def _validate_epoch_seq_ends(path: str, ops: GuestOps, epochs: int) -> None:
    ends = ops.epoch_seq_ends
    name = f"{path}.epoch_seq_ends"
    if epochs == 1:
        require(len(ends) == 0, name, len(ends), "must be empty when the message covers one epoch")
        return
    require(len(ends) == epochs, name, len(ends), f"needs one entry per covered epoch ({epochs})")
    if len(ends) > 1 and bool((ends[1:] < ends[:-1]).any()):
        i = int(np.flatnonzero(ends[1:] < ends[:-1])[0]) + 1
        raise invalid_argument(f"{name}[{i}]", int(ends[i]), "must not be below the previous entry")
    seqs = [int(r.op_seq) for r in ops.reports]
    for runs in (ops.touched, ops.freed):
        if len(runs.op_seqs):
            seqs.append(int(runs.op_seqs.max()))
    if seqs and max(seqs) > int(ends[-1]):
        raise invalid_argument(
            f"{name}[{epochs - 1}]",
            int(ends[-1]),
            f"below op_seq {max(seqs)}: every operation must fall in a covered epoch",
        )


def _validate_guest_ops(path: str, ops: GuestOps, reg: GuestRegistration) -> None:
    check_report_batches(
        f"{path}.reports",
        [r.pfns for r in ops.reports],
        [r.orders for r in ops.reports],
        nr_pages=reg.nr_pages,
        max_order=reg.max_order,
        capacity=reg.report_capacity,
    )
    report_seqs: set[int] = set()
    for ri, report in enumerate(ops.reports):
        require(
            report.op_seq not in report_seqs,
            f"{path}.reports[{ri}].op_seq",
            report.op_seq,
            "op_seq used by another report batch",
        )
        report_seqs.add(report.op_seq)
    taken = report_seqs
    for name, runs in (("touched", ops.touched), ("freed", ops.freed)):
        _validate_runs(f"{path}.{name}", runs, reg.nr_pages)
        seqs = set(runs.op_seqs.tolist())
        if seqs & taken:
            i = next(i for i, q in enumerate(runs.op_seqs.tolist()) if q in taken)
            owner = "a report batch" if runs.op_seqs[i] in report_seqs else "touched runs"
            raise invalid_argument(
                f"{path}.{name}.op_seqs[{i}]",
                int(runs.op_seqs[i]),
                f"op_seq already used by {owner}",
            )
        taken = taken | seqs


def _validate_runs(path: str, runs: PageRunOps, nr_pages: int) -> None:
    check_page_runs(path, runs.starts, runs.npages, nr_pages=nr_pages)
    if len(runs.op_seqs) != len(runs.starts):
        raise invalid_argument(
            f"{path}.op_seqs",
            len(runs.op_seqs),
            f"length differs from {path}.starts (length {len(runs.starts)})",
        )
