"""Profiles: the AuditEvent path gives the trace path's numbers, keeps no identifiers, validates."""

from __future__ import annotations

import json
import sys

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


def cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    from paritybed import cli as c

    monkeypatch.setattr(sys, "argv", ["paritybed", *args])
    code = 0
    try:
        c.main()
    except SystemExit as e:
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_profile_command_writes_the_same_profile(tmp_path, arms, monkeypatch, capsys):
    ae = tmp_path / "audit.ndjson"
    write_ndjson(auditevents_from_trace(arms[0], START), ae)
    code, text = cli(["profile", str(ae), "--out", str(tmp_path / "profile.json")], monkeypatch, capsys)
    assert code == 0, text
    assert "agent classes" in text
    got = json.loads((tmp_path / "profile.json").read_text())
    assert got["schema"] == "paritybed.profile/1" and got["source"] == "auditevent"
    code, text = cli(["profile", str(tmp_path / "nope.ndjson"), "--out", str(tmp_path / "p.json")], monkeypatch, capsys)
    assert code == 2 and "no such AuditEvent export" in text
