"""The run pipeline, one for both modes: populations -> simulated arms -> traces + summary ->
learn the envelope -> compile the policy -> decide production -> replay -> score -> artefacts.

`paritybed run` (cmd_run.py) calls ``run_scenario``; each step is a plain function so tests and
benchmarks can run any of them alone:

    scenario = load_scenario(path); arms = resolve_arms(scenario)   # the arms, resolved once
    pops = prepare_populations(scenario, arms)           # Synthea (generated, cached) or a folder
    sims = simulate_arms(scenario, arms, pops)           # both arms, in parallel processes
    write_traces(out, sims); write_summary(out, summarize(scenario, sims, pops))
    verdict = paritybed.parity.evaluate(..., decide=...)  # envelope and policy once, decide, replay, score

"Decide production" is the only step that depends on the mode: the reference engine in model
mode, the kernel (paritybed/live.py, real processes in cgroups) in live mode, whose decisions
are then compared once with the engine's.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from paritybed.agents.trace import write_trace
from paritybed.core.errors import EnvironmentProblem, InputError, ParitybedError
from paritybed.core.units import HOUR_NS, NS_PER_MIN
from paritybed.fhir.population import Population as PopulationIndex
from paritybed.fhir.population import load_population
from paritybed.scenarios import ARM_NAMES, Duration, PopulationSettings, ResolvedArm, Scenario, resolve_arm

#: progress(arm, what, done, total): what is "synthea", "derive", "index" or "simulate".
ProgressFn = Callable[[str, str, float, float], None]


@dataclass
class LoadedPopulation:
    """One arm's patients: where the bundles are (to load the FHIR server) and their index."""

    folder: Path
    index: PopulationIndex
    generated: bool = False  # True if Synthea ran for it in this call (not cached)
    base: Path | None = None  # a derived population's base folder (Synthea's or the scenario's)


@dataclass
class ArmResult:
    arm: ResolvedArm
    table: pa.Table
    stats: dict[str, int]
    seconds: float = 0.0


@dataclass
class RunOutput:
    out: Path
    traces: dict[str, Path]
    summary: dict[str, Any]
    arms: dict[str, ArmResult] = field(default_factory=dict)
    populations: dict[str, LoadedPopulation] = field(default_factory=dict)
    verdict: Any = None  # paritybed.parity.evaluate.Verdict, unless the run stopped at the traces
    live: dict[str, Any] | None = None  # live mode: live.json (the driver's summary and the agreement)


# ------------------------------------------------------------------------------------ scenario knobs
def with_duration(scenario: Scenario, days: float | None = None, hours: float | None = None) -> Scenario:
    """The scenario with every arm's duration replaced (quick runs, tests): arms that set their
    own shorter duration keep the shorter one."""
    if days is None and hours is None:
        return scenario
    d = Duration(days=days or 0, hours=hours or 0)
    arms = scenario.arms
    upd = {}
    for a in ARM_NAMES:
        o = getattr(arms, a)
        if o.duration is not None and o.duration.total_ns() < d.total_ns():
            continue
        upd[a] = o.model_copy(update={"duration": None})
    return scenario.model_copy(update={"duration": d, "arms": arms.model_copy(update=upd)})


# ------------------------------------------------------------------------------------ populations
def _base(pop: PopulationSettings, arm: str, progress: ProgressFn | None) -> tuple[Path, bool]:
    """(folder, generated now) of an arm's base patients: a folder, or the real Synthea (cached)."""
    if pop.folder is not None:
        return Path(pop.folder), False
    from paritybed.sim.synthea import generate

    s = pop.synthea
    assert s is not None
    res = generate(
        s.patients, s.seed, clinician_seed=s.clinician_seed, state=s.state, city=s.city,
        years_of_history=s.years_of_history, reference_date=s.reference_date.strftime("%Y%m%d"),
        progress=(lambda done, total, _dead: progress(arm, "synthea", done, total)) if progress else None,
    )
    return res.path, not res.cached


