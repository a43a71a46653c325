"""The embedded server's R4 search grammar on a small hand-made record whose answers are
written out by hand: chains, _has, _include/_revinclude (:iterate), compartments, _summary,
_elements, the modifiers, number/quantity/composite search, required bindings, HEAD and
POST _search.  Each test names the ids it expects, so a wrong SQL join shows as a wrong set.
"""

from __future__ import annotations

import httpx
import pytest

from paritybed.fhir.server import running_server

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _obs(oid: str, subject: str, code: str, display: str, **extra: object) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": {"reference": subject}, **extra}


def _qty(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


RECORD = [
    {"resourceType": "Organization", "id": "org-parent", "name": "Grand Health System"},
    {"resourceType": "Organization", "id": "org-child", "name": "Saint Mary Clinic", "partOf": {"reference": "Organization/org-parent"}},
    {"resourceType": "Practitioner", "id": "dr-a", "name": [{"family": "Osler", "given": ["William"]}]},
    {"resourceType": "Patient", "id": "pat-ann", "gender": "female", "birthDate": "1980-05-01",
     "name": [{"family": "Doe", "given": ["Ann"]}], "telecom": [{"system": "email", "value": "ann@example.org"}],
     "managingOrganization": {"reference": "Organization/org-child"},
     "meta": {"profile": ["http://example.org/fhir/StructureDefinition/test-patient"]}},
    {"resourceType": "Patient", "id": "pat-bob", "gender": "male", "birthDate": "1975",
     "name": [{"family": "Müller", "given": ["Bob"]}], "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Bob the builder</div>"}},
    {"resourceType": "Encounter", "id": "enc-ann", "status": "finished", "class": {"code": "AMB"},
     "subject": {"reference": "Patient/pat-ann"}, "serviceProvider": {"reference": "Organization/org-child"},
     "participant": [{"individual": {"reference": "Practitioner/dr-a"}}]},
    {"resourceType": "Encounter", "id": "enc-bob", "status": "finished", "class": {"code": "IMP"},
     "subject": {"reference": "Patient/pat-bob"}},
    _obs("obs-height", "Patient/pat-ann", "8302-2", "Body height", encounter={"reference": "Encounter/enc-ann"},
         valueQuantity=_qty(170, "cm"), category=[{"coding": [{"code": "vital-signs"}]}]),
    _obs("obs-sys", "Patient/pat-ann", "8480-6", "Systolic blood pressure", valueQuantity=_qty(120.5, "mm[Hg]")),
    _obs("obs-bp", "Patient/pat-bob", "85354-9", "Blood pressure panel", component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": _qty(150, "mm[Hg]")},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _qty(95, "mm[Hg]")},
    ]),
    _obs("obs-group", "Group/grp-1", "8302-2", "Body height", valueQuantity=_qty(150, "cm")),
    {"resourceType": "Provenance", "id": "prov-height", "target": [{"reference": "Observation/obs-height"}],
     "recorded": "2024-01-01T00:00:00Z", "agent": [{"who": {"reference": "Practitioner/dr-a"}}]},
    {"resourceType": "RiskAssessment", "id": "risk-1", "status": "final", "subject": {"reference": "Patient/pat-ann"},
     "prediction": [{"probabilityDecimal": 0.25}]},
]


@pytest.fixture(scope="module")
def http() -> httpx.Client:
    with running_server() as base, httpx.Client(base_url=base, headers=FHIR, timeout=30) as c:
        for res in RECORD:
            r = c.put(f"/{res['resourceType']}/{res['id']}", json=res)
            assert r.status_code == 201, r.text
        yield c


def ids(http: httpx.Client, path: str, params: object = None, mode: str | None = None) -> list[str]:
    r = http.get(path, params=params)
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if mode is None or e["search"]["mode"] == mode)


# -------------------------------------------------------------------------------- chains
@pytest.mark.parametrize(("params", "expected"), [
    ({"subject:Patient.name": "doe"}, ["obs-height", "obs-sys"]),
    ({"subject.family": "Muller"}, ["obs-bp"]),  # untyped: Patient is the only target with family
    ({"patient.gender": "male"}, ["obs-bp"]),
    ({"encounter.service-provider.name": "saint"}, ["obs-height"]),  # two hops
    ({"encounter.service-provider.partof.name": "grand"}, ["obs-height"]),  # three hops
    ({"subject:Patient.organization:Organization.partof": "Organization/org-parent"}, ["obs-height", "obs-sys"]),
    ({"subject:Patient._id": "pat-bob"}, ["obs-bp"]),
    ({"subject.name:exact": "Doe"}, ["obs-height", "obs-sys"]),
    ({"subject.name:exact": "doe"}, []),
])
def test_chains(http: httpx.Client, params: dict, expected: list[str]) -> None:
    assert ids(http, "/Observation", params) == expected


