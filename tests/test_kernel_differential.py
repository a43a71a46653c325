"""The invariant: for the same schedule, the kernel and the reference engine make the same
decision, for the same reason, on every row (docs/enforcement.md).

A hand-built schedule puts rows exactly on the edges: a token bucket emptied and refilled to the
nanosecond, a lane used one nanosecond before and at its expiry, a quarantine hold ending, a BAA
effective date, refused lanes, unclassifiable shapes, a request touching a type beyond its primary
pair, alert mode, an agent without a policy; launch contexts (in and out of context, a second
patient, an encounter, a sweep, the unscoped form, max_open, a closing, the expiry to the
nanosecond, break-glass outside every context) and a new-patient budget (its window to the
nanosecond, an unknown patient).  Each row's facts (shape, touches, names) are the classifier's
reading of its request, as in the agents' traces.
The kernel runs on the virtual clock; every row goes through real sockets of a process in its
replica's cgroup.
"""

from __future__ import annotations

import datetime as dt
import errno
import subprocess
from typing import Any

import pytest

from paritybed.agents.trace import TraceBuilder
from paritybed.enforcer.classify import CONTEXT_HEADER, classify, request_bytes
from paritybed.enforcer.engine import decide
from paritybed.enforcer.kernel_abi import DECISIONS, REASONS
from paritybed.enforcer.policy import (AgentPolicy, ContextPolicy, FhirPolicy, LanePolicy, NewPatientBudget, Pair, Policy,
                                       RatePolicy)
from paritybed.enforcer.registry import Endpoint, Registry, save_registry

pytestmark = pytest.mark.bpf

START = dt.datetime(2025, 3, 3, tzinfo=dt.timezone.utc)
S = 1_000_000_000
DAY = 86400 * S


