"""ExperimentService: the experiment manager's gRPC face, over a plain Protocol.

The servicer translates messages to calls on :class:`ExperimentManagerApi`, which
the orchestration layer implements; it holds no experiment logic itself.

Errors: the manager raises ``KeyError`` for an unknown experiment (NOT_FOUND),
``ValueError`` for a bad spec or duration (INVALID_ARGUMENT), or a
:class:`~services.transport.errors.StatusError` for anything more precise
(``failed_precondition(...)`` for advancing a cancelled experiment).

Tokens: with a :class:`~services.transport.security.TokenStore`, CreateExperiment
(called with the server's admin token) makes a fresh token for the new
experiment, registers it in the store and returns it; later calls about that
experiment may use it.

::

    server = start_experiment_server(manager, ServerOptions(port=0), tokens=TokenStore("admin"))
    with server:
        client = connect_experiments(server.address, token="admin")
        experiment_id, token = client.create(spec_yaml)
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import grpc
from google.protobuf import struct_pb2

from overcommit.v1 import experiment_pb2, experiment_pb2_grpc
from services.guest.guest_service import struct_to_params
from services.transport.client import (
    ServiceClient,
)
from services.transport.errors import (
    deadline_exceeded,
    permission_denied,
    require,
    require_id,
    resource_exhausted,
)
from services.transport.security import (
    TokenStore,
    check_experiment_binding,
    experiment_header,
)
from services.transport.server import GrpcServer, ServerOptions, ServiceBinding, build_server
from services.transport.status import translate_errors

STATE_TO_PB = {
    "created": experiment_pb2.EXPERIMENT_STATE_CREATED,
    "finished": experiment_pb2.EXPERIMENT_STATE_FINISHED,
    "cancelled": experiment_pb2.EXPERIMENT_STATE_CANCELLED,
    "interrupted": experiment_pb2.EXPERIMENT_STATE_INTERRUPTED,
}
TOKEN_BYTES = 24  # random bytes per experiment token (urlsafe base64 text)
# Sample streams may wait for a long time; at most this many are served at once, so they
# never hold every server worker (health checks and unary calls keep the rest).
MAX_STREAMS = 8


def _struct_spec(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A spec given as a Struct, as a dict: a NaN or infinite number is refused with its
    field path, and whole numbers become ints, so that ``count: 4`` means what it does
    in YAML (a Struct carries only doubles; the spec's fields are strict)."""
    return struct_to_params(struct, "spec_struct")


@dataclass(frozen=True)
class ExperimentStatus:
    """Where an experiment stands: simulated time reached (ns) and lifecycle state."""

    now_ns: int
    state: str  # "created" | "finished" | "cancelled" | "interrupted"


@runtime_checkable
class ExperimentManagerApi(Protocol):
    """What the experiment manager offers ExperimentService (``services/sim/experiment_manager.py``)."""

    def create(
        self, spec: str | Mapping[str, Any], call_over: Callable[[], bool] | None = None
    ) -> str:
        """Create an experiment from YAML text or an already parsed mapping; return its id.
        Nothing runs yet. Bad spec: ValueError (message names the field). ``call_over()``
        true just before it would be registered (the call's deadline passed, its client
        went away): DEADLINE_EXCEEDED and nothing is created."""
        ...

    def advance(
        self,
        experiment_id: str,
        duration_ns: int,
        should_stop: Callable[[], bool] | None = None,
        wait_s: float | None = None,
    ) -> ExperimentStatus:
        """Run whole epochs covering ``duration_ns`` of simulated time; stop early (at a
        sample boundary, resumable) once ``should_stop()`` is true. ``wait_s`` (the call's
        remaining time; None: no deadline): wait no longer than this for another call on
        the same experiment (DEADLINE_EXCEEDED, nothing changed); too many calls on one
        experiment at once: RESOURCE_EXHAUSTED."""
        ...

    def run_to_end(
        self,
        experiment_id: str,
        should_stop: Callable[[], bool] | None = None,
        wait_s: float | None = None,
    ) -> ExperimentStatus:
        """Run to the end of the spec's duration (no-op when finished); ``should_stop``
        and ``wait_s`` as for :meth:`advance`."""
        ...

    def cancel(self, experiment_id: str) -> ExperimentStatus:
        """Stop the experiment; idempotent. Never waits for a call running on it."""
        ...

    def summary(self, experiment_id: str, wait_s: float | None = None) -> Mapping[str, Any]:
        """The summary (JSON-serialisable: what summary.json holds); ``wait_s`` as for
        :meth:`advance`."""
        ...

    def stream_samples(
        self, experiment_id: str, is_active: Callable[[], bool] | None = None
    ) -> Iterator[Mapping[str, Any]]:
        """Samples oldest first, each {"sim_time_ns": int, "entity": str,
        "metrics": {name: number}}; the iterator may wait for new samples of a
        running experiment and ends when the experiment has ended, or as soon as
        ``is_active()`` is false (the client went away)."""
        ...

    def list_experiments(self, only: str | None = None) -> list[dict[str, Any]]:
        """Every experiment (``only``: that one) in creation order: experiment_id,
        name, state, now_ns."""
        ...

    def resume(self, experiment_id: str, wait_s: float | None = None) -> ExperimentStatus:
        """Continue an interrupted experiment from its last checkpoint (FAILED_PRECONDITION
        unless it is interrupted); ``wait_s`` as for :meth:`advance`."""
        ...


