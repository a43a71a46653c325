"""When a run starts, how long it lasts, and moments inside it."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, field_validator, model_validator

from paritybed.core.clock import WEEKDAYS, Clock, minutes_of_day
from paritybed.scenarios.base import HHMM, Strict, hhmm


class Start(Strict):
    """When simulated time 0 is: a calendar date (for BAA effective dates) and a time of day."""

    date: dt.date | None = None
    weekday: Literal[WEEKDAYS] = "monday"  # type: ignore[valid-type]
    time: HHMM = "00:00"

    _t = field_validator("time")(classmethod(lambda cls, v: hhmm(v)))

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

    _t = field_validator("time")(classmethod(lambda cls, v: hhmm(v)))
