"""Derived patients (fhir/derive.py, charts.py, reidentify.py, bulk.py) on the 37 real Synthea
patients: distinct, consistent, deterministic for a seed, cached, and loaded in bulk exactly as
the generic load stores them; and the hospital draws one patient per visit (sim/pools.py)."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import orjson
import pytest

from paritybed.fhir import bulk, loader
from paritybed.fhir.bundles import synthea_files
from paritybed.fhir.derive import Demand, DeriveOptions, derive
from paritybed.fhir.population import load_population
from paritybed.fhir.reidentify import TAG_SYSTEM, VISIT_SYSTEM
from paritybed.fhir.store import Store
from paritybed.sim.pools import CHAINS

START = date(2026, 1, 5)
SMALL = DeriveOptions(seed=3, demands=(Demand("ed", CHAINS["ed"], 6), Demand("inpatient", CHAINS["inpatient"], 5),
                                       Demand("outpatient", CHAINS["outpatient"], 19)),
                      visits_before=START, recent_days=28)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def derived(shared_synthea: Path, cache: Path) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("PARITYBED_CACHE", str(cache))
    try:
        return derive(shared_synthea, SMALL).path
    finally:
        mp.undo()


def bundles(folder: Path) -> dict[str, dict]:
    return {p.name: orjson.loads(p.read_bytes()) for p in synthea_files(folder) if "Information" not in p.name}


def test_one_distinct_patient_per_copy_with_ids_of_its_own(derived: Path, shared_synthea: Path) -> None:
    got = bundles(derived)
    assert len(got) == 30
    base_ids = {m for p in synthea_files(shared_synthea) for m in UUID.findall(p.read_text())}
    owner: dict[str, str] = {}
    for name, b in got.items():
        patient = b["entry"][0]["resource"]
        assert patient["resourceType"] == "Patient" and name.endswith(f"_{patient['id']}.json")
        assert {"system": TAG_SYSTEM, "code": "derived-patient"}.items() <= patient["meta"]["tag"][-1].items()
        assert "deceasedDateTime" not in patient
        for e in b["entry"]:
            rid = e["resource"]["id"]
            assert rid not in base_ids, "a copy keeps none of the base record's ids"
            assert owner.setdefault(rid, name) == name, f"{rid} belongs to two derived patients"
    names = Counter(tuple(b["entry"][0]["resource"]["name"][0]["given"]) + (b["entry"][0]["resource"]["name"][0]["family"],)
                    for b in got.values())
    assert max(names.values()) == 1, "every derived patient has a name of its own"


def test_every_reference_names_an_entry_of_the_copy_and_the_visit_is_recent(derived: Path) -> None:
    kinds: Counter[str] = Counter()
    for name, b in bundles(derived).items():
        urls = {e["fullUrl"] for e in b["entry"]}
        refs = set(re.findall(r'"reference":"(urn:uuid:[^"]+)"', orjson.dumps(b).decode()))
        assert refs <= urls, f"{name}: dangling {sorted(refs - urls)[:3]}"
        visits = [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Encounter"
                  and any(t["system"] == VISIT_SYSTEM for t in e["resource"].get("meta", {}).get("tag", []))]
        assert len(visits) == 1, f"{name}: one visit per derived patient"
        kinds[visits[0]["meta"]["tag"][-1]["code"]] += 1
        day = date.fromisoformat(visits[0]["period"]["start"][:10])
        assert START - timedelta(days=28) <= day < START
    assert kinds == {"ed": 6, "inpatient": 5, "outpatient": 19}


def test_the_index_built_while_deriving_is_what_load_population_reads(derived: Path, cache: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARITYBED_CACHE", str(cache))
    cached = load_population(derived)
    fresh = load_population(derived, use_cache=False)
    assert cached.summary() == fresh.summary()
    assert [(e.id, e.visit, e.class_code) for e in cached.encounters] == [(e.id, e.visit, e.class_code) for e in fresh.encounters]
    assert cached.claims == fresh.claims
    assert fresh.derived and Counter(e.visit for e in fresh.encounters if e.visit) == {"ed": 6, "inpatient": 5, "outpatient": 19}
    for p in fresh.patients[:5]:
        for rtype in ("Condition", "Observation", "Coverage", "Claim"):
            assert cached.ids(p.id, rtype) == fresh.ids(p.id, rtype)


def test_deterministic_for_a_seed_and_cached_by_its_options(shared_synthea: Path, derived: Path, cache: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARITYBED_CACHE", str(cache))
    again = derive(shared_synthea, SMALL)
    assert again.cached and again.path == derived and again.seconds < 5
    monkeypatch.setenv("PARITYBED_CACHE", str(tmp_path / "other"))
    ticks: list[tuple[int, int]] = []
    fresh = derive(shared_synthea, SMALL, progress=lambda n, total: ticks.append((n, total)))
    assert not fresh.cached and ticks[-1] == (30, 30)
    first = {p.name: p.read_bytes() for p in synthea_files(derived)}
    second = {p.name: p.read_bytes() for p in synthea_files(fresh.path)}
    assert first == second, "same base, options and seed: byte-identical bundles"
    other = derive(shared_synthea, DeriveOptions(**{**SMALL.__dict__, "seed": 4}))
    assert other.path != fresh.path
    assert not set(bundles(other.path)) & set(first), "another seed: other patients"


def dump(db: Path) -> tuple[dict, dict]:
    """Every resource (lastUpdated masked) and every index row, keyed by (type, id)."""
    con = sqlite3.connect(db)
    mask = re.compile(rb'"lastUpdated":"[^"]*"')
    res = {(t, i): (v, d, m, mask.sub(b"", b or b"")) for t, i, v, d, m, b in
           con.execute("SELECT type, id, version, deleted, method, body FROM resources")}
    rid = {r: (t, i) for r, t, i in con.execute("SELECT rid, type, id FROM resources")}
    rows = {t: sorted((rid[r[0]],) + tuple(r[1:]) for r in con.execute(f"SELECT * FROM {t}"))
            for t in ("tokens", "dates", "numbers", "combos")}
    con.close()
    return res, rows


@pytest.mark.parametrize("workers", [1, 3])
def test_bulk_load_stores_exactly_what_the_transaction_code_stores(derived: Path, cache: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """In one process, or in parts built by forked processes and merged (row keys moved)."""
    monkeypatch.setenv("PARITYBED_CACHE", str(cache))
    monkeypatch.setattr(bulk, "WORKERS", workers)
    store = Store(tmp_path / "bulk.db")
    assert bulk.derived_loader(store, synthea_files(derived)[0].parent) is not None
    fast = loader.load_into_store(store, derived)
    store.close()
    monkeypatch.setattr(bulk, "derived_loader", lambda store, folder: None)
    store = Store(tmp_path / "generic.db")
    slow = loader.load_into_store(store, derived)
    again = loader.load_into_store(store, derived)  # a second load updates in place: nothing new
    store.close()
    assert fast == slow == again
    a, b = dump(tmp_path / "bulk.db"), dump(tmp_path / "generic.db")
    assert a[0] == b[0]
    for table in a[1]:
        assert a[1][table] == b[1][table], table


def test_bulk_load_steps_aside_when_the_patients_are_there_or_a_file_changed(derived: Path, cache: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARITYBED_CACHE", str(cache))
    store = Store(tmp_path / "x.db")
    folder = synthea_files(derived)[0].parent
    loader.load_into_store(store, derived)
    assert bulk.derived_loader(store, folder) is None, "already loaded: the generic load updates in place"
    store.close()
    copy = tmp_path / "copy"
    (copy / "fhir").mkdir(parents=True)
    for p in synthea_files(derived):
        (copy / "fhir" / p.name).write_bytes(p.read_bytes())
    (copy / "paritybed-derived.json").write_bytes((derived / "paritybed-derived.json").read_bytes())
    victim = sorted((copy / "fhir").glob("*_*.json"))[0]
    victim.write_bytes(victim.read_bytes().replace(b'"gender":"', b'"gender": "'))
    assert bulk.derived_loader(Store(), copy / "fhir") is None, "an edited file: the generic load"


def test_a_new_store_restores_the_prebuilt_database(derived: Path, cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARITYBED_CACHE", str(cache))
    db = bulk.prebuilt(derived / "fhir")
    assert db is not None and db.parent == derived
    assert bulk.prebuilt(derived) == db, "built once, then reused"
    mtime = db.stat().st_mtime_ns
    counts = loader.build_db([derived], tmp_path / "demo.db")
    assert db.stat().st_mtime_ns == mtime
    store = Store(tmp_path / "demo.db")
    assert store.counts() == counts and counts["Patient"] == 30
    store.write("Patient", "extra", {"resourceType": "Patient"}, method="PUT")  # a restored store is an ordinary one
    assert store.read("Patient", "extra") is not None
    store.close()
    assert dump(tmp_path / "demo.db")[0].keys() - dump(db)[0].keys() == {("Patient", "extra")}


def test_callers_at_the_same_time_wait_for_one_build(derived: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's background builder and a server starting on the same population: one build."""
    import threading
    import time

    monkeypatch.setenv("PARITYBED_CACHE", str(cache))
    (derived / bulk.DB_NAME).unlink(missing_ok=True)
    real, builds = bulk._build, []

    def counted(folder: Path, path: Path) -> Path | None:
        builds.append(path)
        time.sleep(0.5)  # the other caller arrives while this one builds
        return real(folder, path)

    monkeypatch.setattr(bulk, "_build", counted)
    got: list[Path | None] = []
    callers = [threading.Thread(target=lambda: got.append(bulk.prebuilt(derived))) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(builds) == 1 and got == [derived / bulk.DB_NAME] * 2


def test_processes_asking_at_once_derive_once(shared_synthea: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep's workers asking for the same population: one derives, the others find it made."""
    import threading
    import time

    from paritybed.fhir import derive as derive_module

    monkeypatch.setenv("PARITYBED_CACHE", str(tmp_path))
    real, made = derive_module._derive, []

    def counted(*args: object) -> object:
        made.append(1)
        time.sleep(0.5)  # the other caller arrives while this one derives
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(derive_module, "_derive", counted)
    got: list[tuple[bool, Path]] = []
    callers = [threading.Thread(target=lambda: got.append((lambda r: (r.cached, r.path))(derive(shared_synthea, SMALL))))
               for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(made) == 1 and sorted(c for c, _ in got) == [False, True] and got[0][1] == got[1][1]


def _derive_two_in_a_daemon(base: Path, conn: object) -> None:
    from paritybed.run import derive_populations

    try:
        got = derive_populations({"production": (base, SMALL), "staging": (base, dataclasses.replace(SMALL, seed=4))})
        conn.send(("ok", {k: str(v) for k, v in got.items()}))  # type: ignore[attr-defined]
    except BaseException as e:  # noqa: BLE001 - reported to the test
        conn.send(("error", f"{type(e).__name__}: {e}"))  # type: ignore[attr-defined]


def test_a_sweep_worker_derives_both_arms_in_itself(shared_synthea: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A Dask worker is a daemonic process, which may not fork children: two populations to derive
    there are derived one after the other in the worker (they failed every sweep cell whose derived
    patients were not cached yet: 'daemonic processes are not allowed to have children')."""
    import multiprocessing as mp

    monkeypatch.setenv("PARITYBED_CACHE", str(tmp_path))
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_derive_two_in_a_daemon, args=(shared_synthea, child), daemon=True)
    p.start()
    assert parent.poll(300), "the daemonic process did not answer"
    status, value = parent.recv()
    p.join()
    assert status == "ok", value
    assert set(value) == {"production", "staging"} and value["production"] != value["staging"]
    assert all(len(bundles(Path(v))) == 30 for v in value.values())


def week_on(folder: Path, derive_settings: object | None, days: float) -> tuple:
    """The default scenario on `folder` (derived with `derive_settings`, else plain) for `days`."""
    from paritybed.run import prepare_populations, with_duration
    from paritybed.scenarios import PopulationSettings, load_scenario, resolve_arms

    sc = load_scenario(Path(__file__).resolve().parent.parent / "scenarios" / "community-hospital-week.yaml")
    sc = with_duration(sc.model_copy(update={"population": PopulationSettings(folder=str(folder), derive=derive_settings)}),
                       days=days)
    arms = resolve_arms(sc)
    return sc, arms, prepare_populations(sc, arms)


def test_each_visit_is_a_patient_not_seen_before_and_inpatients_come_back_daily(shared_synthea: Path, cache: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from paritybed.run import _simulate
    from paritybed.scenarios.population import DeriveSettings

    monkeypatch.setenv("PARITYBED_CACHE", str(cache))
    sc, arms, pops = week_on(shared_synthea, DeriveSettings(), days=2)
    assert pops["production"].folder != pops["staging"].folder, "staging derives other patients (seed + 1000)"
    res = _simulate(sc, arms["production"], pops["production"].index)
    h = res.stats
    visits = h["ed_visits"] + h["admissions"] + h["initial_census"] + h["outpatient_visits"]
    assert h["reused_patients"] == 0 and h["patients_seen"] == visits > 1_500
    assert len(pops["production"].index.patients) >= visits
    rows = res.table.select(["t_ns", "patient_id", "workflow"]).to_pylist()
    days: dict[str, set[int]] = {}
    flows: dict[str, set[str]] = {}
    for r in rows:
        if r["patient_id"] and r["workflow"] not in ("break_glass", "attack"):
            days.setdefault(r["patient_id"], set()).add(r["t_ns"] // (24 * 3_600 * 10**9))
            flows.setdefault(r["patient_id"], set()).add(r["workflow"])
    rounds = {p for p, f in flows.items() if "rounds" in f}
    assert sum(1 for p in rounds if days[p] == {0, 1}) > 100, "inpatients are seen on each day of their stay"
    clinic_only = [p for p, f in flows.items() if f <= {"outpatient", "order", "lab_result"} and "outpatient" in f]
    assert clinic_only and all(len(days[p]) == 1 for p in clinic_only), "a clinic patient does not come back"


def test_a_plain_population_is_reused_only_once_every_patient_was_seen(shared_synthea: Path) -> None:
    from paritybed.run import _simulate

    sc, arms, pops = week_on(shared_synthea, None, days=1)
    h = _simulate(sc, arms["production"], pops["production"].index).stats
    assert h["patients_seen"] <= 37 and h["reused_patients"] > 0
    assert h["patients_seen"] + h["reused_patients"] == h["ed_visits"] + h["admissions"] + h["initial_census"] + h["outpatient_visits"]
