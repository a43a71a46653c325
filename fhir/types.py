"""Which resource types the server stores, and validation of a resource with fhir.resources.

The type list is the FHIR R4B resource list of fhir.resources (the library parses R4 data through
its R4B models); it is written out here so that starting the server does not import 140 model
modules.  tests/test_fhir_server.py checks it still equals what fhir.resources knows.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from paritybed.fhir import bindings
from paritybed.fhir.outcome import FhirError

#: Every concrete resource type (abstract Resource/DomainResource excluded).
RESOURCE_TYPES: frozenset[str] = frozenset({
    "Account", "ActivityDefinition", "AdministrableProductDefinition", "AdverseEvent",
    "AllergyIntolerance", "Appointment", "AppointmentResponse", "AuditEvent", "Basic", "Binary",
    "BiologicallyDerivedProduct", "BodyStructure", "Bundle", "CapabilityStatement", "CarePlan",
    "CareTeam", "CatalogEntry", "ChargeItem", "ChargeItemDefinition", "Citation", "Claim",
    "ClaimResponse", "ClinicalImpression", "ClinicalUseDefinition", "CodeSystem", "Communication",
    "CommunicationRequest", "CompartmentDefinition", "Composition", "ConceptMap", "Condition",
    "Consent", "Contract", "Coverage", "CoverageEligibilityRequest", "CoverageEligibilityResponse",
    "DetectedIssue", "Device", "DeviceDefinition", "DeviceMetric", "DeviceRequest",
    "DeviceUseStatement", "DiagnosticReport", "DocumentManifest", "DocumentReference", "Encounter",
    "Endpoint", "EnrollmentRequest", "EnrollmentResponse", "EpisodeOfCare", "EventDefinition",
    "Evidence", "EvidenceReport", "EvidenceVariable", "ExampleScenario", "ExplanationOfBenefit",
    "FamilyMemberHistory", "Flag", "Goal", "GraphDefinition", "Group", "GuidanceResponse",
    "HealthcareService", "ImagingStudy", "Immunization", "ImmunizationEvaluation",
    "ImmunizationRecommendation", "ImplementationGuide", "Ingredient", "InsurancePlan", "Invoice",
    "Library", "Linkage", "List", "Location", "ManufacturedItemDefinition", "Measure",
    "MeasureReport", "Media", "Medication", "MedicationAdministration", "MedicationDispense",
    "MedicationKnowledge", "MedicationRequest", "MedicationStatement",
    "MedicinalProductDefinition", "MessageDefinition", "MessageHeader", "MolecularSequence",
    "NamingSystem", "NutritionOrder", "NutritionProduct", "Observation", "ObservationDefinition",
    "OperationDefinition", "OperationOutcome", "Organization", "OrganizationAffiliation",
    "PackagedProductDefinition", "Parameters", "Patient", "PaymentNotice", "PaymentReconciliation",
    "Person", "PlanDefinition", "Practitioner", "PractitionerRole", "Procedure", "Provenance",
    "Questionnaire", "QuestionnaireResponse", "RegulatedAuthorization", "RelatedPerson",
    "RequestGroup", "ResearchDefinition", "ResearchElementDefinition", "ResearchStudy",
    "ResearchSubject", "RiskAssessment", "Schedule", "SearchParameter", "ServiceRequest", "Slot",
    "Specimen", "SpecimenDefinition", "StructureDefinition", "StructureMap", "Subscription",
    "SubscriptionStatus", "SubscriptionTopic", "Substance", "SubstanceDefinition",
    "SupplyDelivery", "SupplyRequest", "Task", "TerminologyCapabilities", "TestReport",
    "TestScript", "ValueSet", "VerificationResult", "VisionPrescription",})

#: FHIR ``id`` datatype: 1-64 of letters, digits, '-' and '.'.
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def check_type(name: str) -> str:
    """`name` if it is a resource type; else 404 (unknown type), as HAPI answers."""
    if name not in RESOURCE_TYPES:
        raise FhirError(404, f"Unknown resource type '{name}'")
    return name


def check_id(value: str) -> str:
    """`value` if it is a valid FHIR id; else 400."""
    if not ID_RE.match(value):
        raise FhirError(400, f"'{value}' is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)")
    return value


@lru_cache(maxsize=None)
def _model(type_name: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class  # heavy: only when validating

    return get_fhir_model_class(type_name)


def validate(resource: dict[str, Any]) -> None:
    """Raise 400 with every issue fhir.resources (R4 through R4B) finds in `resource`.

    Why fhir.resources and not a hand-written check: it carries the whole R4 structure
    (cardinalities, datatypes, choice types, required elements), so a client gets the errors a
    conformant server would give, with the element path of each.
    """
    from pydantic import ValidationError

    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise FhirError(400, "resource has no resourceType")
    check_type(rtype)
    try:
        _model(rtype).model_validate(resource)
    except ValidationError as e:
        errors = e.errors()
        issues = []
        for err in errors[:20]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
            issues.append({
                "severity": "error",
                "code": "structure",
                "diagnostics": f"{where or rtype}: {err.get('msg')}",
                "expression": [f"{rtype}.{where}" if where else rtype],
            })
        first = issues[0] if issues else {"diagnostics": str(e), "expression": [rtype]}
        raise FhirError(
            400, f"invalid {rtype}: {first['diagnostics']}", code="structure",
            expression=first["expression"], extra=issues[1:],
        ) from None
    except (ValueError, TypeError) as e:  # fhir.resources raises plain errors for some inputs
        raise FhirError(400, f"invalid {rtype}: {e}", code="structure") from None
    check_bindings(resource)


def check_bindings(resource: dict[str, Any]) -> None:
    """400 listing every coded value outside its required R4 value set (fhir/bindings.py)."""
    found = bindings.issues(resource)
    if found:
        first = found[0]
        raise FhirError(400, f"invalid {resource.get('resourceType')}: {first['diagnostics']}", code="code-invalid",
                        expression=first["expression"], extra=found[1:20])
