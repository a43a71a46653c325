"""What every section of the scenario schema shares: strict models, times of day, profiles,
addresses and names, and the field paths error messages use.

Units are in the field names (``_per_day``, ``_min``, ``_s``), hour-of-day profiles are 24
relative weights for 00:00..23:00, weekday factors are 7 numbers for Monday..Sunday.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from paritybed.core.errors import InputError

AGENT_CLASSES = ("ambient_scribe", "cds", "prior_auth")
#: Tags pydantic puts into an error path of the agents' discriminated union (not YAML keys).
UNION_TAGS = ("ScribeAgent", "CdsAgent", "PriorAuthAgent") + AGENT_CLASSES
HHMM_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
ADDRESS_RE = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")


class Strict(BaseModel):
    """Base for every section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def hhmm(v: str) -> str:
    if not isinstance(v, str) or not HHMM_RE.match(v):
        raise ValueError(f"expected a time of day as HH:MM (00:00..23:59), found {v!r}")
    return v


HHMM = Annotated[str, Field(description="time of day HH:MM")]


def _ip_port(v: str) -> str:
    if not ADDRESS_RE.match(v):
        raise ValueError(f"expected an address ip:port such as 127.0.0.21:8443, found {v!r}")
    return v


#: An endpoint address as live mode binds it: IPv4 or [IPv6], and a port (no host names).
IpPort = Annotated[str, AfterValidator(_ip_port)]


def profile(v: list[float], n: int, what: str) -> list[float]:
    if len(v) != n:
        raise ValueError(f"expected {n} {what}, found {len(v)}")
    if any(x < 0 for x in v) or sum(v) <= 0:
        raise ValueError(f"expected non-negative {what} with a positive sum")
    return v


def yaml_key(part: Any) -> Any:
    """The YAML key of a model field name (the agents' ``class`` is ``agent_class`` in Python)."""
    return "class" if part == "agent_class" else part


def field_path(loc: tuple[Any, ...]) -> str:
    """A pydantic error path as the user wrote it: ``agents[0].class``."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in UNION_TAGS:
            continue  # discriminated-union tag, not a YAML key
        else:
            out += ("." if out else "") + str(yaml_key(p))
    return out or "(top level)"


class ScenarioError(InputError):
    """A scenario file that does not validate; the message names file, line, column and field."""

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or [message]
