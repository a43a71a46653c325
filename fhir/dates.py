"""FHIR dates as ranges of instants, for indexing and for the ``date`` search prefixes.

A FHIR date, dateTime or instant stands for the whole interval its precision covers: ``2020``
is the year 2020, ``2020-03-04T10:00`` that minute.  Both the stored values and the search
value are turned into half-open intervals ``[lo, hi)`` of epoch seconds, and each prefix is
the interval relation the spec defines (R4 search, "date"):

    eq  the resource's range lies within the search range
    ne  not eq
    gt  the resource's range reaches past the end of the search range     (hi > s.hi)
    lt  the resource's range starts before the search range               (lo < s.lo)
    ge  gt or eq                       le  lt or eq
    sa  the resource's range starts at or after the end of the search range (lo >= s.hi)
    eb  the resource's range ends at or before the start of the search range (hi <= s.lo)

Values without a time zone (dates, and times without an offset) are read as UTC, both when
stored and when searched, so the same text always means the same instants (HAPI widens such
searches by the possible time zones instead; documented in docs/fhir.md).
"""

from __future__ import annotations

import calendar
import math
import re
from functools import lru_cache

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
INF = math.inf

Range = tuple[float, float]


def parse_range(text: str) -> Range | None:
    """``[lo, hi)`` epoch seconds covered by a FHIR date/dateTime/instant; None if malformed."""
    # An unescaped '+' of a time-zone offset arrives as a space after query-string decoding.
    m = _DATE_RE.match(text.strip().replace(" ", "+"))
    if not m:
        return None
    y = int(m["y"])
    mo = int(m["m"]) if m["m"] else None
    d = int(m["d"]) if m["d"] else None
    try:
        if mo is None:
            return float(calendar.timegm((y, 1, 1, 0, 0, 0))), float(calendar.timegm((y + 1, 1, 1, 0, 0, 0)))
        if not 1 <= mo <= 12:
            return None
        if d is None:
            ny, nm = (y + 1, 1) if mo == 12 else (y, mo + 1)
            return float(calendar.timegm((y, mo, 1, 0, 0, 0))), float(calendar.timegm((ny, nm, 1, 0, 0, 0)))
        if not 1 <= d <= calendar.monthrange(y, mo)[1]:
            return None
        day = float(calendar.timegm((y, mo, d, 0, 0, 0)))
        if m["H"] is None:
            return day, day + 86400.0
        hh, mm = int(m["H"]), int(m["M"])
        ss = int(m["S"]) if m["S"] else 0
        if hh > 24 or mm > 59 or ss > 60:
            return None
        lo = day + hh * 3600 + mm * 60 + ss
        if m["f"]:
            lo += float(m["f"])
            width = 10.0 ** -(len(m["f"]) - 1)
        else:
            width = 1.0 if m["S"] else 60.0
        tz = m["tz"]
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            lo -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
        return lo, lo + width
    except (ValueError, OverflowError):
        return None


def value_range(value: object) -> Range | None:
    """Range of a stored element: a date string, or a Period ``{start, end}`` (open ends infinite)."""
    if isinstance(value, str):
        return parse_range(value)
    if isinstance(value, dict) and ("start" in value or "end" in value):
        start = parse_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = parse_range(value["end"]) if isinstance(value.get("end"), str) else None
        if start is None and end is None:
            return None
        return (start[0] if start else -INF, end[1] if end else INF)
    return None


def split_prefix(text: str) -> tuple[str, str]:
    """``ge2020-01`` -> (``ge``, ``2020-01``); no prefix means ``eq``."""
    if len(text) > 2 and text[:2].isalpha():
        return text[:2], text[2:]
    return "eq", text


def sql_condition(prefix: str, lo_col: str, hi_col: str, s_lo: float, s_hi: float) -> tuple[str, list[float]]:
    """SQL testing the stored range (`lo_col`, `hi_col`) against the search range, and its args."""
    eq = f"({lo_col} >= ? AND {hi_col} <= ?)"
    if prefix == "eq":
        return eq, [s_lo, s_hi]
    if prefix == "ne":
        return f"NOT {eq}", [s_lo, s_hi]
    if prefix == "gt":
        return f"{hi_col} > ?", [s_hi]
    if prefix == "lt":
        return f"{lo_col} < ?", [s_lo]
    if prefix == "ge":
        return f"({hi_col} > ? OR {eq})", [s_hi, s_lo, s_hi]
    if prefix == "le":
        return f"({lo_col} < ? OR {eq})", [s_lo, s_lo, s_hi]
    if prefix == "sa":
        return f"{lo_col} >= ?", [s_hi]
    if prefix == "eb":
        return f"{hi_col} <= ?", [s_lo]
    raise ValueError(prefix)


def iso_instant(epoch: float) -> str:
    """An epoch as a FHIR instant with milliseconds in UTC (``meta.lastUpdated``)."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@lru_cache(maxsize=65536)
def http_date(epoch: float) -> str:
    """An epoch as an HTTP date (``Last-Modified``); cached, as reads repeat the same values."""
    from email.utils import formatdate

    return formatdate(epoch, usegmt=True)
