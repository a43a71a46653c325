"""The search parameters the server supports, per resource type, and their extraction.

Names, types and element paths follow the FHIR R4 search parameter registry (for example
``Observation.patient`` is ``Observation.subject.where(resolve() is Patient)``, ``Coverage.patient``
is ``Coverage.beneficiary``, ``DocumentReference.encounter`` is ``context.encounter``).  Only what
the agents and the usual clients need is listed; every other name is answered with 400, never
ignored.  Values are extracted when a resource is written and stored in index tables, so a
search is an index lookup, not a scan of the JSON.

A path is a dotted element path; a choice element (``effective[x]``) is listed once per type
(``effectiveDateTime``, ``effectivePeriod``).  Reference parameters may name a target type:
``patient`` only indexes references to Patient.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Iterator

from paritybed.fhir.dates import Range, value_range


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "token" | "reference" | "date" | "string"
    paths: tuple[str, ...]
    target: str | None = None  # reference params: only references to this resource type
    doc: str = ""


def _p(name: str, kind: str, *paths: str, target: str | None = None) -> Param:
    return Param(name, kind, paths, target)


def _subject(extra: tuple[Param, ...] = ()) -> tuple[Param, ...]:
    """``patient`` (subject when it is a Patient) and ``subject`` (any target)."""
    return (_p("patient", "reference", "subject", target="Patient"), _p("subject", "reference", "subject"), *extra)


_ID = _p("identifier", "token", "identifier")
_STATUS = _p("status", "token", "status")
_ENC = _p("encounter", "reference", "encounter", target="Encounter")
_CAT = _p("category", "token", "category")
_CODE = _p("code", "token", "code")
_NAME = (
    _p("name", "string", "name"),
    _p("family", "string", "name.family"),
    _p("given", "string", "name.given"),
)

#: Per resource type: its search parameters (besides ``_id`` and ``_lastUpdated``, on every type).
PARAMS: dict[str, tuple[Param, ...]] = {
    "Patient": (_ID, *_NAME, _p("birthdate", "date", "birthDate"), _p("gender", "token", "gender"),
                _p("active", "token", "active"),
                _p("general-practitioner", "reference", "generalPractitioner"),
                _p("organization", "reference", "managingOrganization", target="Organization")),
    "Practitioner": (_ID, *_NAME, _p("active", "token", "active")),
    "PractitionerRole": (_ID, _p("practitioner", "reference", "practitioner", target="Practitioner"),
                         _p("organization", "reference", "organization", target="Organization"),
                         _p("role", "token", "code"), _p("specialty", "token", "specialty")),
    "Organization": (_ID, _p("name", "string", "name"), _p("type", "token", "type"),
                     _p("partof", "reference", "partOf", target="Organization")),
    "Location": (_ID, _p("name", "string", "name"), _STATUS,
                 _p("organization", "reference", "managingOrganization", target="Organization")),
    "Encounter": (_ID, *_subject(), _STATUS, _p("class", "token", "class"), _p("type", "token", "type"),
                  _p("date", "date", "period"),
                  _p("participant", "reference", "participant.individual"),
                  _p("practitioner", "reference", "participant.individual", target="Practitioner"),
                  _p("service-provider", "reference", "serviceProvider", target="Organization"),
                  _p("location", "reference", "location.location", target="Location"),
                  _p("reason-code", "token", "reasonCode")),
    "Observation": (_ID, *_subject(), _ENC, _CAT, _CODE, _STATUS,
                    _p("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
                    _p("performer", "reference", "performer")),
    "Condition": (_ID, *_subject(), _ENC, _CAT, _CODE,
                  _p("clinical-status", "token", "clinicalStatus"),
                  _p("verification-status", "token", "verificationStatus"),
                  _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
                  _p("recorded-date", "date", "recordedDate")),
    "MedicationRequest": (_ID, *_subject(), _ENC, _STATUS, _CAT,
                          _p("intent", "token", "intent"),
                          _p("code", "token", "medicationCodeableConcept"),
                          _p("medication", "reference", "medicationReference", target="Medication"),
                          _p("authoredon", "date", "authoredOn"),
                          _p("requester", "reference", "requester")),
    "MedicationAdministration": (_ID, *_subject(), _STATUS,
                                 _p("context", "reference", "context"),
                                 _p("code", "token", "medicationCodeableConcept"),
                                 _p("medication", "reference", "medicationReference", target="Medication"),
                                 _p("effective-time", "date", "effectiveDateTime", "effectivePeriod"),
                                 _p("request", "reference", "request", target="MedicationRequest")),
    "MedicationStatement": (_ID, *_subject(), _STATUS, _CAT,
                            _p("context", "reference", "context"),
                            _p("code", "token", "medicationCodeableConcept"),
                            _p("medication", "reference", "medicationReference", target="Medication"),
                            _p("effective", "date", "effectiveDateTime", "effectivePeriod")),
    "Medication": (_ID, _CODE, _STATUS),
    "DiagnosticReport": (_ID, *_subject(), _ENC, _CAT, _CODE, _STATUS,
                         _p("date", "date", "effectiveDateTime", "effectivePeriod"),
                         _p("issued", "date", "issued"),
                         _p("result", "reference", "result", target="Observation"),
                         _p("performer", "reference", "performer")),
    "Procedure": (_ID, *_subject(), _ENC, _CODE, _STATUS, _CAT,
                  _p("date", "date", "performedDateTime", "performedPeriod"),
                  _p("performer", "reference", "performer.actor")),
    "AllergyIntolerance": (_ID, _p("patient", "reference", "patient", target="Patient"),
                           _p("clinical-status", "token", "clinicalStatus"),
                           _p("verification-status", "token", "verificationStatus"),
                           _p("category", "token", "category"), _p("type", "token", "type"),
                           _p("criticality", "token", "criticality"),
                           _p("code", "token", "code", "reaction.substance"),
                           _p("date", "date", "recordedDate")),
    "DocumentReference": (_ID, *_subject(), _STATUS, _CAT, _p("type", "token", "type"),
                          _p("encounter", "reference", "context.encounter", target="Encounter"),
                          _p("date", "date", "date"), _p("period", "date", "context.period"),
                          _p("author", "reference", "author")),
    "Claim": (_ID, _p("patient", "reference", "patient", target="Patient"), _STATUS,
              _p("encounter", "reference", "item.encounter", target="Encounter"),
              _p("use", "token", "use"), _p("created", "date", "created"),
              _p("provider", "reference", "provider"), _p("insurer", "reference", "insurer")),
    "ClaimResponse": (_ID, _p("patient", "reference", "patient", target="Patient"), _STATUS,
                      _p("use", "token", "use"), _p("created", "date", "created"),
                      _p("outcome", "token", "outcome"),
                      _p("request", "reference", "request", target="Claim"),
                      _p("insurer", "reference", "insurer")),
    "ExplanationOfBenefit": (_ID, _p("patient", "reference", "patient", target="Patient"), _STATUS,
                             _p("encounter", "reference", "item.encounter", target="Encounter"),
                             _p("created", "date", "created"),
                             _p("claim", "reference", "claim", target="Claim"),
                             _p("coverage", "reference", "insurance.coverage", target="Coverage"),
                             _p("provider", "reference", "provider"),
                             _p("care-team", "reference", "careTeam.provider")),
    "Coverage": (_ID, _p("patient", "reference", "beneficiary", target="Patient"),
                 _p("beneficiary", "reference", "beneficiary", target="Patient"), _STATUS,
                 _p("type", "token", "type"), _p("payor", "reference", "payor"),
                 _p("subscriber", "reference", "subscriber"),
                 _p("policy-holder", "reference", "policyHolder")),
    "ServiceRequest": (_ID, *_subject(), _ENC, _STATUS, _CAT, _CODE,
                       _p("intent", "token", "intent"), _p("authored", "date", "authoredOn"),
                       _p("occurrence", "date", "occurrenceDateTime", "occurrencePeriod"),
                       _p("requester", "reference", "requester"),
                       _p("performer", "reference", "performer")),
    "Immunization": (_ID, _p("patient", "reference", "patient", target="Patient"), _STATUS,
                     _p("vaccine-code", "token", "vaccineCode"),
                     _p("date", "date", "occurrenceDateTime"),
                     _p("location", "reference", "location", target="Location"),
                     _p("performer", "reference", "performer.actor")),
    "CarePlan": (_ID, *_subject(), _ENC, _CAT, _STATUS, _p("intent", "token", "intent"),
                 _p("date", "date", "period"), _p("care-team", "reference", "careTeam", target="CareTeam")),
    "CareTeam": (_ID, *_subject(), _ENC, _STATUS, _CAT, _p("date", "date", "period"),
                 _p("participant", "reference", "participant.member")),
    "Goal": (_ID, *_subject(), _CAT, _p("lifecycle-status", "token", "lifecycleStatus"),
             _p("achievement-status", "token", "achievementStatus")),
    "Device": (_ID, _p("patient", "reference", "patient", target="Patient"), _STATUS,
               _p("type", "token", "type"), _p("organization", "reference", "owner", target="Organization")),
    "ImagingStudy": (_ID, *_subject(), _ENC, _STATUS, _p("started", "date", "started"),
                     _p("modality", "token", "series.modality")),
    "SupplyDelivery": (_ID, _p("patient", "reference", "patient", target="Patient"), _STATUS,
                       _p("supplier", "reference", "supplier"), _p("receiver", "reference", "receiver")),
    "Provenance": (_p("patient", "reference", "target", target="Patient"),
                   _p("target", "reference", "target"), _p("agent", "reference", "agent.who"),
                   _p("recorded", "date", "recorded")),
    "AuditEvent": (_p("patient", "reference", "entity.what", target="Patient"),
                   _p("entity", "reference", "entity.what"), _p("agent", "reference", "agent.who"),
                   _p("date", "date", "recorded"), _p("type", "token", "type"),
                   _p("subtype", "token", "subtype"), _p("action", "token", "action"),
                   _p("outcome", "token", "outcome"), _p("source", "reference", "source.observer")),
    "Consent": (_ID, _p("patient", "reference", "patient", target="Patient"), _STATUS, _CAT,
                _p("date", "date", "dateTime")),
    "Communication": (_ID, *_subject(), _ENC, _STATUS, _CAT, _p("sent", "date", "sent")),
    "Task": (_ID, _p("patient", "reference", "for", target="Patient"), _p("subject", "reference", "for"),
             _ENC, _STATUS, _CODE, _p("intent", "token", "intent"), _p("owner", "reference", "owner"),
             _p("authored-on", "date", "authoredOn")),
    "Specimen": (_ID, *_subject(), _STATUS, _p("type", "token", "type"),
                 _p("collected", "date", "collection.collectedDateTime", "collection.collectedPeriod")),
    "RelatedPerson": (_ID, _p("patient", "reference", "patient", target="Patient"), *_NAME),
    "Basic": (_ID, *_subject(), _CODE, _p("author", "reference", "author"), _p("created", "date", "created")),
    "Group": (_ID, _p("type", "token", "type"), _CODE, _p("member", "reference", "member.entity")),
}

_BY_NAME: dict[str, dict[str, Param]] = {t: {p.name: p for p in ps} for t, ps in PARAMS.items()}


def params_for(rtype: str) -> dict[str, Param]:
    """The type's parameters by name (empty for types with only ``_id``/``_lastUpdated``)."""
    return _BY_NAME.get(rtype, {})


