"""The strict request classifier of docs/enforcement.md, in Python (the kernel's twin).

The kernel program (bpf/paritybed.c, sk_msg) parses every HTTP request an agent writes to its
FHIR server with a byte-at-a-time state machine; this module is the same grammar written
for people, and the property test (tests/test_kernel_classify.py) feeds generated requests
through both and requires the same (resource type, interaction, shape) for every one.  The
tables the kernel needs (character classes, type names, parameter and header names) are built
here and loaded into its maps, so there is one source for each.

``classify(raw, base)`` takes the bytes of one write on a fresh connection; ``Stream`` keeps the
per-socket state (a body that follows its header section in later writes).

Precedence when a request has several problems (the first that applies is its shape):
split / too-large (no complete head), malformed (syntax), method-override, chunked, length,
pipelined, then the first deviation of the request target from the plain grammar, reading
left to right.  Framing comes before the target so that allowing a target family (say
``operation``) never also admits a request whose framing could hide a second one.
"""

from __future__ import annotations

from dataclasses import dataclass

from paritybed.core.vocabulary import INTERACTIONS

HDR_MAX = 2048
TYPE_MAX, ID_MAX, VALUE_MAX, CLAIM_MAX, BASE_MAX = 40, 64, 128, 64, 24
METHODS = ("GET", "POST", "PUT", "DELETE")

#: FHIR R4 (4.0.1) resource types: the ResourceType value set of the R4 specification
#: (https://hl7.org/fhir/R4/valueset-resource-types.html), abstract Resource/DomainResource
#: excluded.  Not fhir.resources' R4B list, which differs (R4B drops the MedicinalProduct*
#: family and adds e.g. SubscriptionTopic).
R4_TYPES: tuple[str, ...] = tuple("""
Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse
AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement
CarePlan CareTeam CatalogEntry ChargeItem ChargeItemDefinition Claim ClaimResponse
ClinicalImpression CodeSystem Communication CommunicationRequest CompartmentDefinition
Composition ConceptMap Condition Consent Contract Coverage CoverageEligibilityRequest
CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest
DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis
Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence
EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal
GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy Immunization
ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice
Library Linkage List Location Measure MeasureReport Media Medication MedicationAdministration
MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement MedicinalProduct
MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication
MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured
MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect
MessageDefinition MessageHeader MolecularSequence NamingSystem NutritionOrder Observation
ObservationDefinition OperationDefinition OperationOutcome Organization OrganizationAffiliation
Parameters Patient PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner
PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson
RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen
SpecimenDefinition StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid
SubstancePolymer SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial
SubstanceSpecification SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport
TestScript ValueSet VerificationResult VisionPrescription
""".split())
TYPE_ID = {t: i + 1 for i, t in enumerate(R4_TYPES)}  # 0 = no type

SAFE_PARAMS = ("_id", "_count", "_sort", "_offset", "patient", "subject", "encounter", "category",
               "code", "status", "date", "identifier", "intent", "clinical-status")
#: parameter names (before any ':' modifier) that select a family of their own
SPECIAL_PARAMS = {"_include": "include", "_revinclude": "include", "_type": "type-param", "_has": "has"}
CLAIM_HEADER = "x-break-glass-claim"
#: headers that change what the request does, whatever its request line says: a method override;
#: If-None-Exist (a conditional create: its value is a search the server runs, so a create-only
#: envelope would answer searches, 200 for one match and 201 for none); X-Cascade (HAPI: a delete
#: that deletes whatever references its target).  Framing shape `method-override`, never allowed.
OVERRIDE_HEADERS = ("x-http-method-override", "x-method-override", "x-http-method", "if-none-exist", "x-cascade")

_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
ID_CHARS = _ALNUM | frozenset(b"-")
VALUE_CHARS = _ALNUM | frozenset(b"._|:/,-")
PNAME_CHARS = _ALNUM | frozenset(b"_.:-")
CLAIM_CHARS = _ALNUM | frozenset(b"._:-")
OP_CHARS = _ALNUM | frozenset(b"_-")
TCHARS = _ALNUM | frozenset(b"!#$%&'*+-.^_`|~")
VCHARS = frozenset(range(0x21, 0x7F))
HVAL_CHARS = frozenset(range(0x20, 0x7F)) | {0x09}
OWS = b" \t"

