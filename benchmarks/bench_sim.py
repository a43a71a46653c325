"""Simulation benchmark: the default scenario (community-hospital-week: one week, 300 beds, both
arms, >= 1,000,000 FHIR requests) in model mode.

Timed, in the same run, best of ``PARITYBED_BENCH_REPEATS`` (default 3) interleaved repetitions
(the machine is shared):

* **simulate, parallel** -- both arms as `paritybed run` does it (one forked process per arm,
  tables back in the parent): the headline time, goal <= 60 s;
* **simulate, sequential** -- the two arms one after the other in this process (CPU cost);
* **bare SimPy** -- one process doing one ``env.timeout`` per FHIR request, N = the number of
  FHIR requests of both arms: the ratio simulate / bare is the goal (<= 3x);
* **full run** -- `run_scenario` end to end with the populations already cached: scenario load,
  index load, both arms, Parquet traces, summary.

Populations are the scenario's real Synthea populations (generated on first use and cached; the
generation time is reported as a note).  Without Java/Synthea the shared 37-patient folder is
used for both arms and the note says so.

    python benchmarks/__main__.py --only sim
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from paritybed.testdata import synthea_r4

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
SCENARIO = REPO / "scenarios" / "community-hospital-week.yaml"
SHARED = synthea_r4()  # the 37 real Synthea patients (paritybed/testdata.py)
REPEATS = int(os.environ.get("PARITYBED_BENCH_REPEATS", "3"))
GOAL_RATIO = 3.0
GOAL_SECONDS = 60.0
GOAL_REQUESTS = 1_000_000


def bare_simpy(n: int) -> float:
    """Seconds for a SimPy process doing n timeouts (the floor of any event-per-request model)."""
    import simpy

    env = simpy.Environment()

    def proc():
        timeout = env.timeout
        for _ in range(n):
            yield timeout(1)

    env.process(proc())
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0


def _populations(scenario):
    from paritybed.core.errors import EnvironmentProblem
    from paritybed.fhir.population import load_population
    from paritybed.run import LoadedPopulation, prepare_populations
    from paritybed.scenarios import resolve_arms

    t0 = time.perf_counter()
    try:
        pops = prepare_populations(scenario, resolve_arms(scenario))
        generated = any(p.generated for p in pops.values())
        note = f"Synthea populations ({', '.join(f'{a}: {len(p.index.patients)} patients' for a, p in pops.items())})"
        if generated:
            note += f"; generated in {time.perf_counter() - t0:.0f} s (first use, then cached)"
        return pops, note, True
    except EnvironmentProblem as e:
        index = load_population(SHARED)
        pops = {a: LoadedPopulation(SHARED, index) for a in ("production", "staging")}
        return pops, f"no Synthea here ({e.message}): shared 37 patients for both arms", False


def run() -> list[dict]:
    import pyarrow.compute as pc

    from paritybed.run import run_scenario, simulate_arms
    from paritybed.scenarios import load_scenario, resolve_arms

    scenario = load_scenario(SCENARIO)
    pops, pop_note, real = _populations(scenario)

    par, seq, bare, full = [], [], [], []
    n_fhir = rows = 0
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        arms = simulate_arms(scenario, resolve_arms(scenario), pops, parallel=True)
        par.append(time.perf_counter() - t0)
        n_fhir = sum(pc.sum(pc.equal(a.table["kind"].cast("string"), "fhir")).as_py() for a in arms.values())
        rows = sum(a.table.num_rows for a in arms.values())
        del arms
        t0 = time.perf_counter()
        arms = simulate_arms(scenario, resolve_arms(scenario), pops, parallel=False)
        seq.append(time.perf_counter() - t0)
        del arms
        bare.append(bare_simpy(n_fhir))
    if real:
        with tempfile.TemporaryDirectory(prefix="paritybed-bench-sim-") as d:
            t0 = time.perf_counter()
            run_scenario(SCENARIO, Path(d) / "run")
            full.append(time.perf_counter() - t0)
    t_par, t_seq, t_bare = min(par), min(seq), min(bare)
    out = [
        {"name": "FHIR requests simulated (both arms, one week)", "value": n_fhir, "unit": "requests",
         "goal": f">= {GOAL_REQUESTS:,}", "passed": n_fhir >= GOAL_REQUESTS, "note": f"{rows:,} trace rows incl. egress and lanes; {pop_note}"},
        {"name": "simulate both arms (parallel processes)", "value": round(t_par, 2), "unit": "s",
         "goal": f"<= {GOAL_SECONDS:.0f} s", "passed": t_par <= GOAL_SECONDS, "note": f"best of {REPEATS}; runs {par}"},
        {"name": "simulated requests per second (parallel)", "value": round(n_fhir / t_par), "unit": "requests/s"},
        {"name": "simulate vs bare SimPy, one timeout per request", "value": round(t_par, 3), "unit": "s",
         "baseline": round(t_bare, 3), "ratio": round(t_par / t_bare, 2), "goal": f"<= {GOAL_RATIO:.0f}x",
         "passed": t_par / t_bare <= GOAL_RATIO, "note": f"bare loop: {n_fhir:,} timeouts in one process, same run"},
        {"name": "simulate both arms sequentially vs bare SimPy", "value": round(t_seq, 3), "unit": "s",
         "baseline": round(t_bare, 3), "ratio": round(t_seq / t_bare, 2),
         "note": f"{n_fhir / t_seq:,.0f} requests/s in one process (CPU cost, no parallelism)"},
    ]
    if full:
        out.append({"name": "paritybed run end to end (populations cached)", "value": round(full[0], 2), "unit": "s",
                    "goal": f"<= {GOAL_SECONDS:.0f} s", "passed": full[0] <= GOAL_SECONDS,
                    "note": "load scenario + index both populations + simulate + write Parquet traces + summary"})
    return out


if __name__ == "__main__":
    for row in run():
        print(row)
