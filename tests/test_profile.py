"""Profiles: the AuditEvent path gives the trace path's numbers, keeps no identifiers, validates."""

from __future__ import annotations

import json

import pytest

from paritybed.core.errors import InputError
from paritybed.parity import synthetic as sy
from paritybed.parity.auditevent import (
    auditevents_from_trace,
    instant,
    parse_instant,
    profile_from_auditevents,
    write_ndjson,
)
from paritybed.parity.criteria import criteria
from paritybed.parity.profile import load_profile, profile_from_trace, save_profile

START = sy.scenario().start.datetime()


@pytest.fixture(scope="module")
def arms():
    prod = sy.make_trace("production", days=2, seed=1, attacks=True)
    stag = sy.make_trace("staging", days=2, seed=2, break_glass="drill", omit=(("cds", "DiagnosticReport"),))
    return prod, stag


def test_instants_round_trip_to_the_nanosecond():
    origin = 1_767_571_200_000_000_000  # 2026-01-05T00:00:00Z
    for t in (0, 1, 999_999_999, 3_600_000_000_123):
        s = instant(origin, t)
        assert parse_instant(s) == origin + t
    assert parse_instant("2026-01-05T01:00:00+01:00") == origin
    assert parse_instant("2026-01-05T00:00:00.5Z") == origin + 500_000_000


def test_auditevent_export_to_profile_gives_the_trace_path_criteria(tmp_path, arms):
    prod, stag = arms
    path = tmp_path / "audit.ndjson"
    n = write_ndjson(auditevents_from_trace(prod, START), path)
    assert n == sum(1 for e in prod["expected"].to_pylist() if e != "deny")
    from_ae = profile_from_auditevents(path)
    from_trace = profile_from_trace(prod, START)
    sp = profile_from_trace(stag, START)
    a, b = criteria(sp, from_ae), criteria(sp, from_trace)
    assert a.to_dict() == b.to_dict()
    assert not a.coverage.passed  # and the answer is the real one: DiagnosticReport is missing
    assert from_ae.classes["cds"].pairs == from_trace.classes["cds"].pairs
    assert from_ae.classes["cds"].peak5 == from_trace.classes["cds"].peak5
    assert from_ae.classes["cds"].interarrival_ms == from_trace.classes["cds"].interarrival_ms


def test_profile_keeps_no_identifiers(tmp_path, arms):
    prod, _ = arms
    text = profile_from_trace(prod, START).to_json()
    for col in ("patient_id", "context_id", "resource_id", "claim_id", "identity", "path"):
        values = {v for v in prod[col].to_pylist() if v and len(v) > 2}
        leaked = [v for v in list(values)[:300] if f'"{v}"' in text or v in text]
        assert not leaked, (col, leaked[:3])


