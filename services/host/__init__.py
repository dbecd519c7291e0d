"""Host side: the pure core model (``core``), its gRPC transport and its Ray actor."""
