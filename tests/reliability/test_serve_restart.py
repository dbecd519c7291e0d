"""`overcommit serve` stopped (SIGTERM) or killed (SIGKILL) while an experiment is part-way:
the next server lists it as INTERRUPTED; ResumeExperiment (admin token) continues it from
its last checkpoint with a new token, and it finishes with the results of an
uninterrupted run. Real processes, real gRPC."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from overcommit.v1 import experiment_pb2
from services.sim.experiment_service import connect_experiments
from services.sim.runner import run_experiment
from services.sim.spec import load_spec_text

ROOT = Path(__file__).resolve().parent.parent.parent
TOKEN = "restart-admin-token"
SPEC = (ROOT / "tests" / "golden" / "specs" / "determinism.yaml").read_text(encoding="utf-8")
SPEC_CKPT = SPEC + "\ncheckpoint_interval: 2s\n"
INTERRUPTED = experiment_pb2.EXPERIMENT_STATE_INTERRUPTED
CREATED = experiment_pb2.EXPERIMENT_STATE_CREATED
FINISHED = experiment_pb2.EXPERIMENT_STATE_FINISHED


class Serve:
    def __init__(self, out: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.sim.cli", "serve", "--port", "0", "--token", TOKEN,
             "--transport", "inprocess", "--out", str(out)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.preamble: list[str] = []  # what it printed before it served (warnings)
        for _ in range(20):
            line = self.proc.stdout.readline()
            m = re.search(r"on (\S+:\d+)", line)
            if m:
                break
            self.preamble.append(line)
        assert m, f"serve printed {self.preamble!r}"
        self.address = m.group(1)

    def client(self, token: str = TOKEN, experiment_id: str | None = None):
        return connect_experiments(self.address, token=token, experiment_id=experiment_id)

    def stop(self, sig: int) -> str:
        """Stop it; return everything it printed (tokens must never be among it)."""
        self.proc.send_signal(sig)
        rest = self.proc.communicate(timeout=120)[0] or ""
        return "".join(self.preamble) + rest


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return run_experiment(load_spec_text(SPEC), out_dir=str(out), transport="inprocess")


@pytest.mark.parametrize(
    ("sig", "resumes_from"), [(signal.SIGTERM, 5_000_000_000), (signal.SIGKILL, 4_000_000_000)]
)
def test_an_interrupted_experiment_is_listed_and_resumes_to_the_same_results(
    tmp_path, reference, sig, resumes_from
):
    first = Serve(tmp_path)
    try:
        with first.client() as admin:
            experiment_id, token = admin.create(SPEC_CKPT)
        with first.client(token, experiment_id) as mine:
            assert mine.advance(experiment_id, 5_000_000_000).now_ns == 5_000_000_000
    finally:
        first.stop(sig)
    second = Serve(tmp_path)
    try:
        with second.client() as admin:
            listed = admin.list_experiments()
            assert [(e.experiment_id, e.state, e.now_ns) for e in listed] == [
                (experiment_id, INTERRUPTED, resumes_from)
            ]
            # the old token died with the old server
            with second.client(token, experiment_id) as stale, pytest.raises(grpc.RpcError) as e:
                stale.run_to_end(experiment_id)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            resumed = admin.resume(experiment_id)
            assert (resumed.state, resumed.now_ns) == (CREATED, resumes_from)
            with pytest.raises(grpc.RpcError) as e:  # once: it is no longer interrupted
                admin.resume(experiment_id)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with second.client(resumed.token, experiment_id) as mine:
            # an experiment token may not resume (or list) others
            with pytest.raises(grpc.RpcError) as e:
                mine.resume(experiment_id)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert [x.experiment_id for x in mine.list_experiments()] == [experiment_id]
            assert mine.run_to_end(experiment_id, timeout_s=600).state == FINISHED
            summary = mine.summary(experiment_id)
        assert json.loads(json.dumps(reference.summary)) == summary
        # finished: nothing left to resume, no checkpoint kept
        state_dir = tmp_path / "serve"
        assert not any(state_dir.glob("*/checkpoint"))
    finally:
        printed = second.stop(signal.SIGTERM)
    # tokens are never logged (the admin's, the old and the new experiment token)
    assert TOKEN not in printed and token not in printed and resumed.token not in printed
    third = Serve(tmp_path)  # a finished experiment is not listed again
    try:
        with third.client() as admin:
            assert admin.list_experiments() == []
            experiment_id2, _ = admin.create(SPEC_CKPT)  # ids never collide with old ones
            assert experiment_id2 != experiment_id
    finally:
        third.stop(signal.SIGTERM)


def test_a_damaged_record_is_skipped_and_a_damaged_checkpoint_refused(tmp_path):
    first = Serve(tmp_path)
    try:
        with first.client() as admin:
            experiment_id, token = admin.create(SPEC_CKPT)
            doomed, _ = admin.create(SPEC_CKPT)
        with first.client(token, experiment_id) as mine:
            mine.advance(experiment_id, 5_000_000_000)
    finally:
        first.stop(signal.SIGKILL)
    (tmp_path / "serve" / doomed / "experiment.json").write_text("{not json")
    manifest = tmp_path / "serve" / experiment_id / "checkpoint" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    second = Serve(tmp_path)
    try:
        assert any(f"serve state {doomed!r} skipped" in line for line in second.preamble)
        with second.client() as admin:
            listed = admin.list_experiments()
            assert [(e.experiment_id, e.state, e.now_ns) for e in listed] == [
                (experiment_id, INTERRUPTED, 0)
            ]
            with pytest.raises(grpc.RpcError) as e:
                admin.resume(experiment_id)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "manifest" in e.value.details()
            # refused, and still interrupted
            assert admin.list_experiments()[0].state == INTERRUPTED
    finally:
        second.stop(signal.SIGTERM)
