"""`paritybed calibrate` on tables whose answer is known: critical values, thresholds set from
the safe and unsafe runs, the confusion table with and without intervals, the ROC, the noise flag,
and a held-out table scored with thresholds it did not set."""

from __future__ import annotations

import json
import math

import pytest

from paritybed.parity.calibration import CALIBRATED, calibrate, confusion, critical, current_thresholds, runs_of
from paritybed.sweep import write_table

#: the pre-calibration defaults (round numbers): what these tables are calibrated from
HAND = {"fidelity.resource_mix_jsd_max": 0.10, "fidelity.hour_profile_jsd_max": 0.15, "fidelity.interarrival_ks_max": 0.08,
        "fidelity.burst_ratio_min": 0.75, "fidelity.context_ks_max": 0.30, "fidelity.rate_headroom_min": 1.0}
KS = next(t for t in CALIBRATED if t.metric == "interarrival_ks")
BURST = next(t for t in CALIBRATED if t.metric == "burst_ratio")


def row(i: int, safe: bool | None, ks: dict[str, float], burst: float = 1.0, *, floor: float = 0.05,
        kind: str = "run", coverage: str = "pass", width: float = 0.01) -> dict:
    r = {"cell": f"c{i}", "kind": kind, "scenario": "s", "label": f"v{i}", "variant": "{}", "seed": i, "error": None,
         "staging_safe": safe, "staging_unsafe_because": "" if safe else "over_block_share",
         "criteria_verdict": "pass", "coverage/cds/missing_pairs/status": coverage}
    for cls, v in ks.items():
        base = f"fidelity/{cls}/interarrival_ks"
        r.update({f"{base}/value": v, f"{base}/floor": floor, f"{base}/lo": v - width, f"{base}/hi": v + width,
                  f"{base}/status": "pass"})
    base = "fidelity/cds/burst_ratio"
    r.update({f"{base}/value": burst, f"{base}/floor": None, f"{base}/lo": burst - 0.05, f"{base}/hi": burst + 0.05,
              f"{base}/status": "pass"})
    if kind == "noise":
        r["staging_safe"] = None
    return r


def table(rows: list[dict], tmp_path, name: str = "t"):
    import pyarrow.parquet as pq

    p = write_table(tmp_path / f"{name}.parquet", rows)
    return pq.read_table(str(p))


def test_a_runs_critical_value_is_its_worst_class_above_the_noise_floor(tmp_path):
    t = table([row(1, True, {"cds": 0.09, "ambient_scribe": 0.04}), row(2, True, {"cds": 0.03, "ambient_scribe": 0.04})],
              tmp_path)
    a, b = runs_of(t)
    assert critical(a, KS) == 0.09
    assert critical(b, KS) == -math.inf  # both under their floor 0.05: no threshold fails it
    assert critical(a, BURST) == 1.0


def test_thresholds_separate_safe_from_unsafe_and_a_holdout_is_scored_with_them(tmp_path):
    safe = [row(i, True, {"cds": 0.06 + 0.01 * i}) for i in range(10)]      # 0.06 .. 0.15
    unsafe = [row(20 + i, False, {"cds": 0.25 + 0.02 * i}) for i in range(5)]  # 0.25 .. 0.33
    unsafe.append(row(30, False, {"cds": 0.07}, coverage="fail"))            # caught by coverage whatever KS says
    noise = [row(40 + i, None, {"cds": 0.02 + 0.005 * i}, kind="noise") for i in range(4)]
    doc = calibrate(table(safe + unsafe + noise, tmp_path), before=HAND)
    ks = doc["metrics"]["fidelity.interarrival_ks_max"]
    assert ks["threshold"] == pytest.approx((0.15 + 0.25) / 2)  # half-way between the safe max and the next unsafe
    assert ks["default_before"] == 0.08
    assert 0.8 < ks["roc"]["auc"] < 0.9  # the coverage-caught unsafe run sits among the safe ones
    assert ks["too_close_to_noise"] is False
    cal = doc["calibration_set"]
    assert cal["calibrated"]["false_fail_rate"] == 0 and cal["calibrated"]["miss_rate"] == 0
    assert cal["with_defaults_before"]["false_fail_rate"] == pytest.approx(0.7)  # 0.09 .. 0.15 fail at 0.08
    assert doc["ground_truth"] == {"safe": 10, "unsafe": 6, "unsafe_because": {"over_block_share": 6}}
    held = [row(50, True, {"cds": 0.18}), row(51, False, {"cds": 0.19}), row(52, False, {"cds": 0.4})]
    doc = calibrate(table(safe + unsafe + noise, tmp_path), holdout=table(held, tmp_path, "h"), before=HAND)
    h = doc["holdout"]["calibrated"]
    assert h["point"] == {"safe": {"pass": 1, "fail": 0}, "unsafe": {"pass": 1, "fail": 1}}
    assert h["miss_rate"] == 0.5 and doc["holdout"]["targets_met"] == {"false_fail": True, "miss": False}
    assert [w["cell"] for w in h["wrong"]] == ["c51"]
    assert json.loads(json.dumps(doc)) == doc  # plain JSON


