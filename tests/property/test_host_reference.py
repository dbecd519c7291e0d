"""A tiny pure-Python reference host, page by page, for differential tests of the numba host.

It keeps one residency, one reported bit (set when a report discards a page the
host held: backed, lazily freed or swapped), one zswap bit and one reference bit per
page in Python lists, plus a "huge" flag and reference bit per granule, and
applies the documented rules literally (no whole-granule shortcuts except what
the rules say about THP). Same clock, same lazy-free scan, same OOM victim rule,
so every observable (page residency, results, swap-out ranges) must match.
"""

from __future__ import annotations

from services.host.core import costs
from services.host.core.config import (
    DISCARD_DISABLED,
    DISCARD_FREE,
    OOM_REFUSE,
    HostConfig,
)

PAGE = 4096
UNBACKED, BACKED, LAZY, SWAPPED = 0, 1, 2, 3


class RefHost:
    def __init__(self, config: HostConfig):
        self.cfg = config
        self.G = config.granule_pages
        self.hugetlb = config.hugetlb
        self.huge_faults = config.hugetlb or config.thp
        zs = config.zswap
        self.zswap_on = zs.enabled
        self.cb = zs.compressed_page_bytes
        self.zcounts = zs.enabled and zs.counts_against_host
        self.zmax = zs.max_pool_bytes
        self.swap_cap = config.swap.capacity_bytes // PAGE
        self.limit = config.limit_bytes
        self.res: list[int] = []
        self.rep: list[bool] = []
        self.zs: list[bool] = []
        self.ref: list[bool] = []
        self.huge: list[bool] = []
        self.gref: list[bool] = []
        self.owner: list[int] = []  # slot per page
        self.guests: list[dict] = []  # slot -> {id, lo, n, mode, stopped}
        self.used: list[int] = []  # pages not unbacked, per granule
        self.pool = self.swap_used = self.zbytes = self.lazy = self.backed = 0
        self.hand = self.lazy_hand = 0
        self.swapped_log: set[int] = set()
        self.splits: dict[int, int] = {}

    # -- placement
    def add_guest(self, gid: int, n: int, mode: str) -> None:
        lo = len(self.res)
        self.guests.append({"id": gid, "lo": lo, "n": n, "mode": mode, "stopped": False})
        slot = len(self.guests) - 1
        self.res += [UNBACKED] * n
        self.rep += [False] * n
        self.zs += [False] * n
        self.ref += [False] * n
        self.owner += [slot] * n
        self.huge += [False] * (n // self.G)
        self.gref += [False] * (n // self.G)
        self.used += [0] * (n // self.G)

    def slot(self, gid):
        return next(k for k, g in enumerate(self.guests) if g["id"] == gid)

    # -- page transitions
    def set_res(self, i: int, new: int, to_zswap: bool = False) -> None:
        old = self.res[i]
        if old == SWAPPED:
            if self.zs[i]:
                self.zbytes -= self.cb
                self.pool -= self.cb if self.zcounts else 0
            else:
                self.swap_used -= 1
        elif old != UNBACKED:
            self.pool -= PAGE
            self.lazy -= old == LAZY
            self.backed -= old == BACKED
        self.used[i // self.G] += (new != UNBACKED) - (old != UNBACKED)
        self.zs[i] = False
        if new == SWAPPED:
            if to_zswap:
                self.zs[i] = True
                self.zbytes += self.cb
                self.pool += self.cb if self.zcounts else 0
            else:
                self.swap_used += 1
        elif new != UNBACKED:
            self.pool += PAGE
            self.lazy += new == LAZY
            self.backed += new == BACKED
        self.res[i] = new
        self.ref[i] = False

    def granule(self, g):
        return range(g * self.G, (g + 1) * self.G)

    def all_unbacked(self, g):
        return self.used[g] == 0

    def split(self, g):
        self.huge[g] = False
        for j in self.granule(g):
            self.ref[j] = self.gref[g]
        self.gref[g] = False
        slot = self.owner[g * self.G]
        self.splits[slot] = self.splits.get(slot, 0) + 1

    # -- reclaim
    def swap_dest(self):
        if self.zswap_on and self.zbytes + self.cb <= self.zmax:
            return 1
        if self.swap_used < self.swap_cap:
            return 2
        return 0

    def reclaim_lazy_one(self, ev):
        total, G = len(self.res), self.G
        i = self.lazy_hand
        while True:
            if i >= total:
                i = 0
            g = i // G
            if self.huge[g] and self.res[g * G] == LAZY:
                for j in self.granule(g):
                    self.set_res(j, UNBACKED)
                self.huge[g] = self.gref[g] = False
                ev["reclaim_lazy"] += G
                self.lazy_hand = (g + 1) * G
                return
            if self.huge[g] or self.all_unbacked(g):
                i = (g + 1) * G
                continue
            if self.res[i] == LAZY:
                self.set_res(i, UNBACKED)
                ev["reclaim_lazy"] += 1
                self.lazy_hand = i + 1
                return
            i += 1

    def clock_one(self, dest, ev) -> bool:
        total, G = len(self.res), self.G
        if self.backed == 0:
            return False
        i = self.hand
        while True:
            if i >= total:
                i = 0
            g = i // G
            if self.huge[g]:
                head = g * G
                if self.res[head] == LAZY:
                    i = head + G
                elif self.gref[g]:
                    self.gref[g] = False
                    i = head + G
                else:
                    self.split(g)
                    i = head
                continue
            if self.all_unbacked(g):
                i = (g + 1) * G
                continue
            if self.res[i] == BACKED:
                if self.ref[i]:
                    self.ref[i] = False
                else:
                    self.set_res(i, SWAPPED, dest == 1)
                    self.swapped_log.add(i)
                    ev["reclaim_zswap" if dest == 1 else "reclaim_disk"] += 1
                    self.hand = i + 1
                    return True
            i += 1

    def reclaim_frames(self, need, ev) -> bool:
        while self.pool + need > self.limit:
            if self.lazy > 0:
                self.reclaim_lazy_one(ev)
                continue
            if self.hugetlb:
                return False
            dest = self.swap_dest()
            if dest == 0 or not self.clock_one(dest, ev):
                return False
        return True

    # -- OOM
    def footprint(self, slot):
        g = self.guests[slot]
        return sum(self.res[j] != UNBACKED for j in range(g["lo"], g["lo"] + g["n"]))

    def victim(self, caller):
        live = [k for k, g in enumerate(self.guests) if not g["stopped"]]
        v = max(live, key=lambda k: (self.footprint(k), -self.guests[k]["id"]))
        return caller if self.footprint(v) == 0 else v

    def stop(self, slot):
        g = self.guests[slot]
        for j in range(g["lo"], g["lo"] + g["n"]):
            self.set_res(j, UNBACKED)
            self.rep[j] = False
        for gg in range(g["lo"] // self.G, (g["lo"] + g["n"]) // self.G):
            self.huge[gg] = self.gref[gg] = False
        g["stopped"] = True

    # -- touches
    def touch(self, gid, starts, npages) -> dict:
        slot = self.slot(gid)
        G, base = self.G, self.guests[slot]["lo"]
        ev = dict.fromkeys(
            [
                "unbacked",
                "backed",
                "lazy",
                "swapped",
                "fault_4k",
                "fault_huge",
                "swapin_disk",
                "swapin_zswap",
                "refault",
                "refault_huge",
                "lazy_reuse",
                "refused",
                "oom",
                "reclaim_disk",
                "reclaim_zswap",
                "reclaim_lazy",
            ],
            0,
        )
        ev["stopped"] = []
        refuse = self.cfg.oom_policy == OOM_REFUSE
        exhausted = False
        names = ("unbacked", "backed", "lazy", "swapped")
        for a0, n in zip(starts, npages, strict=True):
            a, end = base + int(a0), base + int(a0) + int(n)
            i = a
            while i < end:
                g = i // G
                gend = min(end, (g + 1) * G)
                if self.huge[g]:
                    if self.res[g * G] == BACKED:
                        ev["backed"] += gend - i
                    else:
                        ev["lazy"] += gend - i
                        ev["lazy_reuse"] += gend - i
                        for j in self.granule(g):
                            self.set_res(j, BACKED)
                            self.rep[j] = False
                    self.gref[g] = True
                    i = gend
                    continue
                empty = self.all_unbacked(g)
                if empty and self.huge_faults and not exhausted:
                    while True:
                        if self.reclaim_frames(G * PAGE, ev):
                            ok = True
                            break
                        ok = False
                        if not self.hugetlb or refuse:
                            break
                        ev["oom"] += 1
                        v = self.victim(slot)
                        self.stop(v)
                        ev["stopped"].append(self.guests[v]["id"])
                        if v == slot:
                            return ev
                    if ok:
                        refault = sum(self.rep[j] for j in self.granule(g))
                        ev["refault"] += refault
                        ev["refault_huge"] += refault > 0
                        for j in self.granule(g):
                            self.set_res(j, BACKED)
                            self.rep[j] = False
                        self.huge[g] = self.gref[g] = True
                        ev["unbacked"] += gend - i
                        ev["fault_huge"] += 1
                        i = gend
                        continue
                    if self.hugetlb:  # refuse
                        if not exhausted:
                            ev["oom"] += 1
                            exhausted = True
                        ev["refused"] += gend - i
                        i = gend
                        continue
                elif empty and self.hugetlb:
                    ev["refused"] += gend - i
                    i = gend
                    continue
                r = self.res[i]
                if r == BACKED:
                    ev["backed"] += 1
                    self.ref[i] = True
                    i += 1
                    continue
                if r == LAZY:
                    self.set_res(i, BACKED)
                    self.rep[i] = False
                    self.ref[i] = True
                    ev["lazy"] += 1
                    ev["lazy_reuse"] += 1
                    i += 1
                    continue
                if exhausted or not self.reclaim_frames(PAGE, ev):
                    if not refuse:
                        ev["oom"] += 1
                        v = self.victim(slot)
                        self.stop(v)
                        ev["stopped"].append(self.guests[v]["id"])
                        if v == slot:
                            return ev
                        continue  # retry the same page
                    if not exhausted:
                        ev["oom"] += 1
                        exhausted = True
                    ev["refused"] += 1
                    i += 1
                    continue
                if r == UNBACKED:
                    ev["fault_4k"] += 1
                    ev["refault"] += self.rep[i]
                else:
                    ev["swapin_zswap" if self.zs[i] else "swapin_disk"] += 1
                ev[names[r]] += 1
                self.set_res(i, BACKED)
                self.rep[i] = False
                self.ref[i] = True
                i += 1
        return ev

    # -- reports
    def report(self, gid, pfns, orders) -> dict:
        slot = self.slot(gid)
        G, base = self.G, self.guests[slot]["lo"]
        mode = self.guests[slot]["mode"]
        er = dict.fromkeys(["applied", "ignored", "released", "lazied", "swap_freed", "splits"], 0)
        if mode == DISCARD_DISABLED:
            return er
        lazy = mode == DISCARD_FREE and not self.hugetlb
        for p0, order in zip(pfns, orders, strict=True):
            a = base + int(p0)
            end = a + (1 << int(order))
            if self.hugetlb:
                if a % G or end % G:
                    er["ignored"] += 1
                    continue
                er["applied"] += 1
                for g in range(a // G, end // G):
                    if self.huge[g]:
                        for j in self.granule(g):
                            self.set_res(j, UNBACKED)
                            self.rep[j] = True
                        self.huge[g] = self.gref[g] = False
                        er["released"] += G
                continue
            er["applied"] += 1
            i = a
            while i < end:
                g = i // G
                gend = min(end, (g + 1) * G)
                whole = i == g * G and gend == (g + 1) * G
                if self.huge[g]:
                    if whole:
                        backed = self.res[g * G] == BACKED
                        if not lazy:
                            for j in self.granule(g):
                                self.set_res(j, UNBACKED)
                            self.huge[g] = False
                            er["released"] += G
                        elif backed:
                            for j in self.granule(g):
                                self.set_res(j, LAZY)
                            er["lazied"] += G
                        self.gref[g] = False
                        for j in self.granule(g):
                            self.rep[j] = True
                        i = gend
                        continue
                    self.split(g)
                    er["splits"] += 1
                for j in range(i, gend):
                    r = self.res[j]
                    if r == UNBACKED:
                        continue  # the host held nothing: no discard, the mark stays as it was
                    self.rep[j] = True
                    if r == SWAPPED:
                        self.set_res(j, UNBACKED)
                        er["swap_freed"] += 1
                    elif lazy:
                        if r == BACKED:
                            self.set_res(j, LAZY)
                            er["lazied"] += 1
                    else:
                        self.set_res(j, UNBACKED)
                        er["released"] += 1
                i = gend
        return er

    def reclaim(self) -> dict[int, list[tuple[int, int]]]:
        self.reclaim_frames(0, dict.fromkeys(("reclaim_lazy", "reclaim_zswap", "reclaim_disk"), 0))
        live = sorted(i for i in self.swapped_log if self.res[i] == SWAPPED)
        self.swapped_log.clear()
        out: dict[int, list[tuple[int, int]]] = {}
        for i in live:
            g = self.guests[self.owner[i]]
            local = i - g["lo"]
            runs = out.setdefault(g["id"], [])
            if runs and runs[-1][0] + runs[-1][1] == local:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((local, 1))
        return out

    def residency(self, gid) -> list[int]:
        g = self.guests[self.slot(gid)]
        return self.res[g["lo"] : g["lo"] + g["n"]]


def touch_lost_ns(cm: costs.CostModel, ev: dict, gran_pages: int) -> dict[str, int]:
    """Price a reference touch the way the contract says (independent of pool.py)."""
    huge = ev["fault_huge"]
    if gran_pages == costs.HUGE_1G_BYTES // PAGE:
        zero = costs.zero_ns(cm, ev["fault_4k"], 0, huge)
    else:
        zero = costs.zero_ns(cm, ev["fault_4k"], huge)
    return {
        "fault": costs.host_fault_ns(cm, ev["fault_4k"], huge),
        "zero": zero,
        "swapin": costs.swapin_ns(cm, ev["swapin_disk"]),
        "decompress": costs.decompress_ns(cm, ev["swapin_zswap"]),
        "reclaim": costs.swapout_ns(cm, ev["reclaim_disk"])
        + costs.compress_ns(cm, ev["reclaim_zswap"]),
    }


def test_reference_model_basic_release_and_refault():
    cfg = HostConfig(memory_bytes=4 << 20, thp=True)
    ref = RefHost(cfg)
    ref.add_guest(1, 1024, "dontneed")
    ev = ref.touch(1, [0], [1024])
    assert ev["fault_huge"] == 2 and ref.pool == 4 << 20
    er = ref.report(1, [0], [9])
    assert er["released"] == 512 and ref.pool == 2 << 20
    ev = ref.touch(1, [5], [1])
    assert ev["refault"] == 512 and ev["fault_huge"] == 1


def test_reference_model_counts_refaults_only_of_memory_discarded_while_held():
    cfg = HostConfig(memory_bytes=8 << 20, thp=True)
    ref = RefHost(cfg)
    ref.add_guest(1, 2048, "dontneed")
    ref.touch(1, [0], [1])  # granule 0 only
    ref.report(1, [0], [10])  # granules 0 (backed) and 1 (never touched)
    ref.report(1, [0], [10])  # nothing held now: changes nothing
    ev = ref.touch(1, [0], [1024])
    assert (ev["refault"], ev["refault_huge"], ev["fault_huge"]) == (512, 1, 2)
