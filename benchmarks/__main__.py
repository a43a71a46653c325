"""`make bench`: run every benchmarks/bench_*.py and print one table.

Each bench module exposes ``run() -> list[dict]``; a row has keys name, value, unit and
optionally baseline, ratio, goal (text such as "<= 3x" or ">= 40%"), passed (bool) and note.
Run as a script (``python benchmarks/__main__.py``), not with ``-m`` from the checkout root:
the checkout's ``fhir/`` folder would shadow the ``fhir.resources`` package on sys.path.

    python benchmarks/__main__.py [--only fhir,sim] [--json results.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"paritybed_bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return "" if v is None else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated bench names (fhir, sim, replay, enforcement, overhead, live, population)")
    ap.add_argument("--json", default="", help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    rows: list[dict] = []
    failed = False
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem[len("bench_"):]
        if only and name not in only:
            continue
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            out = _load(path).run()
        except Exception:  # noqa: BLE001 - a broken bench is reported, the others still run
            traceback.print_exc()
            rows.append({"bench": name, "name": "(bench failed)", "value": None, "unit": "", "note": "see traceback above"})
            failed = True
            continue
        for r in out:
            rows.append({"bench": name, **r})
        print(f"[bench] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)

    from rich.console import Console
    from rich.table import Table

    t = Table(title="paritybed benchmarks")
    for col in ("bench", "name", "value", "unit", "baseline", "ratio", "goal", "met", "note"):
        t.add_column(col, overflow="fold")
    for r in rows:
        met = r.get("passed")
        t.add_row(r["bench"], str(r.get("name", "")), _fmt(r.get("value")), str(r.get("unit", "")),
                  _fmt(r.get("baseline")), _fmt(r.get("ratio")), str(r.get("goal", "") or ""),
                  "" if met is None else ("yes" if met else "NO"), str(r.get("note", "") or ""))
    Console(width=max(180, shutil.get_terminal_size().columns)).print(t)  # a wide table, also in logs
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
