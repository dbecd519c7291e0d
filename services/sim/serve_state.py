"""What ``overcommit serve`` keeps and may take, beside its experiments' records: its
memory budget (what the simulations of the experiments that have not ended may need
in all, estimated from their specs before they run) and the highest experiment number
it gave."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.transport.errors import resource_exhausted
from services.units import PAGE_SIZE

from .run_files import write_text_file
from .trace_groups import guest_memory

# OUT/serve/.last-number: the highest experiment number given so far, so that numbers
# are never reused once the records of ended experiments are removed
LAST_NUMBER_FILE = ".last-number"
MAX_NUMBER_DIGITS = 40  # an experiment number read back (ids never wrap around)
# OUT/serve/.lock: held (flock) by the one server that uses this OUT
LOCK_FILE = ".lock"

# The server's memory budget: what the experiments may need in all, estimated from
# their specs. Measured: under 9 MiB per 4 GiB guest all-in at the scale experiment
# (about 9 B per guest page, tens of KiB per guest); about 18 KiB per host (10,000
# hosts: 175 MiB); about 1 KB per time-series row kept (1,000 hosts x 101 samples:
# 93 MiB). Default: half of this machine's memory (``serve --memory-budget``).
BYTES_PER_GUEST_PAGE = 10
BYTES_PER_GUEST = 64 << 10
BYTES_PER_HOST = 32 << 10
BYTES_PER_ROW = 1 << 10


@dataclass(frozen=True)
class Footprint:
    """One experiment's share of the budget: ``sim``, its simulation while it runs
    (baselines run one after another, after the run: one simulation at a time), and
    ``rows``, its samples, kept until the server forgets it (an ended experiment
    still holds them)."""

    sim: int
    rows: int

    @property
    def running(self) -> int:
        return self.sim + self.rows


def footprint_bytes(spec, traces: Mapping[int, list] | None = None) -> Footprint:
    """The memory an experiment of ``spec`` needs, estimated (see BYTES_PER_GUEST_PAGE);
    a trace group sized by its traces counts them when ``traces`` has them, else its
    declared count and memory."""
    pages = guests = 0
    for gi, group in enumerate(spec.guest_groups):
        if traces is not None and gi in traces:
            sizes = [guest_memory(group, t) for t in traces[gi]]
        else:
            sizes = [group.memory or 0] * group.declared_count
        pages += sum(sizes) // PAGE_SIZE
        guests += len(sizes)
    hosts = sum(h.count for h in spec.hosts)
    samples = spec.duration // spec.sample_interval + 1
    rows = samples * (hosts + len(spec.guest_groups)) * (1 + len(spec.compare))
    return Footprint(
        sim=pages * BYTES_PER_GUEST_PAGE + guests * BYTES_PER_GUEST + hosts * BYTES_PER_HOST,
        rows=rows * BYTES_PER_ROW,
    )


def default_memory_budget() -> int:
    """Half of this machine's memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def size_text(nbytes: int) -> str:
    """Bytes for a message: GiB, or MiB below one GiB."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def check_fits(footprint: int, left: int, budget: int) -> None:
    """RESOURCE_EXHAUSTED naming ``guest_groups`` unless ``footprint`` fits in ``left``."""
    if footprint > left:
        raise resource_exhausted(
            "guest_groups",
            size_text(footprint),
            f"the experiment would need about that much of the server's memory "
            f"({BYTES_PER_GUEST_PAGE} B per guest page, {BYTES_PER_GUEST >> 10} KiB per "
            f"guest, {BYTES_PER_HOST >> 10} KiB per host, {BYTES_PER_ROW} B per sample "
            f"row); {size_text(max(0, left))} of its budget of {size_text(budget)} is left "
            "(cancel an experiment, or start serve with a larger --memory-budget)",
        )


def read_last_number(state_dir: str) -> int:
    """The highest experiment number a server on this OUT gave (0: none, or unreadable:
    the records still give the numbers they hold)."""
    try:
        with open(os.path.join(state_dir, LAST_NUMBER_FILE), "rb") as f:
            text = f.read(32).decode("ascii").strip()
        return int(text) if text.isdigit() and len(text) <= MAX_NUMBER_DIGITS else 0
    except (OSError, UnicodeDecodeError):
        return 0


def write_last_number(state_dir: str, number: int) -> None:
    os.makedirs(state_dir, exist_ok=True)
    write_text_file(os.path.join(state_dir, LAST_NUMBER_FILE), f"{number}\n")


def recorded_footprint(value: Any, from_spec: Footprint) -> Footprint:
    """The footprint a record keeps, never below the spec's own estimate (a record may
    predate the field, or have been edited)."""
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
        return from_spec
    return Footprint(max(value[0], from_spec.sim), max(value[1], from_spec.rows))


MAX_DIR_NAME = 64  # services.sim.run_files: the longest path component it builds


def dir_name(experiment_id: str) -> str:
    """The experiment's directory under OUT/serve: its id when that is a safe name,
    else a digest of it (an id can be longer than a path component may be)."""
    if len(experiment_id) <= MAX_DIR_NAME and not experiment_id.startswith("."):
        return experiment_id
    return "experiment-" + hashlib.sha256(experiment_id.encode()).hexdigest()[:32]


def lock_state_dir(state_dir: str) -> int:
    """Take OUT/serve/ for this process (an exclusive ``flock`` on its .lock file, let go
    when the process ends): two servers on one OUT would give the same experiment ids
    and overwrite each other's records. RuntimeError if another process holds it.
    Returns the file descriptor, to be kept open."""
    import fcntl

    os.makedirs(state_dir, exist_ok=True)
    fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another process holds it
        os.close(fd)
        raise RuntimeError(
            f"out: another overcommit serve uses {os.path.dirname(state_dir) or '.'} (it holds "
            f"{os.path.join(state_dir, LOCK_FILE)}); give this one another --out"
        ) from None
    except OSError:  # a file system without locks (some NFS): served unlocked
        pass
    return fd
