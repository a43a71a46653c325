"""Time units and integer bounds: the one definition every layer uses.

Simulated time is integer nanoseconds since the scenario start (a trace's ``t_ns``), so the
simulation, the reference engine and the kernel all decide with exact integer arithmetic.
``I64_MAX`` stands for "never" (a quarantine without a hold, a BAA without an end date), as it
does in the kernel's maps.
"""

from __future__ import annotations

import datetime as dt

NS_PER_S = 1_000_000_000
NS_PER_MIN = 60 * NS_PER_S
FIVE_MIN_NS = 5 * NS_PER_MIN  # the window of the burst metrics and of the learned rate limit
HOUR_NS = 60 * NS_PER_MIN
DAY_NS = 24 * HOUR_NS

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)


def epoch_ns(d: dt.datetime) -> int:
    """An instant in exact integer ns since the Unix epoch (a naive one is UTC): the scenario
    start plus a trace's ``t_ns`` is the simulated instant, with no float rounding."""
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    delta = d - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def ns_min(minutes: float) -> int:
    """Minutes (a scenario's ``_min`` fields) as integer ns."""
    return int(round(minutes * NS_PER_MIN))
