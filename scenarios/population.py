"""Where an arm's patients come from: the real Synthea (generated, cached) or a folder of bundles,
and optionally as many distinct patients as the arm has visits, derived from them."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, model_validator

from paritybed.scenarios.base import Strict


class SyntheaSettings(Strict):
    patients: int = Field(40, ge=1, le=100_000)
    seed: int = 1
    state: str = "Massachusetts"
    city: str | None = None
    years_of_history: int = Field(3, ge=0, le=100)
    reference_date: dt.date = dt.date(2026, 1, 1)
    clinician_seed: int | None = None


class DeriveSettings(Strict):
    """Distinct patients derived from the base records (``synthea`` or ``folder``): each a
    re-identified, re-dated copy of a base record as of one of its encounters, the visit the
    hospital sees it for (docs/population.md, "Derived patients")."""

    patients: int | Literal["auto"] = "auto"  # auto: the arm's expected visits per stream plus a margin
    seed: int = 1  # a staging arm without its own population uses seed + 1000
    recent_days: int = Field(28, ge=1, le=3650)  # each copy's visit moves into this many days before the start
    history_days: int = Field(0, ge=0, le=36500)  # earlier encounters kept before the visit (0: the visit only)

    @model_validator(mode="after")
    def _count(self) -> "DeriveSettings":
        if self.patients != "auto" and not 1 <= self.patients <= 1_000_000:
            raise ValueError(f"expected patients 'auto' or 1..1000000, found {self.patients}")
        return self


class PopulationSettings(Strict):
    """Exactly one of: ``synthea`` (generate with the real Synthea) or ``folder`` (existing bundles);
    with ``derive``, the arm's patients are derived from those (one per visit)."""

    synthea: SyntheaSettings | None = None
    folder: str | None = None
    derive: DeriveSettings | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "PopulationSettings":
        if (self.synthea is None) == (self.folder is None):
            raise ValueError("expected exactly one of 'synthea' or 'folder'")
        return self