def _derive_child(base: Path, opts: Any, done: Any, conn: Any) -> None:
    """Derive one population in a forked process (CPU-bound Python: the arms run side by side)."""
    from paritybed.fhir.derive import derive

    try:
        gc.disable()  # hundreds of thousands of short-lived dicts and no cycles (as in the simulation)
        res = derive(base, opts, progress=lambda n, total: setattr(done, "value", n / total))
        conn.send(("ok", str(res.path)))
    except ParitybedError as e:
        conn.send(("error", e))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def derive_populations(jobs: dict[str, tuple[Path, Any]], progress: Callable[[str, float], None] | None = None,
                       ) -> dict[str, Path]:
    """The derived folders of `jobs` (key -> (base folder, DeriveOptions)): cached ones at once,
    the others each in its own forked process, side by side."""
    from paritybed.fhir.derive import derive, is_cached

    out: dict[str, Path] = {}
    todo = {}
    for key, (base, opts) in jobs.items():
        hit = is_cached(base, opts)
        if hit is not None:
            out[key] = hit
            if progress:
                progress(key, 1.0)
        else:
            todo[key] = (base, opts)
    if not todo:
        return out
    if len(todo) == 1 or "fork" not in mp.get_all_start_methods():
        for key, (base, opts) in todo.items():
            cb = (lambda n, total, k=key: progress(k, n / total)) if progress else None
            out[key] = derive(base, opts, progress=cb).path
        return out
    ctx = mp.get_context("fork")
    procs = {}
    for key, (base, opts) in todo.items():
        parent, child = ctx.Pipe(duplex=False)
        done = ctx.Value("d", 0.0, lock=False)
        p = ctx.Process(target=_derive_child, args=(base, opts, done, child), daemon=True)
        p.start()
        child.close()
        procs[key] = (p, parent, done)
    try:
        while procs:
            for key, (p, conn, done) in list(procs.items()):
                if progress:
                    progress(key, done.value)
                if not conn.poll(0.05):
                    continue
                try:
                    status, value = conn.recv()
                except EOFError:
                    p.join()
                    raise EnvironmentProblem(f"the process deriving patients for {key} died (exit code {p.exitcode})") from None
                p.join()
                conn.close()
                del procs[key]
                if status != "ok":
                    raise value if isinstance(value, ParitybedError) else EnvironmentProblem(f"deriving patients failed: {value}")
                out[key] = Path(value)
                if progress:
                    progress(key, 1.0)
    finally:
        for p, conn, _ in procs.values():  # only after a failure: stop the others
            p.terminate()
            p.join()
            conn.close()
    return out


