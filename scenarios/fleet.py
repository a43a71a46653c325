"""The agent fleet: each agent's class, replicas, criticality (-> response mode), declared scope,
egress endpoints and class settings."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from paritybed.core.vocabulary import INTERACTIONS, RESPONSES
from paritybed.scenarios.base import NAME_RE, Strict


class ScopeEntry(Strict):
    type: str
    interactions: list[Literal[INTERACTIONS]]  # type: ignore[valid-type]

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if not re.match(r"^[A-Z][A-Za-z]{1,63}$", v):
            raise ValueError(f"expected a FHIR resource type name such as 'Observation', found {v!r}")
        return v


class ScribeSettings(Strict):
    usage: float = Field(0.35, ge=0, le=1)  # share of encounters documented with the scribe
    sign_delay_min: float = Field(8.0, gt=0)  # median minutes from the visit to the clinician signing
    page_size: int = Field(50, ge=1, le=1000)
    max_pages: int = Field(2, ge=1)
    medication_types: list[str] = Field(default_factory=lambda: ["MedicationRequest"])
    llm_calls: int = Field(2, ge=0)  # HTTP calls per note over each egress connection (transcribe, draft)


class CdsSettings(Strict):
    complex_case_share: float = Field(0.04, ge=0, le=1)  # share of queries that read DiagnosticReport
    embedding_calls_min: int = Field(24, ge=0)
    embedding_calls_max: int = Field(48, ge=0)
    draft_share: float = Field(0.25, ge=0, le=1)  # share of queries that write a draft order
    page_size: int = Field(50, ge=1, le=1000)
    max_pages: int = Field(3, ge=1)


class PriorAuthSettings(Strict):
    page_size: int = Field(50, ge=1, le=1000)
    max_pages: int = Field(2, ge=1)
    payer_calls: int = Field(1, ge=0)
    seconds_per_claim: float = Field(45, gt=0)  # mean work time of one replica on one claim


class _AgentBase(Strict):
    name: str
    replicas: int = Field(2, ge=1, le=64)
    criticality: Literal["tier-1", "tier-2", "tier-3"] = "tier-2"
    response: Literal[RESPONSES] | None = None  # type: ignore[valid-type]
    scope: list[ScopeEntry] = Field(default_factory=list)
    egress: list[str] = Field(default_factory=list)
    # the EHR side opens a launch context (patient, encounter) for each piece of the agent's work;
    # false: it runs without, so it cannot be bound and its policy gets a new-patient budget
    launch_contexts: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"expected a lower-case agent name such as 'cds' or 'scribe', found {v!r}")
        return v

    def response_mode(self) -> str:
        """Criticality tier -> response mode, unless given: a patient-facing tier-1 agent is only
        denied the offending request; tier-2 is quarantined; tier-3 (back office) is killed."""
        if self.response is not None:
            return self.response
        return {"tier-1": "deny", "tier-2": "quarantine", "tier-3": "kill"}[self.criticality]


class ScribeAgent(_AgentBase):
    agent_class: Literal["ambient_scribe"] = Field(alias="class")
    settings: ScribeSettings = Field(default_factory=ScribeSettings)


class CdsAgent(_AgentBase):
    agent_class: Literal["cds"] = Field(alias="class")
    settings: CdsSettings = Field(default_factory=CdsSettings)


class PriorAuthAgent(_AgentBase):
    agent_class: Literal["prior_auth"] = Field(alias="class")
    settings: PriorAuthSettings = Field(default_factory=PriorAuthSettings)


Agent = Annotated[Union[ScribeAgent, CdsAgent, PriorAuthAgent], Field(discriminator="agent_class")]
