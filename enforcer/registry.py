"""The BAA registry: which external endpoints are covered by a Business Associate Agreement.

An agent may connect to an external endpoint only if its policy names the endpoint *and* the
registry says a BAA covers it at that moment (status active, inside its effective dates).  The
registry is a separate file from the policy because it changes on its own schedule (a BAA is
signed or terminated): the kernel control plane watches the file and applies a change at the
next connect, and the AI-BOM records the registry version at each first contact.

File format (baa-registry.json, documented in docs/policy.md)::

    {"schema": "paritybed.baa/1", "version": 3,
     "endpoints": [{"name": "embedding-service", "address": "127.0.0.21:9443",
                    "baa_id": "BAA-2025-014", "vendor": "...", "status": "active",
                    "effective_from": "2025-01-01", "effective_to": null}]}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from paritybed.core.units import I64_MAX, I64_MIN

REGISTRY_SCHEMA = "paritybed.baa/1"


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


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["paritybed.baa/1"] = Field(REGISTRY_SCHEMA, alias="schema")
    version: int = Field(1, ge=1)
    endpoints: list[Endpoint] = Field(default_factory=list)

    def by_address(self) -> dict[str, Endpoint]:
        return {e.address: e for e in self.endpoints}

    def by_name(self) -> dict[str, Endpoint]:
        return {e.name: e for e in self.endpoints}

    def content_hash(self) -> str:
        d = self.model_dump(mode="json", by_alias=True)
        return "sha256:" + hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"


def covered(entry: Endpoint | None, t_ns: int, start: dt.datetime) -> bool:
    """Is an endpoint covered by an active BAA at simulated time t_ns?"""
    if entry is None or entry.status != "active":
        return False
    lo, hi = entry.window_ns(start)
    return lo <= t_ns < hi


def save_registry(reg: Registry, path: str | Path) -> None:
    Path(path).write_text(reg.to_json(), encoding="utf-8")


def load_registry(path: str | Path) -> Registry:
    from paritybed.core.jsonfile import load_model

    return load_model(path, Registry, "BAA registry", "docs/policy.md")
