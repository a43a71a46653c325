"""`paritybed sweep`: every cell of a sweep spec (scenarios/sweep.py) as a full model-mode run,
executed as Dask tasks, into one Parquet table with one row per run.

    sweep = load_sweep(spec)                      # cells, validated as scenarios
    run_sweep(spec, out, scheduler=None)          # a LocalCluster of processes on this machine,
                                                  # or any Dask cluster at tcp://host:8786
    -> OUT/runs.parquet, OUT/cells/<id>.{yaml,json}, OUT/sweep.json, [OUT/runs/<id>/ with --keep-runs]

A cell of kind ``run`` is ``run.run_scenario`` on the cell's scenario file (populations,
simulate, learn, replay, oracle, score), in model mode, arms one after the other (the cells are
the parallelism).  A cell of kind ``noise`` simulates two good staging arms of different seeds
(the cell's staging arm, and one with seed + 2 on production's patients), scores the criteria of
one against the other and replays production under each one's policy: the sweep's noise
baseline, of the metrics and of the consequences.

Populations are generated once per Synthea options before the cells that need them (a task
each; the cache is locked, sim/synthea.py), and shared through the cache.  A failed cell is
recorded with its error and the sweep goes on; a rerun skips the cells already done (their
``cells/<id>.json``) unless the paritybed code changed in between (``code`` fingerprint).  The
table is deterministic: rows in spec order, columns sorted, no wall-clock value outside the
``timing/`` columns, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from paritybed.core.errors import EnvironmentProblem, InputError, ParitybedError
from paritybed.scenarios import PopulationSettings, Scenario, resolve_arms
from paritybed.scenarios.sweep import Cell, Sweep, cell_file, load_sweep, validate

SWEEP_SCHEMA = "paritybed.sweep/1"
ID_COLUMNS = ("cell", "kind", "scenario", "label", "variant", "seed", "error")

#: progress(done, total, row): after each cell (row is its table row).
SweepProgress = Callable[[int, int, dict[str, Any]], None]


# ------------------------------------------------------------------------------------ code identity
def code_fingerprint() -> str:
    """sha256 of the paritybed sources (every .py and .yaml of its packages): a cell's result is
    reused by a rerun, and a worker's result accepted, only from the same code."""
    import importlib

    h = hashlib.sha256()
    names = ("paritybed", "paritybed.core", "paritybed.scenarios", "paritybed.fhir", "paritybed.enforcer",
             "paritybed.agents", "paritybed.sim", "paritybed.parity")
    for name in names:
        folder = Path(importlib.import_module(name).__path__[0])
        for f in sorted(list(folder.glob("*.py")) + list(folder.glob("*.yaml"))):
            h.update(f"{name}/{f.name}\0".encode())
            h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()[:32]