def test_reverse_chains(http: httpx.Client) -> None:
    assert ids(http, "/Patient", {"_has:Observation:patient:code": "8302-2"}) == ["pat-ann"]
    assert ids(http, "/Patient", {"_has:Observation:subject:code": f"{LOINC}|85354-9"}) == ["pat-bob"]
    assert ids(http, "/Practitioner", {"_has:Encounter:practitioner:patient": "pat-ann"}) == ["dr-a"]
    # nested: patients with an Observation that a Provenance targets
    assert ids(http, "/Patient", {"_has:Observation:patient:_has:Provenance:target:agent": "Practitioner/dr-a"}) == ["pat-ann"]
    assert ids(http, "/Patient", {"_has:Observation:patient:code": "0000-0"}) == []


# ------------------------------------------------------------------------------ includes
def test_include_and_revinclude(http: httpx.Client) -> None:
    q = {"_id": "obs-height", "_include": "Observation:patient"}
    assert ids(http, "/Observation", q, "include") == ["pat-ann"]
    assert ids(http, "/Observation", {"_id": "obs-height", "_include": "Observation:subject:Group"}, "include") == []
    assert ids(http, "/Observation", {"_id": "obs-group", "_include": "Observation:subject"}, "include") == []  # no Group stored
    assert ids(http, "/Observation", {"_id": "obs-height", "_include": "Observation:*"}, "include") == ["enc-ann", "pat-ann"]
    q = [("_id", "obs-height"), ("_include", "Observation:encounter"), ("_include:iterate", "Encounter:service-provider"),
         ("_include:iterate", "Organization:partof")]
    assert ids(http, "/Observation", q, "include") == ["enc-ann", "org-child", "org-parent"]
    assert ids(http, "/Patient", {"_id": "pat-ann", "_revinclude": "Observation:subject"}, "include") == ["obs-height", "obs-sys"]
    q = [("_id", "pat-ann"), ("_revinclude", "Observation:patient"), ("_revinclude:iterate", "Provenance:target")]
    assert ids(http, "/Patient", q, "include") == ["obs-height", "obs-sys", "prov-height"]
    r = http.get("/Observation", params={"_id": "obs-height", "_include": "Observation:patient"}).json()
    assert r["total"] == 1  # included resources do not count
    assert [e["search"]["mode"] for e in r["entry"]] == ["match", "include"]


# --------------------------------------------------------------------------- compartments
def test_compartments(http: httpx.Client) -> None:
    assert ids(http, "/Patient/pat-ann/Observation") == ["obs-height", "obs-sys"]
    assert ids(http, "/Patient/pat-ann/Observation", {"code": "8302-2"}) == ["obs-height"]
    assert ids(http, "/Patient/pat-ann/Encounter") == ["enc-ann"]
    assert ids(http, "/Patient/pat-ann/RiskAssessment") == ["risk-1"]
    assert ids(http, "/Patient/pat-ann/Patient") == ["pat-ann"]
    assert ids(http, "/Encounter/enc-ann/Observation") == ["obs-height"]
    assert ids(http, "/Practitioner/dr-a/Encounter") == ["enc-ann"]
    assert ids(http, "/Patient/nobody/Observation") == []
    r = http.get("/Patient/pat-ann/Observation", params={"_count": "1"}).json()
    nxt = next(link["url"] for link in r["link"] if link["relation"] == "next")
    assert "/Patient/pat-ann/Observation?" in nxt
    assert http.get(nxt).json()["entry"][0]["resource"]["id"] == "obs-sys"


# ------------------------------------------------------------------ _summary and _elements
def test_summary_and_elements(http: httpx.Client) -> None:
    r = http.get("/Patient", params={"_id": "pat-ann", "_summary": "true"}).json()
    res = r["entry"][0]["resource"]
    assert "telecom" in res and "name" in res and "text" not in res
    assert any(t["code"] == "SUBSETTED" for t in res["meta"]["tag"])
    res = http.get("/Patient", params={"_id": "pat-bob", "_summary": "text"}).json()["entry"][0]["resource"]
    assert sorted(res) == ["id", "meta", "resourceType", "text"]
    res = http.get("/Patient", params={"_id": "pat-bob", "_summary": "data"}).json()["entry"][0]["resource"]
    assert "text" not in res and "name" in res
    r = http.get("/Observation", params={"_summary": "count"}).json()
    assert r["total"] == 4 and "entry" not in r
    res = http.get("/Observation", params={"_id": "obs-height", "_elements": "value,subject"}).json()["entry"][0]["resource"]
    assert sorted(res) == ["code", "id", "meta", "resourceType", "status", "subject", "valueQuantity"]  # + mandatory
    res = http.get("/Patient/pat-ann", params={"_elements": "birthDate"}).json()
    assert sorted(res) == ["birthDate", "id", "meta", "resourceType"]
    assert "SUBSETTED" not in http.get("/Patient/pat-ann").text


