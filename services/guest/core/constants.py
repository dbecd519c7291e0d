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

# Zone layouts (§1.2). "auto": ZONE_DMA32 holds the RAM QEMU maps below 4 GiB and
# ZONE_NORMAL the rest; "single": all modelled RAM in one zone (a what-if).
ZONES_AUTO = "auto"
ZONES_SINGLE = "single"
ZONE_LAYOUTS = (ZONES_AUTO, ZONES_SINGLE)

# QEMU x86 machine types and their RAM split below 4 GiB (hw/i386/pc_q35.c, pc_piix.c):
# a guest with at least `threshold` bytes of RAM gets `lowmem` bytes below 4 GiB, the rest
# above; a smaller guest is all below 4 GiB.
MACHINE_Q35 = "q35"
MACHINE_PC = "pc"
MACHINES = (MACHINE_Q35, MACHINE_PC)
MACHINE_LOWMEM = {  # machine -> (threshold bytes, lowmem bytes)
    MACHINE_Q35: (0xB000_0000, 0x8000_0000),  # >= 2.75 GiB -> 2 GiB below 4 GiB
    MACHINE_PC: (0xE000_0000, 0xC000_0000),  # >= 3.5 GiB -> 3 GiB below 4 GiB
}

# ZONE_DMA, the first 16 MiB of an x86-64 guest: populated in every QEMU guest, not
# modelled as pages, but counted by the watermark formulas (§3.5). Default managed pages
# from a real 6.1 guest (figures.md Q6): the one value for which both its DMA low watermark
# (107) and its DMA32 low watermark (13,971) come out of the §3.5 formulas.
DMA_ZONE_MANAGED_PAGES = 3889

# Per-CPU lists (§3.4).
PCP_BATCH_SCALE_MAX = 5  # CONFIG_PCP_BATCH_SCALE_MAX (6.7+): free_count / alloc_factor cap
MIN_PERCPU_PAGELIST_HIGH_FRACTION = 8  # 6.7+ high_max = managed / 8 / ncpus
PCP_DECAY_INTERVAL_NS = 1_000_000_000  # vmstat_update every sysctl_stat_interval (HZ)
MAX_VCPUS = 1024

# RNG stream kinds (RNG_KIND_SHUFFLE, RNG_KIND_WORKLOAD) come from the registry in services/units.py.
