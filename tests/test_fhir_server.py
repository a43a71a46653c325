"""The embedded FHIR server over real HTTP (uvicorn on loopback, httpx as client), empty store.

Covers the interactions and every error status a client depends on: read/vread/create/update/
delete/history, ETag and If-Match, OperationOutcome bodies with 400/404/405/406/409/410/412/
415/501, validation with fhir.resources, the CapabilityStatement, and date-prefix semantics
on hand-made data whose expected answers are written out by hand.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from paritybed.fhir.server import running_server
from paritybed.fhir.types import RESOURCE_TYPES

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def base() -> str:
    with running_server() as url:
        yield url


@pytest.fixture()
def http(base: str) -> httpx.Client:
    with httpx.Client(base_url=base, headers=FHIR, timeout=30) as c:
        yield c


def _issue(resp: httpx.Response) -> str:
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]["diagnostics"]


def _patient(family: str = "Doe") -> dict:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "gender": "female"}


# ------------------------------------------------------------------------------ metadata
def test_metadata_lists_what_is_supported(http: httpx.Client) -> None:
    r = http.get("/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    rest = cs["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    by_type = {res["type"]: res for res in rest["resource"]}
    assert set(by_type) == set(RESOURCE_TYPES)
    obs = by_type["Observation"]
    assert {"read", "vread", "create", "update", "search-type", "history-instance"} <= {i["code"] for i in obs["interaction"]}
    names = {p["name"] for p in obs["searchParam"]}
    assert {"_id", "patient", "subject", "encounter", "category", "code", "status", "date"} <= names
    assert {"patient", "beneficiary"} <= {p["name"] for p in by_type["Coverage"]["searchParam"]}
    assert r.content == http.get("/metadata").content  # byte-identical: no timestamps


SAMPLE = {"date": "ge2020", "reference": "x1", "token": "x", "string": "x", "uri": "http://x", "number": "1",
          "quantity": "gt1|http://unitsofmeasure.org|mg"}


def test_every_advertised_search_param_is_accepted(http: httpx.Client) -> None:
    """The statement is generated from the search code: nothing it lists may answer 400."""
    from paritybed.core import r4spec

    cs = http.get("/metadata").json()
    checked = 0
    for res in cs["rest"][0]["resource"]:
        for p in res["searchParam"]:
            if p["type"] == "composite":
                comps = r4spec.search_params(res["type"])[p["name"]].components
                value = "$".join(SAMPLE[c.type] for c in comps)
            else:
                value = SAMPLE[p["type"]]
            r = http.get(f"/{res['type']}", params={p["name"]: value, "_count": "1"})
            assert r.status_code == 200, (res["type"], p["name"], r.text)
            checked += 1
    assert checked > 1300  # every R4 parameter but a handful the server cannot index


def test_types_match_fhir_resources() -> None:
    """The written-out type list still equals the resource models fhir.resources knows."""
    import fhir.resources.R4B.fhirtypes as ft
    from fhir.resources.R4B.resource import Resource

    known = set()
    for name in dir(ft):
        if name.endswith("Type") and name[:1].isupper():
            try:
                klass = getattr(ft, name).get_model_klass()
            except Exception:  # noqa: BLE001 - datatypes without a model class
                continue
            if isinstance(klass, type) and issubclass(klass, Resource):
                known.add(name[:-4])
    assert set(RESOURCE_TYPES) == known - {"Resource", "DomainResource"}


# --------------------------------------------------------------------------------- CRUD
def test_create_read_update_vread_history_delete(http: httpx.Client, base: str) -> None:
    r = http.post("/Patient", json=_patient())
    assert r.status_code == 201
    created = r.json()
    pid = created["id"]
    assert r.headers["etag"] == 'W/"1"' and r.headers["last-modified"]
    assert r.headers["location"] == f"{base}/Patient/{pid}/_history/1"
    assert created["meta"]["versionId"] == "1"

    r = http.get(f"/Patient/{pid}")
    assert r.status_code == 200 and r.json() == created and r.headers["etag"] == 'W/"1"'
    assert http.get(f"/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304

    changed = {**created, "gender": "male"}
    r = http.put(f"/Patient/{pid}", json=changed, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"' and r.json()["gender"] == "male"
    r = http.put(f"/Patient/{pid}", json=changed, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 412 and "does not match" in _issue(r)
    same = http.put(f"/Patient/{pid}", json=changed)
    assert same.status_code == 200 and same.headers["etag"] == 'W/"2"'  # no-op update keeps the version

    v1 = http.get(f"/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and v1.json()["gender"] == "female" and v1.headers["etag"] == 'W/"1"'
    assert http.get(f"/Patient/{pid}/_history/9").status_code == 404

    r = http.delete(f"/Patient/{pid}")
    assert r.status_code == 200
    r = http.get(f"/Patient/{pid}")
    assert r.status_code == 410 and _issue(r)
    assert http.get(f"/Patient/{pid}/_history/3").status_code == 410
    assert http.delete(f"/Patient/{pid}").status_code == 200  # idempotent

    h = http.get(f"/Patient/{pid}/_history").json()
    assert h["type"] == "history" and h["total"] == 3
    assert [e["request"]["method"] for e in h["entry"]] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in h["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in h["entry"][0] and h["entry"][2]["resource"]["gender"] == "female"

    r = http.put(f"/Patient/{pid}", json={**changed, "gender": "other"})
    assert r.status_code == 201 and r.headers["etag"] == 'W/"4"'  # re-created after delete


def test_update_creates_with_client_id(http: httpx.Client) -> None:
    pid = f"client-{uuid.uuid4().hex[:8]}"
    r = http.put(f"/Patient/{pid}", json={**_patient(), "id": pid})
    assert r.status_code == 201 and r.json()["id"] == pid and r.headers["etag"] == 'W/"1"'


def test_type_history_and_conditional_create(http: httpx.Client) -> None:
    ident = {"system": "urn:test", "value": uuid.uuid4().hex}
    body = {"resourceType": "Basic", "code": {"text": "x"}, "identifier": [ident]}
    before = http.get("/Basic/_history").json()["total"]
    first = http.post("/Basic", json=body, headers={"If-None-Exist": f"identifier=urn:test|{ident['value']}"})
    again = http.post("/Basic", json=body, headers={"If-None-Exist": f"identifier=urn:test|{ident['value']}"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    hist = http.get("/Basic/_history").json()
    assert hist["total"] == before + 1
    assert hist["entry"][0]["resource"]["id"] == first.json()["id"]  # newest first


def test_prefer_return_minimal(http: httpx.Client) -> None:
    r = http.post("/Patient", json=_patient(), headers={"Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b"" and r.headers["location"]


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/Patient/does-not-exist", 404),
        ("GET", "/NotAType/1", 404),
        ("GET", "/NotAType", 404),
        ("GET", "/Patient/x/_history/1", 404),
        ("GET", "/some/deep/unknown/path/here", 404),
        ("DELETE", "/metadata", 405),
        ("POST", "/Patient/1", 405),
        ("PUT", "/fhir-nothing", 404),
        ("PATCH", "/Patient/1", 501),
        ("PUT", "/Patient?identifier=x", 501),
        ("DELETE", "/Patient?identifier=x", 501),
        ("GET", "/Patient/1/$everything", 501),
        ("GET", "/$export", 501),
        ("GET", "", 501),
        ("GET", "/Patient?_include=Patient:nothing", 400),
        ("GET", "/Patient?_include=Observation:patient", 400),  # from another type needs :iterate
        ("GET", "/Patient?_revinclude=*", 400),
        ("GET", "/Patient?name.family=x", 400),  # name is no reference: nothing to chain
        ("GET", "/Observation?subject:Organization.name=x", 400),  # not a target of subject
        ("GET", "/Observation?subject.nothing=x", 400),
        ("GET", "/Patient?_has:Observation:patient", 400),
        ("GET", "/Patient?_has:Organization:partof:name=x", 400),  # partof refers to Organization
        ("GET", "/Patient?birthdate=ap2020", 400),
        ("GET", "/Patient?birthdate=yesterday", 400),
        ("GET", "/Observation?value-quantity=xx5", 400),
        ("GET", "/Observation?value-quantity=5|a", 400),
        ("GET", "/Observation?code-value-quantity=http://loinc.org|8480-6", 400),  # one component of two
        ("GET", "/Patient?_count=-1", 400),
        ("GET", "/Patient?_sort=nothing", 400),
        ("GET", "/Patient?gender:below=f", 400),
        ("GET", "/Patient?deceased=true", 400),  # defined by R4, not indexable from its expression
        ("GET", "/Patient?_type=Patient", 400),
        ("GET", "/Patient?_summary=maybe", 400),
        ("GET", "/Patient?_elements=nothing", 400),
        ("GET", "/Patient?_summary=true&_elements=name", 400),
        ("GET", "/Patient/1/Organization", 400),  # not in the Patient compartment
        ("GET", "/Observation/1/Patient", 400),  # Observation defines no compartment
        ("GET", "/Patient/1/*", 501),
        ("GET", "/Patient?_format=xml", 406),
    ],
)
def test_error_statuses(http: httpx.Client, method: str, path: str, status: int) -> None:
    r = http.request(method, path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert _issue(r)


def test_unknown_search_parameter_is_400_unless_lenient(http: httpx.Client) -> None:
    r = http.get("/Observation", params={"patient": "p1", "colour": "blue"})
    assert r.status_code == 400 and "colour" in _issue(r) and "category" in _issue(r)
    r = http.get("/Observation", params={"patient": "p1", "colour": "blue"}, headers={"Prefer": "handling=lenient"})
    assert r.status_code == 200 and "colour" not in r.json()["link"][0]["url"]


def test_invalid_resource_is_400_with_the_element(http: httpx.Client) -> None:
    r = http.post("/Patient", json={"resourceType": "Patient", "gender": 5, "birthDate": "not-a-date"})
    assert r.status_code == 400
    issues = r.json()["issue"]
    assert any("Patient.gender" in i.get("expression", [""])[0] for i in issues)
    assert any("birthDate" in i["diagnostics"] for i in issues)
    assert http.post("/Patient", json={"resourceType": "Observation", "status": "final"}).status_code == 400


def test_bad_bodies_and_formats(http: httpx.Client) -> None:
    r = http.post("/Patient", content=b"{not json", headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400 and "JSON" in _issue(r)
    r = http.post("/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415
    assert http.get("/metadata", headers={"Accept": "application/fhir+xml"}).status_code == 406
    assert http.get("/metadata", headers={"Accept": "application/json"}).status_code == 200
    r = http.put("/Patient/abc", json={**_patient(), "id": "other"})
    assert r.status_code == 400 and "must equal" in _issue(r)
    assert http.put("/Patient/abc", json=_patient()).status_code == 400  # no id in the body
    assert http.put("/Patient/bad$id", json={**_patient(), "id": "bad$id"}).status_code == 400


def test_if_match_on_missing_resource_is_412(http: httpx.Client) -> None:
    r = http.put("/Patient/never-there", json={**_patient(), "id": "never-there"}, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 412


# --------------------------------------------------------------------------- date prefixes
DATED = {
    "a": {"effectiveDateTime": "2020-01-01T10:00:00Z"},
    "b": {"effectiveDateTime": "2020-06-15"},
    "c": {"effectiveDateTime": "2021-01-01T00:00:00Z"},
    "d": {"effectivePeriod": {"start": "2019-12-31T12:00:00Z", "end": "2020-01-02T00:00:00Z"}},
    "e": {"effectiveDateTime": "2020-01-01T23:30:00-02:00"},  # = 2020-01-02T01:30Z
}


@pytest.fixture(scope="module")
def dated(base: str) -> str:
    """Five Observations of one subject with the dates above; returns the subject id."""
    subject = f"dated-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=base, headers=FHIR) as c:
        for key, when in DATED.items():
            body = {"resourceType": "Observation", "id": f"{subject}-{key}", "status": "final",
                    "code": {"text": key}, "subject": {"reference": f"Patient/{subject}"}, **when}
            assert c.put(f"/Observation/{subject}-{key}", json=body).status_code == 201
    return subject


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("2020-01-01", "a"),
        ("eq2020-01", "ae"),
        ("2020", "abe"),
        ("ne2020", "cd"),
        ("gt2020-01-01", "bcde"),
        ("ge2020-01-01", "abcde"),  # d ends 2020-01-02T00:00:00Z: 1 s past the day
        ("lt2020-01-01", "d"),
        ("le2020-01-01", "ad"),
        ("sa2020-01-02", "bc"),
        ("eb2020-01-01", ""),
        ("eb2020-06", "ade"),
        ("gt2020-01-01T10:00:00Z", "bcde"),
        ("ge2020-01-01T10:00:00Z", "abcde"),
        ("lt2020-01-01T12:00Z", "ad"),
        ("2020-01-01T23:30:00-02:00", "e"),
        ("ge2020,lt2020-01-01T11:00Z", "abcde"),
    ],
)
def test_date_prefixes(http: httpx.Client, dated: str, query: str, expected: str) -> None:
    r = http.get("/Observation", params={"subject": f"Patient/{dated}", "date": query})
    assert r.status_code == 200, r.text
    got = "".join(sorted(e["resource"]["id"].rsplit("-", 1)[1] for e in r.json().get("entry", [])))
    assert got == expected
    assert r.json()["total"] == len(expected)


def test_two_date_params_are_and(http: httpx.Client, dated: str) -> None:
    r = http.get("/Observation", params=[("subject", f"Patient/{dated}"), ("date", "ge2020"), ("date", "lt2020-02")])
    assert sorted(e["resource"]["code"]["text"] for e in r.json()["entry"]) == ["a", "e"]


def test_sort_by_date_and_last_updated(http: httpx.Client, dated: str) -> None:
    def order(sort: str) -> str:
        r = http.get("/Observation", params={"subject": f"Patient/{dated}", "_sort": sort})
        return "".join(e["resource"]["code"]["text"] for e in r.json()["entry"])

    assert order("date") == "daebc"
    assert order("-date") == "cbead"
    assert order("_lastUpdated") == "abcde"  # written in that order
    assert order("-_lastUpdated") == "edcba"


def test_or_values_count_a_resource_once(http: httpx.Client) -> None:
    subject = f"codes-{uuid.uuid4().hex[:8]}"
    body = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{subject}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}, {"system": "http://loinc.org", "code": "2-6"}]}}
    assert http.post("/Observation", json=body).status_code == 201
    for params in ({"code": "1-8,2-6"}, {"code": "1-8,2-6", "subject": f"Patient/{subject}"}, {"subject": f"Patient/{subject}", "code": "http://loinc.org|1-8,2-6"}):
        b = http.get("/Observation", params=params).json()
        assert b["total"] == len(b["entry"]) == 1, params
    assert http.get("/Observation", params={"subject": f"Patient/{subject}", "code:not": "1-8"}).json()["total"] == 0
    assert http.get("/Observation", params={"subject": f"Patient/{subject}", "code:not": "9-9"}).json()["total"] == 1
    assert http.get("/Observation", params={"subject": f"Patient/{subject}", "encounter:missing": "true"}).json()["total"] == 1
    assert http.get("/Observation", params={"subject": f"Patient/{subject}", "encounter:missing": "false"}).json()["total"] == 0


def test_server_processes_share_one_database_and_stop_on_exit() -> None:
    """Live mode's server: one process per core on one listening socket and one SQLite file.
    A write through one connection is read back on many others (whichever process accepted
    them), and on exit the processes are gone and the port is free."""
    import socket

    from paritybed.fhir.server import running_server_processes

    with running_server_processes(load=[], processes=2) as url:
        port = int(url.split(":")[2].split("/")[0])
        body = {"resourceType": "Patient", "id": "shared-1", "active": True}
        with httpx.Client(base_url=url, headers=FHIR, timeout=30) as c:
            assert c.put("/Patient/shared-1", json=body).status_code == 201
            created = c.post("/Observation", json={"resourceType": "Observation", "status": "final",
                                                   "code": {"text": "x"}, "subject": {"reference": "Patient/shared-1"}})
            assert created.status_code == 201
        def searches(total: int) -> None:
            for _ in range(12):  # fresh connections, spread over the processes by whichever accepts
                with httpx.Client(base_url=url, headers=FHIR, timeout=30) as c:
                    assert c.get("/Patient/shared-1").json()["active"] is True
                    assert c.get("/Observation", params={"subject": "Patient/shared-1"}).json()["total"] == total

        searches(1)  # now remembered by the processes that answered
        with httpx.Client(base_url=url, headers=FHIR, timeout=30) as c:  # a write through one of them ...
            assert c.post("/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                                                "subject": {"reference": "Patient/shared-1"}}).status_code == 201
        searches(2)  # ... is seen by every process's next search
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))  # no process listens there any more
    s.listen(1)
    s.close()
