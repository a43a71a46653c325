"""Coded values checked against the R4 required bindings (``Patient.gender`` must be one of
``male | female | other | unknown``).

fhir.resources checks structure and datatypes but not which codes an element may hold; the R4
StructureDefinitions do, through *required* bindings, and `paritybed.core.r4spec` carries them
with the codes of every value set the specification enumerates.  A value outside a required
value set is a 400 naming the element, the value and the value set, as a conformant server
answers.  Checked: ``code`` elements (the code must be in the value set), ``Coding`` (its
system and code), ``CodeableConcept`` (one of its codings must be in the value set).  Value
sets drawn from code systems the specification does not enumerate (UCUM units, MIME types,
currencies) are not checked.  Contained resources are checked with their own type's bindings.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from paritybed.core import r4spec

Issue = dict[str, Any]


def issues(resource: dict[str, Any], where: str | None = None) -> list[Issue]:
    """OperationOutcome issues for every coded value outside its required value set."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not r4spec.is_resource_type(rtype):
        return []
    where = where or rtype
    out = list(_check(resource, r4spec.elements(rtype).bindings, where))
    for i, contained in enumerate(resource.get("contained") or []):
        if isinstance(contained, dict):
            out.extend(issues(contained, f"{where}.contained[{i}]"))
    return out


def _at(node: Any, keys: list[str], where: str) -> Iterator[tuple[Any, str]]:
    """Values at a dotted JSON path, with their FHIRPath-like location."""
    if not keys:
        yield node, where
        return
    if not isinstance(node, dict) or keys[0] not in node:
        return
    value = node[keys[0]]
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _at(item, keys[1:], f"{where}.{keys[0]}[{i}]")
    else:
        yield from _at(value, keys[1:], f"{where}.{keys[0]}")


def _check(node: Any, bindings: Mapping[str, str], where: str) -> Iterator[Issue]:
    for path, binding in bindings.items():
        for value, at in _at(node, path.split("."), where):
            if binding.startswith("@"):
                yield from _check(value, r4spec.datatype_bindings(binding[1:]), at)
                continue
            codes = r4spec.value_set(binding)
            if codes is None:
                continue
            problem = _problem(value, codes)
            if problem:
                yield {
                    "severity": "error",
                    "code": "code-invalid",
                    "diagnostics": f"{at}: {problem}; required value set {binding} ({_listed(codes)})",
                    "expression": [at],
                }


def _problem(value: Any, codes: Mapping[str, frozenset[str]]) -> str | None:
    if isinstance(value, str):  # code
        return None if any(value in c for c in codes.values()) else f"{value!r} is not in the value set"
    if not isinstance(value, dict):
        return None  # a wrong datatype is fhir.resources' error
    if "coding" in value or "text" in value and "code" not in value:  # CodeableConcept
        codings = [c for c in value.get("coding") or [] if isinstance(c, dict)]
        if any(c.get("code") in codes.get(c.get("system"), ()) for c in codings):
            return None
        found = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings) or "no coding"
        return f"none of its codings is in the value set ({found})"
    if value.get("code") is None and value.get("system") is None:
        return None  # a Coding with only a display: nothing coded to check
    if value.get("code") in codes.get(value.get("system"), ()):
        return None
    return f"{value.get('system')}|{value.get('code')} is not in the value set"


def _listed(codes: Mapping[str, frozenset[str]], limit: int = 12) -> str:
    flat = sorted(c for cs in codes.values() for c in cs)
    return " | ".join(flat[:limit]) + (" | ..." if len(flat) > limit else "")
