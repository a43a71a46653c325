"""The README's promises, each held by a test that fails if it breaks: "A run", "Output files",
the default scenario's stories, `paritybed demo` end to end, and `paritybed run`'s exit codes
0/1/2/3/4 in model mode.

The default scenario's attacks happen on days 3, 4 and 5 of its week; the run here is the same
scenario cut to two days on the shared Synthea patients, with every attack scheduled after the
cut moved to day 1 at its time of day (derived from scenarios/community-hospital-week.yaml, so it
cannot drift from the default).  The full week with generated patients is `make demo`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent
DAYS = 2


def derived(src: Path, dst: Path, shared: Path, *, days: float | None = None, hours: float | None = None,
            gate: dict | None = None) -> Path:
    """``src`` on the shared Synthea folder, cut to ``days``/``hours``, every attack after the cut on
    day 1; ``gate`` replaces the scenario's gate section."""
    yaml = YAML()
    doc = yaml.load(src.read_text())
    doc["population"] = {"folder": str(shared)}
    if gate is not None:
        doc["gate"] = gate
    if days or hours:
        doc["duration"] = {"days": days} if days else {"hours": hours}
    for a in doc.get("attacks") or []:
        if days and a["at"]["day"] > days:
            a["at"]["day"] = 1
    with dst.open("w") as f:
        yaml.dump(doc, f)
    return dst


