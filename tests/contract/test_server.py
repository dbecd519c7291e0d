"""Server plumbing: loopback binding, port 0, health, reflection listing, graceful stop."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from services.guest.guest_service import AllocOp, connect_guest, guest_service_binding
from services.host.directory import HostDirectory
from services.host.servicer import host_service_binding
from services.sim.experiment_service import experiment_service_binding
from services.transport.client import RetryPolicy
from services.transport.security import ServerTls, TokenStore
from services.transport.server import MIN_REMOTE_TOKEN_CHARS, ServerOptions, build_server
from tests.contract.doubles import MemoryExperiments, MemoryShard

SERVICES = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "overcommit.v1.ExperimentService",
    "overcommit.v1.GuestService",
    "overcommit.v1.HostService",
]


def _all_services_server(shard: MemoryShard | None = None, **options):
    bindings = [
        host_service_binding(HostDirectory()),
        guest_service_binding(shard or MemoryShard()),
        experiment_service_binding(MemoryExperiments()),
    ]
    return build_server(ServerOptions(**options), bindings)


def test_binds_loopback_port_zero_by_default() -> None:
    server = _all_services_server()
    assert server.host == "127.0.0.1" and server.port > 0
    assert server.address == f"127.0.0.1:{server.port}"
    server.stop(0)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1"])
def test_binding_beyond_loopback_needs_allow_remote(host: str) -> None:
    with pytest.raises(ValueError, match="allow_remote=True"):
        ServerOptions(host=host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1"])
def test_serving_beyond_loopback_needs_a_token_and_tls(host: str, pki) -> None:
    tls = ServerTls(pki.server.cert, pki.server.key)
    tokens = TokenStore(admin_token="t" * MIN_REMOTE_TOKEN_CHARS)
    for missing in ({"tls": tls}, {"tokens": tokens}, {}):
        with pytest.raises(ValueError, match="needs both TLS and a bearer token"):
            ServerOptions(host=host, allow_remote=True, **missing)
    options = ServerOptions(host=host, allow_remote=True, tls=tls, tokens=tokens)
    assert options.tls is tls and options.tokens is tokens
    short = TokenStore(admin_token="t" * (MIN_REMOTE_TOKEN_CHARS - 1))
    with pytest.raises(ValueError, match=f"must have at least {MIN_REMOTE_TOKEN_CHARS} char"):
        ServerOptions(host=host, allow_remote=True, tls=tls, tokens=short)
    ServerOptions(tls=tls, tokens=short)  # on loopback a short token is the user's choice


@pytest.mark.parametrize("token", ["", " ", "\t\n", " lead", "trail "])
def test_a_blank_or_padded_admin_token_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="must not be empty or blank"):
        TokenStore(admin_token=token)


def test_tls_files_that_are_not_pem_are_refused_naming_the_option(pki, tmp_path) -> None:
    cert, key, text = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "hostname"
    cert.write_bytes(pki.server.cert)
    key.write_bytes(pki.server.key)
    text.write_text("myhost\n")
    assert ServerTls.from_files(cert, key).cert_chain_pem == pki.server.cert
    for args, field in (((text, key), "tls_cert"), ((cert, text), "tls_key")):
        with pytest.raises(ValueError, match=f"{field}=.*not a PEM file"):
            ServerTls.from_files(*args)
    with pytest.raises(ValueError, match=r"tls_client_ca=.*cannot read"):
        ServerTls.from_files(cert, key, tmp_path / "missing.pem")


def test_health_reports_serving_for_every_service() -> None:
    with _all_services_server() as server, grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in (
            "",
            "overcommit.v1.HostService",
            "overcommit.v1.GuestService",
            "overcommit.v1.ExperimentService",
        ):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


def test_reflection_lists_services_like_grpcurl() -> None:
    with _all_services_server() as server, grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert sorted(database.get_services()) == SERVICES
        pool = DescriptorPool(database)
        host = pool.FindServiceByName("overcommit.v1.HostService")
        assert [m.name for m in host.methods] == [
            "RegisterGuest",
            "SyncEpoch",
            "SyncEpochs",
            "SyncStream",
            "GetHostState",
        ]
        sync = host.methods_by_name["SyncEpoch"]
        assert sync.input_type.full_name == "overcommit.v1.SyncEpochRequest"
        batch = pool.FindMessageTypeByName("overcommit.v1.ReportBatch")
        assert batch.fields_by_name["pfns"].is_packed


def test_graceful_stop_lets_in_flight_calls_finish_and_refuses_new_ones() -> None:
    shard = MemoryShard()
    shard.gate = threading.Event()
    server = _all_services_server(shard, grace_s=10)
    server.start()
    with connect_guest(server.address, timeout_s=10) as client, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.apply_ops, 1, [AllocOp(order=0, migratetype=1, count=2)])
        assert shard.entered.wait(timeout=10)
        stopped = server.stop_async()
        assert not stopped.is_set()  # the call holds the server open
        with (
            connect_guest(server.address, timeout_s=2, retry=RetryPolicy(max_attempts=1)) as late,
            pytest.raises(grpc.RpcError) as err,
        ):
            late.list_guests()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        shard.gate.set()
        response = in_flight.result(timeout=10)
        assert stopped.wait(timeout=10)
    assert len(response.results[0].pfns) == 2
