"""Build, run and stop a gRPC server: loopback by default, health, reflection, limits.

A server is built apart from being run, so tests bind port 0 and read the port
back::

    server = build_server(ServerOptions(), [host_service_binding(directory)])
    with server:                     # start(); stop(grace) in finally
        channel = grpc.insecure_channel(server.address)

:func:`build_server` binds ``127.0.0.1`` unless told otherwise; any other address
needs ``allow_remote=True`` and both TLS and a token store: a server never serves
beyond loopback in clear text or without authentication. Every server also serves the standard health service
(``grpc.health.v1``, SERVING for each service and for ""), and server reflection,
so ``grpcurl -plaintext 127.0.0.1:PORT list`` works. Messages over
``max_message_bytes`` are refused with RESOURCE_EXHAUSTED by gRPC itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.transport.decode_guard import DecodeGuard
from services.transport.security import BearerTokenInterceptor, ServerTls, TokenStore

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
MIN_REMOTE_TOKEN_CHARS = 16  # an admin token served beyond loopback
_TLS_HINT = " (with TLS: are the certificate chain and the private key a matching pair?)"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # far above one epoch's message (~100 KiB)
# Every shard's SyncEpoch holds a worker thread until its epoch is applied, so a
# host needs more workers than shards.
DEFAULT_MAX_WORKERS = 32
DEFAULT_GRACE_S = 5.0  # in-flight calls get this long to finish on stop


DEFAULT_MAX_CONCURRENT_RPCS = 256
# Per connection: at most this many streams open at once; keepalive pings from the
# server find dead peers (every 2 minutes, 20 s to answer), and a client pinging more
# often than every 10 s without data is sent GOAWAY after 2 strikes.
SERVER_CHANNEL_LIMITS = (
    ("grpc.max_concurrent_streams", 100),
    ("grpc.keepalive_time_ms", 120_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
)


@dataclass(frozen=True)
class ServiceBinding:
    """One servicer to serve: ``add(servicer, server)`` is the generated ``add_*_to_server``."""

    name: str  # full service name, e.g. "overcommit.v1.HostService"
    add: Callable[[Any, grpc.Server], None]
    servicer: Any


@dataclass(frozen=True)
class ServerOptions:
    """Where and how to serve. Constructing one only validates it."""

    host: str = LOOPBACK
    port: int = 0  # 0: the kernel picks a free port; read it from GrpcServer.port
    allow_remote: bool = False  # required to bind anything but loopback
    max_workers: int = DEFAULT_MAX_WORKERS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    tls: ServerTls | None = None
    tokens: TokenStore | None = None  # None: no token check
    reflection: bool = True
    grace_s: float = DEFAULT_GRACE_S
    interceptors: tuple[grpc.ServerInterceptor, ...] = field(default_factory=tuple)
    # calls in progress or queued at once; more are refused with RESOURCE_EXHAUSTED
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK_NAMES:
            if not self.allow_remote:
                raise ValueError(
                    f"host={self.host!r}: binding beyond loopback needs allow_remote=True"
                )
            if self.tls is None or self.tokens is None:
                raise ValueError(
                    f"host={self.host!r}: serving beyond loopback needs both TLS and a bearer "
                    "token (a token alone would cross the network in clear text)"
                )
            if 0 < self.tokens.admin_token_length() < MIN_REMOTE_TOKEN_CHARS:
                raise ValueError(
                    f"host={self.host!r}: a bearer token served beyond loopback must have at "
                    f"least {MIN_REMOTE_TOKEN_CHARS} characters "
                    f"(got {self.tokens.admin_token_length()})"
                )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: must be in 0..65535")
        if self.max_workers < 1:
            raise ValueError(f"max_workers={self.max_workers}: must be >= 1")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes={self.max_message_bytes}: must be >= 1024")
        if self.max_concurrent_rpcs < 1:
            raise ValueError(f"max_concurrent_rpcs={self.max_concurrent_rpcs}: must be >= 1")


class GrpcServer:
    """A built, bound gRPC server. ``start()``/``stop()``, or use it as a context manager."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        host: str,
        health_servicer: health.HealthServicer,
        service_names: Sequence[str],
        grace_s: float,
    ):
        self.server = server
        self.port = port
        self.host = host
        self.health = health_servicer
        self.service_names = tuple(service_names)
        self.grace_s = grace_s

    @property
    def address(self) -> str:
        """``host:port`` to dial."""
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        self.server.start()
        for name in ("", *self.service_names):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight calls finish (up to grace)."""
        self.stop_async(grace_s).wait()

    def stop_async(self, grace_s: float | None = None) -> threading.Event:
        """Begin :meth:`stop`; the event is set once every in-flight call has ended."""
        self.health.enter_graceful_shutdown()
        return self.server.stop(self.grace_s if grace_s is None else grace_s)

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout_s)

    def __enter__(self) -> GrpcServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def build_server(options: ServerOptions, services: Sequence[ServiceBinding]) -> GrpcServer:
    """Create the server, add the services, health and reflection, and bind the port."""
    interceptors = [*options.interceptors, DecodeGuard()]  # innermost: wraps the handler
    if options.tokens is not None:
        interceptors.insert(0, BearerTokenInterceptor(options.tokens))
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=options.max_workers, thread_name_prefix="grpc-server"
        ),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *SERVER_CHANNEL_LIMITS,
        ],
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
    )
    for binding in services:
        binding.add(binding.servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.name for b in services]
    if options.reflection:
        reflection.enable_server_reflection(
            (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    address = f"{options.host}:{options.port}"
    if ":" in options.host.strip("[]"):
        address = f"[{options.host.strip('[]')}]:{options.port}"
    try:
        if options.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, options.tls.credentials())
    except RuntimeError as exc:
        raise OSError(f"cannot bind {address}: {exc}{_TLS_HINT if options.tls else ''}") from exc
    if port == 0:
        raise OSError(f"cannot bind {address}{_TLS_HINT if options.tls else ''}")
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return GrpcServer(server, port, options.host, health_servicer, names, options.grace_s)


def serve_until_terminated(
    server: GrpcServer, before_stop: Callable[[], None] | None = None
) -> None:
    """Run ``server`` in the foreground until SIGINT or SIGTERM; stop gracefully in finally.

    ``before_stop`` runs first on the way out (e.g. to end long-running streams, so the
    graceful stop does not wait for them)."""
    import signal

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    server.start()
    try:
        server.wait_for_termination()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if before_stop is not None:
            before_stop()
        server.stop()
