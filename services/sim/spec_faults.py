"""The spec's ``faults:`` section: actor kills, dropped and delayed replies, rejected reports
(docs/reliability.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from services.units import NS_PER_S

from .spec_base import MAX_HOSTS, _dur, _Model

MAX_FAULT_KILLS = 16
MAX_REPLY_DELAY_NS = 10 * NS_PER_S


class ActorKill(_Model):
    actor: Literal["host", "shard"] = Field(
        description="host: the actor holding host `index`; shard: guest shard `index`."
    )
    index: int = Field(ge=0, le=MAX_HOSTS, description="Host id (plan order) or shard index.")
    at: int = Field(
        gt=0,
        description=(
            "Simulated time: the actor is killed while the coordinator's call that simulates "
            "this time is in flight (a sample interval, or up to ten of them)."
        ),
    )
    how: Literal["actor", "process"] = Field(
        "actor",
        description="actor: ray.kill of the actor (Ray restarts it); process: SIGKILL of its "
        "worker process.",
    )

    _durs = field_validator("at", mode="before")(_dur)


class FaultsSpec(_Model):
    """Faults injected into a run (chaos experiments). Kills, dropped and delayed replies
    never change results (they are kept out of the run id); rejected reports do."""

    kill: list[ActorKill] = Field(
        default_factory=list,
        max_length=MAX_FAULT_KILLS,
        description="Actors killed mid-run; the run rolls back to its last checkpoint and "
        "goes on (on --transport inprocess the loss is emulated: every host and shard is "
        "rebuilt from the plan).",
    )
    drop_replies: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="Fraction of SyncEpoch replies the host drops after applying the call "
        "(the client sees UNAVAILABLE and retries; the host answers a retry from its store).",
    )
    delay_replies: float = Field(
        0.0, ge=0, le=0.5, description="Fraction of SyncEpoch replies delayed by reply_delay."
    )
    reply_delay: int = Field(
        10_000_000,
        ge=0,
        le=MAX_REPLY_DELAY_NS,
        description="Wall time a delayed reply waits (default 10 ms; at most 10 s).",
    )
    reject_reports: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Fraction of page-report calls whose ack is an error, as when the "
        "report function fails (§4.7): the guest puts the batch back unreported and the "
        "pass stops. Changes results, so it is part of the run id.",
    )

    _durs = field_validator("reply_delay", mode="before")(_dur)
