"""Golden runs: results frozen so that a restructuring can prove it changed nothing.

For each golden spec the in-process run (with its paired baselines) is reduced to
two things that depend on the spec and seed only:

* ``summary.json`` without ``run_id`` (the run id hashes the resolved spec, so it
  changes whenever a spec field is added, even when no result does);
* a SHA-256 digest of the time series' *contents*: columns in name order (less
  ``run_id``, for the same reason), rows in a canonical order, every value in a
  canonical text form (not the Parquet file's bytes, which depend on the
  writer's version).

``python -m tests.golden.golden --update`` rewrites ``expected/``; a change that is
meant to change results does that in a commit of its own and says why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXPECTED = HERE / "expected"
SPECS = {
    "quickstart": ROOT / "experiments" / "quickstart.yaml",
    "determinism": HERE / "specs" / "determinism.yaml",
    "pressure": HERE / "specs" / "pressure.yaml",
    "workloads": HERE / "specs" / "workloads.yaml",
}


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)
    return str(value)


def timeseries_digest(ts: pd.DataFrame) -> dict[str, object]:
    """Columns, row count and a digest of the values in a canonical order."""
    columns = sorted(c for c in ts.columns if c != "run_id")
    keys = [c for c in ("variant", "run", "time_s", "kind", "entity") if c in columns]
    frame = ts[columns].sort_values(keys, kind="stable").reset_index(drop=True)
    h = hashlib.sha256()
    for col in columns:
        h.update(col.encode() + b"\0")
        h.update("\x1f".join(_cell(v) for v in frame[col].tolist()).encode() + b"\0")
    return {"columns": columns, "rows": len(frame), "sha256": h.hexdigest()}


def golden_outputs(name: str, out_dir: str) -> tuple[dict, dict]:
    """(summary without run_id, time-series digest) of one golden spec, run in-process."""
    from services.sim.runner import run_experiment
    from services.sim.spec import load_spec

    result = run_experiment(load_spec(str(SPECS[name])), out_dir=out_dir, transport="inprocess")
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text(encoding="utf-8"))
    summary.pop("run_id", None)
    ts = pd.read_parquet(Path(result.run_dir) / "timeseries.parquet")
    return summary, timeseries_digest(ts)


def expected(name: str) -> tuple[dict, dict]:
    summary = json.loads((EXPECTED / f"{name}.summary.json").read_text(encoding="utf-8"))
    digest = json.loads((EXPECTED / f"{name}.timeseries.json").read_text(encoding="utf-8"))
    return summary, digest


def write_expected(name: str, summary: dict, digest: dict) -> None:
    EXPECTED.mkdir(exist_ok=True)
    for suffix, data in (("summary", summary), ("timeseries", digest)):
        (EXPECTED / f"{name}.{suffix}.json").write_text(
            json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )


VALIDATION = EXPECTED / "validation-reduced.json"


def validation_outputs() -> dict:
    """The reduced validation (services/sim/validation.py: reduced), JSON-normalised."""
    from services.sim.validation import reduced

    return json.loads(json.dumps(reduced(), sort_keys=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", action="store_true", help="rewrite the expected files")
    ap.add_argument("names", nargs="*", default=[*sorted(SPECS), "validation"])
    args = ap.parse_args()
    changed = []
    if "validation" in args.names:
        got = validation_outputs()
        if args.update:
            VALIDATION.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        elif got != json.loads(VALIDATION.read_text()):
            changed.append("validation")
        print(f"validation: {got['rates']}")
        args.names = [n for n in args.names if n != "validation"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            summary, digest = golden_outputs(name, tmp)
            if args.update:
                write_expected(name, summary, digest)
            elif (summary, digest) != expected(name):
                changed.append(name)
            print(
                f"{name}: {digest['rows']} rows, {len(digest['columns'])} columns, "
                f"sha256 {digest['sha256'][:16]}"
            )
    if changed:
        print("differs from expected:", ", ".join(changed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
