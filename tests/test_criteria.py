"""Every criterion metric against a value computed by hand, on small profiles built for the
purpose (parity/criteria.py, docs/parity.md "The criteria"): the statistic, the threshold it is
judged against (configured or the small-sample allowance), and the verdict.

The arithmetic is written out next to each expected number, so a reader can check it with a
pencil; nothing here calls scipy.
"""

from __future__ import annotations

import math

import pytest

from paritybed.enforcer.policy import AgentPolicy, FhirPolicy, LanePolicy, Pair, Policy
from paritybed.parity.criteria import criteria
from paritybed.parity.profile import ClassProfile, LaneProfile, Profile
from paritybed.scenarios import Gate
from paritybed.scenarios.gates import FidelityGate

#: The arithmetic below is checked against round thresholds (the pre-calibration defaults), not
#: the calibrated ones of scenarios/gates.py, which a re-calibration moves.
HAND = Gate(fidelity=FidelityGate(resource_mix_jsd_max=0.10, hour_profile_jsd_max=0.15, interarrival_ks_max=0.08,
                                  burst_ratio_min=0.75, context_ks_max=0.30))


def prof(**classes: ClassProfile) -> Profile:
    return Profile(arm="x", days=1, classes=classes)


def hours(**at: int) -> list[int]:
    """24 hour-of-day counts from {"h7": 10, ...}."""
    h = [0] * 24
    for k, n in at.items():
        h[int(k[1:])] = n
    return h


def metric(c, name: str, cls: str = "cds"):
    for crit in c.all():
        for m in crit.metrics:
            if m.name == name and m.agent_class == cls:
                return m
    raise AssertionError(f"no metric {name} for {cls}: {[m.name for x in c.all() for m in x.metrics]}")


def names(c) -> set[str]:
    return {m.name for x in c.all() for m in x.metrics}


# -------------------------------------------------------------------------------------- fidelity
def test_hour_profile_jsd_by_hand_against_the_configured_maximum():
    # staging: everything at 07:00; production: half at 07:00, half at 08:00 (20,000 requests each,
    # so the sampling-noise floor is far below the configured 0.15).
    # P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4)
    # KL(P||M) = log2(4/3) = 0.4150375;  KL(Q||M) = 1/2 log2(2/3) + 1/2 log2(2) = 0.2075187
    # JS divergence = (0.4150375 + 0.2075187) / 2 = 0.3112781;  distance = sqrt(.) = 0.5579231
    s = ClassProfile(requests=20000, hours=hours(h7=20000), pairs={"Observation.search": 20000})
    p = ClassProfile(requests=20000, hours=hours(h7=10000, h8=10000), pairs={"Observation.search": 20000})
    m = metric(criteria(prof(cds=s), prof(cds=p), HAND), "hour_profile_jsd")
    assert m.value == pytest.approx(math.sqrt((math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5) / 2), abs=1e-9)
    assert m.value == pytest.approx(0.5579231, abs=1e-7)
    assert m.threshold == 0.15 and m.detail["configured_max"] == 0.15
    assert m.detail["sampling_noise_p99"] < 0.05  # 20,000 draws: noise is ~0.01
    assert not m.passed and "differently" in m.reading
    mix = metric(criteria(prof(cds=s), prof(cds=p), HAND), "resource_mix_jsd")
    assert mix.value == 0.0 and mix.passed  # same single pair: identical mixes


def test_jsd_small_sample_allowance_one_context_per_side_cannot_be_judged():
    # 20 requests each but all in one clinical context: the effective sample is 1 on each side.
    # Two samples of one draw from the pooled (1/2, 1/2) differ (distance 1) half the time, so the
    # 99th percentile of the noise distance is exactly 1.0: even disjoint hours (distance 1.0) pass.
    s = ClassProfile(requests=20, contexts=1, hours=hours(h7=20), pairs={"Observation.search": 20})
    p = ClassProfile(requests=20, contexts=1, hours=hours(h8=20), pairs={"Observation.search": 20})
    m = metric(criteria(prof(cds=s), prof(cds=p), HAND), "hour_profile_jsd")
    assert m.value == 1.0 and m.detail["sampling_noise_p99"] == 1.0 and m.threshold == 1.0 and m.passed