def schedule(ext: str) -> TraceBuilder:
    tb = TraceBuilder("production")

    def fhir(t: int, agent: str, rtype: str, inter: str, path: str, method: str = "GET", rep: int = 0,
             claim: str = "", shape: str = "plain", ctx: str = "") -> None:
        c = classify(wire(method, path, claim, ctx))
        assert (c.shape, c.resource_type, c.interaction) == (shape, rtype, inter), (path, c)
        tb.add(t_ns=t, agent=agent, replica=rep, kind="fhir", method=method, path=path, resource_type=rtype,
               interaction=inter, shape=shape, claim_id=claim, launch_context=ctx,
               touches=[f"{a}:{b}" for a, b in c.touches], named_patients=list(c.patients),
               named_encounters=list(c.encounters), unknown_patient=c.unknown_patient)

    def context(t: int, agent: str, kind: str, ctx: str, patient: str = "", encounter: str = "",
                duration_s: int = 0) -> None:
        tb.add(t_ns=t, agent=agent, replica=0, kind=kind, launch_context=ctx, patient_id=patient,
               encounter_id=encounter, duration_ns=duration_s * S)

    def egress(t: int, agent: str, address: str, rep: int = 0) -> None:
        tb.add(t_ns=t, agent=agent, replica=rep, kind="egress", address=address)

    obs = "/fhir/Observation?patient=p1&_count=50"
    # cds: GCRA T = 10 s, burst 2 (tau = 10 s)
    fhir(0, "cds", "Observation", "search", obs)
    fhir(1 * S, "cds", "Observation", "search", obs)
    fhir(2 * S, "cds", "Observation", "search", obs)            # rate-exceeded (tat 20 s, 18 s > tau)
    fhir(2 * S, "cds", "Observation", "search", obs, rep=1)     # replica 1 has its own bucket
    fhir(10 * S, "cds", "Observation", "search", obs)           # exactly tau: allowed
    fhir(10 * S + 1, "cds", "Observation", "search", obs)       # one ns later: rate-exceeded
    fhir(20 * S, "cds", "Observation", "search", obs)
    fhir(25 * S, "cds", "Patient", "read", "/fhir/Patient/p1")  # type-not-in-envelope
    tb.add(t_ns=30 * S, agent="cds", replica=0, kind="lane_open", lane="code_blue", claim_id="cb-1",
           duration_ns=600 * S)                                 # capped at max 60 s: expiry 90 s
    fhir(40 * S, "cds", "Patient", "read", "/fhir/Patient/p1", claim="cb-1")         # lane
    fhir(50 * S, "cds", "Patient", "read", "/fhir/Patient/p1", claim="cb-2")         # another claim
    fhir(60 * S, "cds", "Patient", "read", "/fhir/Patient/p1", claim="cb-1", rep=1)  # another replica
    fhir(90 * S - 1, "cds", "Patient", "read", "/fhir/Patient/p1", claim="cb-1")     # lane, last ns
    fhir(90 * S, "cds", "Patient", "read", "/fhir/Patient/p1", claim="cb-1")         # lane-expired
    tb.add(t_ns=91 * S, agent="cds", replica=0, kind="lane_open", lane="rapid_response", claim_id="rr-1",
           duration_ns=60 * S)                                  # lane-not-in-envelope
    fhir(100 * S, "cds", "Patient", "read", "/fhir/Patient/p1/$everything", shape="operation")
    fhir(110 * S, "cds", "Observation", "search", "/fhir/Observation?_include=Observation:patient")  # touches Patient:read
    fhir(111 * S, "cds", "Observation", "search", "/fhir/Observation?_include=Observation:patient&_include=*",
         shape="include")                                       # _include=*: what it touches cannot be known
    fhir(120 * S, "cds", "Observation", "create", "/fhir/Observation", method="POST")
    egress(130 * S, "cds", ext)
    egress(131 * S, "cds", "127.0.0.23:9999")                   # egress-not-in-BAA
    egress(132 * S, "cds", "127.0.0.24:9000")                   # in the BAA registry, not in the envelope
    egress(DAY - 1, "cds", "127.0.0.31:9000")                   # BAA effective from day 1: not yet
    egress(DAY, "cds", "127.0.0.31:9000")                       # now covered
    # scribe: quarantine for 30 s
    fhir(5 * S, "scribe", "Patient", "read", "/fhir/Patient/p1")
    fhir(6 * S, "scribe", "Observation", "search", obs)          # quarantined
    egress(10 * S, "scribe", ext)                                # quarantined
    fhir(35 * S - 1, "scribe", "Observation", "search", obs)     # still quarantined
    fhir(35 * S, "scribe", "Observation", "search", obs)         # the hold is over
    # prior-auth: alert mode
    fhir(7 * S, "pa", "Patient", "read", "/fhir/Patient/p1")
    egress(8 * S, "pa", "127.0.0.23:9999")
    fhir(9 * S, "pa", "Coverage", "read", "/fhir/Coverage/c1")
    # an agent without a policy
    fhir(9 * S, "ghost", "Patient", "read", "/fhir/Patient/p1")
    # bound: launch contexts of at most 60 s, 2 open at once; ServiceRequest create unscoped
    b = 300 * S
    context(b, "bound", "context_open", "lc-1", "p1", "e1", 600)        # capped: expiry b + 60 s
    fhir(b + 1 * S, "bound", "Patient", "read", "/fhir/Patient/p1", ctx="lc-1")
    fhir(b + 2 * S, "bound", "Patient", "read", "/fhir/Patient/p2", ctx="lc-1")                 # out-of-context
    fhir(b + 3 * S, "bound", "Observation", "search", "/fhir/Observation?patient=p1", ctx="lc-1")
    fhir(b + 4 * S, "bound", "Observation", "search", "/fhir/Observation?patient=p1,p2", ctx="lc-1")  # two patients
    fhir(b + 5 * S, "bound", "Encounter", "read", "/fhir/Encounter/e1", ctx="lc-1")
    fhir(b + 6 * S, "bound", "Encounter", "read", "/fhir/Encounter/e2", ctx="lc-1")             # another encounter
    fhir(b + 7 * S, "bound", "Patient", "read", "/fhir/Patient/p1")                             # no context presented
    fhir(b + 8 * S, "bound", "ServiceRequest", "create", "/fhir/ServiceRequest", method="POST")  # unscoped
    fhir(b + 9 * S, "bound", "Observation", "search", "/fhir/Observation?code=x")               # unscoped form not learned
    fhir(b + 10 * S, "bound", "Patient", "search", "/fhir/Patient?name=x", ctx="lc-1")          # a sweep: unknown patient
    context(b + 11 * S, "bound", "context_open", "lc-2", "p2", "", 30)
    context(b + 12 * S, "bound", "context_open", "lc-3", "p3", "", 30)   # a third at once: refused
    fhir(b + 13 * S, "bound", "Patient", "read", "/fhir/Patient/p2", ctx="lc-2")
    context(b + 14 * S, "bound", "context_close", "lc-2")
    fhir(b + 15 * S, "bound", "Patient", "read", "/fhir/Patient/p2", ctx="lc-2")                # closed
    fhir(b + 60 * S - 1, "bound", "Patient", "read", "/fhir/Patient/p1", ctx="lc-1")           # its last ns
    fhir(b + 60 * S, "bound", "Patient", "read", "/fhir/Patient/p1", ctx="lc-1")               # expired
    tb.add(t_ns=b + 61 * S, agent="bound", replica=0, kind="lane_open", lane="code_blue", claim_id="cb-9",
           duration_ns=30 * S)
    fhir(b + 62 * S, "bound", "Patient", "read", "/fhir/Patient/p9", claim="cb-9")             # break-glass: lane
    context(b + 63 * S, "bound", "context_open", "lc-4", "p4", "", 30)   # lc-1 expired, lc-2 closed: room
    fhir(b + 64 * S, "bound", "Patient", "read", "/fhir/Patient/p4", ctx="lc-4")
    # budget: not bound, 2 new patients back to back, one per 10 s, a patient new again after 30 s
    c = 500 * S
    fhir(c, "budget", "Patient", "read", "/fhir/Patient/a1")
    fhir(c + 1 * S, "budget", "Patient", "read", "/fhir/Patient/a2")
    fhir(c + 2 * S, "budget", "Patient", "read", "/fhir/Patient/a3")                           # new-patient-budget
    fhir(c + 3 * S, "budget", "Patient", "read", "/fhir/Patient/a1")                           # named lately
    fhir(c + 31 * S - 1, "budget", "Patient", "read", "/fhir/Patient/a2")                      # 1 ns inside its window
    fhir(c + 33 * S, "budget", "Patient", "read", "/fhir/Patient/a1")                          # named 30 s ago: new again
    fhir(c + 34 * S, "budget", "Patient", "search", "/fhir/Patient?name=z")                    # an unknown patient
    fhir(c + 35 * S, "budget", "Observation", "search", "/fhir/Observation?patient=a1")
    fhir(c + 36 * S, "budget", "Observation", "search", "/fhir/Observation?patient=b1,b2,b3")  # over the budget
    return tb


