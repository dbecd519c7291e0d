"""Generate the Python protobuf and gRPC code for ``protos/overcommit/v1``.

One script, run by ``make proto``. It calls grpcio-tools' bundled protoc and writes
``*_pb2.py``, ``*_pb2.pyi`` (typing stubs) and ``*_pb2_grpc.py`` under
``overcommit/v1/`` at the repository root, so ``import overcommit.v1.host_pb2``
works. The generated files are committed; ``tests/contract/test_protos_fresh.py``
regenerates into a temporary directory and fails when they are stale.

Usage: python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PACKAGE_DIR = Path("overcommit") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_DOCS = {
    Path("overcommit"): '"""Generated wire protocol of overcommit-sim (see protos/)."""\n',
    PACKAGE_DIR: '"""Generated code for protos/overcommit/v1; run `make proto` to refresh."""\n',
}


def proto_files() -> list[Path]:
    """The .proto sources, sorted, relative to ``protos/``."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir``; return the generated files, relative to it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in proto_files()),
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    for package, doc in INIT_DOCS.items():
        init = out_dir / package / "__init__.py"
        if not init.exists():
            init.write_text(doc)
    return generated_files(out_dir)


def generated_files(root: Path) -> list[Path]:
    """Generated (not hand-written) files under ``root/overcommit/v1``, sorted."""
    return sorted(
        p.relative_to(root)
        for p in (root / PACKAGE_DIR).glob("*")
        if p.name.endswith(GENERATED_SUFFIXES)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT, help="output root (default: repo root)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