def prepare_populations(scenario: Scenario, arms: dict[str, ResolvedArm],
                        progress: ProgressFn | None = None) -> dict[str, LoadedPopulation]:
    """Each arm's population: its base generated by the real Synthea (cached by its options) or
    read from a folder; with ``derive``, one distinct patient per expected visit derived from
    that base (fhir/derive.py, cached); then indexed.  Arms with the same population share one
    load.  Synthea runs single-threaded (determinism) and derivation is CPU-bound Python, so the
    two arms' generations run side by side (threads for the Synthea processes, forked processes
    for derivation)."""
    from concurrent.futures import ThreadPoolExecutor

    base_specs: dict[str, tuple[PopulationSettings, str]] = {}
    for name in ARM_NAMES:
        spec = arms[name].population.model_copy(update={"derive": None})
        base_specs.setdefault(spec.model_dump_json(), (spec, name))
    with ThreadPoolExecutor(max_workers=len(base_specs)) as pool:
        futures = {key: pool.submit(_base, spec, name, progress) for key, (spec, name) in base_specs.items()}
        bases = {key: f.result() for key, f in futures.items()}
    folders: dict[str, Path] = {}
    generated: dict[str, bool] = {}
    bases_of: dict[str, Path] = {}
    jobs: dict[str, tuple[Path, Any]] = {}
    for name in ARM_NAMES:
        pop = arms[name].population
        folder, made = bases[pop.model_copy(update={"derive": None}).model_dump_json()]
        folders[name], generated[name] = folder, made
        if pop.derive is not None:
            from paritybed.sim.demand import derive_options

            jobs[name] = (folder, derive_options(scenario, arms[name]))
            bases_of[name] = folder
    if jobs:
        first: dict[tuple[str, Any], str] = {}  # arms with the same base and options derive once
        for name, (folder, opts) in jobs.items():
            first.setdefault((str(folder), opts), name)
        derived = derive_populations({n: jobs[n] for n in first.values()},
                                     (lambda n, frac: progress(n, "derive", frac, 1.0)) if progress else None)
        for name, (folder, opts) in jobs.items():
            folders[name] = derived[first[(str(folder), opts)]]
    loaded: dict[str, LoadedPopulation] = {}
    out = {}
    for name in ARM_NAMES:
        key = str(folders[name])
        if key not in loaded:
            cb = (lambda done, total, n=name: progress(n, "index", done, total)) if progress else None
            loaded[key] = LoadedPopulation(folder=folders[name], index=load_population(folders[name], progress=cb),
                                           generated=generated[name], base=bases_of.get(name))
        out[name] = loaded[key]
    return out


# ------------------------------------------------------------------------------------ simulation
def simulate_arm(scenario: Scenario, arm: str | ResolvedArm, population: PopulationIndex,
                 progress: Callable[[int, int], None] | None = None) -> pa.Table:
    """The trace of one arm (schema agents/trace.py), deterministic for a scenario and seed; the
    arm by name when the step runs alone."""
    resolved = arm if isinstance(arm, ResolvedArm) else resolve_arm(scenario, arm)
    return _simulate(scenario, resolved, population, progress).table


def _simulate(scenario: Scenario, arm: ResolvedArm, population: PopulationIndex,
              progress: Callable[[int, int], None] | None = None) -> ArmResult:
    from paritybed.sim.hospital import simulate

    t0 = time.perf_counter()
    table, stats = simulate(scenario, arm, population, progress)
    return ArmResult(arm, table, stats, time.perf_counter() - t0)


def _shm_dir() -> str | None:
    return "/dev/shm" if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None


def _child(scenario: Scenario, arm: ResolvedArm, population: PopulationIndex, conn: Any, done: Any) -> None:
    """Simulate one arm in a forked process; hand the table back as an Arrow IPC file in
    shared memory (the parent maps it: no copy through the pipe)."""
    try:
        def tick(now: int, total: int) -> None:
            done.value = now / total

        res = _simulate(scenario, arm, population, tick)
        fd, path = tempfile.mkstemp(prefix=f"paritybed-{arm.name}-", suffix=".arrow", dir=_shm_dir())
        os.close(fd)
        with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, res.table.schema) as w:
            w.write_table(res.table)
        conn.send(("ok", res.stats, res.seconds, path))
    except ParitybedError as e:  # a user-facing problem: the parent raises it as is
        conn.send(("error", e, 0.0, ""))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}", 0.0, ""))
    finally:
        conn.close()


def _take_table(path: str) -> pa.Table:
    """Map the child's IPC file (zero-copy) and unlink it (the mapping keeps the data)."""
    try:
        return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
    finally:
        os.unlink(path)


