"""The generated R4 tables (paritybed/core/r4/): what the specification says, checked on
facts a FHIR reader knows, and reproducible from the specification's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from paritybed.core import r4spec

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PARITYBED_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "paritybed")
JAR = CACHE / "hapi-fhir-validation-resources-r4" / "8.8.0" / "hapi-fhir-validation-resources-r4-8.8.0.jar"


def test_header_names_the_source() -> None:
    about = r4spec.about()
    assert about["source"].startswith("ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4:8.8.0")
    assert about["fhirVersion"] == "4.0.1" and len(about["jarSha256"]) == 64
    assert all(len(h) == 64 for h in about["files"].values())


def test_resource_types_are_the_r4_value_set() -> None:
    from paritybed.enforcer.classify import R4_TYPES

    types = r4spec.resource_types()
    assert len(types) == 146 and "Resource" not in types and "DomainResource" not in types
    assert set(types) == set(R4_TYPES)  # the classifier's hand-kept list agrees
    assert {"MedicinalProduct", "EffectEvidenceSynthesis"} <= set(types)  # R4, not R4B
    assert "SubscriptionTopic" not in types


@pytest.mark.parametrize(("rtype", "code", "kind", "paths", "targets"), [
    ("Observation", "patient", "reference", ["subject"], ("Patient",)),
    ("Observation", "subject", "reference", ["subject"], ("Device", "Group", "Location", "Patient")),
    ("Observation", "value-quantity", "quantity", ["valueQuantity", "valueSampledData"], ()),
    ("Observation", "date", "date", ["effectiveDateTime", "effectivePeriod", "effectiveTiming", "effectiveInstant"], ()),
    ("Coverage", "patient", "reference", ["beneficiary"], ("Patient",)),
    ("DocumentReference", "encounter", "reference", ["context.encounter"], ("Encounter", "EpisodeOfCare")),
    ("Patient", "email", "token", ["telecom"], ()),
    ("Patient", "birthdate", "date", ["birthDate"], ()),
    ("Condition", "onset-date", "date", ["onsetDateTime", "onsetPeriod"], ()),
    ("AuditEvent", "patient", "reference", ["agent.who", "entity.what"], ("Patient",)),
    ("InsurancePlan", "name", "string", ["name", "alias"], ()),
])
def test_parameters(rtype: str, code: str, kind: str, paths: list[str], targets: tuple[str, ...]) -> None:
    p = r4spec.search_params(rtype)[code]
    assert p.type == kind and [str(x) for x in p.paths or ()] == paths
    assert p.targets == targets


def test_filters_in_paths() -> None:
    email = r4spec.search_params("Patient")["email"].paths[0].steps[0]
    assert email.where == ("system", "email")
    practitioner = r4spec.search_params("Encounter")["practitioner"]
    assert practitioner.targets == ("Practitioner",)


def test_common_parameters() -> None:
    common = r4spec.common_params()
    assert {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content"} <= set(common)
    assert str(common["_tag"].paths[0]) == "meta.tag" and common["_profile"].type == "uri"
    assert "_text" in r4spec.search_params("Patient") and "_text" not in r4spec.search_params("Bundle")


def test_composite() -> None:
    p = r4spec.search_params("Observation")["component-code-value-quantity"]
    assert p.type == "composite" and [str(x) for x in p.paths] == ["component"]
    assert [(c.param, c.type) for c in p.components] == [("component-code", "token"), ("component-value-quantity", "quantity")]


def test_patient_compartment() -> None:
    patient = r4spec.compartment("Patient")
    assert patient["Observation"] == ("subject", "performer")
    assert patient["AllergyIntolerance"] == ("patient", "recorder", "asserter")
    assert "Organization" not in patient and len(patient) == 66
    assert set(r4spec.compartment_types()) == {"Device", "Encounter", "Patient", "Practitioner", "RelatedPerson"}


def test_elements_and_bindings() -> None:
    patient = r4spec.elements("Patient")
    assert patient.bindings["gender"] == "http://hl7.org/fhir/ValueSet/administrative-gender"
    assert patient.bindings["identifier"] == "@Identifier"
    assert "deceased" in patient.choice and "deceasedBoolean" in patient.summary and "text" not in patient.summary
    assert r4spec.elements("Observation").mandatory == {"status", "code"}
    assert r4spec.value_set("http://hl7.org/fhir/ValueSet/administrative-gender") == {
        "http://hl7.org/fhir/administrative-gender": frozenset({"male", "female", "other", "unknown"})}
    assert r4spec.value_set("http://hl7.org/fhir/ValueSet/mimetypes") is None  # BCP-13: not enumerable
    assert r4spec.datatype_bindings("Identifier")["use"] == "http://hl7.org/fhir/ValueSet/identifier-use"


@pytest.mark.skipif(not JAR.is_file(), reason=f"the R4 definitions jar is not cached at {JAR} (scripts/gen_r4_tables.py resolves it with mvn)")
def test_tables_are_what_the_generator_writes() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_r4_tables.py"), "--jar", str(JAR), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
