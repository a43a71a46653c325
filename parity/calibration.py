"""The gate measured against the consequences it exists to predict, and its thresholds set from
that measurement (`paritybed calibrate SWEEP_DIR`).

Input: a sweep's table (paritybed/sweep.py), one row per run with every criterion metric (value,
sampling-noise floor, interval) and the run's ground truth: ``staging_safe``, decided from the
replay's consequences against the oracle policy with the run's own ``gate.replay`` thresholds
(parity/consequences.py).  Rows of kind ``noise`` compare two good staging arms of different
seeds: the noise baseline.

For each calibrated threshold (``CALIBRATED``) a run has one **critical value**: the threshold
at which it starts to fail that metric.  For a maximum (``<=``) it is the largest value over the
agent classes whose value is above its sampling-noise floor (the effective threshold is
``max(configured, floor)``, so a value under its floor never fails); for a minimum (``>=``) the
smallest value.  The ROC of a metric is that of its critical values (unsafe = positive).

The thresholds are set together, for the gate as a whole (a run fails when any metric or any
uncalibrated check fails):

1. each threshold starts past every safe run, at the looser of (a) half-way between the largest
   safe critical value (the *safe edge*) and the next unsafe one beyond it that no uncalibrated
   check (coverage, break-glass) fails already (or, with none beyond, the edge plus half its
   distance from the noise mean) and (b) the edge plus ``NOISE_SDS`` standard deviations of the
   noise rows: a good staging arm of another seed moves a metric by about one, so a threshold
   closer to the safe edge than that fails the next good arm like the edge's by chance;
2. *free moves*: an unsafe run the gate then misses (no other threshold or check fails it) whose
   critical value lies between the safe edge and a threshold moves that threshold to half-way
   between the edge and it: it catches the run and fails no safe one.  A threshold is thus only
   pulled towards the safe runs by an unsafe run nothing else catches (the one that catches the
   most first);
3. while the gate's miss rate is above its target, the one threshold move that catches the most
   unsafe runs per safe run it gives up is made (candidate moves: to half-way between any two
   consecutive safe critical values stricter than the threshold), as long as the false-fail rate
   stays within its target.

The result is reported with the gate's confusion table (point verdicts, and with the intervals:
pass / marginal / fail), each metric's ROC and AUC, its safe / unsafe / noise distributions, and
a flag on any threshold closer to the noise mean than three noise standard deviations.  A held-out
sweep (``holdout``) is scored with the thresholds found, never used to find them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from paritybed.parity.criteria import combine, holds
from paritybed.scenarios import Gate

CALIBRATION_SCHEMA = "paritybed.calibration/1"
TARGETS = {"false_fail": 0.05, "miss": 0.01}
NOISE_SDS = 3.0


@dataclass(frozen=True)
class Threshold:
    """One calibrated threshold: the metric it applies to, its direction, its gate field."""

    metric: str
    op: str  # "<=": a maximum; ">=": a minimum
    section: str
    field: str

    @property
    def key(self) -> str:
        return f"{self.section}.{self.field}"


CALIBRATED = (
    Threshold("resource_mix_jsd", "<=", "fidelity", "resource_mix_jsd_max"),
    Threshold("hour_profile_jsd", "<=", "fidelity", "hour_profile_jsd_max"),
    Threshold("interarrival_ks", "<=", "fidelity", "interarrival_ks_max"),
    Threshold("context_ks", "<=", "fidelity", "context_ks_max"),
    Threshold("burst_ratio", ">=", "fidelity", "burst_ratio_min"),
    Threshold("rate_headroom", ">=", "fidelity", "rate_headroom_min"),
)
CALIBRATED_METRICS = {t.metric for t in CALIBRATED}
CONSEQUENCES = ("over_block_share", "clinical_impact_minutes_per_day", "excess_under_block_share")


# ------------------------------------------------------------------------------------ reading rows
@dataclass
class MetricCells:
    """One metric of one run, per agent class: (value, floor, lo, hi)."""

    by_class: dict[str, tuple[float | None, float | None, float | None, float | None]]


@dataclass
class Run:
    cell: str
    label: str
    seed: int
    safe: bool | None  # None: a noise row
    unsafe_because: list[str]
    metrics: dict[str, MetricCells]  # calibrated metric name -> per class
    fixed: list[str]  # statuses of every other check (coverage, break-glass, sample size)
    recorded: str | None  # the criteria verdict the run was scored with
    consequences: dict[str, float | None]  # replay/* columns: over_block_share, excess_under_block_share, ...


def runs_of(table: pa.Table, kind: str = "run") -> list[Run]:
    """The rows of one kind (run or noise) that ran without error."""
    out = []
    for r in table.to_pylist():
        if r.get("kind") != kind or r.get("error"):
            continue
        metrics: dict[str, dict[str, tuple]] = {}
        fixed = []
        for col, v in r.items():
            parts = col.split("/")
            if len(parts) != 4 or parts[0] not in ("fidelity", "coverage", "break_glass") or parts[3] != "status":
                continue
            crit, cls, name, _ = parts
            if v is None:
                continue
            if crit == "fidelity" and name in CALIBRATED_METRICS:
                base = f"{crit}/{cls}/{name}"
                metrics.setdefault(name, {})[cls] = (r.get(f"{base}/value"), r.get(f"{base}/floor"),
                                                     r.get(f"{base}/lo"), r.get(f"{base}/hi"))
            else:
                fixed.append(v)
        safe = r.get("staging_safe") if kind == "run" else None
        out.append(Run(cell=r["cell"], label=r["label"], seed=r["seed"], safe=safe,
                       unsafe_because=[x for x in (r.get("staging_unsafe_because") or "").split(",") if x],
                       metrics={k: MetricCells(v) for k, v in metrics.items()}, fixed=fixed,
                       recorded=r.get("criteria_verdict"),
                       consequences={k: r.get(f"replay/{k}") for k in CONSEQUENCES}))
    return out


# ------------------------------------------------------------------------------------ the gate on a run
def critical(run: Run, t: Threshold) -> float:
    """The configured value of ``t`` at which this run starts to fail it (module doc): it fails
    when the threshold is below (<=) or above (>=) this value; +-inf when it never does."""
    cells = run.metrics.get(t.metric)
    if cells is None:
        return -math.inf if t.op == "<=" else math.inf
    if t.op == "<=":
        vals = [v for v, floor, _, _ in cells.by_class.values() if v is not None and (floor is None or v > floor)]
        return max(vals, default=-math.inf)
    vals = [v for v, *_ in cells.by_class.values() if v is not None]
    return min(vals, default=math.inf)


def fails_at(crit_value: float, t: Threshold, threshold: float) -> bool:
    return crit_value > threshold if t.op == "<=" else crit_value < threshold


def status(run: Run, thresholds: dict[str, float]) -> str:
    """The run's criteria verdict (pass / marginal / fail) under these thresholds, with intervals."""
    out = list(run.fixed)
    for t in CALIBRATED:
        cells = run.metrics.get(t.metric)
        if cells is None:
            continue
        c = thresholds[t.key]
        for v, floor, lo, hi in cells.by_class.values():
            eff = max(c, floor) if (t.op == "<=" and floor is not None) else c
            ok = holds(v, t.op, eff)
            ends = {ok} | ({holds(lo, t.op, eff), holds(hi, t.op, eff)} if lo is not None and hi is not None else set())
            out.append("marginal" if len(ends) == 2 else ("pass" if ok else "fail"))
    return combine(out)


