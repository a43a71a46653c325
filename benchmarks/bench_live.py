"""Live-mode benchmark: the default scenario's production decided by the kernel, against model mode
in the same run.

Both modes run `paritybed run` as a subprocess on the same scenario, folder-cached populations and
duration (``PARITYBED_BENCH_LIVE_DAYS``, default 1 day; 7 is the whole week, about 650 k
production rows and several minutes here), model first, then live on the virtual clock.  Reported:

* **live rows/s** -- production rows decided by the kernel per second of the live step (the
  driver's own figure in live.json, ``rows_per_second``: rows / wall seconds from the workers'
  start to the last record), goal >= 5,000 (issue 10);
* **wall time** of each mode end to end and their ratio (live / model);
* **agreement** -- disagreements between the kernel and the engine (must be 0 on the virtual clock).

Live mode needs root and a kernel with BPF; elsewhere the bench reports that it was skipped.

    sudo .venv/bin/python benchmarks/__main__.py --only live
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "scenarios" / "community-hospital-week.yaml"
DAYS = float(os.environ.get("PARITYBED_BENCH_LIVE_DAYS", "1"))
GOAL_ROWS_S = 5000.0


def _run(mode: str, out: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-P", "-m", "paritybed.cli", "run", str(SCENARIO), "--days", str(DAYS),
                        "--mode", mode, "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    if r.returncode not in (0, 1, 4):  # pass, fail, marginal: a verdict either way
        raise RuntimeError(f"paritybed run --mode {mode} exited {r.returncode}: {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def run() -> list[dict]:
    if os.geteuid() != 0 or not Path("/sys/fs/bpf").exists():
        return [{"name": "live mode", "value": None, "unit": "", "note": "skipped: needs root and a kernel with BPF"}]
    with tempfile.TemporaryDirectory(prefix="pb-bench-live-") as d:
        model_s = _run("model", Path(d) / "model")
        live_s = _run("live", Path(d) / "live")
        live = json.loads((Path(d) / "live" / "live.json").read_text())
    rows = int(live["rows"])
    rate = float(live["rows_per_second"] or 0)
    span = f"{DAYS:g} simulated day(s)"
    return [
        {"name": "live rows/s (kernel decides)", "value": round(rate), "unit": "rows/s", "goal": f">= {GOAL_ROWS_S:,.0f}",
         "passed": rate >= GOAL_ROWS_S, "note": f"{rows:,} production rows, {span}"},
        {"name": "run, model mode", "value": round(model_s, 1), "unit": "s", "note": span},
        {"name": "run, live mode", "value": round(live_s, 1), "unit": "s", "baseline": round(model_s, 1),
         "ratio": round(live_s / model_s, 2), "note": f"{span}; ratio = live / model"},
        {"name": "kernel vs engine disagreements", "value": int(live["agreement"]["disagreements"]), "unit": "rows",
         "goal": "0", "passed": int(live["agreement"]["disagreements"]) == 0},
    ]
