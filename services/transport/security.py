"""Transport security: bearer tokens checked by a server interceptor, TLS and mutual TLS.

Tokens: a client sends ``authorization: Bearer <token>`` and, for calls about one
experiment, ``x-overcommit-experiment: <experiment id>``. The server accepts the
call when the token equals the server's admin token, or the token registered for
that experiment in its :class:`TokenStore`; otherwise the call ends with
UNAUTHENTICATED before any servicer code runs. Servicers then check that the
request's ``experiment_id`` matches the header (:func:`check_experiment_binding`),
so an experiment's token opens that experiment only.

TLS: :class:`ServerTls` (certificate chain + key; with ``client_ca_pem`` the server
requires and verifies a client certificate: mutual TLS) and :class:`ClientTls`
(trusted root CA; optional client certificate for mutual TLS).
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.transport.errors import permission_denied

AUTH_HEADER = "authorization"
EXPERIMENT_HEADER = "x-overcommit-experiment"
BEARER_PREFIX = "Bearer "
# Health checks and reflection carry no experiment data; load balancers and
# grpcurl call them without credentials.
DEFAULT_EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class TokenStore:
    """Accepted bearer tokens: one admin token and one token per experiment.

    Thread-safe: an experiment's token is added while servers run.
    """

    def __init__(self, admin_token: str | None = None, tokens: Mapping[str, str] | None = None):
        if admin_token is not None and (
            not admin_token.strip() or admin_token != admin_token.strip()
        ):
            raise ValueError(
                "token: must not be empty or blank, nor start or end with whitespace "
                f"(got {len(admin_token)} characters)"
            )
        self._admin_token = admin_token
        self._tokens = dict(tokens or {})
        self._lock = threading.Lock()

    def set(self, experiment_id: str, token: str) -> None:
        """Accept ``token`` for calls about ``experiment_id``."""
        if not token:
            raise ValueError(f"token for experiment {experiment_id!r} must not be empty")
        with self._lock:
            self._tokens[experiment_id] = token

    def admin_token_length(self) -> int:
        """Characters in the admin token (0: none); servers beyond loopback ask for a long one."""
        return len(self._admin_token or "")

    def remove(self, experiment_id: str) -> None:
        """Stop accepting the experiment's token."""
        with self._lock:
            self._tokens.pop(experiment_id, None)

    def experiment_ids(self) -> frozenset[str]:
        """The experiments that have a token now."""
        with self._lock:
            return frozenset(self._tokens)

    def accepts(self, experiment_id: str | None, token: str | None) -> bool:
        """Whether ``token`` opens calls about ``experiment_id`` (None: no experiment)."""
        if not token:
            return False
        if self._admin_token and hmac.compare_digest(token, self._admin_token):
            return True
        if experiment_id is None:
            return False
        with self._lock:
            expected = self._tokens.get(experiment_id)
        return expected is not None and hmac.compare_digest(token, expected)


def bearer_metadata(
    token: str | None, experiment_id: str | None = None
) -> tuple[tuple[str, str], ...]:
    """Call metadata a client sends: the bearer token and the experiment it is for."""
    metadata: list[tuple[str, str]] = []
    if token:
        metadata.append((AUTH_HEADER, BEARER_PREFIX + token))
    if experiment_id:
        metadata.append((EXPERIMENT_HEADER, experiment_id))
    return tuple(metadata)


def _metadata_value(metadata: Sequence[Any] | None, key: str) -> str | None:
    for item in metadata or ():
        if item[0] == key:
            return item[1]
    return None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls without an accepted bearer token with UNAUTHENTICATED."""

    def __init__(
        self, tokens: TokenStore, exempt_prefixes: Sequence[str] = DEFAULT_EXEMPT_PREFIXES
    ):
        self._tokens = tokens
        self._exempt_prefixes = tuple(exempt_prefixes)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method.startswith(self._exempt_prefixes):
            return continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata
        header = _metadata_value(metadata, AUTH_HEADER)
        token = (
            header[len(BEARER_PREFIX) :]
            if header and header[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX.lower()
            else None  # the scheme name is case-insensitive (RFC 7235)
        )
        experiment_id = _metadata_value(metadata, EXPERIMENT_HEADER)
        if self._tokens.accepts(experiment_id, token):
            return continuation(handler_call_details)
        reason = (
            "missing bearer token"
            if token is None
            else "bearer token not accepted (an experiment's token also needs the "
            f"{EXPERIMENT_HEADER} header naming its experiment)"
        )
        return _refusing_handler(continuation(handler_call_details), reason)


def _refusing_handler(handler: grpc.RpcMethodHandler | None, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that ends with UNAUTHENTICATED."""

    def refuse(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    def refuse_stream(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
        yield  # pragma: no cover - abort raises

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        factory = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(refuse_stream, handler.request_deserializer, handler.response_serializer)
    factory = (
        grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return factory(refuse, handler.request_deserializer, handler.response_serializer)


def experiment_header(context: grpc.ServicerContext) -> str | None:
    """The experiment a call says it is about (``x-overcommit-experiment``), if any."""
    return _metadata_value(context.invocation_metadata(), EXPERIMENT_HEADER)


def check_experiment_binding(context: grpc.ServicerContext | None, experiment_id: str) -> None:
    """PERMISSION_DENIED when the call's experiment header names another experiment.

    A call without the header passed the interceptor with the admin token (or the
    server runs without tokens), so it may address any experiment.
    """
    if context is None:
        return
    header = experiment_header(context)
    if header is not None and header != experiment_id:
        raise permission_denied(
            "experiment_id", experiment_id, f"call is authorised for experiment {header!r} only"
        )


MAX_PEM_BYTES = 1 << 20  # a certificate chain or key file


def read_pem(path: Path, field: str) -> bytes:
    """The bytes of a PEM file, checked to hold a PEM block (``field`` names the option)."""
    try:
        size = path.stat().st_size
        if size > MAX_PEM_BYTES:
            raise ValueError(f"{field}={str(path)!r}: {size} bytes, over {MAX_PEM_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{field}={str(path)!r}: cannot read: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{field}={str(path)!r}: not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class ServerTls:
    """Server certificate (PEM) and key; with ``client_ca_pem``, mutual TLS is required."""

    cert_chain_pem: bytes
    private_key_pem: bytes
    client_ca_pem: bytes | None = None

    @classmethod
    def from_files(cls, cert: Path, key: Path, client_ca: Path | None = None) -> ServerTls:
        """Read the PEM files; one that is not PEM is refused naming it (gRPC itself would
        only fail to bind the port)."""
        return cls(
            read_pem(cert, "tls_cert"),
            read_pem(key, "tls_key"),
            read_pem(client_ca, "tls_client_ca") if client_ca else None,
        )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key_pem, self.cert_chain_pem)],
            root_certificates=self.client_ca_pem,
            require_client_auth=self.client_ca_pem is not None,
        )


@dataclass(frozen=True)
class ClientTls:
    """Trusted root CA (PEM); a client certificate and key for mutual TLS."""

    root_ca_pem: bytes
    cert_chain_pem: bytes | None = None
    private_key_pem: bytes | None = None
    server_name_override: str | None = None  # for certificates issued to another name

    @classmethod
    def from_files(
        cls, root_ca: Path, cert: Path | None = None, key: Path | None = None
    ) -> ClientTls:
        return cls(
            root_ca.read_bytes(),
            cert.read_bytes() if cert else None,
            key.read_bytes() if key else None,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_ca_pem,
            private_key=self.private_key_pem,
            certificate_chain=self.cert_chain_pem,
        )