def _status(response_type: Any, status: ExperimentStatus) -> Any:
    return response_type(
        now_ns=status.now_ns,
        state=STATE_TO_PB.get(status.state, experiment_pb2.EXPERIMENT_STATE_UNSPECIFIED),
    )


class ExperimentServicer(experiment_pb2_grpc.ExperimentServiceServicer):
    """ExperimentService over an :class:`ExperimentManagerApi`: decode, call, encode."""

    def __init__(
        self,
        manager: ExperimentManagerApi,
        tokens: TokenStore | None = None,
        max_streams: int = MAX_STREAMS,
    ):
        self.manager = manager
        self.tokens = tokens
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)

    def _experiment(self, experiment_id: str, context: grpc.ServicerContext | None) -> str:
        require_id("experiment_id", experiment_id)
        check_experiment_binding(context, experiment_id)
        return experiment_id

    @translate_errors
    def CreateExperiment(
        self, request: experiment_pb2.CreateExperimentRequest, context: grpc.ServicerContext | None
    ) -> experiment_pb2.CreateExperimentResponse:
        if context is not None and experiment_header(context) is not None:
            raise permission_denied(
                "experiment_id",
                experiment_header(context),
                "an experiment's token cannot create experiments",
            )
        which = request.WhichOneof("spec")
        require(which is not None, "spec", None, "spec_yaml or spec_struct must be set")
        if which == "spec_yaml":
            require(bool(request.spec_yaml.strip()), "spec_yaml", "", "must not be empty")
            spec: str | dict[str, Any] = request.spec_yaml
        else:
            spec = _struct_spec(request.spec_struct)
        experiment_id = self.manager.create(spec, _call_over(context))
        token = ""
        if self.tokens is not None:
            token = secrets.token_urlsafe(TOKEN_BYTES)
            self.tokens.set(experiment_id, token)
            self._drop_forgotten_tokens()
        return experiment_pb2.CreateExperimentResponse(experiment_id=experiment_id, token=token)

    def _drop_forgotten_tokens(self) -> None:
        """Remove the tokens of experiments the manager no longer holds (it forgets the
        oldest ended one when a new one needs room, in create). The store is read first:
        a token is set only after its experiment is registered, so a token read here
        whose experiment is not listed belongs to one that was forgotten."""
        if self.tokens is None:
            return
        with_tokens = self.tokens.experiment_ids()
        held = {e["experiment_id"] for e in self.manager.list_experiments()}
        for experiment_id in with_tokens - held:
            self.tokens.remove(experiment_id)

    @translate_errors
    def Advance(
        self, request: experiment_pb2.AdvanceRequest, context: grpc.ServicerContext | None
    ) -> experiment_pb2.AdvanceResponse:
        experiment_id = self._experiment(request.experiment_id, context)
        require(request.duration_ns > 0, "duration_ns", request.duration_ns, "must be > 0")
        over = _call_over(context)
        status = self.manager.advance(
            experiment_id, request.duration_ns, over, wait_s=_remaining_s(context)
        )
        _fail_if_over(over, experiment_id, status)
        return _status(experiment_pb2.AdvanceResponse, status)

    @translate_errors
    def RunToEnd(
        self, request: experiment_pb2.RunToEndRequest, context: grpc.ServicerContext | None
    ) -> experiment_pb2.RunToEndResponse:
        experiment_id = self._experiment(request.experiment_id, context)
        over = _call_over(context)
        status = self.manager.run_to_end(experiment_id, over, wait_s=_remaining_s(context))
        _fail_if_over(over, experiment_id, status)
        return _status(experiment_pb2.RunToEndResponse, status)

    @translate_errors
    def Cancel(
        self, request: experiment_pb2.CancelRequest, context: grpc.ServicerContext | None
    ) -> experiment_pb2.CancelResponse:
        experiment_id = self._experiment(request.experiment_id, context)
        status = self.manager.cancel(experiment_id)
        return experiment_pb2.CancelResponse(
            state=STATE_TO_PB.get(status.state, experiment_pb2.EXPERIMENT_STATE_UNSPECIFIED)
        )

    @translate_errors
    def GetSummary(
        self, request: experiment_pb2.GetSummaryRequest, context: grpc.ServicerContext | None
    ) -> experiment_pb2.GetSummaryResponse:
        experiment_id = self._experiment(request.experiment_id, context)
        summary_of = self.manager.summary(experiment_id, wait_s=_remaining_s(context))
        text = json.dumps(summary_of, sort_keys=True, default=_jsonable)
        summary = struct_pb2.Struct()
        summary.update(json.loads(text))
        return experiment_pb2.GetSummaryResponse(summary_json=text, summary=summary)

    @translate_errors
    def StreamSamples(
        self, request: experiment_pb2.StreamSamplesRequest, context: grpc.ServicerContext | None
    ) -> Iterator[experiment_pb2.StreamSamplesResponse]:
        experiment_id = self._experiment(request.experiment_id, context)
        if not self._streams.acquire(blocking=False):
            raise resource_exhausted(
                "StreamSamples",
                self.max_streams,
                f"this server serves at most {self.max_streams} sample streams at once",
            )
        try:
            is_active = context.is_active if context is not None else None
            for sample in self.manager.stream_samples(experiment_id, is_active):
                yield experiment_pb2.StreamSamplesResponse(
                    sim_time_ns=int(sample["sim_time_ns"]),
                    entity=str(sample["entity"]),
                    metrics={k: float(v) for k, v in sample["metrics"].items()},
                )
        finally:
            self._streams.release()

    @translate_errors
    def ListExperiments(
        self, request: experiment_pb2.ListExperimentsRequest, context: grpc.ServicerContext | None
    ) -> experiment_pb2.ListExperimentsResponse:
        only = experiment_header(context) if context is not None else None
        return experiment_pb2.ListExperimentsResponse(
            experiments=[
                experiment_pb2.ExperimentInfo(
                    experiment_id=e["experiment_id"],
                    name=e["name"],
                    state=STATE_TO_PB.get(e["state"], experiment_pb2.EXPERIMENT_STATE_UNSPECIFIED),
                    now_ns=int(e["now_ns"]),
                )
                for e in self.manager.list_experiments(only)
            ]
        )

    @translate_errors
    def ResumeExperiment(
        self, request: experiment_pb2.ResumeExperimentRequest, context: grpc.ServicerContext | None
    ) -> experiment_pb2.ResumeExperimentResponse:
        if context is not None and experiment_header(context) is not None:
            raise permission_denied(
                "experiment_id",
                experiment_header(context),
                "resuming needs the server's admin token (tokens do not survive a restart)",
            )
        experiment_id = self._experiment(request.experiment_id, context)
        status = self.manager.resume(experiment_id, wait_s=_remaining_s(context))
        token = ""
        if self.tokens is not None:
            token = secrets.token_urlsafe(TOKEN_BYTES)
            self.tokens.set(experiment_id, token)
        return experiment_pb2.ResumeExperimentResponse(
            now_ns=status.now_ns,
            state=STATE_TO_PB.get(status.state, experiment_pb2.EXPERIMENT_STATE_UNSPECIFIED),
            token=token,
        )


