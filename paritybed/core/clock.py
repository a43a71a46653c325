"""The clock of a run: simulated time, where it falls in the hospital's week, and how it maps
onto the kernel's clock.

Simulated time is integer ns since the scenario start (``t_ns``).  The simulation asks the clock
for the time of day and the weekday of an instant (arrival profiles, rounds, business hours);
the kernel control plane asks it for the kernel time of an instant (lane expiries, BAA windows,
rate intervals).  On the virtual clock kernel time *is* simulated time (the live driver writes
each row's ``t_ns`` into a map); on the real clock the kernel reads ``bpf_ktime_get_ns()`` and
``ktime = k0 + t / compression``, where k0 is CLOCK_MONOTONIC at simulated t = 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from paritybed.core.units import DAY_NS, HOUR_NS, I64_MAX, I64_MIN, NS_PER_MIN

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def minutes_of_day(hhmm: str) -> int:
    """'07:30' -> 450."""
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


@dataclass(frozen=True)
class Clock:
    """Simulated time of one run (module doc).  Build it with keywords: the calendar fields for
    the simulation, the kernel fields for the control plane (defaults: the virtual clock)."""

    start_minute: int = 0  # minute of day at t=0
    start_weekday: int = 0  # 0 = Monday
    duration_ns: int = 0  # the arm's length (the simulation's horizon)
    real: bool = False  # the kernel reads its own clock (compressed time) instead of the driver's
    k0: int = 0  # CLOCK_MONOTONIC at simulated t = 0 (real clock)
    compression: float = 1.0  # simulated seconds per wall second (real clock)

    # ------------------------------------------------------------------ the hospital's calendar
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

    def at_day(self, day: int, hhmm: str) -> int:
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

    # ------------------------------------------------------------------ the kernel's clock
    def duration(self, ns: int) -> int:
        """A simulated duration in kernel time (rate intervals, quarantine holds)."""
        if not self.real or ns in (I64_MAX, 0):
            return ns
        return max(1, int(ns / self.compression))

    def at(self, t: int) -> int:
        """Simulated instant -> kernel time (identity on the virtual clock; "never" stays never)."""
        if not self.real or t in (I64_MAX, I64_MIN):
            return t
        return min(I64_MAX, max(I64_MIN, self.k0 + int(t / self.compression)))

    def sim(self, k: int) -> int:
        """Kernel time -> simulated time (real clock; identity on the virtual clock)."""
        if not self.real or k in (I64_MAX, I64_MIN):
            return k
        return int((k - self.k0) * self.compression)

    @staticmethod
    def ktime() -> int:
        """CLOCK_MONOTONIC now: what bpf_ktime_get_ns() reads."""
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