# ------------------------------------------------------------------------------ extraction
def _walk(node: Any, parts: list[str]) -> Iterator[Any]:
    """Values at a dotted path, descending through lists as FHIRPath does."""
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, parts)
        return
    if not parts:
        yield node
        return
    if isinstance(node, dict) and parts[0] in node:
        yield from _walk(node[parts[0]], parts[1:])


def normalize_string(text: str) -> str:
    """Case- and accent-insensitive form for ``string`` search (the spec's default matching)."""
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


def _tokens(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, str):
        yield None, value
    elif isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value.get("coding") or []:
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    yield coding.get("system"), coding["code"]
        elif isinstance(value.get("code"), str):  # Coding
            yield value.get("system"), value["code"]
        elif isinstance(value.get("value"), str):  # Identifier
            yield value.get("system"), value["value"]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):  # HumanName, Address
        for key in ("text", "family", "given", "prefix", "suffix", "line", "city", "state", "postalCode"):
            part = value.get(key)
            for v in part if isinstance(part, list) else [part]:
                if isinstance(v, str):
                    yield v


@dataclass
class Extracted:
    """Index rows of one resource: tokens (param, system, value) and dates (param, lo, hi)."""

    tokens: list[tuple[str, str | None, str]]
    dates: list[tuple[str, float, float]]


