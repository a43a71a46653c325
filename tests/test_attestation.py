"""Audit artefacts: content an auditor relies on, FHIR validity, and tamper evidence."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from paritybed.parity import synthetic as sy
from paritybed.parity.auditlog import verify_log
from paritybed.parity.evaluate import evaluate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("att")
    prod = sy.make_trace("production", days=1, seed=3, attacks=True, hotfix=True)
    stag = sy.make_trace("staging", days=1, seed=4, break_glass="drill")
    (tmp / "s.yaml").write_text("name: s\n")
    evaluate(sy.scenario(), tmp / "s.yaml", prod, stag, tmp / "run")
    return tmp / "run"


def test_minimum_necessary_lists_declared_scope_never_used(run_dir):
    mn = json.loads((run_dir / "attestation" / "minimum_necessary.json").read_text())
    scribe = mn["agents"]["scribe"]
    gap = {(p["type"], p["interaction"]) for p in scribe["declared_not_observed"]}
    assert ("MedicationStatement", "search") in gap and ("MedicationStatement", "read") in gap
    assert ("Patient", "read") not in gap
    assert scribe["gap"] == len(gap)
    assert mn["agents"]["prior-auth"]["declared_scope"] == []  # declares nothing: nothing to subtract
    assert mn["policy"].startswith("sha256:")


def test_ai_bom_joins_endpoints_with_the_registry_version_at_first_contact(run_dir):
    bom = json.loads((run_dir / "attestation" / "ai_bom.json").read_text())
    cds = bom["agents"]["cds"]
    emb = next(e for e in cds["endpoints"] if e["address"] == sy.EMBED)
    assert emb["baa"]["baa_id"] == "BAA-2025-014" and emb["covered_at_first_contact"] and emb["in_policy"]
    assert emb["registry_version_at_first_contact"] == 3
    assert sy.EXFIL in cds["uncovered_endpoints"]
    assert bom["registry"]["version"] == 3


def test_break_glass_log_records_who_what_when_and_until(run_dir):
    recs = [json.loads(x) for x in (run_dir / "attestation" / "break_glass_log.jsonl").read_text().splitlines()]
    assert recs, "production had Code Blue activations"
    r = recs[0]
    assert r["class"] == "code_blue" and r["identity"].startswith("Practitioner/")
    assert r["status"] == "opened" and r["expiry"] > r["activation"]
    assert r["accesses"] == len(r["accessed"]) > 0
    assert {"type", "id", "patient", "decision", "at"} <= set(r["accessed"][0])


def test_attestation_auditevents_validate_as_fhir_r4(run_dir):
    from fhir.resources.R4B.auditevent import AuditEvent

    n = 0
    for f in sorted((run_dir / "attestation").glob("*.auditevents.ndjson")):
        for line in f.read_text().splitlines():
            AuditEvent.model_validate_json(line)
            n += 1
    assert n >= 3


@pytest.mark.parametrize("name", ["break_glass_log.jsonl", "policy_history.jsonl", "ai_bom_first_contact.jsonl",
                                  "break_glass_log.auditevents.ndjson", "ai_bom_first_contact.auditevents.ndjson"])
def test_verify_log_detects_edit_removal_and_reorder(run_dir, tmp_path, name):
    src = run_dir / "attestation" / name
    lines = src.read_text().splitlines(keepends=True)
    assert verify_log(src).ok
    if len(lines) < 3:
        lines = lines * 1  # short logs still test the edit case below
    edited = list(lines)
    rec = json.loads(edited[0])
    if "recorded" in rec:
        rec["recorded"] = "2030-01-01T00:00:00Z"
    else:
        rec[next(k for k in rec if k not in ("seq", "prev", "hash"))] = "tampered"
    edited[0] = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
    cases = {"edit": (edited, 1)}
    if len(lines) >= 2:
        cases["removal"] = (lines[1:], 1)
        cases["reorder"] = ([lines[1], lines[0], *lines[2:]], 1)
    if len(lines) >= 3:
        cases["removal-middle"] = ([lines[0], *lines[2:]], 2)
    for what, (content, bad_line) in cases.items():
        f = tmp_path / f"{what}-{name}"
        f.write_text("".join(content))
        v = verify_log(f)
        assert not v.ok and v.first_bad == bad_line, (what, v)


def test_verify_log_command_exit_codes(run_dir, tmp_path, monkeypatch, capsys):
    from paritybed import cli

    def call(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["paritybed", "verify-log", *args])
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        c = capsys.readouterr()
        return code, c.out + c.err

    good = run_dir / "events.jsonl"
    code, text = call(str(good))
    assert code == 0 and "chain intact" in text
    lines = good.read_text().splitlines(keepends=True)
    bad = tmp_path / "events.jsonl"
    bad.write_text("".join([lines[0], *lines[2:]]))
    code, text = call(str(bad))
    assert code == 1 and "events.jsonl:2" in text and "removed" in text
    code, text = call(str(tmp_path / "none.jsonl"))
    assert code == 2 and "no such log file" in text


def test_policy_history_continues_its_chain_when_the_policy_changes(tmp_path):
    prod = sy.make_trace("production", days=1, seed=3)
    (tmp_path / "s.yaml").write_text("name: s\n")
    out = tmp_path / "run"
    evaluate(sy.scenario(), tmp_path / "s.yaml", prod, sy.make_trace("staging", days=1, seed=4, break_glass="drill"), out)
    evaluate(sy.scenario(), tmp_path / "s.yaml", prod, sy.make_trace("staging", days=1, seed=4, break_glass="drill"), out)
    evaluate(sy.scenario(), tmp_path / "s.yaml", prod, sy.make_trace("staging", days=1, seed=9, break_glass="drill"), out)
    hist = [json.loads(x) for x in (out / "attestation" / "policy_history.jsonl").read_text().splitlines()]
    assert [h["version"] for h in hist] == [1, 2]  # the unchanged re-run added nothing
    assert hist[1]["parent"] == hist[0]["hash_policy"]
    pol = json.loads((out / "policy.json").read_text())
    assert pol["version"] == 2 and pol["parent"] == hist[0]["hash_policy"] and pol["hash"] == hist[1]["hash_policy"]
    assert verify_log(out / "attestation" / "policy_history.jsonl").ok
    assert verify_log(out / "attestation" / "policy_history.auditevents.ndjson").records == 2
