"""An arm as the simulation runs it: the scenario's values with the arm's overrides filled in.

Resolved once per run (``resolve_arms``); every step takes the arms from there.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from paritybed.core.errors import InputError
from paritybed.scenarios.arms import ARM_NAMES, ArmOverrides, Drill
from paritybed.scenarios.events import Change
from paritybed.scenarios.population import PopulationSettings
from paritybed.scenarios.scenario import Scenario


class ResolvedArm(BaseModel):
    """One arm with every inherited value filled in: what the simulation of that arm runs."""

    model_config = ConfigDict(frozen=True)

    name: Literal["production", "staging"]
    seed: int
    population: PopulationSettings
    duration_ns: int
    arrivals: Literal["bursty", "uniform"]
    omit: tuple[tuple[str, str], ...]  # (agent name, resource type)
    break_glass: Literal["as_production", "drill", "off"]
    drill_per_class: int
    attacks: bool
    changes: tuple[Change, ...]
    volume_factor: float
    agent_settings: dict[str, dict[str, Any]] = {}  # agent name -> settings this arm changes


def resolve_arm(scenario: Scenario, arm: str) -> ResolvedArm:
    """Fill an arm's overrides from the scenario.  Defaults make a *good* staging arm: a different
    seed and a different Synthea population (same size, same shapes), break-glass drills so every
    class is exercised, and no injected attacks; production inherits everything and carries the
    attacks."""
    if arm not in ARM_NAMES:
        raise InputError(f"unknown arm {arm!r}; expected one of {ARM_NAMES}")
    o: ArmOverrides = getattr(scenario.arms, arm)
    staging = arm == "staging"
    pop = o.population
    if pop is None:
        pop = scenario.population
        if staging:
            pop = _staging_population(pop)
    return ResolvedArm(
        name=arm,  # type: ignore[arg-type]
        seed=o.seed if o.seed is not None else scenario.seed + (1 if staging else 0),
        population=pop,
        duration_ns=(o.duration or scenario.duration).total_ns(),
        arrivals=o.arrivals or "bursty",
        omit=tuple((x.agent, x.type) for x in (o.omit or [])),
        break_glass=o.break_glass or ("drill" if staging else "as_production"),
        drill_per_class=(o.drill or Drill()).per_class,
        attacks=o.attacks if o.attacks is not None else (not staging),
        changes=tuple(o.changes or []),
        volume_factor=o.volume_factor or 1.0,
        agent_settings=dict(o.agent_settings or {}),
    )


def _staging_population(pop: PopulationSettings) -> PopulationSettings:
    """Different patients from the same generator: Synthea seed + 1000, derive seed + 1000."""
    update = {}
    if pop.synthea is not None:
        update["synthea"] = pop.synthea.model_copy(update={"seed": pop.synthea.seed + 1000})
    if pop.derive is not None:
        update["derive"] = pop.derive.model_copy(update={"seed": pop.derive.seed + 1000})
    return pop.model_copy(update=update)


def resolve_arms(scenario: Scenario) -> dict[str, ResolvedArm]:
    """Both arms, resolved once for the whole run (every step takes them from here)."""
    return {name: resolve_arm(scenario, name) for name in ARM_NAMES}