INTERACTION_CODE = {"": 0, **{s: i + 1 for i, s in enumerate(INTERACTIONS)}}

# forms of a plain target, and the interaction each method makes of them
_TYPE, _ID, _HIST, _VREAD = "type", "id", "history", "vread"
_GET_FORM = {_TYPE: "search", _ID: "read", _HIST: "history", _VREAD: "vread"}
_WRITE = {"POST": "create", "PUT": "update", "DELETE": "delete"}
#: (method, form) pairs of a plain request; any other combination is malformed
_PLAIN = {("GET", _TYPE), ("GET", _ID), ("GET", _HIST), ("GET", _VREAD), ("POST", _TYPE), ("PUT", _ID),
          ("DELETE", _ID)}


@dataclass(frozen=True)
class Classification:
    """What one write is: shape ``plain`` or an unclassifiable family, and what it acts on.

    ``resource_type``/``interaction`` are also filled for non-plain shapes when the target named
    a known type (a policy that allows the shape still needs the pair); they are empty for
    split, too-large and malformed requests.  ``body_left`` counts body bytes announced by
    Content-Length that will follow in later writes."""

    shape: str
    resource_type: str = ""
    interaction: str = ""
    method: str = ""
    claim: str | None = None
    body_left: int = 0

    @property
    def plain(self) -> bool:
        return self.shape == "plain"


def fnv1a64(data: bytes | str) -> int:
    """FNV-1a 64: claim ids, agent and endpoint names are keyed by it in the kernel's maps."""
    if isinstance(data, str):
        data = data.encode()
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def pack_words(data: bytes, n: int) -> list[int]:
    """The kernel's shift register: the bytes as one big-endian number, cut into n u64 words
    (word 0 holds the last 8 bytes).  Used for exact name lookups without hashing."""
    v = int.from_bytes(data[-8 * n:], "big") if data else 0
    return [(v >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in range(n)]


def char_classes() -> list[int]:
    """The 256-entry class table the kernel parser reads (flags C_* of bpf/paritybed.h)."""
    sets = [frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), frozenset(b"abcdefghijklmnopqrstuvwxyz"),
            frozenset(b"0123456789"), ID_CHARS, VALUE_CHARS, PNAME_CHARS, CLAIM_CHARS, OP_CHARS, TCHARS,
            VCHARS, HVAL_CHARS, frozenset(OWS), LETTERS]
    return [sum(1 << bit for bit, s in enumerate(sets) if c in s) for c in range(256)]


