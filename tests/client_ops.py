"""Ordinary FHIR client operations, written with real client libraries (fhirpy, fhirclient,
requests), and for each the (resource type, interaction) pairs it touches on the server
according to the FHIR R4 REST and search grammar.

One list serves two purposes: tests/test_client_ops.py runs every operation against the
embedded server, unenforced, and requires each to succeed; the same operations can be run
under kernel enforcement (``paritybed enforce``) with a policy that allows exactly their
touches, so that 0 false denials can be shown with the libraries users bring.

    python -P tests/client_ops.py seed http://127.0.0.1:8080/fhir     # the record they read (PUT, idempotent)
    python -P tests/client_ops.py list                                 # names and touches, JSON
    python -P tests/client_ops.py run http://127.0.0.1:8080/fhir [NAME ...]   # one JSON line each; exit 1 on a failure

``what`` is the request as the library puts it on the wire (fhirpy keeps ``:`` and ``,`` and
encodes ``|`` and ``/``; fhirclient and requests also encode ``:``, requests even in parameter
names, and write a space as ``+``).  Touches follow the grammar, not the server's answer: a search touches its type's ``search``;
an ``_include`` a ``read`` of each target type of the parameter (all of them when the include
is untyped); a ``_revinclude``, a chain hop and a ``_has`` a ``search`` of their type; a
compartment search is a search of the member type; HEAD touches what GET does; paging through
``next`` links is the same search again.  Each operation checks what it got back, so "success"
means the right answer, not just a 200.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

import requests

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
PATIENT, SIBLING = "cops-pat-1", "cops-pat-2"
CLINIC, SYSTEM_ORG, DOCTOR = "cops-org-clinic", "cops-org-system", "cops-dr"
HEART_RATE = "8867-4"
N_HEART_RATES = 24
JSON_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}

Touch = tuple[str, str]


@dataclass(frozen=True)
class Operation:
    """One client operation: what it does, with which library, and what it touches."""

    name: str
    library: str  # fhirpy | fhirclient | requests
    what: str  # the request(s), as a reader would write them
    touches: frozenset[Touch]
    run: Callable[[str], None]  # raises (AssertionError or the library's error) on failure


# ------------------------------------------------------------------------------- record
def record() -> list[dict[str, Any]]:
    """The small record the operations read: two patients, a clinic in a health system, a
    doctor, three encounters, 24 heart rates (enough for three pages of 10), a condition and a
    provenance."""
    out: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": SYSTEM_ORG, "name": "Riverside Health System", "active": True},
        {"resourceType": "Organization", "id": CLINIC, "name": "Riverside Family Clinic", "active": True,
         "partOf": {"reference": f"Organization/{SYSTEM_ORG}"}},
        {"resourceType": "Practitioner", "id": DOCTOR, "name": [{"family": "Berg", "given": ["Ingrid"]}]},
        {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": "1962-04-12",
         "name": [{"use": "official", "family": "Lindqvist", "given": ["Astrid"]}],
         "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": "999-12-3456"}],
         "managingOrganization": {"reference": f"Organization/{CLINIC}"},
         "generalPractitioner": [{"reference": f"Practitioner/{DOCTOR}"}]},
        {"resourceType": "Patient", "id": SIBLING, "gender": "male", "birthDate": "1990-09-30",
         "name": [{"use": "official", "family": "Lindqvist", "given": ["Erik"]}]},
        {"resourceType": "Condition", "id": "cops-cond-1", "subject": {"reference": f"Patient/{PATIENT}"},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
         "code": {"coding": [{"system": SNOMED, "code": "38341003", "display": "Hypertensive disorder"}]},
         "onsetDateTime": "2015-06-01"},
    ]
    for i in range(3):
        out.append({"resourceType": "Encounter", "id": f"cops-enc-{i}", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": f"Patient/{PATIENT}"},
                    "serviceProvider": {"reference": f"Organization/{CLINIC}"},
                    "participant": [{"individual": {"reference": f"Practitioner/{DOCTOR}"}}],
                    "period": {"start": f"202{i + 1}-03-01T09:00:00Z", "end": f"202{i + 1}-03-01T09:30:00Z"}})
    for i in range(N_HEART_RATES):
        out.append({"resourceType": "Observation", "id": f"cops-hr-{i}", "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                              "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": LOINC, "code": HEART_RATE, "display": "Heart rate"}], "text": "Heart rate"},
                    "subject": {"reference": f"Patient/{PATIENT}"},
                    "encounter": {"reference": f"Encounter/cops-enc-{i % 3}"},
                    "effectiveDateTime": f"202{i % 3 + 1}-03-01T09:{i:02d}:00Z",
                    "valueQuantity": {"value": 60 + 2 * i, "unit": "/min", "system": UCUM, "code": "/min"}})
    out.append({"resourceType": "Provenance", "id": "cops-prov-1", "recorded": "2021-03-01T10:00:00Z",
                "target": [{"reference": "Observation/cops-hr-0"}],
                "agent": [{"who": {"reference": f"Practitioner/{DOCTOR}"}}]})
    return out


def seed(base: str) -> None:
    """PUT the record (idempotent: a second seed changes nothing)."""
    with requests.Session() as s:
        for res in record():
            r = s.put(f"{base}/{res['resourceType']}/{res['id']}", json=res, headers=JSON_HEADERS, timeout=30)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"seeding {res['resourceType']}/{res['id']}: {r.status_code} {r.text}")


# ------------------------------------------------------------------------------ helpers
def _fhirpy(base: str) -> Any:
    from fhirpy import SyncFHIRClient

    return SyncFHIRClient(base, extra_headers={"Accept": "application/fhir+json"})


def _fhirclient(base: str) -> Any:
    from fhirclient.server import FHIRServer

    return FHIRServer(None, base_uri=base)


def _get(base: str, path: str, params: Any = None, method: str = "GET", **kw: Any) -> requests.Response:
    r = requests.request(method, f"{base}/{path}", params=params, headers={"Accept": "application/fhir+json"},
                         timeout=30, **kw)
    assert r.status_code == 200, f"{method} {r.url}: {r.status_code} {r.text[:300]}"
    return r


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode)


def _types(bundle: dict[str, Any], mode: str) -> set[str]:
    return {e["resource"]["resourceType"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode}


def S(t: str) -> Touch:  # noqa: N802 - reads like the grammar: S("Patient") is a Patient search
    return (t, "search")


def R(t: str) -> Touch:  # noqa: N802
    return (t, "read")


# --------------------------------------------------------------------------- fhirpy
def fp_family(base: str) -> None:
    found = _fhirpy(base).resources("Patient").search(family="Lindqvist").fetch()
    assert sorted(p.id for p in found) == [PATIENT, SIBLING]


def fp_name_birthdate(base: str) -> None:
    found = _fhirpy(base).resources("Patient").search(name="lindq", birthdate__ge="1980-01-01").fetch()
    assert [p.id for p in found] == [SIBLING]


def fp_code(base: str) -> None:
    found = _fhirpy(base).resources("Observation").search(code=f"{LOINC}|{HEART_RATE}", patient=PATIENT).limit(50).fetch()
    assert len(found) == N_HEART_RATES


def fp_subject_reference(base: str) -> None:
    client = _fhirpy(base)
    found = client.resources("Condition").search(subject=client.reference("Patient", PATIENT)).fetch()
    assert [c.id for c in found] == ["cops-cond-1"]


def fp_last_updated(base: str) -> None:
    import datetime

    since = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    found = _fhirpy(base).resources("Encounter").search(patient=PATIENT, _lastUpdated__gt=since).fetch()
    assert len(found) == 3


def fp_include(base: str) -> None:
    raw = _fhirpy(base).resources("Observation").search(patient=PATIENT, date="2021").include(
        "Observation", "patient").fetch_raw()
    assert _types(raw, "include") == {"Patient"} and len(_ids(raw)) == 8


def fp_revinclude(base: str) -> None:
    raw = _fhirpy(base).resources("Observation").search(_id="cops-hr-0").revinclude("Provenance", "target").fetch_raw()
    assert _ids(raw, "include") == ["cops-prov-1"]


def fp_typed_chain(base: str) -> None:
    found = _fhirpy(base).resources("Observation").search(subject__Patient__family="Lindqvist", code=HEART_RATE).limit(50).fetch()
    assert len(found) == N_HEART_RATES


def fp_has(base: str) -> None:
    found = _fhirpy(base).resources("Patient").has("Observation", "patient", code=HEART_RATE).fetch()
    assert [p.id for p in found] == [PATIENT]


def fp_elements(base: str) -> None:
    found = _fhirpy(base).resources("Patient").search(_id=PATIENT).elements("name", "birthDate").fetch()
    assert len(found) == 1 and "gender" not in found[0] and found[0]["birthDate"] == "1962-04-12"


def fp_fetch_all(base: str) -> None:
    found = _fhirpy(base).resources("Observation").search(patient=PATIENT, code=HEART_RATE).limit(10).fetch_all()
    assert sorted(o.id for o in found) == sorted(f"cops-hr-{i}" for i in range(N_HEART_RATES))


def fp_read(base: str) -> None:
    patient = _fhirpy(base).reference("Patient", PATIENT).to_resource()
    assert patient["name"][0]["family"] == "Lindqvist"


def fp_create(base: str) -> None:
    obs = _fhirpy(base).resource(
        "Observation", status="final", code={"coding": [{"system": LOINC, "code": "8310-5", "display": "Body temperature"}]},
        subject={"reference": f"Patient/{PATIENT}"}, valueQuantity={"value": 37.1, "unit": "Cel", "system": UCUM, "code": "Cel"})
    obs.save()
    assert obs.id


def fp_update(base: str) -> None:
    patient = _fhirpy(base).reference("Patient", SIBLING).to_resource()
    patient["telecom"] = [{"system": "phone", "value": "+46 8 123 456", "use": "mobile"}]
    patient.save()
    assert patient["meta"]["versionId"] != "1"


def fp_first_sorted(base: str) -> None:
    latest = _fhirpy(base).resources("Encounter").search(patient=PATIENT).sort("-date").first()
    assert latest.id == "cops-enc-2"


# ------------------------------------------------------------------------- fhirclient
def fc_search(base: str) -> None:
    from fhirclient.models.patient import Patient

    found = list(Patient.where({"family": "Lindqvist", "gender": "female"}).perform_resources_iter(_fhirclient(base)))
    assert [p.id for p in found] == [PATIENT]


def fc_read(base: str) -> None:
    from fhirclient.models.patient import Patient

    patient = Patient.read(PATIENT, _fhirclient(base))
    assert patient.birthDate.isostring == "1962-04-12"


def fc_code_and_date(base: str) -> None:
    from fhirclient.models.observation import Observation

    found = list(Observation.where({"code": f"{LOINC}|{HEART_RATE}", "patient": PATIENT, "date": "ge2023-01-01",
                                    "_count": "50"}).perform_resources_iter(_fhirclient(base)))
    assert len(found) == N_HEART_RATES // 3


def fc_include_untyped(base: str) -> None:
    from fhirclient.models.fhirsearch import FHIRSearch
    from fhirclient.models.observation import Observation

    search = FHIRSearch(Observation, {"_id": "cops-hr-1"}).include("subject")
    bundle = next(search.perform_iter(_fhirclient(base)))
    assert sorted(e.resource.resource_type for e in bundle.entry) == ["Observation", "Patient"]


def fc_revinclude(base: str) -> None:
    from fhirclient.models.fhirsearch import FHIRSearch
    from fhirclient.models.observation import Observation
    from fhirclient.models.provenance import Provenance

    search = FHIRSearch(Observation, {"_id": "cops-hr-0"}).include("target", Provenance, reverse=True)
    bundle = next(search.perform_iter(_fhirclient(base)))
    assert sorted(e.resource.id for e in bundle.entry) == ["cops-hr-0", "cops-prov-1"]


def fc_paging(base: str) -> None:
    from fhirclient.models.observation import Observation

    pages = list(Observation.where({"patient": PATIENT, "code": HEART_RATE, "_count": "10"}).perform_iter(_fhirclient(base)))
    assert len(pages) == 3 and sum(len(p.entry) for p in pages) == N_HEART_RATES


def fc_create(base: str) -> None:
    from fhirclient.models.condition import Condition

    cond = Condition({"resourceType": "Condition", "subject": {"reference": f"Patient/{SIBLING}"},
                      "code": {"coding": [{"system": SNOMED, "code": "195662009", "display": "Acute viral pharyngitis"}]},
                      "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                     "code": "active"}]}})
    answer = cond.create(_fhirclient(base))
    assert answer["resourceType"] == "Condition" and answer["id"]


def fc_update(base: str) -> None:
    from fhirclient.models.organization import Organization

    server = _fhirclient(base)
    org = Organization.read(CLINIC, server)
    org.alias = ["RFC"]
    answer = org.update(server)
    assert answer["alias"] == ["RFC"]


# --------------------------------------------------------------------------- requests
def rq_compartment(base: str) -> None:
    b = _get(base, f"Patient/{PATIENT}/Observation", {"category": "vital-signs", "_count": "50"}).json()
    assert b["total"] == N_HEART_RATES


def rq_compartment_paging(base: str) -> None:
    url, seen = f"{base}/Patient/{PATIENT}/Encounter?_count=2", []
    while url:
        b = requests.get(url, headers={"Accept": "application/fhir+json"}, timeout=30).json()
        seen += _ids(b)
        url = next((link["url"] for link in b["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == ["cops-enc-0", "cops-enc-1", "cops-enc-2"]


def rq_head(base: str) -> None:
    r = _get(base, f"Patient/{PATIENT}", method="HEAD")
    assert r.content == b"" and r.headers["ETag"]
    r = _get(base, "Observation", {"patient": PATIENT}, method="HEAD")
    assert r.content == b""


def rq_post_search(base: str) -> None:
    r = requests.post(f"{base}/Observation/_search", data={"patient": PATIENT, "code": f"{LOINC}|{HEART_RATE}", "_count": "5"},
                      headers={"Accept": "application/fhir+json"}, timeout=30)
    assert r.status_code == 200 and r.json()["total"] == N_HEART_RATES, r.text


def rq_summary_count(base: str) -> None:
    b = _get(base, "Patient", {"family": "Lindqvist", "_summary": "count"}).json()
    assert b["total"] == 2 and "entry" not in b


def rq_vread_history(base: str) -> None:
    v1 = _get(base, f"Patient/{PATIENT}/_history/1").json()
    assert v1["id"] == PATIENT
    h = _get(base, f"Patient/{PATIENT}/_history").json()
    assert h["type"] == "history" and h["total"] >= 1


def rq_multi_hop_chain(base: str) -> None:
    b = _get(base, "Observation", {"encounter.service-provider.name": "Riverside Family", "_count": "50"}).json()
    assert b["total"] == N_HEART_RATES


def rq_include_iterate(base: str) -> None:
    b = _get(base, "Encounter", [("patient", PATIENT), ("_include", "Encounter:service-provider"),
                                 ("_include:iterate", "Organization:partof")]).json()
    assert _ids(b, "include") == [CLINIC, SYSTEM_ORG]


def rq_date_with_offset(base: str) -> None:
    # '+' of the offset percent-encoded by requests (%2B): the value is decoded exactly once
    b = _get(base, "Encounter", {"patient": PATIENT, "date": "ge2022-01-01T00:00:00+01:00"}).json()
    assert _ids(b) == ["cops-enc-1", "cops-enc-2"]


def rq_quantity_and_text(base: str) -> None:
    b = _get(base, "Observation", {"patient": PATIENT, "value-quantity": f"ge100|{UCUM}|/min", "code:text": "heart"}).json()
    assert b["total"] == sum(1 for i in range(N_HEART_RATES) if 60 + 2 * i >= 100)


def rq_untyped_single_target_chain(base: str) -> None:
    b = _get(base, "Observation", {"patient.birthdate": "lt1970", "code": HEART_RATE, "_summary": "count"}).json()
    assert b["total"] == N_HEART_RATES


def rq_create_delete(base: str) -> None:
    r = requests.post(f"{base}/Flag", json={"resourceType": "Flag", "status": "active", "code": {"text": "Fall risk"},
                                            "subject": {"reference": f"Patient/{PATIENT}"}}, headers=JSON_HEADERS, timeout=30)
    assert r.status_code == 201, r.text
    r = requests.delete(f"{base}/Flag/{r.json()['id']}", headers=JSON_HEADERS, timeout=30)
    assert r.status_code == 200, r.text


def rq_identifier_token(base: str) -> None:
    b = _get(base, "Patient", {"identifier": "urn:oid:2.16.840.1.113883.4.1|999-12-3456"}).json()
    assert _ids(b) == [PATIENT]


def rq_read_summary(base: str) -> None:
    p = _get(base, f"Patient/{PATIENT}", {"_summary": "true"}).json()
    assert p["meta"]["tag"][-1]["code"] == "SUBSETTED" and "name" in p


# ---------------------------------------------------------------------------- the list
_SUBJECT_TARGETS = ("Device", "Group", "Location", "Patient")  # R4 Observation.subject

OPERATIONS: tuple[Operation, ...] = (
    Operation("fp-patient-by-family", "fhirpy", "GET Patient?family=Lindqvist", frozenset({S("Patient")}), fp_family),
    Operation("fp-patient-by-name-birthdate", "fhirpy", "GET Patient?name=lindq&birthdate=ge1980-01-01",
              frozenset({S("Patient")}), fp_name_birthdate),
    Operation("fp-observation-by-code", "fhirpy", "GET Observation?code=http:%2F%2Floinc.org%7C8867-4&patient=ID&_count=50",
              frozenset({S("Observation")}), fp_code),
    Operation("fp-condition-by-subject-reference", "fhirpy", "GET Condition?subject=Patient%2FID",
              frozenset({S("Condition")}), fp_subject_reference),
    Operation("fp-last-updated", "fhirpy", "GET Encounter?patient=ID&_lastUpdated=gt2000-01-01T00:00:00Z",
              frozenset({S("Encounter")}), fp_last_updated),
    Operation("fp-include-patient", "fhirpy", "GET Observation?patient=ID&date=2021&_include=Observation:patient",
              frozenset({S("Observation"), R("Patient")}), fp_include),
    Operation("fp-revinclude-provenance", "fhirpy", "GET Observation?_id=X&_revinclude=Provenance:target",
              frozenset({S("Observation"), S("Provenance")}), fp_revinclude),
    Operation("fp-typed-chain", "fhirpy", "GET Observation?subject:Patient.family=Lindqvist&code=8867-4&_count=50",
              frozenset({S("Observation"), S("Patient")}), fp_typed_chain),
    Operation("fp-has", "fhirpy", "GET Patient?_has:Observation:patient:code=8867-4",
              frozenset({S("Patient"), S("Observation")}), fp_has),
    Operation("fp-elements", "fhirpy", "GET Patient?_id=ID&_elements=name,birthDate,id,resourceType",
              frozenset({S("Patient")}), fp_elements),
    Operation("fp-fetch-all-pages", "fhirpy", "GET Observation?patient=ID&code=8867-4&_count=10, then each next link",
              frozenset({S("Observation")}), fp_fetch_all),
    Operation("fp-read", "fhirpy", "GET Patient/ID", frozenset({R("Patient")}), fp_read),
    Operation("fp-create", "fhirpy", "POST Observation", frozenset({("Observation", "create")}), fp_create),
    Operation("fp-read-then-update", "fhirpy", "GET Patient/ID, PUT Patient/ID",
              frozenset({R("Patient"), ("Patient", "update")}), fp_update),
    Operation("fp-first-sorted", "fhirpy", "GET Encounter?patient=ID&_sort=-date&_count=1",
              frozenset({S("Encounter")}), fp_first_sorted),
    Operation("fc-patient-search", "fhirclient", "GET Patient?family=Lindqvist&gender=female",
              frozenset({S("Patient")}), fc_search),
    Operation("fc-read", "fhirclient", "GET Patient/ID", frozenset({R("Patient")}), fc_read),
    Operation("fc-observation-by-code-and-date", "fhirclient",
              "GET Observation?code=http%3A%2F%2Floinc.org%7C8867-4&patient=ID&date=ge2023-01-01&_count=50",
              frozenset({S("Observation")}), fc_code_and_date),
    Operation("fc-include-untyped", "fhirclient", "GET Observation?_id=X&_include=Observation:subject",
              frozenset({S("Observation"), *(R(t) for t in _SUBJECT_TARGETS)}), fc_include_untyped),
    Operation("fc-revinclude", "fhirclient", "GET Observation?_id=X&_revinclude=Provenance:target",
              frozenset({S("Observation"), S("Provenance")}), fc_revinclude),
    Operation("fc-paging", "fhirclient", "GET Observation?patient=ID&code=8867-4&_count=10, then each next link",
              frozenset({S("Observation")}), fc_paging),
    Operation("fc-create", "fhirclient", "POST Condition", frozenset({("Condition", "create")}), fc_create),
    Operation("fc-read-then-update", "fhirclient", "GET Organization/ID, PUT Organization/ID",
              frozenset({R("Organization"), ("Organization", "update")}), fc_update),
    Operation("rq-compartment", "requests", "GET Patient/ID/Observation?category=vital-signs&_count=50",
              frozenset({S("Observation")}), rq_compartment),
    Operation("rq-compartment-paging", "requests", "GET Patient/ID/Encounter?_count=2, then each next link",
              frozenset({S("Encounter")}), rq_compartment_paging),
    Operation("rq-head", "requests", "HEAD Patient/ID, HEAD Observation?patient=ID",
              frozenset({R("Patient"), S("Observation")}), rq_head),
    Operation("rq-post-search", "requests", "POST Observation/_search (form: patient, code, _count)",
              frozenset({S("Observation")}), rq_post_search),
    Operation("rq-summary-count", "requests", "GET Patient?family=Lindqvist&_summary=count",
              frozenset({S("Patient")}), rq_summary_count),
    Operation("rq-vread-and-history", "requests", "GET Patient/ID/_history/1, GET Patient/ID/_history",
              frozenset({("Patient", "vread"), ("Patient", "history")}), rq_vread_history),
    Operation("rq-multi-hop-chain", "requests", "GET Observation?encounter.service-provider.name=Riverside+Family&_count=50",
              frozenset({S("Observation"), S("Encounter"), S("Organization")}), rq_multi_hop_chain),
    Operation("rq-include-iterate", "requests",
              "GET Encounter?patient=ID&_include=Encounter%3Aservice-provider&_include%3Aiterate=Organization%3Apartof"
              " (requests percent-encodes ':' in names too)",
              frozenset({S("Encounter"), R("Organization")}), rq_include_iterate),
    Operation("rq-date-with-offset", "requests", "GET Encounter?patient=ID&date=ge2022-01-01T00%3A00%3A00%2B01%3A00",
              frozenset({S("Encounter")}), rq_date_with_offset),
    Operation("rq-quantity-and-text", "requests",
              "GET Observation?patient=ID&value-quantity=ge100%7Chttp%3A%2F%2Funitsofmeasure.org%7C%2Fmin&code%3Atext=heart",
              frozenset({S("Observation")}), rq_quantity_and_text),
    Operation("rq-untyped-chain-one-target", "requests", "GET Observation?patient.birthdate=lt1970&code=8867-4&_summary=count",
              frozenset({S("Observation"), S("Patient")}), rq_untyped_single_target_chain),
    Operation("rq-create-then-delete", "requests", "POST Flag, DELETE Flag/ID",
              frozenset({("Flag", "create"), ("Flag", "delete")}), rq_create_delete),
    Operation("rq-identifier-token", "requests", "GET Patient?identifier=urn%3Aoid%3A2.16.840.1.113883.4.1%7C999-12-3456",
              frozenset({S("Patient")}), rq_identifier_token),
    Operation("rq-read-summary", "requests", "GET Patient/ID?_summary=true", frozenset({R("Patient")}), rq_read_summary),
)
BY_NAME = {op.name: op for op in OPERATIONS}


def run(base: str, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the operations (all, or those named); one result per operation, never raises."""
    results = []
    for op in [BY_NAME[n] for n in names] if names else OPERATIONS:
        try:
            op.run(base)
            results.append({"name": op.name, "ok": True})
        except Exception as e:  # noqa: BLE001 - a failed operation is a result, with its reason
            results.append({"name": op.name, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]})
    return results


def main(argv: list[str]) -> int:
    if argv[:1] == ["list"]:
        for op in OPERATIONS:
            print(json.dumps({"name": op.name, "library": op.library, "what": op.what,
                              "touches": sorted(list(t) for t in op.touches)}))
        return 0
    if len(argv) >= 2 and argv[0] == "seed":
        seed(argv[1].rstrip("/"))
        return 0
    if len(argv) >= 2 and argv[0] == "run":
        unknown = [n for n in argv[2:] if n not in BY_NAME]
        if unknown:
            print(f"client_ops: unknown operation(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        results = run(argv[1].rstrip("/"), argv[2:] or None)
        for r in results:
            print(json.dumps(r))
        return 0 if all(r["ok"] for r in results) else 1
    print("usage: client_ops.py list | seed BASE | run BASE [NAME ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
