"""Replay + scoring of a 10,000,000-request production trace (goal: <= 30 s on the project machine).

The trace is the real simulation's production week (community-hospital-week on the shared Synthea
patients; synthetic traffic from parity.synthetic when those are absent) tiled in time to 10M
rows and written as Parquet.  Timed: reading it (the baseline), then read + replay under the
staging-built policy (reference engine, over/under-blocks, clinical impact, attacks) + the
production profile + the three criteria.  The ratio is that total over reading alone.

    python benchmarks/__main__.py --only replay          (PARITYBED_BENCH_ROWS=2000000 for a quick run)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from paritybed.testdata import synthea_r4

ROWS = int(os.environ.get("PARITYBED_BENCH_ROWS", "10000000"))
REPO = Path(__file__).resolve().parent.parent
SHARED = synthea_r4()  # the 37 real Synthea patients (paritybed/testdata.py)


def _arms():
    """(scenario, production, staging) from the real simulation, or synthetic traffic."""
    from paritybed.scenarios import PopulationSettings, load_scenario, resolve_arms

    if SHARED.is_dir():
        from paritybed.run import prepare_populations, simulate_arms

        sc = load_scenario(REPO / "scenarios" / "community-hospital-week.yaml")
        sc = sc.model_copy(update={"population": PopulationSettings(folder=str(SHARED))})
        arms = resolve_arms(sc)
        sims = simulate_arms(sc, arms, prepare_populations(sc, arms), parallel=True)
        return sc, sims["production"].table, sims["staging"].table, "real simulation, 1 week"
    from paritybed.parity import synthetic as sy

    return (sy.scenario(), sy.make_trace("production", days=7, seed=1, attacks=True, volume=20),
            sy.make_trace("staging", days=7, seed=2, break_glass="drill", volume=20), "synthetic, 1 week")


def tile(trace: pa.Table, rows: int) -> pa.Table:
    """Repeat a trace back to back in time until it has ``rows`` rows (seq renumbered)."""
    t = trace["t_ns"].to_numpy()
    span = int(t.max()) + 1
    reps = -(-rows // trace.num_rows)
    parts = []
    for k in range(reps):
        part = trace.set_column(trace.schema.get_field_index("t_ns"), "t_ns", pa.array(t + k * span, pa.int64()))
        parts.append(part)
    out = pa.concat_tables(parts).slice(0, rows)
    out = out.set_column(out.schema.get_field_index("seq"), "seq", pa.array(np.arange(rows, dtype=np.int64)))
    return out.unify_dictionaries().combine_chunks()


def run() -> list[dict]:
    from paritybed.agents.trace import read_trace, write_trace
    from paritybed.enforcer.engine import decide
    from paritybed.parity.criteria import criteria
    from paritybed.parity.evaluate import build_policy, declared_break_glass, registry_of
    from paritybed.parity.profile import profile_from_trace
    from paritybed.parity.replay import replay
    from paritybed.scenarios import resolve_arms

    sc, prod, stag, source = _arms()
    start = sc.start.datetime()
    registry = registry_of(sc)
    arms = resolve_arms(sc)
    policy = build_policy(sc, REPO / "scenarios" / "community-hospital-week.yaml", stag, registry, arms["staging"])
    staging_profile = profile_from_trace(stag, start, arm="staging")
    big = tile(prod, ROWS)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "production-10m.parquet"
        write_trace(big, path)
        del big
        t0 = time.perf_counter()
        read_trace(path)
        t_read = time.perf_counter() - t0

        t0 = time.perf_counter()
        trace = read_trace(path)
        t1 = time.perf_counter()
        rep = replay(trace, decide(trace, policy, registry, start), start)
        t2 = time.perf_counter()
        pp = profile_from_trace(trace, start, arm="production")
        crit = criteria(staging_profile, pp, sc.gate, policy=policy, declared=declared_break_glass(sc, arms["production"]))
        t3 = time.perf_counter()
    total = t3 - t0
    note = (f"{source} tiled; read {t1 - t0:.1f} s, replay {t2 - t1:.1f} s, profile+criteria {t3 - t2:.1f} s; "
            f"over-blocks {rep.summary['over_blocks']['total']}, verdict {'pass' if crit.passed else 'fail'}")
    return [
        {"name": f"read + replay + scoring, {ROWS:,} requests", "value": round(total, 2), "unit": "s",
         "baseline": round(t_read, 2), "ratio": round(total / t_read, 1), "goal": "<= 30 s", "passed": total <= 30,
         "note": note},
        {"name": "replay throughput", "value": round(ROWS / (t2 - t1) / 1e6, 2), "unit": "M rows/s", "note": "reference engine"},
    ]


if __name__ == "__main__":
    for r in run():
        print(r)
