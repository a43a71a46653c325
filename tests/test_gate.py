"""`paritybed gate` on artefacts: pass, fail with JUnit, marginal, and clear input errors (exit 0/1/2/4)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from paritybed.agents.trace import write_trace
from paritybed.parity import synthetic as sy
from paritybed.parity.auditevent import auditevents_from_trace, write_ndjson
from paritybed.parity.evaluate import evaluate


@pytest.fixture(scope="module")
def arte(tmp_path_factory):
    """A staging run's artefacts and a production AuditEvent export, as a hospital would hold them."""
    tmp = tmp_path_factory.mktemp("gate")
    (tmp / "s.yaml").write_text("name: s\n")
    prod = sy.make_trace("production", days=2, seed=1, volume=2)
    good = sy.make_trace("staging", days=2, seed=2, break_glass="drill", volume=2)
    bad = sy.make_trace("staging", days=2, seed=2, break_glass="drill", volume=2, omit=(("cds", "DiagnosticReport"),))
    for name, st in (("good", good), ("bad", bad)):
        evaluate(sy.scenario(), tmp / "s.yaml", prod, st, tmp / name)
        write_trace(st, tmp / f"{name}.parquet")
    write_ndjson(auditevents_from_trace(prod, sy.scenario().start.datetime()), tmp / "audit.ndjson")
    return tmp


def test_profile_then_gate_passes_on_a_good_staging_run(arte, paritybed_cli):
    code, text = paritybed_cli("profile", str(arte / "audit.ndjson"), "--out", str(arte / "profile.json"))
    assert code == 0, text
    code, text = paritybed_cli("gate", "--policy", str(arte / "good" / "policy.json"), "--staging-trace",
                      str(arte / "good.parquet"), "--production-profile", str(arte / "profile.json"),
                      "--junit", str(arte / "good.xml"), "--marginal-as", "pass")
    assert code == 0, text
    assert "exit code 0" in text
    root = ET.parse(arte / "good.xml").getroot()
    assert root.get("failures") == "0" and int(root.get("tests")) >= 7


def test_a_threshold_inside_a_metrics_interval_is_marginal_and_ci_decides_how_to_read_it(arte, paritybed_cli):
    """Two days of a small synthetic hospital, judged with an hour-profile maximum of 0.12 (the
    scenario's gate): CDS's JS distance 0.09 passes it, but its interval (about 0.06 to 0.13)
    reaches across it.  Exit 4, or what --marginal-as says."""
    if not (arte / "profile.json").exists():
        paritybed_cli("profile", str(arte / "audit.ndjson"), "--out", str(arte / "profile.json"))
    sc = sy.scenario().model_dump(mode="json", by_alias=True, exclude_none=True)
    sc["gate"]["fidelity"]["hour_profile_jsd_max"] = 0.12
    (arte / "strict.yaml").write_text(json.dumps(sc))
    args = ("gate", "--policy", str(arte / "good" / "policy.json"), "--staging-trace", str(arte / "good.parquet"),
            "--production-profile", str(arte / "profile.json"), "--json", str(arte / "good.json"),
            "--scenario", str(arte / "strict.yaml"))
    code, text = paritybed_cli(*args)
    assert code == 4, text
    assert "MARGINAL" in text and "straddles" in text
    doc = json.loads((arte / "good.json").read_text())
    assert doc["verdict"] == "marginal"
    near = [m for c in doc["criteria"].values() for m in c["metrics"] if m["status"] == "marginal"]
    assert near and all(m["interval"][0] <= m["threshold"] <= m["interval"][1] for m in near)
    assert paritybed_cli(*args, "--marginal-as", "fail")[0] == 1
    code, text = paritybed_cli(*args, "--marginal-as", "maybe")
    assert code == 2 and "--marginal-as" in text


def test_gate_fails_naming_the_missing_pair_and_writes_junit(arte, paritybed_cli):
    if not (arte / "profile.json").exists():
        paritybed_cli("profile", str(arte / "audit.ndjson"), "--out", str(arte / "profile.json"))
    code, text = paritybed_cli("gate", "--policy", str(arte / "bad" / "policy.json"), "--staging-trace",
                      str(arte / "bad.parquet"), "--production-profile", str(arte / "profile.json"),
                      "--junit", str(arte / "bad.xml"), "--json", str(arte / "bad.json"))
    assert code == 1, text
    assert "FAIL" in text and "DiagnosticReport" in text
    root = ET.parse(arte / "bad.xml").getroot()
    failed = [tc.get("name") for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["coverage[cds]"]


def test_gate_notes_a_policy_learned_from_another_trace(arte, paritybed_cli):
    code, text = paritybed_cli("gate", "--policy", str(arte / "good" / "policy.json"), "--staging-trace",
                      str(arte / "bad.parquet"), "--production-profile", str(arte / "good" / "profiles" / "production.json"))
    assert code == 1 and "was not learned from" in text


@pytest.mark.parametrize("what", ["policy", "trace", "profile", "edited-policy"])
def test_gate_input_errors_exit_2_naming_the_file(arte, tmp_path, paritybed_cli, what):
    policy, trace, prof = arte / "good" / "policy.json", arte / "good.parquet", arte / "good" / "profiles" / "production.json"
    if what == "policy":
        policy = tmp_path / "nope.json"
    elif what == "trace":
        trace = tmp_path / "nope.parquet"
        trace.write_text("not parquet")
    elif what == "profile":
        prof = tmp_path / "p.json"
        prof.write_text("[1, 2]")
    else:
        policy = tmp_path / "policy.json"
        policy.write_text((arte / "good" / "policy.json").read_text().replace('"burst": ', '"burst": 1'))
    code, text = paritybed_cli("gate", "--policy", str(policy), "--staging-trace", str(trace),
                      "--production-profile", str(prof))
    assert code == 2, text
    assert "error:" in text and tmp_path.name in text.replace("\n", "")
