"""Audit artefacts: content an auditor relies on, FHIR validity, and tamper evidence."""

from __future__ import annotations

import json
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
    # each activation codes its agent's class, so a profile of a server's trail plus this log knows the lane
    for line in (run_dir / "attestation" / "break_glass_log.auditevents.ndjson").read_text().splitlines():
        roles = [c for a in json.loads(line)["agent"] for r in a.get("role", []) for c in r["coding"]]
        assert len([c for c in roles if c["system"] == "urn:paritybed:agent-class"]) == 1
        assert {c["code"] for c in roles if c["system"] == "urn:paritybed:agent-class"} <= {"ambient_scribe", "cds"}


LOGS = ["events.jsonl", "attestation/break_glass_log.jsonl", "attestation/policy_history.jsonl",
        "attestation/ai_bom_first_contact.jsonl", "attestation/break_glass_log.auditevents.ndjson",
        "attestation/ai_bom_first_contact.auditevents.ndjson", "attestation/policy_history.auditevents.ndjson"]


def tampered(run_dir: Path, tmp: Path, name: str, lines: list[str]) -> Path:
    """``name`` with the given lines, beside a copy of the run's parity.json (its anchor)."""
    f = tmp / name
    f.parent.mkdir(parents=True, exist_ok=True)
    (tmp / "parity.json").write_bytes((run_dir / "parity.json").read_bytes())
    f.write_text("".join(lines))
    return f


def rechained(name: str, lines: list[str], tag: str) -> list[str]:
    """The records of ``lines`` with one field changed, chained again from the start: a valid chain
    that is not the anchored one."""
    from paritybed.core.hashlog import HashLog
    from paritybed.parity.auditlog import chain_auditevents

    recs = [json.loads(x) for x in lines]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "log"
        if recs and recs[0].get("resourceType") == "AuditEvent":
            chain_auditevents([{**r, "id": tag} for r in recs], out)
        else:
            with HashLog(out) as log:
                log.extend({**{k: v for k, v in r.items() if k not in ("seq", "prev", "hash")}, "tag": tag} for r in recs)
        return out.read_text().splitlines(keepends=True)


def test_parity_json_anchors_every_chained_log_of_the_run(run_dir):
    from paritybed.parity.auditlog import verify_log

    logs = json.loads((run_dir / "parity.json").read_text())["logs"]
    assert sorted(logs) == sorted(LOGS)
    for name, anchor in logs.items():
        v = verify_log(run_dir / name)
        assert v.ok and (anchor["records"], anchor["last_hash"]) == (v.records, v.last_hash), name
    assert logs["events.jsonl"]["records"] > 20


@pytest.mark.parametrize("name", LOGS)
def test_every_removed_edited_or_reordered_record_is_detected_to_the_last_one(run_dir, tmp_path, name):
    """Each record removed in turn, the last one included (the chain alone cannot see that one:
    the anchor in parity.json does), the first and last edited, the first two swapped."""
    from paritybed.parity.anchors import verify_anchored

    lines = (run_dir / name).read_text().splitlines(keepends=True)
    v, caveat = verify_anchored(run_dir / name)
    assert v.ok and v.anchor.endswith("parity.json") and not caveat
    cases: list[tuple[str, list[str], int]] = []
    for i in range(len(lines)):
        cases.append((f"remove {i + 1}", lines[:i] + lines[i + 1:], i + 1))
    for i in sorted({0, len(lines) - 1}):
        rec = json.loads(lines[i])
        key = "recorded" if "recorded" in rec else next(k for k in rec if k not in ("seq", "prev", "hash"))
        rec[key] = "2030-01-01T00:00:00Z" if key == "recorded" else "tampered"
        cases.append((f"edit {i + 1}", [*lines[:i], json.dumps(rec, sort_keys=True) + "\n", *lines[i + 1:]], i + 1))
    if len(lines) >= 2:
        cases.append(("reorder", [lines[1], lines[0], *lines[2:]], 1))
    for what, content, bad_line in cases:
        v, _ = verify_anchored(tampered(run_dir, tmp_path / what.replace(" ", "-"), name, content))
        assert not v.ok and v.first_bad == bad_line, (what, v)
        if what.startswith("remove"):
            assert "removed" in v.problem, (what, v.problem)


