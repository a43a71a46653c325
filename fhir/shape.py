"""``_summary`` and ``_elements``: returning part of each resource, as the spec defines it.

* ``_summary=true``: the elements the StructureDefinition marks ``isSummary``;
* ``_summary=text``: ``text``, ``id``, ``meta`` and the mandatory top-level elements;
* ``_summary=data``: everything but ``text``;
* ``_summary=count`` (a search without entries) and ``false`` (everything) are handled by the
  caller;
* ``_elements=a,b``: those top-level elements (a choice element by its base name, ``value``, or
  one of its JSON names, ``valueQuantity``), plus ``id``, ``meta`` and the mandatory ones.

A shaped resource carries the ``SUBSETTED`` tag in ``meta.tag`` so that no client mistakes it
for the whole resource (and writes it back).  Which elements are summary or mandatory comes
from the R4 StructureDefinitions (`paritybed.core.r4spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from paritybed.core import r4spec
from paritybed.fhir.outcome import FhirError

SUMMARY_VALUES = ("true", "text", "data", "count", "false")
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "As requested, resource is not fully detailed"}


@dataclass(frozen=True)
class Shape:
    """What to keep of each resource: a ``_summary`` mode or an ``_elements`` list."""

    summary: str | None = None  # "true" | "text" | "data"
    elements: frozenset[str] | None = None  # names as the client listed them


def parse_summary(value: str) -> str:
    if value not in SUMMARY_VALUES:
        raise FhirError(400, f"_summary={value}: expected one of {', '.join(SUMMARY_VALUES)}")
    return value


def parse_elements(rtype: str, value: str) -> frozenset[str]:
    """The names of ``_elements``; 400 for a name that is no element of `rtype`."""
    names = set()
    info = _elements(rtype)
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        name = item.split(".", 1)[1] if item.startswith(rtype + ".") else item
        if name == "resourceType":
            continue  # always there (fhirpy lists it)
        if name not in info.names and _choice_base(name, info) is None:
            raise FhirError(400, f"_elements: {rtype} has no element '{item}'")
        names.add(name)
    return frozenset(names)


def _elements(rtype: str) -> r4spec.Elements:
    """The R4 element facts of a type (none for a type outside R4: only id and meta are kept)."""
    if r4spec.is_resource_type(rtype):
        return r4spec.elements(rtype)
    return r4spec.Elements((), frozenset(), frozenset(), frozenset(), {})


def _choice_base(key: str, info: r4spec.Elements) -> str | None:
    """``valueQuantity`` -> ``value`` when value[x] is a choice element of the type."""
    for base in info.choice:
        if key.startswith(base) and len(key) > len(base) and key[len(base)].isupper():
            return base
    return None


def _keep(key: str, shape: Shape, info: r4spec.Elements) -> bool:
    name = key[1:] if key.startswith("_") else key  # _birthDate: the primitive's extensions
    if name in ("id", "meta"):
        return True
    if shape.summary == "data":
        return name != "text"
    if shape.summary == "true":
        return name in info.summary
    if shape.summary == "text":
        return name == "text" or name in info.mandatory
    assert shape.elements is not None
    return name in shape.elements or name in info.mandatory or _choice_base(name, info) in shape.elements


def apply(body: bytes, shape: Shape) -> bytes:
    """The stored resource `body` reduced to `shape`, tagged SUBSETTED."""
    res: dict[str, Any] = orjson.loads(body)
    info = _elements(res["resourceType"])
    out = {"resourceType": res["resourceType"]}
    out.update((k, v) for k, v in res.items() if k != "resourceType" and _keep(k, shape, info))
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    out["meta"] = meta
    return orjson.dumps(out)
