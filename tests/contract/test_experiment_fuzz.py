"""ExperimentService under hostile requests (issue 17): every RPC's request built from its
descriptor with random and boundary values, YAML specs mutated from a small valid one and
random text, ids of live, ended and foreign experiments, and random credentials (the
admin token, an experiment's token, another's, none, garbage). Over real gRPC to a real
`serve` manager (in-process backend, tokens on). No internal error ever; a refused
request changes nothing (a digest of every experiment: id, state, simulated time, rows);
the server still serves after each one."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overcommit.v1 import experiment_pb2, experiment_pb2_grpc
from services.sim.backends.inprocess import InProcessBackend
from services.sim.experiment_manager import ExperimentManager
from services.sim.experiment_service import start_experiment_server
from services.transport.security import TokenStore, bearer_metadata
from services.transport.server import ServerOptions
from tests.contract.fuzzing import REFUSALS, fuzz_settings, message

ADMIN = "fuzz-admin"
CALL_TIMEOUT_S = 0.5
SPEC = """name: fz
seed: {seed}
duration: {duration}
sample_interval: 500ms
hosts: [{{name: h, memory: 256MiB, reserve: 16MiB, swap: {{capacity: 128MiB}}}}]
guest_groups:
  - name: g
    count: {count}
    memory: {memory}
    workload: {{kind: memhog, phases: [{{action: grow, target: 0.5, rate: 256MiB, duration: 1s}}]}}
"""
HOSTILE = ["0", "-1", "1e400", "nan", "'x'", "[]", "{}", "null", "99999999999999999999", "1h", "3s"]
REQUESTS = {
    "CreateExperiment": experiment_pb2.CreateExperimentRequest,
    "Advance": experiment_pb2.AdvanceRequest,
    "RunToEnd": experiment_pb2.RunToEndRequest,
    "Cancel": experiment_pb2.CancelRequest,
    "GetSummary": experiment_pb2.GetSummaryRequest,
    "StreamSamples": experiment_pb2.StreamSamplesRequest,
    "ListExperiments": experiment_pb2.ListExperimentsRequest,
    "ResumeExperiment": experiment_pb2.ResumeExperimentRequest,
}

spec_text = st.one_of(
    st.builds(
        SPEC.format,
        seed=st.sampled_from(["1", "2", *HOSTILE]),
        duration=st.sampled_from(["2s", "2s", "1500ms", *HOSTILE]),
        count=st.sampled_from(["1", "2", *HOSTILE]),
        memory=st.sampled_from(["64MiB", "64MiB", *HOSTILE]),
    ),
    st.text(max_size=200),
    st.sampled_from(["", "name: x", "- a\n- b", "{a: *b}", "!!python/object:os.system {}"]),
)


class Fuzzed:
    """A real manager behind a real server with tokens; a few experiments to aim at."""

    def __init__(self, out: str) -> None:
        self.tokens = TokenStore(admin_token=ADMIN)
        self.manager = ExperimentManager(out_dir=out, backend=InProcessBackend())
        self.server = start_experiment_server(
            self.manager, ServerOptions(port=0, max_workers=16), tokens=self.tokens
        )
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = experiment_pb2_grpc.ExperimentServiceStub(self.channel)
        self.live: dict[str, str] = {}  # experiment id -> its token
        warm = self.manager.create(SPEC.format(seed=0, duration="2s", count=1, memory="64MiB"))
        self.manager.run_to_end(warm)  # the numba kernels compile now, not under a deadline
        for seed in (1, 2):
            r = self.stub.CreateExperiment(
                experiment_pb2.CreateExperimentRequest(spec_yaml=SPEC.format(
                    seed=seed, duration="2s", count=1, memory="64MiB")),
                metadata=bearer_metadata(ADMIN), timeout=30,
            )  # fmt: skip
            self.live[r.experiment_id] = r.token
        self.calls = self.refused = 0
        self.codes: dict[str, int] = {}

    def digest(self) -> str:
        h = hashlib.sha256()
        for e in self.manager.list_experiments():
            h.update(repr(sorted(e.items())).encode())
        for exp in list(self.manager._experiments.values()):
            h.update(f"{exp.id}:{len(exp.rows())}".encode())
        return h.hexdigest()

    def send(self, rpc: str, request, credential: tuple[str | None, str | None]) -> None:
        before = self.digest()
        self.calls += 1
        metadata = bearer_metadata(*credential)
        try:
            method = getattr(self.stub, rpc)
            if rpc == "StreamSamples":
                for _ in method(request, timeout=CALL_TIMEOUT_S, metadata=metadata):
                    pass
            else:
                reply = method(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
                if rpc == "CreateExperiment" and reply.experiment_id:
                    self.live[reply.experiment_id] = reply.token
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
            assert err.code() in REFUSALS, (rpc, err.code(), err.details(), request)
            # past its deadline a call is not refused: the server may still do its work
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                assert self.digest() == before, (rpc, "a refused request changed state", request)
            self.refused += 1
        self.codes[code] = self.codes.get(code, 0) + 1
        listed = self.stub.ListExperiments(
            experiment_pb2.ListExperimentsRequest(), metadata=bearer_metadata(ADMIN), timeout=120
        )
        assert len(listed.experiments) <= 64  # the server still serves, and stays bounded

    def close(self) -> None:
        self.channel.close()
        self.manager.begin_shutdown()
        self.server.stop(1.0)
        self.manager.close()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[Fuzzed]:
    f = Fuzzed(str(tmp_path_factory.mktemp("serve")))
    yield f
    f.close()


@st.composite
def cases(draw, fuzzed: Fuzzed):
    rpc = draw(st.sampled_from(sorted(REQUESTS)))
    cls = REQUESTS[rpc]
    live = sorted(fuzzed.live)
    experiment = draw(st.sampled_from(live)) if live else "none"
    fields = draw(message(cls.DESCRIPTOR, experiment=experiment))
    if rpc == "CreateExperiment" and draw(st.booleans()):
        fields = {"spec_yaml": draw(spec_text)}
    if rpc == "Advance" and draw(st.booleans()):
        fields["duration_ns"] = draw(st.sampled_from([1, 500_000_000, 10**9, 2**62]))
    token = draw(st.sampled_from(["admin", "own", "other", "none", "garbage"]))
    own = fuzzed.live.get(fields.get("experiment_id", ""), None)
    credential = {
        "admin": (ADMIN, None),
        "own": (own, fields.get("experiment_id")) if own else (ADMIN, None),
        "other": (fuzzed.live[live[0]], live[0]) if live else (None, None),
        "none": (None, None),
        "garbage": ("x" * 40, draw(st.sampled_from(["", "zz", "fz-1"]))),
    }[token]
    return rpc, cls(**fields), credential


FUZZ = fuzz_settings(2500)


@FUZZ
@given(data=st.data())
def test_experiment_requests_never_crash_and_refusals_change_nothing(fuzzed, data):
    fuzzed.send(*data.draw(cases(fuzzed)))


def test_the_fuzz_reached_acceptance_and_refusal(fuzzed):
    if not fuzzed.calls:

        @settings(FUZZ, max_examples=300)
        @given(data=st.data())
        def batch(data):
            fuzzed.send(*data.draw(cases(fuzzed)))

        batch()
    print(f"{fuzzed.calls} requests, {fuzzed.refused} refused: {fuzzed.codes}")
    assert 0 < fuzzed.refused < fuzzed.calls
    assert fuzzed.codes.get("OK", 0) > 0 and fuzzed.codes.get("UNAUTHENTICATED", 0) > 0
