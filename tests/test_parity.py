"""The parity answer on synthetic traffic whose answer is known (parity.synthetic).

Each library behaviour of issue 4 in miniature: a good staging arm passes; uniform staging fails
fidelity on burst height and inter-arrival with over-blocks in the morning burst; a missing pair
fails coverage naming it and quarantines the agent at its first use; no break-glass drills fail
break-glass and deny Code Blue; a hotfix endpoint outside the BAA registry is caught at first
contact; and the same inputs give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paritybed.core.units import NS_PER_MIN
from paritybed.parity import synthetic as sy
from paritybed.parity.criteria import criteria
from paritybed.parity.evaluate import evaluate
from paritybed.parity.profile import profile_from_trace

DAYS = 3
VOLUME = 3.0  # enough tasks that sampling noise stays well under the fidelity thresholds


@pytest.fixture(scope="module")
def production():
    return sy.make_trace("production", days=DAYS, seed=1, attacks=True, volume=VOLUME)


def run(tmp: Path, production, name: str, **staging_kw) -> dict:
    sc_path = tmp / f"{name}.yaml"
    sc_path.write_text(f"name: {name}\n")
    staging = sy.make_trace("staging", days=DAYS, seed=2, volume=VOLUME, **{"break_glass": "drill", **staging_kw})
    v = evaluate(sy.scenario(), sc_path, production, staging, tmp / name)
    assert v.passed == (v.parity["verdict"] == "pass")
    return v.parity


def metric(doc: dict, criterion: str, cls: str, name: str) -> dict:
    ms = [m for m in doc["criteria"][criterion]["metrics"] if m["agent_class"] == cls and m["name"] == name]
    assert ms, f"no metric {criterion}/{cls}/{name}"
    return ms[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory, production):
    return run(tmp_path_factory.mktemp("good"), production, "good")


def test_good_staging_passes_and_stops_the_attacks(good):
    assert good["verdict"] == "pass", json.dumps(good["criteria"], indent=1)[:3000]
    r = good["replay"]
    assert r["over_blocks"]["total"] == 0
    assert r["attacks_injected"] == 2 and r["attacks_caught"] == 2
    assert r["under_blocks"]["total"] == 0
    bulk = next(a for a in r["attacks"] if a["label"] == "attack:bulk-read")
    assert bulk["caught_at_first_contact"] and bulk["first_reason"] == "type-not-in-envelope"
    # prior-auth is tier-3 (kill): the rest of the bulk read is held by the quarantine
    assert bulk["blocked"] == bulk["rows"]


def test_parity_json_carries_the_documented_fields(good):
    assert good["schema"] == "paritybed.parity/1"
    assert set(good["criteria"]) == {"fidelity", "coverage", "break_glass"}
    for c in good["criteria"].values():
        assert isinstance(c["pass"], bool)
        for m in c["metrics"]:
            assert {"agent_class", "name", "value", "threshold", "op", "pass", "reading"} <= set(m)
            assert m["reading"].endswith(".")
    assert good["policy"]["hash"].startswith("sha256:")
    assert good["scenario"]["hash"].startswith("sha256:") and good["scenario"]["seed"] == 7
    for k in ("over_blocks", "under_blocks", "attacks_caught", "clinical_impact_minutes", "lost_events"):
        assert k in good["replay"]


def test_uniform_staging_fails_rate_headroom_and_burst_and_over_blocks_the_morning(tmp_path_factory, production):
    """With the calibrated thresholds: the rate limit learned from flat traffic is under 0.5 of
    production's busiest 5 minutes for every class, and the daily burst under a third for two
    (which failed the burst minimum of 3 December, 0.3197; the calibration of 4 December moved it
    to 0.2008, three noise standard deviations past the quietest good arm, and leaves flat arms
    to the rate headroom, which catches every one of the sweep)."""
    doc = run(tmp_path_factory.mktemp("uniform"), production, "uniform", arrivals="uniform")
    assert doc["verdict"] == "fail"
    for cls in ("ambient_scribe", "cds", "prior_auth"):
        head = metric(doc, "fidelity", cls, "rate_headroom")
        assert head["status"] == "fail" and head["value"] <= 0.5 and "will be rate-limited" in head["reading"]
        assert metric(doc, "fidelity", cls, "resource_mix_jsd")["pass"]
    for cls in ("ambient_scribe", "cds"):
        assert metric(doc, "fidelity", cls, "burst_ratio")["value"] < 0.3197
    assert doc["replay"]["staging"]["safe"] is False
    assert doc["criteria"]["coverage"]["pass"]
    ob = doc["replay"]["over_blocks"]
    assert ob["total"] > 0 and "rate-exceeded" in ob["by_reason"]
    hours = ob["by_hour"]
    assert sum(hours[7:10]) > 0.8 * sum(hours), hours  # the 07:00-09:00 burst
    assert doc["replay"]["clinical_impact_minutes"] > 0


def test_missing_pair_fails_coverage_naming_it_and_quarantines_cds_at_first_use(tmp_path_factory, production):
    tmp = tmp_path_factory.mktemp("missing")
    doc = run(tmp, production, "missing", omit=(("cds", "DiagnosticReport"),))
    cov = metric(doc, "coverage", "cds", "missing_pairs")
    assert not cov["pass"] and doc["verdict"] == "fail"
    (miss,) = cov["detail"]["missing"]
    assert (miss["type"], miss["interaction"], miss["staging_count"]) == ("DiagnosticReport", "search", 0)
    assert 0.005 < miss["production_share"] < 0.03
    assert "DiagnosticReport" in cov["reading"]
    assert metric(doc, "coverage", "ambient_scribe", "missing_pairs")["pass"]
    import pyarrow.parquet as pq

    rp = pq.read_table(tmp / "missing" / "replay.parquet").to_pylist()
    first = next(r for r in rp if r["agent"] == "cds" and r["resource_type"] == "DiagnosticReport")
    assert (first["decision"], first["reason"]) == ("deny", "type-not-in-envelope")
    after = [r for r in rp if r["agent"] == "cds" and r["replica"] == first["replica"]
             and first["t_ns"] < r["t_ns"] < first["t_ns"] + 15 * NS_PER_MIN]
    assert after and all(r["reason"] == "quarantined" for r in after)
    assert doc["replay"]["over_blocks"]["by_reason"].get("quarantined", 0) > 0


def test_no_break_glass_in_staging_fails_and_code_blue_is_denied(tmp_path_factory, production):
    doc = run(tmp_path_factory.mktemp("nobg"), production, "nobg", break_glass="off")
    assert not doc["criteria"]["break_glass"]["pass"] and doc["verdict"] == "fail"
    assert not metric(doc, "break_glass", "cds", "code_blue.exercised")["pass"]
    assert not metric(doc, "break_glass", "cds", "code_blue.lane_in_policy")["pass"]
    by = doc["replay"]["over_blocks"]["by_reason"]
    assert by.get("lane-not-in-envelope", 0) >= 1
    assert doc["criteria"]["fidelity"]["pass"] and doc["criteria"]["coverage"]["pass"]


def test_hotfix_endpoint_outside_the_baa_registry_is_caught_at_first_contact(tmp_path_factory):
    prod = sy.make_trace("production", days=1, seed=5, hotfix=True)
    tmp = tmp_path_factory.mktemp("hotfix")
    doc = run(tmp, prod, "hotfix")
    (hf,) = [a for a in doc["replay"]["attacks"] if a["kind"] == "hotfix"]
    assert hf["caught"] and hf["caught_at_first_contact"]
    assert hf["first_reason"] == "egress-not-in-BAA" and hf["time_to_enforcement_s"] == 0
    bom = json.loads((tmp / "hotfix" / "attestation" / "ai_bom.json").read_text())
    (ep,) = [e for e in bom["agents"]["scribe"]["endpoints"] if e["address"] == sy.UNREGISTERED]
    assert ep["baa"] is None and not ep["covered_at_first_contact"]
    assert ep["registry_version_at_first_contact"] == 3 and ep["decision_at_first_contact"] == "deny"


def test_same_inputs_give_the_same_bytes(tmp_path, production):
    staging = sy.make_trace("staging", days=1, seed=2, break_glass="drill")
    prod = production.slice(0, 3000)
    sc = tmp_path / "s.yaml"
    sc.write_text("name: s\n")
    for d in ("a", "b"):
        evaluate(sy.scenario(), sc, prod, staging, tmp_path / d)
    for f in ("parity.json", "junit.xml", "policy.json", "report.html", "events.jsonl", "plots/coverage.png",
              "plots/rate_cds.png", "attestation/break_glass_log.jsonl", "profiles/production.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_live_mode_records_the_kernels_lost_events(tmp_path, production):
    """lost_events is 0 by construction in model mode; what a live run passes in is what parity.json says."""
    staging = sy.make_trace("staging", days=1, seed=2, break_glass="drill")
    sc = tmp_path / "s.yaml"
    sc.write_text("name: s\n")
    doc = evaluate(sy.scenario(), sc, production.slice(0, 3000), staging, tmp_path / "live", mode="live",
                   lost_events=7).parity
    assert doc["mode"] == "live" and doc["replay"]["lost_events"] == 7


def test_criteria_from_profiles_match_evaluate(good, production, tmp_path):
    from paritybed.parity.evaluate import build_policy, registry_of
    from paritybed.scenarios import resolve_arms

    staging = sy.make_trace("staging", days=DAYS, seed=2, break_glass="drill", volume=VOLUME)
    start = sy.scenario().start.datetime()
    (tmp_path / "good.yaml").write_text("name: good\n")
    policy = build_policy(sy.scenario(), tmp_path / "good.yaml", staging, registry_of(sy.scenario()),
                          resolve_arms(sy.scenario())["staging"])  # rate_headroom needs the staging-built policy
    c = criteria(profile_from_trace(staging, start), profile_from_trace(production, start), sy.scenario().gate,
                 policy=policy)
    assert c.fidelity.to_dict() == good["criteria"]["fidelity"]
    assert c.coverage.to_dict() == good["criteria"]["coverage"]
