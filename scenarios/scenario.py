"""The scenario: one run's hospital, patients, fleet, BAA registry, break-glass classes,
attacks, arms and gate thresholds.  Every field is documented in docs/scenarios.md with its
default and unit; the sections are the other modules of this package."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, model_validator

from paritybed.scenarios.arms import ARM_NAMES, Arms
from paritybed.scenarios.baa import BaaRegistry
from paritybed.scenarios.base import Strict, field_path
from paritybed.scenarios.events import Attack, BreakGlassClass
from paritybed.scenarios.fleet import Agent, CdsAgent, PriorAuthAgent, ScribeAgent
from paritybed.scenarios.gates import Gate, PolicySettings
from paritybed.scenarios.hospital import HospitalSettings
from paritybed.scenarios.population import PopulationSettings
from paritybed.scenarios.timing import Duration, Start
from paritybed.scenarios.workflows import WorkflowSettings


class Scenario(Strict):
    name: str
    description: str = ""
    seed: int = 1
    start: Start = Field(default_factory=Start)
    duration: Duration = Field(default_factory=lambda: Duration(days=7))
    population: PopulationSettings
    hospital: HospitalSettings = Field(default_factory=HospitalSettings)
    workflows: WorkflowSettings = Field(default_factory=WorkflowSettings)
    agents: list[Agent]
    baa_registry: BaaRegistry = Field(default_factory=BaaRegistry)
    break_glass: list[BreakGlassClass] = Field(default_factory=list)
    attacks: list[Attack] = Field(default_factory=list)
    arms: Arms = Field(default_factory=Arms)
    gate: Gate = Field(default_factory=Gate)
    policy: PolicySettings = Field(default_factory=PolicySettings)

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> "Scenario":
        # load_scenario checks references itself, after validation, to point at each one.
        if not (info.context or {}).get("defer_references"):
            problems = self.reference_problems()
            if problems:
                loc, expected, found = problems[0]
                raise ValueError(f"{field_path(loc)}: expected {expected}, found {found}")
        return self

    def reference_problems(self) -> list[tuple[tuple[Any, ...], str, str]]:
        """Cross-references between sections that a field type cannot check: (field path,
        what was expected, what was found) for every dangling or duplicate name."""
        out: list[tuple[tuple[Any, ...], str, str]] = []
        names = [a.name for a in self.agents]
        known = f"an agent name of the fleet ({', '.join(names)})"
        for i, n in enumerate(names):
            if names.index(n) != i:
                out.append((("agents", i, "name"), "a name not used by another agent", repr(n)))
        endpoints = [e.name for e in self.baa_registry.endpoints]
        for i, e in enumerate(endpoints):
            if endpoints.index(e) != i:
                out.append((("baa_registry", "endpoints", i, "name"), "a name not used by another endpoint", repr(e)))
        for i, a in enumerate(self.agents):
            for j, e in enumerate(a.egress):
                if e not in endpoints:
                    # An endpoint without a BAA is allowed on purpose (that is a finding), but it
                    # needs an address to be callable: list it with status pending/terminated.
                    out.append(((("agents", i, "egress", j)), f"an endpoint listed in baa_registry.endpoints "
                                f"(known: {', '.join(endpoints) or 'none'}; list it there, status terminated if it has no BAA)", repr(e)))
        for i, b in enumerate(self.break_glass):
            for j, n in enumerate(b.agents):
                if n not in names:
                    out.append((("break_glass", i, "agents", j), known, repr(n)))
        for i, at in enumerate(self.attacks):
            if at.agent not in names:
                out.append((("attacks", i, "agent"), known, repr(at.agent)))
            elif at.replica >= self.agent(at.agent).replicas:
                out.append((("attacks", i, "replica"), f"a replica below {self.agent(at.agent).replicas} (the agent's replicas)", str(at.replica)))
        for arm in ARM_NAMES:
            o = getattr(self.arms, arm)
            for i, c in enumerate(o.changes or []):
                if c.agent not in names:
                    out.append((("arms", arm, "changes", i, "agent"), known, repr(c.agent)))
            for i, om in enumerate(o.omit or []):
                if om.agent not in names:
                    out.append((("arms", arm, "omit", i, "agent"), known, repr(om.agent)))
            for name, changed in (o.agent_settings or {}).items():
                where = ("arms", arm, "agent_settings", name)
                if name not in names:
                    out.append((where, known, repr(name)))
                    continue
                out += _settings_problems(self.agent(name), changed, where)
        return out

    def agent_in(self, name: str, agent_settings: dict[str, dict[str, Any]]) -> ScribeAgent | CdsAgent | PriorAuthAgent:
        """The fleet agent ``name`` with an arm's ``agent_settings`` applied to its settings."""
        a = self.agent(name)
        changed = agent_settings.get(name)
        if not changed:
            return a
        settings = type(a.settings).model_validate({**a.settings.model_dump(), **changed})
        return a.model_copy(update={"settings": settings})

    def agent(self, name: str) -> ScribeAgent | CdsAgent | PriorAuthAgent:
        for a in self.agents:
            if a.name == name:
                return a
        raise KeyError(name)


def _settings_problems(agent: ScribeAgent | CdsAgent | PriorAuthAgent, changed: dict[str, Any],
                       where: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str, str]]:
    """An arm's settings for an agent must be settings of the agent's class, with valid values."""
    kind = type(agent.settings)
    out: list[tuple[tuple[Any, ...], str, str]] = []
    for key in changed:
        if key not in kind.model_fields:
            out.append((where + (key,), f"a {agent.agent_class} setting ({', '.join(kind.model_fields)})", repr(key)))
    if out:
        return out
    try:
        kind.model_validate({**agent.settings.model_dump(), **changed})
    except ValidationError as e:
        first = e.errors()[0]
        out.append((where + tuple(first["loc"]), first["msg"].lower(), repr(first.get("input"))))
    return out
