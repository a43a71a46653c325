"""One run's answer: learn, compile, replay, score, and write every artefact.

``evaluate`` is what ``paritybed run`` calls after the simulation; it writes into ``out_dir``:
parity.json (the verdict, schema in docs/parity.md; written last, as the anchor of every
chained log of the folder), junit.xml, report.html, plots/*.png,
policy.json, baa-registry.json, envelope.json, profiles/{staging,production}.json,
replay.parquet, events.jsonl and attestation/ (docs/attestation.md).  Same inputs give the same
bytes: nothing here reads the clock or the environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from paritybed.enforcer.policy import Policy, PolicySource, save_policy
from paritybed.enforcer.registry import Endpoint, Registry, save_registry
from paritybed.parity.anchors import run_log_anchors
from paritybed.parity.compile import Margins, compile_policy, trace_digest
from paritybed.parity.criteria import Criteria, criteria
from paritybed.parity.envelope import Envelope, learn_envelope
from paritybed.parity.junit import write_junit
from paritybed.parity.profile import profile_from_trace, save_profile
from paritybed.parity.replay import Replay, replay, write_replay
from paritybed.sim.scenario import Scenario, resolve_arm, scenario_hash

PARITY_SCHEMA = "paritybed.parity/1"


@dataclass
class Verdict:
    passed: bool
    parity: dict[str, Any]
    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def registry_of(scenario: Scenario) -> Registry:
    """The scenario's BAA registry as the enforcer's model."""
    return Registry(version=scenario.baa_registry.version,
                    endpoints=[Endpoint(**e.model_dump()) for e in scenario.baa_registry.endpoints])


def declared_break_glass(scenario: Scenario) -> dict[str, list[str]]:
    """Agent class -> break-glass classes the scenario sanctions in production."""
    if resolve_arm(scenario, "production").break_glass == "off":
        return {}
    out: dict[str, set[str]] = {}
    for b in scenario.break_glass:
        if b.per_day <= 0:
            continue
        for name in b.agents:
            out.setdefault(scenario.agent(name).agent_class, set()).add(b.name)
    return {k: sorted(v) for k, v in sorted(out.items())}


def build_policy(scenario: Scenario, scenario_path: Path, staging: pa.Table, registry: Registry,
                 *, version: int = 1, parent: str | None = None, envelope: Envelope | None = None) -> Policy:
    """The staging-built policy of a run (``envelope``: reuse an already learned one)."""
    env = envelope or learn_envelope(staging, registry)
    src = PolicySource(scenario=scenario.name, scenario_hash=scenario_hash(scenario_path), arm="staging",
                       trace_sha256=trace_digest(staging), seed=resolve_arm(scenario, "staging").seed)
    return compile_policy(env, fhir_server=scenario.policy.fhir_server, fhir_base=scenario.policy.fhir_base,
                          responses={a.name: a.response_mode() for a in scenario.agents},
                          margins=Margins.from_settings(scenario.policy), registry=registry, source=src,
                          version=version, parent=parent, created=scenario.start.datetime().isoformat())


def replay_gates(rep: Replay, scenario: Scenario) -> dict[str, Any]:
    g = scenario.gate.replay
    out: dict[str, Any] = {"pass": True, "metrics": []}
    share = rep.summary["over_blocks"]["share"]
    if g.max_over_block_share is not None:
        ok = share <= g.max_over_block_share
        out["metrics"].append({"name": "over_block_share", "value": share, "threshold": g.max_over_block_share,
                               "op": "<=", "pass": ok, "reading": (
                                   "Legitimate clinical requests blocked in the replay stay within the allowed share."
                                   if ok else "Too many legitimate clinical requests were blocked in the replay.")})
        out["pass"] &= ok
    if g.max_under_blocks is not None:
        ub = rep.summary["under_blocks"]["total"]
        ok = ub <= g.max_under_blocks
        out["metrics"].append({"name": "under_blocks", "value": ub, "threshold": g.max_under_blocks, "op": "<=",
                               "pass": ok, "reading": ("Injected attacks were stopped." if ok else
                                                       "Some injected attack actions got through the policy.")})
        out["pass"] &= ok
    return out


def parity_document(scenario: Scenario, scenario_path: Path, policy: Policy, registry: Registry, crit: Criteria,
                    rep: Replay, gates: dict[str, Any], *, mode: str, lost_events: int,
                    kernel: dict[str, Any] | None) -> dict[str, Any]:
    s = rep.summary
    attacks = s["attacks_caught"]
    passed = crit.passed and gates["pass"]
    doc: dict[str, Any] = {
        "schema": PARITY_SCHEMA,
        "verdict": "pass" if passed else "fail",
        "scenario": {"name": scenario.name, "hash": scenario_hash(scenario_path), "seed": scenario.seed,
                     "arms": {a: {"seed": resolve_arm(scenario, a).seed} for a in ("production", "staging")},
                     "start": scenario.start.datetime().isoformat()},
        "mode": mode,
        "policy": {"hash": policy.hash, "version": policy.version, "parent": policy.parent},
        "baa_registry": {"version": registry.version, "hash": registry.content_hash()},
        "criteria": crit.to_dict(),
        "replay": {
            "pass": gates["pass"], "gates": gates["metrics"],
            "requests": s["requests"], "legitimate": s["legitimate"],
            "over_blocks": s["over_blocks"], "under_blocks": s["under_blocks"],
            "attacks_injected": len(attacks), "attacks_caught": sum(1 for a in attacks if a["caught"]),
            "attacks": attacks,
            "clinical_impact_minutes": s["clinical_impact_minutes"]["total"],
            "clinical_impact": s["clinical_impact_minutes"],
            "lost_events": int(lost_events),
        },
    }
    if kernel is not None:
        doc["replay"]["kernel"] = kernel
    return doc


def _kernel_agreement(production: pa.Table) -> tuple[pa.Table, dict[str, Any] | None]:
    """Live traces carry the kernel's own decisions: keep a count of disagreements, then drop them
    so the reference replay sees the plain trace."""
    if "decision" not in production.column_names:
        return production, None
    kernel = production["decision"]
    drop = [c for c in ("decision", "reason") if c in production.column_names]
    return production.drop_columns(drop), {"decision": kernel}


STAGES = ("learn", "replay", "score", "artefacts")


def evaluate(scenario: Scenario, scenario_path: Path, production: pa.Table, staging: pa.Table, out_dir: Path,
             *, mode: str = "model", lost_events: int = 0,
             progress: Callable[[str, int, int], None] | None = None) -> Verdict:
    """Score one run and write its artefacts into ``out_dir``; ``Verdict.passed`` is the answer.

    ``progress(stage, done, total)`` is called as each of ``STAGES`` starts (for a progress bar)."""
    from paritybed.parity.artefacts import write_artefacts

    def step(name: str) -> None:
        if progress is not None:
            progress(name, STAGES.index(name), len(STAGES))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scenario_path = Path(scenario_path)
    registry = registry_of(scenario)
    start = scenario.start.datetime()
    production, kernel_dec = _kernel_agreement(production)

    step("learn")
    env = learn_envelope(staging, registry)
    policy = build_policy(scenario, scenario_path, staging, registry, envelope=env)
    from paritybed.parity.attestation import policy_history_version

    version, parent = policy_history_version(out_dir / "attestation" / "policy_history.jsonl", policy)
    if version != policy.version:
        policy = build_policy(scenario, scenario_path, staging, registry, version=version, parent=parent, envelope=env)
    save_policy(policy, out_dir / "policy.json")
    save_registry(registry, out_dir / "baa-registry.json")
    (out_dir / "envelope.json").write_text(json.dumps(env.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")

    step("replay")
    rep = replay(production, policy, registry, start)
    write_replay(production, rep, out_dir, policy_hash=policy.hash)
    kernel = None
    if kernel_dec is not None:
        from paritybed.enforcer.engine import DECISIONS

        ref = np.array(DECISIONS, dtype=object)[rep.decisions.decision]
        k = np.array(kernel_dec["decision"].cast(pa.string()).to_pylist(), dtype=object)
        kernel = {"disagreements": int((ref != k).sum()), "rows": int(len(k))}

    step("score")
    sp = profile_from_trace(staging, start, arm="staging")
    pp = profile_from_trace(production, start, arm="production")
    (out_dir / "profiles").mkdir(exist_ok=True)
    save_profile(sp, out_dir / "profiles" / "staging.json")
    save_profile(pp, out_dir / "profiles" / "production.json")
    crit = criteria(sp, pp, scenario.gate, policy=policy, declared=declared_break_glass(scenario))
    gates = replay_gates(rep, scenario)
    doc = parity_document(scenario, scenario_path, policy, registry, crit, rep, gates, mode=mode,
                          lost_events=lost_events, kernel=kernel)
    write_junit(out_dir / "junit.xml", crit, rep.summary["attacks_caught"])
    step("artefacts")
    paths = write_artefacts(out_dir, scenario=scenario, policy=policy, registry=registry, staging=staging,
                            production=production, rep=rep, sp=sp, pp=pp, crit=crit, doc=doc)
    doc["logs"] = run_log_anchors(out_dir)  # written last: the anchor of every chained log (docs/attestation.md)
    _write_json(out_dir / "parity.json", doc)
    paths.update(parity=out_dir / "parity.json", junit=out_dir / "junit.xml", policy=out_dir / "policy.json")
    if progress is not None:
        progress("artefacts", len(STAGES), len(STAGES))
    return Verdict(passed=doc["verdict"] == "pass", parity=doc, out_dir=out_dir, paths=paths)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