def test_context_ks_by_hand_with_and_without_the_small_sample_allowance():
    # requests per context: staging ten 1s and ten 2s; production twenty 2s.
    # F_s(1) = 10/20 = 0.5, F_p(1) = 0  ->  D = 0.5
    rpc_s, rpc_p = [1.0] * 10 + [2.0] * 10, [2.0] * 20
    base = dict(requests=4000, hours=hours(h7=4000), pairs={"Observation.search": 4000})
    # 20 contexts each: crit = 1.949 * sqrt((20 + 20) / (20 * 20)) = 1.949 * 0.3162278 = 0.6163279 > 0.30
    s = ClassProfile(**base, contexts=20, requests_per_context=rpc_s)
    p = ClassProfile(**base, contexts=20, requests_per_context=rpc_p)
    m = metric(criteria(prof(cds=s), prof(cds=p), HAND), "context_ks")
    assert m.value == 0.5
    assert m.detail["sampling_noise_p999"] == pytest.approx(0.616328, abs=1e-6) and m.threshold == pytest.approx(0.616328, abs=1e-6)
    assert m.passed  # 0.5 is within what 20 contexts per side show by chance
    # the same D on 2000 contexts each: crit = 1.949 * sqrt(4000 / 4e6) = 0.0616328 < 0.30: the configured max rules
    s2, p2 = s.model_copy(update={"contexts": 2000}), p.model_copy(update={"contexts": 2000})
    m = metric(criteria(prof(cds=s2), prof(cds=p2), HAND), "context_ks")
    assert m.value == 0.5 and m.threshold == 0.30 and m.detail["sampling_noise_p999"] == pytest.approx(0.061633, abs=1e-6)
    assert not m.passed


def test_interarrival_ks_by_hand_and_the_burstiness_it_reports():
    # gaps (ms): staging 1..40 (40 values), production 21..60.  F_s(20) = 20/40, F_p(20) = 0 -> D = 0.5
    s = ClassProfile(requests=4000, hours=hours(h7=4000), pairs={"Observation.search": 4000},
                     interarrival_ms=[float(x) for x in range(1, 41)], interarrival_n=40000)
    p = s.model_copy(update={"interarrival_ms": [float(x) for x in range(21, 61)]})
    m = metric(criteria(prof(cds=s), prof(cds=p), HAND), "interarrival_ks")
    # crit = 1.949 * sqrt(80000 / 1.6e9) = 1.949 * 0.0070711 = 0.0137815 < 0.08
    assert m.value == 0.5 and m.threshold == 0.08 and m.detail["sampling_noise_p999"] == pytest.approx(0.013782, abs=1e-6)
    assert not m.passed
    assert m.detail["staging_median_ms"] == 20.5 and m.detail["production_median_ms"] == 40.5
    # B = (sigma - mu) / (sigma + mu) of 1..40: mu = 20.5, sigma = sqrt((40^2 - 1) / 12) = 11.5434
    sigma = math.sqrt((40 ** 2 - 1) / 12)
    assert m.detail["staging_burstiness"] == round((sigma - 20.5) / (sigma + 20.5), 4)
    # fewer than 20 gaps on one side: not judged at all
    few = s.model_copy(update={"interarrival_ms": [1.0] * 19})
    assert "interarrival_ks" not in names(criteria(prof(cds=few), prof(cds=p), HAND))


