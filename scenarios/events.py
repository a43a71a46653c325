"""What happens to the fleet during a run besides clinical work: break-glass classes, injected
attacks, deployment changes, and types an arm leaves out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from paritybed.core.vocabulary import INTERACTIONS
from paritybed.scenarios.base import ADDRESS_RE, IpPort, Strict, profile
from paritybed.scenarios.fleet import ScopeEntry
from paritybed.scenarios.timing import At


class BreakGlassClass(Strict):
    name: Literal["code_blue", "rapid_response", "ed_triage"]
    per_day: float = Field(ge=0)  # expected activations per simulated day in production
    role: str | None = None  # break-glass role in the identity claim; None: <name>-responder
    duration_min: float = Field(60, gt=0)  # lane duration requested by the activation
    active_min: float = Field(20, gt=0)  # how long clinicians keep working under it (event length)
    agents: list[str]  # agent names whose lane opens
    lane: list[ScopeEntry]  # the extra (type, interactions) the lane opens
    requests: int = Field(12, ge=1)  # FHIR requests made under the lane per activation and agent
    late_access_share: float = Field(0.3, ge=0, le=1)  # share of activations with an access after expiry
    hourly: list[float] | None = None  # hour-of-day weights; None = flat (arrests are ~flat by hour)

    @field_validator("hourly")
    @classmethod
    def _24(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else profile(v, 24, "hour-of-day weights (00:00..23:00)")

    @model_validator(mode="after")
    def _within_lane(self) -> "BreakGlassClass":
        # Work under the lane must end before the lane does, or legitimate care would be
        # labelled as an access after expiry.
        if self.active_min > self.duration_min:
            raise ValueError(f"expected active_min <= duration_min, found {self.active_min} > {self.duration_min}")
        return self

    def identity_role(self) -> str:
        return self.role or self.name.replace("_", "-") + "-responder"


class Attack(Strict):
    name: str
    kind: Literal["egress", "bulk_read", "out_of_scope"]
    agent: str
    replica: int = Field(0, ge=0)
    at: At
    # egress
    address: str | None = None
    endpoint: str | None = None  # the name the attacker's endpoint is reported under
    # bulk_read / out_of_scope
    type: str | None = None
    interaction: Literal[INTERACTIONS] = "read"  # type: ignore[valid-type]
    # how much and how often
    count: int = Field(1, ge=1)  # requests (bulk_read, out_of_scope) or connects (egress) per burst
    over_min: float = Field(5.0, gt=0)  # spread of one burst
    repeat_every_min: float | None = None
    repeats: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _kind_fields(self) -> "Attack":
        if self.kind == "egress" and not self.address:
            raise ValueError("an egress attack needs 'address' (ip:port outside the BAA registry)")
        if self.kind in ("bulk_read", "out_of_scope") and not self.type:
            raise ValueError(f"a {self.kind} attack needs 'type' (the FHIR resource type it reads)")
        if self.address is not None and not ADDRESS_RE.match(self.address):
            raise ValueError(f"expected an address ip:port, found {self.address!r}")
        return self


class EgressChange(Strict):
    name: str
    address: IpPort
    share: float = Field(0.2, gt=0, le=1)  # share of the agent's queries that call it after the change


class Change(Strict):
    """A deployment change to an agent during the run (e.g. a hotfix adding an endpoint)."""

    name: str
    at: At
    agent: str
    add_egress: EgressChange


class Omission(Strict):
    agent: str
    type: str
