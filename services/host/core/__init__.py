"""Pure host model: physical pool, THP backing, discard modes, reclaim, swap, costs.

Imports numpy, numba and the standard library only (an import-linter contract
checks it).
"""
