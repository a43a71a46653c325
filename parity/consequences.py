"""What staging is to blame for: the replay's consequences next to the oracle policy's.

The gate's criteria are proxies; the replay is the ground truth the testbed can compute and a
hospital cannot.  But not every consequence is staging's fault: a rate limit learned from any
traffic lets part of a fast sweep through.  So the staging-built policy is compared with the
**oracle policy**, learned the same way (same margins) from production's own legitimate traffic,
which a hospital never has and the testbed does.  A staging arm is *unsafe* when enforcing its
policy

* denies more than ``gate.replay.max_over_block_share`` of production's legitimate requests, or
* costs more than ``max_clinical_impact_minutes_per_day`` agent-minutes of clinical impact a day
  (minutes an agent replica was blocked or quarantined after denying legitimate work), or
* lets through, for some attack (or hotfix, or lane-expiry probe), more of its actions than the
  oracle's policy does, by more than ``max_excess_under_block_share`` of the attack's actions
  (an envelope too loose because staging was too busy or too broad).

``max_under_blocks`` is not part of that ground truth: it judges the deployment (an attack action
that gets through fails the run even when the oracle would let it through too).  The calibration
(parity/calibration.py) measures the criteria against ``unsafe_reasons``; the run's verdict checks
every threshold of ``gate.replay`` (``replay_checks``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

from paritybed.enforcer.engine import decide as engine_decide
from paritybed.enforcer.policy import Policy, PolicySource
from paritybed.enforcer.registry import Registry
from paritybed.parity.compile import compile_scenario_policy, trace_digest
from paritybed.parity.envelope import learn_envelope
from paritybed.parity.replay import Replay, replay
from paritybed.scenarios import Scenario
from paritybed.scenarios.gates import ReplayGate


def learned_policy(scenario: Scenario, trace: pa.Table, registry: Registry, arm: str) -> Policy:
    """The policy learned from ``trace`` as a run learns staging's: its envelope (learning skips
    expected-deny rows) compiled with the scenario's margins and response modes."""
    env = learn_envelope(trace, registry)
    src = PolicySource(scenario=scenario.name, arm=arm, trace_sha256=trace_digest(trace))
    return compile_scenario_policy(env, scenario, registry, src)


def replay_under(policy: Policy, production: pa.Table, registry: Registry, start: dt.datetime) -> Replay:
    """Production replayed under ``policy``, decided by the reference engine."""
    return replay(production, engine_decide(production, policy, registry, start), start)


def oracle_replay(scenario: Scenario, production: pa.Table, registry: Registry, start: dt.datetime) -> tuple[Policy, Replay]:
    """Production replayed under the oracle policy: the one staging would have produced had it
    seen production's own legitimate traffic."""
    policy = learned_policy(scenario, production, registry, "production (oracle)")
    return policy, replay_under(policy, production, registry, start)


def _through(summary: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """label -> (rows, rows allowed or only alerted) of every expected-deny label."""
    return {k: (v["rows"], v["allowed"] + v["alerted"]) for k, v in summary["under_blocks"]["by_label"].items()}


def consequences(staging: dict[str, Any], oracle: dict[str, Any], days: float, oracle_hash: str) -> dict[str, Any]:
    """One record of what enforcing staging's policy cost, next to the oracle's (replay summaries)."""
    mine, theirs = _through(staging), _through(oracle)
    attacks = {}
    for label in sorted(mine):
        rows, through = mine[label]
        o = theirs.get(label, (rows, 0))[1]
        attacks[label] = {"rows": rows, "through": through, "oracle_through": o, "excess": through - o}
    excess_share = max((max(0, a["excess"]) / a["rows"] for a in attacks.values() if a["rows"]), default=0.0)
    impact = staging["clinical_impact_minutes"]["total"]
    return {
        "days": round(days, 6),
        "legitimate": staging["legitimate"],
        "over_blocks": staging["over_blocks"]["total"],
        "over_block_share": staging["over_blocks"]["share"],
        "clinical_impact_minutes": impact,
        "clinical_impact_minutes_per_day": round(impact / days, 6) if days > 0 else float(impact),
        "under_blocks": staging["under_blocks"]["total"],
        "excess_under_block_share": round(excess_share, 6),
        "attacks": attacks,
        "oracle": {"policy": oracle_hash, "over_blocks": oracle["over_blocks"]["total"],
                   "over_block_share": oracle["over_blocks"]["share"],
                   "clinical_impact_minutes": oracle["clinical_impact_minutes"]["total"],
                   "under_blocks": oracle["under_blocks"]["total"]},
    }


#: (check, gate field, value key, reading when it holds, reading when it does not, ground truth?)
CHECKS = (
    ("over_block_share", "max_over_block_share", "over_block_share",
     "Legitimate clinical requests blocked in the replay stay within the allowed share.",
     "Too many legitimate clinical requests were blocked in the replay.", True),
    ("clinical_impact_minutes_per_day", "max_clinical_impact_minutes_per_day", "clinical_impact_minutes_per_day",
     "Agents were blocked or quarantined for legitimate work no longer than allowed per day.",
     "Agents were blocked or quarantined for legitimate work too long per day.", True),
    ("excess_under_block_share", "max_excess_under_block_share", "excess_under_block_share",
     "No attack got further under the staging-built policy than under the oracle policy learned from production.",
     "An attack got further under the staging-built policy than under the oracle policy learned from production: "
     "staging's envelope is too loose.", True),
    ("under_blocks", "max_under_blocks", "under_blocks",
     "Injected attacks were stopped.", "Some injected attack actions got through the policy.", False),
)


def replay_checks(cons: dict[str, Any], gate: ReplayGate) -> list[dict[str, Any]]:
    """One metric per threshold of ``gate.replay`` that is set (parity.json ``replay.gates``)."""
    out = []
    for name, field, key, good, bad, truth in CHECKS:
        limit = getattr(gate, field)
        if limit is None:
            continue
        ok = cons[key] <= limit
        out.append({"name": name, "value": cons[key], "threshold": limit, "op": "<=", "pass": ok,
                    "ground_truth": truth, "reading": good if ok else bad})
    return out


def unsafe_reasons(cons: dict[str, Any], gate: ReplayGate) -> list[str]:
    """Why a staging arm is unsafe (empty: safe), from the ground-truth checks alone."""
    return [c["name"] for c in replay_checks(cons, gate) if c["ground_truth"] and not c["pass"]]
