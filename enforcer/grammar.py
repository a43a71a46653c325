"""The R4 search grammar's tables, as the classifier and the kernel parser read them.

Everything comes from the R4 SearchParameter and CompartmentDefinition resources
(``paritybed.core.r4spec``, generated from the specification's own files): which parameters a
type has, their types, the targets of reference parameters, and which types are members of a
compartment.  ``enforcer/classify.py`` resolves names here; ``enforcer/kernel_abi.py`` turns the
same tables into the kernel's maps (the name table, the target sets, the compartments), so the
two parsers cannot disagree about a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from paritybed.core import r4spec

#: Resource types in their table order (type id = index + 1; 0 = none).
TYPES: tuple[str, ...] = r4spec.resource_types()
TYPE_ID = {t: i + 1 for i, t in enumerate(TYPES)}

#: Parameter kinds, as the kernel codes them (P_* in bpf/paritybed.h): the R4 parameter types,
#: then the parameters that select something other than a filter.
KINDS = ("", "number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special-type",
         "result", "include", "revinclude", "has", "type", "opaque", "contained")
KIND = {k: i for i, k in enumerate(KINDS)}

#: Parameters that only shape the result (no touch, values unread).
RESULT = ("_count", "_offset", "_sort", "_total", "_summary", "_elements", "_format", "_pretty")
#: Parameters defined for every type, or by the search page itself, that are not filters.
SPECIAL = {"_include": "include", "_revinclude": "revinclude", "_has": "has", "_type": "type",
           "_list": "opaque", "_query": "opaque", "_filter": "opaque", "_containedType": "opaque",
           "_contained": "contained"}
#: What a read, a vread or a history may carry in its query (http.html).
READ_PARAMS = frozenset(("_format", "_pretty", "_summary", "_elements"))
HISTORY_PARAMS = frozenset(("_count", "_since", "_at", "_format", "_pretty"))
#: HAPI's page links at the base (opaque: no type in the request).
PAGING_PARAMS = frozenset(("_getpages", "_getpagesoffset", "_count", "_pretty", "_bundletype", "_format"))

#: R4 modifiers (search.html, "Modifiers") and the parameter types that take each; ``missing``
#: takes any; a type name on a reference parameter is handled apart.
MODIFIERS = ("missing", "exact", "contains", "text", "not", "above", "below", "in", "not-in", "of-type",
             "identifier", "iterate", "recurse")
MODIFIER_ID = {m: i + 1 for i, m in enumerate(MODIFIERS)}
_MODS_BY_KIND = {"string": {"exact", "contains"}, "token": {"text", "not", "above", "below", "in", "not-in", "of-type"},
                 "reference": {"identifier", "above", "below"}, "uri": {"above", "below"}}


@dataclass(frozen=True)
class Param:
    """One name as a parameter of one type: its kind, and for a reference parameter its targets
    (as a target-set index, see ``target_sets``)."""

    kind: str
    targets: tuple[str, ...] = ()

    @property
    def names_patient(self) -> bool:
        return "Patient" in self.targets

    @property
    def names_encounter(self) -> bool:
        return "Encounter" in self.targets


def param(rtype: str, name: str) -> Param | None:
    """What ``name`` is in a search of ``rtype``: one of its R4 parameters, a common one, a result
    or special parameter; None when the type has no such parameter."""
    return _params(rtype).get(name)


@cache
def _params(rtype: str) -> dict[str, Param]:
    out: dict[str, Param] = {}
    for code, sp in r4spec.search_params(rtype).items():
        kind = "special-type" if sp.type == "special" else sp.type
        if kind == "reference" and not sp.targets:
            # a reference to a canonical URL with no declared target (R4: RequestGroup's
            # instantiates-canonical): searched by its value like a uri; an include or a chain
            # through it would reach types the request does not name (include / param)
            kind = "uri"
        out[code] = Param(kind, tuple(sorted(sp.targets)))
    for code in RESULT:
        out[code] = Param("result")
    for code, kind in SPECIAL.items():
        out[code] = Param(kind)
    return out


def modifier_ok(p: Param, modifier: str) -> bool:
    """Whether the R4 modifier applies to parameters of p's kind."""
    return modifier == "missing" or modifier in _MODS_BY_KIND.get(p.kind, ())


def compartment_member(owner: str, member: str) -> bool:
    """Whether ``/owner/id/member`` is a compartment search the specification defines."""
    return owner in r4spec.compartment_types() and member in r4spec.compartment(owner)


@cache
def target_sets() -> tuple[tuple[str, ...], ...]:
    """Every distinct target list of the reference parameters, index 0 empty (the kernel's
    ``tsets`` table: a set as a bitmap of type ids)."""
    found = {p.targets for t in TYPES for p in _params(t).values() if p.kind == "reference"}
    return ((),) + tuple(sorted(found - {()}))


@cache
def target_set_id(targets: tuple[str, ...]) -> int:
    return target_sets().index(targets)


def all_names() -> dict[str, dict[str, Param]]:
    """{type: {name: Param}} of every type (for the kernel's name table)."""
    return {t: _params(t) for t in TYPES}
