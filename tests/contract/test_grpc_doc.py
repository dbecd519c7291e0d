"""docs/grpc.md's session, run as written against a real ``overcommit serve`` (a process
of its own, in-process transport, with a token): a client with no generated code
creates an experiment, drives one of its guests through GuestService on the same port,
and reads the summary. Also: GuestService refuses another experiment's token and an
unknown guest without changing anything."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from services.guest.guest_service import AllocOp, GuestClient
from services.sim.experiment_service import connect_experiments
from services.transport.client import RpcCaller

ROOT = Path(__file__).resolve().parent.parent.parent
TOKEN = "doc-admin-token"


@pytest.fixture
def serve(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.sim.cli", "serve", "--port", "0", "--token", TOKEN,
         "--transport", "inprocess", "--out", str(tmp_path / "runs")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        m = re.search(r"on (\S+:\d+)", line)
        assert m, f"serve printed {line!r}"
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _doc_block() -> str:
    text = (ROOT / "docs" / "grpc.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_documented_session_runs_against_a_real_serve(serve):
    env = {**os.environ, "OVERCOMMIT_ADDRESS": serve, "OVERCOMMIT_TOKEN": TOKEN}
    r = subprocess.run(
        [sys.executable, "-c", _doc_block()], cwd="/", env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "guests: [(0, 262144), (1, 262144)]" in out
    assert "allocated 32 blocks" in out
    reported = int(re.search(r"reported (\d+) MiB", out).group(1))
    assert reported > 900  # nearly all of the free 1 GiB, the 64 MiB freed by the client in it
    backed = int(re.search(r"the host backs (\d+) MiB", out).group(1))
    assert backed < 64  # part of what the client touched was reported and discarded
    assert '{"' in out  # the summary's JSON


def test_guest_service_on_serve_checks_the_experiment_and_the_guest(serve):
    spec = "name: t\nduration: 10s\nhosts: [{name: h, memory: 4GiB}]\nguest_groups: [{name: g, count: 1, memory: 1GiB, workload: {kind: idle}}]\n"
    with connect_experiments(serve, token=TOKEN) as admin:
        eid_a, token_a = admin.create(spec)
        eid_b, _ = admin.create(spec)
    with grpc.insecure_channel(serve) as channel:
        a = GuestClient(channel, RpcCaller(token=token_a, experiment_id=eid_a))
        assert [g.guest_id for g in a.list_guests().guests] == [0]
        before = a.guest_state(0)
        # a's token, b's experiment: refused
        b_with_a = GuestClient(channel, RpcCaller(token=token_a, experiment_id=eid_a))
        b_with_a.experiment_id = eid_b
        with pytest.raises(grpc.RpcError) as e:
            b_with_a.list_guests()
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            a.apply_ops(7, [AllocOp(order=0, migratetype=1, count=1)])
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "guest_id" in e.value.details()
        assert a.guest_state(0) == before


def test_the_bearer_scheme_name_is_case_insensitive(serve):
    """RFC 7235: 'bearer' and 'Bearer' are the same scheme (hostile-client finding)."""
    from overcommit.v1 import experiment_pb2, experiment_pb2_grpc

    with grpc.insecure_channel(serve) as channel:
        stub = experiment_pb2_grpc.ExperimentServiceStub(channel)
        spec = "name: c\nduration: 1s\nhosts: [{name: h, memory: 1GiB}]\nguest_groups: [{name: g, memory: 256MiB, workload: {kind: idle}}]\n"
        for scheme in ("bearer", "BEARER"):
            r = stub.CreateExperiment(
                experiment_pb2.CreateExperimentRequest(spec_yaml=spec),
                metadata=(("authorization", f"{scheme} {TOKEN}"),),
                timeout=60,
            )
            assert r.experiment_id
        with pytest.raises(grpc.RpcError) as e:
            stub.CreateExperiment(
                experiment_pb2.CreateExperimentRequest(spec_yaml=spec),
                metadata=(("authorization", f"bearer not-{TOKEN}"),),
                timeout=60,
            )
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_second_serve_on_the_same_out_is_refused(serve, tmp_path):
    """Two servers on one --out would give the same experiment ids and overwrite each
    other's records: the second is refused before it binds or writes anything."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    second = subprocess.run(
        [sys.executable, "-m", "services.sim.cli", "serve", "--port", "0", "--token", TOKEN,
         "--transport", "inprocess", "--out", str(tmp_path / "runs"), "--metrics-port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert second.returncode == 1, second.stdout + second.stderr
    assert "another overcommit serve uses" in second.stderr
    with connect_experiments(serve, token=TOKEN) as admin:  # the first is untouched
        assert admin.list_experiments() == []