def wire(method: str, path: str, claim: str = "", ctx: str = "") -> bytes:
    """The request a row's agent sends (its launch context in the header the kernel reads)."""
    return request_bytes(method, path, claim=claim or None, body=b"{}" if method in ("POST", "PUT") else b"",
                         headers={CONTEXT_HEADER: ctx} if ctx else None)


def kernel_decisions(ke: Any, trace: Any, sink: Any, probes: dict[tuple[str, int], Any]) -> list[tuple[str, str]]:
    """Drive every row through the kernel; (decision, reason) per row from errno and the events."""
    rows = trace.to_pylist()
    out = []
    ke.drain()
    for row in rows:
        t, agent, rep = row["t_ns"], row["agent"], row["replica"]
        if row["kind"] == "lane_open":
            ok = ke.open_lane(agent, rep, row["claim_id"], row["lane"], row["duration_ns"], t)
            out.append(("allow", "lane-opened") if ok else ("deny", "lane-not-in-envelope"))
            ke.drain()
            continue
        if row["kind"] == "context_open":
            ok = ke.open_context(agent, rep, row["launch_context"], row["patient_id"], row["encounter_id"],
                                 row["duration_ns"], t)
            out.append(("allow", "context-opened") if ok else ("deny", "context-not-in-envelope"))
            ke.drain()
            continue
        if row["kind"] == "context_close":
            ke.close_context(agent, rep, row["launch_context"], t)
            out.append(("allow", ""))
            ke.drain()
            continue
        ke.set_clock(t)
        p = probes[(agent, rep)]
        if row["kind"] == "fhir":
            raw = wire(row["method"], row["path"], row["claim_id"], row["launch_context"])
            r = p(op="http", addr=sink.address, writes=[raw.decode()], fresh=True)
        else:
            r = p(op="connect", addr=row["address"])
        evs = [e for e in ke.drain() if e.get("event") in ("request", "deny", "alert")]
        if row["kind"] == "egress":
            mine = [e for e in evs if e["kind"] == "egress"]
        elif r.get("stage") == "connect":  # the (re)connect to the FHIR server was refused: quarantined
            mine = [e for e in evs if e["kind"] == "egress" and e["event"] == "deny"]
        else:
            mine = [e for e in evs if e["kind"] == "fhir"]
        if not mine:
            assert r["ok"], (row, r)
            out.append(("allow", "unenforced"))
            continue
        ev = mine[-1]
        if ev["event"] == "deny":
            assert r.get("errno") in (errno.EACCES, errno.EPERM), (row, r)
        out.append((ev["event"] if ev["event"] != "request" else "allow", ev["reason"]))
    return out


