"""GuestService on ``overcommit serve``'s port, for every experiment it runs.

A client that created an experiment drives its guests through the same address and
token: each request names the experiment (``experiment_id``, as every GuestService
request does) and, except ListGuests, the guest. The servicer finds the guest shard
that holds the guest and forwards the call:

* in-process backend: straight to the shard (``ShardApi`` over the ``GuestShard``);
* Ray: to the shard actor, by a Ray call (``ShardRunner.guest_rpc``), so shards on
  every node are reached without opening a socket.

Calls reach a guest between the experiment's epochs (the shard's lock); what they do
reaches the host with the next sync, as for any GuestService client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from overcommit.v1 import guest_pb2, guest_pb2_grpc
from services.guest.guest_service import GuestServicer
from services.guest.shard_api import ShardApi, shard_within
from services.transport.errors import StatusError, not_found, require, resource_exhausted
from services.transport.security import check_experiment_binding
from services.transport.server import ServiceBinding
from services.transport.status import Status, translate_errors

from .core_configs import workload_from_params


class _RayShard:
    """A Ray shard actor, called by Ray (``ShardRunner.guest_rpc``): no socket, any node."""

    def __init__(self, ray, actor):
        self.ray = ray
        self.actor = actor

    def call(self, rpc: str, request, wait_s: float | None = None):
        try:
            status, payload = self.ray.get(
                self.actor.guest_rpc.remote(rpc, request.SerializeToString(), wait_s),
                timeout=120,
            )
        except self.ray.exceptions.RayError as e:  # the actor is gone (ended or cancelled)
            raise StatusError(
                Status.FAILED_PRECONDITION, "experiment_id", request.experiment_id,
                f"the experiment's guest shard cannot be reached ({type(e).__name__})",
            ) from None  # fmt: skip
        if status != "OK":
            raise StatusError(Status[status], "", None, str(payload))
        return _RESPONSES[rpc].FromString(payload)


_RESPONSES = {
    "ListGuests": guest_pb2.ListGuestsResponse,
    "ApplyOps": guest_pb2.ApplyOpsResponse,
    "StartWorkload": guest_pb2.StartWorkloadResponse,
    "GetGuestState": guest_pb2.GetGuestStateResponse,
}


class _Local:
    """An in-process shard: its GuestServicer, called directly."""

    def __init__(self, shard):
        self.shard = shard
        self.servicer = GuestServicer(ShardApi(shard, workload_from_params))

    def call(self, rpc: str, request, wait_s: float | None = None):
        forwarded = type(request)()
        forwarded.CopyFrom(request)
        forwarded.experiment_id = ""  # the shard's only experiment
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with shard_within(self.shard, deadline):
            return getattr(self.servicer, rpc)(forwarded, None)


# GuestService calls on one experiment's guests that may run or wait for a shard at
# once (a shard takes them between epochs, so each may wait up to one simulation step);
# one more is refused at once, so one experiment's guests cannot tie up the server's
# workers (ExperimentService calls have their own bound, MAX_CALLS_PER_EXPERIMENT)
MAX_GUEST_CALLS_PER_EXPERIMENT = 4


class GuestRouter:
    """An experiment's shards, by guest id."""

    def __init__(self, session, plan):
        self._lock = threading.Lock()
        self.calls = 0  # running or waiting now (read by tests)
        if hasattr(session, "shard_actors"):  # Ray
            self.shards: list[Any] = [_RayShard(session.ray, a) for a in session.shard_actors]
        else:
            self.shards = [_Local(s) for s in session.driver.shards]
        self.by_guest = {
            init.guest_id: i for i, inits in enumerate(plan.shard_inits) for init in inits
        }

    @contextmanager
    def slot(self, experiment_id: str) -> Iterator[None]:
        """One of the experiment's MAX_GUEST_CALLS_PER_EXPERIMENT call slots, or
        RESOURCE_EXHAUSTED at once."""
        with self._lock:
            if self.calls >= MAX_GUEST_CALLS_PER_EXPERIMENT:
                raise resource_exhausted(
                    "experiment_id",
                    experiment_id,
                    f"{MAX_GUEST_CALLS_PER_EXPERIMENT} GuestService calls already run on "
                    "this experiment's guests or wait for their shard; try again when they end",
                )
            self.calls += 1
        try:
            yield
        finally:
            with self._lock:
                self.calls -= 1

    def shard_of(self, guest_id: int):
        i = self.by_guest.get(guest_id)
        if i is None:
            raise not_found("guest_id", guest_id, "this experiment has no such guest")
        return self.shards[i]


class ServeGuestServicer(guest_pb2_grpc.GuestServiceServicer):
    """GuestService for every experiment of a manager (see the module docstring)."""

    def __init__(self, router_for: Callable[[str], GuestRouter]):
        self.router_for = router_for

    def _router(self, experiment_id: str, context) -> GuestRouter:
        require(bool(experiment_id), "experiment_id", experiment_id, "name the experiment")
        check_experiment_binding(context, experiment_id)
        return self.router_for(experiment_id)

    @staticmethod
    def _call(shard, rpc: str, request, context):
        """Forward, with the call's time left (a call that cannot get the shard within
        it does nothing); the shard's error status goes back to the caller as it is."""
        return shard.call(rpc, request, context.time_remaining() if context else None)

    @translate_errors
    def ListGuests(self, request, context):
        router = self._router(request.experiment_id, context)
        response = guest_pb2.ListGuestsResponse()
        with router.slot(request.experiment_id):
            for shard in router.shards:
                response.guests.extend(self._call(shard, "ListGuests", request, context).guests)
        response.guests.sort(key=lambda g: g.guest_id)
        return response

    def _one(self, rpc: str, request, context):
        router = self._router(request.experiment_id, context)
        shard = router.shard_of(request.guest_id)
        with router.slot(request.experiment_id):
            return self._call(shard, rpc, request, context)

    @translate_errors
    def ApplyOps(self, request, context):
        return self._one("ApplyOps", request, context)

    @translate_errors
    def StartWorkload(self, request, context):
        return self._one("StartWorkload", request, context)

    @translate_errors
    def GetGuestState(self, request, context):
        return self._one("GetGuestState", request, context)


def guest_proxy_binding(router_for: Callable[[str], GuestRouter]) -> ServiceBinding:
    """What :func:`services.transport.server.build_server` needs for the serve GuestService."""
    return ServiceBinding(
        guest_pb2.DESCRIPTOR.services_by_name["GuestService"].full_name,
        guest_pb2_grpc.add_GuestServiceServicer_to_server,
        ServeGuestServicer(router_for),
    )


__all__ = ["GuestRouter", "ServeGuestServicer", "guest_proxy_binding"]
