"""The strict classifier (enforcer/classify.py): every unclassifiable family, precedence, the
per-socket body state, and the tables the kernel gets from it.

FAMILY_EXAMPLES is also sent through the kernel parser by tests/test_kernel_classify.py.
"""

from __future__ import annotations

import pytest

from paritybed.enforcer import classify as C
from paritybed.enforcer.policy import SHAPES

H = "HTTP/1.1\r\nHost: fhir\r\n\r\n"

FORM = "Content-Type: application/x-www-form-urlencoded\r\n"


def post_search(body: str, target: str = "/fhir/Observation/_search") -> str:
    return f"POST {target} HTTP/1.1\r\n{FORM}Content-Length: {len(body)}\r\n\r\n{body}"


#: (request, shape, resource type, interaction): at least one per shape, attacker's view first
FAMILY_EXAMPLES: list[tuple[str, str, str, str]] = [
    # plain requests of every interaction and form
    (f"GET /fhir/Observation?patient=p1&category=laboratory&_count=50 {H}", "plain", "Observation", "search"),
    (f"GET /fhir/Patient/p-1 {H}", "plain", "Patient", "read"),
    (f"HEAD /fhir/Patient/p-1 {H}", "plain", "Patient", "read"),
    (f"GET /fhir/Patient/p-1/_history/2 {H}", "plain", "Patient", "vread"),
    (f"GET /fhir/Patient/p-1/_history {H}", "plain", "Patient", "history"),
    (f"GET /fhir/Patient/_history?_since=2024-01-01 {H}", "plain", "Patient", "history"),
    ("POST /fhir/Observation HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "plain", "Observation", "create"),
    ("PUT /fhir/Observation/o1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "plain", "Observation", "update"),
    (f"DELETE /fhir/Observation/o1 {H}", "plain", "Observation", "delete"),
    (f"GET /fhir/Observation?code=http://loinc.org|8867-4&date=ge2024-01-01&_sort=-date {H}", "plain", "Observation", "search"),
    (f"GET /fhir/Observation?code=http%3A%2F%2Floinc.org%7C8867-4&subject=Patient%2Fp1 {H}", "plain", "Observation", "search"),
    (f"GET /fhir/Encounter?date=ge2022-01-01T00%3A00%3A00%2B01%3A00&patient=p1 {H}", "plain", "Encounter", "search"),
    (f"GET /fhir/Patient?name=peter+pan&birthdate=ge1980 {H}", "plain", "Patient", "search"),
    (f"GET /fhir/Observation?code:text=x&patient=p1 {H}", "plain", "Observation", "search"),
    (f"GET /fhir/Observation?_elements=id&_summary=true&_format=json&patient=p1 {H}", "plain", "Observation", "search"),
    (f"GET /fhir/Patient/p1?_format=xml {H}", "plain", "Patient", "read"),
    (f"GET /fhir/Observation?_include=Observation:patient&patient=p1 {H}", "plain", "Observation", "search"),
    (f"GET /fhir/Encounter?_revinclude:iterate=Observation:encounter&patient=p1 {H}", "plain", "Encounter", "search"),
    (f"GET /fhir/Patient/p1/Observation {H}", "plain", "Observation", "search"),
    (f"GET /fhir/Observation?subject:Patient.name=peter {H}", "plain", "Observation", "search"),
    (f"GET /fhir/Patient?_has:Observation:patient:code=1234 {H}", "plain", "Patient", "search"),
    (post_search("patient=p1&code=8867-4&_count=5"), "plain", "Observation", "search"),
    # bundle: batch/transaction to the base reads anything
    ("POST /fhir HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "bundle", "", ""),
    ("POST /fhir/ HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "bundle", "", ""),
    # operations: $everything, bulk export, anything with $
    (f"GET /fhir/Patient/p1/$everything {H}", "operation", "Patient", "read"),
    (f"GET /fhir/$export {H}", "operation", "", ""),
    (f"GET /fhir/Group/g1/$export?_type=Patient {H}", "operation", "Group", "read"),
    ("POST /fhir/Patient/$match HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "operation", "Patient", "create"),
    # GraphQL (any case: servers may not care)
    (f"GET /fhir/$graphql?query=x {H}", "graphql", "", ""),
    (f"GET /fhir/Patient/p1/$GraphQL {H}", "graphql", "Patient", "read"),
    # includes whose types cannot be bounded
    (f"GET /fhir/Observation?_include=* {H}", "include", "Observation", "search"),
    (f"GET /fhir/Observation?_include=Observation:* {H}", "include", "Observation", "search"),
    (f"GET /fhir/Observation?_include=Observation:code {H}", "include", "Observation", "search"),
    # compartments the specification does not define
    (f"GET /fhir/Patient/p1/* {H}", "compartment", "Patient", "read"),
    (f"GET /fhir/Patient/p1/Organization {H}", "compartment", "Patient", "read"),
    # chains that go on through several types at once
    (f"GET /fhir/Observation?subject.organization.name=x {H}", "chained", "Observation", "search"),
    # _type: a system or type search over other types
    (f"GET /fhir/Observation?_type=Patient {H}", "type-param", "Observation", "search"),
    (f"GET /fhir?_type=Patient,Observation {H}", "type-param", "", ""),
    (f"GET /fhir {H}", "type-param", "", ""),
    (f"GET /fhir/_history {H}", "type-param", "", ""),
    # _has with a chain inside
    (f"GET /fhir/Patient?_has:Observation:patient:subject.name=x {H}", "has", "Patient", "search"),
    # parameters the type does not have, modifiers that do not apply, queries where none is allowed
    (f"GET /fhir/Patient?nickname=peter {H}", "param", "Patient", "search"),
    (f"GET /fhir/Observation?code:exact=x {H}", "param", "Observation", "search"),
    (f"GET /fhir/Observation?subject:Medication=x {H}", "param", "Observation", "search"),
    (f"GET /fhir/Patient/p1?name=x {H}", "param", "Patient", "read"),
    ("POST /fhir/Observation?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "param", "Observation", "create"),
    # what cannot be known from the request
    (f"GET /fhir/Observation?_list=l1 {H}", "special", "Observation", "search"),
    (f"GET /fhir/Observation?_contained=true {H}", "special", "Observation", "search"),
    (f"GET /fhir/Observation?_filter=code%20eq%20x {H}", "special", "Observation", "search"),
    # HAPI's page links: no type in the request
    (f"GET /fhir?_getpages=abc-123&_getpagesoffset=20&_count=20&_bundletype=searchset {H}", "paging", "", ""),
    # method override headers
    ("GET /fhir/Patient/p1 HTTP/1.1\r\nX-HTTP-Method-Override: DELETE\r\n\r\n", "method-override", "Patient", "read"),
    ("GET /fhir/Patient/p1 HTTP/1.1\r\nx-method-override: PUT\r\n\r\n", "method-override", "Patient", "read"),
    ("GET /fhir/Patient/p1 HTTP/1.1\r\nX-HTTP-Method: PATCH\r\n\r\n", "method-override", "Patient", "read"),
    # percent-encoding in the path, and double encoding anywhere
    (f"GET /fhir/%50atient/p1 {H}", "encoded", "", ""),
    (f"GET /fhir/Patient/p%31 {H}", "encoded", "Patient", "search"),
    (f"GET /fhir/Observation?code=%2541 {H}", "encoded", "Observation", "search"),
    (f"GET /fhir/Observation?%255Finclude=x {H}", "encoded", "Observation", "search"),
    # malformed: syntax, dot segments, doubled slashes, other methods and versions, bad claims
    (f"PATCH /fhir/Patient/p1 {H}", "malformed", "", ""),
    ("GET /fhir/Patient/p1 HTTP/1.0\r\n\r\n", "malformed", "", ""),
    (f"GET /fhir//Patient/p1 {H}", "malformed", "", ""),
    (f"GET /fhir/Patient/../Observation {H}", "malformed", "", ""),
    (f"GET /fhir/Patient/./p1 {H}", "malformed", "", ""),
    (f"GET /fhir/Patient/p1/_search {H}", "malformed", "", ""),
    (f"POST /fhir/Patient/p1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}", "malformed", "", ""),
    ("GET /fhir/Patient/p1 HTTP/1.1\r\n Folded: x\r\n\r\n", "malformed", "", ""),
    ("GET /fhir/Patient/p1 HTTP/1.1\r\nHost : x\r\n\r\n", "malformed", "", ""),
    ("GET /fhir/Patient/p1 HTTP/1.1\nHost: x\r\n\r\n", "malformed", "", ""),
    ("GET /fhir/Patient/p1 HTTP/1.1\r\nX-Break-Glass-Claim: a\r\nX-Break-Glass-Claim: b\r\n\r\n", "malformed", "", ""),
    ("GET /fhir/Patient/p1 HTTP/1.1\r\nX-Break-Glass-Claim: a b\r\n\r\n", "malformed", "", ""),
    ("GET /fhir/Patient/p1 HTTP/1.1\r\nX-Launch-Context: a\r\nX-Launch-Context: b\r\n\r\n", "malformed", "", ""),
    ("GET /fhir/Patient/" + "a" * 65 + " HTTP/1.1\r\n\r\n", "malformed", "", ""),
    (f"GET /fhir/Observation?patient {H}", "malformed", "", ""),
    (f"GET /fhir/Observation?code=%4 {H}", "malformed", "", ""),
    (f"GET /fhir/Observation?pati%20ent=x {H}", "malformed", "", ""),
    (post_search("patient=p1").replace(FORM, ""), "malformed", "", ""),
    # pipelining: bytes after the request in the same write
    (f"GET /fhir/Patient/p1 {H}GET /fhir/Patient/p2 {H}", "pipelined", "Patient", "read"),
    ("POST /fhir/Observation HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /fhir/Patient/p2 HTTP/1.1\r\n\r\n",
     "pipelined", "Observation", "create"),
    # chunked bodies hide their length
    ("POST /fhir/Observation HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "chunked",
     "Observation", "create"),
    # lengths: conflicting, missing, invalid, body on GET
    ("POST /fhir/Observation HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}", "length", "Observation", "create"),
    ("POST /fhir/Observation HTTP/1.1\r\n\r\n", "length", "Observation", "create"),
    ("POST /fhir/Observation HTTP/1.1\r\nContent-Length: 1,2\r\n\r\n{}", "length", "Observation", "create"),
    ("GET /fhir/Patient/p1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "length", "Patient", "read"),
    # a head spread over writes, or too large to look at; a search form that did not come with its head
    ("GET /fhir/Patient/p1 HTTP/1.1\r\nHost: fhir\r\n", "split", "", ""),
    # a form body over BODY_MAX not all in the head's write (one within BODY_MAX is held: Stream)
    (post_search("patient=p1&_count=" + "1" * 5000)[:-3], "split", "Observation", "search"),
    ("GET /fhir/Patient HTTP/1.1\r\nX-Pad: " + "a" * 16400 + "\r\n\r\n", "too-large", "", ""),
    # types: unknown names, wrong case, R4B-only names
    (f"GET /fhir/Foo/1 {H}", "unknown-type", "", ""),
    (f"GET /fhir/patient/p1 {H}", "unknown-type", "", ""),
    (f"GET /fhir/SubscriptionTopic?_id=x {H}", "unknown-type", "", ""),
    (f"GET /fhir/Patient1/p1 {H}", "unknown-type", "", ""),
    (f"GET /fhir/metadata {H}", "unknown-type", "", ""),
    # outside the FHIR base
    (f"GET /admin {H}", "not-fhir", "", ""),
    (f"GET /fhirx/Patient/p1 {H}", "not-fhir", "", ""),
    (f"GET http://fhir/fhir/Patient/p1 {H}", "not-fhir", "", ""),
]

#: (request, touches): what a request touches, primary first
TOUCH_EXAMPLES: list[tuple[str, list[str]]] = [
    (f"GET /fhir/Observation?_include=Observation:patient&patient=p1 {H}", ["Observation:search", "Patient:read"]),
    (f"GET /fhir/Observation?_include=Observation:subject:Group {H}", ["Observation:search", "Group:read"]),
    (f"GET /fhir/Observation?_include=Observation:subject {H}",
     ["Observation:search", "Device:read", "Group:read", "Location:read", "Patient:read"]),
    (f"GET /fhir/Encounter?_revinclude=Observation:encounter&patient=p1 {H}", ["Encounter:search", "Observation:search"]),
    (f"GET /fhir/Observation?subject:Patient.organization.name=x {H}",
     ["Observation:search", "Organization:search", "Patient:search"]),
    (f"GET /fhir/Observation?encounter.service-provider.name=x {H}",
     ["Observation:search", "Encounter:search", "Organization:search"]),
    (f"GET /fhir/Patient?_has:Observation:patient:_has:Provenance:target:agent=x {H}",
     ["Patient:search", "Observation:search", "Provenance:search"]),
    (f"GET /fhir/Observation?code:in=http://vs/1&patient=p1 {H}", ["Observation:search", "ValueSet:read"]),
    (f"GET /fhir/Patient/p1/Encounter?_include=Encounter:service-provider {H}", ["Encounter:search", "Organization:read"]),
    (post_search("patient=p1&_include=Observation:performer:Practitioner"), ["Observation:search", "Practitioner:read"]),
]

#: (request, patients, encounters, unknown patient): what a request names
NAME_EXAMPLES: list[tuple[str, list[str], list[str], bool]] = [
    (f"GET /fhir/Patient/p1 {H}", ["p1"], [], False),
    (f"GET /fhir/Observation?patient=p1&encounter=e1 {H}", ["p1"], ["e1"], False),
    (f"GET /fhir/Observation?subject=Patient%2Fp1 {H}", ["p1"], [], False),
    (f"GET /fhir/Observation?subject:Patient=p1,p2 {H}", ["p1", "p2"], [], False),
    (f"GET /fhir/Observation?subject=Group/g1 {H}", [], [], False),
    (f"GET /fhir/Patient?_id=p1 {H}", ["p1"], [], False),
    (f"GET /fhir/Encounter?_id=e1 {H}", [], ["e1"], False),
    (f"GET /fhir/Patient/p1/Observation {H}", ["p1"], [], False),
    (f"GET /fhir/Observation/o1 {H}", [], [], False),
    (f"GET /fhir/Patient?name=smith {H}", [], [], True),
    (f"GET /fhir/Encounter?status=finished {H}", [], [], True),
    (f"GET /fhir/Observation?patient.name=smith {H}", [], [], True),
    (f"GET /fhir/Observation?patient:identifier=urn:mrn|123 {H}", [], [], True),
    (f"GET /fhir/Observation?subject=http://other/fhir/Patient/p1 {H}", [], [], True),
    (f"GET /fhir/Observation?patient:missing=true {H}", [], [], False),
    (f"GET /fhir/Observation?patient=Patient/p1/_history/2 {H}", [], [], True),
]

#: requests that would smuggle another type past a parser that allowed the forms above
EVASIONS: list[tuple[str, str]] = [
    (f"GET /fhir/Observation?_include=Observation%3Apatient%253APatient {H}", "encoded"),
    (f"GET /fhir/Observation?_include=Observation:patient:Practitioner {H}", "include"),
    (f"GET /fhir/Observation?_include=Observation:patient,Observation:performer {H}", "include"),
    (f"GET /fhir/Observation?subject%3APatient.name=x {H}", "plain"),  # decoded once: the same as the raw form
    (f"GET /fhir/Observation?subject%253APatient.name=x {H}", "encoded"),
    (f"GET /fhir/Observation?subject:Patien%74.name=x {H}", "plain"),  # a name decoded once
    (f"GET /fhir/Patient/p1/./Observation {H}", "malformed"),
    (f"GET /fhir/Patient/p1/%4Fbservation {H}", "encoded"),
    (f"GET /fhir/Patient/p1/Observation/o1 {H}", "compartment"),
    (f"GET /fhir?_getpages=x&_type=Patient {H}", "type-param"),
    (f"GET /fhir?_getpages=x#Patient {H}", "malformed"),
    (f"GET /fhir/Observation?_has:Patient%3Aorganization:nam%65=x {H}", "plain"),  # touches Patient search
    (f"GET /fhir/Observation?_revinclude=* {H}", "include"),
    (f"GET /fhir/Observation?_include:recurse=Observation:has-member {H}", "plain"),
    (f"GET /fhir/Observation/_search?_include=Observation:patient {H}", "plain"),
    # a reference parameter without declared targets (a canonical): what it reaches is unknown
    (f"GET /fhir/RequestGroup?_include=RequestGroup:instantiates-canonical {H}", "include"),
    (f"GET /fhir/RequestGroup?instantiates-canonical.name=x {H}", "param"),
    (f"GET /fhir/RequestGroup?_revinclude=RequestGroup:instantiates-canonical {H}", "include"),
]


@pytest.mark.parametrize("raw,shape,rtype,inter", FAMILY_EXAMPLES, ids=[f"{i}-{e[1]}" for i, e in enumerate(FAMILY_EXAMPLES)])
def test_family_examples(raw: str, shape: str, rtype: str, inter: str) -> None:
    c = C.classify(raw.encode("latin-1"))
    assert (c.shape, c.resource_type, c.interaction) == (shape, rtype, inter)


def test_every_family_has_an_example() -> None:
    assert {e[1] for e in FAMILY_EXAMPLES} == set(SHAPES) | {"plain"}


@pytest.mark.parametrize("raw,touches", TOUCH_EXAMPLES)
def test_touches(raw: str, touches: list[str]) -> None:
    c = C.classify(raw.encode("latin-1"))
    assert c.plain and [f"{t}:{i}" for t, i in c.touches] == touches


@pytest.mark.parametrize("raw,patients,encounters,unknown", NAME_EXAMPLES)
def test_what_a_request_names(raw: str, patients: list[str], encounters: list[str], unknown: bool) -> None:
    c = C.classify(raw.encode("latin-1"))
    assert (list(c.patients), list(c.encounters), c.unknown_patient) == (patients, encounters, unknown)


@pytest.mark.parametrize("raw,shape", EVASIONS)
def test_evasions(raw: str, shape: str) -> None:
    c = C.classify(raw.encode("latin-1"))
    assert c.shape == shape
    if shape == "plain":  # what it touches is what it says: nothing beyond the grammar's reading
        assert all(t in C.R4_TYPES for t, _ in c.touches)


def test_framing_comes_before_the_target() -> None:
    """Allowing a target family must never admit a request whose framing could hide another."""
    cases = {
        "GET /fhir/Patient/1/$everything HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n": "chunked",
        f"GET /fhir/Observation?_include=x {H}GET /fhir/Patient/1 {H}": "pipelined",
        "GET /fhir/Patient/1/$everything HTTP/1.1\r\nX-HTTP-Method-Override: DELETE\r\nTransfer-Encoding: x\r\n\r\n": "method-override",
        "GET /fhir/Patient/1/$everything HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc": "length",
        "PATCH /fhir/Patient/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n": "malformed",  # syntax first
    }
    for raw, shape in cases.items():
        assert C.classify(raw.encode()).shape == shape, raw


def test_first_deviation_in_the_target_wins() -> None:
    assert C.classify(f"GET /fhir/Foo/1/$everything {H}".encode()).shape == "unknown-type"
    assert C.classify(f"GET /fhir/Patient/1/$every%74hing {H}".encode()).shape == "encoded"
    assert C.classify(f"GET /fhir/Observation?nickname=x&_include=y {H}".encode()).shape == "param"
    assert C.classify(f"GET /fhir/Observation?_include=y&nickname=x {H}".encode()).shape == "include"


def test_head_limit_is_exact() -> None:
    line = "GET /fhir/Patient HTTP/1.1\r\nX-Pad: "
    pad = C.HDR_MAX - len(line) - 4
    assert C.classify((line + "a" * pad + "\r\n\r\n").encode()).shape == "plain"
    assert C.classify((line + "a" * (pad + 1) + "\r\n\r\n").encode()).shape == "too-large"
    assert C.classify(b"GET /fhir/Patient HTTP/1.1\r\n").shape == "split"


def test_claim_and_body_left() -> None:
    c = C.classify(b"POST /fhir/Observation HTTP/1.1\r\nX-Break-Glass-Claim:  code-blue:7 \r\nContent-Length: 10\r\n\r\n{}")
    assert (c.shape, c.claim, c.body_left) == ("plain", "code-blue:7", 8)


def test_stream_body_in_later_writes() -> None:
    s = C.Stream()
    c = s.feed(b"POST /fhir/Observation HTTP/1.1\r\nContent-Length: 6\r\n\r\n{}")
    assert c is not None and c.plain and c.body_left == 4
    s.commit(True)
    assert s.feed(b"{}") is None  # body bytes: passed without a decision
    c = s.feed(b"{}GET /fhir/Patient/1 HTTP/1.1\r\n\r\n")  # the rest of the body plus a smuggled request
    assert c is not None and c.shape == "pipelined"
    s.commit(False)  # denied: the server still waits for 2 body bytes, and so do we
    assert s.body_left == 2
    assert s.feed(b"{}") is None
    c = s.feed(f"GET /fhir/Patient/1 {H}".encode())
    assert c is not None and c.plain


def test_stream_holds_a_search_head_for_its_form_body() -> None:
    """requests (http.client) writes a str body apart from its head: the head of a POST _search is
    held until its form body is written, then the two are one request (the kernel corks them)."""
    raw = post_search("patient=p1&code=8867-4").encode()
    head, body = raw[:-10], raw[-10:]
    assert C.classify(head).shape == "split" and C.classify(head).hold == len(raw)
    s = C.Stream()
    assert s.feed(head) is None  # held: no decision yet
    assert s.feed(body[:4]) is None  # still short of the announced length
    c = s.feed(body[4:])
    assert c is not None and c.plain and c.touches == (("Observation", "search"),) and c.patients == ("p1",)
    s.commit(True)
    assert s.body_left == 0
    c = s.feed(f"GET /fhir/Patient/1 {H}".encode())
    assert c is not None and c.plain
    # the write that completes the body brings a second request: pipelined, as in one write
    s = C.Stream()
    assert s.feed(head) is None
    c = s.feed(body + b"GET /fhir/Patient/1 HTTP/1.1\r\n\r\n")
    assert c is not None and c.shape == "pipelined"


def test_denied_request_sets_no_body_state() -> None:
    s = C.Stream()
    s.feed(b"POST /fhir/Observation HTTP/1.1\r\nContent-Length: 60\r\n\r\n")
    s.commit(False)
    c = s.feed(b"GET /fhir/Patient/1 HTTP/1.1\r\n\r\n")  # parsed as a request, not swallowed as body
    assert c is not None and c.shape == "plain"


def test_fnv1a64_reference_vectors() -> None:
    assert C.fnv1a64(b"") == 0xCBF29CE484222325
    assert C.fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert C.fnv1a64("foobar") == 0x85944171F73967E8


def test_pack_words_is_the_kernel_shift_register() -> None:
    words = [0, 0, 0]
    for b in b"content-length":
        words[2] = ((words[2] << 8) | (words[1] >> 56)) & (2**64 - 1)
        words[1] = ((words[1] << 8) | (words[0] >> 56)) & (2**64 - 1)
        words[0] = ((words[0] << 8) | b) & (2**64 - 1)
    assert C.pack_words(b"content-length", 3) == words


def test_tables() -> None:
    assert len(C.R4_TYPES) == len(set(C.R4_TYPES)) == 146
    assert max(map(len, C.R4_TYPES)) <= C.TYPE_MAX
    assert "MedicinalProductUndesirableEffect" in C.R4_TYPES and "SubscriptionTopic" not in C.R4_TYPES
    cls = C.char_classes()
    assert cls[ord("%")] & (1 << 5) == 0  # '%' is never a name character
    assert all(cls[c] == (1 << 10) for c in range(0x80, 0x100))  # header values only (UTF-8)


def test_request_bytes_are_plain() -> None:
    raw = C.request_bytes("POST", "/fhir/Observation", claim="cb-1", body=b'{"resourceType":"Observation"}')
    c = C.classify(raw)
    assert (c.shape, c.resource_type, c.interaction, c.claim) == ("plain", "Observation", "create", "cb-1")


def test_other_base() -> None:
    assert C.classify(f"GET /baseR4/Patient/1 {H}".encode(), "/baseR4").plain
    assert C.classify(f"GET /fhir/Patient/1 {H}".encode(), "/baseR4").shape == "not-fhir"


def test_the_mock_agents_requests_classify_as_their_trace_rows_say() -> None:
    """The live-mode contract: every request the agents build (agents/requests.py), written as
    the live worker writes it (agents/live.py), is plain with the trace row's type/interaction."""
    from paritybed.agents.live import request_bytes
    from paritybed.agents.requests import Requests

    class Recorder:
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def request(self, **kw: str) -> int:
            self.rows.append(kw)
            return len(self.rows) - 1

    em = Recorder()
    req = Requests(em)  # type: ignore[arg-type]
    pid = "8f3c7a2e-1b9d-4e6f-a0c5-3d2e1f0a9b8c"
    req.pages("Observation", [("patient", pid), ("category", "vital-signs")], total=120, page_size=50, max_pages=3)
    req.by_patient("Patient", pid, 1, 50, 1)
    req.read("DiagnosticReport", "dr-17")
    req.create("DocumentReference")
    req.update("Encounter", "enc-1")
    for inter in ("read", "vread", "history", "delete", "update", "create", "search"):
        req.interaction("Condition", inter, pid, ["c-9"])
    assert len(em.rows) >= 12
    for row in em.rows:
        body = b"{}" if row["method"] in ("POST", "PUT") else b""
        c = C.classify(request_bytes(row["method"], row["path"], "127.0.0.1:8080", body, "claim-1"))
        assert (c.shape, c.resource_type, c.interaction) == ("plain", row["resource_type"], row["interaction"]), row
