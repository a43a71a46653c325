"""What staging teaches about launch contexts (parity/launch_contexts.py, parity/compile.py) and
the policy's ``context`` section (enforcer/policy.py): on hand-made traces whose answer is known."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from paritybed.agents.trace import TraceBuilder
from paritybed.core.errors import InputError
from paritybed.enforcer.engine import decide
from paritybed.enforcer.kernel_abi import DENY
from paritybed.enforcer.policy import load_policy, save_policy
from paritybed.parity import learn_envelope, policy_from_trace
from paritybed.parity.compile import FIVE_MIN_NS
from paritybed.core.baa import Endpoint
from paritybed.enforcer.registry import Registry

S = 1_000_000_000
SERVER = "127.0.0.1:8080"
START = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
REG = Registry(version=1, endpoints=[Endpoint(name="llm", address="127.0.0.22:9443", status="active")])


def work(b: TraceBuilder, t: int, agent: str, replica: int, ctx: str, patient: str, encounter: str, held_s: int,
         paths: list[str], *, close: bool = True) -> None:
    common = dict(agent=agent, agent_class="ambient_scribe", replica=replica, launch_context=ctx)
    b.add(t_ns=t, kind="context_open", patient_id=patient, encounter_id=encounter, duration_ns=12 * 3600 * S, **common)
    for k, p in enumerate(paths):
        method, _, path = p.partition(" ")
        b.add(t_ns=t + (k + 1) * S, kind="fhir", method=method, path=path, **common)
    if close:
        b.add(t_ns=t + held_s * S, kind="context_close", **common)


def staging() -> "pa.Table":  # noqa: F821
    b = TraceBuilder("staging")
    reads = ["GET /fhir/Patient/{p}", "GET /fhir/Encounter/{e}", "GET /fhir/Observation?patient={p}&_count=50",
             "POST /fhir/DocumentReference", "PUT /fhir/Encounter/{e}"]
    # replica 0: three contexts, two overlapping (most open at once: 2), the longest held 600 s
    for t, ctx, p, e, held in ((0, "c1", "P1", "E1", 600), (100 * S, "c2", "P2", "E2", 200), (900 * S, "c3", "P3", "E3", 60)):
        work(b, t, "scribe", 0, ctx, p, e, held, [x.format(p=p, e=e) for x in reads])
    # replica 1: one context, never closed (held until its last use: 5 s)
    work(b, 50 * S, "scribe", 1, "c4", "P4", "E4", 0, [x.format(p="P4", e="E4") for x in reads], close=False)
    # a break-glass lane's out-of-context reads and a probe labelled deny do not make it unbound
    b.add(t_ns=2000 * S, agent="scribe", agent_class="ambient_scribe", kind="lane_open", lane="code_blue",
          claim_id="bg1", duration_ns=600 * S)
    b.add(t_ns=2001 * S, agent="scribe", agent_class="ambient_scribe", kind="fhir", method="GET",
          path="/fhir/Patient/Q9", lane="code_blue", claim_id="bg1")
    b.add(t_ns=2002 * S, agent="scribe", agent_class="ambient_scribe", kind="fhir", method="GET",
          path="/fhir/Patient/Q8", expected="deny", label="attack:x")
    # cds: no launch contexts; names patients: unbound, first-seen A, B, C within 5 min on replica 0
    for k, (t, p) in enumerate(((0, "A"), (60, "B"), (120, "A"), (200, "C"), (400, "D"), (3600, "E"))):
        b.add(t_ns=t * S, agent="cds", agent_class="cds", kind="fhir", method="GET",
              path=f"/fhir/Observation?patient={p}&_include=Observation:performer:Practitioner")
    # prior auth: names nobody, no contexts: no context section at all
    b.add(t_ns=5 * S, agent="prior-auth", agent_class="prior_auth", kind="fhir", method="GET", path="/fhir/Claim/X1")
    return b.build()


def test_launch_contexts_learned_per_agent():
    env = learn_envelope(staging(), REG)
    sc = env.agents["scribe"].launch
    assert (sc.contexts, sc.bound, sc.named, sc.in_context) == (4, True, 16, 16)
    assert sc.unscoped == {("DocumentReference", "create"): 4}
    assert sc.longest_held_ns == 600 * S and sc.max_open == 2
    cds = env.agents["cds"].launch
    assert (cds.contexts, cds.bound, cds.named, cds.new_patient_peak_5min, cds.patients) == (0, False, 6, 3, 5)
    assert env.agents["prior-auth"].launch.unscoped == {("Claim", "read"): 1}
    # every pair a request touched is learned, not only the primary one
    assert env.agents["cds"].pairs == {("Observation", "search"): 6, ("Practitioner", "read"): 6}


def test_the_context_section_with_its_margins():
    pol = policy_from_trace(staging(), fhir_server=SERVER, registry=REG,
                            margins={"context_duration_margin": 1.5, "context_open_margin": 2.0, "new_patient_margin": 1.5})
    sc = pol.agents["scribe"].context
    assert sc is not None and sc.bound and sc.new_patient_budget is None
    assert (sc.max_duration_s, sc.max_open) == (900, 4)
    assert [p.key() for p in sc.unscoped] == [("DocumentReference", "create")]
    cds = pol.agents["cds"].context
    assert cds is not None and not cds.bound and cds.max_open is None and cds.max_duration_s is None
    burst = math.ceil(1.5 * 3)
    assert cds.new_patient_budget.burst == burst and cds.new_patient_budget.interval_ns == FIVE_MIN_NS // burst
    assert pol.agents["prior-auth"].context is None


def test_staging_passes_its_own_policy():
    tr = staging()
    pol = policy_from_trace(tr, fhir_server=SERVER, registry=REG)
    d = decide(tr, pol, REG, START)
    legit = [e != "deny" for e in tr["expected"].to_pylist()]
    kinds = tr["kind"].to_pylist()
    assert not any(d.decision[i] == DENY for i in range(tr.num_rows) if legit[i] and kinds[i] != "lane_open")


def test_one_request_outside_its_context_unbinds_the_agent():
    b = TraceBuilder("staging")
    work(b, 0, "scribe", 0, "c1", "P1", "E1", 60, ["GET /fhir/Patient/P1", "GET /fhir/Patient/P2"])
    pol = policy_from_trace(b.build(), fhir_server=SERVER, registry=REG)
    c = pol.agents["scribe"].context
    assert c is not None and not c.bound and c.new_patient_budget is not None and c.max_open == 2


def test_the_policy_hash_covers_the_context_section_and_bad_files_name_the_field(tmp_path):
    pol = policy_from_trace(staging(), fhir_server=SERVER, registry=REG)
    changed = pol.model_copy(update={"agents": {**pol.agents, "scribe": pol.agents["scribe"].model_copy(
        update={"context": pol.agents["scribe"].context.model_copy(update={"max_open": 99})})}})
    assert changed.computed_hash() != pol.computed_hash()
    path = tmp_path / "policy.json"
    save_policy(pol, path)
    assert load_policy(path).agents["scribe"].context == pol.agents["scribe"].context
    raw = json.loads(path.read_text())
    raw.pop("hash")
    for bad, where, what in (
        ({"bound": True, "max_open": 0, "max_duration_s": 60}, "agents.scribe.context.max_open", "greater than or equal to 1"),
        ({"bound": False, "unscoped": [{"type": "patient", "interaction": "read"}]}, "agents.scribe.context.unscoped",
         "R4 resource type"),
        ({"bound": True, "max_open": 1}, "agents.scribe.context", "needs max_duration_s and max_open"),
        ({"bound": False, "new_patient_budget": {"burst": 0, "interval_ns": 1}},
         "agents.scribe.context.new_patient_budget.burst", "greater than or equal to 1"),
    ):
        raw["agents"]["scribe"]["context"] = bad
        path.write_text(json.dumps(raw))
        with pytest.raises(InputError, match=f"{path}: invalid policy at {where}.*{what}"):
            load_policy(path)


def test_observed_events_with_touches_names_and_contexts_learn_the_binding():
    """paritybed enforce --mode observe: kernel events that carry touches and names, and the
    control plane's context openings, compile into an exact policy with its context section."""
    from paritybed.parity.observed import observed_policy, trace_from_events

    ev = [{"event": "context-open", "agent": "cds", "replica": 0, "t_ns": 0, "context": "c1", "patient": "9f1c",
           "encounter": "", "duration_ns": 60 * S},
          {"event": "request", "agent": "cds", "replica": 0, "t_ns": S, "kind": "fhir", "method": "GET",
           "resource_type": "Observation", "interaction": "search", "touches": ["Observation:search", "Patient:read"],
           "named_patients": ["9f1c"], "context": "c1"},
          {"event": "request", "agent": "cds", "replica": 0, "t_ns": 2 * S, "kind": "fhir", "method": "POST",
           "resource_type": "ServiceRequest", "interaction": "create"},
          {"event": "context-close", "agent": "cds", "replica": 0, "t_ns": 3 * S, "context": "c1"}]
    tr = trace_from_events(ev, agent_class="cds", fhir_server_addresses={SERVER})
    pol = observed_policy(tr, fhir_server=SERVER, fhir_base="/fhir", registry=REG, agent="cds")
    ap = pol.agents["cds"]
    assert {p.key() for p in ap.fhir.allow} == {("Observation", "search"), ("Patient", "read"), ("ServiceRequest", "create")}
    assert ap.context is not None and ap.context.bound and ap.context.max_duration_s == 60  # the floor
    assert [p.key() for p in ap.context.unscoped] == [("ServiceRequest", "create")]
    # events without names (a kernel that does not report them): pairs only, no context section
    bare = [{k: v for k, v in e.items() if k not in ("touches", "named_patients", "context")} for e in ev[1:3]]
    pol2 = observed_policy(trace_from_events(bare, agent_class="cds", fhir_server_addresses={SERVER}),
                           fhir_server=SERVER, fhir_base="/fhir", registry=REG, agent="cds")
    assert pol2.agents["cds"].context is None