def _call_over(context: grpc.ServicerContext | None) -> Callable[[], bool] | None:
    """True once the call cannot be answered any more: the client cancelled or went
    away, or its deadline passed (long runs stop at their next chunk boundary)."""
    if context is None:
        return None

    def over() -> bool:
        remaining = context.time_remaining()
        return not context.is_active() or (remaining is not None and remaining <= 0)

    return over


def _fail_if_over(
    over: Callable[[], bool] | None, experiment_id: str, status: ExperimentStatus
) -> None:
    """DEADLINE_EXCEEDED for a run that stopped because its call was over. Answering
    with a status instead would race the client's own deadline timer: on a loaded
    machine the answer can arrive first and read as a finished call."""
    if over is not None and status.state not in ("finished", "cancelled") and over():
        raise deadline_exceeded(
            "experiment_id",
            experiment_id,
            f"the call's deadline passed (or its client went away); the experiment "
            f"stopped at {status.now_ns} ns, consistent, and can be advanced again",
        )


def _remaining_s(context: grpc.ServicerContext | None) -> float | None:
    """The call's remaining time in seconds (None: no deadline): how long it may wait for
    another call running on the same experiment."""
    return context.time_remaining() if context is not None else None


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays in a summary -> plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"summary value {value!r} of type {type(value).__name__} is not JSON")


