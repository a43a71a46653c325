"""The scenario library, checked on the traces: each flawed scenario differs from production
exactly where its name says, and the default's staging arm has production's shapes.

Runs are shortened (2-3 days; 4.5 for the mid-week hotfix) and use the shared Synthea patients
for both arms; `make demo` runs the full weeks with generated populations.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy.spatial.distance import jensenshannon

from paritybed.fhir.population import load_population
from paritybed.run import simulate_arm, with_duration
from paritybed.scenarios import PopulationSettings, load_scenario

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "scenarios"
HOUR = 3_600_000_000_000
FLAWED = ("uniform-staging", "missing-diagnosticreport", "no-break-glass", "hotfix-egress", "short-staging-contexts")


@pytest.fixture(scope="module")
def traces(shared_synthea):
    pop = load_population(shared_synthea)

    @lru_cache(maxsize=None)
    def get(name: str, days: float = 2) -> dict[str, pa.Table]:
        sc = load_scenario(LIB / f"{name}.yaml").model_copy(update={"population": PopulationSettings(folder=str(shared_synthea))})
        sc = with_duration(sc, days=days)
        return {a: simulate_arm(sc, a, pop) for a in ("production", "staging")}

    return get


def col(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(t[name].cast(pa.string()).to_pylist(), dtype=object)


def legit(t: pa.Table) -> pa.Table:
    """Clinical work only: no attack, hotfix or expiry-probe rows."""
    return t.filter(pc.equal(t["label"].cast(pa.string()), ""))


def pairs(t: pa.Table) -> set[tuple[str, str, str]]:
    t = legit(t)
    t = t.filter(pc.equal(t["kind"].cast(pa.string()), "fhir"))
    return set(zip(col(t, "agent"), col(t, "resource_type"), col(t, "interaction")))


def hour_profile(t: pa.Table) -> np.ndarray:
    t = legit(t)
    t = t.filter(pc.equal(t["kind"].cast(pa.string()), "fhir"))
    return np.bincount((t["t_ns"].to_numpy() // HOUR) % 24, minlength=24).astype(float)


def lane_rows(t: pa.Table) -> int:
    return int(pc.sum(pc.not_equal(t["lane"].cast(pa.string()), "")).as_py() or 0)


@pytest.mark.parametrize("name", FLAWED)
def test_flawed_scenarios_change_only_the_arms(name):
    """Same hospital, patients, fleet, registry, break-glass classes, attacks and gate as the
    default: the story is told by the arms alone."""
    base = load_scenario(LIB / "community-hospital-week.yaml").model_dump(exclude={"name", "description", "arms"})
    other = load_scenario(LIB / f"{name}.yaml").model_dump(exclude={"name", "description", "arms"})
    assert other == base


def test_default_staging_arm_matches_production_shapes(traces):
    t = traces("community-hospital-week", 3)
    prod, stag = t["production"], t["staging"]
    assert pairs(prod) == pairs(stag)
    hp, hs = hour_profile(prod), hour_profile(stag)
    assert jensenshannon(hp, hs) < 0.05
    assert 0.85 < hs.sum() / hp.sum() < 1.15
    lanes = lambda x: set(col(x.filter(pc.equal(x["kind"].cast(pa.string()), "lane_open")), "lane"))
    assert lanes(stag) == {"code_blue", "rapid_response", "ed_triage"} == lanes(prod)
    labels = set(col(prod, "label")) - {""}
    # cds-result-sweep on day 2 14:20, cds-exfil and prior-auth-coverage-sweep on day 3; the others come later
    assert {x for x in labels if x.startswith("attack:")} == {"attack:cds-exfil", "attack:cds-result-sweep",
                                                             "attack:prior-auth-coverage-sweep"}
    assert not {x for x in col(stag, "label") if x.startswith("attack:")}


def test_uniform_staging_is_flat_by_hour_where_production_is_bursty(traces):
    t = traces("uniform-staging")
    hp, hs = hour_profile(t["production"]), hour_profile(t["staging"])
    assert hp.max() / hp.mean() > 1.8  # morning labs, rounds, clinics
    assert hs.max() / hs.mean() < 1.35
    assert 0.85 < hs.sum() / hp.sum() < 1.15  # same daily volume
    assert pairs(t["production"]) == pairs(t["staging"])


def test_missing_diagnosticreport_staging_never_reads_it(traces):
    t = traces("missing-diagnosticreport")
    dr = lambda x: [p for p in pairs(x) if p[0] == "cds" and p[1] == "DiagnosticReport"]
    assert dr(t["production"]) == [("cds", "DiagnosticReport", "search")]  # by patient, and by id patient-scoped
    assert dr(t["staging"]) == []
    assert pairs(t["production"]) - pairs(t["staging"]) == set(dr(t["production"]))


def test_no_break_glass_staging_has_no_lane_rows(traces):
    t = traces("no-break-glass")
    assert lane_rows(t["production"]) > 0
    assert lane_rows(t["staging"]) == 0
    assert pairs(t["staging"]) <= pairs(t["production"])


def test_hotfix_egress_only_in_production_after_the_change(traces):
    t = traces("hotfix-egress", 4.5)
    since = (3 * 24 + 14) * HOUR  # day 4, 14:00 (the run starts Monday 00:00)
    for arm, table in t.items():
        e = table.filter(pc.equal(table["address"].cast(pa.string()), "127.0.0.31:9443"))
        if arm == "staging":
            assert e.num_rows == 0
            continue
        assert e.num_rows > 50
        assert e["t_ns"].to_numpy().min() >= since
        assert set(col(e, "agent")) == {"cds"} and set(col(e, "kind")) == {"egress"}
        assert set(col(e, "expected")) == {"deny"} and set(col(e, "label")) == {"hotfix:fallback-model"}
        after = table.filter(pc.greater_equal(table["t_ns"], since))
        queries = len(set(col(after.filter(pc.equal(after["context_kind"].cast(pa.string()), "query")), "context_id")))
        assert 0.15 < e.num_rows / queries < 0.25  # share 0.2 of the CDS queries


def held_s(t: pa.Table, agent: str) -> np.ndarray:
    """How long each launch context of ``agent`` was held (opening to closing), in seconds."""
    rows = t.filter(pc.equal(t["agent"].cast(pa.string()), agent))
    since, out = {}, []
    for r in rows.select(["kind", "replica", "launch_context", "t_ns"]).to_pylist():
        key = (r["replica"], r["launch_context"])
        if r["kind"] == "context_open":
            since[key] = r["t_ns"]
        elif r["kind"] == "context_close" and key in since:
            out.append((r["t_ns"] - since.pop(key)) / 1e9)
    return np.asarray(out)


def test_short_staging_contexts_close_at_the_first_write_in_staging_only(traces):
    t = traces("short-staging-contexts")
    prod, stag = held_s(t["production"], "scribe"), held_s(t["staging"], "scribe")
    assert len(prod) > 100 and len(stag) > 100
    assert np.median(stag) < 90 < 300 < np.median(prod)  # the draft a minute in; production signs minutes later
    for agent in ("cds", "prior-auth"):  # only the scribe's arm differs
        assert abs(np.median(held_s(t["production"], agent)) - np.median(held_s(t["staging"], agent))) < 10


def test_every_request_of_the_work_presents_its_open_launch_context(traces):
    """The hospital opens a context where the work starts and closes it after the work's last
    request: every legitimate request of an agent presents a context that is open when it is sent
    (break-glass rows present none)."""
    t = legit(traces("community-hospital-week")["production"])
    rows = t.select(["kind", "agent", "replica", "launch_context", "lane", "t_ns"]).to_pylist()
    open_now: set[tuple] = set()
    seen_kinds = set()
    for r in rows:
        key = (r["agent"], r["replica"], r["launch_context"])
        if r["kind"] == "context_open":
            open_now.add(key)
        elif r["kind"] == "context_close":
            open_now.discard(key)
        elif r["kind"] == "fhir":
            if r["lane"]:
                assert not r["launch_context"]
                continue
            assert key in open_now, r
            seen_kinds.add(r["agent"])
    assert seen_kinds == {"scribe", "cds", "prior-auth"}
