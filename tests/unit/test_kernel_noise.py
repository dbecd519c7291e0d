"""kernel_noise: seeded unmovable/reclaimable allocations with lifetimes, in time order
(pure: a guest shard, no host)."""

import pytest

from services.guest.core.config import GuestConfig
from services.guest.core.constants import MIGRATE_MOVABLE
from services.guest.core.kernel_noise import KernelNoiseConfig
from services.guest.shard import GuestInit, GuestShard
from tests.guest_helpers import run_in_lockstep

MIB = 1 << 20
NR_PAGES = (256 * MIB) >> 12


def shard(config, fast):
    init = GuestInit(0, "g", 0, GuestConfig(nr_pages=NR_PAGES), config)
    return GuestShard(0, [init], seed=8, fast=fast)


def run(config, t_end, epoch, fast=True):
    sh = shard(config, fast)
    t = 0
    while t < t_end:
        sh.run_epoch(t, t + epoch)
        t += epoch
    return sh.slots[0]


def free_big_blocks(guest) -> int:
    a = guest.allocator
    return sum(a.nr_free(z, o) << o for z in range(a.nr_zones) for o in (9, 10))


def test_held_is_what_arrived_minus_what_died_and_the_epoch_does_not_matter():
    cfg = KernelNoiseConfig(rate_per_s=5000, mean_lifetime_ns=200_000_000)
    a = run(cfg, 2_000_000_000, 10_000_000)
    b = run(cfg, 2_000_000_000, 50_000_000)
    wa, wb = a.workload, b.workload
    assert wa.stats.pages_allocated - wa.stats.pages_freed == wa.held_pages > 0
    assert wa.stats.pages_allocated == wb.stats.pages_allocated
    assert wa.stats.pages_freed == wb.stats.pages_freed
    assert a.guest.allocator.free_pages_total() == b.guest.allocator.free_pages_total()
    # about rate x time arrivals, mostly order 0 (Poisson: within 5 %)
    arrivals = wa.stats.pages_allocated
    assert 10_000 * 0.95 < arrivals < 10_000 * 1.35


def test_noise_fragments_pageblocks_so_fewer_big_blocks_are_free():
    """After the same noise, a hog that grew to 80 % and freed leaves fewer free order-9+
    pages than in a quiet guest: unmovable and reclaimable pages pin pageblocks."""
    noisy = run(
        KernelNoiseConfig(rate_per_s=20_000, mean_lifetime_ns=10**10, long_lived_fraction=0.3),
        1_000_000_000,
        50_000_000,
    )
    quiet = run(
        KernelNoiseConfig(rate_per_s=1, mean_lifetime_ns=10**10, start_delay_ns=10**12),
        1_000_000_000,
        50_000_000,
    )
    for s in (noisy, quiet):
        g = s.guest
        pfns = g.alloc(0, MIGRATE_MOVABLE, int(0.8 * NR_PAGES))
        g.free(pfns, 0)
        g.drain_pcp()
    assert free_big_blocks(noisy.guest) < free_big_blocks(quiet.guest) - 512


def test_fast_and_reference_agree():
    """Every epoch's ops and pcp state, the whole allocator every 100 ms."""
    cfg = KernelNoiseConfig(rate_per_s=3000, mean_lifetime_ns=100_000_000, lifetime="lognormal")
    fast, ref = shard(cfg, fast=True), shard(cfg, fast=False)
    seen = run_in_lockstep(fast, ref, 300_000_000, 20_000_000, full_every_ns=100_000_000)
    assert seen["snapshots"] == 3
    a, b = fast.slots[0], ref.slots[0]
    assert a.workload.held_pages == b.workload.held_pages > 0
    assert a.guest.allocator.free_pages_total() == b.guest.allocator.free_pages_total()


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"lifetime": "gamma"}, "lifetime"),
        ({"long_lived_fraction": 2}, "long_lived_fraction"),
        ({"order_weights": ((11, 1.0),)}, "order_weights"),
        ({"order_weights": ((0, 0.0),)}, "order_weights"),
    ],
)
def test_bad_configs_are_refused(kw, needle):
    with pytest.raises(ValueError, match=needle):
        KernelNoiseConfig(**kw)
