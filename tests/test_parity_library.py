"""The library behaves as issue 4 says, on the real simulation of the library's scenario files
(scenarios/*.yaml), shortened to two days on the shared Synthea patients so the suite stays
fast, with every attack and production change scheduled after the cut moved to day 1 at its time
of day.  The full-week runs are `paritybed run scenarios/<name>.yaml` (and `make demo`).

The default verdict counts the replay's under-blocks (issue 9: an attack whose actions get through
fails the gate), and the scribe's Patient sweep is caught only by the rate limit today, so the
default scenario FAILS on its replay while its three criteria pass.  Issue 8 (clinical-context
binding) catches the sweep at its first out-of-context request: when it lands,
``test_community_hospital_fails_only_on_the_sweep_the_rate_limit_lets_through`` flips to a pass.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from paritybed.parity.evaluate import evaluate
from paritybed.run import prepare_populations, simulate_arms, with_duration
from paritybed.scenarios import At, PopulationSettings, Scenario, load_scenario, resolve_arms

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "scenarios" / "community-hospital-week.yaml"
DAYS = 2
NAMES = ("community-hospital-week", "uniform-staging", "missing-diagnosticreport", "no-break-glass", "hotfix-egress",
         "short-staging-contexts")
BINDING = ("out-of-context", "context-not-in-envelope", "new-patient-budget")


def shortened(name: str, shared: Path) -> Scenario:
    """A library scenario on the shared Synthea patients, cut to DAYS days; an attack or a
    production change scheduled after the cut is moved to day 1 at the same time of day."""
    sc = load_scenario(REPO / "scenarios" / f"{name}.yaml")
    sc = with_duration(sc.model_copy(update={"population": PopulationSettings(folder=str(shared))}), days=DAYS)
    attacks = [a.model_copy(update={"at": At(day=1, time=a.at.time)}) if a.at.day > DAYS else a for a in sc.attacks]
    sc = sc.model_copy(update={"attacks": attacks})
    prod = sc.arms.production
    if prod.changes:
        moved = [c.model_copy(update={"at": At(day=1, time=c.at.time)}) if c.at.day > DAYS else c for c in prod.changes]
        sc = sc.model_copy(update={"arms": sc.arms.model_copy(update={"production": prod.model_copy(update={"changes": moved})})})
    return sc


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_synthea):
    base = shortened("community-hospital-week", shared_synthea)
    pops = prepare_populations(base, resolve_arms(base))
    cache: dict[str, tuple[dict, Path]] = {}

    def get(name: str) -> tuple[dict, Path]:
        if name not in cache:
            sc = shortened(name, shared_synthea)
            arms = simulate_arms(sc, resolve_arms(sc), pops, parallel=False)
            out = tmp_path_factory.mktemp(name)
            v = evaluate(sc, REPO / "scenarios" / f"{name}.yaml", arms["production"].table, arms["staging"].table, out)
            cache[name] = (v.parity, out)
        return cache[name]

    get.shortened = lambda name: shortened(name, shared_synthea)  # type: ignore[attr-defined]
    get.pops = pops  # type: ignore[attr-defined]
    return get


def failing(doc: dict, criterion: str) -> set[tuple[str, str]]:
    return {(m["agent_class"], m["name"]) for m in doc["criteria"][criterion]["metrics"] if not m["pass"]}


def test_community_hospital_fails_only_on_the_sweep_the_rate_limit_lets_through(runs):
    """The criteria pass and nothing legitimate is blocked, but part of the scribe's Patient sweep
    gets through the rate limit: the default verdict fails on it (issue 9).  Staging is not to
    blame (the oracle policy, learned from production itself, lets as much through), the envelope
    is: issue 8 binds requests to their clinical context and then this is a pass."""
    doc, _ = runs("community-hospital-week")
    assert doc["verdict"] == "fail"
    assert all(doc["criteria"][c]["status"] != "fail" for c in ("fidelity", "coverage", "break_glass")), \
        [failing(doc, c) for c in ("fidelity", "coverage", "break_glass")]
    r = doc["replay"]
    assert r["over_blocks"]["total"] == 0
    gates = {g["name"]: g["pass"] for g in r["gates"]}
    assert gates == {"over_block_share": True, "clinical_impact_minutes_per_day": True,
                     "excess_under_block_share": True, "under_blocks": False}
    sweep = r["consequences"]["attacks"]["attack:scribe-patient-sweep"]
    assert sweep["rows"] == 400 and 0 < sweep["through"] < 400 and sweep["oracle_through"] > 0
    assert r["under_blocks"]["total"] == sweep["through"]  # the sweep is the only attack that gets anywhere
    assert r["staging"] == {"safe": True, "unsafe_because": []}


@pytest.mark.parametrize("name", ("community-hospital-week", "missing-diagnosticreport", "hotfix-egress"))
def test_the_binding_over_blocks_no_legitimate_request_where_staging_shows_the_contexts(runs, name):
    doc, _ = runs(name)
    assert doc["replay"]["binding"]["over_blocks"] == 0, doc["replay"]["binding"]


def test_the_binding_adds_to_the_consequences_of_the_two_flaws_it_shares(runs):
    """Uniform staging also learns too few contexts open at once (production's morning peak opens
    more: refused, then out of context), and without break-glass the accesses a lane would have
    covered leave their context: the verdicts were failing for those flaws already."""
    import pyarrow.parquet as pq

    uni, _ = runs("uniform-staging")
    assert uni["verdict"] == "fail"
    assert set(uni["replay"]["binding"]["over_blocks_by_reason"]) <= {"out-of-context", "context-not-in-envelope"}
    nbg, out = runs("no-break-glass")
    assert nbg["verdict"] == "fail" and set(nbg["replay"]["binding"]["over_blocks_by_reason"]) == {"out-of-context"}
    rp = pq.read_table(out / "replay.parquet", columns=["reason", "expected", "claim_id"]).to_pylist()
    assert all(r["claim_id"] for r in rp if r["reason"] == "out-of-context" and r["expected"] == "allow")


def test_every_attack_is_caught_at_its_first_out_of_context_request(runs):
    """The in-envelope attacks (every pair is the agent's own) are denied at their first request
    naming a patient outside the replica's launch context; the sweep reaches at most the patient
    of the context the compromised replica presents."""
    import pyarrow.parquet as pq

    doc, out = runs("community-hospital-week")
    attacks = {a["name"]: a for a in doc["replay"]["attacks"]}
    for name in ("scribe-patient-sweep", "cds-result-sweep", "prior-auth-coverage-sweep"):
        a = attacks[name]
        assert a["caught"] and a["first_reason"] == "out-of-context", a
        assert a["patients_reached"] <= 1, a
    rp = pq.read_table(out / "replay.parquet", columns=["label", "decision", "reason", "named_patients", "launch_context",
                                                      "agent", "replica", "kind", "patient_id", "t_ns"])
    rows = rp.to_pylist()
    ctx_patient = {}
    for r in rows:
        if r["kind"] == "context_open":
            ctx_patient[(r["agent"], r["replica"], r["launch_context"])] = r["patient_id"]
        if r["label"].startswith("attack:") and r["kind"] == "fhir":
            if r["decision"] == "allow":  # only the presented context's own patient gets through
                assert r["named_patients"] == [ctx_patient[(r["agent"], r["replica"], r["launch_context"])]]
            elif r["reason"] not in ("quarantined",):
                assert r["reason"] in ("out-of-context", "type-not-in-envelope"), r


def test_short_staging_contexts_fail_fidelity_on_context_durations_and_block_the_signature(runs):
    doc, out = runs("short-staging-contexts")
    assert doc["verdict"] == "fail"
    assert failing(doc, "fidelity") == {("ambient_scribe", "context_duration_ks")}
    m = next(m for m in doc["criteria"]["fidelity"]["metrics"] if m["name"] == "context_duration_ks"
             and m["agent_class"] == "ambient_scribe")
    assert m["detail"]["production_share_held_longer"] > 0.5
    ob = doc["replay"]["over_blocks"]
    assert ob["by_reason"].get("out-of-context", 0) > 0 and set(ob["by_agent"]) == {"scribe"}
    import pyarrow.parquet as pq

    rp = pq.read_table(out / "replay.parquet", columns=["agent", "method", "resource_type", "reason", "expected"])
    over = [r for r in rp.to_pylist() if r["reason"] == "out-of-context" and r["expected"] == "allow"]
    assert {(r["method"], r["resource_type"]) for r in over} == {("PUT", "Encounter")}  # the signature's write


def test_uniform_staging_fails_rate_headroom_burst_and_hours_with_over_blocks_in_the_morning(runs):
    """With the calibrated thresholds (fifteen runs of this flaw on three populations in the
    calibration sweep): prior auth's rate limit learned from flat traffic is under half of
    production's busiest 5 minutes, and the scribe's and prior auth's hour profiles are far from
    production's.  Its daily burst is low too, but the calibration of 4 December moved the burst
    minimum from 0.3197 to 0.2008 (three noise standard deviations past the safe runs: quiet good
    arms reach 0.29), and the rate headroom catches every flat arm of the sweep, so burst ratio
    alone no longer has to."""
    doc, _ = runs("uniform-staging")
    assert doc["verdict"] == "fail"
    bad = failing(doc, "fidelity")
    assert {("prior_auth", "rate_headroom"), ("prior_auth", "hour_profile_jsd"), ("ambient_scribe", "hour_profile_jsd")} <= bad
    burst = next(m for m in doc["criteria"]["fidelity"]["metrics"] if (m["agent_class"], m["name"]) == ("prior_auth", "burst_ratio"))
    assert burst["value"] < 0.3197, burst  # failed the 3 December minimum
    ob = doc["replay"]["over_blocks"]
    assert ob["total"] > 0
    hours = ob["by_hour"]
    assert sum(hours[7:10]) >= 0.8 * sum(hours), hours  # rounds / business-hours opening


def test_missing_diagnosticreport_fails_coverage_and_quarantines_cds_at_its_first_read(runs):
    doc, out = runs("missing-diagnosticreport")
    cov = next(m for m in doc["criteria"]["coverage"]["metrics"] if m["agent_class"] == "cds")
    assert not cov["pass"]
    assert {m["type"] for m in cov["detail"]["missing"]} == {"DiagnosticReport"}
    assert "DiagnosticReport" in cov["reading"]
    import pyarrow.parquet as pq

    rp = pq.read_table(out / "replay.parquet", columns=["agent", "replica", "resource_type", "decision", "reason", "t_ns"])
    cds = rp.filter(pc.equal(rp["agent"], "cds"))
    dr = cds.filter(pc.equal(cds["resource_type"], "DiagnosticReport"))
    first = dr.slice(0, 1).to_pylist()[0]
    assert (first["decision"], first["reason"]) == ("deny", "type-not-in-envelope")
    q = [e for e in (out / "events.jsonl").read_text().splitlines() if '"event":"quarantine"' in e]
    assert q and '"agent":"cds"' in q[0] and '"reason":"type-not-in-envelope"' in q[0]
    assert doc["replay"]["over_blocks"]["by_agent"].get("cds", 0) > 0


def test_no_break_glass_fails_and_emergency_access_is_denied(runs):
    doc, out = runs("no-break-glass")
    assert not doc["criteria"]["break_glass"]["pass"]
    assert ("cds", "code_blue.exercised") in failing(doc, "break_glass")
    by = doc["replay"]["over_blocks"]["by_reason"]
    assert by.get("lane-not-in-envelope", 0) > 0  # activations refused
    import json

    log = [json.loads(x) for x in (out / "attestation" / "break_glass_log.jsonl").read_text().splitlines()]
    cb = [r for r in log if r["class"] == "code_blue"]
    assert cb and all(r["status"].startswith("refused") for r in cb)
    lane_only = [a for r in cb for a in r["accessed"] if a["type"] in ("MedicationAdministration", "Procedure", "CarePlan")]
    assert lane_only and all(a["decision"] == "deny" for a in lane_only)  # what only the lane would open


def test_hotfix_endpoint_outside_the_baa_registry_is_caught_at_first_contact(runs):
    doc, out = runs("hotfix-egress")
    (hf,) = [a for a in doc["replay"]["attacks"] if a["kind"] == "hotfix"]
    assert hf["caught_at_first_contact"] and hf["first_reason"] == "egress-not-in-BAA"
    assert hf["time_to_enforcement_s"] == 0 and hf["blocked"] == hf["rows"]
    assert doc["replay"]["under_blocks"]["by_label"]["hotfix:fallback-model"]["allowed"] == 0


def test_cds_is_quarantined_after_each_hotfix_connect(runs):
    """README library table: "CDS quarantined after each hotfix connect": every connect to the
    fallback endpoint is denied, and each one the replica makes outside a quarantine starts one."""
    import json

    import pyarrow.parquet as pq

    _, out = runs("hotfix-egress")
    rp = pq.read_table(out / "replay.parquet", columns=["seq", "agent", "replica", "label", "decision", "reason"])
    hot = [r for r in rp.to_pylist() if r["label"] == "hotfix:fallback-model"]
    assert hot and all(r["decision"] == "deny" for r in hot)
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    started = {(e["agent"], e["replica"], e["seq_row"]) for e in events if e["event"] == "quarantine"}
    fresh = [r for r in hot if r["reason"] == "egress-not-in-BAA"]
    assert fresh and all(r["reason"] in ("egress-not-in-BAA", "quarantined") for r in hot)
    assert all((r["agent"], r["replica"], r["seq"]) in started for r in fresh), "a hotfix connect without a quarantine"
    assert {r["agent"] for r in hot} == {"cds"}


def test_same_seed_gives_the_same_parity_json(runs, tmp_path):
    doc, out = runs("community-hospital-week")
    sc = runs.shortened("community-hospital-week")
    arms = simulate_arms(sc, resolve_arms(sc), runs.pops, parallel=False)
    evaluate(sc, SCENARIO, arms["production"].table, arms["staging"].table, tmp_path / "again")
    for f in ("parity.json", "policy.json", "junit.xml", "attestation/ai_bom.json"):
        assert (tmp_path / "again" / f).read_bytes() == (out / f).read_bytes(), f