def test_burst_ratio_is_the_median_replica_day_peak_staging_over_production():
    # staging peaks per replica-day: 8, 12, 10 -> median 10; production 20, 10 (and a day with 0,
    # which does not count) -> median 15; ratio 10 / 15 = 0.6667 < 0.75
    base = dict(requests=4000, hours=hours(h7=4000), pairs={"Observation.search": 4000})
    s = ClassProfile(**base, peak5={"cds#0": {"0": 8, "1": 12}, "cds#1": {"0": 10}})
    p = ClassProfile(**base, peak5={"cds#0": {"0": 20, "1": 0}, "cds#1": {"0": 10}})
    m = metric(criteria(prof(cds=s), prof(cds=p), HAND), "burst_ratio")
    assert m.value == pytest.approx(10 / 15) and m.threshold == 0.75 and not m.passed
    assert m.detail == {"staging_peak_5min": 10.0, "production_peak_5min": 15.0}
    assert "(10 requests per replica)" in m.reading and "(15)" in m.reading


def test_fewer_than_20_requests_rule():
    # production with 19 requests: not judged (passes, says why); staging with 19 against 20: fails
    h = hours(h7=19)
    p19 = ClassProfile(requests=19, hours=h, pairs={"Observation.search": 19})
    m = metric(criteria(prof(cds=p19), prof(cds=p19)), "sample_size")
    assert (m.value, m.threshold, m.op, m.passed) == (19.0, 20.0, ">=", True) and "not judged" in m.reading
    assert "hour_profile_jsd" not in names(criteria(prof(cds=p19), prof(cds=p19)))
    p20 = ClassProfile(requests=20, hours=hours(h7=20), pairs={"Observation.search": 20})
    m = metric(criteria(prof(cds=p19), prof(cds=p20)), "sample_size")
    assert (m.value, m.passed) == (19.0, False) and "does not represent it" in m.reading
    # at exactly 20 on both sides the distributions are judged
    assert {"hour_profile_jsd", "resource_mix_jsd", "burst_ratio"} <= names(criteria(prof(cds=p20), prof(cds=p20)))
    # an agent class staging never ran at all: 0 requests, fails
    m = metric(criteria(prof(), prof(cds=p20)), "sample_size")
    assert (m.value, m.passed) == (0.0, False)


# -------------------------------------------------------------------------------------- coverage
def test_coverage_support_thresholds_by_hand():
    # production (10,012 requests): Observation.search 10,000; Patient.read 2 (< support_min_count 3:
    # ignored); Condition.search 4 (4 / 10,012 = 0.0399 % < support_min_share 0.05 %: ignored);
    # DiagnosticReport.search 6 (6 / 10,012 = 0.0599 %: supported).  Staging has only Observation.search.
    pairs = {"Observation.search": 10000, "Patient.read": 2, "Condition.search": 4, "DiagnosticReport.search": 6}
    p = ClassProfile(requests=10012, pairs=pairs)
    s = ClassProfile(requests=10000, pairs={"Observation.search": 10000})
    m = metric(criteria(prof(cds=s), prof(cds=p)), "missing_pairs")
    assert (m.value, m.threshold, m.passed) == (1.0, 0.0, False)
    assert m.detail == {"supported_pairs": 2, "missing": [{"type": "DiagnosticReport", "interaction": "search",
                                                           "production_count": 6, "production_share": round(6 / 10012, 6),
                                                           "staging_count": 0}]}
    assert round(6 / 10012, 6) == 0.000599 and "DiagnosticReport search (0.06% of production)" in m.reading
    # staging_min_count: one staging request is enough by default, two needed when configured so
    s1 = s.model_copy(update={"pairs": {"Observation.search": 10000, "DiagnosticReport.search": 1}})
    assert metric(criteria(prof(cds=s1), prof(cds=p)), "missing_pairs").passed
    strict = Gate.model_validate({"coverage": {"staging_min_count": 2}})
    m = metric(criteria(prof(cds=s1), prof(cds=p), strict), "missing_pairs")
    assert not m.passed and m.detail["missing"][0]["staging_count"] == 1


# -------------------------------------------------------------------------------------- break-glass
def policy(lane_pairs: list[tuple[str, str]], base: list[tuple[str, str]]) -> Policy:
    return Policy(agents={"cds": AgentPolicy(
        agent_class="cds", fhir=FhirPolicy(server="127.0.0.1:8080", allow=[Pair(type=t, interaction=i) for t, i in base]),
        lanes={"code_blue": LanePolicy(allow=[Pair(type=t, interaction=i) for t, i in lane_pairs], max_duration_s=600)})})


