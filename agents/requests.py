"""Plain FHIR REST requests, shared by the three agents.

Only the four shapes the kernel's strict parser classifies with certainty are built: type-level
search (``GET /fhir/T?...``), instance read (``GET /fhir/T/id``), create (``POST /fhir/T``) and
update (``PUT /fhir/T/id``); query parameter names come only from the kernel's safe list
(docs/enforcement.md), ids are Synthea's uuids.  Nothing here builds a bundle, ``_include`` or
``$everything``: a request the agents need must be expressible in this vocabulary.

Paging follows the embedded server's links: page k (0-based) of a search adds
``&_offset=<k x _count>``; the number of pages comes from the population's counts (so request
volumes depend on the patients), capped by the agent's ``max_pages``.
"""

from __future__ import annotations

from typing import Sequence

from paritybed.agents.emit import Emitter

#: Query parameter names the kernel parser accepts (docs/enforcement.md, "Classification").
SAFE_PARAMS = frozenset(("_id", "_count", "_sort", "_offset", "patient", "subject", "encounter", "category",
                         "code", "status", "date", "identifier", "intent", "clinical-status"))
#: Types searched by ``_id`` rather than by patient (they are not in a patient compartment).
_BY_ID = frozenset(("Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "Medication"))
#: Types with a ``date`` search parameter worth sorting by (newest first).
DATE_SORTED = frozenset(("Observation", "DiagnosticReport", "Encounter", "Procedure"))


class Requests:
    """Builds and interns request templates in an emitter; every method returns an index."""

    def __init__(self, em: Emitter, base: str = "/fhir") -> None:
        self.em = em
        self.base = base

    def read(self, rtype: str, rid: str, patient_id: str = "") -> int:
        return self.em.request(method="GET", path=f"{self.base}/{rtype}/{rid}", resource_type=rtype,
                               interaction="read", resource_id=rid, patient_id=patient_id)

    def read_scoped(self, rtype: str, rid: str, patient_id: str) -> int:
        """A read by id scoped to its patient, ``T?_id=X&patient=P``: the server's search keeps
        the compartment and the launch context binds the patient (a bare ``T/X`` names nobody)."""
        return self.search(rtype, [("_id", rid), ("patient", patient_id)], patient_id)

    def search(self, rtype: str, params: Sequence[tuple[str, str]], patient_id: str = "") -> int:
        """One search request; `params` in the order written in the query string."""
        for name, _ in params:
            if name not in SAFE_PARAMS:
                raise ValueError(f"query parameter {name!r} is outside the kernel's safe list")
        query = "&".join(f"{k}={v}" for k, v in params)
        names = ",".join(sorted({k for k, _ in params}))
        return self.em.request(method="GET", path=f"{self.base}/{rtype}?{query}", resource_type=rtype,
                               interaction="search", params=names, patient_id=patient_id)

    def pages(self, rtype: str, params: Sequence[tuple[str, str]], total: int, page_size: int,
              max_pages: int, patient_id: str = "") -> tuple[int, ...]:
        """The requests of a paged search: one per page of `total` results (at least one, at
        most `max_pages`), page k adding ``_offset``."""
        n = max(1, min(max_pages, -(-total // page_size)))
        base = list(params) + [("_count", str(page_size))]
        if rtype in DATE_SORTED:
            base.append(("_sort", "-date"))
        out = [self.search(rtype, base, patient_id)]
        for k in range(1, n):
            out.append(self.search(rtype, base + [("_offset", str(k * page_size))], patient_id))
        return tuple(out)

    def by_patient(self, rtype: str, patient_id: str, total: int, page_size: int, max_pages: int,
                   extra: Sequence[tuple[str, str]] = ()) -> tuple[int, ...]:
        """A patient's resources of a type, paged (Patient itself and non-compartment types by _id)."""
        if rtype in _BY_ID:
            key = "_id"
        else:
            key = "patient"
        return self.pages(rtype, [(key, patient_id), *extra], total, page_size, max_pages, patient_id)

    def create(self, rtype: str, patient_id: str = "") -> int:
        return self.em.request(method="POST", path=f"{self.base}/{rtype}", resource_type=rtype,
                               interaction="create", patient_id=patient_id)

    def update(self, rtype: str, rid: str, patient_id: str = "") -> int:
        return self.em.request(method="PUT", path=f"{self.base}/{rtype}/{rid}", resource_type=rtype,
                               interaction="update", resource_id=rid, patient_id=patient_id)

    def egress(self, endpoint: str, address: str, calls: int) -> int:
        """One TCP connection to an external endpoint carrying `calls` HTTP calls (what the
        kernel sees is the connect: one row per connection)."""
        return self.em.request(kind="egress", endpoint=endpoint, address=address, egress_calls=calls, params="")

    def interaction(self, rtype: str, interaction: str, patient_id: str, ids: Sequence[str]) -> int:
        """One request of (type, interaction) about a patient, for break-glass lanes and attacks:
        an instance interaction uses one of `ids` (the patient's resources of that type; the
        patient itself for Patient), and falls back to a search when the patient has none."""
        if interaction == "create":
            return self.create(rtype)
        rid = patient_id if rtype == "Patient" else (ids[-1] if ids else None)
        if interaction == "search" or rid is None:
            return self.by_patient(rtype, patient_id, 0, 50, 1)[0]
        if interaction == "read":
            return self.read(rtype, rid, patient_id)
        if interaction == "update":
            return self.update(rtype, rid, patient_id)
        method, suffix = {"vread": ("GET", "/_history/1"), "history": ("GET", "/_history"),
                          "delete": ("DELETE", "")}[interaction]
        return self.em.request(method=method, path=f"{self.base}/{rtype}/{rid}{suffix}", resource_type=rtype,
                               interaction=interaction, resource_id=rid, patient_id=patient_id)