def test_auditevents_validate_as_fhir_r4(arms):
    from fhir.resources.R4B.auditevent import AuditEvent

    prod, _ = arms
    evs = list(auditevents_from_trace(prod, START))
    kinds = set()
    sample = evs[:: max(1, len(evs) // 400)] + [e for e in evs if e["type"]["code"] == "egress"][:20]
    for e in sample + [e for e in evs if e["type"]["code"] == "110113"]:
        AuditEvent.model_validate(e)
        kinds.add(e["type"]["code"])
    assert {"rest", "egress", "110113"} <= kinds


def test_profile_file_round_trip_and_errors(tmp_path, arms):
    p = profile_from_trace(arms[0], START)
    save_profile(p, tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json") == p
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    with pytest.raises(InputError, match="not a paritybed profile"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(InputError, match="no such profile"):
        load_profile(tmp_path / "missing.json")


def test_bad_auditevent_export_names_file_and_line(tmp_path):
    f = tmp_path / "x.ndjson"
    f.write_text('{"resourceType": "AuditEvent", "recorded": "2026-01-05T00:00:00Z"}\n{"resourceType": "Patient"}\n')
    with pytest.raises(InputError, match=r"x.ndjson:2: expected a FHIR AuditEvent"):
        profile_from_auditevents(f)
    f.write_text("not json\n")
    with pytest.raises(InputError, match=r"x.ndjson:1: not valid JSON"):
        profile_from_auditevents(f)


def test_profile_command_writes_the_same_profile(tmp_path, arms, paritybed_cli):
    ae = tmp_path / "audit.ndjson"
    write_ndjson(auditevents_from_trace(arms[0], START), ae)
    code, text = paritybed_cli("profile", str(ae), "--out", str(tmp_path / "profile.json"))
    assert code == 0, text
    assert "agent classes" in text
    got = json.loads((tmp_path / "profile.json").read_text())
    assert got["schema"] == "paritybed.profile/1" and got["source"] == "auditevent"
    code, text = paritybed_cli("profile", str(tmp_path / "nope.ndjson"), "--out", str(tmp_path / "p.json"))
    assert code == 2 and "no such AuditEvent export" in text


# ------------------------------------------------------------------ de-identification fails closed
NAME, MRN, PID = "Dr. Jane Q. Smith", "MRN-00012345", "8f14e45f-ceea-467a-9575-8c1b3b2e1a11"
CLIENT = "cds-client-8f14e45f-2731"


def balp_event(i: int, *, kind: str = "rest", role_code: str | None = None, lane: str = "",
               endpoint: str = "embedding-service", rtype: str = "Observation") -> dict:
    """An AuditEvent shaped like IHE BALP's, with a name, an MRN or an id in every field BALP
    uses besides the coded ones the profile needs."""
    t = f"2026-01-05T{7 + i % 10:02d}:{i % 60:02d}:00.{i:03d}Z"
    client = {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150",
                                   "display": f"Application of {NAME}"}]},
              "who": {"identifier": {"system": f"urn:oid:1.2.3.{PID}", "value": CLIENT},
                      "display": f"{NAME}'s CDS assistant"},
              "altId": f"jane.smith@hospital.example.org/{i % 2}", "name": NAME, "requestor": False,
              "network": {"address": "10.20.30.40", "type": "2"}, "policy": [f"urn:uuid:{PID}"],
              "purposeOfUse": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                            "code": "TREAT", "display": f"treatment of {NAME}"}], "text": MRN}]}
    if role_code is not None:
        client["role"] = [{"coding": [{"system": "urn:paritybed:agent-class", "code": role_code}], "text": NAME}]
    if lane:
        client["purposeOfUse"].append({"coding": [{"system": "urn:paritybed:break-glass-class", "code": lane,
                                                   "display": f"Code Blue called by {NAME}"}]})
        client["policy"].append(f"urn:paritybed:break-glass-claim:claim-{PID}")
    user = {"who": {"reference": "Practitioner/pract-00098765", "display": "Dr. John Doe",
                    "identifier": {"value": "npi-1234567890"}},
            "requestor": True, "altId": MRN, "name": "John Doe",
            "role": [{"coding": [{"system": "http://snomed.info/sct", "code": "309343006", "display": "Physician"}],
                      "text": "Attending physician John Doe"}]}
    patient = {"what": {"reference": "Patient/patient-9876543", "display": NAME,
                        "identifier": {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789"}},
               "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
               "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
               "name": NAME, "description": f"chart of {NAME}, {MRN}", "securityLabel": [{"display": NAME}],
               "detail": [{"type": "MRN", "valueString": MRN}, {"type": "patient name", "valueString": NAME},
                          {"type": "query", "valueBase64Binary": "bmFtZT1KYW5lIFNtaXRo"}]}
    ev = {"resourceType": "AuditEvent", "id": f"{PID}-{i}", "recorded": t, "action": "R", "outcome": "0",
          "outcomeDesc": f"{NAME} ({MRN}) opened", "agent": [client, user],
          "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                          "code": "TREAT", "display": f"care of {NAME}"}], "text": f"{NAME} {MRN}"}],
          "source": {"site": "St Mary's Ward 7B, bed of Jane Smith",
                     "observer": {"reference": "Device/hapi-00088234", "display": f"hapi.example.org for {NAME}"},
                     "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                               "display": f"server of {NAME}"}]}}
    if kind == "rest":
        ev["type"] = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                      "display": f"RESTful operation by {NAME}"}
        ev["subtype"] = [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type",
                          "display": f"search by {NAME}"}]
        ev["entity"] = [patient, {"what": {"reference": f"{rtype}/obs-{PID}", "display": f"Hemoglobin of {NAME}"},
                                  "type": {"system": "http://hl7.org/fhir/resource-types", "code": rtype},
                                  "name": f"Lab result for {MRN}", "query": "cGF0aWVudD1wYXRpZW50LTk4NzY1NDM=",
                                  "detail": [{"type": "search", "valueString": f"patient=patient-9876543&name={NAME}"}]},
                        {"what": {"reference": f"Encounter/enc-{PID}", "display": f"ED visit of {NAME}"}}]
    elif kind == "egress":
        ev["type"] = {"system": "urn:paritybed:audit-event-type", "code": "egress", "display": f"egress for {NAME}"}
        ev["entity"] = [{"what": {"identifier": {"system": "urn:paritybed:endpoint", "value": "10.9.8.7:443"},
                                  "display": f"vendor account of {NAME}"}, "name": endpoint,
                         "description": f"sent {MRN}", "detail": [{"type": "payload", "valueString": NAME}]}]
    else:  # break-glass activation
        ev["type"] = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110113",
                      "display": f"Security Alert for {NAME}"}
        ev["subtype"] = [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110127",
                          "display": f"Emergency Override Started by {NAME}"}]
        ev["period"] = {"start": t, "end": t.replace("T", "T").replace(":00.", ":30.")}
        ev["entity"] = [patient]
    return ev