# ---------------------------------------------------------------------------- modifiers
@pytest.mark.parametrize(("path", "params", "expected"), [
    ("/Patient", {"name": "mul"}, ["pat-bob"]),  # accents and case ignored, prefix
    ("/Patient", {"name:contains": "ULL"}, ["pat-bob"]),
    ("/Patient", {"family:exact": "Müller"}, ["pat-bob"]),
    ("/Patient", {"family:exact": "Muller"}, []),
    ("/Patient", {"email": "ann@example.org"}, ["pat-ann"]),
    ("/Patient", {"gender:not": "male"}, ["pat-ann"]),
    ("/Patient", {"birthdate": "lt1980"}, ["pat-bob"]),
    ("/Patient", {"organization:missing": "true"}, ["pat-bob"]),
    ("/Patient", {"_profile": "http://example.org/fhir/StructureDefinition/test-patient"}, ["pat-ann"]),
    ("/Patient", {"_profile:below": "http://example.org/fhir/"}, ["pat-ann"]),
    ("/Patient", {"_text": "builder"}, ["pat-bob"]),
    ("/Patient", {"_content": "ann@example"}, ["pat-ann"]),
    ("/Observation", {"code:text": "body"}, ["obs-group", "obs-height"]),
    ("/Observation", {"code": f"{LOINC}|8480-6,{LOINC}|8302-2", "subject": "Patient/pat-ann"}, ["obs-height", "obs-sys"]),
    ("/Observation", {"subject:Group": "grp-1"}, ["obs-group"]),
    ("/Organization", {"partof:missing": "false"}, ["org-child"]),
])
def test_modifiers(http: httpx.Client, path: str, params: dict, expected: list[str]) -> None:
    assert ids(http, path, params) == expected


@pytest.mark.parametrize(("params", "expected"), [
    ({"value-quantity": "170"}, ["obs-height"]),
    ({"value-quantity": "170||cm"}, ["obs-height"]),
    ({"value-quantity": f"170|{UCUM}|cm"}, ["obs-height"]),
    ({"value-quantity": "170|http://other|cm"}, []),
    ({"value-quantity": "gt150"}, ["obs-height"]),
    ({"value-quantity": "ge150"}, ["obs-group", "obs-height"]),
    ({"value-quantity": "120"}, []),  # 120.5 is outside [119.5, 120.5)
    ({"value-quantity": "120.5"}, ["obs-sys"]),
    ({"value-quantity": "ap125"}, ["obs-sys"]),
    ({"value-quantity": "lt130||mm[Hg]"}, ["obs-sys"]),
    ({"component-value-quantity": "gt140"}, ["obs-bp"]),
    ({"combo-code-value-quantity": f"{LOINC}|8480-6$gt130"}, ["obs-bp"]),  # the component's systolic
    ({"combo-code-value-quantity": "8480-6$lt130"}, ["obs-sys"]),  # the observation's own
    ({"component-code-value-quantity": "8462-4$gt130"}, []),  # diastolic 95: not on the same component
    ({"code-value-quantity": "8302-2$ge170"}, ["obs-height"]),
    ({"code-value-quantity": "8302-2$ge170,8480-6$lt121"}, ["obs-height", "obs-sys"]),
])
def test_quantity_and_composite(http: httpx.Client, params: dict, expected: list[str]) -> None:
    assert ids(http, "/Observation", params) == expected


def test_number(http: httpx.Client) -> None:
    assert ids(http, "/RiskAssessment", {"probability": "0.25"}) == ["risk-1"]
    assert ids(http, "/RiskAssessment", {"probability": "gt0.3"}) == []
    assert ids(http, "/RiskAssessment", {"probability": "le0.25"}) == ["risk-1"]


def test_sort_by_string(http: httpx.Client) -> None:
    r = http.get("/Patient", params={"_sort": "-family"}).json()
    assert [e["resource"]["id"] for e in r["entry"]] == ["pat-bob", "pat-ann"]


