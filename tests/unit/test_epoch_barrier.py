"""EpochBarrier as a plain class: direct calls on a real small host core, no gRPC, no sockets.

Registration checks and idempotency, the two-shard barrier, arrival order,
retries, stale and future epochs, refused submissions, waits that cannot
complete, multi-epoch submissions and kept samples.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.host.barrier import EpochBarrier
from services.host.core.config import HostConfig, SwapConfig
from services.host.core.host import Host
from services.protocol.messages import (
    EpochOutcome,
    EpochSubmission,
    GuestOps,
    GuestRegistration,
    PageRunOps,
    ReportOp,
)
from services.transport.errors import Status, StatusError

EXPERIMENT = "exp-unit"
GUEST_PAGES = 1 << 15  # 128 MiB guests
EPOCH_NS = 50_000_000
PRESSURE_HOST_BYTES = 64 << 20  # guests touch more than this: the host reclaims and swaps
SHARD_GUESTS = {0: (1, 4), 1: (2, 3)}  # guest ids interleave across shards


def u64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


def make_barrier(memory_bytes: int = 256 << 20) -> EpochBarrier:
    host = Host(0, HostConfig(memory_bytes=memory_bytes, swap=SwapConfig(capacity_bytes=1 << 30)))
    return EpochBarrier(EXPERIMENT, 0, host)


def register_all(barrier: EpochBarrier, shards: dict[int, tuple[int, ...]] = SHARD_GUESTS) -> None:
    for shard, guests in shards.items():
        for guest_id in guests:
            barrier.register_guest(GuestRegistration(guest_id, shard, GUEST_PAGES, "dontneed"))


def guest_ops(
    guest_id: int, seed: int, first_seq: int = 1, touches: int = 4
) -> tuple[GuestOps, int]:
    """Touches of 256-page runs at random granules, then a report of 4 order-9 blocks
    and a touch of one reported block; returns the ops and the last op_seq used."""
    rng = np.random.default_rng([seed, guest_id])
    seq = first_seq - 1
    starts, npages, seqs = [], [], []
    for _ in range(touches):
        seq += 1
        for granule in rng.choice(GUEST_PAGES >> 9, size=8, replace=False):
            starts.append(int(granule) << 9)
            npages.append(256)
            seqs.append(seq)
    seq += 1
    blocks = np.sort(rng.choice(GUEST_PAGES >> 9, size=4, replace=False)) << 9
    report = ReportOp(seq, u64(blocks), np.full(4, 9, np.uint32))
    seq += 1
    starts.append(int(blocks[0]))
    npages.append(512)
    seqs.append(seq)
    return GuestOps(guest_id, (report,), PageRunOps(u64(starts), u64(npages), u64(seqs))), seq


def submission(shard: int, epoch: int, sequence: int | None = None, **extra) -> EpochSubmission:
    ops = tuple(guest_ops(g, seed=epoch)[0] for g in SHARD_GUESTS[shard])
    return EpochSubmission(
        shard, epoch, epoch if sequence is None else sequence, (epoch + 1) * EPOCH_NS, ops, **extra
    )


def refused(call, *args) -> StatusError:
    with pytest.raises(StatusError) as err:
        call(*args)
    return err.value


# ------------------------------------------------------------------ registration


@pytest.mark.parametrize(
    ("reg", "field"),
    [
        (GuestRegistration(7, 0, GUEST_PAGES, "dontneed", page_size_bytes=8192), "page_size_bytes"),
        (GuestRegistration(7, 0, 0, "dontneed"), "nr_pages"),
        (GuestRegistration(7, 0, GUEST_PAGES, "bogus"), "discard_mode"),
    ],
)
def test_a_bad_registration_is_invalid_argument_naming_the_field_and_adds_nothing(
    reg, field
) -> None:
    barrier = make_barrier()
    err = refused(barrier.register_guest, reg)
    assert err.code() == Status.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}="), err.details()
    assert barrier.state()["guests"] == [] and barrier.host.guest_ids() == []


def test_registering_the_same_guest_twice_is_fine_but_a_different_one_is_already_exists() -> None:
    barrier = make_barrier()
    reg = GuestRegistration(1, 0, GUEST_PAGES, "dontneed")
    assert barrier.register_guest(reg) == 0
    assert barrier.register_guest(reg) == 0
    err = refused(barrier.register_guest, GuestRegistration(1, 0, 2 * GUEST_PAGES, "dontneed"))
    assert err.code() == Status.ALREADY_EXISTS and err.details().startswith("guest_id=1")
    assert [(g[0], g[2]) for g in barrier.state()["guests"]] == [(1, GUEST_PAGES)]


def test_a_registration_given_in_bytes_is_kept_as_pages() -> None:
    barrier = make_barrier()
    barrier.register_guest(GuestRegistration(2, 0, 0, "free", size_bytes=GUEST_PAGES * 4096))
    assert barrier.registration(2).nr_pages == GUEST_PAGES
    assert barrier.registration(2).size_bytes is None
    assert barrier.host.guest_counters(2)["unbacked_bytes"] == GUEST_PAGES * 4096
    barrier.register_guest(GuestRegistration(2, 0, GUEST_PAGES, "free"))  # the same guest: fine


# ------------------------------------------------------------------ the barrier


def test_the_first_shard_waits_and_nothing_is_applied_until_the_second_submits() -> None:
    barrier = make_barrier()
    register_all(barrier)
    before = barrier.host.host_counters()
    assert barrier.submit(submission(0, 0)) is None
    assert barrier.pending_shards() == [0] and barrier.collect(0, 0, 0) is None
    assert barrier.host.host_counters() == before
    second = barrier.submit(submission(1, 0))
    first = barrier.collect(0, 0, 0)
    assert second is not None and first is not None
    assert [g.guest_id for g in first.guests] == [1, 4] and [g.guest_id for g in second.guests] == [
        2,
        3,
    ]
    assert all(len(g.acks) == 1 and g.acks[0].ok for g in first.guests + second.guests)
    assert barrier.host.host_counters()["reports"] == 4 and barrier.pending_shards() == []


def _run_two_shards(order: tuple[int, int], epochs: int = 3) -> tuple[list, EpochBarrier]:
    barrier = make_barrier(PRESSURE_HOST_BYTES)
    register_all(barrier)
    outcomes = []
    for epoch in range(epochs):
        first, second = order
        assert barrier.submit(submission(first, epoch)) is None
        last = barrier.submit(submission(second, epoch))
        outcomes.append({first: barrier.collect(first, epoch, epoch), second: last})
    return outcomes, barrier


def test_two_shards_give_the_same_outcomes_and_counters_in_either_arrival_order() -> None:
    outcomes_01, barrier_01 = _run_two_shards((0, 1))
    outcomes_10, barrier_10 = _run_two_shards((1, 0))
    assert outcomes_01 == outcomes_10
    assert barrier_01.state() == barrier_10.state()
    assert barrier_01.host.host_counters()["swapout_bytes"] > 0, (
        "the scenario must make the host swap"
    )
    assert any(len(g.swapped_starts) for o in outcomes_01 for out in o.values() for g in out.guests)
    barrier_01.host.check_invariants()


def test_a_retried_submission_returns_the_stored_outcome_and_applies_nothing_twice() -> None:
    barrier = make_barrier()
    register_all(barrier, {0: (1,)})
    sub = EpochSubmission(0, 0, 5, EPOCH_NS, (guest_ops(1, seed=3)[0],))
    first = barrier.submit(sub)
    counters, state = barrier.host.host_counters(), barrier.state()
    assert isinstance(first, EpochOutcome) and first.sequence == 5
    assert barrier.submit(sub) == first
    assert barrier.host.host_counters() == counters and barrier.state() == state


@pytest.mark.parametrize(("epoch", "sequence", "reason"), [(0, 7, "stale"), (2, 2, "future")])
def test_a_stale_or_future_epoch_is_failed_precondition_and_changes_nothing(
    epoch: int, sequence: int, reason: str
) -> None:
    barrier = make_barrier()
    register_all(barrier, {0: (1, 4)})
    barrier.submit(submission(0, 0))
    state = barrier.state()
    err = refused(barrier.submit, submission(0, epoch, sequence))
    assert err.code() == Status.FAILED_PRECONDITION
    assert err.details().startswith(f"epoch={epoch}: {reason}"), err.details()
    assert barrier.state() == state and barrier.pending_shards() == []


def test_an_invalid_submission_names_the_field_path_and_stores_nothing() -> None:
    barrier = make_barrier()
    register_all(barrier, {0: (1, 4)})
    state = barrier.state()
    bad = GuestOps(4, reports=(ReportOp(1, u64([0, 513]), np.array([9, 1], np.uint32)),))
    err = refused(
        barrier.submit, EpochSubmission(0, 0, 0, EPOCH_NS, (guest_ops(1, seed=0)[0], bad))
    )
    assert err.code() == Status.INVALID_ARGUMENT
    assert err.details().startswith("guests[1].reports[0].pfns[1]=513"), err.details()
    assert barrier.pending_shards() == [] and barrier.state() == state
    assert barrier.submit(submission(0, 0)) is not None  # the epoch is still open


def test_waiting_for_an_epoch_a_shard_never_sends_ends_in_deadline_exceeded() -> None:
    barrier = make_barrier()
    register_all(barrier)
    barrier.submit(submission(0, 0))
    err = refused(barrier.wait, 0, 0, 0, 0.05)
    assert err.code() == Status.DEADLINE_EXCEEDED and "[1]" in err.details()
    assert barrier.pending_shards() == [0]


# ------------------------------------------------------------------ several epochs, samples


def _two_epochs_of_ops(guest_id: int) -> tuple[GuestOps, GuestOps, int, int]:
    first, end0 = guest_ops(guest_id, seed=10)
    second, end1 = guest_ops(guest_id, seed=11, first_seq=end0 + 1)
    return first, second, end0, end1


def test_one_submission_covering_two_epochs_equals_two_single_epoch_submissions() -> None:
    single, multi = make_barrier(PRESSURE_HOST_BYTES), make_barrier(PRESSURE_HOST_BYTES)
    register_all(single, {0: (1, 4)})
    register_all(multi, {0: (1, 4)})
    split = {g: _two_epochs_of_ops(g) for g in (1, 4)}
    for epoch in (0, 1):
        single.submit(
            EpochSubmission(
                0, epoch, epoch, (epoch + 1) * EPOCH_NS, tuple(split[g][epoch] for g in (1, 4))
            )
        )
    combined = tuple(
        GuestOps(
            g,
            a.reports + b.reports,
            PageRunOps(
                *(
                    np.concatenate([getattr(a.touched, f), getattr(b.touched, f)])
                    for f in ("starts", "npages", "op_seqs")
                )
            ),
            epoch_seq_ends=u64([end0, end1]),
        )
        for g, (a, b, end0, end1) in split.items()
    )
    outcome = multi.submit(EpochSubmission(0, 0, 0, 2 * EPOCH_NS, combined, epochs=2))
    assert outcome is not None and sum(len(g.acks) for g in outcome.guests) == 4
    assert multi.host.host_counters() == single.host.host_counters()
    assert multi.host.host_counters()["swapout_bytes"] > 0, "reclaim must matter"
    assert multi.state()["next_epoch"] == single.state()["next_epoch"] == 2


def test_a_sampled_epoch_keeps_its_counters_after_later_epochs() -> None:
    barrier = make_barrier()
    register_all(barrier, {0: (1, 4)})
    outcome = barrier.submit(submission(0, 0, sample=True))
    kept = barrier.host.host_counters()
    barrier.submit(submission(0, 1))
    assert barrier.host.host_counters() != kept, "the later epoch must change the counters"
    assert barrier.sample_at(0, timeout_s=0.05) == kept == outcome.sample
    err = refused(barrier.sample_at, 1, 0.05)
    assert err.code() == Status.FAILED_PRECONDITION and err.details().startswith("sample_epoch=1")
