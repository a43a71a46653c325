"""The embedded server loaded with the 37 shared Synthea patients, used by real FHIR clients.

fhirpy and fhirclient (third-party libraries, unchanged) read, search with paging through the
``next`` links, create and update; httpx checks the search semantics the agents rely on
(totals, paging form, sorting, tokens, references, Coverage extracted from the EOBs).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from paritybed.fhir.loader import build_db
from paritybed.fhir.server import running_server

FHIR = {"Accept": "application/fhir+json"}


def synthea_db(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file per test session with the shared patients (built once, ~5 s)."""
    db = tmp_path_factory.getbasetemp() / "fhir-synthea.sqlite"
    if not db.exists():
        t0 = time.perf_counter()
        build_db([folder], db)
        print(f"\nloaded {folder} into {db} in {time.perf_counter() - t0:.1f} s")
    return db


@pytest.fixture(scope="module")
def base(shared_synthea: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    with running_server(db=synthea_db(shared_synthea, tmp_path_factory)) as url:
        yield url


@pytest.fixture(scope="module")
def http(base: str) -> httpx.Client:
    with httpx.Client(base_url=base, headers=FHIR, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def patient_ids(shared_synthea: Path) -> list[str]:
    """Patient ids = the bundle file names (the loader keeps Synthea's ids)."""
    return sorted(p.stem for p in shared_synthea.glob("*.json") if not p.name.startswith("0-"))


@pytest.fixture(scope="module")
def busy_patient(http: httpx.Client, patient_ids: list[str]) -> str:
    """The patient with the most laboratory Observations (several pages)."""
    totals = {p: http.get("/Observation", params={"patient": p, "category": "laboratory", "_summary": "count"}).json()["total"]
              for p in patient_ids}
    return max(totals, key=totals.__getitem__)


# ------------------------------------------------------------------------ what was loaded
def test_all_patients_loaded_with_their_ids(http: httpx.Client, patient_ids: list[str]) -> None:
    bundle = http.get("/Patient", params={"_count": "100"}).json()
    assert bundle["total"] == 37
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == patient_ids
    assert http.get("/Observation", params={"_summary": "count"}).json()["total"] == 12872
    assert http.get("/Practitioner", params={"_summary": "count"}).json()["total"] == 195


def test_references_were_resolved(http: httpx.Client, patient_ids: list[str]) -> None:
    enc = http.get("/Encounter", params={"patient": patient_ids[0], "_count": "1"}).json()["entry"][0]["resource"]
    assert enc["subject"]["reference"] == f"Patient/{patient_ids[0]}"
    prac = enc["participant"][0]["individual"]["reference"]
    assert re.fullmatch(r"Practitioner/[0-9a-f-]{36}", prac)
    assert http.get(f"/{prac}").status_code == 200
    org = enc["serviceProvider"]["reference"]
    assert http.get(f"/{org}").json()["resourceType"] == "Organization"


def test_coverage_is_searchable_by_beneficiary(http: httpx.Client, patient_ids: list[str]) -> None:
    found = 0
    for pid in patient_ids:
        b = http.get("/Coverage", params={"beneficiary": pid}).json()
        assert b["total"] == http.get("/Coverage", params={"patient": f"Patient/{pid}"}).json()["total"]
        for e in b.get("entry", []):
            assert e["resource"]["beneficiary"]["reference"] == f"Patient/{pid}"
            found += 1
    assert found == 55
    eob = http.get("/ExplanationOfBenefit", params={"patient": patient_ids[0], "_count": "50"}).json()
    covered = [e["resource"]["insurance"][0]["coverage"]["reference"] for e in eob["entry"]
               if e["resource"]["insurance"][0]["coverage"].get("reference", "").startswith("Coverage/")]
    for ref in set(covered):
        assert http.get(f"/{ref}").status_code == 200


# ----------------------------------------------------------------------------- searching
def test_paging_follows_next_links_to_the_total(http: httpx.Client, base: str, busy_patient: str) -> None:
    url = f"/Observation?patient={busy_patient}&category=laboratory&_count=50"
    first = http.get(url).json()
    total = first["total"]
    assert total > 100
    nxt = {link["relation"]: link["url"] for link in first["link"]}["next"]
    assert nxt == f"{base}/Observation?patient={busy_patient}&category=laboratory&_count=50&_offset=50"
    seen: list[str] = []
    page: dict | None = first
    pages = 0
    while page is not None:
        pages += 1
        assert page["total"] == total
        for e in page["entry"]:
            r = e["resource"]
            assert r["subject"]["reference"] == f"Patient/{busy_patient}"
            assert "laboratory" in {c["code"] for cat in r["category"] for c in cat["coding"]}
            seen.append(r["id"])
        links = {link["relation"]: link["url"] for link in page["link"]}
        page = httpx.get(links["next"], headers=FHIR).json() if "next" in links else None
    assert len(seen) == total == len(set(seen))
    assert pages == -(-total // 50)


def test_sort_date_descending(http: httpx.Client, busy_patient: str) -> None:
    entries = http.get("/Observation", params={"patient": busy_patient, "category": "laboratory", "_sort": "-date", "_count": "200"}).json()["entry"]
    from paritybed.fhir.dates import parse_range

    starts = [parse_range(e["resource"]["effectiveDateTime"])[0] for e in entries]
    assert starts == sorted(starts, reverse=True) and starts[0] > starts[-1]


def test_tokens_references_and_ids(http: httpx.Client, patient_ids: list[str], busy_patient: str) -> None:
    lab = http.get("/Observation", params={"patient": busy_patient, "category": "laboratory", "_summary": "count"}).json()["total"]
    vit = http.get("/Observation", params={"patient": busy_patient, "category": "vital-signs", "_summary": "count"}).json()["total"]
    both = http.get("/Observation", params={"patient": busy_patient, "category": "laboratory,vital-signs", "_summary": "count"}).json()["total"]
    assert lab and vit and both == lab + vit
    system = "http://terminology.hl7.org/CodeSystem/observation-category"
    assert http.get("/Observation", params={"subject": f"Patient/{busy_patient}", "category": f"{system}|laboratory", "_summary": "count"}).json()["total"] == lab
    assert http.get("/Observation", params={"patient": busy_patient, "category": "other-system|laboratory", "_summary": "count"}).json()["total"] == 0
    heart = http.get("/Observation", params={"code": "http://loinc.org|8867-4", "_count": "5"}).json()
    assert heart["total"] > 0 and all(
        any(c["code"] == "8867-4" for c in e["resource"]["code"]["coding"]) for e in heart["entry"])
    two = http.get("/Patient", params={"_id": f"{patient_ids[0]},{patient_ids[1]}"}).json()
    assert sorted(e["resource"]["id"] for e in two["entry"]) == patient_ids[:2]
    p0 = http.get(f"/Patient/{patient_ids[0]}").json()
    ident = next(i for i in p0["identifier"] if i.get("system") and i.get("value"))
    assert [e["resource"]["id"] for e in http.get("/Patient", params={"identifier": f"{ident['system']}|{ident['value']}"}).json()["entry"]] == [patient_ids[0]]
    family = p0["name"][0]["family"]
    by_name = http.get("/Patient", params={"family": family[:4].upper(), "_count": "50"}).json()
    assert patient_ids[0] in {e["resource"]["id"] for e in by_name["entry"]}  # prefix, case-insensitive
    assert all(any(n.get("family", "").lower().startswith(family[:4].lower()) for n in e["resource"]["name"]) for e in by_name["entry"])
    # the agents' other searches
    for rtype, params in [
        ("Condition", {"patient": busy_patient, "clinical-status": "active"}),
        ("MedicationRequest", {"patient": busy_patient, "status": "active,stopped", "intent": "order"}),
        ("DiagnosticReport", {"patient": busy_patient, "category": "LAB"}),
        ("Encounter", {"patient": busy_patient, "class": "AMB", "date": "ge2015"}),
        ("Procedure", {"patient": busy_patient, "date": "ge2010"}),
        ("DocumentReference", {"patient": busy_patient}),
        ("Claim", {"patient": busy_patient}),
    ]:
        b = http.get(f"/{rtype}", params={**params, "_count": "2"}).json()
        assert b["resourceType"] == "Bundle" and b["total"] > 0, (rtype, params)


def test_count_zero_and_total(http: httpx.Client, busy_patient: str) -> None:
    b = http.get("/Observation", params={"patient": busy_patient, "_count": "0"}).json()
    assert b["total"] > 0 and "entry" not in b
    b = http.get("/Observation", params={"patient": busy_patient, "_total": "none", "_count": "1"}).json()
    assert "total" not in b and len(b["entry"]) == 1


# --------------------------------------------------------------------- third-party clients
def test_fhirpy_read_search_paging_create_update(base: str, busy_patient: str) -> None:
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(base)
    patient = client.reference("Patient", busy_patient).to_resource()
    assert patient.id == busy_patient and patient["resourceType"] == "Patient"

    search = client.resources("Observation").search(patient=busy_patient, category="laboratory").limit(50)
    observations = search.fetch_all()  # follows the next links
    expected = httpx.get(f"{base}/Observation", params={"patient": busy_patient, "category": "laboratory", "_count": "0"}).json()["total"]
    assert len(observations) == expected > 50
    assert len({o.id for o in observations}) == expected
    assert client.resources("Patient").search(_id=busy_patient).get().id == busy_patient

    lenient = SyncFHIRClient(base, extra_headers={"Prefer": "handling=lenient"})
    assert lenient.resources("Observation").search(patient=busy_patient, category="laboratory").count() == expected

    new = client.resource("Patient", name=[{"family": "Fhirpy", "given": ["Test"]}], gender="female")
    new.save()
    assert new.id and new.meta.versionId == "1"
    new["gender"] = "male"
    new.save()
    assert new.meta.versionId == "2"
    assert client.reference("Patient", new.id).to_resource()["gender"] == "male"


def test_fhirclient_read_search_paging_create_update(base: str, busy_patient: str) -> None:
    from fhirclient.models.humanname import HumanName
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient
    from fhirclient.server import FHIRServer

    server = FHIRServer(None, base_uri=base)
    patient = Patient.read(busy_patient, server)
    assert patient.id == busy_patient

    search = Observation.where(struct={"patient": busy_patient, "category": "laboratory", "_count": "40"})
    observations = list(search.perform_resources_iter(server))  # follows the next links
    expected = httpx.get(f"{base}/Observation", params={"patient": busy_patient, "category": "laboratory", "_count": "0"}).json()["total"]
    assert len(observations) == expected > 40
    assert all(o.subject.reference == f"Patient/{busy_patient}" for o in observations)

    new = Patient({"gender": "female"})
    new.name = [HumanName({"family": "Fhirclient", "given": ["Test"]})]
    created = new.create(server)
    assert created["id"] and created["meta"]["versionId"] == "1"
    stored = Patient.read(created["id"], server)
    stored.gender = "other"
    updated = stored.update(server)
    assert updated["meta"]["versionId"] == "2"
    assert Patient.read(created["id"], server).gender == "other"
