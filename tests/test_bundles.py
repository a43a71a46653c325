"""Synthea bundles on disk: load order, reading errors, strict validation, Coverage extraction."""

from __future__ import annotations

import copy
import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest

from paritybed.core.errors import InputError
from paritybed.fhir.bundles import (
    NO_INSURANCE,
    BundleError,
    conditional_targets,
    coverage_id,
    prepare_for_load,
    read_bundle,
    resolve_reference,
    synthea_files,
    validate_bundle,
)

SMALL = "8708d3e1-f718-96bb-03f0-f2a6564ae1cd.json"  # the smallest patient bundle (146 entries)


def _types(bundle: dict) -> Counter:
    return Counter(e["resource"]["resourceType"] for e in bundle["entry"])


def test_load_order_infrastructure_first_then_patients_sorted(shared_synthea: Path) -> None:
    files = synthea_files(shared_synthea)
    names = [f.name for f in files]
    assert names[0].startswith("0-hospitalInformation")
    assert names[1].startswith("0-practitionerInformation")
    assert names[2:] == sorted(names[2:])
    assert len(files) == 39 and "SOURCE.md" not in names


def test_accepts_the_folder_above_fhir_and_synthea3_names(shared_synthea: Path, tmp_path: Path) -> None:
    fhir = tmp_path / "fhir"
    fhir.mkdir()
    (tmp_path / "paritybed-synthea.json").write_text("{}")  # a manifest next to fhir/ is not a bundle
    for name in ("practitionerInformation.json", "Ann1_Lee2_bbbb.json", "hospitalInformation.json", "Zed3_Ng4_aaaa.json"):
        (fhir / name).write_text("{}")
    assert [f.name for f in synthea_files(tmp_path)] == [
        "hospitalInformation.json", "practitionerInformation.json", "Ann1_Lee2_bbbb.json", "Zed3_Ng4_aaaa.json"]


def test_missing_or_empty_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        synthea_files(tmp_path / "nope")
    (tmp_path / "README.md").write_text("no bundles here")
    with pytest.raises(InputError, match="no FHIR bundles"):
        synthea_files(tmp_path)


def test_corrupt_and_non_bundle_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_bytes(b'{"resourceType": "Bundle", "entry": [')
    with pytest.raises(BundleError, match="broken.json: not valid JSON"):
        read_bundle(bad)
    patient = tmp_path / "patient.json"
    patient.write_bytes(b'{"resourceType": "Patient", "id": "p"}')
    with pytest.raises(BundleError, match="patient.json: not a FHIR Bundle.*'Patient'"):
        read_bundle(patient)


def test_strict_reports_the_first_validation_error_with_the_file(shared_synthea: Path, tmp_path: Path) -> None:
    bundle = read_bundle(shared_synthea / SMALL, strict=True)  # real Synthea data validates
    bundle["entry"][0]["resource"]["birthDate"] = "not-a-date"
    bad = tmp_path / "bad-birthdate.json"
    bad.write_bytes(orjson.dumps(bundle))
    assert read_bundle(bad)["type"] == "transaction"  # lenient reading accepts it
    with pytest.raises(BundleError, match=r"bad-birthdate\.json: invalid FHIR R4 Bundle at .*birthDate"):
        read_bundle(bad, strict=True)


@pytest.fixture(scope="module")
def small(shared_synthea: Path) -> dict:
    return read_bundle(shared_synthea / SMALL)


def test_prepare_extracts_one_coverage_per_payer(small: dict) -> None:
    original = copy.deepcopy(small)
    prepared = prepare_for_load(small)
    assert small == original, "prepare_for_load must not modify its input"
    patient = prepared["entry"][0]
    pid = patient["resource"]["id"]
    payers = {c["payor"][0]["display"] for e in small["entry"] if e["resource"]["resourceType"] == "ExplanationOfBenefit"
              for c in e["resource"].get("contained", []) if c["resourceType"] == "Coverage"} - {NO_INSURANCE}
    coverages = [e for e in prepared["entry"] if e["resource"]["resourceType"] == "Coverage"]
    assert {c["resource"]["payor"][0]["display"] for c in coverages} == payers
    assert len(coverages) == len(payers)
    for e in coverages:
        res = e["resource"]
        assert res["id"] == coverage_id(pid, res["payor"][0]["display"])
        assert e["fullUrl"] == f"urn:uuid:{res['id']}"
        assert e["request"] == {"method": "POST", "url": "Coverage"}
        assert res["beneficiary"] == {"reference": patient["fullUrl"]}
        assert res["period"]["start"] <= res["period"]["end"]
    # Everything else is still there, and only Coverage was added.
    assert _types(prepared) - _types(small) == Counter({"Coverage": len(payers)})
    assert _types(small) - _types(prepared) == Counter()


def test_prepare_points_every_insured_eob_at_its_standalone_coverage(small: dict) -> None:
    prepared = prepare_for_load(small)
    urls = {e["fullUrl"] for e in prepared["entry"] if e["resource"]["resourceType"] == "Coverage"}
    eobs = [e["resource"] for e in prepared["entry"] if e["resource"]["resourceType"] == "ExplanationOfBenefit"]
    assert eobs
    for eob in eobs:
        ref = eob["insurance"][0]["coverage"]["reference"]
        display = eob["insurance"][0]["coverage"]["display"]
        contained = [c for c in eob.get("contained", []) if c["resourceType"] == "Coverage"]
        if display == NO_INSURANCE:  # self-pay stays as Synthea wrote it
            assert ref == "#coverage" and contained
        else:
            assert ref in urls and not contained
        assert [c["id"] for c in eob.get("contained", []) if c["resourceType"] == "ServiceRequest"] == ["referral"]


def test_prepare_is_idempotent_and_the_result_is_valid_r4(small: dict) -> None:
    once = prepare_for_load(small)
    assert prepare_for_load(once) == once
    validate_bundle(once, Path("prepared"))  # raises BundleError if the extraction broke R4


def test_conditional_references_resolve_against_the_infrastructure_bundles(shared_synthea: Path, small: dict) -> None:
    targets: dict[str, str] = {}
    for f in synthea_files(shared_synthea)[:2]:
        targets.update(conditional_targets(read_bundle(f)))
    refs = set()

    def walk(x: object) -> None:
        if isinstance(x, dict):
            ref = x.get("reference")
            if isinstance(ref, str) and "?identifier=" in ref:
                refs.add(ref)
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(small)
    assert refs and {r.split("?")[0] for r in refs} >= {"Practitioner", "Organization", "Location"}
    assert all(resolve_reference(r, targets) for r in refs), [r for r in refs if r not in targets]


def test_a_copied_folder_gives_the_same_files_in_the_same_order(shared_synthea: Path, tmp_path: Path) -> None:
    for f in synthea_files(shared_synthea)[:4]:
        shutil.copy(f, tmp_path / f.name)
    assert [f.name for f in synthea_files(tmp_path)] == [f.name for f in synthea_files(shared_synthea)[:4]]
