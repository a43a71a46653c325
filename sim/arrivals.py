"""Arrival streams: non-homogeneous Poisson arrivals by hour of day and weekday, and clinic slots.

Time is integer nanoseconds since the scenario start (the trace's ``t_ns``), so SimPy's clock,
the trace and the enforcement decisions all use exact integers.  Arrival streams are drawn
vectorised (one Poisson count per clock hour, uniform times inside the hour), which is exact
for a rate that is constant within each hour.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from paritybed.core.clock import Clock, minutes_of_day
from paritybed.core.units import DAY_NS, HOUR_NS, NS_PER_MIN
from paritybed.scenarios.hospital import ClinicSession


def normalised(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()


def weekday_multipliers(factors: Sequence[float] | None) -> np.ndarray:
    """Weekday factors scaled to mean 1, so the daily volume stays the weekly average."""
    if factors is None:
        return np.ones(7)
    f = np.asarray(factors, dtype=float)
    return f / f.mean()


def hourly_rates(clock: Clock, per_day: float, hourly: Sequence[float] | None, weekday: Sequence[float] | None,
                 uniform: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(start of each clock hour, expected arrivals in it) of a stream (`nhpp`'s rates)."""
    starts, hod, wd = clock.hours()
    shares = np.full(24, 1 / 24) if (uniform or hourly is None) else normalised(hourly)
    days = np.ones(7) if uniform else weekday_multipliers(weekday)
    return starts, per_day * days[wd] * shares[hod]


def expected_arrivals(clock: Clock, per_day: float, hourly: Sequence[float] | None, weekday: Sequence[float] | None,
                      uniform: bool = False) -> float:
    """The expected number of arrivals `nhpp` draws in the run (the hours inside it)."""
    starts, lam = hourly_rates(clock, per_day, hourly, weekday, uniform)
    inside = np.clip(np.minimum(starts + HOUR_NS, clock.duration_ns) - np.maximum(starts, 0), 0, HOUR_NS) / HOUR_NS
    return float((lam * inside).sum())


def nhpp(rng: np.random.Generator, clock: Clock, per_day: float, hourly: Sequence[float] | None,
         weekday: Sequence[float] | None, uniform: bool = False) -> np.ndarray:
    """Sorted arrival times (int ns) in [0, duration) of a Poisson stream whose rate in each clock
    hour is per_day x weekday factor x hourly share; ``uniform`` flattens both profiles (the same
    total volume spread evenly, which is what a naive load generator does)."""
    starts, lam = hourly_rates(clock, per_day, hourly, weekday, uniform)
    counts = rng.poisson(lam)
    total = int(counts.sum())
    t = np.repeat(starts, counts) + (rng.random(total) * HOUR_NS).astype(np.int64)
    t = t[(t >= 0) & (t < clock.duration_ns)]
    t.sort(kind="stable")
    return t


def clinic_times(rng: np.random.Generator, clock: Clock, per_day: float, sessions: Sequence[ClinicSession],
                 weekday: Sequence[float], slot_min: float, uniform: bool = False) -> np.ndarray:
    """Outpatient arrivals: a Poisson number per day (weekday factors), each booked on a slot of a
    clinic session (sessions weighted by length), arriving a few minutes around the slot start,
    so clinics open with a burst.  ``uniform``: the same volume spread evenly over 24 h."""
    if uniform:
        return nhpp(rng, clock, per_day, None, None, uniform=True)
    slot_arr = clinic_slots(sessions, slot_min)
    out = []
    for midnight, wd, rate in clinic_days(clock, per_day, weekday):
        n = int(rng.poisson(rate))
        chosen = slot_arr[rng.integers(0, len(slot_arr), n)]
        jitter = rng.normal(-3.0, 4.0, n)  # patients arrive a little before or after the slot
        out.append(midnight + ((chosen + jitter) * NS_PER_MIN).astype(np.int64))
    t = np.concatenate(out) if out else np.zeros(0, np.int64)
    t = t[(t >= 0) & (t < clock.duration_ns)]
    t.sort(kind="stable")
    return t


def clinic_slots(sessions: Sequence[ClinicSession], slot_min: float) -> np.ndarray:
    """Slot start minutes of a clinic day."""
    slots: list[float] = []
    for s in sessions:
        m = float(minutes_of_day(s.start))
        while m < minutes_of_day(s.end):
            slots.append(m)
            m += slot_min
    return np.asarray(slots, dtype=float)


def clinic_days(clock: Clock, per_day: float, weekday: Sequence[float]) -> list[tuple[int, int, float]]:
    """(midnight ns, weekday, expected visits) of each calendar day the run touches."""
    days = weekday_multipliers(weekday)
    first_midnight = -clock.start_minute * NS_PER_MIN
    ndays = int(math.ceil((clock.duration_ns - first_midnight) / DAY_NS))
    return [(first_midnight + d * DAY_NS, (clock.start_weekday + d) % 7, per_day * days[(clock.start_weekday + d) % 7])
            for d in range(ndays)]


def expected_clinic_visits(clock: Clock, per_day: float, sessions: Sequence[ClinicSession], weekday: Sequence[float],
                           slot_min: float, uniform: bool = False) -> float:
    """The expected number of visits `clinic_times` books inside the run."""
    if uniform:
        return expected_arrivals(clock, per_day, None, None, uniform=True)
    slots = clinic_slots(sessions, slot_min)
    total = 0.0
    for midnight, _, rate in clinic_days(clock, per_day, weekday):
        t = midnight + slots * NS_PER_MIN
        total += float(rate) * float(((t >= 0) & (t < clock.duration_ns)).mean()) if len(slots) else 0.0
    return total
