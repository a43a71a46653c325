"""The verdict with a margin: each distribution metric's bootstrap interval, the three verdicts and
their exit codes, and the consequences that make a staging arm unsafe (against the oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from paritybed.core.errors import verdict_exit_code
from paritybed.parity.consequences import consequences, replay_checks, unsafe_reasons
from paritybed.parity.criteria import Metric, combine, jsd, ks
from paritybed.parity.intervals import Bootstrap, jsd_interval, ks_interval, median_ratio_interval
from paritybed.scenarios.gates import ReplayGate

BOOT = Bootstrap(resamples=400, confidence=0.95)


def m(value: float, threshold: float, op: str, interval: tuple[float, float] | None) -> Metric:
    ok = value <= threshold if op == "<=" else value >= threshold
    return Metric("fidelity", "cds", "x", value, threshold, op, ok, "r.", {}, interval)


@pytest.mark.parametrize("value,interval,status", [
    (0.05, (0.03, 0.07), "pass"),       # the whole interval under the maximum
    (0.079, (0.07, 0.09), "marginal"),  # passes, but the interval reaches over 0.08
    (0.08025, (0.07, 0.09), "marginal"),  # the knife edge of issue 9: fails by 0.00025, not for sure
    (0.12, (0.10, 0.14), "fail"),       # the whole interval over it
    (0.12, None, "fail"),               # no interval: pass or fail only
])
def test_a_metric_is_marginal_when_its_interval_straddles_the_threshold(value, interval, status):
    met = m(value, 0.08, "<=", interval)
    assert met.status == status
    assert met.margin == pytest.approx(0.08 - value)
    assert m(1.0, 0.75, ">=", (0.7, 1.2)).status == "marginal" and m(1.0, 0.75, ">=", (0.8, 1.2)).status == "pass"


def test_three_verdicts_and_their_exit_codes():
    assert combine(["pass", "marginal", "pass"]) == "marginal"
    assert combine(["marginal", "fail"]) == "fail"
    assert combine(["pass"]) == "pass"
    assert [verdict_exit_code(v) for v in ("pass", "fail", "marginal")] == [0, 1, 4]
    assert verdict_exit_code("marginal", "pass") == 0 and verdict_exit_code("marginal", "fail") == 1
    assert verdict_exit_code("fail", "pass") == 1  # --marginal-as only reads a marginal verdict


def test_intervals_are_seeded_contain_the_value_and_narrow_with_the_sample():
    rng = np.random.default_rng(1)
    a = rng.multinomial(2000, [0.5, 0.3, 0.2]).astype(float)
    b = rng.multinomial(2000, [0.45, 0.35, 0.2]).astype(float)
    v = jsd(a, b)
    lo, hi = jsd_interval(a, b, 2000, 2000, v, BOOT, "cds/resource_mix_jsd")
    assert lo <= v <= hi and (lo, hi) == jsd_interval(a, b, 2000, 2000, v, BOOT, "cds/resource_mix_jsd")
    lo_small, hi_small = jsd_interval(a, b, 50, 50, v, BOOT, "cds/resource_mix_jsd")
    assert hi_small - lo_small > 2 * (hi - lo)  # 50 contexts: a much wider interval than 2000
    x, y = sorted(rng.exponential(1.0, 3000).tolist()), sorted(rng.exponential(1.1, 3000).tolist())
    d = ks(x, y)
    lo, hi = ks_interval(x, 3000, y, 3000, d, BOOT, "cds/interarrival_ks")
    assert lo <= d <= hi
    # the same 3000 order statistics standing for 300,000 observations: the interval a full sample gives
    lo_n, hi_n = ks_interval(x, 300_000, y, 300_000, d, BOOT, "cds/interarrival_ks")
    assert hi_n - lo_n < (hi - lo) / 3
    lo, hi = median_ratio_interval([10, 12, 11, 9, 13, 10, 12], [12, 12, 13, 11, 12, 14, 12], 11 / 12, BOOT, "b")
    assert lo <= 11 / 12 <= hi
    assert jsd_interval(a, b, 2000, 2000, v, Bootstrap(resamples=0), "x") is None


def _summary(through: dict[str, tuple[int, int]], over: int = 0, impact: int = 0, legit: int = 100_000) -> dict:
    return {"legitimate": legit, "over_blocks": {"total": over, "share": round(over / legit, 6)},
            "clinical_impact_minutes": {"total": impact},
            "under_blocks": {"total": sum(t for _, t in through.values()),
                             "by_label": {k: {"rows": r, "allowed": t, "alerted": 0} for k, (r, t) in through.items()}}}


def test_staging_is_unsafe_by_its_consequences_against_the_oracle():
    gate = ReplayGate(max_over_block_share=0.0001, max_clinical_impact_minutes_per_day=5, max_under_blocks=0,
                      max_excess_under_block_share=0.05)
    oracle = _summary({"attack:sweep": (400, 190), "attack:exfil": (20, 0)})
    same = consequences(_summary({"attack:sweep": (400, 195), "attack:exfil": (20, 0)}), oracle, 7.0, "sha256:o")
    assert same["attacks"]["attack:sweep"] == {"rows": 400, "through": 195, "oracle_through": 190, "excess": 5}
    assert unsafe_reasons(same, gate) == []  # 5 more of 400 reads than the oracle: within 5 %
    checks = {c["name"]: c for c in replay_checks(same, gate)}
    assert not checks["under_blocks"]["pass"] and not checks["under_blocks"]["ground_truth"]  # the deployment fails
    looser = consequences(_summary({"attack:sweep": (400, 240), "attack:exfil": (20, 3)}), oracle, 7.0, "")
    assert looser["excess_under_block_share"] == pytest.approx(3 / 20)  # the worst attack: 3 of 20 connects (sweep: 50 of 400)
    assert unsafe_reasons(looser, gate) == ["excess_under_block_share"]
    blocking = consequences(_summary({}, over=120, impact=70), _summary({}), 7.0, "")
    assert blocking["clinical_impact_minutes_per_day"] == 10
    assert unsafe_reasons(blocking, gate) == ["over_block_share", "clinical_impact_minutes_per_day"]
    off = ReplayGate(max_over_block_share=None, max_clinical_impact_minutes_per_day=None, max_under_blocks=None,
                     max_excess_under_block_share=None)
    assert replay_checks(blocking, off) == []
