"""The ``overcommit serve`` process: what it was asked for, and running
ExperimentService over an :class:`ExperimentManager` until SIGINT or SIGTERM
(split from ``experiment_manager``, which keeps the experiments themselves)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from services.transport.security import ServerTls

from .experiment_manager import SERVE_DIR, ExperimentManager
from .live_metrics import LiveMetrics


@dataclass(frozen=True)
class ServeSettings:
    """What ``overcommit serve`` was asked for (the CLI's flags)."""

    port: int = 50051
    bind: str = "127.0.0.1"
    allow_remote: bool = False
    token: str | None = None
    tls: ServerTls | None = None
    out_dir: str = "runs"
    transport: str = "grpc"
    trace_dir: str | None = None
    metrics: LiveMetrics | None = None
    memory_budget: int | None = None  # bytes (None: half of this machine's memory)


def serve(settings: ServeSettings) -> int:
    """Run ExperimentService until SIGINT or SIGTERM.

    Beyond loopback it needs ``allow_remote``, a token and ``tls``: checked before
    anything starts."""
    from services.transport.security import TokenStore
    from services.transport.server import ServerOptions, serve_until_terminated

    from .experiment_service import start_experiment_server
    from .serve_state import lock_state_dir, size_text

    st = settings
    lock_state_dir(os.path.join(st.out_dir, SERVE_DIR))  # held until this process ends
    tokens = TokenStore(admin_token=st.token) if st.token else None
    options = ServerOptions(
        host=st.bind, port=st.port, allow_remote=st.allow_remote, tls=st.tls, tokens=tokens
    )
    manager = ExperimentManager(
        out_dir=st.out_dir,
        transport=st.transport,
        trace_dir=st.trace_dir,
        metrics=st.metrics,
        memory_budget=st.memory_budget,
    )
    if st.transport == "inprocess":  # compile the kernels now, not in a client's first call
        from .warm import warm_up_kernels

        warm_up_kernels()
    server = start_experiment_server(manager, options, tokens=tokens)
    print(
        f"ExperimentService on {server.address}"
        + (" (bearer token required)" if st.token else "")
        + (" (TLS)" if st.tls else "")
        + f"; memory budget {size_text(manager.memory_budget)}",
        flush=True,
    )
    if manager.metrics is not None:
        print(
            f"metrics: http://{manager.metrics.address}/metrics; "
            f"file_sd targets: {manager.metrics.targets_path}",
            flush=True,
        )
    try:
        serve_until_terminated(server, before_stop=manager.begin_shutdown)
    finally:
        manager.close()
    return 0


__all__ = ["ServeSettings", "serve"]
