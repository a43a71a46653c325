"""The population index over the 37 real Synthea patients (older Synthea, see SOURCE.md).

Facts are checked against an independent scan of the bundle files, so the index cannot drift
from what the FHIR server will hold after loading the same folder.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from paritybed.fhir.bundles import BundleError, prepare_for_load, read_bundle, synthea_files
from paritybed.fhir.population import Population, PopulationWarning, load_population

PID = "8708d3e1-f718-96bb-03f0-f2a6564ae1cd"  # the smallest patient bundle
PARITYBED = Path(sys.executable).with_name("paritybed")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache from tests."""
    monkeypatch.setenv("PARITYBED_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def pop(shared_synthea: Path) -> Population:
    return load_population(shared_synthea, use_cache=False)


@pytest.fixture(scope="module")
def small(shared_synthea: Path) -> dict:
    return prepare_for_load(read_bundle(shared_synthea / f"{PID}.json"))


def test_patients_and_encounters(pop: Population) -> None:
    assert len(pop.patients) == 37
    assert [p.id for p in pop.patients] == sorted(p.id for p in pop.patients)
    assert sum(p.deceased for p in pop.patients) == 4
    assert {p.gender for p in pop.patients} == {"female", "male"}
    assert len(pop.encounters) == 1281
    assert {e.class_code for e in pop.encounters} == {"AMB", "EMER", "IMP"}
    assert len(pop.encounters_by_class("IMP")) == 24 and len(pop.encounters_by_class("EMER")) == 43
    keys = [(e.patient_id, e.start, e.id) for e in pop.encounters]
    assert keys == sorted(keys)
    assert all(e.start and e.end and e.start <= e.end for e in pop.encounters)


def test_practitioners_resolve_from_conditional_references(pop: Population) -> None:
    assert len(pop.practitioners) == 195
    known = set(pop.practitioners)
    assert all(e.practitioner_id in known for e in pop.encounters)


def test_type_counts_are_what_the_server_holds(pop: Population, shared_synthea: Path) -> None:
    raw: Counter = Counter()
    for f in synthea_files(shared_synthea):
        raw.update(e["resource"]["resourceType"] for e in read_bundle(f)["entry"])
    counts = pop.type_counts()
    assert counts["Coverage"] == 55 and "Coverage" not in raw
    assert Counter({k: v for k, v in counts.items() if k != "Coverage"}) == raw
    assert counts["MedicationRequest"] == 1397 and "MedicationStatement" not in counts


def test_ids_match_the_prepared_bundle(pop: Population, small: dict) -> None:
    by_type: dict[str, set[str]] = {}
    for e in small["entry"]:
        r = e["resource"]
        ref = (r.get("subject") or r.get("patient") or r.get("beneficiary") or {}).get("reference")
        if ref == f"urn:uuid:{PID}":
            by_type.setdefault(r["resourceType"], set()).add(r["id"])
    assert set(by_type) >= {"Observation", "Encounter", "Claim", "MedicationRequest", "Coverage"}
    for rtype, ids in by_type.items():
        assert pop.ids(PID, rtype) == sorted(ids), rtype
        assert pop.count(PID, rtype) == len(ids)
    assert pop.ids(PID, "Medication") == []  # Medication has no patient reference in Synthea
    assert pop.ids("no-such-patient", "Observation") == []


def test_category_counts(pop: Population, small: dict) -> None:
    labs = sum(1 for e in small["entry"] if e["resource"]["resourceType"] == "Observation"
               and e["resource"]["category"][0]["coding"][0]["code"] == "laboratory")
    vitals = sum(1 for e in small["entry"] if e["resource"]["resourceType"] == "Observation"
                 and e["resource"]["category"][0]["coding"][0]["code"] == "vital-signs")
    assert labs > 0 and vitals > 0
    assert pop.count(PID, "Observation", "laboratory") == labs
    assert pop.count(PID, "Observation", "vital-signs") == vitals
    assert pop.count(PID, "Observation", "no-such-category") == 0


def test_encounter_resource_counts(pop: Population, small: dict) -> None:
    enc = next(e for e in pop.encounters if e.patient_id == PID)
    expected: Counter = Counter()
    needle = f"urn:uuid:{enc.id}".encode()
    for e in small["entry"]:
        r = e["resource"]
        if r["resourceType"] != "Encounter" and needle in orjson.dumps(
            {k: r[k] for k in ("encounter", "context", "item") if k in r}
        ):
            expected[r["resourceType"]] += 1
    assert expected["Observation"] or expected["Claim"]
    assert pop.encounter_resource_counts(enc.id) == dict(expected)


def test_coverage_and_claims(pop: Population, small: dict) -> None:
    coverage = pop.coverage_of(PID)
    in_bundle = sorted(e["resource"]["id"] for e in small["entry"] if e["resource"]["resourceType"] == "Coverage")
    assert coverage == in_bundle and coverage
    claims = [c for c in pop.claims if c.patient_id == PID]
    assert len(claims) == pop.count(PID, "Claim")
    assert all(c.coverage_id is None or c.coverage_id in coverage for c in claims)
    assert any(c.coverage_id for c in claims)
    encounters = {e.id for e in pop.encounters if e.patient_id == PID}
    assert all(c.encounter_id in encounters for c in claims)
    s = pop.summary()
    assert s["coverage"]["resources"] == 55 and s["patients"] == 37
    assert s["medications"]["MedicationStatement resources"] == 0


def _copy_with(shared: Path, tmp: Path, extra: dict[str, bytes]) -> Path:
    """A folder with (symlinks to) the shared bundles plus `extra` files."""
    for f in synthea_files(shared):
        (tmp / f.name).symlink_to(f)
    for name, data in extra.items():
        (tmp / name).write_bytes(data)
    return tmp


def test_corrupt_file_is_skipped_with_a_warning_or_an_error_under_strict(shared_synthea: Path, tmp_path: Path) -> None:
    folder = _copy_with(shared_synthea, tmp_path, {"00-corrupt.json": b'{"resourceType": "Bundle", "entry": [{'})
    with pytest.warns(PopulationWarning, match="00-corrupt.json"):
        pop = load_population(folder, use_cache=False)
    assert len(pop.patients) == 37 and [p.name for p in pop.skipped] == ["00-corrupt.json"]
    with pytest.raises(BundleError, match="00-corrupt.json"):
        load_population(folder, strict=True, use_cache=False)


def test_non_bundle_file_is_skipped_with_a_warning(shared_synthea: Path, tmp_path: Path) -> None:
    folder = _copy_with(shared_synthea, tmp_path, {"aa-patient.json": b'{"resourceType": "Patient", "id": "x"}'})
    with pytest.warns(PopulationWarning, match="aa-patient.json.*not a FHIR Bundle"):
        pop = load_population(folder, use_cache=False)
    assert len(pop.patients) == 37


def test_cache_returns_the_same_index_and_tracks_content(shared_synthea: Path, tmp_path: Path, pop: Population) -> None:
    folder = _copy_with(shared_synthea, tmp_path, {})
    first = load_population(folder)
    assert first.fingerprint == pop.fingerprint  # names, sizes and bytes, not the folder path
    cached = load_population(folder)
    assert cached.summary() == first.summary() and cached.folder == folder
    assert cached.ids(PID, "Observation") == pop.ids(PID, "Observation")
    (folder / f"{PID}.json").unlink()  # a different folder content: a different index
    smaller = load_population(folder)
    assert smaller.fingerprint != pop.fingerprint and len(smaller.patients) == 36


def test_cli_prints_the_summary_and_fails_cleanly(shared_synthea: Path, tmp_path: Path) -> None:
    ok = subprocess.run([str(PARITYBED), "population", str(shared_synthea)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "37 (4 deceased" in ok.stdout and "Coverage" in ok.stdout and "EMER" in ok.stdout
    missing = subprocess.run([str(PARITYBED), "population", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
