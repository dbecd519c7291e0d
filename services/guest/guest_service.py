"""GuestService: its plain types, the servicer (messages <-> a guest shard) and its client.

Every guest-shard actor serves GuestService. The servicer translates messages
to calls on :class:`GuestShardApi`, which :class:`services.guest.shard_api.ShardApi`
implements over a guest shard; nothing here knows how a shard runs its guests.

Errors: an implementation raises ``ValueError`` for bad input (INVALID_ARGUMENT),
``KeyError``/``LookupError`` for an unknown guest (NOT_FOUND), or any
:class:`~services.transport.errors.StatusError` for a precise status. It must
change no state when it raises.

Start a server::

    server = start_guest_server(shard_api, ServerOptions(port=0), experiment_id="exp-1")
    with server:
        client = connect_guest(server.address)
        client.list_guests()
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2

from overcommit.v1 import guest_pb2, guest_pb2_grpc
from services.guest.core.constants import MIGRATE_ISOLATE, MIGRATE_TYPES
from services.transport.client import (
    RpcCaller,
    ServiceClient,
)
from services.transport.errors import invalid_argument, not_found, require
from services.transport.security import check_experiment_binding
from services.transport.server import GrpcServer, ServerOptions, ServiceBinding, build_server
from services.transport.status import translate_errors

REPORTING_STATE_TO_PB = {
    "idle": guest_pb2.REPORTING_STATE_IDLE,
    "requested": guest_pb2.REPORTING_STATE_REQUESTED,
    "active": guest_pb2.REPORTING_STATE_ACTIVE,
}
MAX_BUDDY_ORDER = 18  # transport-level bound; the guest checks its own max_order
# Transport-level bound on pfns and page counts (2**40 pages = 4 PiB, far above the spec's
# 1 TiB guests): numbers above it are refused before numpy or the guest sees them; the
# guest then checks against its own size. Keeps every value inside int64.
MAX_PAGES = 1 << 40
MAX_OPS = 4096  # operations in one ApplyOps batch
# Blocks one batch's reply may carry (allocated, or freed by count or by pfn), checked
# before anything is applied: a reply must fit in gRPC's 16 MiB message limit
# (DEFAULT_MAX_MESSAGE_BYTES), and a pfn takes up to 10 bytes (a uint64 varint), so
# 2**20 blocks take at most 10 MiB, leaving room for the rest (each op's result
# framing and lost_ns, under 32 bytes an op, and now_ns). Before, an alloc of 5.2M
# blocks happened and then its reply was refused (RESOURCE_EXHAUSTED).
MAX_BATCH_BLOCKS = 1 << 20


# ------------------------------------------------------------- plain types


@dataclass(frozen=True)
class AllocOp:
    """Allocate ``count`` blocks of 2**order pages of migratetype ``migratetype``."""

    order: int
    migratetype: int
    count: int


@dataclass(frozen=True)
class FreeOp:
    """Free the blocks at ``pfns`` (order ``order``), or, if ``pfns`` is empty, the
    ``count`` blocks of that order the guest allocated most recently."""

    order: int
    pfns: np.ndarray  # int64 head pfns
    count: int = 0


@dataclass(frozen=True)
class TouchOp:
    """Touch runs [starts[i], starts[i] + npages[i]) (4 KiB pages)."""

    starts: np.ndarray  # int64
    npages: np.ndarray  # int64


GuestOp = AllocOp | FreeOp | TouchOp


@dataclass(frozen=True)
class OpResult:
    """Outcome of one op: pfns allocated or freed (empty for touch), ns lost (touch)."""

    pfns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lost_ns: int = 0


@dataclass(frozen=True)
class ApplyOpsResult:
    """Outcomes, one per op in order, and the guest's simulated time afterwards (ns)."""

    results: Sequence[OpResult]
    now_ns: int


@dataclass(frozen=True)
class GuestInfo:
    """One guest as its shard describes it."""

    guest_id: int
    nr_pages: int
    host_id: int
    now_ns: int
    workload: str = ""  # running workload kind; "" when idle


