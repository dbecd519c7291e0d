"""Pure guest model: buddy allocator, free page reporting worker, backing view.

Imports numpy, numba and the standard library only (an import-linter contract
checks it).
"""
