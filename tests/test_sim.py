"""The hospital simulation on the 37 shared Synthea patients: trace shape, determinism, the
clinical rhythms, break-glass, attacks and the request vocabulary."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from paritybed.agents.requests import SAFE_PARAMS
from paritybed.agents.trace import TRACE_SCHEMA, read_trace, write_trace
from paritybed.fhir.population import load_population
from paritybed.run import LoadedPopulation, simulate_arm, simulate_arms, with_duration
from paritybed.scenarios import ArmOverrides, Omission, PopulationSettings, load_scenario, resolve_arm, resolve_arms
from paritybed.sim.hospital import Hospital

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "scenarios" / "tiny.yaml"
WEEK = REPO / "scenarios" / "community-hospital-week.yaml"
HOUR = 3_600_000_000_000
TARGET = re.compile(r"^/fhir/([A-Z][A-Za-z]+)(?:/([A-Za-z0-9-]{1,64}))?(?:\?(.*))?$")


@pytest.fixture(scope="module")
def pop(shared_synthea):
    return load_population(shared_synthea)


def on(path: Path, folder: Path, days: float | None = None, hours: float | None = None, **update):
    sc = load_scenario(path).model_copy(update={"population": PopulationSettings(folder=str(folder)), **update})
    return with_duration(sc, days=days, hours=hours)


@pytest.fixture(scope="module")
def tiny(shared_synthea, pop):
    sc = on(TINY, shared_synthea, hours=12)
    return sc, {a: simulate_arm(sc, a, pop) for a in ("production", "staging")}


@pytest.fixture(scope="module")
def week(shared_synthea, pop):
    """The default scenario for 3 days with every scribe-documented moment recorded."""
    sc = on(WEEK, shared_synthea, days=3)
    agents = [a.model_copy(update={"settings": a.settings.model_copy(update={"usage": 1.0})}) if a.agent_class == "ambient_scribe" else a
              for a in sc.agents]
    sc = sc.model_copy(update={"agents": agents})
    h = Hospital(sc, resolve_arm(sc, "production"), pop)
    return sc, h.run().to_pylist(), h.stats


def test_trace_schema_order_and_numbering(tiny):
    _, arms = tiny
    for name, t in arms.items():
        assert t.schema.equals(TRACE_SCHEMA, check_metadata=True)
        assert t.num_rows > 3000
        tns = t["t_ns"].to_numpy()
        assert (np.diff(tns) >= 0).all()
        assert t["seq"].to_pylist() == list(range(t.num_rows))
        assert set(t["arm"].to_pylist()) == {name}


def test_every_fhir_request_is_plain_rest_within_the_safe_parameter_list(tiny):
    _, arms = tiny
    for t in arms.values():
        for r in t.to_pylist():
            if r["kind"] != "fhir":
                continue
            m = TARGET.match(r["path"])
            assert m, r["path"]
            rtype, rid, query = m.groups()
            assert rtype == r["resource_type"] and r["shape"] == "plain"
            names = [kv.split("=")[0] for kv in query.split("&")] if query else []
            assert set(names) <= SAFE_PARAMS, r["path"]
            assert r["params"] == ",".join(sorted(set(names)))
            expect = {("GET", False, True): "search", ("GET", True, False): "read", ("POST", False, False): "create",
                      ("PUT", True, False): "update"}[(r["method"], rid is not None, query is not None)]
            assert r["interaction"] == expect, r
            assert (rid or "") == r["resource_id"]
            if query:
                assert re.fullmatch(r"[A-Za-z0-9._|:/,=&-]{1,600}", query)


def test_every_id_exists_in_the_population(tiny, pop):
    _, arms = tiny
    patients = {p.id for p in pop.patients}
    encounters = {e.id for e in pop.encounters}
    for t in arms.values():
        for r in t.to_pylist():
            if r["kind"] == "fhir" and r["patient_id"]:
                assert r["patient_id"] in patients
            if r["resource_id"]:
                rtype, rid = r["resource_type"], r["resource_id"]
                ok = rid in patients if rtype == "Patient" else rid in encounters if rtype == "Encounter" else \
                    rid in pop.ids(r["patient_id"], rtype)
                assert ok, (rtype, rid, r["patient_id"])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, shared_synthea, pop):
    sc = on(TINY, shared_synthea, hours=4)
    paths = []
    for i in range(2):
        p = tmp_path / f"p{i}.parquet"
        write_trace(simulate_arm(sc, "production", pop), p)
        paths.append(p)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    other = tmp_path / "other.parquet"
    write_trace(simulate_arm(sc.model_copy(update={"seed": sc.seed + 5}), "production", pop), other)
    assert other.read_bytes() != paths[0].read_bytes()
    assert read_trace(paths[0]).num_rows > 0


def test_parallel_and_sequential_arms_are_identical(shared_synthea, pop):
    sc = on(TINY, shared_synthea, hours=3)
    pops = {a: LoadedPopulation(shared_synthea, pop) for a in ("production", "staging")}
    par = simulate_arms(sc, resolve_arms(sc), pops, parallel=True)
    seq = simulate_arms(sc, resolve_arms(sc), pops, parallel=False)
    for a in ("production", "staging"):
        assert par[a].table.equals(seq[a].table)
        assert par[a].stats == seq[a].stats


def test_context_bursts_are_tight(tiny):
    _, arms = tiny
    rows = arms["production"].to_pylist()
    by_ctx: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        if r["context_kind"] == "query" and r["kind"] == "fhir" and r["method"] == "GET":
            by_ctx[r["context_id"]].append(r["t_ns"])
    gaps = [b - a for ts in by_ctx.values() for a, b in zip(ts, ts[1:])]
    assert len(gaps) > 1000
    assert min(gaps) >= 1_000_000  # each waits for the previous response (>= 1 ms)
    assert np.median(gaps) < 20_000_000 and max(gaps) < 500_000_000  # milliseconds, not seconds


def test_the_wards_start_at_steady_state_and_never_exceed_the_beds(week):
    sc, _, stats = week
    h = sc.hospital
    assert stats["initial_census"] == round(h.beds * h.occupancy)
    assert stats["peak_census"] <= h.beds
    days = 3
    assert 0.7 * h.admissions_per_day * days < stats["admissions"] < 1.3 * h.admissions_per_day * days * 1.133


def hours_of(rows, **match) -> np.ndarray:
    t = np.array([r["t_ns"] for r in rows if all(r[k] == v for k, v in match.items())], dtype=np.int64)
    return (t // HOUR) % 24


def notes(rows, workflow: str) -> list[dict]:
    """One row per scribe documentation moment: each read burst reads the Patient once."""
    return [r for r in rows if r["agent"] == "scribe" and r["workflow"] == workflow and r["resource_type"] == "Patient"]


def test_discharges_centre_on_mid_afternoon(week):
    _, rows, _ = week
    hours = hours_of(notes(rows, "discharge"))
    assert len(hours) > 80
    assert 13 <= np.median(hours) <= 17, np.bincount(hours, minlength=24)
    assert (hours < 12).mean() < 0.25


def test_admissions_are_mostly_noon_to_midnight_and_rounds_at_seven(week):
    _, rows, _ = week
    adm = hours_of(notes(rows, "admission"))
    assert len(adm) > 80 and (adm >= 12).mean() > 0.6
    rounds = hours_of(notes(rows, "rounds"))
    assert set(rounds.tolist()) <= {7, 8}
    handoff = hours_of(notes(rows, "handoff"))
    assert set(handoff.tolist()) <= {7, 19}
    clinic = hours_of(notes(rows, "outpatient"))
    assert set(clinic.tolist()) <= set(range(7, 18))
    prior = hours_of([r for r in rows if r["agent"] == "prior-auth" and r["kind"] == "fhir"])
    assert set(prior.tolist()) <= set(range(8, 17))


def test_uniform_arrivals_flatten_the_day_with_the_same_volume(shared_synthea, pop):
    sc = on(WEEK, shared_synthea, days=2)
    bursty = simulate_arm(sc, "production", pop)
    uni = sc.model_copy(update={"arms": sc.arms.model_copy(update={"production": ArmOverrides(arrivals="uniform", attacks=False)})})
    flat = simulate_arm(uni, "production", pop)
    def profile(t):
        rows = t.filter(pa.compute.equal(t["kind"].cast(pa.string()), "fhir"))
        return np.bincount((rows["t_ns"].to_numpy() // HOUR) % 24, minlength=24)
    b, f = profile(bursty), profile(flat)
    assert 0.85 < f.sum() / b.sum() < 1.15
    assert b.max() / b.mean() > 1.8 and f.max() / f.mean() < 1.35


def test_break_glass_lanes_claims_identity_and_expiry_probes(tiny, pop):
    sc, arms = tiny
    panels: dict[str, set[str]] = defaultdict(set)
    for e in pop.encounters:
        if e.practitioner_id:
            panels[e.practitioner_id].add(e.patient_id)
    for arm, t in arms.items():
        rows = t.to_pylist()
        opens = [r for r in rows if r["kind"] == "lane_open"]
        assert opens, arm
        for o in opens:
            cls = next(c for c in sc.break_glass if c.name == o["lane"])
            practitioner, role = o["identity"].split("|")
            assert practitioner in pop.practitioners and role == f"{cls.name.replace('_', '-')}-responder"
            assert o["patient_id"] not in panels[practitioner]
            assert o["duration_ns"] == cls.duration_min * 60 * 10**9
            under = [r for r in rows if r["claim_id"] == o["claim_id"] and r["agent"] == o["agent"] and r["kind"] == "fhir"]
            ok = [r for r in under if r["expected"] == "allow"]
            late = [r for r in under if r["label"] == "lane-expiry-probe"]
            assert len(ok) == cls.requests
            assert all(o["t_ns"] < r["t_ns"] < o["t_ns"] + cls.active_min * 60 * 10**9 for r in ok)
            assert all(r["lane"] == o["lane"] and r["patient_id"] == o["patient_id"] for r in under)
            assert {(r["resource_type"]) for r in ok} & {e.type for e in cls.lane}
            for r in late:
                assert r["expected"] == "deny" and r["t_ns"] > o["t_ns"] + o["duration_ns"]
    # staging drills: exactly drill_per_class activations per class, each class probed after expiry
    st = arms["staging"].to_pylist()
    for cls in sc.break_glass:
        claims = {r["claim_id"] for r in st if r["kind"] == "lane_open" and r["lane"] == cls.name}
        assert len(claims) == resolve_arm(sc, "staging").drill_per_class
        assert any(r["label"] == "lane-expiry-probe" and r["lane"] == cls.name for r in st)


def test_attacks_only_in_production_with_their_labels(tiny):
    sc, arms = tiny
    prod, stag = arms["production"].to_pylist(), arms["staging"].to_pylist()
    assert not [r for r in stag if r["label"].startswith("attack:")]
    labels = Counter(r["label"] for r in prod if r["label"].startswith("attack:"))
    assert labels == {f"attack:{a.name}": a.count for a in sc.attacks}
    exfil = [r for r in prod if r["label"] == "attack:exfil"]
    assert {(r["kind"], r["address"], r["agent"], r["replica"], r["expected"]) for r in exfil} == {("egress", "127.0.0.66:443", "cds", 1, "deny")}
    sweep = [r for r in prod if r["label"] == "attack:sweep"]
    assert len({r["resource_id"] for r in sweep}) == 37  # every patient of the population, in turn
    assert all(3 * HOUR <= r["t_ns"] < 4 * HOUR for r in sweep)  # 09:00 on a run starting 06:00
    spread = max(r["t_ns"] for r in sweep) - min(r["t_ns"] for r in sweep)
    assert 0 < spread < 60 * 10**9  # over_min: 1 -> the 40 reads within one minute


def test_cds_embeds_over_one_connection_per_query(tiny):
    _, arms = tiny
    rows = arms["production"].to_pylist()
    egress = [r for r in rows if r["kind"] == "egress" and r["agent"] == "cds" and not r["label"]]
    queries = {r["context_id"] for r in rows if r["agent"] == "cds" and r["context_kind"] == "query"}
    assert len(egress) == len(queries) and {r["endpoint"] for r in egress} == {"embedding-service"}
    assert all(24 <= r["egress_calls"] <= 48 for r in egress)
    drafts = [r for r in rows if r["agent"] == "cds" and r["interaction"] == "create"]
    assert {r["resource_type"] for r in drafts} == {"MedicationRequest", "ServiceRequest"}
    assert 0.15 < len(drafts) / len(queries) < 0.35


def test_scribe_reads_then_writes_after_signing(tiny):
    _, arms = tiny
    rows = [r for r in arms["production"].to_pylist() if r["agent"] == "scribe" and r["context_kind"] == "encounter"]
    types = Counter(r["resource_type"] for r in rows)
    assert {"Patient", "Encounter", "Observation", "MedicationRequest", "Condition", "AllergyIntolerance", "DocumentReference"} <= set(types)
    assert "MedicationStatement" not in types  # declared in its scope, never read: a minimum-necessary finding
    first_read = {}
    for r in rows:
        first_read.setdefault(r["context_id"] + r["workflow"], r["t_ns"])
    writes = [r for r in rows if r["method"] in ("POST", "PUT")]
    assert writes
    for w in writes:
        assert w["t_ns"] - first_read[w["context_id"] + w["workflow"]] > 60 * 10**9  # minutes later


def test_paging_follows_the_patients_counts(tiny, pop):
    _, arms = tiny
    rows = [r for r in arms["production"].to_pylist() if r["agent"] == "cds" and "category=laboratory" in r["path"]]
    pages: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        m = re.search(r"_offset=(\d+)", r["path"])
        pages[r["patient_id"]].add(m.group(1) if m else "0")
    assert any(len(p) > 1 for p in pages.values()) and any(len(p) == 1 for p in pages.values())
    for pid, p in pages.items():
        n = pop.count(pid, "Observation", "laboratory")
        assert len(p) == max(1, min(3, -(-n // 50))), (pid, n, p)


def test_omitted_type_never_appears_for_that_agent(shared_synthea, pop):
    sc = on(TINY, shared_synthea, hours=6)
    sc = sc.model_copy(update={"arms": sc.arms.model_copy(update={"staging": ArmOverrides(omit=[Omission(agent="cds", type="DiagnosticReport")])})})
    prod, stag = (simulate_arm(sc, a, pop).to_pylist() for a in ("production", "staging"))
    assert any(r["agent"] == "cds" and r["resource_type"] == "DiagnosticReport" for r in prod)
    assert not any(r["agent"] == "cds" and r["resource_type"] == "DiagnosticReport" for r in stag)


def test_run_command_writes_traces_and_summary(tmp_path, shared_synthea):
    text = TINY.read_text().replace("synthea: {patients: 10, seed: 7, years_of_history: 3}", f"folder: {shared_synthea}")
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(text)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-P", "-m", "paritybed.cli", "run", str(scenario), "--out", str(out), "--hours", "3", "--traces-only"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "simulate" in r.stderr and "FHIR requests" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    for arm in ("production", "staging"):
        t = read_trace(out / "traces" / f"{arm}.parquet")
        s = summary["arms"][arm]
        fhir = [x for x in t.to_pylist() if x["kind"] == "fhir"]
        assert s["fhir_requests"] == len(fhir) == sum(s["fhir_by_agent_class"].values()) == sum(s["fhir_per_hour_of_day"])
        assert sorted(s["fhir_by_type"].items()) == sorted(Counter(x["resource_type"] for x in fhir).items())
        assert len(s["fhir_per_hour"]) == 3 and s["population"]["derived_from"] == str(shared_synthea)
        hospital = s["hospital"]  # tiny derives one patient per visit from the 37: none is reused
        visits = hospital["ed_visits"] + hospital["admissions"] + hospital["initial_census"] + hospital["outpatient_visits"]
        assert hospital["patients_seen"] == visits <= s["population"]["patients"] and hospital["reused_patients"] == 0
    bad = subprocess.run([sys.executable, "-P", "-m", "paritybed.cli", "run", str(tmp_path / "nope.yaml"), "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "no such scenario file" in bad.stderr and "Traceback" not in bad.stderr


def test_docs_trace_documents_every_column():
    from paritybed.agents.trace import COLUMNS

    doc = (REPO / "docs" / "trace.md").read_text()
    assert [c for c in COLUMNS if f"| `{c}` |" not in doc] == []


@pytest.mark.parametrize("parallel", [True, False])
def test_a_population_without_encounters_is_an_input_error_in_either_mode(shared_synthea, pop, parallel):
    import copy

    from paritybed.core.errors import InputError

    empty = copy.copy(pop)
    empty.encounters = []
    sc = on(TINY, shared_synthea, hours=1)
    with pytest.raises(InputError, match="has no Encounter"):
        simulate_arms(sc, resolve_arms(sc), {a: LoadedPopulation(shared_synthea, empty) for a in ("production", "staging")}, parallel=parallel)
