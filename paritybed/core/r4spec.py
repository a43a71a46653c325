"""The FHIR R4 (4.0.1) specification as data: resource types, search parameters, compartments,
summary elements and required bindings.

Everything here is read from ``paritybed/core/r4/*.json``, which ``scripts/gen_r4_tables.py``
generates from the official R4 definition files (shipped in HAPI's
``hapi-fhir-validation-resources-r4`` jar; source, version and sha256 in each file's ``about``).
One table serves every layer: the embedded FHIR server indexes and searches with it, the
classifier can compute what a search touches from it, and tests check against it.  Nothing is
typed by hand, so the server cannot drift from the specification.

Element paths are the JSON form of the spec's FHIRPath (``Observation.value as Quantity`` is
``valueQuantity``), as `ElementPath`: a list of `Step` s, each a JSON key, optionally keeping
only the list items whose field equals a value (``telecom.where(system='email')``) or the
references to one type (``where(resolve() is Patient)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Mapping

import orjson

DATA = Path(__file__).resolve().parent / "r4"

#: The search parameter types of R4 (SearchParameter.type).
PARAM_TYPES = ("number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special")


@dataclass(frozen=True)
class Step:
    """One JSON key of an element path, with the filters the spec's expression puts on it."""

    key: str
    where: tuple[str, str] | None = None  # keep items whose field [0] equals [1]
    resolve: str | None = None  # keep references to this resource type


@dataclass(frozen=True)
class ElementPath:
    """Where a search parameter's values are in a resource (or in a composite's root)."""

    steps: tuple[Step, ...]  # empty: the root itself
    fhir_type: str  # the element's FHIR type (CodeableConcept, Reference, Period, ...)

    def __str__(self) -> str:
        return ".".join(s.key for s in self.steps) or "(root)"


@dataclass(frozen=True)
class Component:
    """One part of a composite parameter (``code-value-quantity`` = code + value-quantity)."""

    param: str
    type: str
    paths: tuple[ElementPath, ...]


@dataclass(frozen=True)
class SearchParam:
    """One R4 search parameter as it applies to one resource type."""

    code: str
    type: str
    paths: tuple[ElementPath, ...] | None  # None: the spec's expression cannot be indexed (note)
    targets: tuple[str, ...] = ()  # reference parameters: the resource types it may refer to
    components: tuple[Component, ...] = ()
    note: str = ""
    base: str = ""  # "Resource" / "DomainResource" for the common parameters

    @property
    def indexable(self) -> bool:
        return self.paths is not None


@dataclass(frozen=True)
class Elements:
    """What the spec says about a resource type's elements (StructureDefinition snapshot)."""

    names: tuple[str, ...]  # top-level elements by base name, in the specification's order
    choice: frozenset[str]  # top-level choice elements by base name (``value`` of value[x])
    summary: frozenset[str]  # JSON keys of the elements marked isSummary
    mandatory: frozenset[str]  # JSON keys of the top-level elements with min >= 1
    bindings: Mapping[str, str]  # json path -> value set url, or "@Datatype"


# ------------------------------------------------------------------------------ loading
@cache
def _load(name: str) -> dict[str, Any]:
    return orjson.loads((DATA / name).read_bytes())


def about() -> dict[str, Any]:
    """Source, version and checksums the tables were generated from."""
    return dict(_load("search_parameters.json")["about"])


def _path(raw: list[str]) -> ElementPath:
    steps = []
    for part in raw[0].split(".") if raw[0] else []:
        key, where, resolve = part, None, None
        while key.endswith("]"):
            key, _, cond = key[:-1].rpartition("[")
            name, _, value = cond.partition("=")
            if name == "resolve":
                resolve = value
            else:
                where = (name, value)
        steps.append(Step(key, where, resolve))
    return ElementPath(tuple(steps), raw[1])


def _param(code: str, raw: dict[str, Any]) -> SearchParam:
    paths = None if raw.get("paths") is None else tuple(_path(p) for p in raw["paths"])
    components = tuple(
        Component(c["param"], c["type"], tuple(_path(p) for p in c["paths"])) for c in raw.get("components", ())
    )
    return SearchParam(code, raw["type"], paths, tuple(raw.get("targets", ())), components,
                       raw.get("note", ""), raw.get("base", ""))


@cache
def resource_types() -> tuple[str, ...]:
    """The 146 R4 resource types (ResourceType code system, abstract Resource and
    DomainResource excluded), sorted."""
    return tuple(_load("search_parameters.json")["resourceTypes"])


@cache
def _type_set() -> frozenset[str]:
    return frozenset(resource_types())


def is_resource_type(name: str) -> bool:
    return name in _type_set()


@cache
def common_params() -> Mapping[str, SearchParam]:
    """The parameters defined on Resource and DomainResource (``_id``, ``_lastUpdated``,
    ``_tag``, ``_profile``, ``_security``, ``_source``, ``_text``, ``_content``, ``_query``)."""
    return {code: _param(code, raw) for code, raw in _load("search_parameters.json")["common"].items()}


@cache
def type_params(rtype: str) -> Mapping[str, SearchParam]:
    """The parameters the spec defines for `rtype` itself (without the common ones)."""
    raw = _load("search_parameters.json")["types"].get(rtype, {})
    return {code: _param(code, p) for code, p in raw.items()}


@cache
def search_params(rtype: str) -> Mapping[str, SearchParam]:
    """Every parameter of `rtype`: the common ones and its own (its own win on a clash)."""
    # Binary, Bundle and Parameters are Resources, not DomainResources: no narrative, no _text.
    plain = rtype in ("Binary", "Bundle", "Parameters")
    common = {c: p for c, p in common_params().items() if p.base != "DomainResource" or not plain}
    return {**common, **type_params(rtype)}


@cache
def compartment_types() -> tuple[str, ...]:
    """The types that define a compartment (Device, Encounter, Patient, Practitioner, RelatedPerson)."""
    return tuple(_load("search_parameters.json")["compartments"])


@cache
def compartment(owner: str) -> Mapping[str, tuple[str, ...]]:
    """{member type: the parameters that put a resource of it in an `owner` compartment}.

    ``compartment("Patient")["Observation"] == ("subject", "performer")``; a type that is not a
    member is absent.
    """
    raw = _load("search_parameters.json")["compartments"].get(owner, {})
    return {t: tuple(ps) for t, ps in raw.items()}


@cache
def elements(rtype: str) -> Elements:
    raw = _load("elements.json")["types"][rtype]
    return Elements(tuple(raw["elements"]), frozenset(raw["choice"]), frozenset(raw["summary"]), frozenset(raw["mandatory"]),
                    dict(raw["bindings"]))


@cache
def datatype_bindings(datatype: str) -> Mapping[str, str]:
    """{json path: value set url or '@Datatype'} inside a datatype (``Identifier.use``)."""
    return dict(_load("elements.json")["datatypes"].get(datatype, {}))


@cache
def value_set(url: str) -> Mapping[str, frozenset[str]] | None:
    """{system: codes} of a required value set; None when the spec cannot enumerate it."""
    raw = _load("elements.json")["valueSets"].get(url)
    return None if raw is None else {s: frozenset(c) for s, c in raw.items()}