def _target(method: str, t: bytes, base: bytes) -> tuple[str, str, str | None]:
    """Walk the request target: (family or '', resource type or '', form or None)."""
    system = ("bundle" if method == "POST" else "type-param", "", None)
    if not t.startswith(base):
        return "not-fhir", "", None
    i, n = len(base), len(t)
    if i == n or t[i] == ord("?"):
        return system
    if t[i] != ord("/"):
        return "not-fhir", "", None
    i += 1
    if i == n or t[i] == ord("?"):
        return system
    c = t[i]
    if c == ord("$"):
        return _op(t, i + 1), "", None
    if c == ord("%"):
        return "encoded", "", None
    if c not in LETTERS:
        return "malformed", "", None
    # the type segment
    j, bad = i, False
    while j < n and t[j] not in b"/?":
        if t[j] == ord("%"):
            return "encoded", "", None
        bad |= t[j] not in LETTERS
        j += 1
    name = t[i:j].decode("latin-1")
    if bad or len(name) > TYPE_MAX or name not in TYPE_ID:
        return "unknown-type", "", None
    rtype, form, i = name, _TYPE, j
    if i == n:
        return "", rtype, form
    if t[i] == ord("?"):
        return ("" if method == "GET" else "param"), rtype, form  # the query is checked by the caller
    i += 1  # '/' -> the id segment
    fam, i = _id_segment(t, i, first_special=True)
    if fam:
        return fam, rtype, form
    form = _ID
    if i == n:
        return "", rtype, form
    if t[i] == ord("?"):
        return "param", rtype, form
    i += 1  # '/' -> the segment after the id
    c = t[i] if i < n else None
    if c == ord("$"):
        return _op(t, i + 1), rtype, form
    if c == ord("%"):
        return "encoded", rtype, form
    if c is not None and c in LETTERS:
        return "compartment", rtype, form
    if c != ord("_"):
        return "malformed", rtype, form
    j = i
    while j < n and t[j] not in b"/?":
        if t[j] == ord("%"):
            return "encoded", rtype, form
        j += 1
    if t[i:j] != b"_history":
        return "malformed", rtype, form
    form, i = _HIST, j
    if i == n:
        return "", rtype, form
    if t[i] == ord("?"):
        return "param", rtype, form
    fam, i = _id_segment(t, i + 1, first_special=False)
    if fam:
        return fam, rtype, form
    form = _VREAD
    if i == n:
        return "", rtype, form
    return ("param" if t[i] == ord("?") else "malformed"), rtype, form


def _id_segment(t: bytes, i: int, *, first_special: bool) -> tuple[str, int]:
    """An id (or version id) segment starting at i: ('', end) or (family, i)."""
    n = len(t)
    c = t[i] if i < n else None
    if c == ord("$") and first_special:
        return _op(t, i + 1), i
    if c == ord("%"):
        return "encoded", i
    if c is None or c not in ID_CHARS:
        return "malformed", i
    j = i
    while j < n and t[j] not in b"/?":
        if t[j] == ord("%"):
            return "encoded", j
        if t[j] not in ID_CHARS:
            return "malformed", j
        if j - i + 1 > ID_MAX:
            return "malformed", j
        j += 1
    return "", j


def _op(t: bytes, i: int) -> str:
    """An operation segment ($name): graphql gets its own family."""
    n, j = len(t), i
    while j < n and t[j] not in b"/?":
        if t[j] == ord("%"):
            return "encoded"
        if t[j] not in OP_CHARS:
            return "malformed"
        j += 1
    return "graphql" if t[i:j].lower() == b"graphql" else "operation"


def _query(q: bytes) -> str:
    """The query of GET /TYPE?...: '' when every pair is plain, else the first family."""
    i, n = 0, len(q)
    while True:
        j, colon, dot = i, -1, False
        while True:  # the name
            if j == n or q[j] == ord("&"):
                return "malformed"  # no '='
            c = q[j]
            if c == ord("%"):
                return "encoded"
            if c == ord("="):
                break
            if c not in PNAME_CHARS:
                return "malformed"
            if c == ord(":") and colon < 0:
                colon = j
            dot |= c == ord(".")
            j += 1
        name = q[i:j].decode()
        if not name:
            return "malformed"
        base = name[: colon - i] if colon >= 0 else name
        if base in SPECIAL_PARAMS:
            return SPECIAL_PARAMS[base]
        if dot:
            return "chained"
        if colon >= 0 or name not in SAFE_PARAMS:
            return "param"
        j += 1
        k = j
        while k < n and q[k] != ord("&"):  # the value
            c = q[k]
            if c in b"%+":
                return "encoded"
            if c not in VALUE_CHARS or k - j + 1 > VALUE_MAX:
                return "malformed"
            k += 1
        if k == n:
            return ""
        i = k + 1