def strings(node, keys: bool = False) -> set[str]:
    """Every string value in a JSON value (and its keys, with ``keys``)."""
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict):
        return (set(node) if keys else set()) | {s for v in node.values() for s in strings(v, keys)}
    if isinstance(node, list):
        return {s for v in node for s in strings(v, keys)}
    return set()


def export(tmp_path, events: list[dict]):
    f = tmp_path / "balp.ndjson"
    f.write_text("".join(json.dumps(e) + "\n" for e in events))
    return f


def test_no_name_or_id_of_any_balp_field_reaches_the_profile(tmp_path, paritybed_cli):
    from paritybed.parity.deid import is_code

    events = [balp_event(i) for i in range(40)] + [balp_event(40 + i, kind="egress") for i in range(3)]
    events += [balp_event(50, kind="lane_open", lane="code_blue"), balp_event(51, lane="code_blue")]
    events.append(balp_event(52, role_code="cds"))  # coded class, no mapping needed
    (tmp_path / "clients.json").write_text(json.dumps({CLIENT: "cds"}))
    src = export(tmp_path, events)
    code, text = paritybed_cli("profile", str(src), "--out", str(tmp_path / "profile.json"),
                               "--agent-classes", str(tmp_path / "clients.json"))
    assert code == 0, text
    out = (tmp_path / "profile.json").read_text()
    prof = json.loads(out)
    cds = prof["classes"]["cds"]
    assert list(prof["classes"]) == ["cds"] and cds["requests"] == 42
    assert cds["pairs"] == {"Observation.search": 41} and cds["egress"] == {"embedding-service": 3}
    assert set(cds["peak5"]) == {"cds#0", "cds#1"}  # replica streams renamed: no client id, no altId
    assert cds["lanes"]["code_blue"]["activations"] == 1 and cds["lanes"]["code_blue"]["pairs"] == {"Observation.search": 1}
    # no input value that is not a code (a name, an MRN, an id, a reference, free text) is in it ...
    inputs = set().union(*(strings(e) for e in events)) | {CLIENT}
    leaked = sorted(s for s in inputs if len(s) > 3 and not is_code(s) and s != "Observation" and s in out)
    assert not leaked, leaked
    # ... and every string it holds is a code, a pair of the R4 vocabulary, a stream pseudonym, a day
    # index or its own field
    kept = strings(prof, keys=True)
    assert all(is_code(s) or s.isdigit() or s in ("paritybed.profile/1", "Observation.search", "2026-01-05", "cds#0", "cds#1")
               for s in kept), sorted(s for s in kept if not is_code(s))
    for fragment in ("Jane", "Smith", "00012345", "9876543", "8f14e45f", "hospital.example", "John", "Practitioner"):
        assert fragment not in out


