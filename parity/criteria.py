"""The three parity criteria, scored on two profiles (staging vs production).

Each metric carries its value, threshold, pass/fail and one plain sentence for a reader who is
not a statistician.  ``paritybed run`` (profiles built from the two traces) and ``paritybed gate``
(staging trace + a production profile from an AuditEvent export) call the same ``criteria``.

Fidelity (per agent class): resource mix and hour-of-day profile as Jensen-Shannon distance
(base 2: 0 identical, 1 disjoint), judged against the configured maximum or, when the samples are
small, the distance sampling noise alone produces (whichever is larger); inter-arrival times and requests per clinical context as the
two-sample Kolmogorov-Smirnov statistic D (the largest gap between the two cumulative
distributions; the p-value is meaningless at these sample sizes, so D is gated, against the
configured maximum or the 1-in-1000 critical value for small samples, whichever is larger;
inter-arrival is measured between new clinical contexts, i.e. on the arrival of work); burst height as
staging's typical daily peak 5-minute count per replica over production's; how long launch contexts
are held (KS D, when production has launch contexts); and, given the staging-built policy, the rate
limit's headroom over production's busiest 5 minutes.
Coverage: every production (type, interaction) above the support threshold must appear in staging.
Break-glass: every class seen or declared for production is exercised in staging, its lane is in
the policy, its pairs are covered, and an access after expiry was exercised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from paritybed.enforcer.policy import Policy
from paritybed.parity.intervals import Bootstrap, jsd_interval, jsd_rows, ks_interval, median_ratio_interval
from paritybed.parity.profile import ClassProfile, Profile, split_pair
from paritybed.scenarios import Gate

MIN_SAMPLE = 20  # fewer production events than this: a distribution metric cannot judge


def holds(value: float | None, op: str, threshold: float | None) -> bool:
    """Whether ``value op threshold`` holds (a missing value never passes a bound)."""
    if threshold is None:
        return True
    if value is None:
        return False
    return {"<=": value <= threshold, ">=": value >= threshold, "==": value == threshold}[op]


def combine(statuses: list[str]) -> str:
    """Several statuses as one: any fail fails, else any marginal is marginal, else pass."""
    return "fail" if "fail" in statuses else "marginal" if "marginal" in statuses else "pass"


@dataclass
class Metric:
    criterion: str
    agent_class: str
    name: str
    value: float | None
    threshold: float | None
    op: str  # "<=", ">=" or "==" (value op threshold passes)
    passed: bool
    reading: str
    detail: dict[str, Any] = field(default_factory=dict)
    interval: tuple[float, float] | None = None  # bootstrap interval of value (parity/intervals.py)

    @property
    def status(self) -> str:
        """pass / fail, or marginal when the interval straddles the threshold (either way)."""
        if self.interval is None or self.threshold is None:
            return "pass" if self.passed else "fail"
        ends = {holds(x, self.op, self.threshold) for x in self.interval} | {self.passed}
        return "marginal" if len(ends) == 2 else ("pass" if self.passed else "fail")

    @property
    def margin(self) -> float | None:
        """How far the value is from its threshold, positive on the passing side."""
        if self.value is None or self.threshold is None or self.op == "==":
            return None
        d = self.threshold - self.value if self.op == "<=" else self.value - self.threshold
        return round(float(d), 6)

    def to_dict(self) -> dict[str, Any]:
        d = {"agent_class": self.agent_class, "name": self.name,
             "value": None if self.value is None else round(float(self.value), 6),
             "threshold": self.threshold, "op": self.op, "pass": self.passed, "status": self.status,
             "reading": self.reading}
        if self.interval is not None:
            d["interval"] = list(self.interval)
            d["margin"] = self.margin
        if self.detail:
            d["detail"] = self.detail
        return d


@dataclass
class Criterion:
    name: str
    metrics: list[Metric]

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.metrics)

    def classes(self) -> list[str]:
        return sorted({m.agent_class for m in self.metrics})

    @property
    def status(self) -> str:
        return combine([m.status for m in self.metrics])

    def for_class(self, cls: str) -> list[Metric]:
        return [m for m in self.metrics if m.agent_class == cls]

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.passed, "status": self.status, "metrics": [m.to_dict() for m in self.metrics]}


@dataclass
class Criteria:
    fidelity: Criterion
    coverage: Criterion
    break_glass: Criterion

    @property
    def passed(self) -> bool:
        return self.fidelity.passed and self.coverage.passed and self.break_glass.passed

    @property
    def status(self) -> str:
        """pass, fail or marginal (no metric fails outright, one's interval straddles its threshold)."""
        return combine([c.status for c in self.all()])

    def all(self) -> list[Criterion]:
        return [self.fidelity, self.coverage, self.break_glass]

    def to_dict(self) -> dict[str, Any]:
        return {c.name: c.to_dict() for c in self.all()}


# ------------------------------------------------------------------------------ fidelity
def _dist(counts: dict[str, int], keys: list[str]) -> np.ndarray:
    return np.array([counts.get(k, 0) for k in keys], dtype=np.float64)


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2, of two count vectors (1.0 when one side is empty)."""
    if p.sum() <= 0 or q.sum() <= 0:
        return 1.0
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2))


def jsd_noise_floor(p: np.ndarray, q: np.ndarray, n_p: int, n_q: int, reps: int = 300) -> float:
    """The 99th percentile of the distance two samples of these sizes drawn from the *same*
    distribution (the pooled one) would show: below it a difference is indistinguishable from
    sampling noise.  Sizes are effective ones (clinical contexts, not requests: the requests of
    one encounter share its hour and its record types).  Seeded: deterministic."""
    if n_p <= 0 or n_q <= 0 or p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    pooled = (p / p.sum() + q / q.sum()) / 2
    rng = np.random.default_rng(20260105)
    a = rng.multinomial(n_p, pooled, size=reps) / n_p
    b = rng.multinomial(n_q, pooled, size=reps) / n_q
    return float(np.percentile(jsd_rows(a, b), 99))


def _n_eff(c: ClassProfile) -> int:
    return c.contexts if 0 < c.contexts < c.requests else c.requests


KS_C_ALPHA = 1.949  # c(alpha) of the two-sample KS test at alpha = 0.001


def ks_noise_floor(n: int, m: int) -> float:
    """The KS statistic two samples of sizes n and m from the same distribution exceed only once
    in a thousand (the asymptotic critical value): below it D is indistinguishable from noise."""
    if n <= 0 or m <= 0:
        return 1.0
    return KS_C_ALPHA * math.sqrt((n + m) / (n * m))


def ks(a: list[float], b: list[float]) -> float:
    # D is the same for every method; "asymp" only skips an exact p-value we do not use.
    return float(ks_2samp(np.asarray(a), np.asarray(b), method="asymp").statistic)


def daily_peaks(c: ClassProfile) -> list[float]:
    """Each replica-day's peak sliding 5-minute count (days with traffic)."""
    return [float(v) for days in c.peak5.values() for v in days.values() if v > 0]


def burst_height(c: ClassProfile) -> float:
    """Median, over the replica-days with traffic, of that replica's peak sliding 5-minute count:
    the typical daily burst one replica must absorb (robust to run length and weekends)."""
    peaks = daily_peaks(c)
    return float(np.median(peaks)) if peaks else 0.0


def _fid(cls: str, name: str, value: float | None, thr: float, op: str, ok: bool, good: str, bad: str,
         detail: dict[str, Any] | None = None, interval: tuple[float, float] | None = None) -> Metric:
    return Metric("fidelity", cls, name, value, thr, op, ok, good if ok else bad, detail or {}, interval)


def bootstrap_of(gate: Gate) -> Bootstrap:
    return Bootstrap(resamples=gate.margin.resamples, confidence=gate.margin.confidence)


def rate_headroom(cls: str, policy: Policy, p: ClassProfile, gate: Gate) -> Metric | None:
    """The staging-built rate limit of the class's agents (its burst: what a replica may send at
    once, refilled over 5 minutes) over production's busiest 5 minutes of one replica.  No
    interval: production's busiest 5 minutes is one extreme value, not an average to resample."""
    bursts = [ap.rate.burst for ap in policy.agents.values() if ap.agent_class == cls and ap.rate is not None]
    peak = max((v for days in p.peak5.values() for v in days.values()), default=0)
    if not bursts or peak <= 0:
        return None
    burst = min(bursts)
    v = burst / peak
    thr = gate.fidelity.rate_headroom_min
    return _fid(cls, "rate_headroom", v, thr, ">=", v >= thr,
                f"The rate limit learned in staging ({burst} requests at once) is {v:.2f} times production's busiest "
                f"5 minutes of one replica ({peak} requests): production's bursts fit under it.",
                f"The rate limit learned in staging ({burst} requests at once) is only {v:.2f} times production's "
                f"busiest 5 minutes of one replica ({peak} requests): production's busiest bursts will be rate-limited.",
                {"rate_limit_burst": burst, "production_peak_5min": peak})


def fidelity(staging: Profile, production: Profile, gate: Gate, policy: Policy | None = None) -> Criterion:
    """``policy`` (the staging-built one) adds ``rate_headroom``: its rate limit against
    production's busiest 5 minutes; and tells which classes' contexts the durations judge."""
    g = gate.fidelity
    boot = bootstrap_of(gate)
    out: list[Metric] = []
    for cls in sorted(production.classes):
        p = production.classes[cls]
        s = staging.classes.get(cls, ClassProfile())
        if p.requests < MIN_SAMPLE:
            out.append(Metric("fidelity", cls, "sample_size", float(p.requests), float(MIN_SAMPLE), ">=", True,
                              f"Production has only {p.requests} requests from this agent: too few to compare "
                              "distributions, so fidelity is not judged for it."))
            continue
        if s.requests < MIN_SAMPLE:
            out.append(Metric("fidelity", cls, "sample_size", float(s.requests), float(MIN_SAMPLE), ">=", False,
                              f"Staging has only {s.requests} requests from this agent against {p.requests} in "
                              "production: staging does not represent it at all."))
            continue
        keys = sorted(set(p.pairs) | set(s.pairs))
        for name, a, b, thr, good, bad in (
            ("resource_mix_jsd", _dist(s.pairs, keys), _dist(p.pairs, keys), g.resource_mix_jsd_max,
             "Staging asks for the same kinds of records in about the same proportions as production.",
             "Staging asks for a different mix of record types than production does."),
            ("hour_profile_jsd", np.array(s.hours, float), np.array(p.hours, float), g.hour_profile_jsd_max,
             "Staging traffic rises and falls over the day like production traffic.",
             "Staging traffic is spread over the day differently from production (e.g. no morning peak)."),
        ):
            v = jsd(a, b)
            floor = jsd_noise_floor(a, b, _n_eff(s), _n_eff(p))
            eff = round(max(thr, floor), 6)
            out.append(_fid(cls, name, v, eff, "<=", v <= eff, good, bad,
                            {"configured_max": thr, "sampling_noise_p99": round(floor, 6)},
                            jsd_interval(a, b, _n_eff(s), _n_eff(p), v, boot, f"{cls}/{name}")))
        if min(len(s.interarrival_ms), len(p.interarrival_ms)) >= MIN_SAMPLE:
            v = ks(s.interarrival_ms, p.interarrival_ms)
            floor = ks_noise_floor(s.interarrival_n, p.interarrival_n)
            eff = round(max(g.interarrival_ks_max, floor), 6)
            unit = "new encounters, claims or queries" if p.interarrival_basis == "context" else "requests"
            out.append(_fid(cls, "interarrival_ks", v, eff, "<=", v <= eff,
                            f"The gaps between {unit} look the same in staging and production.",
                            f"The gaps between {unit} differ: staging does not reproduce production's rushes "
                            "(many arrivals close together) and quiet spells.",
                            {"configured_max": g.interarrival_ks_max, "sampling_noise_p999": round(floor, 6),
                             "basis": p.interarrival_basis, "staging_median_ms": _median(s.interarrival_ms),
                             "production_median_ms": _median(p.interarrival_ms),
                             "staging_burstiness": burstiness(s.interarrival_ms),
                             "production_burstiness": burstiness(p.interarrival_ms)},
                            ks_interval(s.interarrival_ms, s.interarrival_n, p.interarrival_ms, p.interarrival_n, v, boot,
                                        f"{cls}/interarrival_ks")))
        bs, bp = burst_height(s), burst_height(p)
        v = bs / bp if bp > 0 else math.inf
        out.append(_fid(cls, "burst_ratio", v if math.isfinite(v) else None, g.burst_ratio_min, ">=",
                        v >= g.burst_ratio_min,
                        f"Staging's busiest 5 minutes of a day ({bs:g} requests per replica) reach production's "
                        f"({bp:g}), so a rate limit learned in staging leaves room for production's bursts.",
                        f"Staging's busiest 5 minutes of a day ({bs:g} requests per replica) fall short of "
                        f"production's ({bp:g}): a rate limit learned in staging would block production bursts "
                        "such as morning rounds.",
                        {"staging_peak_5min": bs, "production_peak_5min": bp},
                        median_ratio_interval(daily_peaks(s), daily_peaks(p), v, boot, f"{cls}/burst_ratio")
                        if math.isfinite(v) else None))
        if min(len(s.requests_per_context), len(p.requests_per_context)) >= MIN_SAMPLE:
            v = ks(s.requests_per_context, p.requests_per_context)
            floor = ks_noise_floor(s.contexts, p.contexts)
            eff = round(max(g.context_ks_max, floor), 6)
            out.append(_fid(cls, "context_ks", v, eff, "<=", v <= eff,
                            "Each patient encounter, claim or query involves about as many requests in staging "
                            "as in production.",
                            "The number of requests per encounter, claim or query differs between staging and "
                            "production.",
                            {"configured_max": g.context_ks_max, "sampling_noise_p999": round(floor, 6),
                             "staging_median": _median(s.requests_per_context),
                             "production_median": _median(p.requests_per_context)},
                            ks_interval(s.requests_per_context, s.contexts, p.requests_per_context, p.contexts, v, boot,
                                        f"{cls}/context_ks")))
        head = rate_headroom(cls, policy, p, gate) if policy is not None else None
        if head is not None:
            out.append(head)
        m = _context_durations(cls, s, p, g.context_duration_ks_max, policy)
        if m is not None:
            out.append(m)
    return Criterion("fidelity", out)


def _context_durations(cls: str, s: ClassProfile, p: ClassProfile, thr: float, policy: Policy | None) -> Metric | None:
    """How long launch contexts are held, staging vs production (KS D on the durations): a staging
    whose contexts close sooner than production's learns a max_duration_s that closes production's
    contexts before the work ends (docs/parity.md, "Launch contexts")."""
    if p.launch_contexts < MIN_SAMPLE:
        return None
    cap = None
    if policy is not None:
        caps = [a.context.max_duration_s for a in policy.agents.values()
                if a.agent_class == cls and a.context is not None and a.context.max_duration_s is not None]
        cap = min(caps) if caps else None
    detail: dict[str, Any] = {"configured_max": thr, "staging_contexts": s.launch_contexts,
                              "production_contexts": p.launch_contexts,
                              "staging_median_s": _median(s.context_held_s), "production_median_s": _median(p.context_held_s),
                              "staging_longest_s": max(s.context_held_s, default=0.0),
                              "production_longest_s": max(p.context_held_s, default=0.0)}
    if cap is not None:
        longer = sum(1 for x in p.context_held_s if x > cap) / len(p.context_held_s)
        detail.update(policy_max_duration_s=cap, production_share_held_longer=round(longer, 6))
    if s.launch_contexts < MIN_SAMPLE:
        return Metric("fidelity", cls, "context_duration_ks", None, thr, "<=", False,
                      f"Production opens {p.launch_contexts} launch contexts for this agent and staging only "
                      f"{s.launch_contexts}: staging cannot tell how long the agent's clinical work keeps a "
                      "patient's context open.", detail)
    v = ks(s.context_held_s, p.context_held_s)
    floor = ks_noise_floor(s.launch_contexts, p.launch_contexts)
    eff = round(max(thr, floor), 6)
    detail["sampling_noise_p999"] = round(floor, 6)
    return _fid(cls, "context_duration_ks", v, eff, "<=", v <= eff,
                f"Launch contexts stay open about as long in staging as in production (median "
                f"{detail['staging_median_s']:g} s vs {detail['production_median_s']:g} s), so the context expiry "
                "learned in staging fits production's work.",
                f"Launch contexts stay open for a different length of time in staging (median "
                f"{detail['staging_median_s']:g} s) than in production ({detail['production_median_s']:g} s): a "
                "context expiry learned in staging would close production's contexts before the work ends "
                "(e.g. before the note is signed) and block the agent's last requests.", detail)


def burstiness(x: list[float]) -> float:
    """B = (sigma - mu) / (sigma + mu) of inter-arrival times: -1 regular, 0 Poisson, -> 1 bursty.
    (Reported, not gated: computed on the quantile sample, which preserves both moments closely.)"""
    a = np.asarray(x, dtype=float)
    if len(a) < 2 or a.mean() + a.std() == 0:
        return 0.0
    return round(float((a.std() - a.mean()) / (a.std() + a.mean())), 4)


def _median(x: list[float]) -> float:
    return round(float(np.median(x)), 3) if x else 0.0


# ------------------------------------------------------------------------------ coverage
def coverage(staging: Profile, production: Profile, gate: Gate) -> Criterion:
    g = gate.coverage
    out: list[Metric] = []
    for cls in sorted(production.classes):
        p = production.classes[cls]
        s = staging.classes.get(cls, ClassProfile())
        total = sum(p.pairs.values())
        missing, supported = [], 0
        for k, n in sorted(p.pairs.items(), key=lambda kv: (-kv[1], kv[0])):
            share = n / total if total else 0.0
            if n < g.support_min_count or share < g.support_min_share:
                continue
            supported += 1
            if s.pairs.get(k, 0) < g.staging_min_count:
                t, i = split_pair(k)
                missing.append({"type": t, "interaction": i, "production_count": n,
                                "production_share": round(share, 6), "staging_count": s.pairs.get(k, 0)})
        if missing:
            names = ", ".join(f"{m['type']} {m['interaction']} ({m['production_share']:.2%} of production)"
                              for m in missing[:4])
            reading = (f"Staging never (or too rarely) performed {len(missing)} operation(s) this agent performs in "
                       f"production: {names}. The first such production request would be blocked.")
        else:
            reading = (f"Every one of the {supported} operations this agent performs in production (above the "
                       "support threshold) was exercised in staging.")
        out.append(Metric("coverage", cls, "missing_pairs", float(len(missing)), 0.0, "<=", not missing, reading,
                          {"missing": missing, "supported_pairs": supported}))
    return Criterion("coverage", out)


# ------------------------------------------------------------------------------ break-glass
def break_glass(staging: Profile, production: Profile, gate: Gate, *, policy: Policy | None = None,
                declared: dict[str, list[str]] | None = None) -> Criterion:
    """``declared`` maps agent class -> break-glass classes the scenario sanctions for it."""
    out: list[Metric] = []
    need: dict[str, set[str]] = {}
    for cls, p in production.classes.items():
        need.setdefault(cls, set()).update(k for k, lp in p.lanes.items() if lp.activations or lp.pairs)
    for cls, lanes in (declared or {}).items():
        need.setdefault(cls, set()).update(lanes)
    lanes_in_policy: dict[str, dict[str, set[tuple[str, str]]]] = {}
    base_in_policy: dict[str, set[tuple[str, str]]] = {}
    if policy is not None:
        for ap in policy.agents.values():
            base_in_policy.setdefault(ap.agent_class, set()).update(ap.allowed_pairs())
            for lc, lp in ap.lanes.items():
                lanes_in_policy.setdefault(ap.agent_class, {}).setdefault(lc, set()).update(q.key() for q in lp.allow)
    for cls in sorted(need):
        for lane in sorted(need[cls]):
            s = staging.classes.get(cls, ClassProfile()).lanes.get(lane)
            p = production.classes.get(cls, ClassProfile()).lanes.get(lane)
            label = lane.replace("_", " ").title()
            ok = s is not None and s.activations > 0
            out.append(Metric("break_glass", cls, f"{lane}.exercised", float(s.activations if s else 0), 1.0, ">=", ok,
                              f"Staging ran {label} drills ({s.activations if s else 0} activations)." if ok else
                              f"Staging never ran a {label} activation: the first real {label} would meet an "
                              "untested policy."))
            if policy is not None:
                have = lane in lanes_in_policy.get(cls, {})
                out.append(Metric("break_glass", cls, f"{lane}.lane_in_policy", float(have), 1.0, "==", have,
                                  f"The policy has a {label} lane for this agent." if have else
                                  f"The policy has no {label} lane for this agent: its activation is refused and "
                                  "clinicians' emergency access is blocked."))
                allowed = base_in_policy.get(cls, set()) | lanes_in_policy.get(cls, {}).get(lane, set())
            else:
                allowed = {split_pair(k) for k in (s.pairs if s else {})} | {
                    split_pair(k) for k in staging.classes.get(cls, ClassProfile()).pairs}
            used = {split_pair(k) for k in (p.pairs if p else {})}
            gap = sorted(used - allowed)
            out.append(Metric("break_glass", cls, f"{lane}.pairs_covered", float(len(gap)), 0.0, "<=", not gap,
                              f"Every operation used under {label} in production is allowed under the lane." if not gap
                              else f"{len(gap)} operation(s) used under {label} in production are not allowed under "
                                   f"the lane: {', '.join(f'{t} {i}' for t, i in gap[:4])}.",
                              {"uncovered": [{"type": t, "interaction": i} for t, i in gap]}))
            if gate.break_glass.require_expiry_exercised:
                ex = bool(s is not None and s.expiry_exercised)
                out.append(Metric("break_glass", cls, f"{lane}.expiry_exercised", float(ex), 1.0, "==", ex,
                                  f"Staging tested that the {label} lane closes at its expiry." if ex else
                                  f"Staging never tried an access after a {label} lane expired, so closing on time "
                                  "is untested."))
    return Criterion("break_glass", out)


def criteria(staging: Profile, production: Profile, gate: Gate | None = None, *, policy: Policy | None = None,
             declared: dict[str, list[str]] | None = None) -> Criteria:
    """All three criteria.  ``policy`` (the staging-built one) lets break-glass check lane existence."""
    gate = gate or Gate()
    return Criteria(fidelity=fidelity(staging, production, gate, policy), coverage=coverage(staging, production, gate),
                    break_glass=break_glass(staging, production, gate, policy=policy, declared=declared))
