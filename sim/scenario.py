"""Scenario YAML: the schema (pydantic), the loader with file/line/column errors, and arm resolution.

A scenario describes one run: the hospital, its patients, the agent fleet, the BAA registry, the
break-glass classes, the attacks, the two arms (production and staging) and the gate thresholds.
Every downstream step reads the scenario, so the whole schema lives here, and nothing else parses
the YAML.  Every field is documented in docs/scenarios.md with its default and unit.

Units are in the field names (``_per_day``, ``_min``, ``_s``), hour-of-day profiles are 24
relative weights for 00:00..23:00 (normalised here), weekday factors are 7 numbers for
Monday..Sunday (relative to the daily volume).
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from paritybed.core.clock import WEEKDAYS, Clock, minutes_of_day
from paritybed.core.errors import InputError

INTERACTIONS = ("read", "vread", "search", "create", "update", "delete", "history")
AGENT_CLASSES = ("ambient_scribe", "cds", "prior_auth")
RESPONSES = ("deny", "kill", "quarantine", "alert", "observe")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_ADDRESS = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")


class Strict(BaseModel):
    """Base for every section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _hhmm(v: str) -> str:
    if not isinstance(v, str) or not _HHMM.match(v):
        raise ValueError(f"expected a time of day as HH:MM (00:00..23:59), found {v!r}")
    return v


HHMM = Annotated[str, Field(description="time of day HH:MM")]


def _profile(v: list[float], n: int, what: str) -> list[float]:
    if len(v) != n:
        raise ValueError(f"expected {n} {what}, found {len(v)}")
    if any(x < 0 for x in v) or sum(v) <= 0:
        raise ValueError(f"expected non-negative {what} with a positive sum")
    return v


# ------------------------------------------------------------------------------------ basics
class Start(Strict):
    """When simulated time 0 is: a calendar date (for BAA effective dates) and a time of day."""

    date: dt.date | None = None
    weekday: Literal[WEEKDAYS] = "monday"  # type: ignore[valid-type]
    time: HHMM = "00:00"

    _t = field_validator("time")(classmethod(lambda cls, v: _hhmm(v)))

    @model_validator(mode="after")
    def _weekday_matches(self) -> "Start":
        if self.date is not None and WEEKDAYS[self.date.weekday()] != self.weekday:
            # The date wins only if the weekday was left at its default; otherwise it is a contradiction.
            if "weekday" in self.model_fields_set:
                raise ValueError(
                    f"date {self.date} is a {WEEKDAYS[self.date.weekday()]}, not a {self.weekday}"
                )
        return self

    def calendar_date(self) -> dt.date:
        """The start date: the given one, or the first matching weekday on/after 2026-01-01."""
        if self.date is not None:
            return self.date
        d = dt.date(2026, 1, 1)
        while WEEKDAYS[d.weekday()] != self.weekday:
            d += dt.timedelta(days=1)
        return d

    def clock(self, duration_ns: int) -> Clock:
        """The clock of an arm of ``duration_ns`` starting at this moment of the week."""
        return Clock(start_minute=minutes_of_day(self.time), start_weekday=WEEKDAYS.index(self.weekday),
                     duration_ns=duration_ns)

    def datetime(self) -> dt.datetime:
        h, m = self.time.split(":")
        d = self.calendar_date()
        return dt.datetime(d.year, d.month, d.day, int(h), int(m), tzinfo=dt.timezone.utc)


class Duration(Strict):
    days: float = Field(0, ge=0)
    hours: float = Field(0, ge=0)
    minutes: float = Field(0, ge=0)

    @model_validator(mode="after")
    def _positive(self) -> "Duration":
        if self.total_ns() <= 0:
            raise ValueError("expected a positive duration (days, hours and/or minutes)")
        return self

    def total_ns(self) -> int:
        return int(round(((self.days * 24 + self.hours) * 60 + self.minutes) * 60 * 1e9))


class At(Strict):
    """A moment in the run: day 1 is the first simulated day; time is the time of day."""

    day: int = Field(1, ge=1)
    time: HHMM = "00:00"

    _t = field_validator("time")(classmethod(lambda cls, v: _hhmm(v)))


