"""Units, shared names and the RNG-stream registry: defined once for every layer.

This module imports nothing, so the core models may use it too. Kernel
constants (orders, watermarks, report capacity...) stay in the cores
(``services/guest/core/constants.py``, ``services/host/core/config.py``).
"""

PAGE_SHIFT = 12  # x86-64 base page: 4 KiB
PAGE_SIZE = 1 << PAGE_SHIFT  # bytes in a base page; pfns count these
NS_PER_S = 1_000_000_000  # simulated time is integer nanoseconds

# Kinds of simulated time a guest loses to host-side costs (result columns
# lost_<kind>_seconds_total). The host's answers carry the touch kinds (fault ..
# reclaim); "report" is the time the guest's reporting worker spent in report calls
# (a virtqueue kick plus the host's discard of each batch), priced by the guest.
LOST_KINDS = ("fault", "zero", "swapin", "decompress", "reclaim", "report")

# RNG streams: every generator is SeedSequence([spec seed, RNG_KIND_*, entity id, ...]),
# so no two streams share state and none depends on how entities are grouped.
RNG_KIND_SHUFFLE = 1  # a guest's page shuffling (§5), by guest id
RNG_KIND_WORKLOAD = 2  # a guest's workload, by guest id (and client workload index)
RNG_KIND_START_JITTER = 3  # a guest's workload start jitter, by guest id
RNG_KIND_REPORT_FAULT = 4  # which of a guest's report calls fail (faults.reject_reports)
