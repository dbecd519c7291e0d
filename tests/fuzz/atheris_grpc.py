"""Coverage-guided fuzzing (atheris) of all three gRPC services over real servers.

Each input is turned, by atheris' FuzzedDataProvider, into one request of one RPC of
HostService, GuestService or ExperimentService: every field of the request message
set or not, with values consumed from the input (integers of every width, strings,
bytes, enum numbers, floats including NaN, repeated fields up to oversized). The
request goes over real gRPC to a real server (the same targets as the Hypothesis fuzz
tests in tests/contract/). A crash is: a status outside the documented refusals, a
refused request that changed the state digest, or a server that stops answering.

    python -m tests.fuzz.atheris_grpc -runs=2000          # make test (brief)
    python -m tests.fuzz.atheris_grpc -max_total_time=600 # make fuzz (longer)

The libprotobuf-mutator bindings do not build here, so messages are built from the
FuzzedDataProvider directly (fields, then values), which still lets coverage guide
the search over the request space.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types

import atheris
from google.protobuf.descriptor import FieldDescriptor

from tests.contract import test_experiment_fuzz, test_guest_fuzz, test_host_fuzz
from tests.contract.conftest import EXPERIMENT

# Coverage from the request path (servicers, validation, transport, the barrier, the
# manager): their plain Python functions are instrumented one by one. The cores are
# numba kernels, which instrumented bytecode would break, so import hooks (which
# instrument whole packages) are not used.
INSTRUMENTED = (
    "services.protocol.",
    "services.transport.",
    "services.sim.",
    "services.host.barrier",
    "services.host.servicer",
    "services.host.directory",
    "services.host.apply",
    "services.guest.guest_service",
    "services.guest.shard_api",
    "services.guest.shard",
)


def _instrument() -> int:
    """Instrument every plain function and method of the request-path modules."""
    done = 0
    for name, module in list(sys.modules.items()):
        if module is None or (not name.startswith(INSTRUMENTED) and name not in INSTRUMENTED):
            continue
        for obj in list(vars(module).values()):
            targets = [obj]
            if isinstance(obj, type) and obj.__module__ == name:
                targets = [v for v in vars(obj).values() if isinstance(v, types.FunctionType)]
            for f in targets:
                if isinstance(f, types.FunctionType) and f.__module__ == name:
                    atheris.instrument_func(f)
                    done += 1
    return done


MAX_DEPTH = 2
STATS = {"calls": 0, "refused": 0}
_INT_RANGES = {
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
}


def _int(fdp: atheris.FuzzedDataProvider, lo: int, hi: int) -> int:
    """Boundaries often, any value otherwise."""
    pick = fdp.ConsumeIntInRange(0, 7)
    edges = [0, 1, lo, hi, 2, 9, 32]
    if pick < len(edges) - 1:
        return max(lo, min(hi, edges[pick]))
    return fdp.ConsumeIntInRange(lo, hi)


def _scalar(fdp: atheris.FuzzedDataProvider, field: FieldDescriptor, ids: list[str]):
    t = field.type
    if t in _INT_RANGES:
        return _int(fdp, *_INT_RANGES[t])
    if t == FieldDescriptor.TYPE_BOOL:
        return fdp.ConsumeBool()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if t == FieldDescriptor.TYPE_BYTES:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32))
    if t == FieldDescriptor.TYPE_STRING:
        if field.name == "experiment_id" and ids and fdp.ConsumeBool():
            return ids[fdp.ConsumeIntInRange(0, len(ids) - 1)]
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
    raise AssertionError(f"unhandled field type {t}")


def build(fdp: atheris.FuzzedDataProvider, cls, ids: list[str], depth: int = 0):
    """A message of type ``cls`` whose fields are chosen and filled from the input."""
    msg = cls()
    for field in cls.DESCRIPTOR.fields:
        if not fdp.ConsumeBool():
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if sub.full_name == "google.protobuf.Struct" or depth >= MAX_DEPTH:
                continue
            if sub.GetOptions().map_entry:
                target = getattr(msg, field.name)
                for _ in range(fdp.ConsumeIntInRange(0, 3)):
                    target[fdp.ConsumeUnicodeNoSurrogates(8)] = _int(fdp, -(2**63), 2**63 - 1)
                continue
            if field.is_repeated:
                target = getattr(msg, field.name)
                for _ in range(fdp.ConsumeIntInRange(0, 3)):
                    child = target.add()
                    child.CopyFrom(build(fdp, type(child), ids, depth + 1))
                continue
            child = getattr(msg, field.name)
            child.CopyFrom(build(fdp, type(child), ids, depth + 1))
            continue
        if field.is_repeated:
            n = fdp.ConsumeIntInRange(0, 12)
            values = [_scalar(fdp, field, ids) for _ in range(n)]
            if values and fdp.ConsumeIntInRange(0, 15) == 0:  # oversized, now and then
                values = values[:1] * 70_000
            getattr(msg, field.name).extend(values)
        else:
            setattr(msg, field.name, _scalar(fdp, field, ids))
    return msg


class Targets:
    def __init__(self) -> None:
        self.host = test_host_fuzz.Fuzzed()
        self.guest = test_guest_fuzz.Fuzzed()
        self.out = tempfile.mkdtemp(prefix="atheris-serve-")
        self.experiments = test_experiment_fuzz.Fuzzed(self.out)
        self.table = [
            (self.host, rpc, cls, lambda: [EXPERIMENT])
            for rpc, cls in test_host_fuzz.REQUESTS.items()
            if rpc != "RegisterGuest"  # a new shard would make every later sync wait for it
        ]
        self.table += [
            (self.guest, rpc, cls, lambda: [test_guest_fuzz.EXPERIMENT])
            for rpc, cls in test_guest_fuzz.RPCS.items()
        ]
        self.table += [
            (self.experiments, rpc, cls, lambda: sorted(self.experiments.live))
            for rpc, cls in test_experiment_fuzz.REQUESTS.items()
        ]


_TARGETS: list[Targets] = []  # made on the first input (after atheris' setup)


def one_input(data: bytes) -> None:
    if not _TARGETS:
        _TARGETS.append(Targets())
    targets = _TARGETS[0]
    fdp = atheris.FuzzedDataProvider(data)
    target, rpc, cls, ids = targets.table[fdp.ConsumeIntInRange(0, len(targets.table) - 1)]
    if rpc == "CreateExperiment" and fdp.ConsumeBool():
        request = cls(spec_yaml=fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300)))
    else:
        request = build(fdp, cls, ids())
    if target is targets.experiments:
        credential = (test_experiment_fuzz.ADMIN, None) if fdp.ConsumeBool() else (None, None)
        target.send(rpc, request, credential)
    else:
        target.send(rpc, request)
    STATS["calls"] += 1
    if STATS["calls"] % 500 == 0:
        print(f"atheris: {STATS['calls']} requests so far", file=sys.stderr, flush=True)


def main() -> None:
    print(f"atheris: {_instrument()} functions instrumented", file=sys.stderr)
    atheris.Setup(sys.argv, one_input)
    try:
        atheris.Fuzz()
    finally:
        print(f"atheris: {STATS['calls']} requests", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.getcwd(), ".numba_cache"))
    main()