def test_overlapping_distributions_trade_false_fails_for_misses_within_the_targets(tmp_path):
    """40 safe runs up to 0.20 and 20 unsafe from 0.12: the miss target cannot be met without
    failing more than 5 % of the safe runs, and the search stops there, saying so."""
    safe = [row(i, True, {"cds": 0.05 + 0.00375 * i}) for i in range(40)]
    unsafe = [row(100 + i, False, {"cds": 0.12 + 0.01 * i}) for i in range(20)]
    doc = calibrate(table(safe + unsafe, tmp_path), before=HAND)
    c = doc["calibration_set"]["calibrated"]
    assert c["false_fail_rate"] <= 0.05
    assert c["miss_rate"] > 0.01 and "stays above its target" in doc["steps"][-1]
    assert doc["metrics"]["fidelity.interarrival_ks_max"]["threshold"] < 0.2  # tightened from the safe maximum


def test_a_threshold_keeps_a_noise_margin_and_moves_in_only_for_an_unsafe_run_nothing_else_catches(tmp_path):
    """Safe runs up to 0.15; the noise rows' spread (sd 0.0387) puts the threshold 3 sd past the
    safe edge, not half-way to the unsafe run at 0.16, which burst ratio catches anyway.  An
    unsafe run at 0.17 that nothing else catches pulls it in to half-way between 0.15 and 0.17."""
    safe = [row(i, True, {"cds": 0.06 + 0.01 * i}) for i in range(10)]  # 0.06 .. 0.15, burst 1.0
    caught_by_burst = [row(20, False, {"cds": 0.16}, burst=0.2), row(21, False, {"cds": 0.30}, burst=0.2)]
    noise = [row(40 + i, None, {"cds": 0.02 + 0.03 * i}, kind="noise") for i in range(4)]  # sd 0.0387
    doc = calibrate(table(safe + caught_by_burst + noise, tmp_path), before=HAND)
    assert doc["gate"][KS.key] == pytest.approx(0.15 + 3 * 0.03872983, abs=1e-4)
    assert doc["gate"][BURST.key] == pytest.approx(0.6)  # half-way between 1.0 (safe) and 0.2 (unsafe)
    assert doc["calibration_set"]["calibrated"]["miss_rate"] == 0
    missed_else = row(22, False, {"cds": 0.17})  # burst 1.0: only interarrival KS can catch it
    doc = calibrate(table(safe + caught_by_burst + [missed_else] + noise, tmp_path, "t2"), before=HAND)
    assert doc["gate"][KS.key] == pytest.approx(0.16)
    assert any("catches 1 more unsafe run(s), fails 0 more safe run(s)" in s for s in doc["steps"])
    c = doc["calibration_set"]["calibrated"]
    assert c["false_fail_rate"] == 0 and c["miss_rate"] == 0


def test_marginal_runs_are_counted_apart(tmp_path):
    rows = [row(1, True, {"cds": 0.10}, width=0.05), row(2, False, {"cds": 0.30})]
    runs = runs_of(table(rows, tmp_path))
    th = dict(current_thresholds(), **{KS.key: 0.12})
    c = confusion(runs, th)
    assert c["point"]["safe"] == {"pass": 1, "fail": 0}
    assert c["with_intervals"]["safe"] == {"pass": 0, "marginal": 1, "fail": 0}  # 0.05 .. 0.15 straddles 0.12
    assert c["false_fail_rate"] == 0 and c["false_fail_rate_marginal_as_fail"] == 1.0


def test_the_shipped_defaults_are_the_shipped_calibrations():
    """scenarios/gates.py's fidelity defaults are what sweeps/calibration.json (written by `make
    calibrate`) set.  After a re-run changes them, copy them into gates.py and the docs."""
    from pathlib import Path

    doc = json.loads((Path(__file__).resolve().parent.parent / "sweeps" / "calibration.json").read_text())
    assert doc["gate"] == current_thresholds(), "update scenarios/gates.py (and docs/scenarios.md) from sweeps/calibration.json"
    assert doc["holdout"]["calibrated"]["runs"] > 0
