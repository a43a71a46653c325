"""One search value -> an SQL condition on index rows, per parameter type (R4 search.html).

Each function takes the value as the client wrote it (after URL decoding, one item of a
comma-separated list) and the names of the columns to test, and returns ``(sql, args)``.
The same functions serve the plain index tables and the components of a composite, which is
why the columns are passed in.  A malformed value is a 400 naming the parameter and what was
expected: a search the server cannot read must never silently match more.

Matching, as the spec defines it:

* token ``[system]|[code]``, ``|code`` (no system), ``system|``, ``code``; ``:text`` matches the
  start of the normalized display text; ``:not`` and ``:missing`` are applied by the caller;
* string: the normalized value starts with the search (case and accents ignored); ``:exact``
  the exact text; ``:contains`` anywhere in it;
* uri: exact; ``:below`` the stored uri starts with the search; ``:above`` the search starts
  with the stored uri;
* date: the interval relations of fhir/dates.py;
* number: the search's precision is its range (``100`` is [99.5, 100.5)); ``gt lt ge le sa eb``
  compare with the value, ``ap`` is within 10 %;
* quantity ``[prefix]number|system|code`` (or ``number||code``: the code or the unit); the unit
  part optional;
* reference ``id``, ``Type/id``, an absolute URL (its last two segments), or a canonical URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from paritybed.core.r4spec import SearchParam
from paritybed.fhir import dates
from paritybed.fhir.index import normalize_string, split_reference
from paritybed.fhir.outcome import FhirError

#: Number and quantity prefixes (dates have theirs in fhir/dates.py).
NUMBER_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
#: Modifiers per parameter type, besides :missing (every type) and :<Type> (references).
MODIFIERS = {
    "token": {"not", "text"},
    "string": {"exact", "contains"},
    "uri": {"below", "above"},
    "reference": set(),
    "date": set(),
    "number": set(),
    "quantity": set(),
    "composite": set(),
}
HIGH = "\U0010ffff"


@dataclass(frozen=True)
class Columns:
    """The columns a condition tests (bare names for an index table, aliased in a composite)."""

    sys: str = "sys"
    val: str = "val"
    lo: str = "lo"
    hi: str = "hi"
    code: str = "code"


PLAIN = Columns()


def combo_columns(alias: str) -> Columns:
    """Columns of one component row of ``combos`` (a quantity's code is in ``val``)."""
    return Columns(f"{alias}.sys", f"{alias}.val", f"{alias}.lo", f"{alias}.hi", f"{alias}.val")


# ------------------------------------------------------------------------ value syntax
def split_escaped(text: str, sep: str) -> list[str]:
    """Split on `sep` not escaped by a backslash (``a\\,b,c`` -> ``['a\\,b', 'c']``)."""
    if "\\" not in text:
        return text.split(sep)
    parts, cur, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
            continue
        if c == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    return parts


def unescape(text: str) -> str:
    """The value with the spec's escapes (``\\,`` ``\\$`` ``\\|`` ``\\\\``) resolved."""
    if "\\" not in text:
        return text
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out += text[i + 1]
            i += 2
        else:
            out += text[i]
            i += 1
    return out


def _decimal(name: str, text: str) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation:
        d = None
    if d is None or not d.is_finite():
        raise FhirError(400, f"{name}: {text!r} is not a number")
    return d


# ---------------------------------------------------------------------------- per type
def token(value: str, c: Columns = PLAIN) -> tuple[str, list[object]]:
    parts = split_escaped(value, "|")
    if len(parts) > 2:
        raise FhirError(400, f"token {value!r}: one '|' between system and code (escape others as \\|)")
    if len(parts) == 2:
        sys, code = unescape(parts[0]), unescape(parts[1])
        if not sys and not code:
            raise FhirError(400, "empty token '|'")
        if not sys:
            return f"({c.sys} IS NULL AND {c.val}=?)", [code]
        if not code:
            return f"({c.sys}=?)", [sys]
        return f"({c.val}=? AND {c.sys}=?)", [code, sys]
    return f"({c.val}=?)", [unescape(value)]


def string(value: str, modifier: str | None, c: Columns = PLAIN) -> tuple[str, list[object]]:
    text = unescape(value)
    norm = normalize_string(text)
    if modifier == "exact":  # the normalized form first: it is what the index is ordered by
        return f"({c.val}=? AND {c.sys}=?)", [norm, text]
    if modifier == "contains":
        return f"(instr({c.val}, ?) > 0)", [norm]
    return f"({c.val} >= ? AND {c.val} < ?)", [norm, norm + HIGH]


def uri(value: str, modifier: str | None, c: Columns = PLAIN) -> tuple[str, list[object]]:
    text = unescape(value)
    if modifier == "below":
        return f"({c.val} >= ? AND {c.val} < ?)", [text, text + HIGH]
    if modifier == "above":
        return f"(substr(?, 1, length({c.val})) = {c.val})", [text]
    return f"({c.val}=?)", [text]


def date(name: str, value: str, c: Columns = PLAIN) -> tuple[str, list[object]]:
    prefix, text = dates.split_prefix(value)
    if prefix not in dates.PREFIXES:
        raise FhirError(400, f"{name}: date prefix '{prefix}' is not supported (supported: {', '.join(dates.PREFIXES)})")
    rng = dates.parse_range(text)
    if rng is None:
        raise FhirError(400, f"{name}={value!r}: not a FHIR date/dateTime (e.g. 2020, 2020-03-04, 2020-03-04T10:00:00Z)")
    sql, args = dates.sql_condition(prefix, c.lo, c.hi, rng[0], rng[1])
    return sql, list(args)


def number(name: str, value: str, c: Columns = PLAIN) -> tuple[str, list[object]]:
    prefix, text = (value[:2], value[2:]) if value[:2] in NUMBER_PREFIXES else ("eq", value)
    if value[:2].isalpha() and value[:2] not in NUMBER_PREFIXES:
        raise FhirError(400, f"{name}: prefix '{value[:2]}' is not supported (supported: {', '.join(NUMBER_PREFIXES)})")
    d = _decimal(name, text)
    v = float(d)
    exponent = d.as_tuple().exponent
    half = float(Decimal(5) * Decimal(10) ** (int(exponent) - 1)) if isinstance(exponent, int) else 0.0
    lo, hi = c.lo, c.hi
    if prefix in ("eq", "ne"):
        sql = f"({lo} >= ? AND {hi} < ?)"
        return (sql if prefix == "eq" else f"NOT {sql}"), [v - half, v + half]
    if prefix == "ap":
        return f"({lo} <= ? AND {hi} >= ?)", [v + abs(v) * 0.1, v - abs(v) * 0.1]
    op = {"gt": (hi, ">"), "lt": (lo, "<"), "ge": (hi, ">="), "le": (lo, "<="), "sa": (lo, ">"), "eb": (hi, "<")}[prefix]
    return f"({op[0]} {op[1]} ?)", [v]


def quantity(name: str, value: str, c: Columns = PLAIN) -> tuple[str, list[object]]:
    parts = split_escaped(value, "|")
    if len(parts) not in (1, 3):
        raise FhirError(400, f"{name}={value!r}: a quantity is [prefix]number or [prefix]number|system|code")
    sql, args = number(name, parts[0], c)
    if len(parts) == 3:
        system, code = unescape(parts[1]), unescape(parts[2])
        if system:
            sql += f" AND {c.sys}=?"
            args.append(system)
        if code:
            sql += f" AND {c.code}=?"
            args.append(code)
    return f"({sql})", args


def reference(p: SearchParam, value: str, type_modifier: str | None, c: Columns = PLAIN) -> tuple[str, list[object]]:
    text = unescape(value)
    if "|" in text or ("://" in text and split_reference(text) is None):
        return f"({c.sys} IS NULL AND {c.val}=?)", [text]  # a canonical URL (with its version)
    if "/" in text:
        tid = split_reference(text)
        if tid is None:
            raise FhirError(400, f"{p.code}={value!r} is not a reference (Type/id, id or a URL)")
        if p.targets and tid[0] not in p.targets:
            raise FhirError(400, f"{p.code} refers to {', '.join(p.targets)}, not {tid[0]}")
        if type_modifier and tid[0] != type_modifier:
            raise FhirError(400, f"{p.code}:{type_modifier}={value!r} names a {tid[0]}")
        sql = f"({c.val}=? AND {c.sys}=?)"
        if "://" in text:  # also a canonical stored as its URL
            return f"({sql} OR ({c.sys} IS NULL AND {c.val}=?))", [tid[1], tid[0], text]
        return sql, [tid[1], tid[0]]
    target = type_modifier or (p.targets[0] if len(p.targets) == 1 else None)
    if target:
        return f"({c.val}=? AND {c.sys}=?)", [text, target]
    return f"({c.val}=? AND {c.sys} IS NOT NULL)", [text]


def simple(p_type: str, name: str, value: str, modifier: str | None, c: Columns = PLAIN) -> tuple[str, list[object]]:
    """A value of a non-reference, non-composite type (composite components use it too)."""
    if value == "":
        raise FhirError(400, f"empty value in {name}")
    if p_type == "token":
        return string(value, None, c) if modifier == "text" else token(value, c)
    if p_type == "string":
        return string(value, modifier, c)
    if p_type == "uri":
        return uri(value, modifier, c)
    if p_type == "date":
        return date(name, value, c)
    if p_type == "number":
        return number(name, value, c)
    if p_type == "quantity":
        return quantity(name, value, c)
    raise FhirError(400, f"{name}: {p_type} parameters are not supported by this server")
