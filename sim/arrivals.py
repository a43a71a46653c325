"""Simulated clock and arrival streams: non-homogeneous Poisson arrivals by hour of day and
weekday, clinic slots, and a buffered random source for the per-context draws.

Time is integer nanoseconds since the scenario start (the trace's ``t_ns``), so SimPy's clock,
the trace and the enforcement decisions all use exact integers.  Arrival streams are drawn
vectorised (one Poisson count per clock hour, uniform times inside the hour), which is exact
for a rate that is constant within each hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from paritybed.sim.scenario import WEEKDAYS, ClinicSession, ResolvedArm, Scenario, minutes_of_day

NS_PER_S = 1_000_000_000
NS_PER_MIN = 60 * NS_PER_S
HOUR_NS = 60 * NS_PER_MIN
DAY_NS = 24 * HOUR_NS


def ns_min(minutes: float) -> int:
    return int(round(minutes * NS_PER_MIN))


@dataclass(frozen=True)
class Clock:
    """Maps simulated ns to the wall clock of the simulated hospital (time of day, weekday)."""

    start_minute: int  # minute of day at t=0
    start_weekday: int  # 0 = Monday
    duration_ns: int

    @classmethod
    def of(cls, scenario: Scenario, arm: ResolvedArm) -> "Clock":
        st = scenario.start
        return cls(minutes_of_day(st.time), WEEKDAYS.index(st.weekday), arm.duration_ns)

    def hours(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start ns, hour of day, weekday) of every clock hour overlapping [0, duration)."""
        first = -(self.start_minute % 60) * NS_PER_MIN
        n = int(math.ceil((self.duration_ns - first) / HOUR_NS))
        k = np.arange(n, dtype=np.int64)
        abs_hour = self.start_minute // 60 + k
        return first + k * HOUR_NS, abs_hour % 24, (self.start_weekday + abs_hour // 24) % 7

    def minute_of_day(self, t_ns: int) -> float:
        return (self.start_minute + t_ns / NS_PER_MIN) % 1440

    def weekday(self, t_ns: int) -> int:
        return int((self.start_weekday + (self.start_minute + t_ns // NS_PER_MIN) // 1440) % 7)

    def at(self, day: int, hhmm: str) -> int:
        """Simulated ns of day `day` (1 = the first simulated day) at `hhmm` (>= 0)."""
        return max(0, (day - 1) * DAY_NS + (minutes_of_day(hhmm) - self.start_minute) * NS_PER_MIN)

    def next_at(self, t_ns: int, minute: float) -> int:
        """The first instant >= t_ns whose time of day is `minute` (minutes after midnight)."""
        now = self.minute_of_day(t_ns)
        return t_ns + int(round(((minute - now) % 1440) * NS_PER_MIN))

    def daily(self, minute: float) -> list[int]:
        """Every instant in [0, duration) whose time of day is `minute`."""
        out, t = [], self.next_at(0, minute)
        while t < self.duration_ns:
            out.append(t)
            t += DAY_NS
        return out


def normalised(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()


def weekday_multipliers(factors: Sequence[float] | None) -> np.ndarray:
    """Weekday factors scaled to mean 1, so the daily volume stays the weekly average."""
    if factors is None:
        return np.ones(7)
    f = np.asarray(factors, dtype=float)
    return f / f.mean()


def nhpp(rng: np.random.Generator, clock: Clock, per_day: float, hourly: Sequence[float] | None,
         weekday: Sequence[float] | None, uniform: bool = False) -> np.ndarray:
    """Sorted arrival times (int ns) in [0, duration) of a Poisson stream whose rate in each clock
    hour is per_day x weekday factor x hourly share; ``uniform`` flattens both profiles (the same
    total volume spread evenly, which is what a naive load generator does)."""
    starts, hod, wd = clock.hours()
    shares = np.full(24, 1 / 24) if (uniform or hourly is None) else normalised(hourly)
    days = np.ones(7) if uniform else weekday_multipliers(weekday)
    lam = per_day * days[wd] * shares[hod]
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
    days = weekday_multipliers(weekday)
    slots: list[int] = []  # slot start minutes of a day
    for s in sessions:
        m = minutes_of_day(s.start)
        while m < minutes_of_day(s.end):
            slots.append(m)
            m += slot_min
    slot_arr = np.asarray(slots, dtype=float)
    out = []
    first_midnight = -clock.start_minute * NS_PER_MIN
    ndays = int(math.ceil((clock.duration_ns - first_midnight) / DAY_NS))
    for d in range(ndays):
        midnight = first_midnight + d * DAY_NS
        wd = (clock.start_weekday + d) % 7
        n = int(rng.poisson(per_day * days[wd]))
        chosen = slot_arr[rng.integers(0, len(slot_arr), n)]
        jitter = rng.normal(-3.0, 4.0, n)  # patients arrive a little before or after the slot
        out.append(midnight + ((chosen + jitter) * NS_PER_MIN).astype(np.int64))
    t = np.concatenate(out) if out else np.zeros(0, np.int64)
    t = t[(t >= 0) & (t < clock.duration_ns)]
    t.sort(kind="stable")
    return t


def _buffered(fill: Callable[[int], np.ndarray], size: int) -> Iterator[float]:
    while True:
        yield from fill(size).tolist()


class Draws:
    """Buffered draws from one numpy Generator: one vectorised refill per 64k values instead of
    a numpy call per clinical context (which would dominate the run time); ``u`` and ``z`` are
    a generator's ``__next__``, the cheapest call Python has.  Deterministic: the sequence
    depends only on the generator's seed and the order of calls."""

    SIZE = 1 << 16

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        #: uniform [0, 1)
        self.u: Callable[[], float] = _buffered(rng.random, self.SIZE).__next__
        #: standard normal
        self.z: Callable[[], float] = _buffered(rng.standard_normal, self.SIZE).__next__

    def below(self, n: int) -> int:
        """Uniform integer in [0, n) (u < 1 makes int(u * n) <= n - 1 exactly in binary64)."""
        return int(self.u() * n)

    def chance(self, p: float) -> bool:
        return self.u() < p

    def exp_ns(self, mean_ns: float) -> int:
        return int(-mean_ns * math.log(1.0 - self.u()))

    def lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(sigma * self.z())

    def poisson(self, lam: float) -> int:
        """Poisson count by inversion (small means: per-visit orders and results)."""
        if lam <= 0:
            return 0
        if lam > 30:
            return max(0, int(round(lam + math.sqrt(lam) * self.z())))
        u, k, p = self.u(), 0, math.exp(-lam)
        c = p
        while u > c:
            k += 1
            p *= lam / k
            c += p
        return k
