"""What ``overcommit serve`` keeps and may take, beside its experiments' records: its
memory budget (what the simulations of the experiments that have not ended may need
in all, estimated from their specs before they run) and the highest experiment number
it gave."""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.transport.errors import resource_exhausted
from services.units import PAGE_SIZE

from .run_files import write_text_file
from .trace_groups import guest_memory

# OUT/serve/.last-number: the highest experiment number given so far, so that numbers
# are never reused once the records of ended experiments are removed
LAST_NUMBER_FILE = ".last-number"

# The server's memory budget: what the simulations of the experiments that have not
# ended may need in all, estimated from their specs (measured at the scale experiment:
# under 9 MiB per 4 GiB guest all-in, i.e. about 9 B per guest page, and tens of KiB
# per guest). Default: half of this machine's memory (``serve --memory-budget``).
BYTES_PER_GUEST_PAGE = 10
BYTES_PER_GUEST = 64 << 10


def footprint_bytes(spec, traces: Mapping[int, list] | None = None) -> int:
    """The memory one simulation of ``spec`` needs, estimated (see BYTES_PER_GUEST_PAGE);
    a trace group sized by its traces counts them when ``traces`` has them, else its
    declared count and memory. Baselines run one after another, after the run: one
    simulation at a time."""
    pages = guests = 0
    for gi, group in enumerate(spec.guest_groups):
        if traces is not None and gi in traces:
            sizes = [guest_memory(group, t) for t in traces[gi]]
        else:
            sizes = [group.memory or 0] * group.declared_count
        pages += sum(sizes) // PAGE_SIZE
        guests += len(sizes)
    return pages * BYTES_PER_GUEST_PAGE + guests * BYTES_PER_GUEST


def default_memory_budget() -> int:
    """Half of this machine's memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def check_fits(footprint: int, left: int, budget: int) -> None:
    """RESOURCE_EXHAUSTED naming ``guest_groups`` unless ``footprint`` fits in ``left``."""
    if footprint > left:
        raise resource_exhausted(
            "guest_groups",
            f"{footprint / 2**30:.2f} GiB",
            f"the experiment's simulation would need about that much of the server's "
            f"memory ({BYTES_PER_GUEST_PAGE} B per guest page, "
            f"{BYTES_PER_GUEST >> 10} KiB per guest); {max(0, left) / 2**30:.2f} GiB "
            f"of its budget of {budget / 2**30:.2f} GiB is left (finish or cancel an "
            "experiment, or start serve with a larger --memory-budget)",
        )


def read_last_number(state_dir: str) -> int:
    """The highest experiment number a server on this OUT gave (0: none, or unreadable:
    the records still give the numbers they hold)."""
    try:
        with open(os.path.join(state_dir, LAST_NUMBER_FILE), "rb") as f:
            text = f.read(32).decode("ascii").strip()
        return int(text) if text.isdigit() and len(text) < 20 else 0
    except (OSError, UnicodeDecodeError):
        return 0


def write_last_number(state_dir: str, number: int) -> None:
    os.makedirs(state_dir, exist_ok=True)
    write_text_file(os.path.join(state_dir, LAST_NUMBER_FILE), f"{number}\n")
