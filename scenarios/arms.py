"""The two arms of a run (production, staging) and what each overrides."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from paritybed.scenarios.base import Strict
from paritybed.scenarios.events import Change, Omission
from paritybed.scenarios.population import PopulationSettings
from paritybed.scenarios.timing import Duration

ARM_NAMES = ("production", "staging")


class Drill(Strict):
    per_class: int = Field(2, ge=1)


class ArmOverrides(Strict):
    """What an arm changes relative to the scenario's model (None = inherit)."""

    seed: int | None = None
    population: PopulationSettings | None = None
    duration: Duration | None = None
    arrivals: Literal["bursty", "uniform"] | None = None
    omit: list[Omission] | None = None
    break_glass: Literal["as_production", "drill", "off"] | None = None
    drill: Drill | None = None
    attacks: bool | None = None
    changes: list[Change] | None = None
    volume_factor: float | None = Field(None, gt=0)
    # agent name -> the class settings this arm changes (e.g. a staging harness that signs drafts at once)
    agent_settings: dict[str, dict[str, Any]] | None = None


class Arms(Strict):
    production: ArmOverrides = Field(default_factory=ArmOverrides)
    staging: ArmOverrides = Field(default_factory=ArmOverrides)