def simulate_arms(scenario: Scenario, arms: dict[str, ResolvedArm], populations: dict[str, LoadedPopulation], *,
                  parallel: bool = True, progress: ProgressFn | None = None) -> dict[str, ArmResult]:
    """Simulate both arms; with ``parallel`` each in its own forked process (the arms are
    independent and seeded separately, so the result is the same either way)."""
    if not parallel or "fork" not in mp.get_all_start_methods():
        out = {}
        for name in ARM_NAMES:
            cb = (lambda now, total, n=name: progress(n, "simulate", now, total)) if progress else None
            out[name] = _simulate(scenario, arms[name], populations[name].index, cb)
            if progress:
                progress(name, "simulate", 1, 1)
        return out
    ctx = mp.get_context("fork")
    procs = {}
    gc.freeze()  # the children's collector never walks (and copies) the inherited objects
    try:
        for name in ARM_NAMES:
            parent, child = ctx.Pipe(duplex=False)
            done = ctx.Value("d", 0.0, lock=False)
            p = ctx.Process(target=_child, args=(scenario, arms[name], populations[name].index, child, done), daemon=True)
            p.start()
            child.close()
            procs[name] = (p, parent, done)
    finally:
        gc.unfreeze()
    out: dict[str, ArmResult] = {}
    pending = dict(procs)
    try:
        _collect(arms, pending, out, progress)
    finally:
        for p, conn, _ in pending.values():  # only after a failure: stop the other arm
            p.terminate()
            p.join()
            conn.close()
    return {n: out[n] for n in ARM_NAMES}


def _collect(arms: dict[str, ResolvedArm], pending: dict[str, Any], out: dict[str, ArmResult],
             progress: ProgressFn | None) -> None:
    """Wait for the arm processes, reporting progress, and map their tables."""
    while pending:
        for name, (p, conn, done) in list(pending.items()):
            if progress:
                progress(name, "simulate", done.value, 1.0)
            if conn.poll(0.05):
                try:
                    status, stats, seconds, path = conn.recv()
                    if status != "ok":
                        if isinstance(stats, ParitybedError):
                            raise stats
                        raise EnvironmentProblem(f"simulating the {name} arm failed: {stats}")
                    table = _take_table(path)
                except EOFError:
                    p.join()
                    raise EnvironmentProblem(f"the process simulating the {name} arm died (exit code {p.exitcode})") from None
                finally:
                    conn.close()
                p.join()
                out[name] = ArmResult(arms[name], table, stats, seconds)
                if progress:
                    progress(name, "simulate", 1, 1)
                del pending[name]


# ------------------------------------------------------------------------------------ outputs
def write_traces(out: Path, arms: dict[str, ArmResult]) -> dict[str, Path]:
    """``out/traces/<arm>.parquet`` for each arm (deterministic bytes)."""
    d = out / "traces"
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, res in arms.items():
        paths[name] = d / f"{name}.parquet"
        write_trace(res.table, paths[name])
    return paths


def _counts(col: pa.ChunkedArray, mask: pa.Array | None = None) -> dict[str, int]:
    arr = col.filter(mask) if mask is not None else col
    vc = pc.value_counts(arr).to_pylist()
    return {str(x["values"]): int(x["counts"]) for x in sorted(vc, key=lambda x: (-x["counts"], str(x["values"])))}