@runtime_checkable
class GuestShardApi(Protocol):
    """What a guest shard offers GuestService. Implemented by the orchestration layer.

    All times are simulated ns; pfns count 4 KiB guest pages.
    """

    def list_guests(self) -> Sequence[GuestInfo]:
        """The shard's guests (any order; the servicer sorts them by guest id)."""
        ...

    def apply_ops(self, guest_id: int, ops: Sequence[GuestOp]) -> ApplyOpsResult:
        """Apply ``ops`` to the guest in order at its current time. Validate the whole
        list first: on ValueError/KeyError nothing may have changed."""
        ...

    def start_workload(
        self, guest_id: int, workload: str, params: Mapping[str, Any], duration_ns: int
    ) -> tuple[int, int]:
        """Start workload kind ``workload`` (e.g. "memhog") with the spec's parameters
        for that kind; returns (start_ns, end_ns)."""
        ...

    def guest_state(self, guest_id: int) -> Mapping[str, Any]:
        """The guest's state, as ``services.guest.core.guest.Guest.state()`` returns it:
        keys ``guest_id``, ``now_ns``, ``free_blocks`` ({order: {mt: blocks}}),
        ``reported_bytes``, ``backed_bytes``, ``worker_state`` ("idle" |
        "requested" | "active"), and optionally ``nr_pages``."""
        ...


# ---------------------------------------------------------- message codec


def decode_ops(request: guest_pb2.ApplyOpsRequest) -> list[GuestOp]:
    """ApplyOpsRequest.ops -> plain ops, checking what needs no guest state."""
    ops: list[GuestOp] = []
    require(len(request.ops) <= MAX_OPS, "ops", len(request.ops), f"at most {MAX_OPS} per batch")
    blocks = 0  # blocks the reply carries, up to this op
    for i, op in enumerate(request.ops):
        path = f"ops[{i}]"
        kind = op.WhichOneof("op")
        require(kind is not None, path, None, "one of alloc, free, touch must be set")
        if kind == "alloc":
            a = op.alloc
            _check_order(f"{path}.alloc.order", a.order)
            require(
                a.migratetype < MIGRATE_TYPES and a.migratetype != MIGRATE_ISOLATE,
                f"{path}.alloc.migratetype",
                a.migratetype,
                f"must be in 0..{MIGRATE_TYPES - 1} and not MIGRATE_ISOLATE",
            )
            require(
                0 < a.count <= MAX_PAGES,
                f"{path}.alloc.count",
                a.count,
                f"must be in 1..{MAX_PAGES}",
            )
            blocks = _count_reply_blocks(f"{path}.alloc.count", a.count, blocks)
            ops.append(AllocOp(a.order, a.migratetype, a.count))
        elif kind == "free":
            f = op.free
            _check_order(f"{path}.free.order", f.order)
            require(
                bool(f.pfns) or f.count > 0,
                f"{path}.free.count",
                f.count,
                "must be > 0 when pfns is empty",
            )
            pfns = np.array(f.pfns, dtype=np.uint64)  # in bulk: no Python int per value
            _check_below(f"{path}.free.pfns", pfns, "pfn")
            require(
                f.count <= MAX_PAGES, f"{path}.free.count", f.count, f"must be at most {MAX_PAGES}"
            )
            if len(pfns):
                blocks = _count_reply_blocks(f"{path}.free.pfns", len(pfns), blocks)
            else:
                blocks = _count_reply_blocks(f"{path}.free.count", f.count, blocks)
            ops.append(FreeOp(f.order, pfns.astype(np.int64), f.count))
        else:
            starts = np.array(op.touch.runs.starts, dtype=np.uint64)
            npages = np.array(op.touch.runs.npages, dtype=np.uint64)
            field = f"{path}.touch.runs"
            require(
                len(starts) == len(npages),
                f"{field}.npages",
                len(npages),
                f"length differs from {field}.starts (length {len(starts)})",
            )
            _check_below(f"{field}.starts", starts, "start")
            _check_below(f"{field}.npages", npages, "run length")
            bad = np.flatnonzero(npages == 0)
            require(
                bad.size == 0,
                f"{field}.npages[{int(bad[0]) if bad.size else 0}]",
                0,
                "npages must be > 0",
            )
            ops.append(TouchOp(starts.astype(np.int64), npages.astype(np.int64)))
    return ops


def _count_reply_blocks(field_name: str, n: int, before: int) -> int:
    """Blocks the reply carries with ``n`` more (INVALID_ARGUMENT past MAX_BATCH_BLOCKS)."""
    require(
        before + n <= MAX_BATCH_BLOCKS,
        field_name,
        n,
        f"the batch's reply would carry {before + n} blocks (pfns allocated or freed), "
        f"more than {MAX_BATCH_BLOCKS} (a reply must fit in gRPC's 16 MiB message limit)",
    )
    return before + n


