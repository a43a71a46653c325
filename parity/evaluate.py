"""One run's answer after the simulation: learn, compile, decide, replay, score, write.

``evaluate`` is what ``paritybed run`` calls after the simulation, in both modes; each step is a
plain function that can run alone:

    env, policy = learn_and_compile(...)        # once per run
    decisions = decide(production, policy, registry)   # the engine (model) or the kernel (live)
    kernel = agreement(production, decisions, engine)  # live only, once: decision and reason
    rep = replay(production, decisions, start)  # the consequences of those decisions
    oracle = oracle_replay(...)                 # the same, under the policy learned from production
    crit = criteria(...); doc = parity_document(...); write_artefacts(...)

The verdict has three values (docs/parity.md): ``fail`` when a criterion metric fails outright
or a replay threshold is exceeded, ``marginal`` when none does but a metric's confidence interval
straddles its threshold, ``pass`` otherwise.

It writes into ``out_dir``: parity.json (the verdict, schema in docs/parity.md; written last, as
the anchor of every chained log of the folder), junit.xml,
report.html, plots/*.png, policy.json, baa-registry.json, envelope.json,
profiles/{staging,production}.json, replay.parquet, events.jsonl and attestation/
(docs/attestation.md).  In model mode the same inputs give the same bytes: nothing here reads
the clock or the environment.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from paritybed.core.errors import verdict_exit_code
from paritybed.core.units import DAY_NS
from paritybed.enforcer.decisions import Decisions
from paritybed.enforcer.engine import decide as engine_decide
from paritybed.enforcer.policy import Policy, PolicySource, save_policy
from paritybed.enforcer.registry import Registry, save_registry
from paritybed.parity.agreement import agreement
from paritybed.parity.anchors import run_log_anchors
from paritybed.parity.compile import compile_scenario_policy, trace_digest
from paritybed.parity.consequences import consequences, oracle_replay, replay_checks, unsafe_reasons
from paritybed.parity.criteria import Criteria, combine, criteria
from paritybed.parity.envelope import Envelope, learn_envelope
from paritybed.parity.junit import write_junit
from paritybed.parity.profile import profile_from_trace, save_profile
from paritybed.parity.replay import Replay, replay, write_replay
from paritybed.scenarios import ResolvedArm, Scenario, resolve_arms, scenario_hash

PARITY_SCHEMA = "paritybed.parity/1"

#: Who decides production: decide(production, policy, registry) -> Decisions.
Decide = Callable[[pa.Table, Policy, Registry], Decisions]


@dataclass
class Verdict:
    verdict: str  # pass | marginal | fail
    parity: dict[str, Any]
    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    agreement: dict[str, Any] | None = None  # live mode: kernel vs reference engine

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def exit_code(self) -> int:
        return verdict_exit_code(self.verdict)


def registry_of(scenario: Scenario) -> Registry:
    """The scenario's BAA registry as the enforcer's model."""
    return Registry(version=scenario.baa_registry.version,
                    endpoints=list(scenario.baa_registry.endpoints))


def declared_break_glass(scenario: Scenario, production: ResolvedArm) -> dict[str, list[str]]:
    """Agent class -> break-glass classes the scenario sanctions in production."""
    if production.break_glass == "off":
        return {}
    out: dict[str, set[str]] = {}
    for b in scenario.break_glass:
        if b.per_day <= 0:
            continue
        for name in b.agents:
            out.setdefault(scenario.agent(name).agent_class, set()).add(b.name)
    return {k: sorted(v) for k, v in sorted(out.items())}


def build_policy(scenario: Scenario, scenario_path: Path, staging: pa.Table, registry: Registry, staging_arm: ResolvedArm,
                 *, version: int = 1, parent: str | None = None, envelope: Envelope | None = None) -> Policy:
    """The staging-built policy of a run (``envelope``: reuse an already learned one)."""
    env = envelope or learn_envelope(staging, registry)
    src = PolicySource(scenario=scenario.name, scenario_hash=scenario_hash(scenario_path), arm="staging",
                       trace_sha256=trace_digest(staging), seed=staging_arm.seed)
    return compile_scenario_policy(env, scenario, registry, src, version=version, parent=parent)


def replay_gates(cons: dict[str, Any], scenario: Scenario) -> dict[str, Any]:
    """The thresholds of ``gate.replay`` checked on the consequences (parity.json ``replay.gates``)."""
    checks = replay_checks(cons, scenario.gate.replay)
    return {"pass": all(c["pass"] for c in checks), "metrics": checks}


def parity_document(scenario: Scenario, scenario_path: Path, arms: dict[str, ResolvedArm], policy: Policy,
                    registry: Registry, crit: Criteria, rep: Replay, gates: dict[str, Any], *, mode: str,
                    lost_events: int, kernel: dict[str, Any] | None, cons: dict[str, Any]) -> dict[str, Any]:
    s = rep.summary
    attacks = s["attacks_caught"]
    reasons = unsafe_reasons(cons, scenario.gate.replay)
    doc: dict[str, Any] = {
        "schema": PARITY_SCHEMA,
        "verdict": combine([crit.status, "pass" if gates["pass"] else "fail"]),
        "margin": {"confidence": scenario.gate.margin.confidence, "resamples": scenario.gate.margin.resamples},
        "scenario": {"name": scenario.name, "hash": scenario_hash(scenario_path), "seed": scenario.seed,
                     "arms": {a: {"seed": arms[a].seed} for a in ("production", "staging")},
                     "start": scenario.start.datetime().isoformat()},
        "mode": mode,
        "policy": {"hash": policy.hash, "version": policy.version, "parent": policy.parent},
        "baa_registry": {"version": registry.version, "hash": registry.content_hash()},
        "criteria": crit.to_dict(),
        "replay": {
            "pass": gates["pass"], "gates": gates["metrics"],
            "decided_by": rep.decisions.decided_by,
            "requests": s["requests"], "legitimate": s["legitimate"],
            "over_blocks": s["over_blocks"], "under_blocks": s["under_blocks"],
            "attacks_injected": len(attacks), "attacks_caught": sum(1 for a in attacks if a["caught"]),
            "attacks": attacks,
            "clinical_impact_minutes": s["clinical_impact_minutes"]["total"],
            "clinical_impact": s["clinical_impact_minutes"],
            "binding": s["binding"],
            "lost_events": int(lost_events),
            "consequences": cons,
            "staging": {"safe": not reasons, "unsafe_because": reasons},
        },
    }
    if kernel is not None:
        doc["replay"]["kernel"] = kernel
    return doc


STAGES = ("learn", "decide", "replay", "score", "artefacts")


def engine_decider(start: dt.datetime) -> Decide:
    """Model mode: the reference engine decides production."""
    return lambda production, policy, registry: engine_decide(production, policy, registry, start)


def learn_and_compile(scenario: Scenario, scenario_path: Path, arms: dict[str, ResolvedArm], staging: pa.Table,
                      registry: Registry, out_dir: Path) -> tuple[Envelope, Policy]:
    """The staging envelope and the policy compiled from it, once per run, written to the run
    folder with the registry (the policy's version follows the folder's policy history)."""
    from paritybed.parity.attestation import policy_history_version

    env = learn_envelope(staging, registry)
    policy = build_policy(scenario, scenario_path, staging, registry, arms["staging"], envelope=env)
    version, parent = policy_history_version(out_dir / "attestation" / "policy_history.jsonl", policy)
    if version != policy.version:
        policy = build_policy(scenario, scenario_path, staging, registry, arms["staging"], version=version,
                              parent=parent, envelope=env)
    save_policy(policy, out_dir / "policy.json")
    save_registry(registry, out_dir / "baa-registry.json")
    (out_dir / "envelope.json").write_text(json.dumps(env.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return env, policy


def evaluate(scenario: Scenario, scenario_path: Path, production: pa.Table, staging: pa.Table, out_dir: Path,
             *, arms: dict[str, ResolvedArm] | None = None, decide: Decide | None = None, mode: str = "model",
             lost_events: Callable[[], int] | int = 0,
             progress: Callable[[str, int, int], None] | None = None, report: bool = True) -> Verdict:
    """Score one run and write its artefacts into ``out_dir``; ``Verdict.passed`` is the answer.

    ``decide`` decides production under the compiled policy (default: the reference engine); a
    decider that returns the kernel's decisions (live mode) also gets them compared with the
    engine's, once.  ``lost_events``: the kernel's ring-buffer losses (a number, or a function
    asked after ``decide``).  ``progress(stage, done, total)`` is called as each of ``STAGES``
    starts (for a progress bar).  ``report=False``: no report.html, plots/ or attestation/."""
    from paritybed.parity.artefacts import write_artefacts

    def step(name: str) -> None:
        if progress is not None:
            progress(name, STAGES.index(name), len(STAGES))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scenario_path = Path(scenario_path)
    arms = arms or resolve_arms(scenario)
    registry = registry_of(scenario)
    start = scenario.start.datetime()

    step("learn")
    env, policy = learn_and_compile(scenario, scenario_path, arms, staging, registry, out_dir)

    step("decide")
    decisions = (decide or engine_decider(start))(production, policy, registry)
    kernel = None
    if decisions.decided_by == "kernel":
        kernel = agreement(production, decisions, engine_decide(production, policy, registry, start))
    lost = lost_events() if callable(lost_events) else lost_events

    step("replay")
    rep = replay(production, decisions, start)
    write_replay(production, rep, out_dir, policy_hash=policy.hash)
    oracle_pol, oracle = oracle_replay(scenario, production, registry, start)
    cons = consequences(rep.summary, oracle.summary, arms["production"].duration_ns / DAY_NS, oracle_pol.hash)

    step("score")
    sp = profile_from_trace(staging, start, arm="staging")
    pp = profile_from_trace(production, start, arm="production")
    (out_dir / "profiles").mkdir(exist_ok=True)
    save_profile(sp, out_dir / "profiles" / "staging.json")
    save_profile(pp, out_dir / "profiles" / "production.json")
    crit = criteria(sp, pp, scenario.gate, policy=policy, declared=declared_break_glass(scenario, arms["production"]))
    gates = replay_gates(cons, scenario)
    doc = parity_document(scenario, scenario_path, arms, policy, registry, crit, rep, gates, mode=mode,
                          lost_events=lost, kernel=kernel, cons=cons)
    write_junit(out_dir / "junit.xml", crit, rep.summary["attacks_caught"],
                fail_through=scenario.gate.replay.max_under_blocks is not None)
    step("artefacts")
    paths = write_artefacts(out_dir, scenario=scenario, policy=policy, registry=registry, staging=staging,
                            production=production, rep=rep, sp=sp, pp=pp, crit=crit, doc=doc) if report else {}
    doc["logs"] = run_log_anchors(out_dir)  # written last: the anchor of every chained log (docs/attestation.md)
    _write_json(out_dir / "parity.json", doc)
    paths.update(parity=out_dir / "parity.json", junit=out_dir / "junit.xml", policy=out_dir / "policy.json")
    if progress is not None:
        progress("artefacts", len(STAGES), len(STAGES))
    return Verdict(verdict=doc["verdict"], parity=doc, out_dir=out_dir, paths=paths, agreement=kernel)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
