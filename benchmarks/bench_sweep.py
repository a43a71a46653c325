"""Sweep throughput on this machine: runs per minute on the default LocalCluster (one worker
process per CPU) against the same cells run one after the other in this process (the baseline,
no Dask), and the peak memory of each worker process, in the same run.

The cells: community-hospital-week cut to one day on the shared 37 Synthea patients (no Java),
two seeds x (base, staging at 60 % volume, uniform staging) = 6 runs, plus 2 noise cells.

    python benchmarks/__main__.py --only sweep      (PARITYBED_BENCH_SWEEP_DAYS=7 for full weeks)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from paritybed.testdata import synthea_r4

DAYS = float(os.environ.get("PARITYBED_BENCH_SWEEP_DAYS", "1"))
SPEC = """\
name: bench
scenarios: [week-shared.yaml]
seeds: 2
overrides:
  duration.days: {days}
variants:
  - arms.staging.volume_factor: [0.6]
  - arms.staging.arrivals: [uniform]
noise: true
"""


def _spec(folder: Path) -> Path:
    (folder / "week-shared.yaml").write_text(
        f"extends: community-hospital-week\npopulation:\n  synthea: null\n  folder: {synthea_r4()}\n")
    path = folder / "bench.yaml"
    path.write_text(SPEC.format(days=DAYS))
    return path


def run() -> list[dict]:
    from paritybed.scenarios.sweep import cell_file, load_sweep, validate
    from paritybed.sweep import code_fingerprint, peak_rss_mb, run_cell, run_sweep

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        spec = _spec(folder)
        sweep = load_sweep(spec)
        validate(sweep, folder / "seq" / "cells")
        code = code_fingerprint()
        run_cell(sweep.cells[0], cell_file(folder / "seq" / "cells", sweep.cells[0]).read_text(), None, code)  # warm caches
        t0 = time.perf_counter()
        seq_rows = [run_cell(c, cell_file(folder / "seq" / "cells", c).read_text(), None, code) for c in sweep.cells]
        t_seq = time.perf_counter() - t0
        rss_seq = peak_rss_mb()
        t0 = time.perf_counter()
        res = run_sweep(spec, folder / "cluster")
        t_cluster = time.perf_counter() - t0
    n = len(sweep.cells)
    workers: dict[int, float] = {}
    for r in res.rows:
        workers[r["timing/worker_pid"]] = max(workers.get(r["timing/worker_pid"], 0.0), r["timing/worker_peak_rss_mb"])
    errors = sum(1 for r in seq_rows + res.rows if r.get("error"))
    per_min_seq, per_min_cluster = n / t_seq * 60, n / t_cluster * 60
    cpus = os.cpu_count() or 1
    note = (f"{n} cells of {DAYS:g}-day runs; {len(workers)} worker processes on {cpus} CPUs; cluster start-up "
            f"included; {errors} cell errors")
    return [
        {"name": "sweep throughput, LocalCluster", "value": round(per_min_cluster, 2), "unit": "runs/min",
         "baseline": round(per_min_seq, 2), "ratio": round(per_min_cluster / per_min_seq, 2),
         "goal": f"> 1x (sequential: {t_seq:.0f} s, cluster: {t_cluster:.0f} s)", "passed": per_min_cluster > per_min_seq,
         "note": note},
        {"name": "peak memory per worker", "value": round(max(workers.values()), 0), "unit": "MB",
         "baseline": round(rss_seq, 0), "ratio": round(max(workers.values()) / rss_seq, 2),
         "note": "worker: max RSS of a LocalCluster worker process; baseline: this process after the sequential runs"},
    ]


if __name__ == "__main__":
    for r in run():
        print(r)
