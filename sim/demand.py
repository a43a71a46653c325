"""How many distinct patients an arm needs, for which visits: the demand a derived population
is built for (fhir/derive.py), from the same rates the hospital model draws its visits from.

Each visit stream of the hospital (sim/hospital.py) takes a patient not seen before in the run:
ED visits, inpatient stays (the census at the start and the admissions) and outpatient visits.
The expected number of each comes from the stream's rates over the arm's hours (sim/arrivals.py);
``auto`` adds a margin of four standard deviations of a Poisson count plus 5, so a week asks for
a few per cent more patients than it sees (the run counts any patient it has to reuse).
"""

from __future__ import annotations

import math

from paritybed.fhir.derive import Demand, DeriveOptions
from paritybed.scenarios import ResolvedArm, Scenario
from paritybed.sim.arrivals import expected_arrivals, expected_clinic_visits
from paritybed.sim.pools import CHAINS


def expected_visits(scenario: Scenario, arm: ResolvedArm) -> dict[str, float]:
    """Expected distinct visits of each stream (``ed``, ``inpatient``, ``outpatient``) in the arm."""
    h, wf = scenario.hospital, scenario.workflows
    clock = scenario.start.clock(arm.duration_ns)
    uniform, vf = arm.arrivals == "uniform", arm.volume_factor
    census = min(h.beds, int(round(h.beds * h.occupancy)))
    return {
        "ed": expected_arrivals(clock, h.ed_visits_per_day * vf, wf.ed_arrivals.hourly, h.weekday_factors.ed, uniform),
        "inpatient": census + expected_arrivals(clock, h.admissions_per_day * vf, wf.admissions.hourly,
                                                h.weekday_factors.admissions, uniform),
        "outpatient": expected_clinic_visits(clock, h.outpatient_visits_per_day * vf, h.clinic_sessions,
                                             h.weekday_factors.outpatient, h.clinic_slot_min, uniform),
    }


def demands(scenario: Scenario, arm: ResolvedArm) -> tuple[Demand, ...]:
    """The arm's demand for derived patients (its population's ``derive`` settings)."""
    settings = arm.population.derive
    assert settings is not None
    expected = expected_visits(scenario, arm)
    if settings.patients == "auto":
        counts = {k: math.ceil(v + 4 * math.sqrt(v) + 5) if v > 0 else 0 for k, v in expected.items()}
    else:
        counts = _shares(settings.patients, expected)
    return tuple(Demand(k, CHAINS[k], counts[k]) for k in CHAINS)


def _shares(total: int, expected: dict[str, float]) -> dict[str, int]:
    """`total` patients split in proportion to the expected visits (largest remainders)."""
    weight = sum(expected.values()) or 1.0
    raw = {k: total * (v / weight if sum(expected.values()) else 1 / len(expected)) for k, v in expected.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (counts[k] - raw[k], k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def derive_options(scenario: Scenario, arm: ResolvedArm) -> DeriveOptions:
    """What the arm's derived population is made with (its ``derive`` settings, the demand, and
    the scenario's start date: each copy's visit lands in the days before it)."""
    settings = arm.population.derive
    assert settings is not None
    return DeriveOptions(seed=settings.seed, demands=demands(scenario, arm), visits_before=scenario.start.calendar_date(),
                         recent_days=settings.recent_days, history_days=settings.history_days)
