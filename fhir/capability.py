"""The CapabilityStatement served at ``/fhir/metadata``: exactly what the server implements.

It is generated from the same tables the server runs on (the resource type list and the search
parameter definitions), so it cannot claim a parameter the search code does not know, nor miss
one it does.  Fixed ``date`` and no timestamps: the statement is byte-identical across runs.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

import orjson

from paritybed.core import r4spec
from paritybed.fhir.search import DEFAULT_COUNT, MAX_COUNT, UNSUPPORTED
from paritybed.fhir.types import RESOURCE_TYPES

#: Date of this statement's content (changes when the server's capabilities change).
STATEMENT_DATE = "2026-11-26"

_INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type")
_DOC = (
    "Embedded FHIR R4 server of paritybed (SQLite storage, JSON only). Search parameters are the R4 "
    "SearchParameter definitions (generated from the specification). Search is strict: an unknown "
    "parameter, modifier or prefix is answered with 400 unless the request carries "
    "'Prefer: handling=lenient'. Modifiers: :missing on every parameter, :not and :text on tokens, "
    ":exact and :contains on strings, :below and :above on uris, :<Type> on references. Chained "
    "parameters (typed or not, up to 4 hops), _has, compartment search (Patient/1/Observation). "
    "Result parameters: _count (default %d, at most %d), _offset (paging: next/previous links repeat "
    "the query with _offset=N), _sort (any parameter, '-' for descending), _total, _summary (true, "
    "text, data, count, false), _elements, _include and _revinclude (with :iterate), _format=json, "
    "_pretty. Dates without a time zone are read as UTC. Not supported (501): PATCH, conditional "
    "update and delete, operations ($...), system-level search and history; _type, _list, _query, "
    "_filter, _contained searches and the special parameter 'near' are answered with 400."
) % (DEFAULT_COUNT, MAX_COUNT)


def _params(rtype: str) -> list[dict[str, Any]]:
    """Every parameter of the type the server answers (the spec's, minus the few it cannot)."""
    out = []
    for code, p in sorted(r4spec.search_params(rtype).items()):
        if code in UNSUPPORTED or (not p.indexable and code not in ("_text", "_content")) or p.type == "special":
            continue
        paths = " | ".join(str(x) for x in p.paths or ()) or ("narrative" if code == "_text" else "whole resource")
        doc = f"{rtype}.{paths}" if p.paths else paths
        if p.targets:
            doc += f" (references to {', '.join(p.targets) if len(p.targets) < 10 else 'any type'})"
        out.append({"name": code, "type": p.type, "documentation": doc})
    return out


@cache
def _revincludes() -> dict[str, list[str]]:
    """{type: the ``Source:param`` that may refer to it}: its ``_revinclude`` values."""
    out: dict[str, list[str]] = {}
    for t in r4spec.resource_types():
        for c, p in r4spec.type_params(t).items():
            if p.type == "reference" and p.indexable:
                for target in p.targets:
                    out.setdefault(target, []).append(f"{t}:{c}")
    return {t: sorted(v) for t, v in out.items()}


def _resource(rtype: str) -> dict[str, Any]:
    refs = sorted(c for c, p in r4spec.search_params(rtype).items() if p.type == "reference" and p.indexable)
    revs = _revincludes().get(rtype, [])
    return {
        "type": rtype,
        "interaction": [{"code": c} for c in _INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-match",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchInclude": ["*", *(f"{rtype}:{c}" for c in refs)],
        "searchRevInclude": revs,
        "searchParam": _params(rtype),
    }


def capability_statement(base: str, version: str) -> dict[str, Any]:
    """The statement for a server whose base URL is `base`."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": STATEMENT_DATE,
        "publisher": "paritybed",
        "kind": "instance",
        "software": {"name": "paritybed embedded FHIR server", "version": version},
        "implementation": {"description": "paritybed embedded FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": _DOC,
            "resource": [_resource(t) for t in sorted(RESOURCE_TYPES)],
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    }


@lru_cache(maxsize=8)
def capability_bytes(base: str, version: str) -> bytes:
    return orjson.dumps(capability_statement(base, version))