# ------------------------------------------------------------------------------------ population
class SyntheaPopulation(Strict):
    patients: int = Field(40, ge=1, le=100_000)
    seed: int = 1
    state: str = "Massachusetts"
    city: str | None = None
    years_of_history: int = Field(3, ge=0, le=100)
    reference_date: dt.date = dt.date(2026, 1, 1)
    clinician_seed: int | None = None


class Population(Strict):
    """Exactly one of: ``synthea`` (generate with the real Synthea) or ``folder`` (existing bundles)."""

    synthea: SyntheaPopulation | None = None
    folder: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "Population":
        if (self.synthea is None) == (self.folder is None):
            raise ValueError("expected exactly one of 'synthea' or 'folder'")
        return self


# ------------------------------------------------------------------------------------ hospital
class ClinicSession(Strict):
    start: HHMM
    end: HHMM

    _t = field_validator("start", "end")(classmethod(lambda cls, v: _hhmm(v)))

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
        return _profile(v, 7, "weekday factors (Monday..Sunday)")


class Hospital(Strict):
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
    def _los(self) -> "Hospital":
        if self.length_of_stay_median_days >= self.length_of_stay_days:
            raise ValueError(
                f"expected length_of_stay_median_days below length_of_stay_days (a right-skewed stay), "
                f"found median {self.length_of_stay_median_days} >= mean {self.length_of_stay_days}"
            )
        return self


# ------------------------------------------------------------------------------------ workflows
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
        return _profile(v, 24, "hour-of-day weights (00:00..23:00)")

    def shares(self) -> list[float]:
        s = sum(self.hourly)
        return [x / s for x in self.hourly]


class Rounds(Strict):
    start: HHMM = "07:00"
    duration_min: float = Field(120, gt=0)
    scribe_share: float = Field(0.5, ge=0, le=1)
    orders_per_patient: float = Field(2.0, ge=0)

    _t = field_validator("start")(classmethod(lambda cls, v: _hhmm(v)))


class ShiftHandoffs(Strict):
    times: list[HHMM] = Field(default_factory=lambda: ["07:00", "19:00"])
    window_min: float = Field(30, gt=0)
    scribe_share: float = Field(0.3, ge=0, le=1)

    @field_validator("times")
    @classmethod
    def _times(cls, v: list[str]) -> list[str]:
        return [_hhmm(x) for x in v]


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


class Workflows(Strict):
    ed_arrivals: HourlyProfile = Field(default_factory=lambda: HourlyProfile(hourly=list(ED_HOURLY)))
    admissions: HourlyProfile = Field(default_factory=lambda: HourlyProfile(hourly=list(ADMISSION_HOURLY)))
    discharges: HourlyProfile = Field(default_factory=lambda: HourlyProfile(hourly=list(DISCHARGE_HOURLY)))
    rounds: Rounds = Field(default_factory=Rounds)
    shift_handoffs: ShiftHandoffs = Field(default_factory=ShiftHandoffs)
    med_rec: MedRec = Field(default_factory=MedRec)
    results_and_orders: ResultsAndOrders = Field(default_factory=ResultsAndOrders)
    prior_auth: PriorAuthQueue = Field(default_factory=PriorAuthQueue)


# ------------------------------------------------------------------------------------ agents
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

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
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


# ------------------------------------------------------------------------------------ BAA registry
class BaaEndpoint(Strict):
    name: str
    address: str
    baa_id: str | None = None
    vendor: str | None = None
    status: Literal["active", "pending", "terminated"] = "active"
    effective_from: dt.date | None = None
    effective_to: dt.date | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not _ADDRESS.match(v):
            raise ValueError(f"expected an address ip:port such as 127.0.0.21:8443, found {v!r}")
        return v


class BaaRegistry(Strict):
    version: int = Field(1, ge=1)
    endpoints: list[BaaEndpoint] = Field(default_factory=list)


# ------------------------------------------------------------------------------------ break-glass
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
        return None if v is None else _profile(v, 24, "hour-of-day weights (00:00..23:00)")

    @model_validator(mode="after")
    def _within_lane(self) -> "BreakGlassClass":
        # Work under the lane must end before the lane does, or legitimate care would be
        # labelled as an access after expiry.
        if self.active_min > self.duration_min:
            raise ValueError(f"expected active_min <= duration_min, found {self.active_min} > {self.duration_min}")
        return self

    def identity_role(self) -> str:
        return self.role or self.name.replace("_", "-") + "-responder"


