"""The embedded Ray cluster that `run` and `serve` start listens on loopback only.

Listening sockets are read from /proc (Linux): /proc/net/tcp{,6} for the address and
inode of every socket in LISTEN state, /proc/<pid>/fd for which process holds it.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

TCP_LISTEN = "0A"


def _children(root: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += parents.get(pid, [])
    return out


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        except OSError:
            continue
    return inodes


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def listening(pids: set[int]) -> list[tuple[str, int]]:
    inodes = _socket_inodes(pids)
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == TCP_LISTEN and inode in inodes:
                host, port = local.split(":")
                out.append((_address(host), int(port, 16)))
    return out


def test_the_embedded_cluster_listens_on_loopback_only():
    from services.sim.backends.ray_cluster import RayBackend

    backend = RayBackend(num_cpus=1)
    try:
        sockets = listening(_children(os.getpid()))
        assert len(sockets) >= 3, f"found too few listening sockets of Ray's processes: {sockets}"
        wide = sorted(s for s in sockets if not _is_loopback(s[0]))
        assert wide == [], f"Ray listens beyond loopback: {wide}"
    finally:
        backend.close()