def _headers(lines: list[bytes]) -> tuple[bool, dict]:
    """Header lines -> (syntax ok, facts).  Facts: n_cl, cl_bad, cl, te, override, claims."""
    f = {"n_cl": 0, "cl_bad": False, "cl": 0, "te": False, "override": False, "claims": [], "claim_bad": False}
    for line in lines:
        k = line.find(b":")
        if k <= 0 or any(c not in TCHARS for c in line[:k]) or any(c not in HVAL_CHARS for c in line[k + 1:]):
            return False, f
        name, value = line[:k].lower().decode(), line[k + 1:].strip(OWS)
        if name == "content-length":
            f["n_cl"] += 1
            if 1 <= len(value) <= 9 and value.isdigit():
                f["cl"] = int(value)
            else:
                f["cl_bad"] = True
        elif name == "transfer-encoding":
            f["te"] = True
        elif name in OVERRIDE_HEADERS:
            f["override"] = True
        elif name == CLAIM_HEADER:
            f["claims"].append(value.decode())
            f["claim_bad"] |= not (1 <= len(value) <= CLAIM_MAX and all(c in CLAIM_CHARS for c in value))
    return True, f


def classify(raw: bytes, base: str = "/fhir") -> Classification:
    """Classify one write (the first on its socket, or one after a complete request)."""
    end = raw.find(b"\r\n\r\n", 0, HDR_MAX)
    if end < 0:
        return Classification("too-large" if len(raw) >= HDR_MAX else "split")
    head_end = end + 4
    lines = raw[:end].split(b"\r\n")
    bad = any(b"\r" in x or b"\n" in x for x in lines)
    parts = lines[0].split(b" ")
    if bad or len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1] or any(c not in VCHARS for c in parts[1]):
        return Classification("malformed")
    method = parts[0].decode("latin-1")
    ok, h = _headers(lines[1:])
    if method not in METHODS or not ok or h["claim_bad"] or len(h["claims"]) > 1:
        return Classification("malformed")
    claim = h["claims"][0] if h["claims"] else None
    fam, rtype, form = _target(method, parts[1], base.encode())
    if not fam and form == _TYPE and b"?" in parts[1]:
        fam = _query(parts[1].split(b"?", 1)[1])
    inter = "" if not rtype else _GET_FORM[form] if method == "GET" else _WRITE[method]
    if not fam and (method, form) not in _PLAIN:
        fam = "malformed"
    cl = h["cl"] if h["n_cl"] == 1 and not h["cl_bad"] else 0
    rest = len(raw) - head_end
    framing = ("method-override" if h["override"] else "chunked" if h["te"] else
               "length" if (h["n_cl"] > 1 or h["cl_bad"] or (method in ("POST", "PUT") and h["n_cl"] == 0)
                            or (method in ("GET", "DELETE") and cl != 0)) else
               "pipelined" if rest > cl else "")
    shape = framing or fam or "plain"
    if shape == "malformed":
        return Classification("malformed", method=method, claim=claim)
    return Classification(shape, rtype, inter, method, claim, max(cl - rest, 0))


class Stream:
    """Per-socket classification: a body announced by Content-Length may follow in later writes.

    ``feed`` returns the classification of a write, or None for a write that only carries body
    bytes still expected (passed without a decision).  ``commit(c)`` records that the request
    was allowed (only then are its remaining body bytes expected).  A write that brings more
    than the expected body is ``pipelined``; if it is denied the expectation stays, so the
    kernel and the server never disagree on where the next request starts."""

    def __init__(self, base: str = "/fhir") -> None:
        self.base = base
        self.body_left = 0
        self._pending: int | None = None  # body bytes to expect if the last decision allows

    def feed(self, write: bytes) -> Classification | None:
        if self.body_left:
            if len(write) <= self.body_left:
                self.body_left -= len(write)
                self._pending = None
                return None
            self._pending = 0  # allowed anyway (alert/observe): the kernel stops tracking the body
            return Classification("pipelined")
        c = classify(write, self.base)
        self._pending = c.body_left
        return c

    def commit(self, allowed: bool) -> None:
        if allowed and self._pending is not None:
            self.body_left = self._pending
        self._pending = None


def request_bytes(method: str, target: str, *, host: str = "fhir", claim: str | None = None,
                  body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """A plain HTTP/1.1 request as the mock agents send it (one write)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if claim:
        lines.append(f"X-Break-Glass-Claim: {claim}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
