"""The search index written with each resource version: every R4 search parameter of its type.

Which parameters a type has, and where in the resource their values are, comes from the R4
SearchParameter definitions (`paritybed.core.r4spec`, generated from the specification), so
the server indexes exactly what the spec defines: ``Observation.patient`` is ``subject`` when it
refers to a Patient, ``Coverage.patient`` is ``beneficiary``, ``Patient.email`` is the telecom
entries whose system is ``email``.  Values are extracted when a resource is written and stored
in four tables, so a search is an index lookup, never a scan of the JSON:

* ``tokens(param, sys, val)``: token (system, code) and its ``:text`` form (``<param>:text``,
  normalized); reference (target type, id), or (NULL, url) for canonical/uri references;
  string (exact text, normalized text); uri (NULL, uri);
* ``dates(param, lo, hi)``: the interval of a date, dateTime, instant, Period or Timing event;
* ``numbers(param, lo, hi, sys, code)``: number and quantity values (a Range is ``[low, high]``;
  a quantity's unit is a row of its own when it differs from its code);
* ``combos(param, grp, comp, sys, val, lo, hi)``: composite parameters, one ``grp`` per root
  element (the Observation, or one of its components), one ``comp`` per component.

``param`` is ``<Type>.<code>``.  ``_id`` and ``_lastUpdated`` are columns of ``resources``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from typing import Any, Callable, Iterator

from paritybed.core import r4spec
from paritybed.core.r4spec import ElementPath, SearchParam
from paritybed.fhir.dates import value_range

#: Parameters kept in columns of ``resources`` instead of the index tables.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})
TEXT = ":text"


@dataclass
class Rows:
    """Index rows of one resource version (without the rid, added when stored)."""

    tokens: list[tuple[str, str | None, str]] = field(default_factory=list)
    dates: list[tuple[str, float, float]] = field(default_factory=list)
    numbers: list[tuple[str, float, float, str | None, str | None]] = field(default_factory=list)
    combos: list[tuple[str, int, int, str | None, str | None, float | None, float | None]] = field(default_factory=list)


# ------------------------------------------------------------------------------ helpers
@lru_cache(maxsize=65536)
def normalize_string(text: str) -> str:
    """Case- and accent-insensitive form for ``string`` search (the spec's default matching).
    Cached: the same displays and names repeat across a load."""
    if text.isascii():
        return text.lower().strip()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def split_reference(ref: str) -> tuple[str, str] | None:
    """``Patient/1``, ``Patient/1/_history/2`` or ``http://x/fhir/Patient/1`` -> (type, id)."""
    if not ref or ref.startswith("#") or ref.startswith("urn:") or "?" in ref:
        return None
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-1] or not parts[-2][:1].isupper():
        return None
    return parts[-2], parts[-1]


def walk(node: Any, path: ElementPath) -> Iterator[Any]:
    """Values at an element path, descending through lists as FHIRPath does."""
    yield from _walk(node, path.steps, 0)


def _walk(node: Any, steps: tuple[r4spec.Step, ...], i: int) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, steps, i)
        return
    if i == len(steps):
        yield node
        return
    step = steps[i]
    if not isinstance(node, dict) or step.key not in node:
        return
    value = node[step.key]
    for item in value if isinstance(value, list) else (value,):
        if step.where is not None and not (isinstance(item, dict) and item.get(step.where[0]) == step.where[1]):
            continue
        if step.resolve is not None:
            ref = item.get("reference") if isinstance(item, dict) else None
            tid = split_reference(ref) if isinstance(ref, str) else None
            if tid is None or tid[0] != step.resolve:
                continue
        yield from _walk(item, steps, i + 1)


def decimal_of(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None


# ------------------------------------------------------------------ values per param type
def token_values(value: Any) -> Iterator[tuple[str | None, str]]:
    """(system, code) pairs of a token element (code, Coding, CodeableConcept, Identifier, ...)."""
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value.get("coding") or []:
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    yield coding.get("system"), coding["code"]
        elif isinstance(value.get("code"), str):  # Coding
            yield value.get("system"), value["code"]
        elif isinstance(value.get("value"), str):  # Identifier, ContactPoint
            yield value.get("system"), value["value"]


def token_texts(value: Any) -> Iterator[str]:
    """The text a ``:text`` search reads: CodeableConcept.text, Coding.display, Identifier.type.text."""
    if not isinstance(value, dict):
        return
    for text in (value.get("text"), value.get("display"), (value.get("type") or {}).get("text")
                 if isinstance(value.get("type"), dict) else None):
        if isinstance(text, str):
            yield text
    for coding in value.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            yield coding["display"]


def string_values(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):  # HumanName, Address
        for key in ("text", "family", "given", "prefix", "suffix", "line", "city", "district", "state",
                    "postalCode", "country"):
            part = value.get(key)
            for v in part if isinstance(part, list) else [part]:
                if isinstance(v, str):
                    yield v


def reference_values(value: Any, targets: tuple[str, ...], resolve: Callable[[str], str] | None) -> Iterator[tuple[str | None, str]]:
    """(target type, id) of a Reference to one of `targets`; (None, url) of a canonical/uri."""
    if isinstance(value, str):  # canonical, uri
        yield None, value
        if "|" in value:
            yield None, value.split("|", 1)[0]
        return
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str):
        return
    if resolve is not None:
        ref = resolve(ref)
    tid = split_reference(ref)
    if tid is not None and (not targets or tid[0] in targets):
        yield tid


