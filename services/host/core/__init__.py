"""Pure host model: physical pool, THP backing, discard modes, reclaim, swap, costs.

Imports numpy, numba, the standard library and ``services.units`` only (an
import-linter contract checks it). Section numbers (§) in comments refer to
``docs/kernel-model.md``, which states the kernel rule each part implements.
"""
