"""Shared pytest fixtures (pure core only; no sockets, no Ray)."""

from tests.guest_helpers import allocator_factory  # noqa: F401  (fixture)