# ------------------------------------------------------------------------- HTTP forms
def test_head_and_post_search(http: httpx.Client) -> None:
    r = http.head("/Observation", params={"patient": "pat-ann"})
    assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
    assert http.head("/Patient/pat-ann").status_code == 200
    r = http.post("/Observation/_search", data={"patient": "pat-ann", "code": "8302-2"},
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and [e["resource"]["id"] for e in r.json()["entry"]] == ["obs-height"]
    r = http.post("/Observation/_search", json={"patient": "pat-ann"})
    assert r.status_code == 415


def test_lenient_drops_unknown_and_unsupported(http: httpx.Client) -> None:
    for extra in ({"colour": "blue"}, {"_list": "x"}, {"gender:below": "f"}):
        assert http.get("/Patient", params={"family": "doe", **extra}).status_code == 400
        r = http.get("/Patient", params={"family": "doe", **extra}, headers={"Prefer": "handling=lenient"})
        assert r.status_code == 200 and r.json()["total"] == 1
    # a malformed value is never dropped
    r = http.get("/Patient", params={"birthdate": "yesterday"}, headers={"Prefer": "handling=lenient"})
    assert r.status_code == 400


# ---------------------------------------------------------------------- required bindings
@pytest.mark.parametrize(("resource", "where"), [
    ({"resourceType": "Patient", "gender": "not-a-gender"}, "Patient.gender"),
    ({"resourceType": "Patient", "contact": [{"gender": "f"}]}, "Patient.contact[0].gender"),
    ({"resourceType": "Patient", "identifier": [{"use": "primary", "value": "1"}]}, "Patient.identifier[0].use"),
    ({"resourceType": "Observation", "status": "done", "code": {"text": "x"}}, "Observation.status"),
    ({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/pat-ann"},
      "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                     "code": "gone"}]}}, "AllergyIntolerance.clinicalStatus"),
])
def test_required_bindings(http: httpx.Client, resource: dict, where: str) -> None:
    r = http.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "code-invalid" and issue["expression"] == [where], issue
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}]}
    assert http.post("", json=bundle).status_code == 400  # bundles check bindings too


def test_valid_codes_pass(http: httpx.Client) -> None:
    r = http.post("/Patient", json={"resourceType": "Patient", "gender": "unknown",
                                     "identifier": [{"use": "official", "value": "1"}]})
    assert r.status_code == 201, r.text


def test_a_remembered_search_gives_the_pages_and_total_of_the_query_and_sees_writes(tmp_path):
    """The matches of a search on the type's own index are kept for its pages until a resource
    of the type is written: every page equals the page the query gives, the total is the
    number of matches, a write of the type is seen at once, a write of another type keeps them."""
    from urllib.parse import parse_qsl

    from paritybed.fhir import search as fsearch
    from paritybed.fhir.store import Store

    st = Store(tmp_path / "db.sqlite")
    for i in range(7):
        st.write("Observation", f"o{i}", {"status": "final", "code": {"text": str(i)}, "subject": {"reference": "Patient/p"},
                                          "effectiveDateTime": f"2020-01-0{i + 1}"}, method="PUT")

    def page(offset: int, store: Store = st) -> list[str]:
        q = parse_qsl(f"subject=Patient/p&_sort=-date&_count=3&_offset={offset}")
        total, rows, _ = fsearch.run(store, fsearch.parse("Observation", q))
        assert total == len(ids(store))
        return [r[2] for r in rows]

    def ids(store: Store) -> list[str]:  # every match in order, by the plain query
        return [r[0] for r in store.query("SELECT r.id FROM resources r JOIN dates d ON d.rid=r.rid AND "
                                          "d.param='Observation.date' WHERE r.type='Observation' ORDER BY d.lo DESC", [])]

    assert page(0) + page(3) + page(6) == ids(st) == [f"o{i}" for i in range(6, -1, -1)]
    hits = st.remembered_hits
    assert page(3) == ["o3", "o2", "o1"] and st.remembered_hits == hits + 1  # the kept list, not the query
    st.write("Patient", "p", {"active": True}, method="PUT")  # another type: still kept
    assert page(0) == ["o6", "o5", "o4"] and st.remembered_hits == hits + 2
    st.write("Observation", "o9", {"status": "final", "code": {"text": "9"}, "subject": {"reference": "Patient/p"},
                                   "effectiveDateTime": "2020-02-01"}, method="PUT")
    assert page(0) == ["o9", "o6", "o5"]  # the write of the type is seen
    other = Store(tmp_path / "db.sqlite")  # a second process on the same database writes
    other.delete("Observation", "o9")
    assert page(0) == ["o6", "o5", "o4"]
