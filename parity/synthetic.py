"""Synthetic traffic with known answers, for the parity tests and the replay benchmark.

Not a hospital model (that is ``paritybed.sim``): a small, fast generator of the three agents'
traffic in tasks (an encounter note, a CDS query, a prior-authorization claim), with a morning
burst or a flat ("uniform") load, optional omissions, break-glass lanes, attacks and a hotfix
endpoint outside the BAA registry.  Because the generator's knobs map one-to-one onto the
failures the criteria must detect, tests can assert the exact answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from paritybed.agents.trace import TraceBuilder
from paritybed.core.units import DAY_NS, HOUR_NS, NS_PER_S
from paritybed.scenarios import Scenario

SERVER = "127.0.0.1:8080"
EMBED = "127.0.0.21:9443"
PAYER = "127.0.0.22:443"
UNREGISTERED = "127.0.0.99:443"
EXFIL = "10.66.6.6:443"

#: Hour-of-day weights of the bursty arm: the 07:00-09:00 admission/rounds burst.
BURSTY = np.array([1, 1, 1, 1, 1, 1, 4, 14, 14, 6, 5, 5, 4, 4, 4, 4, 4, 3, 3, 2, 2, 2, 1, 1], dtype=float)

TASKS: dict[str, dict[str, Any]] = {
    "scribe": {"class": "ambient_scribe", "per_day": 240, "steps": [
        ("Patient", "read"), ("Encounter", "read"), ("Condition", "search"), ("MedicationRequest", "search"),
        ("Observation", "search"), ("DocumentReference", "create")], "kind": "encounter"},
    "cds": {"class": "cds", "per_day": 200, "steps": [
        ("Patient", "read"), ("Observation", "search"), ("Observation", "search"), ("Condition", "search"),
        ("MedicationRequest", "search")], "rare": ("DiagnosticReport", "search", 0.05), "egress": ("embeddings", EMBED),
        "kind": "query"},
    "prior-auth": {"class": "prior_auth", "per_day": 120, "steps": [
        ("Patient", "read"), ("Coverage", "search"), ("ServiceRequest", "read"), ("Claim", "create")],
        "egress": ("payer", PAYER), "kind": "claim"},
}
LANE_STEPS = [("Procedure", "search"), ("Observation", "search"), ("MedicationAdministration", "create")]


def make_trace(arm: str, *, days: float = 1.0, seed: int = 1, arrivals: str = "bursty",
               omit: tuple[tuple[str, str], ...] = (), break_glass: str = "as_production", attacks: bool = False,
               hotfix: bool = False, volume: float = 1.0, replicas: int = 2) -> pa.Table:
    """One arm's trace.  ``break_glass``: as_production (Code Blue ~2/day), drill (2 drills, each
    with an access after expiry), off.  ``arrivals="uniform"`` spreads every request
    independently and evenly over time (no tasks, no morning burst)."""
    rng = np.random.default_rng(seed)
    b = TraceBuilder(arm)
    span = int(days * DAY_NS)
    for agent, spec in TASKS.items():
        n_tasks = int(round(spec["per_day"] * days * volume))
        if arrivals == "uniform":
            starts = np.sort(rng.integers(0, span, n_tasks))
        else:
            w = BURSTY / BURSTY.sum()
            day = rng.integers(0, max(1, int(np.ceil(days))), n_tasks)
            hour = rng.choice(24, n_tasks, p=w)
            starts = day * DAY_NS + hour * HOUR_NS + rng.integers(0, HOUR_NS, n_tasks)
            starts = np.sort(starts[starts < span])
        for k, t0 in enumerate(starts.tolist()):
            steps = list(spec["steps"])
            rare = spec.get("rare")
            if rare and rng.random() < rare[2]:
                steps.append((rare[0], rare[1]))
            steps = [s for s in steps if (agent, s[0]) not in omit]
            rep = int(rng.integers(0, replicas))
            ctx = f"{spec['kind']}-{arm}-{agent}-{k}"
            pid = f"p{int(rng.integers(0, 500))}"
            if arrivals == "uniform":
                ts = np.sort(rng.integers(0, span, len(steps))).tolist()
            else:
                ts = (t0 + np.cumsum(rng.exponential(0.25 * NS_PER_S, len(steps))).astype(np.int64)).tolist()
            for (typ, inter), t in zip(steps, ts):
                b.add(t_ns=int(t), agent=agent, agent_class=spec["class"], replica=rep, kind="fhir",
                      method="GET" if inter in ("read", "search") else "POST", path=f"/fhir/{typ}",
                      resource_type=typ, interaction=inter, resource_id=f"r{k}" if inter == "read" else "",
                      context_id=ctx, context_kind=spec["kind"], patient_id=pid, workflow="synthetic")
            if "egress" in spec:
                name, addr = spec["egress"]
                b.add(t_ns=int(ts[-1]) + 1000, agent=agent, agent_class=spec["class"], replica=rep, kind="egress",
                      endpoint=name, address=addr, egress_calls=1, context_id=ctx, context_kind=spec["kind"])
            if hotfix and agent == "scribe" and t0 > span // 2 and rng.random() < 0.2:
                b.add(t_ns=int(ts[-1]) + 2000, agent=agent, agent_class=spec["class"], replica=rep, kind="egress",
                      endpoint="summariser", address=UNREGISTERED, egress_calls=1, expected="deny",
                      label="hotfix:summariser")
    _lanes(b, rng, span, break_glass, replicas)
    if attacks:
        t0 = span // 2 + 3 * HOUR_NS
        for i in range(40):
            b.add(t_ns=t0 + i * 5 * NS_PER_S, agent="prior-auth", agent_class="prior_auth", replica=0, kind="fhir",
                  method="GET", resource_type="Patient", interaction="search", expected="deny", label="attack:bulk-read")
        b.add(t_ns=t0 + HOUR_NS, agent="cds", agent_class="cds", replica=1, kind="egress", endpoint="exfil",
              address=EXFIL, expected="deny", label="attack:exfil")
    return b.build()


def _lanes(b: TraceBuilder, rng: np.random.Generator, span: int, mode: str, replicas: int) -> None:
    if mode == "off":
        return
    if mode == "drill":
        times = [span // 4, (3 * span) // 4]
    else:
        n = max(1, int(round(2 * span / DAY_NS)))
        times = sorted(int(x) for x in rng.integers(HOUR_NS, max(HOUR_NS + 1, span - HOUR_NS), n))
    for k, t in enumerate(times):
        claim = f"cb-{k}-{int(rng.integers(0, 10**6))}"
        rep = k % replicas
        dur = 30 * 60 * NS_PER_S
        b.add(t_ns=t, agent="cds", agent_class="cds", replica=rep, kind="lane_open", lane="code_blue", claim_id=claim,
              identity=f"Practitioner/{100 + k}|physician", duration_ns=dur, workflow="break_glass")
        for j, (typ, inter) in enumerate(LANE_STEPS * 2):
            b.add(t_ns=t + (j + 1) * 60 * NS_PER_S, agent="cds", agent_class="cds", replica=rep, kind="fhir", resource_type=typ,
                  interaction=inter, lane="code_blue", claim_id=claim, resource_id=f"x{j}" if inter != "search" else "",
                  context_id=claim, context_kind="lane", patient_id="p1", workflow="break_glass")
        if mode == "drill":
            b.add(t_ns=t + dur + 60 * NS_PER_S, agent="cds", agent_class="cds", replica=rep, kind="fhir",
                  resource_type="Procedure", interaction="search", lane="code_blue", claim_id=claim,
                  expected="deny", label="lane-expiry-probe", workflow="break_glass")


def scenario(**gate: Any) -> Scenario:
    """A scenario describing the synthetic fleet (three agents, the BAA registry, Code Blue)."""
    return Scenario.model_validate({
        "name": "synthetic", "seed": 7, "start": {"date": "2026-01-05", "time": "00:00"},
        "duration": {"days": 1}, "population": {"folder": "unused"},
        "agents": [
            {"name": "scribe", "class": "ambient_scribe", "criticality": "tier-1", "egress": [],
             "scope": [{"type": t, "interactions": ["read", "search", "create"]} for t in
                       ("Patient", "Encounter", "Condition", "MedicationRequest", "Observation", "DocumentReference",
                        "MedicationStatement")]},
            {"name": "cds", "class": "cds", "criticality": "tier-2", "egress": ["embeddings"],
             "scope": [{"type": t, "interactions": ["read", "search"]} for t in
                       ("Patient", "Observation", "Condition", "MedicationRequest", "DiagnosticReport")]},
            {"name": "prior-auth", "class": "prior_auth", "criticality": "tier-3", "egress": ["payer"]},
        ],
        "baa_registry": {"version": 3, "endpoints": [
            {"name": "embeddings", "address": EMBED, "baa_id": "BAA-2025-014", "vendor": "Embed Co"},
            {"name": "payer", "address": PAYER, "baa_id": "BAA-2024-002", "vendor": "Payer Inc"}]},
        "break_glass": [{"name": "code_blue", "per_day": 2, "agents": ["cds"],
                         "lane": [{"type": "Procedure", "interactions": ["search"]}]}],
        "gate": gate or {},
    })