def test_break_glass_pairs_covered_and_expiry_exercised_by_hand():
    used = {"MedicationAdministration.search": 3, "Procedure.search": 1, "Observation.search": 2}
    p = ClassProfile(requests=6, lanes={"code_blue": LaneProfile(activations=2, pairs=used)})
    s = ClassProfile(requests=6, lanes={"code_blue": LaneProfile(activations=1, pairs={"MedicationAdministration.search": 1},
                                                                  expiry_exercised=False)})
    # the policy's lane allows MedicationAdministration search, its base Observation search:
    # Procedure search is the one uncovered pair
    c = criteria(prof(cds=s), prof(cds=p), policy=policy([("MedicationAdministration", "search")], [("Observation", "search")]))
    m = metric(c, "code_blue.pairs_covered")
    assert (m.value, m.passed) == (1.0, False) and m.detail == {"uncovered": [{"type": "Procedure", "interaction": "search"}]}
    assert metric(c, "code_blue.exercised").value == 1.0 and metric(c, "code_blue.lane_in_policy").passed
    ex = metric(c, "code_blue.expiry_exercised")
    assert (ex.value, ex.passed) == (0.0, False) and "never tried an access after" in ex.reading
    # without a policy the lane's allowance is what staging did: its lane pairs and its base pairs
    c = criteria(prof(cds=s), prof(cds=p))
    assert metric(c, "code_blue.pairs_covered").value == 2.0  # Procedure and Observation search
    assert "code_blue.lane_in_policy" not in names(c)
    # expiry exercised in staging passes; the requirement can be switched off
    s2 = s.model_copy(update={"lanes": {"code_blue": s.lanes["code_blue"].model_copy(update={"expiry_exercised": True})}})
    assert metric(criteria(prof(cds=s2), prof(cds=p)), "code_blue.expiry_exercised").passed
    lax = Gate.model_validate({"break_glass": {"require_expiry_exercised": False}})
    assert "code_blue.expiry_exercised" not in names(criteria(prof(cds=s), prof(cds=p), lax))


def test_a_declared_class_production_never_used_is_still_required_in_staging():
    c = criteria(prof(cds=ClassProfile(requests=5)), prof(cds=ClassProfile(requests=5)), declared={"cds": ["rapid_response"]})
    m = metric(c, "rapid_response.exercised")
    assert (m.value, m.passed) == (0.0, False) and "never ran a Rapid Response activation" in m.reading


def test_expiry_exercised_is_an_access_at_or_after_the_lane_expiry():
    """The profile side of the metric: an access at exactly activation + requested duration counts;
    one a nanosecond earlier does not (parity/profile.py, _lanes)."""
    from paritybed.parity.auditevent import profile_from_rows

    t0, dur = 1_767_600_000_000_000_000, 60_000_000_000

    def rows(last_access: int) -> list[dict]:
        common = {"cls": "cds", "stream": ("cds", "c", "0"), "lane": "code_blue", "claim": "k1", "ctx": "", "endpoint": ""}
        return [{**common, "t": t0, "kind": "lane_open", "pair": "", "dur": dur},
                {**common, "t": t0 + 10_000_000_000, "kind": "fhir", "pair": "Procedure.search", "dur": 0},
                {**common, "t": last_access, "kind": "fhir", "pair": "Procedure.search", "dur": 0}]

    at = profile_from_rows(rows(t0 + dur)).classes["cds"].lanes["code_blue"]
    before = profile_from_rows(rows(t0 + dur - 1)).classes["cds"].lanes["code_blue"]
    assert at.expiry_exercised and not before.expiry_exercised
    assert at.activations == 1 and at.max_requested_s == 60.0 and at.longest_use_s == 60.0
    assert at.pairs == {"Procedure.search": 2}
