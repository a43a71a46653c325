"""Population benchmark: the default week's derived patients (docs/population.md, "Derived
patients"), production arm, each step timed in wall and CPU seconds (the machine is shared:
CPU is the steadier figure).

* **derive**: the arm's derived population from its Synthea base (cached by `paritybed run`, or
  generated here on first use), into an empty cache;
* **index**: `load_population` of it (the pickle derive wrote);
* **bulk load**: its prebuilt database (fhir/bulk.py), and the database's size;
* **generic load**: the transaction code on 100 of its bundles, extrapolated to the arm;
* **restore**: the prebuilt database into a ``:memory:`` store (what live mode's server does);
* **visits**: the week simulated on it: patients seen, reused, distinct per day, days seen per
  patient, against the published volumes (../shared/data/hospital-operations.md).

Without Java/Synthea the shared 37 patients are the base, and the note says so.

    python benchmarks/__main__.py --only population
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

from paritybed.testdata import synthea_r4

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "scenarios" / "community-hospital-week.yaml"
SAMPLE = 100  # bundles the generic load is timed on
GOAL_PATIENTS = 6_000


class Clock:
    """Wall and CPU seconds (this process and its finished children) since construction."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                   for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


def _row(name: str, clock: Clock, note: str = "", **extra: object) -> dict:
    wall, cpu = clock.read()
    return {"name": name, "value": round(wall, 1), "unit": "s wall", "note": f"{cpu:.1f} s CPU" + (f"; {note}" if note else ""),
            **extra}


def run() -> list[dict]:
    from paritybed.core.clock import minutes_of_day
    from paritybed.core.errors import EnvironmentProblem
    from paritybed.fhir import bulk, loader
    from paritybed.fhir.bundles import synthea_files
    from paritybed.fhir.derive import derive
    from paritybed.fhir.population import load_population
    from paritybed.fhir.store import Store
    from paritybed.run import _base, _simulate, patient_counts
    from paritybed.scenarios import PopulationSettings, load_scenario, resolve_arms
    from paritybed.sim.demand import derive_options

    scenario = load_scenario(SCENARIO)
    arm = resolve_arms(scenario)["production"]
    try:
        base, _ = _base(arm.population.model_copy(update={"derive": None}), "production", None)
        note = f"Synthea base {base.name}"
    except EnvironmentProblem as e:
        base = synthea_r4()
        arm = arm.model_copy(update={"population": PopulationSettings(folder=str(base), derive=arm.population.derive)})
        note = f"no Synthea here ({e.message}): the shared 37 patients are the base"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="paritybed-bench-pop-") as tmp:
        saved = os.environ.get("PARITYBED_CACHE")
        os.environ["PARITYBED_CACHE"] = tmp
        try:
            c = Clock()
            res = derive(base, derive_options(scenario, arm))
            size = sum(p.stat().st_size for p in synthea_files(res.path)) / 1e6
            rows.append(_row("derive one arm", c, f"{res.patients:,} patients, {res.resources:,} resources, {size:,.0f} MB; {note}",
                             goal=f">= {GOAL_PATIENTS:,} patients", passed=res.patients >= GOAL_PATIENTS))
            c = Clock()
            pop = load_population(res.path)
            rows.append(_row("index (cached pickle)", c, f"{len(pop.patients):,} patients"))
            c = Clock()
            db = bulk.prebuilt(res.path)
            assert db is not None
            rows.append(_row("bulk load into the prebuilt database", c, f"{db.stat().st_size / 1e6:,.0f} MB"))
            sample = synthea_files(res.path)[:SAMPLE + 2]  # the two infrastructure bundles first
            tmpdir = Path(tmp) / "sample" / "fhir"
            tmpdir.mkdir(parents=True)
            for p in sample:
                (tmpdir / p.name).write_bytes(p.read_bytes())
            store = Store()
            c = Clock()
            got = sum(loader.load_into_store(store, tmpdir).values())
            wall, cpu = c.read()
            store.close()
            rate = got / cpu
            rows.append({"name": "generic load (transaction code)", "value": round(rate), "unit": "resources/s CPU",
                         "note": f"{got:,} resources of {SAMPLE} patients; the arm would take ~{(res.resources + 685) / rate:,.0f} s CPU"})
            store = Store()
            c = Clock()
            loader.load_into_store(store, res.path)
            rows.append(_row("restore the prebuilt database into :memory:", c))
            store.close()
            c = Clock()
            sim = _simulate(scenario, arm, pop)
            h = sim.stats
            visits = h["ed_visits"] + h["admissions"] + h["initial_census"] + h["outpatient_visits"]
            rows.append(_row("simulate the week", c, f"{sim.table.num_rows:,} rows; {visits:,} visits, "
                             f"{h['patients_seen']:,} patients seen by them, {h['reused_patients']} reused",
                             goal="0 reused", passed=h["reused_patients"] == 0))
            p = patient_counts(sim.table, minutes_of_day(scenario.start.time))
            rows.append({"name": "distinct patients in the week", "value": p["distinct"], "unit": "patients",
                         "note": f"per day {p['per_day'][:7]}; published weekday ~1,400 (census 225 + ED 150 + clinics 820 + prior auth 200)"})
            rows.append({"name": "days a patient is seen on", "value": p["days_per_patient"]["mean"], "unit": "days (mean)",
                         "note": f"{p['seen_on_one_day']:.0%} seen on one day only; contexts per patient {p['contexts_per_patient']}"})
        finally:
            if saved is None:
                os.environ.pop("PARITYBED_CACHE", None)
            else:
                os.environ["PARITYBED_CACHE"] = saved
    return rows