@pytest.mark.parametrize("name", ["events.jsonl", "attestation/break_glass_log.auditevents.ndjson"])
def test_truncation_and_a_substituted_chain_are_detected_naming_what_is_missing(run_dir, tmp_path, name):
    from paritybed.parity.anchors import verify_anchored

    lines = (run_dir / name).read_text().splitlines(keepends=True)
    n = len(lines)
    assert n >= 2
    k = min(3, n - 1)
    cases = {
        "last": (lines[:-1], f"the last 1 record(s) are missing: the log ends after record {n - 1}"),
        "last-k": (lines[:-k], f"the last {k} record(s) are missing: the log ends after record {n - k}"),
        "empty": ([], f"all {n} records are missing (the file is empty)"),
        "shorter-chain": (rechained(name, lines[:1], "other"), f"records 2–{n} were removed"),
        "same-length-chain": (rechained(name, lines, "other"), "replaced by another chain"),
    }
    for what, (content, says) in cases.items():
        v, _ = verify_anchored(tampered(run_dir, tmp_path / what, name, content))
        assert not v.ok and says in v.problem, (what, v.problem)


def test_records_appended_after_the_anchor_are_named(run_dir, tmp_path):
    from paritybed.core.hashlog import HashLog
    from paritybed.parity.anchors import verify_anchored

    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    f = tampered(run_dir, tmp_path, "events.jsonl", lines)
    with HashLog(f) as log:  # continues the chain: every link is valid
        log.append({"event": "deny", "note": "added later"})
    v, _ = verify_anchored(f)
    n = len(lines)
    assert not v.ok and v.first_bad == n + 1
    assert f"records {n + 1}–{n + 1} were appended after its anchor" in v.problem


def test_a_log_without_an_anchor_says_what_was_not_checked(run_dir, tmp_path):
    from paritybed.parity.anchors import verify_anchored

    lone = tmp_path / "lone" / "events.jsonl"
    lone.parent.mkdir()
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    lone.write_text("".join(lines[:-5]))
    v, caveat = verify_anchored(lone)
    assert v.ok and not v.anchor  # nothing can tell: the command must say so
    assert "order and content only" in caveat and "a removed tail cannot be detected" in caveat


def test_verify_log_command_exit_codes(run_dir, tmp_path, paritybed_cli):
    def call(*args: str) -> tuple[int, str]:
        return paritybed_cli("verify-log", *args)

    good = run_dir / "events.jsonl"
    code, text = call(str(good))
    assert code == 0 and "chain intact" in text and "length and final hash vouched for by its anchor" in text and "parity.json" in text
    lines = good.read_text().splitlines(keepends=True)
    bad = tmp_path / "events.jsonl"
    bad.write_text("".join([lines[0], *lines[2:]]))
    code, text = call(str(bad))
    assert code == 1 and "events.jsonl:2" in text and "removed" in text
    bad.write_text("".join(lines[:-1]))  # no anchor beside it: verifies, and says what that means
    code, text = call(str(bad))
    assert code == 0 and "order and content only" in text and "removed tail cannot be detected" in text
    code, text = call(str(bad), "--anchor", str(run_dir / "parity.json"))  # lists events.jsonl, not this file
    assert code == 2 and "not an anchor of" in text
    tampered(run_dir, tmp_path / "t", "events.jsonl", lines[:-1])
    code, text = call(str(tmp_path / "t" / "events.jsonl"), "--anchor", str(tmp_path / "t" / "parity.json"))
    assert code == 1 and f"events.jsonl:{len(lines)}:" in text and "the last 1 record(s) are missing" in text
    code, text = call(str(good), "--key", str(tmp_path / "no.key"))
    assert code == 2 and "no such checkpoint key" in text
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