# ------------------------------------------------------------------------------------ attacks and changes
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
        if self.address is not None and not _ADDRESS.match(self.address):
            raise ValueError(f"expected an address ip:port, found {self.address!r}")
        return self


class EgressChange(Strict):
    name: str
    address: str
    share: float = Field(0.2, gt=0, le=1)  # share of the agent's queries that call it after the change

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not _ADDRESS.match(v):
            raise ValueError(f"expected an address ip:port, found {v!r}")
        return v


class Change(Strict):
    """A deployment change to an agent during the run (e.g. a hotfix adding an endpoint)."""

    name: str
    at: At
    agent: str
    add_egress: EgressChange


class Omission(Strict):
    agent: str
    type: str


# ------------------------------------------------------------------------------------ arms
class Drill(Strict):
    per_class: int = Field(2, ge=1)


class ArmOverrides(Strict):
    """What an arm changes relative to the scenario's model (None = inherit)."""

    seed: int | None = None
    population: Population | None = None
    duration: Duration | None = None
    arrivals: Literal["bursty", "uniform"] | None = None
    omit: list[Omission] | None = None
    break_glass: Literal["as_production", "drill", "off"] | None = None
    drill: Drill | None = None
    attacks: bool | None = None
    changes: list[Change] | None = None
    volume_factor: float | None = Field(None, gt=0)


class Arms(Strict):
    production: ArmOverrides = Field(default_factory=ArmOverrides)
    staging: ArmOverrides = Field(default_factory=ArmOverrides)


# ------------------------------------------------------------------------------------ gate and policy
class FidelityGate(Strict):
    resource_mix_jsd_max: float = Field(0.10, ge=0, le=1)
    hour_profile_jsd_max: float = Field(0.15, ge=0, le=1)
    interarrival_ks_max: float = Field(0.08, ge=0, le=1)  # parity: KS on gaps between new contexts (docs/parity.md)
    burst_ratio_min: float = Field(0.75, ge=0)
    context_ks_max: float = Field(0.30, ge=0, le=1)  # parity: requests per context are small integers (docs/parity.md)


class CoverageGate(Strict):
    support_min_share: float = Field(0.0005, ge=0, le=1)
    support_min_count: int = Field(3, ge=1)
    staging_min_count: int = Field(1, ge=1)


class BreakGlassGate(Strict):
    require_expiry_exercised: bool = True


class ReplayGate(Strict):
    max_over_block_share: float | None = Field(None, ge=0, le=1)
    max_under_blocks: int | None = Field(None, ge=0)


class Gate(Strict):
    fidelity: FidelityGate = Field(default_factory=FidelityGate)
    coverage: CoverageGate = Field(default_factory=CoverageGate)
    break_glass: BreakGlassGate = Field(default_factory=BreakGlassGate)
    replay: ReplayGate = Field(default_factory=ReplayGate)


class PolicySettings(Strict):
    """How the staging envelope compiles to an enforceable policy."""

    fhir_server: str = "127.0.0.1:8080"
    fhir_base: str = "/fhir"
    rate_margin: float = Field(1.5, ge=1)  # multiplies the staging peak 5-minute count
    lane_duration_margin: float = Field(1.0, ge=1)
    quarantine_hold_min: float | None = Field(15, gt=0)  # None: until released by an operator
    min_pair_count: int = Field(1, ge=1)  # a pair enters the envelope from this many staging requests

    @field_validator("fhir_server")
    @classmethod
    def _server(cls, v: str) -> str:
        if not _ADDRESS.match(v):
            raise ValueError(f"expected host:port such as 127.0.0.1:8080, found {v!r}")
        return v


