"""overcommit-sim's public face: run experiments and sweeps from Python.

::

    import overcommit

    spec = overcommit.load_spec("experiments/quickstart.yaml", ["duration=30s"])
    result = overcommit.run_experiment(spec, transport="inprocess")
    result.summary["comparison"]["reporting_off"]["memory_saved_mean_bytes"]
    table = overcommit.run_sweep(overcommit.load_spec("experiments/sweep-order.yaml"))

The names are loaded on first use (module ``__getattr__``): the generated
protobuf modules in ``overcommit.v1`` import this package, and importing one of
them must not pull in Ray, matplotlib or the simulation layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs only; nothing is imported at run time
    from services.sim.run_files import RunResult
    from services.sim.runner import run_experiment
    from services.sim.spec import ExperimentSpec, SpecError, load_spec
    from services.sim.sweep import run_sweep

_EXPORTS = {
    "run_experiment": "services.sim.runner",
    "run_sweep": "services.sim.sweep",
    "load_spec": "services.sim.spec",
    "ExperimentSpec": "services.sim.spec",
    "SpecError": "services.sim.spec",
    "RunResult": "services.sim.run_files",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'overcommit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
