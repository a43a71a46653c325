"""The CapabilityStatement served at ``/fhir/metadata``: exactly what the server implements.

It is generated from the same tables the server runs on (the resource type list and the search
parameter definitions), so it cannot claim a parameter the search code does not know, nor miss
one it does.  Fixed ``date`` and no timestamps: the statement is byte-identical across runs.
"""

from __future__ import annotations

from typing import Any

import orjson

from paritybed.fhir.params import params_for
from paritybed.fhir.search import DEFAULT_COUNT, MAX_COUNT
from paritybed.fhir.types import RESOURCE_TYPES

#: Date of this statement's content (changes when the server's capabilities change).
STATEMENT_DATE = "2026-11-26"

_INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type")
_COMMON = (
    {"name": "_id", "type": "token", "documentation": "Logical id; comma-separated values are OR"},
    {"name": "_lastUpdated", "type": "date", "documentation": "meta.lastUpdated; prefixes eq ne gt lt ge le sa eb"},
)
_DOC = (
    "Embedded FHIR R4 server of paritybed (SQLite storage, JSON only). Search is strict: an unknown "
    "parameter, modifier or date prefix is answered with 400 unless the request carries "
    "'Prefer: handling=lenient'. Result parameters: _count (default %d, at most %d), _offset (paging: "
    "next/previous links repeat the query with _offset=N), _sort (_lastUpdated, _id or a date parameter "
    "of the type; '-' for descending; several comma-separated), _total (accurate, estimate, none), "
    "_summary=count, _format=json. Modifiers: :missing on every parameter, :not on tokens, :<Type> on "
    "references. Dates without a time zone are read as UTC. Not supported (501): PATCH, conditional "
    "update and delete, operations ($...), system-level search and history; _include, _revinclude, "
    "_elements, chained parameters and _has are answered with 400."
) % (DEFAULT_COUNT, MAX_COUNT)


def _resource(rtype: str) -> dict[str, Any]:
    params = [*_COMMON]
    for p in params_for(rtype).values():
        doc = f"{rtype}.{' | '.join(p.paths)}"
        if p.target:
            doc += f" (references to {p.target})"
        params.append({"name": p.name, "type": p.kind, "documentation": doc})
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
        "searchParam": params,
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


def capability_bytes(base: str, version: str) -> bytes:
    return orjson.dumps(capability_statement(base, version))