def point_fails(run: Run, thresholds: dict[str, float]) -> bool:
    """Whether the run fails on its values alone (no intervals) under these thresholds."""
    if "fail" in run.fixed:
        return True
    return any(fails_at(critical(run, t), t, thresholds[t.key]) for t in CALIBRATED)


def fixed_fails(run: Run) -> bool:
    """Fails a check calibration does not set (coverage, break-glass, sample size)."""
    return "fail" in run.fixed


# ------------------------------------------------------------------------------------ rates
def confusion(runs: list[Run], thresholds: dict[str, float]) -> dict[str, Any]:
    """The gate's confusion table on runs with a ground truth, and its error rates: point verdicts
    (``false_fail_rate``, ``miss_rate``) and with the intervals (safe runs failed or marginal,
    unsafe runs passed or marginal)."""
    table = {"safe": {"pass": 0, "marginal": 0, "fail": 0}, "unsafe": {"pass": 0, "marginal": 0, "fail": 0}}
    point = {"safe": {"pass": 0, "fail": 0}, "unsafe": {"pass": 0, "fail": 0}}
    wrong: list[dict[str, Any]] = []
    for r in runs:
        truth = "safe" if r.safe else "unsafe"
        st = status(r, thresholds)
        table[truth][st] += 1
        pf = point_fails(r, thresholds)
        point[truth]["fail" if pf else "pass"] += 1
        if pf == bool(r.safe):
            wrong.append({"cell": r.cell, "label": r.label, "seed": r.seed, "truth": truth,
                          "verdict": "fail" if pf else "pass", "unsafe_because": r.unsafe_because})
    ns, nu = sum(point["safe"].values()), sum(point["unsafe"].values())
    return {
        "runs": ns + nu, "safe": ns, "unsafe": nu,
        "point": point, "with_intervals": table,
        "false_fail_rate": _rate(point["safe"]["fail"], ns), "miss_rate": _rate(point["unsafe"]["pass"], nu),
        "false_fail_rate_marginal_as_fail": _rate(table["safe"]["fail"] + table["safe"]["marginal"], ns),
        "miss_rate_marginal_as_pass": _rate(table["unsafe"]["pass"] + table["unsafe"]["marginal"], nu),
        "marginal_rate": _rate(table["safe"]["marginal"] + table["unsafe"]["marginal"], ns + nu),
        "wrong": wrong,
    }


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def recorded_confusion(runs: list[Run]) -> dict[str, Any]:
    """The confusion table of the criteria verdicts the runs were scored with (their thresholds)."""
    table = {"safe": {"pass": 0, "marginal": 0, "fail": 0}, "unsafe": {"pass": 0, "marginal": 0, "fail": 0}}
    for r in runs:
        table["safe" if r.safe else "unsafe"][r.recorded or "fail"] += 1
    return table


