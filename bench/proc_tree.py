"""A process tree's members and memory, read from /proc (the benchmarks' memory figures).

``tree_pids`` lists a process and all its descendants (Ray's raylet, workers and
daemons under the driver); ``rss_bytes`` and ``pss_bytes`` sum over such a list.
"""

from __future__ import annotations

import os


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    tree: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(pid))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack += tree.get(pid, [])
    return out


def rss_bytes(pids: list[int]) -> int:
    """RSS summed over ``pids`` (gone ones count nothing)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def pss_bytes(pids: list[int]) -> int:
    """PSS summed over ``pids``: shared pages split between the processes that map them,
    so a checkpoint writer forked from an actor (which shares its pages copy-on-write)
    adds only the pages it really has of its own."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, IndexError, ValueError):
            pass
    return total
