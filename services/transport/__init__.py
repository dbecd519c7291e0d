"""gRPC plumbing shared by every service: servers, channels, security, validation.

Nothing here knows about guests, hosts or experiments; the services' own
``transport`` modules translate their messages and use these building blocks.
This package imports neither Ray nor ``services.sim`` (import-linter contract).
"""