def paritybed(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "paritybed.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def week(tmp_path_factory, shared_synthea):
    """`paritybed run` (model mode, the README's first command) on the default scenario's stories."""
    tmp = tmp_path_factory.mktemp("readme")
    sc = derived(REPO / "scenarios" / "community-hospital-week.yaml", tmp / "week.yaml", shared_synthea, days=DAYS)
    r = paritybed("run", str(sc), "--out", str(tmp / "runs" / "week"), cwd=tmp)
    return r, tmp / "runs" / "week"


def doc(out: Path) -> dict:
    return json.loads((out / "parity.json").read_text())


# ------------------------------------------------------------------------------------ A run
def test_a_run_ends_with_the_verdict_and_the_report_and_exits_with_its_code(week):
    """README library table: the default scenario FAILS today.  Its three criteria pass and nothing
    legitimate is blocked, but part of the scribe's Patient sweep gets through the rate limit, and
    an attack whose actions get through fails the gate (issue 9).  Issue 8 catches the sweep at its
    first out-of-context request: then this run exits 0 with "parity verdict: PASS"."""
    r, out = week
    assert r.returncode == 1, r.stderr[-3000:]
    assert "parity verdict: FAIL" in r.stdout and f"Report: {out / 'report.html'}" in r.stdout
    assert "under_blocks" in r.stdout  # the failing replay check is named
    assert "Traceback" not in r.stderr
    d = doc(out)
    assert d["verdict"] == "fail" and d["mode"] == "model"
    assert [g["name"] for g in d["replay"]["gates"] if not g["pass"]] == ["under_blocks"]
    for c in ("fidelity", "coverage", "break_glass"):  # each metric: value, threshold, result, a reading
        assert d["criteria"][c]["status"] != "fail"
        for m in d["criteria"][c]["metrics"]:
            assert {"value", "threshold", "op", "pass", "status", "reading"} <= set(m) and m["reading"].endswith(".")


def test_the_policy_is_content_hashed_with_pairs_gcra_egress_lanes_and_response(week):
    from paritybed.enforcer.policy import load_policy

    _, out = week
    raw = json.loads((out / "policy.json").read_text())
    pol = load_policy(out / "policy.json")
    assert raw["schema"] == "paritybed.policy/1" and raw["hash"] == pol.computed_hash() == doc(out)["policy"]["hash"]
    registry = {e["name"] for e in json.loads((out / "baa-registry.json").read_text())["endpoints"]}
    responses = {"scribe": "deny", "cds": "quarantine", "prior-auth": "kill"}  # tier-1, -2, -3 (docs/policy.md)
    for name, ap in pol.agents.items():
        assert ap.fhir.allow and ap.rate is not None and ap.rate.interval_ns > 0 and ap.rate.burst > 0
        assert ap.egress and set(ap.egress) <= registry
        assert ap.response == responses[name]
    assert {"code_blue", "rapid_response"} <= set(pol.agents["cds"].lanes)


def test_the_default_stories_no_over_blocks_and_five_attacks_caught(week):
    """README library table: 0 over-blocks; the five injected attacks caught at their first
    request, the three in-envelope sweeps by the launch-context binding (none reaches a patient
    beyond the one its replica was launched for)."""
    _, out = week
    r = doc(out)["replay"]
    assert r["over_blocks"]["total"] == 0
    assert r["attacks_injected"] == 5 and r["attacks_caught"] == 5
    by = {a["name"]: a for a in r["attacks"]}
    assert by["cds-exfil"]["caught_at_first_contact"] and by["cds-exfil"]["first_reason"] == "egress-not-in-BAA"
    assert by["prior-auth-immunizations"]["caught_at_first_contact"]
    assert by["prior-auth-immunizations"]["first_reason"] == "type-not-in-envelope"
    for name in ("scribe-patient-sweep", "cds-result-sweep", "prior-auth-coverage-sweep"):
        assert by[name]["first_reason"] == "out-of-context" and by[name]["patients_reached"] <= 1, by[name]
    assert by["scribe-patient-sweep"]["rows"] == 400
    report = (out / "report.html").read_text()
    assert "scribe-patient-sweep" in report and "Patients reached" in report


# ------------------------------------------------------------------------------------ Output files
def test_every_output_file_of_the_readme_table_is_there_with_its_schema(week):
    from paritybed.parity.anchors import verify_anchored
    from paritybed.agents.trace import COLUMNS, read_trace

    _, out = week
    d = doc(out)
    assert d["schema"] == "paritybed.parity/1" and d["scenario"]["hash"].startswith("sha256:")
    assert d["scenario"]["arms"]["staging"]["seed"] != d["scenario"]["arms"]["production"]["seed"]
    # junit.xml: one testcase per criterion per agent class, one per injected attack
    import xml.etree.ElementTree as ET

    cases = {c.get("name") for c in ET.parse(out / "junit.xml").getroot().iter("testcase")}
    judged = {(crit, m["agent_class"]) for crit, c in d["criteria"].items() for m in c["metrics"]}
    assert {(c, k) for c in ("fidelity", "coverage") for k in ("ambient_scribe", "cds", "prior_auth")} <= judged
    assert {("break_glass", "ambient_scribe"), ("break_glass", "cds")} <= judged  # prior auth has no lane class
    for crit, cls in judged:
        assert f"{crit}[{cls}]" in cases, (crit, cls, sorted(cases))
    for a in d["replay"]["attacks"]:
        assert any(a["name"] in c for c in cases), a["name"]
    # report.html: self-contained, plots embedded
    report = (out / "report.html").read_text()
    assert report.count('src="data:image/png;base64,') >= 5 and 'src="http' not in report and "<link" not in report
    # plots/*.png: rate per class (limit, over-blocks), coverage, break-glass, scope, over-block timeline
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert plots == {"rate_ambient_scribe.png", "rate_cds.png", "rate_prior_auth.png", "coverage.png",
                     "break_glass.png", "scope.png", "over_blocks.png"}
    # traces: the README's column count, schema paritybed.trace/1
    assert f"({len(COLUMNS)} columns:" in (REPO / "README.md").read_text()
    for arm in ("production", "staging"):
        t = read_trace(out / "traces" / f"{arm}.parquet")
        assert t.column_names == list(COLUMNS) and t.schema.metadata[b"paritybed.schema"] == b"paritybed.trace/1"
    # summary.json: requests per agent class, type, hour, workflow, per arm
    s = json.loads((out / "summary.json").read_text())
    for arm in ("production", "staging"):
        a = s["arms"][arm]
        assert a["fhir_by_agent_class"] and a["fhir_by_type"] and len(a["fhir_per_hour"]) == DAYS * 24
        assert a["fhir_by_workflow"] and sum(a["fhir_by_agent_class"].values()) == a["fhir_requests"]
    assert json.loads((out / "baa-registry.json").read_text())["schema"] == "paritybed.baa/1"
    assert set(json.loads((out / "envelope.json").read_text())["agents"]) == {"scribe", "cds", "prior-auth"}
    for arm in ("staging", "production"):
        assert json.loads((out / "profiles" / f"{arm}.json").read_text())["schema"] == "paritybed.profile/1"
    # replay.parquet: the production trace + decision and reason per row
    rp = pq.read_table(out / "replay.parquet")
    assert rp.num_rows == d["replay"]["requests"] and {"decision", "reason"} <= set(rp.column_names)
    assert set(COLUMNS) <= set(rp.column_names)
    # events.jsonl and the attestation logs: hash-chained and anchored in parity.json
    assert set(d["logs"]) >= {"events.jsonl", "attestation/break_glass_log.jsonl", "attestation/policy_history.jsonl",
                              "attestation/ai_bom_first_contact.jsonl"}
    for name in d["logs"]:
        v, _ = verify_anchored(out / name)
        assert v.ok and v.anchor.endswith("parity.json"), (name, v)
    att = {p.name for p in (out / "attestation").iterdir()}
    assert {"minimum_necessary.json", "ai_bom.json", "break_glass_log.jsonl", "policy_history.jsonl",
            "break_glass_log.auditevents.ndjson"} <= att
    # live mode only
    assert not any((out / f).exists() for f in ("live.json", "live.parquet", "kernel-events.jsonl"))


# ------------------------------------------------------------------------------------ Exit codes
def test_run_exit_1_on_a_parity_fail(tmp_path, shared_synthea):
    """tiny (six hours of a small hospital) fails parity: exit 1, with the failing metrics named."""
    sc = derived(REPO / "scenarios" / "tiny.yaml", tmp_path / "tiny.yaml", shared_synthea)
    r = paritybed("run", str(sc), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "parity verdict: FAIL" in r.stdout and doc(tmp_path / "run")["verdict"] == "fail"


def test_run_exit_0_on_a_pass_and_4_on_a_marginal_verdict(tmp_path, shared_synthea):
    """The default scenario, cut to one day, with the sweep's under-blocks accepted
    (`gate.replay.max_under_blocks: null`), no burst minimum (one day is one replica-day per
    replica: the scribe's burst-ratio interval spans about 0.02-0.8) and the hour-profile maximum
    of before the 4 December calibration (0.4407: one day of prior auth's claims gives an hour
    profile whose interval straddles the week-calibrated 0.2107) passes: exit 0.  The same run judged with a CDS hour-profile maximum inside that metric's interval is
    marginal: exit 4, and what --marginal-as says."""
    week = REPO / "scenarios" / "community-hospital-week.yaml"
    lenient = {"replay": {"max_under_blocks": None}, "fidelity": {"burst_ratio_min": 0.0, "hour_profile_jsd_max": 0.4407}}
    sc = derived(week, tmp_path / "ok.yaml", shared_synthea, days=1, gate=lenient)
    r = paritybed("run", str(sc), "--out", str(tmp_path / "ok"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "parity verdict: PASS" in r.stdout
    m = next(m for m in doc(tmp_path / "ok")["criteria"]["fidelity"]["metrics"]
             if (m["agent_class"], m["name"]) == ("cds", "hour_profile_jsd"))
    near = round((m["value"] + m["interval"][1]) / 2, 6)  # above the value, under the interval's top
    # the effective threshold is max(near, the sampling-noise floor): still above the value and under the top
    assert m["detail"]["sampling_noise_p99"] < m["interval"][1]
    sc = derived(week, tmp_path / "near.yaml", shared_synthea, days=1,
                 gate={**lenient, "fidelity": {"burst_ratio_min": 0.0, "hour_profile_jsd_max": near}})
    r = paritybed("run", str(sc), "--out", str(tmp_path / "near"), cwd=tmp_path)
    assert r.returncode == 4, r.stdout[-3000:] + r.stderr[-3000:]
    assert "parity verdict: MARGINAL" in r.stdout and "cds: hour_profile_jsd?" in r.stdout
    assert doc(tmp_path / "near")["verdict"] == "marginal"
    r = paritybed("run", str(sc), "--out", str(tmp_path / "near"), "--marginal-as", "pass", cwd=tmp_path)
    assert r.returncode == 0 and "exit code 0" in r.stdout


def test_run_exit_2_on_bad_input_naming_file_line_and_field(tmp_path, shared_synthea):
    sc = derived(REPO / "scenarios" / "tiny.yaml", tmp_path / "typo.yaml", shared_synthea)
    sc.write_text(sc.read_text().replace("admissions_per_day: 7", "admissions_per_dya: 7"))
    r = paritybed("run", str(sc), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = next(i for i, x in enumerate(sc.read_text().splitlines(), start=1) if "admissions_per_dya" in x)
    assert f"typo.yaml:{line}:" in r.stderr and "admissions_per_dya" in r.stderr
    r = paritybed("run", str(sc), "--out", str(tmp_path / "run"), "--mode", "sideways", cwd=tmp_path)
    assert r.returncode == 2 and "--mode must be model or live" in r.stderr
    assert not (tmp_path / "run" / "parity.json").exists()


def test_run_exit_3_when_synthea_is_not_resolved(tmp_path):
    """A scenario whose patients come from Synthea, on a machine where Synthea is not resolved
    (an empty cache, no SYNTHEA_JAR): an environment problem, exit 3, and how to fix it."""
    env = {k: v for k, v in os.environ.items() if k != "SYNTHEA_JAR"}
    env["PARITYBED_CACHE"] = str(tmp_path / "empty-cache")
    r = paritybed("run", str(REPO / "scenarios" / "tiny.yaml"), "--out", str(tmp_path / "run"), cwd=tmp_path, env=env)
    assert r.returncode == 3, r.stderr[-2000:]
    assert ("not resolved" in r.stderr or "Java not found" in r.stderr) and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------ demo
def test_demo_runs_end_to_end_and_loads_the_patients_into_an_embedded_fhir_database(tmp_path, shared_synthea,
                                                                                      monkeypatch, paritybed_cli):
    """`paritybed demo` (what `make demo` runs) on a small scenario: the run, then fhir.db with the
    patients, ending with the verdict and the report's path.  Where live mode cannot run it says
    so in one line and the reference engine decides (tests/test_live.py runs it under the kernel)."""
    from paritybed import cmd_run, live
    from paritybed.fhir.store import Store

    monkeypatch.setattr(cmd_run, "DEFAULT_SCENARIO", derived(REPO / "scenarios" / "tiny.yaml", tmp_path / "tiny.yaml",
                                                             shared_synthea, hours=3))
    monkeypatch.setattr(live, "unavailable_reason", lambda: "not root (eBPF programs and cgroups need root)")
    code, text = paritybed_cli("demo", "--out", str(tmp_path / "demo"))
    text = " ".join(text.split())  # as printed, without the console's line wrapping
    assert code == 0
    assert "the reference engine decides production (model mode): not root (eBPF programs and cgroups need root)" in text
    out = tmp_path / "demo"
    assert (out / "parity.json").exists() and (out / "report.html").exists()
    store = Store(out / "fhir.db")
    try:
        counts = store.counts()
    finally:
        store.close()
    assert counts["Patient"] == 37 and counts["Encounter"] > 0
    assert f"paritybed fhir serve --db {out / 'fhir.db'}" in text
    import httpx

    from paritybed.fhir.server import running_server

    with running_server(out / "fhir.db") as url:  # what `paritybed fhir serve --db` serves
        assert httpx.get(f"{url}/Patient", params={"_count": 0}).json()["total"] == 37
    tail = text[text.index("Report:"):]
    assert f"Report: {out / 'report.html'}" in tail and "parity verdict:" in tail
    make = (REPO / "Makefile").read_text()  # what make demo runs: set-up (HAPI not built), then this command
    assert "\t@PARITYBED_SETUP_HAPI=0 bash scripts/setup.sh\n\t@$(PB) demo --out $(DEMO_OUT)" in make
