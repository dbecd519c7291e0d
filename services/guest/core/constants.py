"""Kernel constants and names used by the guest model.

Each default carries its kernel origin. Every value that a what-if may change is
also a field of :class:`services.guest.core.config.GuestConfig`; these names are
only the defaults and the fixed vocabulary (migratetypes, profiles).
"""

from services.units import PAGE_SHIFT, PAGE_SIZE  # noqa: F401  (the base page, shared by every layer)

MAX_ORDER = 10  # MAX_PAGE_ORDER on x86-64 (§1.1): orders 0..10, 4 MiB blocks
PAGEBLOCK_ORDER = 9  # pageblock_order with CONFIG_HUGETLB_PAGE (§1.4): 2 MiB
PAGE_ALLOC_COSTLY_ORDER = 3  # §1.1

# Migratetypes (§1.2). The first three are "mergeable" / fallback-capable.
MIGRATE_UNMOVABLE = 0
MIGRATE_MOVABLE = 1
MIGRATE_RECLAIMABLE = 2
MIGRATE_HIGHATOMIC = 3  # == MIGRATE_PCPTYPES
MIGRATE_CMA = 4
MIGRATE_ISOLATE = 5
MIGRATE_TYPES = 6
MIGRATE_PCPTYPES = 3
MIGRATETYPE_NAMES = ("UNMOVABLE", "MOVABLE", "RECLAIMABLE", "HIGHATOMIC", "CMA", "ISOLATE")

# Free page reporting (§4).
PAGE_REPORTING_CAPACITY = 32  # entries per report call (include/linux/page_reporting.h)
PAGE_REPORTING_DELAY_NS = 2_000_000_000  # PAGE_REPORTING_DELAY = 2*HZ
PAGE_REPORTING_BUDGET_DIVISOR = (
    16  # budget = ceil(nr_free / (capacity * 16)): 1/16 of a list per pass
)

# Kernel profiles: the rules that changed between releases (§0).
PROFILE_5_7 = "5.7"
PROFILE_6_1 = "6.1"
PROFILE_MODERN = "modern"
PROFILES = (PROFILE_5_7, PROFILE_6_1, PROFILE_MODERN)

# Zone layouts. DMA32 ends at 4 GiB of guest-physical memory.
ZONES_SINGLE = "single"
ZONES_DMA32_NORMAL = "dma32_normal"
DMA32_END_PFN = (4 << 30) >> PAGE_SHIFT

# RNG stream kinds (RNG_KIND_SHUFFLE, RNG_KIND_WORKLOAD) come from the registry in services/units.py.
