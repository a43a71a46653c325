"""Request bodies of the agents' writes: valid FHIR R4 resources built with fhir.resources.

The trace records *that* an agent wrote (method, type, ids, context), not the bytes; the live
worker and the FHIR round-trip test rebuild the body from the row with `body_for`, so a body is
a pure function of the row: same row -> same bytes.  Every body is validated by the R4 model
classes (``fhir.resources.R4B``) before it is serialised, so a write the server rejects is a bug
here, not in the data.

Writes the agents make:

* scribe: ``POST DocumentReference`` (the signed note, LOINC type by workflow) and
  ``PUT Encounter/<id>`` (status and class of the documented encounter);
* CDS: ``POST MedicationRequest`` / ``POST ServiceRequest`` with status ``draft``, intent
  ``proposal`` (for the clinician to approve);
* prior auth: ``POST ClaimResponse`` (use ``preauthorization``, request ``Claim/<id>``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any, Callable, Mapping

from fhir.resources.R4B.claimresponse import ClaimResponse
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

#: Simulated t=0 when the row does not say (the default scenario's start).
DEFAULT_START = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

NOTE_TYPES = {  # workflow -> (LOINC code, display) of the scribe's note
    "ed_visit": ("34111-5", "Emergency department Note"),
    "admission": ("34117-2", "History and physical note"),
    "discharge": ("18842-5", "Discharge summary"),
    "med_rec_admission": ("56445-0", "Medication summary Document"),
    "med_rec_discharge": ("56445-0", "Medication summary Document"),
}
PROGRESS_NOTE = ("11506-3", "Progress note")
ENCOUNTER_CLASS = {"ed_visit": ("EMER", "emergency"), "outpatient": ("AMB", "ambulatory")}
INPATIENT = ("IMP", "inpatient encounter")
FINISHED = frozenset(("ed_visit", "outpatient", "discharge"))
DRUGS = (("314076", "lisinopril 10 MG Oral Tablet"), ("197361", "amlodipine 5 MG Oral Tablet"),
         ("860975", "metformin hydrochloride 500 MG Extended Release Oral Tablet"),
         ("310798", "hydrochlorothiazide 25 MG Oral Tablet"), ("308136", "amlodipine 2.5 MG Oral Tablet"))
TESTS = (("24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"), ("58410-2", "CBC panel - Blood by Automated count"),
         ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma"), ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"))


def _pick(options: tuple, key: str) -> Any:
    """A deterministic choice by sha256 (never hash(): that changes between processes)."""
    return options[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(options)]


def _when(row: Mapping[str, Any]) -> str:
    start = row.get("start")
    base = dt.datetime.fromisoformat(start) if start else DEFAULT_START
    if base.tzinfo is None:
        base = base.replace(tzinfo=dt.timezone.utc)
    t = base + dt.timedelta(microseconds=int(row.get("t_ns", 0)) // 1000)
    return t.isoformat(timespec="seconds")


def _patient(row: Mapping[str, Any]) -> dict[str, str]:
    return {"reference": f"Patient/{row['patient_id']}"}


def _encounter_of(row: Mapping[str, Any]) -> str | None:
    return row.get("context_id") if row.get("context_kind") == "encounter" else None


def document_reference(row: Mapping[str, Any]) -> DocumentReference:
    wf = str(row.get("workflow", ""))
    code, display = NOTE_TYPES.get(wf, PROGRESS_NOTE)
    text = (f"{display} drafted by the ambient scribe ({row.get('agent', 'scribe')}) and signed by the clinician; "
            f"workflow {wf or 'visit'}; context {row.get('context_id', '')}.")
    data: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": _patient(row),
        "date": _when(row),
        "description": f"{display} (ambient scribe)",
        "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}],
    }
    enc = _encounter_of(row)
    if enc:
        data["context"] = {"encounter": [{"reference": f"Encounter/{enc}"}]}
    return DocumentReference.model_validate(data)


def encounter(row: Mapping[str, Any]) -> Encounter:
    wf = str(row.get("workflow", ""))
    code, display = ENCOUNTER_CLASS.get(wf, INPATIENT)
    return Encounter.model_validate({
        "resourceType": "Encounter",
        "id": row["resource_id"],
        "status": "finished" if wf in FINISHED else "in-progress",
        "class": {"system": ACT_CODE, "code": code, "display": display},
        "subject": _patient(row),
    })


def medication_request(row: Mapping[str, Any]) -> MedicationRequest:
    code, display = _pick(DRUGS, str(row.get("context_id", "")))
    return MedicationRequest.model_validate({
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "proposal",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}], "text": display},
        "subject": _patient(row),
        "authoredOn": _when(row),
        "note": [{"text": f"Draft proposed by CDS ({row.get('agent', 'cds')}, query {row.get('context_id', '')}) for clinician approval"}],
    })


def service_request(row: Mapping[str, Any]) -> ServiceRequest:
    code, display = _pick(TESTS, str(row.get("context_id", "")))
    return ServiceRequest.model_validate({
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": _patient(row),
        "authoredOn": _when(row),
        "note": [{"text": f"Follow-up test proposed by CDS ({row.get('agent', 'cds')}, query {row.get('context_id', '')})"}],
    })


def claim_response(row: Mapping[str, Any]) -> ClaimResponse:
    claim = str(row.get("context_id", ""))
    ref = "PA-" + hashlib.sha256(claim.encode()).hexdigest()[:10].upper()
    return ClaimResponse.model_validate({
        "resourceType": "ClaimResponse",
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "preauthorization",
        "patient": _patient(row),
        "created": _when(row),
        "insurer": {"display": "Payer (via the prior-authorization gateway)"},
        "request": {"reference": f"Claim/{claim}"},
        "outcome": "complete",
        "disposition": "Prior authorization request submitted by the agent; payer decision recorded.",
        "preAuthRef": ref,
    })


BUILDERS: dict[tuple[str, str], Callable[[Mapping[str, Any]], Any]] = {
    ("POST", "DocumentReference"): document_reference,
    ("PUT", "Encounter"): encounter,
    ("POST", "MedicationRequest"): medication_request,
    ("POST", "ServiceRequest"): service_request,
    ("POST", "ClaimResponse"): claim_response,
}


def has_body(method: str) -> bool:
    return method in ("POST", "PUT")


def body_for(row: Mapping[str, Any]) -> bytes:
    """The JSON body of a write row (POST/PUT), b"" for GET/DELETE.  `row` holds the trace
    columns (at least method, resource_type, resource_id, patient_id, context_id, context_kind,
    workflow, agent, t_ns) and optionally ``start`` (ISO instant of simulated t=0)."""
    method = str(row.get("method", ""))
    if not has_body(method):
        return b""
    key = (method, str(row.get("resource_type", "")))
    build = BUILDERS.get(key)
    if build is None:
        raise ValueError(f"no body builder for {key[0]} {key[1]}: the agents only write "
                         + ", ".join(f"{m} {t}" for m, t in BUILDERS))
    return build(row).model_dump_json(exclude_none=True).encode()
