"""The CI gate on artefacts: staging trace + staging-built policy vs a production profile.

No simulation runs here: a hospital keeps its policy.json and staging trace from the staging run,
builds ``profile.json`` from its production AuditEvent export (``paritybed profile``), and gates
every change on the same criteria ``paritybed run`` scores.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paritybed.agents.trace import read_trace
from paritybed.core.errors import InputError
from paritybed.enforcer.policy import Policy, load_policy
from paritybed.parity.compile import trace_digest
from paritybed.parity.criteria import Criteria, criteria
from paritybed.parity.junit import write_junit
from paritybed.parity.profile import load_profile, profile_from_trace
from paritybed.scenarios import Gate

GATE_SCHEMA = "paritybed.gate/1"


@dataclass
class GateResult:
    criteria: Criteria
    policy: Policy
    notes: list[str]
    doc: dict[str, Any]

    @property
    def verdict(self) -> str:
        """pass, fail or marginal (a metric's interval straddles its threshold)."""
        return self.criteria.status

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def _start(policy: Policy, scenario: Any | None, where: Path) -> dt.datetime:
    if scenario is not None:
        return scenario.start.datetime()
    if not policy.created:
        raise InputError(f"{where}: the policy does not record its run's start instant ('created'), so staging's "
                         "time of day is unknown", hint="pass --scenario SCENARIO.yaml")
    try:
        d = dt.datetime.fromisoformat(policy.created)
    except ValueError:
        raise InputError(f"{where}: created: expected an ISO date-time, found {policy.created!r}") from None
    return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)


def run_gate(policy_path: Path, staging_trace: Path, production_profile: Path, *, scenario_path: Path | None = None,
             junit: Path | None = None, json_out: Path | None = None) -> GateResult:
    """Score the criteria from artefacts; writes JUnit/JSON when asked.  Input problems raise InputError."""
    policy = load_policy(policy_path)
    scenario = None
    declared = None
    gate = Gate()
    if scenario_path is not None:
        from paritybed.parity.evaluate import declared_break_glass
        from paritybed.scenarios import load_scenario, resolve_arm

        scenario = load_scenario(scenario_path)
        gate = scenario.gate
        declared = declared_break_glass(scenario, resolve_arm(scenario, "production"))
    staging = read_trace(staging_trace)
    prod = load_profile(production_profile)
    notes = []
    if policy.source.trace_sha256 and policy.source.trace_sha256 != trace_digest(staging):
        notes.append(f"{policy_path} was not learned from {staging_trace} (trace digest differs): the criteria "
                     "judge this staging trace, the lanes checked are the policy's")
    # measured alike: a class whose production profile has no contexts (an audit trail without
    # context entities, e.g. HAPI's BALP) has its staging gaps measured between requests too
    bases = {c: p.interarrival_basis for c, p in prod.classes.items() if p.interarrival_basis != "context"}
    sp = profile_from_trace(staging, _start(policy, scenario, policy_path), arm="staging", basis=bases)
    crit = criteria(sp, prod, gate, policy=policy, declared=declared)
    doc = {"schema": GATE_SCHEMA, "verdict": crit.status, "policy": policy.hash,
           "staging_trace": trace_digest(staging), "production_profile": {"source": prod.source, "days": prod.days,
                                                                          "first_day": prod.first_day},
           "criteria": crit.to_dict(), "notes": notes}
    if junit is not None:
        write_junit(junit, crit)
    if json_out is not None:
        Path(json_out).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return GateResult(criteria=crit, policy=policy, notes=notes, doc=doc)