def test_display_strings_never_stand_for_an_agent_class(tmp_path):
    """Without a mapping or a coded role the events are left out and counted, never classed by
    who.display or who.identifier (the old fallback put a clinician's name into profile.json)."""
    from paritybed.parity.auditevent import read_auditevents

    read = read_auditevents(export(tmp_path, [balp_event(i) for i in range(5)] + [balp_event(9, role_code="cds")]))
    assert read.unclassified == 5 and [r["cls"] for r in read.rows] == ["cds"]
    with pytest.raises(InputError, match="none of its 3 AuditEvents of agent traffic says which agent class") as e:
        profile_from_auditevents(export(tmp_path, [balp_event(i) for i in range(3)]))
    assert "--agent-classes" in (e.value.hint or "")


@pytest.mark.parametrize("event,field", [
    (dict(role_code=NAME), "agent.role (urn:paritybed:agent-class)"),
    (dict(role_code="mrn-00012345"), "agent.role (urn:paritybed:agent-class)"),
    (dict(role_code="cds", lane="Jane Smith"), "purposeOfUse (urn:paritybed:break-glass-class)"),
    (dict(role_code="cds", kind="egress", endpoint="Dr Smith's account"), "entity.name (egress endpoint)"),
    (dict(role_code="cds", rtype="JaneSmith"), "is not an R4 resource type"),
])
def test_a_name_or_id_where_a_code_belongs_is_refused_naming_file_line_and_field(tmp_path, event, field):
    f = export(tmp_path, [balp_event(0, role_code="cds"), balp_event(1, **event)])
    with pytest.raises(InputError) as e:
        profile_from_auditevents(f)
    assert f"balp.ndjson:2: " in e.value.message and field in e.value.message


def test_agent_class_mapping_must_map_to_codes(tmp_path):
    from paritybed.parity.deid import load_agent_classes

    m = tmp_path / "m.json"
    m.write_text(json.dumps({CLIENT: "Dr. Jane Q. Smith"}))
    with pytest.raises(InputError, match=r"the class of client .*expected a code"):
        load_agent_classes(m)
    m.write_text("[]")
    with pytest.raises(InputError, match="expected a JSON object"):
        load_agent_classes(m)
    with pytest.raises(InputError, match="no such agent-class mapping"):
        load_agent_classes(tmp_path / "none.json")


def test_one_request_counts_once_however_many_patients_balp_wrote_it_for(tmp_path):
    """HAPI's BALP writes one AuditEvent per patient whose data a request showed; the profile counts
    the request once (by its request id), and requests with distinct ids each."""
    rid = ("https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "XrequestId")

    def ev(i: int, request: str) -> dict:
        e = balp_event(i, role_code="cds")
        e["entity"].append({"what": {"identifier": {"value": request}}, "type": {"system": rid[0], "code": rid[1]}})
        return e

    events = [ev(0, "req-a"), ev(1, "req-a"), ev(2, "req-a"), ev(3, "req-b"), ev(4, "req-c")]
    prof = profile_from_auditevents(export(tmp_path, events))
    assert prof.classes["cds"].requests == 3 and prof.classes["cds"].pairs == {"Observation.search": 3}


def test_the_gate_measures_staging_gaps_as_production_has_them(arms):
    """An audit trail without contexts gives production gaps between requests; staging's gaps are
    then measured between requests too (not between contexts), so like is compared with like."""
    prod, stag = arms
    by_request = profile_from_trace(stag, START, basis={"cds": "request"})
    by_context = profile_from_trace(stag, START)
    assert by_request.classes["cds"].interarrival_basis == "request"
    assert by_context.classes["cds"].interarrival_basis == "context"
    assert by_request.classes["cds"].interarrival_n > by_context.classes["cds"].interarrival_n
    assert by_request.classes["ambient_scribe"].interarrival_basis == "context"  # only the classes named