def test_kernel_and_engine_decide_every_row_alike(tmp_path: Any) -> None:
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup
    from paritybed.enforcer.probe import ProbeProcess, Sink, probe_argv

    sink, ext = Sink(), Sink()
    fhir = FhirPolicy(server=sink.address, allow=[Pair(type="Observation", interaction="search"),
                                                  Pair(type="Observation", interaction="create"),
                                                  Pair(type="Coverage", interaction="read")])
    lanes = {"code_blue": LanePolicy(allow=[Pair(type="Patient", interaction="read")], max_duration_s=60)}
    policy = Policy(agents={
        "cds": AgentPolicy(agent_class="cds", fhir=fhir, rate=RatePolicy(burst=2, interval_ns=10 * S),
                           egress=["embedder", "later"], lanes=lanes),
        "scribe": AgentPolicy(agent_class="ambient_scribe", fhir=fhir, egress=["embedder"], response="quarantine",
                              quarantine_hold_s=30),
        "pa": AgentPolicy(agent_class="prior_auth", fhir=fhir, response="alert"),
        "bound": AgentPolicy(
            agent_class="ambient_scribe",
            fhir=FhirPolicy(server=sink.address, allow=[Pair(type=t, interaction=i) for t, i in (
                ("Patient", "read"), ("Patient", "search"), ("Observation", "search"), ("Encounter", "read"),
                ("ServiceRequest", "create"))]),
            lanes={"code_blue": LanePolicy(allow=[Pair(type="Patient", interaction="read")], max_duration_s=60)},
            context=ContextPolicy(bound=True, max_duration_s=60, max_open=2,
                                  unscoped=[Pair(type="ServiceRequest", interaction="create")])),
        "budget": AgentPolicy(
            agent_class="cds",
            fhir=FhirPolicy(server=sink.address, allow=[Pair(type="Patient", interaction="read"),
                                                        Pair(type="Patient", interaction="search"),
                                                        Pair(type="Observation", interaction="search")]),
            context=ContextPolicy(bound=False, new_patient_budget=NewPatientBudget(
                burst=2, interval_ns=10 * S, window_ns=30 * S))),
    })
    registry = Registry(version=4, endpoints=[
        Endpoint(name="embedder", address=ext.address),
        Endpoint(name="payer", address="127.0.0.24:9000"),
        Endpoint(name="later", address="127.0.0.31:9000", effective_from=dt.date(2025, 3, 4)),
    ])
    save_registry(registry, tmp_path / "baa.json")
    trace = schedule(ext.address).build()
    engine = decide(trace, policy, registry, START)
    expected = [(DECISIONS[d], REASONS[r]) for d, r in zip(engine.decision.tolist(), engine.reason.tolist())]

    cleanup("pbt-diff")
    ke = KernelEnforcer(policy, tmp_path / "baa.json", start=START, name="pbt-diff", record_all=True)
    probes = {}
    try:
        for agent, rep in sorted({(r["agent"], r["replica"]) for r in trace.select(["agent", "replica"]).to_pylist()}):
            probes[(agent, rep)] = ProbeProcess(ke.spawn(agent, rep, probe_argv(), stdin=subprocess.PIPE,
                                                         stdout=subprocess.PIPE, text=True))
        got = kernel_decisions(ke, trace.select(["t_ns", "agent", "replica", "kind", "method", "path", "claim_id", "lane",
                                                 "duration_ns", "address", "launch_context", "patient_id",
                                                 "encounter_id"]), sink, probes)
    finally:
        for p in probes.values():
            p.close()
        ke.close()
        sink.close()
        ext.close()
    rows = trace.select(["t_ns", "agent", "replica", "kind", "path", "address"]).to_pylist()
    diffs = [(r, e, g) for r, e, g in zip(rows, expected, got) if e != g]
    assert not diffs, "\n".join(f"{r} engine={e} kernel={g}" for r, e, g in diffs)
    # the schedule really exercises the edges
    reasons = {r for _, r in expected}
    assert {"rate-exceeded", "lane", "lane-expired", "quarantined", "egress-not-in-BAA", "egress-not-in-envelope",
            "unclassifiable", "type-not-in-envelope", "lane-not-in-envelope", "unenforced", "out-of-context",
            "context-opened", "context-not-in-envelope", "new-patient-budget"} <= reasons
    assert ("alert", "type-not-in-envelope") in expected