# ------------------------------------------------------------------------------------ per metric
def roc(runs: list[Run], t: Threshold) -> dict[str, Any]:
    """ROC of one threshold's critical values (unsafe = positive): points (false-fail rate, share
    of unsafe runs caught, threshold) from the loosest threshold to the strictest, and the AUC."""
    pos = np.array([critical(r, t) for r in runs if not r.safe], dtype=float)
    neg = np.array([critical(r, t) for r in runs if r.safe], dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        return {"points": [], "auc": None}
    finite = np.unique(np.concatenate([pos, neg])[np.isfinite(np.concatenate([pos, neg]))])
    order = finite[::-1] if t.op == "<=" else finite  # loosest first
    pts: list[list[Any]] = [[0.0, 0.0, None]]
    for c in order:
        # the strictest threshold that still passes a run whose critical value is c, just beyond c
        fpr = float(np.mean([fails_at(x, t, c) for x in neg]))
        tpr = float(np.mean([fails_at(x, t, c) for x in pos]))
        pts.append([round(fpr, 4), round(tpr, 4), round(float(c), 6)])
    pts.append([1.0, 1.0, None])
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return {"points": pts, "auc": round(float(np.trapezoid(ys, xs)), 4)}


def _summary(x: list[float]) -> dict[str, Any]:
    a = np.array([v for v in x if math.isfinite(v)], dtype=float)
    if len(a) == 0:
        return {"n": len(x), "finite": 0}
    q = np.percentile(a, [0, 5, 50, 95, 100])
    return {"n": len(x), "finite": int(len(a)), "min": round(float(q[0]), 6), "p05": round(float(q[1]), 6),
            "median": round(float(q[2]), 6), "p95": round(float(q[3]), 6), "max": round(float(q[4]), 6),
            "mean": round(float(a.mean()), 6), "sd": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 6)}


def noise_value(run: Run, t: Threshold) -> float:
    """A noise row's value of a metric: the worst over agent classes (largest for a maximum,
    smallest for a minimum), floors ignored: how far two good staging arms drift apart."""
    cells = run.metrics.get(t.metric)
    vals = [v for v, *_ in (cells.by_class.values() if cells else []) if v is not None]
    if not vals:
        return math.nan
    return max(vals) if t.op == "<=" else min(vals)


# ------------------------------------------------------------------------------------ setting thresholds
def _midpoint(a: float, b: float) -> float:
    return round((a + b) / 2, 4)


def initial_threshold(t: Threshold, safe: list[float], unsafe: list[float], noise_mean: float | None,
                      current: float, noise_sd: float | None = None) -> float:
    """Step 1 of the module doc: past every safe run, at the looser of (a) half-way between the
    safe edge and the nearest unsafe critical value beyond it (with none beyond: the edge plus half
    its distance from the noise mean, else from the safe median) and (b) the edge plus
    ``NOISE_SDS`` noise standard deviations (how far a good staging arm moves with its seed)."""
    s = [x for x in safe if math.isfinite(x)]
    if not s:
        return current
    sign = 1.0 if t.op == "<=" else -1.0  # on "<=" values: a minimum is a maximum of -x
    edge = max(sign * x for x in s)
    beyond = [sign * u for u in unsafe if math.isfinite(u) and sign * u > edge]
    if beyond:
        place = (edge + min(beyond)) / 2
    else:
        ref = sign * noise_mean if noise_mean is not None and math.isfinite(noise_mean) else float(np.median([sign * x for x in s]))
        place = edge + max(edge - ref, 0.0) / 2
    if noise_sd is not None and math.isfinite(noise_sd):
        place = max(place, edge + NOISE_SDS * noise_sd)
    return round(sign * place, 4)