def extract(resource: dict[str, Any], resolve: Any = None) -> Extracted:
    """Index values of every parameter of the resource's type.

    `resolve` maps a reference string to its final form (bundle processing passes the map of
    urn:uuid and conditional references it is rewriting); without it references are used as
    written.  Reference values are stored as (system=target type, value=id); tokens as
    (system, code); strings normalized with system NULL.
    """
    rtype = resource.get("resourceType", "")
    out = Extracted([], [])
    for p in PARAMS.get(rtype, ()):
        key = f"{rtype}.{p.name}"
        for path in p.paths:
            for value in _walk(resource, path.split(".")):
                if p.kind == "token":
                    out.tokens.extend((key, s, v) for s, v in _tokens(value))
                elif p.kind == "reference":
                    ref = value.get("reference") if isinstance(value, dict) else None
                    if not isinstance(ref, str):
                        continue
                    if resolve is not None:
                        ref = resolve(ref)
                    tid = split_reference(ref)
                    if tid and (p.target is None or tid[0] == p.target):
                        out.tokens.append((key, tid[0], tid[1]))
                elif p.kind == "date":
                    rng: Range | None = value_range(value)
                    if rng is not None:
                        out.dates.append((key, rng[0], rng[1]))
                else:
                    out.tokens.extend((key, None, normalize_string(s)) for s in _strings(value))
    return out
