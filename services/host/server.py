"""Serve HostService over gRPC, and the matching client.

::

    directory = HostDirectory([HostEndpoint("exp-1", 0, Host(0, config))])
    with start_host_server(directory, ServerOptions(port=0)) as server:
        client = connect_host(server.address, token=..., experiment_id="exp-1")
        client.register_guest(host_pb2.RegisterGuestRequest(...))
        client.sync_epoch(build_sync_request(...))

The client retries UNAVAILABLE (every HostService call is idempotent) and puts a
deadline on every call; SyncEpoch's deadline also bounds how long the host waits
for the other shards of the epoch.
"""

from __future__ import annotations

import grpc

from overcommit.v1 import host_pb2, host_pb2_grpc
from services.host.transport import HostDirectory, host_service_binding
from services.transport.client import (
    DEFAULT_TIMEOUT_S,
    ChannelOptions,
    RetryPolicy,
    RpcCaller,
    make_channel,
)
from services.transport.security import ClientTls
from services.transport.server import GrpcServer, ServerOptions, ServiceBinding, build_server


def start_host_server(directory: HostDirectory, options: ServerOptions | None = None,
                      extra_services: tuple[ServiceBinding, ...] = ()) -> GrpcServer:
    """Build a server for ``directory`` (bound, not started; use ``with`` or ``start()``)."""
    return build_server(options or ServerOptions(),
                        [host_service_binding(directory), *extra_services])


class HostClient:
    """HostService over a channel. Errors are ``grpc.RpcError`` (``.code()``, ``.details()``)."""

    def __init__(self, channel: grpc.Channel, caller: RpcCaller | None = None):
        self.channel = channel
        self.stub = host_pb2_grpc.HostServiceStub(channel)
        self.caller = caller or RpcCaller()

    def register_guest(self, request: host_pb2.RegisterGuestRequest,
                       timeout_s: float | None = None) -> host_pb2.RegisterGuestResponse:
        return self.caller.unary(self.stub.RegisterGuest, request, idempotent=True,
                                 timeout_s=timeout_s)

    def sync_epoch(self, request: host_pb2.SyncEpochRequest,
                   timeout_s: float | None = None) -> host_pb2.SyncEpochResponse:
        return self.caller.unary(self.stub.SyncEpoch, request, idempotent=True,
                                 timeout_s=timeout_s)

    def get_host_state(self, request: host_pb2.GetHostStateRequest,
                       timeout_s: float | None = None) -> host_pb2.GetHostStateResponse:
        return self.caller.unary(self.stub.GetHostState, request, idempotent=True,
                                 timeout_s=timeout_s)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> HostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_host(target: str, *, tls: ClientTls | None = None, token: str | None = None,
                 experiment_id: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retry: RetryPolicy | None = None) -> HostClient:
    """A HostClient for ``target`` ("127.0.0.1:PORT") with deadline, retries and token."""
    channel = make_channel(ChannelOptions(target, tls))
    return HostClient(channel, RpcCaller(token=token, experiment_id=experiment_id,
                                         timeout_s=timeout_s, retry=retry))