def _free(t: Threshold, current: float, safe: list[float], missed: list[float]) -> list[float]:
    """Step 2 of the module doc: stricter thresholds that fail no safe run, half-way between the
    safe edge and each critical value of an unsafe run the gate misses that lies beyond the edge."""
    s = [x for x in safe if math.isfinite(x)]
    if not s:
        return []
    edge = max(s) if t.op == "<=" else min(s)
    beyond = sorted({u for u in missed if math.isfinite(u) and fails_at(u, t, edge) and not fails_at(u, t, current)},
                    reverse=(t.op == "<="))
    return [_midpoint(edge, u) for u in beyond]


def _stricter(t: Threshold, current: float, safe: list[float]) -> list[float]:
    """Every threshold stricter than ``current`` that sits half-way between two safe critical
    values (giving up one more safe run at each), from the nearest to the farthest."""
    s = sorted({x for x in safe if math.isfinite(x)}, reverse=(t.op == "<="))
    passing = [x for x in s if not fails_at(x, t, current)]
    steps = [_midpoint(a, b) for a, b in zip(passing, passing[1:])]
    if passing:
        last = passing[-1]
        steps.append(round(last - 1e-4 if t.op == "<=" else last + 1e-4, 6))
    return steps


def _fails(run: Run, i: int, crit: dict[str, list[float]], th: dict[str, float]) -> bool:
    """Whether run ``i`` fails on point values under ``th`` (``crit``: critical values by key)."""
    return fixed_fails(run) or any(fails_at(crit[t.key][i], t, th[t.key]) for t in CALIBRATED)


def _point_counts(runs: list[Run], crit: dict[str, list[float]], th: dict[str, float]) -> tuple[int, int]:
    """(safe runs failed, unsafe runs passed) on point verdicts; ``crit``: critical values by key."""
    ff = miss = 0
    for i, r in enumerate(runs):
        fails = _fails(r, i, crit, th)
        if r.safe and fails:
            ff += 1
        elif not r.safe and not fails:
            miss += 1
    return ff, miss


def fit_thresholds(runs: list[Run], noise: list[Run], current: dict[str, float],
                   targets: dict[str, float] = TARGETS) -> tuple[dict[str, float], list[str]]:
    """Thresholds for ``CALIBRATED`` (module doc); the steps taken, in words."""
    crit = {t.key: [critical(r, t) for r in runs] for t in CALIBRATED}
    n_safe = sum(1 for r in runs if r.safe)
    n_unsafe = len(runs) - n_safe
    log = []
    th: dict[str, float] = {}
    for t in CALIBRATED:
        nm = [x for x in (noise_value(r, t) for r in noise) if math.isfinite(x)]
        safe = [c for c, r in zip(crit[t.key], runs) if r.safe]
        # the unsafe runs a threshold is needed for: those no uncalibrated check fails already
        unsafe = [c for c, r in zip(crit[t.key], runs) if not r.safe and not fixed_fails(r)]
        th[t.key] = initial_threshold(t, safe, unsafe, float(np.mean(nm)) if nm else None, current[t.key],
                                      float(np.std(nm, ddof=1)) if len(nm) >= 2 else None)
        log.append(f"{t.key}: {th[t.key]:g} (passes every safe run, with a margin)")
    ff, miss = _point_counts(runs, crit, th)
    while True:
        need = bool(n_unsafe) and miss / n_unsafe > targets["miss"]
        best = None
        for t in CALIBRATED:
            safe = [c for c, r in zip(crit[t.key], runs) if r.safe]
            missed = [c for i, (c, r) in enumerate(zip(crit[t.key], runs)) if not r.safe and not _fails(r, i, crit, th)]
            for free, cands in ((True, _free(t, th[t.key], safe, missed)), (False, _stricter(t, th[t.key], safe) if need else [])):
                for cand in cands:
                    f2, m2 = _point_counts(runs, crit, dict(th, **{t.key: cand}))
                    if not free and n_safe and f2 / n_safe > targets["false_fail"]:
                        break  # stricter candidates only fail more safe runs
                    caught, lost = miss - m2, f2 - ff
                    if caught <= 0:
                        continue
                    score = (math.inf if lost <= 0 else caught / lost, caught)
                    if best is None or score > best[0]:
                        best = (score, t, cand, caught, lost, f2, m2)
        if best is None:
            if need:
                log.append("the miss rate stays above its target: no threshold can catch another unsafe run without "
                           "failing more safe runs than the false-fail target allows")
            break
        _, t, cand, caught, lost, ff, miss = best
        th[t.key] = cand
        log.append(f"{t.key}: {cand:g} (catches {caught} more unsafe run(s), fails {lost} more safe run(s))")
    return th, log


