"""Where an arm's patients come from: the real Synthea (generated, cached) or a folder of bundles."""

from __future__ import annotations

import datetime as dt

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


class PopulationSettings(Strict):
    """Exactly one of: ``synthea`` (generate with the real Synthea) or ``folder`` (existing bundles)."""

    synthea: SyntheaSettings | None = None
    folder: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "PopulationSettings":
        if (self.synthea is None) == (self.folder is None):
            raise ValueError("expected exactly one of 'synthea' or 'folder'")
        return self
