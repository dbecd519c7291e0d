"""Write seeded synthetic VM memory traces as a Bitbrains GWA-T-12 directory.

The bundled fleet (experiments/traces/ci-fleet/, used by experiments/fleet-replay.yaml)
was made with the defaults:

    python scripts/make_synthetic_traces.py experiments/traces/ci-fleet

and `bench/workloads.py` writes its 1,000-file loader benchmark with ``--files``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.sim.traces import SHAPES, synthetic, write_bitbrains

GIB = 1 << 30
# The bundled fleet: CI runners that build and then sit idle, and a few steadier VMs.
DEFAULT_MIX = ("high_water_idle",) * 4 + ("diurnal", "diurnal", "bursty", "step")


def write_fleet(
    out: Path,
    shapes: tuple[str, ...],
    seed: int,
    memory_bytes: int,
    duration_s: int,
    interval_s: int,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, shape in enumerate(shapes):
        trace = synthetic(shape, seed, i, memory_bytes, duration_s, interval_s)
        path = out / f"vm-{i:04d}.csv"
        write_bitbrains(trace, path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="directory to write vm-NNNN.csv files into")
    ap.add_argument("--seed", type=int, default=2013)
    ap.add_argument("--memory-gib", type=int, default=2)
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--interval-s", type=int, default=300)
    ap.add_argument("--files", type=int, default=None, help="this many files, shapes in turn")
    ap.add_argument("--shape", choices=SHAPES, default=None, help="every file of one shape")
    args = ap.parse_args(argv)
    if args.files is not None or args.shape is not None:
        n = args.files or len(DEFAULT_MIX)
        shapes = tuple(args.shape or SHAPES[i % len(SHAPES)] for i in range(n))
    else:
        shapes = DEFAULT_MIX
    paths = write_fleet(
        args.out,
        shapes,
        args.seed,
        args.memory_gib * GIB,
        int(args.hours * 3600),
        args.interval_s,
    )
    print(f"wrote {len(paths)} traces to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
