"""batch and transaction Bundles POSTed to the base of the embedded server, over real HTTP.

urn:uuid resolution, conditional references, ifNoneExist, all-or-nothing transactions (a
failing entry leaves the store exactly as it was), per-entry batch results, and the id rule
(a POST with fullUrl urn:uuid:<uuid> is stored under <uuid>).
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from paritybed.fhir.server import running_server

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def http() -> httpx.Client:
    with running_server() as url, httpx.Client(base_url=url, headers=FHIR, timeout=30) as c:
        yield c


def _u() -> str:
    return str(uuid.uuid4())


def _npi() -> str:
    return uuid.uuid4().hex[:10]


def _practitioner(http: httpx.Client, npi: str) -> str:
    r = http.post("/Practitioner", json={"resourceType": "Practitioner", "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": npi}]})
    assert r.status_code == 201
    return r.json()["id"]


def _snapshot(http: httpx.Client) -> dict[str, int]:
    return {t: http.get(f"/{t}", params={"_summary": "count"}).json()["total"] for t in ("Patient", "Encounter", "Observation", "Practitioner")}


def _patient_bundle(pid: str, npi: str, *, enc: str | None = None, obs: str | None = None) -> dict:
    enc, obs = enc or _u(), obs or _u()
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{pid}", "resource": {"resourceType": "Patient", "id": pid, "gender": "male"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": f"urn:uuid:{enc}",
             "resource": {"resourceType": "Encounter", "status": "finished",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
                          "subject": {"reference": f"urn:uuid:{pid}"},
                          "participant": [{"individual": {"reference": f"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|{npi}"}}],
                          "period": {"start": "2024-03-01T08:00:00Z", "end": "2024-03-01T09:00:00Z"}},
             "request": {"method": "POST", "url": "Encounter"}},
            {"fullUrl": f"urn:uuid:{obs}",
             "resource": {"resourceType": "Observation", "status": "final",
                          "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
                          "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                          "subject": {"reference": f"urn:uuid:{pid}"}, "encounter": {"reference": f"urn:uuid:{enc}"},
                          "effectiveDateTime": "2024-03-01T08:30:00Z"},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }


def test_transaction_resolves_urn_uuid_and_conditional_references(http: httpx.Client) -> None:
    npi = _npi()
    prac = _practitioner(http, npi)
    pid, enc, obs = _u(), _u(), _u()
    r = http.post("", json=_patient_bundle(pid, npi, enc=enc, obs=obs))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 3
    assert answer["entry"][0]["response"]["location"] == f"Patient/{pid}/_history/1"

    # the urn:uuid is the server id, and every reference was rewritten
    e = http.get(f"/Encounter/{enc}").json()
    assert e["subject"]["reference"] == f"Patient/{pid}"
    assert e["participant"][0]["individual"]["reference"] == f"Practitioner/{prac}"
    o = http.get(f"/Observation/{obs}").json()
    assert o["encounter"]["reference"] == f"Encounter/{enc}"
    # ... and the index saw the rewritten references
    found = http.get("/Observation", params={"patient": pid, "category": "laboratory", "encounter": enc}).json()
    assert [x["resource"]["id"] for x in found["entry"]] == [obs]
    assert http.get("/Encounter", params={"practitioner": prac, "class": "EMER"}).json()["total"] == 1


def test_failed_transaction_leaves_store_unchanged(http: httpx.Client) -> None:
    before = _snapshot(http)
    pid = _u()
    r = http.post("", json=_patient_bundle(pid, npi=_npi()))  # no such practitioner
    assert r.status_code == 412
    text = r.json()["issue"][0]["diagnostics"]
    assert "entry 1" in text and "Practitioner?identifier" in text
    assert http.get(f"/Patient/{pid}").status_code == 404  # created earlier in the bundle, rolled back
    assert _snapshot(http) == before

    # a late failure (If-Match on the last entry) also undoes the creates before it
    npi = _npi()
    _practitioner(http, npi)
    before = _snapshot(http)
    bundle = _patient_bundle(_u(), npi)
    bundle["entry"].append({"resource": {"resourceType": "Patient", "id": "ghost", "gender": "female"},
                            "request": {"method": "PUT", "url": "Patient/ghost", "ifMatch": 'W/"7"'}})
    r = http.post("", json=bundle)
    assert r.status_code == 412 and "entry 3" in r.json()["issue"][0]["diagnostics"]
    assert _snapshot(http) == before


def test_unresolvable_urn_and_duplicate_ids(http: httpx.Client) -> None:
    npi = _npi()
    _practitioner(http, npi)
    bundle = _patient_bundle(_u(), npi)
    bundle["entry"][2]["resource"]["subject"]["reference"] = f"urn:uuid:{_u()}"
    r = http.post("", json=bundle)
    assert r.status_code == 400 and "names no entry" in r.json()["issue"][0]["diagnostics"]

    pid = _u()
    assert http.post("", json=_patient_bundle(pid, npi)).status_code == 200
    r = http.post("", json=_patient_bundle(pid, npi))  # same Patient uuid POSTed again
    assert r.status_code == 409 and f"PUT Patient/{pid}" in r.json()["issue"][0]["diagnostics"]


def test_conditional_reference_matching_two_resources_is_412(http: httpx.Client) -> None:
    npi = _npi()
    _practitioner(http, npi)
    _practitioner(http, npi)
    r = http.post("", json=_patient_bundle(_u(), npi))
    assert r.status_code == 412 and "more than one" in r.json()["issue"][0]["diagnostics"]


def test_batch_if_none_exist_and_per_entry_results(http: httpx.Client) -> None:
    org_id, ident = _u(), _u()
    entry = {"fullUrl": f"urn:uuid:{org_id}",
             "resource": {"resourceType": "Organization", "id": org_id, "name": "General",
                          "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": ident}]},
             "request": {"method": "POST", "url": "Organization", "ifNoneExist": f"identifier=https://github.com/synthetichealth/synthea|{ident}"}}
    bad = {"resource": {"resourceType": "Patient", "gender": "unknown-gender-code"}, "request": {"method": "PATCH", "url": "Patient/x"}}
    missing = {"request": {"method": "GET", "url": "Patient/not-there"}}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [entry, bad, missing]}
    first = http.post("", json=batch).json()
    assert first["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in first["entry"]] == ["201", "501", "404"]
    assert first["entry"][2]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert first["entry"][0]["response"]["location"] == f"Organization/{org_id}/_history/1"
    second = http.post("", json={**batch, "entry": [entry]}).json()
    assert second["entry"][0]["response"]["status"] == "200 OK"
    assert second["entry"][0]["response"]["location"] == f"Organization/{org_id}/_history/1"
    assert http.get("/Organization", params={"identifier": f"https://github.com/synthetichealth/synthea|{ident}"}).json()["total"] == 1


def test_transaction_put_get_and_delete_entries(http: httpx.Client) -> None:
    pid = f"tx-{uuid.uuid4().hex[:8]}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"fullUrl": f"urn:uuid:{_u()}", "resource": {"resourceType": "Patient", "id": pid, "gender": "female"},
         "request": {"method": "PUT", "url": f"Patient/{pid}"}},
    ]}
    r = http.post("", json=bundle).json()  # GET runs after the PUT (spec order), answers in request order
    assert r["entry"][0]["resource"]["id"] == pid and r["entry"][0]["response"]["status"] == "200 OK"
    assert r["entry"][1]["response"]["status"] == "201 Created"
    r = http.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}}]})
    assert r.status_code == 200 and http.get(f"/Patient/{pid}").status_code == 410


@pytest.mark.parametrize(
    ("bundle", "status"),
    [
        ({"resourceType": "Bundle", "type": "collection", "entry": []}, 400),
        ({"resourceType": "Patient"}, 400),
        ({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}}]}, 400),
        ({"resourceType": "Bundle", "type": "transaction",
          "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Observation"}}]}, 400),
        ({"resourceType": "Bundle", "type": "transaction",
          "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Nope"}}]}, 404),
        ({"resourceType": "Bundle", "type": "transaction",
          "entry": [{"request": {"method": "PATCH", "url": "Patient/1"}}]}, 501),
    ],
)
def test_malformed_bundles(http: httpx.Client, bundle: dict, status: int) -> None:
    r = http.post("", json=bundle)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_validation_of_bundle_entries_is_a_switch() -> None:
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": 7}, "request": {"method": "POST", "url": "Patient"}}]}
    with running_server(validate_bundles=True) as url:
        r = httpx.post(url, json=bad, headers=FHIR)
        assert r.status_code == 400 and "gender" in r.json()["issue"][0]["diagnostics"]
    with running_server() as url:
        assert httpx.post(url, json=bad, headers=FHIR).status_code == 200  # documented: skipped by default