# ------------------------------------------------------------------------------------ scenario
class Scenario(Strict):
    name: str
    description: str = ""
    seed: int = 1
    start: Start = Field(default_factory=Start)
    duration: Duration = Field(default_factory=lambda: Duration(days=7))
    population: Population
    hospital: Hospital = Field(default_factory=Hospital)
    workflows: Workflows = Field(default_factory=Workflows)
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
                raise ValueError(f"{_field_path(loc)}: expected {expected}, found {found}")
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
        return out

    def agent(self, name: str) -> ScribeAgent | CdsAgent | PriorAuthAgent:
        for a in self.agents:
            if a.name == name:
                return a
        raise KeyError(name)


# ------------------------------------------------------------------------------------ resolved arms
ARM_NAMES = ("production", "staging")


class ResolvedArm(BaseModel):
    """One arm with every inherited value filled in: what the simulation of that arm runs."""

    model_config = ConfigDict(frozen=True)

    name: Literal["production", "staging"]
    seed: int
    population: Population
    duration_ns: int
    arrivals: Literal["bursty", "uniform"]
    omit: tuple[tuple[str, str], ...]  # (agent name, resource type)
    break_glass: Literal["as_production", "drill", "off"]
    drill_per_class: int
    attacks: bool
    changes: tuple[Change, ...]
    volume_factor: float


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
        if staging and pop.synthea is not None:
            pop = Population(synthea=pop.synthea.model_copy(update={"seed": pop.synthea.seed + 1000}))
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
    )


# ------------------------------------------------------------------------------------ loading
_TAGS = ("ScribeAgent", "CdsAgent", "PriorAuthAgent") + AGENT_CLASSES


def _yaml():
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def _yaml_key(part: Any) -> Any:
    return "class" if part == "agent_class" else part


def _locate(node: Any, loc: tuple[Any, ...]) -> tuple[int, int] | None:
    """Line and column (1-based) of the deepest YAML node on a pydantic error path: the key of a
    mapping entry, or the item of a list."""
    best: tuple[int, int] | None = None
    if getattr(node, "lc", None) is not None:
        best = (node.lc.line + 1, node.lc.col + 1)
    cur = node
    for part in loc:
        if part in _TAGS and not (isinstance(cur, dict) and part in cur):
            continue  # a discriminated-union tag in the error path, not a YAML key
        key = _yaml_key(part)
        lc = getattr(cur, "lc", None)
        try:
            if isinstance(key, int) and isinstance(cur, list) and key < len(cur):
                if lc is not None:
                    ln, col = lc.item(key)
                    best = (ln + 1, col + 1)
                cur = cur[key]
            elif isinstance(cur, dict) and key in cur:
                if lc is not None:
                    ln, col = lc.key(key)
                    best = (ln + 1, col + 1)
                cur = cur[key]
            else:
                break
        except Exception:  # noqa: BLE001 - positions are best effort, the message is what matters
            break
    return best


