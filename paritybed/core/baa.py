"""A BAA registry entry: an external endpoint and the Business Associate Agreement covering it.

One model for the scenario's ``baa_registry`` section, the agents' ground truth (is a connect
legitimate at t?), the enforcer's baa-registry.json and the attestation: which endpoint, at
which address, covered when.  The registry file around it is enforcer/registry.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict

from paritybed.core.units import I64_MAX, I64_MIN


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    address: str
    baa_id: str | None = None
    vendor: str | None = None
    status: Literal["active", "pending", "terminated"] = "active"
    effective_from: dt.date | None = None
    effective_to: dt.date | None = None  # inclusive

    def window_ns(self, start: dt.datetime) -> tuple[int, int]:
        """[from, to) in ns relative to the run's start instant (``start`` = simulated t=0).

        Dates are UTC days; ``effective_to`` is inclusive, so the window ends at the following
        midnight.  Both the reference engine and the kernel control plane use this function."""
        lo = I64_MIN
        hi = I64_MAX
        if self.effective_from is not None:
            d = dt.datetime.combine(self.effective_from, dt.time(0), tzinfo=dt.timezone.utc)
            lo = _delta_ns(d - start)
        if self.effective_to is not None:
            d = dt.datetime.combine(self.effective_to + dt.timedelta(days=1), dt.time(0), tzinfo=dt.timezone.utc)
            hi = _delta_ns(d - start)
        return lo, hi


def _delta_ns(td: dt.timedelta) -> int:
    return ((td.days * 86400 + td.seconds) * 1_000_000 + td.microseconds) * 1000


def covered(entry: Endpoint | None, t_ns: int, start: dt.datetime) -> bool:
    """Is an endpoint covered by an active BAA at simulated time t_ns?"""
    if entry is None or entry.status != "active":
        return False
    lo, hi = entry.window_ns(start)
    return lo <= t_ns < hi
