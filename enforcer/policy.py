"""policy.json: the per-agent policy the reference engine and the kernel both enforce.

Compiled by parity (from the staging envelope), loaded by the reference engine (model mode) and
by the kernel control plane (live mode, ``paritybed enforce``).  The schema is versioned
(``schema``) and every policy is content-hashed (``hash`` = sha256 of the canonical JSON of
everything else), so a verdict, an event log or an attestation can name exactly which policy
was in force.  Documented in docs/policy.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from paritybed.core import r4spec
from paritybed.core.errors import InputError
from paritybed.core.units import NS_PER_S
from paritybed.core.vocabulary import INTERACTIONS, RESPONSES

POLICY_SCHEMA = "paritybed.policy/1"
#: Families of requests the strict parser cannot classify; a policy may allow a family explicitly.
SHAPES = ("bundle", "operation", "include", "compartment", "chained", "type-param", "has",
          "graphql", "method-override", "encoded", "malformed", "param", "pipelined", "chunked",
          "length", "split", "too-large", "unknown-type", "not-fhir", "special", "paging")


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pair(_M):
    """One (resource type, interaction) the agent may perform."""

    type: str
    interaction: Literal[INTERACTIONS]  # type: ignore[valid-type]

    def key(self) -> tuple[str, str]:
        return (self.type, self.interaction)


class FhirPolicy(_M):
    server: str = Field(description="host:port of the FHIR server the agent talks to")
    base: str = Field("/fhir", description="base path of the FHIR API on that server")
    allow: list[Pair] = Field(default_factory=list)
    allow_shapes: list[Literal[SHAPES]] = Field(default_factory=list)  # type: ignore[valid-type]

    @field_validator("base")
    @classmethod
    def _base(cls, v: str) -> str:
        if not v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError("expected a base path like /fhir (leading slash, no trailing slash)")
        return v


class RatePolicy(_M):
    """Token bucket as GCRA in integer ns: one request costs ``interval_ns``; up to ``burst``
    requests may arrive back to back.  ``rate_per_s`` is informational (1e9 / interval_ns)."""

    burst: int = Field(ge=1)
    interval_ns: int = Field(ge=1)
    rate_per_s: float = 0.0


class LanePolicy(_M):
    allow: list[Pair] = Field(default_factory=list)
    max_duration_s: int = Field(ge=1)


class NewPatientBudget(_M):
    """GCRA over the patients a replica names that it has not named in the last ``window_ns``
    (docs/enforcement.md, "Clinical context binding"): one such new patient costs
    ``interval_ns``; up to ``burst`` may come back to back.  ``per_5min`` is informational (new
    patients refilled per 5 minutes)."""

    burst: int = Field(ge=1)
    interval_ns: int = Field(ge=1)
    window_ns: int = Field(300 * NS_PER_S, ge=1, description="a patient not named for this long is new again")
    per_5min: float = 0.0


class ContextPolicy(_M):
    """Clinical-context binding (launch contexts, docs/enforcement.md): whether the agent is
    bound to the patient and encounter it was launched for, the limits on its contexts, the pairs
    it may use without naming a patient, and, for an agent that is not bound, its new-patient
    budget."""

    bound: bool = Field(False, description="every legitimate staging request was in its launch context")
    max_duration_s: int | None = Field(None, ge=1, description="a context opens until t + min(requested, this); "
                                       "null: as long as requested (only for an agent that is not bound)")
    max_open: int | None = Field(None, ge=1, description="contexts a replica may have open at once; null: no limit "
                                 "(only for an agent that is not bound)")
    unscoped: list[Pair] = Field(default_factory=list, description="pairs the agent may use naming no patient")
    new_patient_budget: NewPatientBudget | None = None

    @field_validator("unscoped")
    @classmethod
    def _r4(cls, v: list[Pair]) -> list[Pair]:
        known = set(r4spec.resource_types())
        for p in v:
            if p.type not in known:
                raise ValueError(f"expected an R4 resource type name (exact case), found {p.type!r}")
        return v

    @model_validator(mode="after")
    def _bound_or_budget(self) -> "ContextPolicy":
        if self.bound and self.new_patient_budget is not None:
            raise ValueError("new_patient_budget applies to an agent that is not bound (bound: false); "
                             "a bound agent reads only its contexts' patients")
        if self.bound and (self.max_duration_s is None or self.max_open is None):
            raise ValueError("a bound agent needs max_duration_s and max_open (its contexts must expire and be "
                             "counted, so that they close on time with the control plane dead)")
        return self

    def unscoped_pairs(self) -> set[tuple[str, str]]:
        return {p.key() for p in self.unscoped}


class AgentPolicy(_M):
    agent_class: str
    fhir: FhirPolicy
    rate: RatePolicy | None = None  # None: no rate limit
    egress: list[str] = Field(default_factory=list, description="endpoint names, resolved via the BAA registry")
    lanes: dict[str, LanePolicy] = Field(default_factory=dict)
    context: ContextPolicy | None = None  # None: launch contexts are refused, nothing is bound
    response: Literal[RESPONSES] = "deny"  # type: ignore[valid-type]
    quarantine_hold_s: int | None = Field(None, ge=1, description="None: quarantined until released")

    def allowed_pairs(self) -> set[tuple[str, str]]:
        return {p.key() for p in self.fhir.allow}

    def lane_expiry(self, lane_class: str, t_ns: int, requested_ns: int, *, observe: bool = False) -> int | None:
        """A break-glass activation at ``t_ns`` asking for ``requested_ns`` (docs/enforcement.md,
        "Break-glass lanes"): the lane's expiry, ``t + min(requested, the class's max duration)``,
        or None when the policy has no lane of that class (refused).  In observe mode every
        activation opens, for as long as asked.  The engine and the kernel control plane both
        decide activations with this one function."""
        lane = self.lanes.get(lane_class)
        if lane is None and not (observe or self.response == "observe"):
            return None
        max_ns = lane.max_duration_s * NS_PER_S if lane is not None else requested_ns
        return t_ns + min(int(requested_ns), max_ns)

    def context_expiry(self, t_ns: int, requested_ns: int, open_others: int, *, observe: bool = False) -> int | None:
        """A launch context opened at ``t_ns`` asking for ``requested_ns`` while the replica has
        ``open_others`` other contexts open (docs/enforcement.md, "Clinical context binding"):
        its expiry, ``t + min(requested, max_duration_s)``, or None when refused (no ``context``
        section, or ``max_open`` reached).  In observe mode every context opens, for as long as
        asked.  The engine and the kernel control plane both decide activations with this."""
        c = self.context
        if observe or self.response == "observe":
            return t_ns + int(requested_ns)
        if c is None or (c.max_open is not None and open_others >= c.max_open):
            return None
        if c.max_duration_s is None:
            return t_ns + int(requested_ns)
        return t_ns + min(int(requested_ns), c.max_duration_s * NS_PER_S)


class PolicySource(_M):
    scenario: str = ""
    scenario_hash: str = ""
    arm: str = ""
    trace_sha256: str = ""
    seed: int | None = None


class Policy(_M):
    schema_: Literal["paritybed.policy/1"] = Field(POLICY_SCHEMA, alias="schema")
    version: int = Field(1, ge=1)
    parent: str | None = Field(None, description="hash of the policy this one replaces, if any")
    created: str = Field("", description="ISO time of the simulated run that produced it (deterministic)")
    source: PolicySource = Field(default_factory=PolicySource)
    margins: dict[str, float | int | None] = Field(default_factory=dict)
    agents: dict[str, AgentPolicy]
    hash: str = ""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def canonical_bytes(self) -> bytes:
        """Canonical JSON of everything but ``hash``: sorted keys, no spaces, UTF-8."""
        d = self.model_dump(mode="json", by_alias=True, exclude={"hash"})
        return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def computed_hash(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_bytes()).hexdigest()

    def sealed(self) -> "Policy":
        """The same policy with ``hash`` filled in."""
        return self.model_copy(update={"hash": self.computed_hash()})

    def to_json(self) -> str:
        d = self.sealed().model_dump(mode="json", by_alias=True)
        return json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def save_policy(policy: Policy, path: str | Path) -> Policy:
    sealed = policy.sealed()
    Path(path).write_text(sealed.to_json(), encoding="utf-8")
    return sealed


def load_policy(path: str | Path) -> Policy:
    """Load and verify a policy file: schema, and the content hash if present."""
    from paritybed.core.jsonfile import load_model

    pol = load_model(path, Policy, "policy", "docs/policy.md")
    if pol.hash and pol.hash != pol.computed_hash():
        raise InputError(f"{Path(path)}: policy content does not match its hash {pol.hash}: the file was edited after compilation")
    return pol.sealed()