def arm_summary(res: ArmResult, clock_start_minute: int) -> dict[str, Any]:
    """Counts of one arm's trace: requests per agent class, per type, per hour, and so on."""
    t = res.table
    fhir = pc.equal(t["kind"].cast(pa.string()), "fhir")
    tns = t["t_ns"].to_numpy()
    fh = np.asarray(fhir.to_numpy(zero_copy_only=False), dtype=bool) if t.num_rows else np.zeros(0, bool)
    hours_abs = (tns[fh] // HOUR_NS).astype(np.int64)
    # hour of day of each request (t=0 is at clock_start_minute after midnight)
    hour_of_day = ((tns[fh] + clock_start_minute * NS_PER_MIN) // HOUR_NS) % 24
    n_hours = int(-(-res.arm.duration_ns // HOUR_NS))
    per_hour = np.bincount(hours_abs, minlength=n_hours)[:n_hours] if len(hours_abs) else np.zeros(n_hours, np.int64)
    deny = pc.equal(t["expected"].cast(pa.string()), "deny")
    return {
        "duration_hours": res.arm.duration_ns / HOUR_NS,
        "seed": res.arm.seed,
        "arrivals": res.arm.arrivals,
        "break_glass": res.arm.break_glass,
        "attacks": res.arm.attacks,
        "omit": [list(x) for x in res.arm.omit],
        "rows": t.num_rows,
        "by_kind": _counts(t["kind"]),
        "fhir_requests": int(fh.sum()),
        "fhir_by_agent_class": _counts(t["agent_class"], fhir),
        "fhir_by_agent": _counts(t["agent"], fhir),
        "fhir_by_type": _counts(t["resource_type"], fhir),
        "fhir_by_interaction": _counts(t["interaction"], fhir),
        "fhir_by_workflow": _counts(t["workflow"], fhir),
        "fhir_per_hour_of_day": np.bincount(hour_of_day, minlength=24).tolist() if len(hour_of_day) else [0] * 24,
        "fhir_per_hour": per_hour.tolist(),
        "egress_by_endpoint": _counts(t["endpoint"], pc.equal(t["kind"].cast(pa.string()), "egress")),
        "lanes_opened": _counts(t["lane"], pc.equal(t["kind"].cast(pa.string()), "lane_open")),
        "expected_deny": _counts(t["label"], deny),
        "hospital": res.stats,
        "patients": patient_counts(t, clock_start_minute),
        "simulate_seconds": round(res.seconds, 3),
    }


def patient_counts(t: pa.Table, clock_start_minute: int) -> dict[str, Any]:
    """How often patients come back: distinct patients with clinical work in the arm and per
    calendar day, and per patient the clinical contexts and the days they were seen on
    (break-glass accesses and attacks left out: they are not the patient's care)."""
    care = pc.and_(pc.not_equal(t["patient_id"], ""),
                   pc.invert(pc.is_in(t["workflow"].cast(pa.string()), pa.array(["break_glass", "attack"]))))
    rows = t.filter(care).select(["t_ns", "patient_id", "context_id"])
    if rows.num_rows == 0:
        return {"distinct": 0, "per_day": [], "contexts_per_patient": {}, "days_per_patient": {}}
    day = pc.divide(pc.add(rows["t_ns"], clock_start_minute * NS_PER_MIN), 24 * HOUR_NS)
    rows = rows.append_column("day", day)
    by_day = rows.group_by(["day", "patient_id"]).aggregate([]).group_by("day").aggregate([("patient_id", "count")])
    by_day = by_day.sort_by("day")
    per_patient = rows.group_by("patient_id").aggregate([("context_id", "count_distinct"), ("day", "count_distinct")])
    ctx = per_patient["context_id_count_distinct"].to_numpy()
    days = per_patient["day_count_distinct"].to_numpy()

    def dist(x: np.ndarray) -> dict[str, float]:
        return {"mean": round(float(x.mean()), 2), "median": float(np.median(x)), "p90": float(np.percentile(x, 90)),
                "max": int(x.max())}

    return {
        "distinct": per_patient.num_rows,
        "per_day": by_day["patient_id_count"].to_pylist(),
        "contexts_per_patient": dist(ctx),
        "days_per_patient": dist(days),
        "seen_on_one_day": round(float((days == 1).mean()), 3),
    }


def summarize(scenario: Scenario, arms: dict[str, ArmResult], populations: dict[str, LoadedPopulation],
              scenario_sha256: str = "") -> dict[str, Any]:
    from paritybed.core.clock import minutes_of_day

    start_minute = minutes_of_day(scenario.start.time)
    return {
        "schema": "paritybed.summary/1",
        "scenario": scenario.name,
        "scenario_sha256": scenario_sha256,
        "start": scenario.start.datetime().isoformat(),
        "arms": {
            name: {
                **arm_summary(res, start_minute),
                "population": population_summary(populations[name]),
            }
            for name, res in arms.items()
        },
    }


def population_summary(pop: LoadedPopulation) -> dict[str, Any]:
    """An arm's population in summary.json: the folder, its size, and for derived patients the
    base they were derived from."""
    out: dict[str, Any] = {
        "folder": str(pop.folder),
        "fingerprint": pop.index.fingerprint,
        "patients": len(pop.index.patients),
        "encounters": len(pop.index.encounters),
    }
    if pop.base is not None:
        out["derived_from"] = str(pop.base)
    return out


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    p = out / "summary.json"
    p.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return p


def prepare_out(out: Path) -> Path:
    """Create the run folder; refuse a path that is a file."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class LiveOptions:
    """Live mode's knobs (`paritybed run --mode live`): the kernel decides production."""

    clock: Literal["virtual", "real"] = "virtual"
    compression: float = 60.0
    fhir_url: str | None = None  # an already loaded FHIR server instead of the embedded one
    #: of the pinned state and the root cgroup: a name of the run's own, so a live run beside
    #: `paritybed enforce` (whose default name is "paritybed") or beside another run never collides
    name: str = field(default_factory=lambda: f"paritybed-run-{os.getpid()}")


def run_scenario(path: str | Path, out: str | Path, *, days: float | None = None, hours: float | None = None,
                 parallel: bool = True, progress: ProgressFn | None = None,
                 stage: Callable[[str], None] | None = None, score: bool = True,
                 live: LiveOptions | None = None,
                 populations_ready: Callable[[dict[str, LoadedPopulation]], None] | None = None) -> RunOutput:
    """Everything `paritybed run` does, in either mode (module doc).  ``live``: the kernel
    decides production (root).  `stage(name)` is called when a step starts ("write", then, in
    live mode, "fhir", then the parity stages "learn", "decide", "replay", "score", "artefacts");
    `populations_ready(populations)` once the populations are ready, before the simulation (the
    demo starts building the production database there, alongside the run)."""
    from paritybed.scenarios import load_scenario, resolve_arms, scenario_hash

    if live is not None:
        from paritybed.live import require_root

        require_root()
    scenario = with_duration(load_scenario(path), days, hours)
    arms = resolve_arms(scenario)
    outp = prepare_out(Path(out))
    pops = prepare_populations(scenario, arms, progress)
    if populations_ready is not None:
        populations_ready(pops)
    sims = simulate_arms(scenario, arms, pops, parallel=parallel, progress=progress)
    if stage:
        stage("write")
    traces = write_traces(outp, sims)
    summary = summarize(scenario, sims, pops, scenario_hash(path))
    write_summary(outp, summary)
    result = RunOutput(outp, traces, summary, sims, pops)
    if not score:
        return result
    from paritybed.parity.evaluate import evaluate

    def parity_progress(name: str, done: int, total: int) -> None:
        if stage and done < total:
            stage(name)

    production, staging = sims["production"].table, sims["staging"].table
    if live is None:
        result.verdict = evaluate(scenario, Path(path), production, staging, outp, arms=arms, mode="model",
                                  progress=parity_progress)
        return result
    from contextlib import ExitStack

    from paritybed.live import KernelDecider, fhir_endpoint

    with ExitStack() as stack:
        hostport = fhir_endpoint(stack, live.fhir_url, pops["production"].folder, scenario.policy.fhir_base, stage)
        # The policy names the server the agents really talk to.
        scenario = scenario.model_copy(update={"policy": scenario.policy.model_copy(update={"fhir_server": hostport})})
        decider = KernelDecider(scenario, outp, hostport, clock=live.clock, compression=live.compression, name=live.name,
                                progress=(lambda d, t: progress("production", "live", d, t)) if progress else None)
        result.verdict = evaluate(scenario, Path(path), production, staging, outp, arms=arms, decide=decider,
                                  mode="live", lost_events=decider.lost_events, progress=parity_progress)
    result.live = decider.write_summary(result.verdict.agreement)
    return result