def current_thresholds(gate: Gate | None = None) -> dict[str, float]:
    g = gate or Gate()
    return {t.key: float(getattr(getattr(g, t.section), t.field)) for t in CALIBRATED}


# ------------------------------------------------------------------------------------ the report
def calibrate(table: pa.Table, *, holdout: pa.Table | None = None, targets: dict[str, float] = TARGETS,
              sweep: dict[str, Any] | None = None, holdout_sweep: dict[str, Any] | None = None,
              before: dict[str, float] | None = None) -> dict[str, Any]:
    """The calibration document (``calibration.json``, docs/parity.md "Calibration").  ``before``:
    the thresholds the calibration starts from and is compared with (default: the shipped gate's)."""
    runs = runs_of(table, "run")
    noise = runs_of(table, "noise")
    errors = sum(1 for r in table.to_pylist() if r.get("error"))
    now = dict(before) if before is not None else current_thresholds()
    th, log = fit_thresholds(runs, noise, now, targets)
    metrics = {}
    for t in CALIBRATED:
        nv = [noise_value(r, t) for r in noise]
        ns = _summary(nv)
        near = None
        if ns.get("finite", 0) >= 2:
            near = abs(th[t.key] - ns["mean"]) < NOISE_SDS * ns["sd"]
        metrics[t.key] = {
            "metric": t.metric, "op": t.op, "default_before": now[t.key], "threshold": th[t.key],
            "safe": _summary([critical(r, t) for r in runs if r.safe]),
            "unsafe": _summary([critical(r, t) for r in runs if not r.safe]),
            "noise": ns, "too_close_to_noise": near, "roc": roc(runs, t),
        }
    reasons: dict[str, int] = {}
    for r in runs:
        for x in r.unsafe_because:
            reasons[x] = reasons.get(x, 0) + 1
    doc: dict[str, Any] = {
        "schema": CALIBRATION_SCHEMA,
        "sweep": {**(sweep or {}), "runs": len(runs), "noise_rows": len(noise), "errors": errors},
        "targets": targets,
        "ground_truth": {"safe": sum(1 for r in runs if r.safe), "unsafe": sum(1 for r in runs if not r.safe),
                         "unsafe_because": dict(sorted(reasons.items()))},
        "consequence_noise": consequence_noise(runs, noise),
        "gate": {t.key: th[t.key] for t in CALIBRATED},
        "steps": log,
        "metrics": metrics,
        "by_variant": by_variant(runs, th),
        "calibration_set": {"with_defaults_before": confusion(runs, now), "calibrated": confusion(runs, th),
                            "as_run": recorded_confusion(runs)},
    }
    if holdout is not None:
        hruns = runs_of(holdout, "run")
        doc["holdout"] = {"sweep": {**(holdout_sweep or {}), "runs": len(hruns)},
                          "calibrated": confusion(hruns, th), "as_run": recorded_confusion(hruns),
                          "by_variant": by_variant(hruns, th),
                          "targets_met": _met(confusion(hruns, th), targets)}
    return doc


def by_variant(runs: list[Run], thresholds: dict[str, float]) -> dict[str, dict[str, int]]:
    """Per variant (label): runs, how many are unsafe, how many the gate fails (point verdicts)."""
    out: dict[str, dict[str, int]] = {}
    for r in runs:
        b = out.setdefault(r.label, {"runs": 0, "unsafe": 0, "gate_fails": 0})
        b["runs"] += 1
        b["unsafe"] += 0 if r.safe else 1
        b["gate_fails"] += int(point_fails(r, thresholds))
    return out


def consequence_noise(runs: list[Run], noise: list[Run]) -> dict[str, Any]:
    """How far the consequences of good staging arms drift by chance: the noise rows (a second
    good staging arm against the first) and the base scenario's runs (a good staging arm against
    the oracle).  What the ground truth's tolerances must stand above."""
    base = [r for r in runs if r.label == "base"]
    return {src: {k: _summary([float(v) for r in rows if (v := r.consequences.get(k)) is not None]) for k in CONSEQUENCES}
            for src, rows in (("noise_rows", noise), ("base_runs", base))}


def _met(c: dict[str, Any], targets: dict[str, float]) -> dict[str, bool | None]:
    ff, miss = c["false_fail_rate"], c["miss_rate"]
    return {"false_fail": None if ff is None else ff <= targets["false_fail"],
            "miss": None if miss is None else miss <= targets["miss"]}
