"""Bearer tokens (server interceptor), TLS and mutual TLS, on real servers and channels."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from overcommit.v1 import host_pb2
from services.host.barrier import EpochBarrier
from services.host.directory import HostDirectory
from services.host.servicer import start_host_server
from services.protocol.clients import connect_host
from services.transport.client import RetryPolicy
from services.transport.security import ClientTls, ServerTls, TokenStore
from services.transport.server import GrpcServer, ServerOptions
from tests.contract.certs import Pki
from tests.contract.conftest import (
    EXPERIMENT,
    guest_ops,
    make_host,
    register,
    state_of,
    sync_request,
)

CODE = grpc.StatusCode
ADMIN = "admin-secret"
EXPERIMENT_TOKEN = "experiment-secret"
NO_RETRY = RetryPolicy(max_attempts=1)


def _host_server(options: ServerOptions) -> tuple[GrpcServer, EpochBarrier]:
    endpoint = EpochBarrier(EXPERIMENT, 0, make_host())
    directory = HostDirectory([endpoint, EpochBarrier("other-experiment", 0, make_host())])
    return start_host_server(directory, options), endpoint


@pytest.fixture
def token_server() -> Iterator[GrpcServer]:
    tokens = TokenStore(admin_token=ADMIN, tokens={EXPERIMENT: EXPERIMENT_TOKEN})
    server, _endpoint = _host_server(ServerOptions(tokens=tokens))
    with server:
        with connect_host(server.address, token=ADMIN) as admin:
            register(admin, guest_id=1)
        yield server


@pytest.mark.parametrize(
    ("token", "experiment_header"),
    [
        (None, None),
        (None, EXPERIMENT),
        ("wrong", None),
        ("wrong", EXPERIMENT),
        (EXPERIMENT_TOKEN, None),
        (EXPERIMENT_TOKEN, "other-experiment"),
    ],
)
def test_missing_or_wrong_token_is_unauthenticated_and_changes_nothing(
    token_server: GrpcServer, token: str | None, experiment_header: str | None
) -> None:
    with connect_host(token_server.address, token=ADMIN) as admin:
        before = state_of(admin)
    with connect_host(
        token_server.address,
        token=token,
        experiment_id=experiment_header,
        retry=NO_RETRY,
        timeout_s=5,
    ) as client:
        for call in (
            lambda: state_of(client),
            lambda: client.sync_epoch(sync_request(0, 0, [guest_ops(1, seed=0)])),
            lambda: register(client, guest_id=2),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == CODE.UNAUTHENTICATED
    with connect_host(token_server.address, token=ADMIN) as admin:
        assert state_of(admin) == before


def test_experiment_token_works_for_its_experiment_only(token_server: GrpcServer) -> None:
    with connect_host(
        token_server.address,
        token=EXPERIMENT_TOKEN,
        experiment_id=EXPERIMENT,
        retry=NO_RETRY,
        timeout_s=5,
    ) as client:
        assert client.sync_epoch(sync_request(0, 0, [guest_ops(1, seed=0)])).epoch == 0
        with pytest.raises(grpc.RpcError) as err:
            client.get_host_state(host_pb2.GetHostStateRequest(experiment_id="other-experiment"))
        assert err.value.code() == CODE.PERMISSION_DENIED


def test_health_needs_no_token(token_server: GrpcServer) -> None:
    with grpc.insecure_channel(token_server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _tls_call(server: GrpcServer, tls: ClientTls | None) -> host_pb2.GetHostStateResponse:
    with connect_host(server.address, tls=tls, retry=NO_RETRY, timeout_s=5) as client:
        return state_of(client)


def test_tls_server_accepts_clients_that_trust_its_ca_and_refuses_others(pki: Pki) -> None:
    server, _ = _host_server(ServerOptions(tls=ServerTls(pki.server.cert, pki.server.key)))
    with server:
        assert _tls_call(server, ClientTls(pki.ca.cert)).host_id == 0
        for refused in (ClientTls(pki.other_ca.cert), None):  # wrong CA; plaintext client
            with pytest.raises(grpc.RpcError) as err:
                _tls_call(server, refused)
            assert err.value.code() == CODE.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(pki: Pki) -> None:
    tls = ServerTls(pki.server.cert, pki.server.key, client_ca_pem=pki.ca.cert)
    server, _ = _host_server(ServerOptions(tls=tls))
    with server:
        ok = ClientTls(pki.ca.cert, pki.client.cert, pki.client.key)
        assert _tls_call(server, ok).host_id == 0
        no_cert = ClientTls(pki.ca.cert)
        foreign_cert = ClientTls(pki.ca.cert, pki.other_client.cert, pki.other_client.key)
        for refused in (no_cert, foreign_cert):
            with pytest.raises(grpc.RpcError) as err:
                _tls_call(server, refused)
            assert err.value.code() == CODE.UNAVAILABLE


def test_mutual_tls_and_tokens_together(pki: Pki) -> None:
    tls = ServerTls(pki.server.cert, pki.server.key, client_ca_pem=pki.ca.cert)
    server, _ = _host_server(ServerOptions(tls=tls, tokens=TokenStore(admin_token=ADMIN)))
    client_tls = ClientTls(pki.ca.cert, pki.client.cert, pki.client.key)
    with server:
        with connect_host(server.address, tls=client_tls, token=ADMIN, timeout_s=5) as client:
            assert state_of(client).host_id == 0
        with connect_host(server.address, tls=client_tls, retry=NO_RETRY, timeout_s=5) as client:
            with pytest.raises(grpc.RpcError) as err:
                state_of(client)
            assert err.value.code() == CODE.UNAUTHENTICATED
