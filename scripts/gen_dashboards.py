"""Write the Grafana dashboards (scripts/dashboards.py) to deploy/grafana/dashboards/.

    python scripts/gen_dashboards.py           # (re)write them
    python scripts/gen_dashboards.py --check   # exit 1 naming each stale file

The folder holds generated dashboards only: a JSON file there that is not generated
is removed (and ``--check`` names it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file: scripts/ is on the path, not the root
    sys.path.insert(0, str(REPO_ROOT))

from scripts import dashboards  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the committed files differ from the generated ones",
    )
    ap.add_argument("--dir", type=Path, default=dashboards.DASHBOARD_DIR, help="output folder")
    args = ap.parse_args(argv)
    if args.check:
        stale = dashboards.stale_files(args.dir)
        for name in stale:
            print(f"stale: {args.dir / name} (run scripts/gen_dashboards.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in dashboards.write(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
