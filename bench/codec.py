"""Benchmark of the epoch codec (services/protocol/codec.py) on real pressure messages.

Every sync pays the codec on both ends: the shard encodes its submission and
decodes the answer, the host decodes the submission, validates it and encodes
the answer. Under pressure (one sync per epoch to every host a shard's guests act
on) the codec and validation were about 9 % of a shard's profile samples and 12 %
of a host actor's (issue 16).

The messages are real: a scaled-down ``experiments/pressure.yaml`` (the guests
and hosts of ``--guests``/``--hosts``, the same 15 guests per host, 1 shard) runs
in process and keeps every per-epoch submission and its answer. Each step is
then timed over all of them (best of ``--repeats``, garbage collection paused
while timing), in µs per message; the JSON also gives the message sizes and how
many guests a message carries. Decoding is checked to give back what was encoded.

Usage: python bench/codec.py [--json] [--guests N] [--hosts N] [--seconds S]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))

from overcommit.v1 import host_pb2  # noqa: E402
from services.protocol import clients  # noqa: E402
from services.protocol.codec import (  # noqa: E402
    decode_outcome,
    decode_submission,
    encode_outcome,
    encode_submission,
)
from services.protocol.messages import (  # noqa: E402
    DISCARD_DONTNEED,
    EpochOutcome,
    EpochSubmission,
    GuestRegistration,
)
from services.protocol.validation import validate_submission  # noqa: E402
from services.sim.backends.inprocess import InProcessBackend  # noqa: E402
from services.sim.runner import run_experiment  # noqa: E402
from services.sim.spec import load_spec  # noqa: E402

MAX_MESSAGES = 3000


def capture(
    guests: int, hosts: int, seconds: int
) -> list[tuple[int, EpochSubmission, EpochOutcome]]:
    """(host id, submission, answer) of every one-epoch sync of a small pressure run."""
    kept: list[tuple[int, EpochSubmission, EpochOutcome]] = []
    collect = clients.InProcessHostLink.collect

    def keep(self, host_id: int, sub: EpochSubmission) -> EpochOutcome:
        outcome = collect(self, host_id, sub)
        if sub.epochs == 1 and sub.guests and len(kept) < MAX_MESSAGES:
            kept.append((host_id, sub, outcome))
        return outcome

    spec = load_spec(
        str(ROOT / "experiments" / "pressure.yaml"),
        [f"guest_groups.0.count={guests}", f"hosts.0.count={hosts}", f"duration={seconds}s"],
    )
    clients.InProcessHostLink.collect = keep  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as out:
            run_experiment(spec, out_dir=out, shards=1, backend=InProcessBackend())
    finally:
        clients.InProcessHostLink.collect = collect  # type: ignore[method-assign]
    return kept


def best_us(step, items: list, repeats: int) -> float:
    """Best time of ``step`` over every item, in µs per item (GC paused while timing)."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            for item in items:
                step(item)
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best / len(items) * 1e6


def run(guests: int, hosts: int, seconds: int, repeats: int) -> dict:
    messages = capture(guests, hosts, seconds)
    if not messages:
        raise SystemExit("the run made no one-epoch syncs: give it more guests or seconds")
    experiment = "bench"
    requests = [encode_submission(experiment, h, sub) for h, sub, _ in messages]
    wire = [r.SerializeToString() for r in requests]
    parsed = [host_pb2.SyncEpochRequest.FromString(b) for b in wire]
    answers = [encode_outcome(out) for _, _, out in messages]
    answer_wire = [a.SerializeToString() for a in answers]
    answer_parsed = [host_pb2.SyncEpochResponse.FromString(b) for b in answer_wire]
    for (_, _, out), back in zip(messages, answer_parsed, strict=True):
        assert decode_outcome(back) == out, "an answer did not decode to what was encoded"
    regs = _registrations(messages)
    steps = {
        "encode_submission_us": (
            lambda m: encode_submission(experiment, m[0], m[1]),
            messages,
        ),
        "decode_submission_us": (decode_submission, parsed),
        "validate_submission_us": (
            lambda m: validate_submission(m[1], regs[m[0]]),
            messages,
        ),
        "encode_outcome_us": (lambda m: encode_outcome(m[2]), messages),
        "decode_outcome_us": (decode_outcome, answer_parsed),
        "serialize_and_parse_us": (
            lambda i: (
                host_pb2.SyncEpochResponse.FromString(answers[i].SerializeToString()).ByteSize()
                + host_pb2.SyncEpochRequest.FromString(requests[i].SerializeToString()).ByteSize()
            ),
            list(range(len(messages))),
        ),
    }
    out: dict = {
        "messages": len(messages),
        "guests_per_message": round(statistics.mean(len(s.guests) for _, s, _ in messages), 2),
        "answer_guests_per_message": round(
            statistics.mean(len(o.guests) for _, _, o in messages), 2
        ),
        "request_bytes_mean": round(statistics.mean(len(b) for b in wire), 1),
        "answer_bytes_mean": round(statistics.mean(len(b) for b in answer_wire), 1),
        "repeats": repeats,
        "statistic": "best of repeats, µs per message",
    }
    for name, (step, items) in steps.items():
        out[name] = round(best_us(step, items, repeats), 2)
    out["codec_us_per_message"] = round(
        sum(out[k] for k in ("encode_submission_us", "decode_submission_us"))
        + sum(out[k] for k in ("encode_outcome_us", "decode_outcome_us")),
        2,
    )
    out["codec_basis"] = "encode + decode of the submission and of its answer (both ends)"
    return out


def _registrations(messages):
    """Each host's registered guests, rebuilt from the messages (every guest a message
    names was registered by its shard; sizes from the run's spec: 1 GiB guests)."""
    regs: dict[int, dict[int, GuestRegistration]] = {}
    for host_id, sub, _ in messages:
        known = regs.setdefault(host_id, {})
        for ops in sub.guests:
            known.setdefault(
                ops.guest_id,
                GuestRegistration(ops.guest_id, sub.shard_id, 1 << 18, DISCARD_DONTNEED),
            )
    return regs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the JSON on one line")
    parser.add_argument("--guests", type=int, default=150)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=20, help="simulated seconds of the run")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    out = run(args.guests, args.hosts, args.seconds, args.repeats)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
