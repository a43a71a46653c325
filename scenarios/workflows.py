"""The clinical workflows that drive the agents: arrival profiles by hour, rounds, handoffs,
medication reconciliation, results and orders, the prior-authorization queue."""

from __future__ import annotations

from pydantic import Field, field_validator

from paritybed.scenarios.base import HHMM, Strict, hhmm, profile
from paritybed.scenarios.hospital import ClinicSession

ED_HOURLY = [2.8, 2.4, 2.0, 1.6, 1.4, 1.4, 1.6, 2.2, 3.5, 4.6, 5.4, 5.8, 5.9, 5.8, 5.9, 6.0, 6.2, 6.2, 6.0, 5.8, 5.3, 4.8, 4.0, 3.3]
ADMISSION_HOURLY = [2.0, 1.8, 1.6, 1.4, 1.2, 1.2, 1.5, 3.0, 4.0, 4.0, 3.5, 3.5, 5.0, 5.5, 6.0, 6.3, 6.5, 6.5, 6.3, 6.0, 5.7, 5.2, 4.5, 3.8]
DISCHARGE_HOURLY = [0.2] * 9 + [1.7, 4.0, 7.5, 8.0, 9.5, 10.0, 13.0, 13.0, 11.0, 8.0, 5.5, 3.5, 2.0, 1.0, 0.5]
LAB_RESULT_HOURLY = [2, 2, 2, 2, 4, 8, 9, 8, 6, 5, 5, 5, 5, 4, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2]
ORDER_HOURLY = [1.5, 1, 1, 1, 1, 1.5, 3, 5, 8, 9, 8, 7, 6, 5, 5, 5, 5, 4.5, 4, 3.5, 3, 2.5, 2, 2]


class HourlyProfile(Strict):
    hourly: list[float]

    @field_validator("hourly")
    @classmethod
    def _24(cls, v: list[float]) -> list[float]:
        return profile(v, 24, "hour-of-day weights (00:00..23:00)")

    def shares(self) -> list[float]:
        s = sum(self.hourly)
        return [x / s for x in self.hourly]


class Rounds(Strict):
    start: HHMM = "07:00"
    duration_min: float = Field(120, gt=0)
    scribe_share: float = Field(0.5, ge=0, le=1)
    orders_per_patient: float = Field(2.0, ge=0)

    _t = field_validator("start")(classmethod(lambda cls, v: hhmm(v)))


class ShiftHandoffs(Strict):
    times: list[HHMM] = Field(default_factory=lambda: ["07:00", "19:00"])
    window_min: float = Field(30, gt=0)
    scribe_share: float = Field(0.3, ge=0, le=1)

    @field_validator("times")
    @classmethod
    def _times(cls, v: list[str]) -> list[str]:
        return [hhmm(x) for x in v]


class MedRec(Strict):
    at_admission: bool = True
    at_discharge: bool = True
    admission_delay_min: float = Field(46.2, ge=0)  # Montreal 2013: admission med rec 46.2 min
    discharge_lead_min: float = Field(19.4, ge=0)  # discharge med rec 19.4 min before leaving


class ResultsAndOrders(Strict):
    lab_results_per_inpatient_day: float = Field(24, ge=0)
    lab_result_profile: HourlyProfile = Field(default_factory=lambda: HourlyProfile(hourly=list(LAB_RESULT_HOURLY)))
    orders_per_inpatient_day: float = Field(10, ge=0)
    order_profile: HourlyProfile = Field(default_factory=lambda: HourlyProfile(hourly=list(ORDER_HOURLY)))
    ed_orders_per_visit: float = Field(4, ge=0)
    ed_lab_results_per_visit: float = Field(6, ge=0)
    outpatient_orders_per_visit: float = Field(1.5, ge=0)
    outpatient_lab_results_per_visit: float = Field(2, ge=0)
    lab_turnaround_min: float = Field(60, gt=0)  # mean minutes from an ED/outpatient visit to its results


class PriorAuthQueue(Strict):
    claims_per_day: float = Field(200, ge=0)
    business_hours: ClinicSession = Field(default_factory=lambda: ClinicSession(start="08:00", end="17:00"))
    weekdays_only: bool = True


class WorkflowSettings(Strict):
    ed_arrivals: HourlyProfile = Field(default_factory=lambda: HourlyProfile(hourly=list(ED_HOURLY)))
    admissions: HourlyProfile = Field(default_factory=lambda: HourlyProfile(hourly=list(ADMISSION_HOURLY)))
    discharges: HourlyProfile = Field(default_factory=lambda: HourlyProfile(hourly=list(DISCHARGE_HOURLY)))
    rounds: Rounds = Field(default_factory=Rounds)
    shift_handoffs: ShiftHandoffs = Field(default_factory=ShiftHandoffs)
    med_rec: MedRec = Field(default_factory=MedRec)
    results_and_orders: ResultsAndOrders = Field(default_factory=ResultsAndOrders)
    prior_auth: PriorAuthQueue = Field(default_factory=PriorAuthQueue)
