"""The committed generated code matches protos/ (run `make proto` when this fails)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import google.protobuf
import grpc

REPO_ROOT = Path(__file__).resolve().parents[2]


def _gen_protos():
    spec = importlib.util.spec_from_file_location(
        "gen_protos", REPO_ROOT / "scripts" / "gen_protos.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    gen = _gen_protos()
    fresh = gen.generate(tmp_path)
    committed = gen.generated_files(REPO_ROOT)
    assert fresh == committed, "generated file set differs: run `make proto`"
    stale = [str(p) for p in fresh if (tmp_path / p).read_bytes() != (REPO_ROOT / p).read_bytes()]
    assert not stale, f"stale generated code (run `make proto`): {stale}"
    assert len(fresh) == 3 * len(gen.proto_files())


def test_generated_code_accepts_the_pinned_runtimes() -> None:
    from overcommit.v1 import experiment_pb2_grpc, guest_pb2_grpc, host_pb2, host_pb2_grpc

    assert host_pb2.DESCRIPTOR.package == "overcommit.v1"
    assert grpc.__version__ == host_pb2_grpc.GRPC_GENERATED_VERSION
    assert guest_pb2_grpc.GRPC_GENERATED_VERSION == experiment_pb2_grpc.GRPC_GENERATED_VERSION
    major = int(google.protobuf.__version__.split(".")[0])
    assert major >= 7