def _check_below(field_name: str, values: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(values >= np.uint64(MAX_PAGES))
    if bad.size:
        i = int(bad[0])
        raise invalid_argument(
            f"{field_name}[{i}]",
            int(values[i]),
            f"{what} beyond any guest (at most {MAX_PAGES} pages)",
        )


def _check_order(field_name: str, order: int) -> None:
    require(order <= MAX_BUDDY_ORDER, field_name, order, f"order out of range 0..{MAX_BUDDY_ORDER}")


def encode_ops(ops: Sequence[GuestOp]) -> list[guest_pb2.GuestOp]:
    """Plain ops -> GuestOp messages (what a client sends)."""
    out = []
    for op in ops:
        if isinstance(op, AllocOp):
            out.append(
                guest_pb2.GuestOp(
                    alloc=guest_pb2.AllocOp(
                        order=op.order, migratetype=op.migratetype, count=op.count
                    )
                )
            )
        elif isinstance(op, FreeOp):
            out.append(
                guest_pb2.GuestOp(
                    free=guest_pb2.FreeOp(
                        order=op.order, pfns=np.asarray(op.pfns).tolist(), count=op.count
                    )
                )
            )
        else:
            touch = guest_pb2.TouchOp()
            touch.runs.starts.extend(np.asarray(op.starts).tolist())
            touch.runs.npages.extend(np.asarray(op.npages).tolist())
            out.append(guest_pb2.GuestOp(touch=touch))
    return out


def struct_to_params(params: struct_pb2.Struct, field: str = "params") -> dict[str, Any]:
    """Struct -> dict; whole numbers come back as int (Struct stores doubles). A NaN or
    infinite number is refused naming its path under ``field`` (protobuf's own refusal
    names only Value.number_value)."""

    def check(value: struct_pb2.Value, path: str) -> None:
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            raise invalid_argument(path, value.number_value, "not a finite number")
        if kind == "struct_value":
            for key, v in value.struct_value.fields.items():
                check(v, f"{path}.{key}")
        elif kind == "list_value":
            for i, v in enumerate(value.list_value.values):
                check(v, f"{path}.{i}")

    def fix(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    for key, v in params.fields.items():
        check(v, f"{field}.{key}")
    return fix(json_format.MessageToDict(params))


def params_to_struct(params: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(params))
    return struct


def encode_state(state: Mapping[str, Any]) -> guest_pb2.GetGuestStateResponse:
    """A ``Guest.state()``-shaped mapping -> GetGuestStateResponse."""
    response = guest_pb2.GetGuestStateResponse(
        guest_id=int(state["guest_id"]),
        now_ns=int(state["now_ns"]),
        nr_pages=int(state.get("nr_pages", 0)),
        reported_bytes=int(state["reported_bytes"]),
        backed_bytes=int(state["backed_bytes"]),
        reporting_state=REPORTING_STATE_TO_PB.get(
            str(state["worker_state"]), guest_pb2.REPORTING_STATE_UNSPECIFIED
        ),
    )
    for order, by_mt in sorted(state["free_blocks"].items()):
        for mt, nr_free in sorted(by_mt.items()):
            if nr_free:
                response.free_areas.add(order=int(order), migratetype=int(mt), nr_free=int(nr_free))
    return response


# --------------------------------------------------------------- servicer


class GuestServicer(guest_pb2_grpc.GuestServiceServicer):
    """GuestService over a :class:`GuestShardApi`: decode, call, encode."""

    def __init__(self, shard: GuestShardApi, experiment_id: str = ""):
        self.shard = shard
        self.experiment_id = experiment_id

    def _check_experiment(self, experiment_id: str, context: grpc.ServicerContext | None) -> None:
        check_experiment_binding(context, experiment_id or self.experiment_id)
        if experiment_id and self.experiment_id and experiment_id != self.experiment_id:
            raise not_found("experiment_id", experiment_id, "this shard serves another experiment")

    @translate_errors
    def ListGuests(
        self, request: guest_pb2.ListGuestsRequest, context: grpc.ServicerContext | None
    ) -> guest_pb2.ListGuestsResponse:
        self._check_experiment(request.experiment_id, context)
        response = guest_pb2.ListGuestsResponse()
        for info in sorted(self.shard.list_guests(), key=lambda g: g.guest_id):
            response.guests.add(
                guest_id=info.guest_id,
                nr_pages=info.nr_pages,
                host_id=info.host_id,
                now_ns=info.now_ns,
                workload=info.workload,
            )
        return response

    @translate_errors
    def ApplyOps(
        self, request: guest_pb2.ApplyOpsRequest, context: grpc.ServicerContext | None
    ) -> guest_pb2.ApplyOpsResponse:
        self._check_experiment(request.experiment_id, context)
        ops = decode_ops(request)
        with _within(self.shard, context):
            result = self.shard.apply_ops(request.guest_id, ops)
        response = guest_pb2.ApplyOpsResponse(now_ns=result.now_ns)
        for r in result.results:
            response.results.add(pfns=np.asarray(r.pfns).tolist(), lost_ns=int(r.lost_ns))
        return response

    @translate_errors
    def StartWorkload(
        self, request: guest_pb2.StartWorkloadRequest, context: grpc.ServicerContext | None
    ) -> guest_pb2.StartWorkloadResponse:
        self._check_experiment(request.experiment_id, context)
        require(bool(request.workload), "workload", request.workload, "must not be empty")
        require(request.duration_ns > 0, "duration_ns", request.duration_ns, "must be > 0")
        params = struct_to_params(request.params)
        with _within(self.shard, context):
            start_ns, end_ns = self.shard.start_workload(
                request.guest_id, request.workload, params, request.duration_ns
            )
        return guest_pb2.StartWorkloadResponse(start_ns=start_ns, end_ns=end_ns)

    @translate_errors
    def GetGuestState(
        self, request: guest_pb2.GetGuestStateRequest, context: grpc.ServicerContext | None
    ) -> guest_pb2.GetGuestStateResponse:
        self._check_experiment(request.experiment_id, context)
        return encode_state(self.shard.guest_state(request.guest_id))


def _within(shard: Any, context: grpc.ServicerContext | None):
    """The shard held for a call that changes a guest, if it can be had within the
    call's time left (``shard.within``; an API without it is not waited on)."""
    within = getattr(shard, "within", None)
    if within is None or context is None:
        return contextlib.nullcontext()
    return within(context.time_remaining())


def guest_service_binding(shard: GuestShardApi, experiment_id: str = "") -> ServiceBinding:
    """What :func:`services.transport.server.build_server` needs to serve GuestService."""
    return ServiceBinding(
        guest_pb2.DESCRIPTOR.services_by_name["GuestService"].full_name,
        guest_pb2_grpc.add_GuestServiceServicer_to_server,
        GuestServicer(shard, experiment_id),
    )


def start_guest_server(
    shard: GuestShardApi, options: ServerOptions | None = None, experiment_id: str = ""
) -> GrpcServer:
    """A bound (not started) server for one shard; use ``with`` or ``start()``."""
    return build_server(options or ServerOptions(), [guest_service_binding(shard, experiment_id)])


# ----------------------------------------------------------------- client


class GuestClient(ServiceClient):
    """GuestService over a channel, with plain-typed helpers. Errors are ``grpc.RpcError``."""

    stub_class = guest_pb2_grpc.GuestServiceStub

    def __init__(self, channel: grpc.Channel, caller: RpcCaller | None = None):
        super().__init__(channel, caller)
        self.experiment_id = self.caller.experiment_id or ""  # sent in every request

    def list_guests(self) -> guest_pb2.ListGuestsResponse:
        return self.caller.unary(
            self.stub.ListGuests,
            guest_pb2.ListGuestsRequest(experiment_id=self.experiment_id),
            idempotent=True,
        )

    def apply_ops(self, guest_id: int, ops: Sequence[GuestOp]) -> guest_pb2.ApplyOpsResponse:
        """Not retried: allocating twice is not harmless."""
        request = guest_pb2.ApplyOpsRequest(
            experiment_id=self.experiment_id, guest_id=guest_id, ops=encode_ops(ops)
        )
        return self.caller.unary(self.stub.ApplyOps, request, idempotent=False)

    def start_workload(
        self, guest_id: int, workload: str, params: Mapping[str, Any], duration_ns: int
    ) -> guest_pb2.StartWorkloadResponse:
        request = guest_pb2.StartWorkloadRequest(
            experiment_id=self.experiment_id,
            guest_id=guest_id,
            workload=workload,
            params=params_to_struct(params),
            duration_ns=duration_ns,
        )
        return self.caller.unary(self.stub.StartWorkload, request, idempotent=False)

    def guest_state(self, guest_id: int) -> guest_pb2.GetGuestStateResponse:
        return self.caller.unary(
            self.stub.GetGuestState,
            guest_pb2.GetGuestStateRequest(experiment_id=self.experiment_id, guest_id=guest_id),
            idempotent=True,
        )


connect_guest = GuestClient.connect  # retries reads only (ApplyOps is not idempotent)


def iter_free_areas(response: guest_pb2.GetGuestStateResponse) -> Iterator[tuple[int, int, int]]:
    """(order, migratetype, nr_free) of every non-empty free list in a state response."""
    for area in response.free_areas:
        yield area.order, area.migratetype, area.nr_free
