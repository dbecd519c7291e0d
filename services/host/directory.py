"""Where a call for (experiment id, host id) goes: the host epoch barriers one process serves."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from services.transport.errors import not_found, require_id

from .barrier import EpochBarrier


class HostDirectory:
    """The epoch barriers one server (or in-process link) serves, by (experiment id, host id). Thread-safe."""

    def __init__(self, endpoints: Iterable[EpochBarrier] = ()):
        self._lock = threading.Lock()
        self._endpoints: dict[tuple[str, int], EpochBarrier] = {}
        for endpoint in endpoints:
            self.add(endpoint)

    def add(self, endpoint: EpochBarrier) -> EpochBarrier:
        key = (endpoint.experiment_id, endpoint.host_id)
        with self._lock:
            if key in self._endpoints:
                raise ValueError(
                    f"host {endpoint.host_id} of experiment "
                    f"{endpoint.experiment_id!r} is already served"
                )
            self._endpoints[key] = endpoint
        return endpoint

    def get(self, experiment_id: str, host_id: int) -> EpochBarrier:
        require_id("experiment_id", experiment_id)
        with self._lock:
            endpoint = self._endpoints.get((experiment_id, host_id))
            if endpoint is None:
                if not any(k[0] == experiment_id for k in self._endpoints):
                    raise not_found("experiment_id", experiment_id, "no such experiment here")
                raise not_found(
                    "host_id", host_id, f"experiment {experiment_id!r} has no such host here"
                )
            return endpoint
