"""What the Ray actor shells (services/guest/actor.py, services/host/actor.py) share."""

from __future__ import annotations

import warnings


def was_restarted() -> bool:
    """Whether Ray restarted the actor this runs in (its constructor ran again after the
    actor or its process was killed); False outside Ray."""
    try:
        import ray
    except ImportError:
        return False
    if not ray.is_initialized():
        return False
    with warnings.catch_warnings():  # the property reads a deprecated attribute itself
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return bool(ray.get_runtime_context().was_current_actor_reconstructed)
        except Exception:  # noqa: BLE001 - not inside an actor
            return False


def node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - not inside a Ray worker or driver
        return None
