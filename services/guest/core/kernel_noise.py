"""kernel_noise: the kernel's own unmovable and reclaimable allocations (slab, page
tables, buffers), which fragment pageblocks so that reporting finds fewer free order-9
and order-10 blocks (spec §3.3: a fallback can claim a MOVABLE pageblock for them).

Allocations arrive as a Poisson process (``rate_per_s``), each of an order drawn from
``order_weights`` and a migratetype (UNMOVABLE with probability ``unmovable_fraction``,
else RECLAIMABLE), and is freed after a lifetime drawn from an exponential or a
lognormal distribution of mean ``mean_lifetime_ns``; a ``long_lived_fraction`` is never
freed. Every event has its own simulated time and events run in time order, so the
epoch length does not change what happens. Draws are made 1,024 events at a time;
a run of consecutive arrivals of one order and type with no death between them is
one allocation call, and consecutive deaths of one order are one free call. The kernel's own time is not
charged to the workloads. All draws come from the guest's workload stream.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from .constants import MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE
from .workloads import WorkStats, clip_to_stop

EXPONENTIAL, LOGNORMAL = "exponential", "lognormal"


@dataclass(frozen=True)
class KernelNoiseConfig:
    rate_per_s: float = 2000.0
    mean_lifetime_ns: int = 5_000_000_000
    lifetime: str = EXPONENTIAL
    sigma: float = 1.0  # lognormal shape
    long_lived_fraction: float = 0.05
    unmovable_fraction: float = 0.5
    order_weights: tuple[tuple[int, float], ...] = ((0, 0.9), (1, 0.05), (2, 0.03), (3, 0.02))
    start_delay_ns: int = 0
    cpu: int = 0
    _orders: np.ndarray = field(init=False, repr=False, compare=False)
    _cdf: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.rate_per_s <= 1e7:
            raise ValueError(f"kernel_noise.rate_per_s must be in (0, 1e7], got {self.rate_per_s}")
        if self.mean_lifetime_ns <= 0:
            raise ValueError(
                f"kernel_noise.mean_lifetime_ns must be > 0, got {self.mean_lifetime_ns}"
            )
        if self.lifetime not in (EXPONENTIAL, LOGNORMAL):
            raise ValueError(
                f"kernel_noise.lifetime must be exponential or lognormal, got {self.lifetime!r}"
            )
        if not 0 < self.sigma <= 10:
            raise ValueError(f"kernel_noise.sigma must be in (0, 10], got {self.sigma}")
        for name in ("long_lived_fraction", "unmovable_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"kernel_noise.{name} must be in [0, 1], got {getattr(self, name)}"
                )
        if (
            not self.order_weights
            or any(not 0 <= o <= 10 or w < 0 for o, w in self.order_weights)
            or sum(w for _, w in self.order_weights) <= 0
        ):
            raise ValueError(
                "kernel_noise.order_weights: orders 0..10 with weights >= 0, not all 0"
            )
        orders = np.array([o for o, _ in self.order_weights], np.int64)
        w = np.array([w for _, w in self.order_weights], np.float64)
        object.__setattr__(self, "_orders", orders)
        object.__setattr__(self, "_cdf", np.cumsum(w) / w.sum())


DRAW = 1024  # events drawn at a time (vectorised; the stream's order is fixed)


class KernelNoise:
    """The kernel_noise runner (see the module docstring)."""

    def __init__(self, config: KernelNoiseConfig, nr_pages: int, rng: np.random.Generator):
        self.config = config
        self.rng = rng
        self.stats = WorkStats()
        self._deaths: list[tuple[int, int, int, int]] = []  # (time, seq, pfn, order)
        self._seq = 0
        self.held_pages = 0
        self.long_lived_pages = 0
        self.stop_ns: int | None = None
        self.finished = False
        self.order = 0
        self._i = DRAW  # index into the drawn events (DRAW: draw more)
        self._t = config.start_delay_ns  # time of the last arrival drawn
        self._draw()

    @property
    def held(self) -> SimpleNamespace:
        return SimpleNamespace(count=self.held_pages)

    def _draw(self) -> None:
        """The next DRAW arrivals: times, orders, types and lifetimes (-1: held for good)."""
        cfg, rng = self.config, self.rng
        gaps = np.maximum(1, rng.exponential(1e9 / cfg.rate_per_s, DRAW).astype(np.int64))
        self._times = self._t + np.cumsum(gaps)
        self._t = int(self._times[-1])
        self._orders = cfg._orders[np.searchsorted(cfg._cdf, rng.random(DRAW), side="right")]
        self._mts = np.where(
            rng.random(DRAW) < cfg.unmovable_fraction, MIGRATE_UNMOVABLE, MIGRATE_RECLAIMABLE
        )
        if cfg.lifetime == EXPONENTIAL:
            lives = rng.exponential(cfg.mean_lifetime_ns, DRAW)
        else:
            mu = np.log(cfg.mean_lifetime_ns) - cfg.sigma**2 / 2  # mean of the lognormal
            lives = rng.lognormal(mu, cfg.sigma, DRAW)
        lives = np.maximum(1, lives.astype(np.int64))
        self._lives = np.where(rng.random(DRAW) < cfg.long_lived_fraction, -1, lives)
        self._i = 0

    def _next_arrival_ns(self) -> int:
        if self._i >= DRAW:
            self._draw()
        return int(self._times[self._i])

    def next_event_ns(self, now_ns: int) -> int | None:
        if self.finished:
            return None
        if self.stop_ns is not None and now_ns >= self.stop_ns:
            return now_ns
        nxt = self._next_arrival_ns()
        if self._deaths:
            nxt = min(nxt, self._deaths[0][0])
        return max(now_ns, nxt)

    def run(self, guest, t0_ns: int, t1_ns: int, work_ns: int) -> None:
        """Every arrival and death before t1, in time order (deaths first on a tie)."""
        end = clip_to_stop(self, t0_ns, t1_ns)
        if end is None:  # finished; what it holds stays allocated (the kernel's)
            return
        t1_ns = end
        while True:
            arrival = self._next_arrival_ns()
            death = self._deaths[0][0] if self._deaths else None
            if death is not None and death < t1_ns and death <= arrival:
                self._free_due(guest, min(t1_ns, arrival + 1))
                continue
            if arrival >= t1_ns:
                return
            self._arrive(guest, t1_ns if death is None else min(t1_ns, death))

    def _arrive(self, guest, before_ns: int) -> None:
        """The run of arrivals of one (order, type) before ``before_ns`` (the next death or
        the epoch end), in one allocation call: the same as one call per arrival."""
        i = self._i
        order, mt = int(self._orders[i]), int(self._mts[i])
        j = i + 1
        while (
            j < DRAW
            and self._times[j] < before_ns
            and self._orders[j] == order
            and self._mts[j] == mt
        ):
            j += 1
        n = j - i
        pfns = guest.alloc(order, mt, n, self.config.cpu)
        got = len(pfns)
        self.stats.alloc_failures += n - got
        pages = 1 << order
        for k in range(got):
            life = int(self._lives[i + k])
            self.held_pages += pages
            self.stats.pages_allocated += pages
            if life < 0:
                self.long_lived_pages += pages
            else:
                death = int(self._times[i + k]) + life
                heapq.heappush(self._deaths, (death, self._seq, int(pfns[k]), order))
                self._seq += 1
        self._i = j

    def _free_due(self, guest, until_ns: int) -> None:
        """Free the deaths before until_ns, consecutive ones of one order in one call."""
        while self._deaths and self._deaths[0][0] < until_ns:
            order = self._deaths[0][3]
            batch = []
            while self._deaths and self._deaths[0][0] < until_ns and self._deaths[0][3] == order:
                batch.append(heapq.heappop(self._deaths)[2])
            guest.free(np.array(batch, np.int64), order, self.config.cpu)
            pages = len(batch) << order
            self.held_pages -= pages
            self.stats.pages_freed += pages


__all__ = ["KernelNoise", "KernelNoiseConfig"]