def experiment_service_binding(
    manager: ExperimentManagerApi, tokens: TokenStore | None = None, max_streams: int = MAX_STREAMS
) -> ServiceBinding:
    """What :func:`services.transport.server.build_server` needs to serve ExperimentService."""
    return ServiceBinding(
        experiment_pb2.DESCRIPTOR.services_by_name["ExperimentService"].full_name,
        experiment_pb2_grpc.add_ExperimentServiceServicer_to_server,
        ExperimentServicer(manager, tokens, max_streams),
    )


def start_experiment_server(
    manager: ExperimentManagerApi,
    options: ServerOptions | None = None,
    tokens: TokenStore | None = None,
) -> GrpcServer:
    """A bound (not started) server; ``tokens`` both checks calls and receives new tokens.

    Pass the same store in ``options.tokens`` and ``tokens`` (done here when
    ``options`` is None or has no store)."""
    options = options or ServerOptions()
    if tokens is not None and options.tokens is None:
        options = replace(options, tokens=tokens)
    max_streams = min(MAX_STREAMS, max(1, options.max_workers // 4))
    bindings = [experiment_service_binding(manager, tokens, max_streams)]
    router_for = getattr(manager, "guest_router", None)
    if router_for is not None:  # GuestService for the experiments' guests, same port and tokens
        from .guest_proxy import guest_proxy_binding

        bindings.append(guest_proxy_binding(router_for))
    return build_server(options, bindings)


class ExperimentClient(ServiceClient):
    """ExperimentService over a channel. Errors are ``grpc.RpcError``."""

    stub_class = experiment_pb2_grpc.ExperimentServiceStub

    def create(self, spec: str | Mapping[str, Any]) -> tuple[str, str]:
        """Create from YAML text or a mapping; returns (experiment_id, token). Not retried."""
        if isinstance(spec, str):
            request = experiment_pb2.CreateExperimentRequest(spec_yaml=spec)
        else:
            struct = struct_pb2.Struct()
            struct.update(dict(spec))
            request = experiment_pb2.CreateExperimentRequest(spec_struct=struct)
        response = self.caller.unary(self.stub.CreateExperiment, request, idempotent=False)
        return response.experiment_id, response.token

    def advance(
        self, experiment_id: str, duration_ns: int, timeout_s: float | None = None
    ) -> experiment_pb2.AdvanceResponse:
        return self.caller.unary(
            self.stub.Advance,
            experiment_pb2.AdvanceRequest(experiment_id=experiment_id, duration_ns=duration_ns),
            idempotent=False,
            timeout_s=timeout_s,
        )

    def run_to_end(
        self, experiment_id: str, timeout_s: float | None = None
    ) -> experiment_pb2.RunToEndResponse:
        return self.caller.unary(
            self.stub.RunToEnd,
            experiment_pb2.RunToEndRequest(experiment_id=experiment_id),
            idempotent=True,
            timeout_s=timeout_s,
        )

    def cancel(self, experiment_id: str) -> experiment_pb2.CancelResponse:
        return self.caller.unary(
            self.stub.Cancel,
            experiment_pb2.CancelRequest(experiment_id=experiment_id),
            idempotent=True,
        )

    def summary(self, experiment_id: str) -> dict[str, Any]:
        response = self.caller.unary(
            self.stub.GetSummary,
            experiment_pb2.GetSummaryRequest(experiment_id=experiment_id),
            idempotent=True,
        )
        return json.loads(response.summary_json)

    def stream_samples(
        self, experiment_id: str, timeout_s: float | None = None
    ) -> Iterator[experiment_pb2.StreamSamplesResponse]:
        return self.caller.stream(
            self.stub.StreamSamples,
            experiment_pb2.StreamSamplesRequest(experiment_id=experiment_id),
            timeout_s=timeout_s,
        )

    def list_experiments(self) -> list[experiment_pb2.ExperimentInfo]:
        response = self.caller.unary(
            self.stub.ListExperiments, experiment_pb2.ListExperimentsRequest(), idempotent=True
        )
        return list(response.experiments)

    def resume(self, experiment_id: str) -> experiment_pb2.ResumeExperimentResponse:
        """Not retried: a second call after a lost reply is FAILED_PRECONDITION (created)."""
        return self.caller.unary(
            self.stub.ResumeExperiment,
            experiment_pb2.ResumeExperimentRequest(experiment_id=experiment_id),
            idempotent=False,
        )


connect_experiments = ExperimentClient.connect  # ``experiment_id`` pairs with an experiment token
