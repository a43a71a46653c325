"""The hospital's volumes and capacity, and the published figures behind the defaults
(../shared/data/hospital-operations.md, each with its source)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from paritybed.core.clock import minutes_of_day
from paritybed.scenarios.base import HHMM, Strict, hhmm, profile


class ClinicSession(Strict):
    start: HHMM
    end: HHMM

    _t = field_validator("start", "end")(classmethod(lambda cls, v: hhmm(v)))

    @model_validator(mode="after")
    def _order(self) -> "ClinicSession":
        if minutes_of_day(self.end) <= minutes_of_day(self.start):
            raise ValueError(f"expected end after start, found {self.start}-{self.end}")
        return self


# Published figures: ../shared/data/hospital-operations.md (each with its source).
ED_WEEKDAY = [1.08, 1.00, 0.99, 0.97, 1.01, 0.97, 0.98]  # UIHC ED 2013-18 (fastTS)
ADMISSION_WEEKDAY = [1.133, 1.133, 1.133, 1.133, 1.133, 0.668, 0.668]  # HCUP SB87: weekend day ~0.59x
OUTPATIENT_WEEKDAY = [1.3, 1.3, 1.3, 1.3, 1.3, 0.25, 0.25]  # assumption: clinics mostly closed weekends


class WeekdayFactors(Strict):
    ed: list[float] = Field(default_factory=lambda: list(ED_WEEKDAY))
    admissions: list[float] = Field(default_factory=lambda: list(ADMISSION_WEEKDAY))
    discharges: list[float] = Field(default_factory=lambda: list(ADMISSION_WEEKDAY))
    outpatient: list[float] = Field(default_factory=lambda: list(OUTPATIENT_WEEKDAY))

    @field_validator("ed", "admissions", "discharges", "outpatient")
    @classmethod
    def _seven(cls, v: list[float]) -> list[float]:
        return profile(v, 7, "weekday factors (Monday..Sunday)")


class HospitalSettings(Strict):
    """Volumes and capacity.  The defaults are one consistent Little's-law pair: census =
    admissions/day x mean LOS = 49 x 4.6 = 225 = 300 beds x 0.75 (HHS occupancy 2023-24, Florida
    LOS); AHA's 40.2 admissions per bed-year (33/day) would give a 51% census instead."""

    beds: int = Field(300, ge=1)
    occupancy: float = Field(0.75, gt=0, le=1)  # census at t=0 = beds x occupancy
    ed_visits_per_day: float = Field(144, ge=0)
    admissions_per_day: float = Field(49, ge=0)
    outpatient_visits_per_day: float = Field(630, ge=0)
    length_of_stay_days: float = Field(4.6, gt=0)  # mean; log-normal with the median below
    length_of_stay_median_days: float = Field(3.7, gt=0)
    ed_stay_hours: float = Field(4.0, gt=0)  # mean ED visit length: orders and results fall inside it
    clinic_sessions: list[ClinicSession] = Field(
        default_factory=lambda: [ClinicSession(start="08:00", end="12:00"), ClinicSession(start="13:00", end="17:00")]
    )
    clinic_slot_min: float = Field(15, gt=0)  # appointments start on slot boundaries
    weekday_factors: WeekdayFactors = Field(default_factory=WeekdayFactors)

    @model_validator(mode="after")
    def _los(self) -> "HospitalSettings":
        if self.length_of_stay_median_days >= self.length_of_stay_days:
            raise ValueError(
                f"expected length_of_stay_median_days below length_of_stay_days (a right-skewed stay), "
                f"found median {self.length_of_stay_median_days} >= mean {self.length_of_stay_days}"
            )
        return self
