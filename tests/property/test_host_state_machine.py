"""Hypothesis state machine over the host: random placements, reports, touches and reclaim.

Small hosts (a few MiB) so pressure, swap, zswap and OOM happen often. After every
step: `check_invariants()` and a differential comparison with the pure-Python
reference host (tests/property/test_host_reference.py): per-page residency, the
pool, swap and zswap usage, and every field of each result.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from services.host.core.config import (
    BACKING_ANON,
    BACKING_HUGETLB_2M,
    DISCARD_MODES,
    OOM_POLICIES,
    HostConfig,
    SwapConfig,
    ZswapConfig,
)
from services.host.core.host import Host
from tests.property.test_host_reference import RefHost, touch_lost_ns

GRAN = 512
PAGE = 4096


@st.composite
def host_configs(draw):
    backing = draw(st.sampled_from([BACKING_ANON, BACKING_ANON, BACKING_HUGETLB_2M]))
    zswap_on = draw(st.booleans())
    return HostConfig(
        # hugetlbfs needs room for one 2 MiB page after the reserve.
        memory_bytes=draw(st.integers(2 if backing == BACKING_ANON else 5, 8)) * GRAN * PAGE // 2,
        reserve_bytes=draw(st.sampled_from([0, 64 * PAGE])),
        backing=backing,
        thp=draw(st.booleans()),
        swap=SwapConfig(capacity_bytes=draw(st.sampled_from([0, 256, 1024, 4096])) * PAGE),
        zswap=ZswapConfig(
            enabled=zswap_on,
            compression_ratio=draw(st.sampled_from([1.5, 2.63, 4.0])),
            max_pool_bytes=draw(st.sampled_from([64, 512])) * PAGE,
            counts_against_host=draw(st.booleans()),
        ),
        oom_policy=draw(st.sampled_from(OOM_POLICIES)),
        debug_checks=False,
    )


class HostMachine(RuleBasedStateMachine):
    @initialize(
        config=host_configs(),
        guests=st.lists(
            st.tuples(st.integers(1, 4), st.sampled_from(DISCARD_MODES)), min_size=1, max_size=3
        ),
    )
    def setup(self, config, guests):
        self.host = Host(7, config)
        self.ref = RefHost(config)
        self.sizes = {}
        for gid, (ngran, mode) in enumerate(guests, start=10):
            self.host.add_guest(gid, ngran * GRAN, mode)
            self.ref.add_guest(gid, ngran * GRAN, mode)
            self.sizes[gid] = ngran * GRAN

    def _gid(self, data):
        return data.draw(st.sampled_from(sorted(self.sizes)))

    @rule(data=st.data())
    def touch(self, data):
        gid = self._gid(data)
        n = self.sizes[gid]
        runs = data.draw(
            st.lists(
                st.integers(0, n - 1).flatmap(
                    lambda s: st.tuples(st.just(s), st.integers(1, min(n - s, 700)))
                ),
                min_size=1,
                max_size=4,
            )
        )
        starts = np.array([r[0] for r in runs], np.int64)
        npages = np.array([r[1] for r in runs], np.int64)
        if self.host.is_stopped(gid):
            with pytest.raises(ValueError, match=str(gid)):
                self.host.apply_touch(gid, starts, npages)
            return
        got = self.host.apply_touch(gid, starts, npages)
        ev = self.ref.touch(gid, starts.tolist(), npages.tolist())
        assert got.prior_pages == {k: ev[k] for k in ("unbacked", "backed", "lazy", "swapped")}
        assert got.refused_pages == ev["refused"]
        assert got.refault_pages == ev["refault"]
        assert got.refault_huge_faults == ev["refault_huge"]
        assert got.lazy_reuse_pages == ev["lazy_reuse"]
        assert got.oom_events == ev["oom"]
        assert got.stopped_guests == tuple(ev["stopped"])
        assert got.lost_ns == touch_lost_ns(
            self.host.config.costs, ev, self.host.config.granule_pages
        )

    @rule(data=st.data())
    def report(self, data):
        gid = self._gid(data)
        n = self.sizes[gid]
        ranges = data.draw(
            st.lists(
                st.integers(0, 10).flatmap(
                    lambda o: st.tuples(
                        st.integers(0, max(0, n // (1 << o) - 1)).map(lambda k, o=o: k << o),
                        st.just(o),
                    )
                ),
                max_size=6,
            ).filter(lambda rs: all(p + (1 << o) <= n for p, o in rs))
        )
        pfns = np.array([r[0] for r in ranges], np.int64)
        orders = np.array([r[1] for r in ranges], np.int64)
        if self.host.is_stopped(gid):
            with pytest.raises(ValueError, match=str(gid)):
                self.host.apply_report(gid, pfns, orders)
            return
        got = self.host.apply_report(gid, pfns, orders)
        er = self.ref.report(gid, pfns.tolist(), orders.tolist())
        assert (
            got.ranges_applied,
            got.ranges_ignored,
            got.released_pages,
            got.lazy_pages,
            got.swap_freed_pages,
            got.thp_splits,
        ) == (
            er["applied"],
            er["ignored"],
            er["released"],
            er["lazied"],
            er["swap_freed"],
            er["splits"],
        )
        assert got.latency_ns >= self.host.config.costs.report_exit_ns

    @precondition(lambda self: hasattr(self, "host"))
    @rule()
    def reclaim(self):
        got = self.host.reclaim()
        want = self.ref.reclaim()
        got_runs = {
            gid: list(zip(s.tolist(), n.tolist(), strict=True)) for gid, (s, n) in got.items()
        }
        assert got_runs == want

    @invariant()
    def consistent(self):
        if not hasattr(self, "host"):
            return
        self.host.check_invariants()
        hc = self.host.host_counters()
        assert hc["pool_used_bytes"] == self.ref.pool
        assert hc["swap_used_bytes"] == self.ref.swap_used * PAGE
        assert hc["zswap_pool_bytes"] == self.ref.zbytes
        for gid in self.sizes:
            assert np.array_equal(self.host.residency(gid), np.array(self.ref.residency(gid)))
            assert self.host.is_stopped(gid) == self.ref.guests[self.ref.slot(gid)]["stopped"]


HostMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestHostMachine = HostMachine.TestCase