# ------------------------------------------------------------------------------------ one cell (on a worker)
def flatten_criteria(criteria: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every criterion metric as columns ``<criterion>/<agent class>/<metric>/<field>``: value,
    effective threshold, configured threshold, sampling-noise floor, op, interval, pass, status."""
    row: dict[str, Any] = {}
    for crit, c in criteria.items():
        for m in c["metrics"]:
            key = f"{prefix}{crit}/{m['agent_class']}/{m['name']}"
            detail = m.get("detail", {})
            floor = detail.get("sampling_noise_p99", detail.get("sampling_noise_p999"))
            iv = m.get("interval") or [None, None]
            row.update({f"{key}/value": m["value"], f"{key}/threshold": m["threshold"],
                        f"{key}/configured": detail.get("configured_max", m["threshold"]), f"{key}/floor": floor,
                        f"{key}/op": m["op"], f"{key}/lo": iv[0], f"{key}/hi": iv[1], f"{key}/pass": m["pass"],
                        f"{key}/status": m.get("status")})
    return row


def run_row(doc: dict[str, Any]) -> dict[str, Any]:
    """A run's parity.json as one table row: verdicts, every metric, the consequences."""
    from paritybed.parity.criteria import combine

    crit = doc["criteria"]
    r = doc["replay"]
    cons = r["consequences"]
    row: dict[str, Any] = {
        "verdict": doc["verdict"],
        "criteria_verdict": combine([c["status"] for c in crit.values()]),
        "criteria_point_verdict": "pass" if all(c["pass"] for c in crit.values()) else "fail",
        "staging_safe": r["staging"]["safe"],
        "staging_unsafe_because": ",".join(r["staging"]["unsafe_because"]),
    }
    row.update(flatten_criteria(crit))
    row.update(consequence_columns(cons))
    for g in r["gates"]:
        row[f"replay/gate/{g['name']}/pass"] = g["pass"]
    return row


def noise_row(scenario_path: Path) -> dict[str, Any]:
    """Two good staging arms of different seeds (the cell's staging arm, and one with seed + 2 on
    production's patients): the criteria of the second scored against the first, and production
    replayed under the policy of each (``replay/*``: the second's consequences with the first's
    as the reference, where a run has the oracle's).  The noise baseline of the metrics and of
    the consequences."""
    from paritybed.core.units import DAY_NS
    from paritybed.parity.consequences import consequences, learned_policy, replay_under
    from paritybed.parity.criteria import criteria
    from paritybed.parity.evaluate import registry_of
    from paritybed.parity.profile import profile_from_trace
    from paritybed.run import prepare_populations, simulate_arm
    from paritybed.scenarios import load_scenario

    scenario = load_scenario(scenario_path)
    arms = resolve_arms(scenario)
    first = arms["staging"]
    second = first.model_copy(update={"seed": first.seed + 1, "population": arms["production"].population})
    pops = prepare_populations(scenario, arms)
    start = scenario.start.datetime()
    production = simulate_arm(scenario, arms["production"], pops["production"].index)
    a = simulate_arm(scenario, first, pops["staging"].index)
    b = simulate_arm(scenario, second, pops["production"].index)
    registry = registry_of(scenario)
    pol_b = learned_policy(scenario, b, registry, "staging (second seed)")
    crit = criteria(profile_from_trace(b, start, arm="staging"), profile_from_trace(a, start, arm="staging"), scenario.gate,
                    policy=pol_b)
    ref = replay_under(learned_policy(scenario, a, registry, "staging"), production, registry, start)
    cons = consequences(replay_under(pol_b, production, registry, start).summary, ref.summary,
                        arms["production"].duration_ns / DAY_NS, pol_b.hash)
    return {"criteria_verdict": crit.status, **flatten_criteria(crit.to_dict()), **consequence_columns(cons)}


def consequence_columns(cons: dict[str, Any]) -> dict[str, Any]:
    """The consequence record (parity/consequences.py) as ``replay/*`` and ``oracle/*`` columns."""
    row: dict[str, Any] = {}
    for k in ("days", "legitimate", "over_blocks", "over_block_share", "clinical_impact_minutes",
              "clinical_impact_minutes_per_day", "under_blocks", "excess_under_block_share"):
        row[f"replay/{k}"] = cons[k]
    for label, a in cons["attacks"].items():
        for k in ("rows", "through", "oracle_through", "excess"):
            row[f"replay/attack/{label}/{k}"] = a[k]
    for k in ("over_blocks", "over_block_share", "clinical_impact_minutes", "under_blocks"):
        row[f"oracle/{k}"] = cons["oracle"][k]
    return row


def run_cell(cell: Cell, scenario_yaml: str, keep: str | None, code: str) -> dict[str, Any]:
    """One cell, on a worker: its row (errors recorded in ``error``, never raised).  ``keep``:
    the run folder to keep (``--keep-runs``), else a temporary one."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {"cell": cell.id, "kind": cell.kind, "scenario": cell.scenario, "label": cell.label,
                           "variant": cell.variant, "seed": cell.seed, "error": None, "code": code}
    row.update({f"axis/{p}": json.dumps(v, sort_keys=True) for p, v in cell.overrides})
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=f"paritybed-cell-{cell.id}-"))
    try:
        shutil.rmtree(folder, ignore_errors=True)  # a rerun starts clean (the policy history would grow)
        folder.mkdir(parents=True)
        path = folder / "scenario.yaml"
        path.write_text(scenario_yaml, encoding="utf-8")
        if cell.kind == "noise":
            row.update(noise_row(path))
        else:
            from paritybed.run import run_scenario

            res = run_scenario(path, folder, parallel=False, report=keep is not None)
            row.update(run_row(res.verdict.parity))
    except ParitybedError as e:
        row["error"] = f"{type(e).__name__}: {e.message}"
    except Exception as e:  # noqa: BLE001 - recorded in the table; the sweep goes on
        row["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    row["timing/seconds"] = round(time.perf_counter() - t0, 3)
    row["timing/worker_peak_rss_mb"] = peak_rss_mb()
    row["timing/worker_pid"] = os.getpid()
    return row


def peak_rss_mb() -> float:
    """This process's own peak resident memory (MB): VmHWM of /proc/self/status, which starts afresh
    at exec.  Linux's ru_maxrss does not: a worker spawned (fork + exec) by a process that peaked at
    1.2 GB reports at least 1.2 GB (seen in benchmarks/bench_sweep.py).  ru_maxrss where there is no
    /proc."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def ensure_population(settings_json: str) -> str:
    """Generate (Synthea, locked cache) and index one population on a worker; its folder."""
    from paritybed.run import load_arm_population

    return str(load_arm_population(PopulationSettings.model_validate_json(settings_json)).folder)


# ------------------------------------------------------------------------------------ the cluster
@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A Dask client: of a ``distributed.LocalCluster`` of ``workers`` processes (one thread each;
    default: one per CPU) on this machine, or of the cluster whose scheduler is at ``scheduler``."""
    import logging

    from distributed import Client, LocalCluster

    if scheduler is not None:
        if workers is not None:
            raise InputError("--workers sizes the local cluster; with --scheduler the cluster's own workers run the cells")
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise EnvironmentProblem(f"no Dask scheduler answers at {scheduler}: {e}",
                                     hint="start one with `dask scheduler` and workers with `dask worker ADDRESS`") from None
        try:
            if not client.scheduler_info().get("workers"):
                client.wait_for_workers(1, timeout=60)
            yield client
        except TimeoutError:
            raise EnvironmentProblem(f"the Dask scheduler at {scheduler} has no worker",
                                     hint=f"start one with `dask worker {scheduler}`") from None
        finally:
            client.close()
        return
    n = workers or os.cpu_count() or 1
    if n < 1:
        raise InputError(f"--workers: expected at least 1, found {n}")
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",  # any free port
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


# ------------------------------------------------------------------------------------ the sweep
@dataclass
class SweepResult:
    out: Path
    table: Path
    rows: list[dict[str, Any]]
    ran: int  # cells run this time
    reused: int  # cells found done
    failed: int

    @property
    def cells(self) -> int:
        return len(self.rows)


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _done(path: Path, code: str) -> dict[str, Any] | None:
    """A cell's row from an earlier run of the same code, if it succeeded."""
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return row if row.get("code") == code and not row.get("error") else None


def populations_needed(scenarios: dict[str, Scenario], cells: list[Cell]) -> dict[str, list[str]]:
    """Synthea population (settings JSON) -> the ids of the cells that need it."""
    need: dict[str, list[str]] = {}
    for cell in cells:
        for arm in resolve_arms(scenarios[cell.id]).values():
            if arm.population.synthea is not None:
                need.setdefault(arm.population.model_dump_json(), []).append(cell.id)
    return need


def run_sweep(spec: str | Path, out: str | Path, *, scheduler: str | None = None, workers: int | None = None,
              keep_runs: bool = False, progress: SweepProgress | None = None,
              client: Any | None = None) -> SweepResult:
    """Run every cell of ``spec`` not yet done in ``out`` (module doc); write ``out/runs.parquet``.
    ``client``: an existing Dask client (tests, benchmarks) instead of ``scheduler``/``workers``."""
    sweep = load_sweep(spec)
    outp = Path(out)
    try:
        outp.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {outp}: cannot create the sweep folder ({e.strerror or e})") from None
    cells_dir = outp / "cells"
    scenarios = validate(sweep, cells_dir)
    code = code_fingerprint()
    _write_json(outp / "sweep.json", {"schema": SWEEP_SCHEMA, "spec": str(sweep.path), "name": sweep.spec.name,
                                      "spec_text": sweep.path.read_text(encoding="utf-8"), "code": code,
                                      "cells": [{"cell": c.id, "kind": c.kind, "label": c.label, "seed": c.seed}
                                                for c in sweep.cells]})
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for cell in sweep.cells:
        prior = _done(cells_dir / f"{cell.id}.json", code)
        if prior is not None:
            rows[cell.id] = prior
        else:
            todo.append(cell)
    reused = len(rows)
    if progress:
        progress(reused, len(sweep.cells), {})
    if todo:
        with (_given(client) if client is not None else dask_client(scheduler, workers)) as c:
            _execute(c, sweep, todo, scenarios, outp, keep_runs, code, rows, progress)
    ordered = [rows[c.id] for c in sweep.cells]
    table = write_table(outp / "runs.parquet", ordered)
    return SweepResult(out=outp, table=table, rows=ordered, ran=len(todo), reused=reused,
                       failed=sum(1 for r in ordered if r.get("error")))


@contextmanager
def _given(client: Any) -> Iterator[Any]:
    yield client


def _execute(client: Any, sweep: Sweep, todo: list[Cell], scenarios: dict[str, Scenario], out: Path,
             keep_runs: bool, code: str, rows: dict[str, dict[str, Any]], progress: SweepProgress | None) -> None:
    """Submit the populations, then the cells (each after its populations), and collect rows as
    they finish."""
    from distributed import as_completed

    needed = populations_needed(scenarios, todo)
    pop_futures = {settings: client.submit(ensure_population, settings, pure=False, key=f"population-{i}")
                   for i, settings in enumerate(needed)}
    futures = {}
    for cell in todo:
        deps = [f for s, f in pop_futures.items() if cell.id in needed[s]]
        keep = str((out / "runs" / cell.id).resolve()) if keep_runs else None
        text = cell_file(out / "cells", cell).read_text(encoding="utf-8")
        fut = client.submit(_after, run_cell, deps, cell, text, keep, code, pure=False, key=f"cell-{cell.id}")
        futures[fut] = cell
    done = len(rows)
    for fut in as_completed(futures):
        cell = futures[fut]
        try:
            row = fut.result()
        except Exception as e:  # noqa: BLE001 - a worker died, a population failed: the cell's error
            row = {"cell": cell.id, "kind": cell.kind, "scenario": cell.scenario, "label": cell.label,
                   "variant": cell.variant, "seed": cell.seed, "error": f"{type(e).__name__}: {e}", "code": code}
        if row.get("code") != code and not row.get("error"):
            row["error"] = (f"the worker runs other paritybed code ({row.get('code')}, here {code}): install the same "
                            "version on every worker")
        _write_json(out / "cells" / f"{cell.id}.json", row)
        rows[cell.id] = row
        done += 1
        if progress:
            progress(done, len(sweep.cells), row)


def _after(fn: Callable[..., dict[str, Any]], _deps: list[str], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` once the populations it needs (``_deps``, futures Dask resolved) exist."""
    return fn(*args)


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``runs.parquet``: identity columns, axes, every measured column (sorted), then timing."""
    cols: set[str] = set()
    for r in rows:
        cols.update(r)
    cols.discard("code")
    axes = sorted(c for c in cols if c.startswith("axis/"))
    timing = sorted(c for c in cols if c.startswith("timing/"))
    measured = sorted(cols - set(ID_COLUMNS) - set(axes) - set(timing))
    order = list(ID_COLUMNS) + axes + measured + timing
    data = {c: [r.get(c) for r in rows] for c in order}
    table = pa.table({c: _column(v) for c, v in data.items()})
    tmp = path.with_suffix(".tmp.parquet")
    pq.write_table(table, str(tmp), compression="zstd", write_statistics=False)
    tmp.replace(path)
    return path


def _column(values: list[Any]) -> pa.Array:
    """A column's values as one Arrow type: bool, int64, float64 or string (mixed numbers as float)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values], pa.string())


def read_table(sweep_dir: str | Path) -> pa.Table:
    """A sweep folder's runs.parquet (InputError when it is not one)."""
    p = Path(sweep_dir) / "runs.parquet"
    if not p.is_file():
        raise InputError(f"{sweep_dir}: no runs.parquet (not a `paritybed sweep` output folder)")
    return pq.read_table(str(p))