def quantity_values(value: Any) -> Iterator[tuple[float, float, str | None, str | None]]:
    """(lo, hi, system, code) of a Quantity (and its unit), Money or Range."""
    if not isinstance(value, dict):
        return
    if "low" in value or "high" in value:  # Range
        lo = decimal_of((value.get("low") or {}).get("value"))
        hi = decimal_of((value.get("high") or {}).get("value"))
        if lo is None and hi is None:
            return
        unit = value.get("low") or value.get("high") or {}
        yield (lo if lo is not None else float("-inf")), (hi if hi is not None else float("inf")), unit.get("system"), unit.get("code")
        return
    v = decimal_of(value.get("value"))
    if v is None:
        return
    if isinstance(value.get("currency"), str):  # Money
        yield v, v, "urn:iso:std:iso:4217", value["currency"]
        return
    code, unit = value.get("code"), value.get("unit")
    yield v, v, value.get("system"), code if isinstance(code, str) else None
    if isinstance(unit, str) and unit != code:
        yield v, v, value.get("system"), unit


# ------------------------------------------------------------------------- extraction
@cache
def indexed_params(rtype: str) -> tuple[tuple[str, SearchParam], ...]:
    """(index key, parameter) of every parameter of `rtype` that has index rows."""
    return tuple(
        (f"{rtype}.{code}", p) for code, p in r4spec.search_params(rtype).items()
        if p.indexable and code not in COLUMN_PARAMS and p.type != "special"
    )


@cache
def _plan(rtype: str) -> tuple[dict[str, list[tuple[str, SearchParam, ElementPath]]], list[tuple[str, SearchParam]]]:
    """The type's element paths grouped by their first JSON key (a resource has only a few of
    its type's elements, so extraction looks only at those), and its composites."""
    by_key: dict[str, list[tuple[str, SearchParam, ElementPath]]] = {}
    composites = []
    for key, p in indexed_params(rtype):
        assert p.paths is not None
        if p.type == "composite":
            composites.append((key, p))
            continue
        for path in p.paths:
            by_key.setdefault(path.steps[0].key, []).append((key, p, path))
    return by_key, composites


def extract(resource: dict[str, Any], resolve: Callable[[str], str] | None = None) -> Rows:
    """Index rows of every search parameter of the resource's type.

    `resolve` maps a reference string to its final form (bundle processing passes the map of
    urn:uuid and conditional references it is rewriting); without it references are used as
    written.
    """
    rows = Rows()
    rtype = resource.get("resourceType", "")
    if not r4spec.is_resource_type(rtype):
        return rows
    by_key, composites = _plan(rtype)
    for element in resource:
        for key, p, path in by_key.get(element, ()):
            for value in walk(resource, path):
                _add(rows, key, p.type, p.targets, value, resolve)
    for key, p in composites:
        _composite(rows, key, p, resource, resolve)
    return rows


def _add(rows: Rows, key: str, kind: str, targets: tuple[str, ...], value: Any, resolve: Callable[[str], str] | None,
         texts: bool = True) -> None:
    if kind == "token":
        rows.tokens.extend((key, s, v) for s, v in token_values(value))
        if texts:
            rows.tokens.extend((key + TEXT, None, t) for t in {normalize_string(t) for t in token_texts(value)})
    elif kind == "reference":
        rows.tokens.extend((key, s, v) for s, v in reference_values(value, targets, resolve))
    elif kind == "string":
        rows.tokens.extend((key, s, normalize_string(s)) for s in string_values(value))
    elif kind == "uri":
        if isinstance(value, str):
            rows.tokens.append((key, None, value))
    elif kind == "date":
        if isinstance(value, dict) and isinstance(value.get("event"), list):  # Timing
            rngs = [value_range(e) for e in value["event"]]
        else:
            rngs = [value_range(value)]
        rows.dates.extend((key, r[0], r[1]) for r in rngs if r is not None)
    elif kind == "number":
        n = decimal_of(value)
        if n is not None:
            rows.numbers.append((key, n, n, None, None))
    elif kind == "quantity":
        rows.numbers.extend((key, lo, hi, s, c) for lo, hi, s, c in quantity_values(value))


def _composite(rows: Rows, key: str, p: SearchParam, resource: dict[str, Any], resolve: Callable[[str], str] | None) -> None:
    """One group of rows per root element whose every component has a value."""
    assert p.paths is not None
    grp = 0
    for root_path in p.paths:
        for root in walk(resource, root_path):
            parts: list[Rows] = []
            for comp in p.components:
                part = Rows()
                for path in comp.paths:
                    for value in walk(root, path):
                        _add(part, key, comp.type, (), value, resolve, texts=False)
                parts.append(part)
            if not all(part.tokens or part.dates or part.numbers for part in parts):
                continue
            for i, part in enumerate(parts):
                rows.combos.extend((key, grp, i, s, v, None, None) for _, s, v in part.tokens)
                rows.combos.extend((key, grp, i, None, None, lo, hi) for _, lo, hi in part.dates)
                rows.combos.extend((key, grp, i, s, c, lo, hi) for _, lo, hi, s, c in part.numbers)
            grp += 1
