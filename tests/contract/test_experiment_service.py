"""ExperimentService over real gRPC against an in-memory manager double."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from overcommit.v1 import experiment_pb2
from services.sim.experiment_service import (
    ExperimentClient,
    ExperimentManagerApi,
    connect_experiments,
    start_experiment_server,
)
from services.transport.security import TokenStore
from tests.contract.doubles import MemoryExperiments

CODE = grpc.StatusCode
SPEC_YAML = "name: contract\nduration_ns: 3000000000\nhosts: 2\n"
ADMIN = "admin-token"


@pytest.fixture
def manager() -> MemoryExperiments:
    return MemoryExperiments()


@pytest.fixture
def served(manager: MemoryExperiments) -> Iterator[tuple[str, ExperimentClient]]:
    assert isinstance(manager, ExperimentManagerApi)
    with (
        start_experiment_server(manager, tokens=TokenStore(admin_token=ADMIN)) as server,
        connect_experiments(server.address, token=ADMIN, timeout_s=10) as client,
    ):
        yield server.address, client


def test_create_advance_run_summary_and_stream(served) -> None:
    address, admin = served
    experiment_id, token = admin.create(SPEC_YAML)
    assert experiment_id == "exp-1" and token
    with connect_experiments(
        address, token=token, experiment_id=experiment_id, timeout_s=10
    ) as own:
        advanced = own.advance(experiment_id, 1_000_000_000)
        assert (advanced.now_ns, advanced.state) == (
            1_000_000_000,
            experiment_pb2.EXPERIMENT_STATE_CREATED,
        )
        done = own.run_to_end(experiment_id)
        assert (done.now_ns, done.state) == (
            3_000_000_000,
            experiment_pb2.EXPERIMENT_STATE_FINISHED,
        )
        summary = own.summary(experiment_id)
        assert summary == {
            "experiment_id": "exp-1",
            "now_ns": 3_000_000_000,
            "hosts": 2,
            "saved_bytes": 4096,
        }
        samples = list(own.stream_samples(experiment_id))
        assert [s.sim_time_ns for s in samples] == [0, 1_000_000_000, 2_000_000_000, 3_000_000_000]
        assert samples[1].entity == "host/0" and dict(samples[1].metrics) == {
            "pool_used_bytes": 1_000_000.0,
            "guests": 2.0,
        }
        assert own.cancel(experiment_id).state == experiment_pb2.EXPERIMENT_STATE_FINISHED


def test_create_from_a_typed_spec_and_cancel(served, manager: MemoryExperiments) -> None:
    _, admin = served
    experiment_id, _ = admin.create({"name": "typed", "duration_ns": 2_000_000_000, "hosts": 1})
    assert manager.specs[experiment_id]["hosts"] == 1
    assert admin.cancel(experiment_id).state == experiment_pb2.EXPERIMENT_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as err:
        admin.advance(experiment_id, 1)
    assert err.value.code() == CODE.FAILED_PRECONDITION
    assert err.value.details().startswith(
        f"experiment_id={experiment_id!r}: experiment was cancelled"
    )


@pytest.mark.parametrize(
    ("call", "code", "details"),
    [
        (
            lambda c: c.create("name: no-duration\n"),
            CODE.INVALID_ARGUMENT,
            "spec.duration_ns is required",
        ),
        (lambda c: c.create("   "), CODE.INVALID_ARGUMENT, "spec_yaml=''"),
        (
            lambda c: c.create({"name": "x", "guest_groups": [{"count": float("nan")}]}),
            CODE.INVALID_ARGUMENT,
            "spec_struct.guest_groups.0.count=nan: not a finite number",
        ),
        (
            lambda c: c.create({"name": "x", "duration_ns": float("-inf")}),
            CODE.INVALID_ARGUMENT,
            "spec_struct.duration_ns=-inf: not a finite number",
        ),
        (lambda c: c.advance("exp-1", 0), CODE.INVALID_ARGUMENT, "duration_ns=0"),
        (lambda c: c.advance("exp-9", 1), CODE.NOT_FOUND, "experiment_id 'exp-9' does not exist"),
        (lambda c: c.summary(""), CODE.INVALID_ARGUMENT, "experiment_id=''"),
        (lambda c: list(c.stream_samples("exp-9")), CODE.NOT_FOUND, "experiment_id 'exp-9'"),
    ],
)
def test_bad_requests(served, manager: MemoryExperiments, call, code, details) -> None:
    _, admin = served
    admin.create(SPEC_YAML)
    with pytest.raises(grpc.RpcError) as err:
        call(admin)
    assert err.value.code() == code and err.value.details().startswith(details), err.value.details()
    assert manager.now_ns == {"exp-1": 0} and manager.state == {"exp-1": "created"}


def test_an_experiment_token_opens_that_experiment_only(served) -> None:
    address, admin = served
    first, token = admin.create(SPEC_YAML)
    second, _ = admin.create(SPEC_YAML)
    with connect_experiments(address, token=token, experiment_id=first, timeout_s=5) as own:
        with pytest.raises(grpc.RpcError) as err:
            own.advance(second, 1)
        assert err.value.code() == CODE.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            own.create(SPEC_YAML)
        assert err.value.code() == CODE.PERMISSION_DENIED
    with connect_experiments(address, token=token, experiment_id=second, timeout_s=5) as forged:
        with pytest.raises(grpc.RpcError) as err:
            forged.advance(second, 1)
        assert err.value.code() == CODE.UNAUTHENTICATED
