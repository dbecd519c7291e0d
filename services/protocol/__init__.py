"""The guest-host protocol: the contract both sides include (as ``page_reporting.h`` is in Linux).

* :mod:`.messages`: the plain types of an epoch (registration, submission, outcome);
* :mod:`.validation`: every check on them, run before a host applies anything;
* :mod:`.codec`: protobuf <-> plain, both ways;
* :mod:`.clients`: the :class:`~.clients.HostLink` port, its gRPC and in-process
  implementations, and the protobuf-level :class:`~.clients.HostClient`.

The guest and the host services import this package; neither imports the other.
"""