def _found(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return repr(value)[:80]


def _all_field_names() -> list[str]:
    """Every field name of the schema (for "did you mean" hints on a misspelt key)."""
    names: set[str] = set()
    seen: set[type] = set()

    def walk(model: type) -> None:
        if model in seen:
            return
        seen.add(model)
        for fname, f in model.model_fields.items():
            names.add(f.alias or fname)
            for sub in _models_in(f.annotation):
                walk(sub)

    walk(Scenario)
    return sorted(names)


def _models_in(annotation: Any) -> list[type]:
    """The pydantic models mentioned in a type annotation (through list/Union/Annotated)."""
    import typing

    out: list[type] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for arg in typing.get_args(annotation):
        out.extend(_models_in(arg))
    return out


def _describe(err: dict[str, Any]) -> tuple[str, str]:
    """(what was expected, what was found) for one pydantic error, in words a user understands."""
    t = err.get("type", "")
    found = err.get("input")
    msg = err.get("msg", "")
    ctx = err.get("ctx") or {}
    if t == "extra_forbidden":
        loc = err.get("loc", ())
        name = str(loc[-1]) if loc else ""
        near = difflib.get_close_matches(name, _all_field_names(), n=1, cutoff=0.6)
        hint = f"'{near[0]}'" if near else "a field listed in docs/scenarios.md"
        return (f"{hint} ('{name}' is not a field here: check the spelling)", _found(found))
    if t == "missing":
        return ("this field (it is required)", "nothing")
    if t == "union_tag_invalid":
        return (f"one of {ctx.get('expected_tags', '')}", repr(ctx.get("tag", found))[:80])
    if t == "union_tag_not_found":
        return (f"a 'class' key (one of {', '.join(AGENT_CLASSES)})", "no 'class'")
    if t.startswith("literal_error"):
        return (msg.replace("Input should be ", "one of "), _found(found))
    if t == "model_type" or t == "dict_type":
        return ("a mapping of fields", _found(found))
    if msg.startswith("Value error, "):
        text = msg[len("Value error, "):]
        if text.startswith("expected "):
            # Our validators say "expected X, found Y" themselves.
            exp, _, fnd = text[len("expected "):].partition(", found ")
            return (exp, fnd or _found(found))
        return (text, _found(found))
    if msg.startswith("Input should be "):
        text = msg[len("Input should be "):]
        if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            text = "a number " + text
        return (text, _found(found))
    return (msg, _found(found))


class ScenarioError(InputError):
    """A scenario file that does not validate; the message names file, line, column and field."""

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or [message]


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in _TAGS:
            continue  # discriminated-union tag, not a YAML key
        else:
            out += ("." if out else "") + str(_yaml_key(p))
    return out or "(top level)"


def _problem_lines(p: Path, data: Any, items: list[tuple[tuple[Any, ...], str, str]]) -> list[str]:
    """'file:line:col: field: expected X; found Y' for each problem, in file order."""
    rows = []
    for loc, expected, found in items:
        pos = _locate(data, loc)
        where = f"{p}:{pos[0]}:{pos[1]}" if pos else str(p)
        rows.append(((pos or (0, 0)), f"{where}: {_field_path(loc)}: expected {expected}; found {found}"))
    rows.sort(key=lambda r: r[0])
    out: list[str] = []
    for _, line in rows:
        if line not in out:
            out.append(line)
    return out


def _error_items(e: ValidationError) -> list[tuple[tuple[Any, ...], str, str]]:
    items = []
    for err in e.errors():
        loc = tuple(err.get("loc", ()))
        if err.get("type", "").startswith("union_tag"):
            loc = loc + ("class",)  # point at the `class:` key (or its absence) of the agent
        expected, found = _describe(err)
        items.append((loc, expected, found))
    return items


def load_scenario(path: str | Path) -> Scenario:
    """Parse and validate a scenario YAML.  Raises ScenarioError naming file:line:col, the field
    path, what was expected and what was found, for every problem at once (``.problems``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{p}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{p}: cannot read the scenario: {e}") from None
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        data = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise ScenarioError(f"{where}: not valid YAML: {e.problem or e.context}") from None
    except YAMLError as e:
        raise ScenarioError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{p}:1:1: expected a mapping of scenario fields, found {type(data).__name__}")
    try:
        sc = Scenario.model_validate(_plain(data), context={"defer_references": True})
    except ValidationError as e:
        lines = _problem_lines(p, data, _error_items(e))
        raise ScenarioError("invalid scenario\n  " + "\n  ".join(lines), problems=lines) from None
    refs = sc.reference_problems()
    if refs:
        lines = _problem_lines(p, data, refs)
        raise ScenarioError("invalid scenario\n  " + "\n  ".join(lines), problems=lines)
    return _absolute_folders(sc, p.parent)


def _absolute_folders(sc: Scenario, base: Path) -> Scenario:
    """Population folders are relative to the scenario file: resolve them once, here."""

    def fix(pop: Population | None) -> Population | None:
        if pop is None or pop.folder is None or Path(pop.folder).is_absolute():
            return pop
        return Population(folder=str((base / pop.folder).resolve()))

    arms = sc.arms.model_copy(update={
        a: getattr(sc.arms, a).model_copy(update={"population": fix(getattr(sc.arms, a).population)}) for a in ARM_NAMES
    })
    return sc.model_copy(update={"population": fix(sc.population), "arms": arms})


def _plain(node: Any) -> Any:
    """ruamel's commented containers -> plain dicts/lists (pydantic validates plain data)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def scenario_hash(path: str | Path) -> str:
    """sha256 of the scenario file's bytes: recorded in parity.json so a verdict names its input."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
