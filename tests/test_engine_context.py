"""Clinical-context binding in the reference engine (docs/enforcement.md, "Clinical context
binding" and decision step 5), case by case at the exact edges the kernel must mirror: a
context's expiry, max_open, reopening, unknown patients, unscoped pairs, lanes, the new-patient
budget's GCRA and its bounded set of seen patients, and every touch of a request."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import datetime as dt

from paritybed.agents.trace import TraceBuilder
from paritybed.core.baa import Endpoint
from paritybed.enforcer import contexts
from paritybed.enforcer.engine import decide
from paritybed.enforcer.kernel_abi import ALERT, ALLOW, DENY, REASONS
from paritybed.enforcer.policy import (AgentPolicy, ContextPolicy, FhirPolicy, LanePolicy, NewPatientBudget, Pair,
                                       Policy, RatePolicy)
from paritybed.enforcer.registry import Registry

S = 1_000_000_000
SERVER = "127.0.0.1:8080"
START = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
REG = Registry(version=1, endpoints=[Endpoint(name="llm", address="127.0.0.22:9443", status="active")])
ALLOWED = [("Observation", "search"), ("Patient", "read"), ("Patient", "search"), ("Encounter", "read"), ("DocumentReference", "create")]


def pol(*, bound: bool = True, max_open: int | None = 2, max_s: int | None = 600, unscoped=(("DocumentReference", "create"),),
        budget: NewPatientBudget | None = None, response: str = "deny", rate: RatePolicy | None = None,
        lanes: dict[str, LanePolicy] | None = None, context: bool = True, shapes: list[str] | None = None) -> Policy:
    ctx = ContextPolicy(bound=bound, max_open=max_open, max_duration_s=max_s,
                        unscoped=[Pair(type=t, interaction=i) for t, i in unscoped],
                        new_patient_budget=budget) if context else None
    return Policy(agents={"scribe": AgentPolicy(
        agent_class="ambient_scribe",
        fhir=FhirPolicy(server=SERVER, allow=[Pair(type=t, interaction=i) for t, i in ALLOWED], allow_shapes=shapes or []),
        rate=rate, lanes=lanes or {}, context=ctx, response=response, quarantine_hold_s=60)})


def opened(b: TraceBuilder, t: int, ctx: str, patient: str, encounter: str = "", d: int = 3600 * S, replica: int = 0) -> None:
    b.add(t_ns=t, agent="scribe", agent_class="ambient_scribe", kind="context_open", launch_context=ctx,
          patient_id=patient, encounter_id=encounter, duration_ns=d, replica=replica)


def closed(b: TraceBuilder, t: int, ctx: str, replica: int = 0) -> None:
    b.add(t_ns=t, agent="scribe", agent_class="ambient_scribe", kind="context_close", launch_context=ctx,
          replica=replica)


def req(b: TraceBuilder, t: int, path: str, ctx: str = "", method: str = "GET", **kw) -> None:
    b.add(t_ns=t, agent="scribe", agent_class="ambient_scribe", kind="fhir", method=method, path=path,
          launch_context=ctx, **kw)


def run(b: TraceBuilder, p: Policy, **kw):
    d = decide(b.build(), p, REG, START, **kw)
    return [int(x) for x in d.decision], [REASONS[int(x)] for x in d.reason], d.events


# ------------------------------------------------------------------ contexts: in force, expiry, limits
def test_in_context_until_exactly_the_expiry():
    b = TraceBuilder("production")
    opened(b, 100, "c1", "P", d=60 * S)
    req(b, 100, "/fhir/Patient/P", "c1")  # the instant it opens
    req(b, 100 + 60 * S - 1, "/fhir/Observation?patient=P", "c1")
    req(b, 100 + 60 * S, "/fhir/Observation?patient=P", "c1")  # t == expiry: closed
    _, why, _ = run(b, pol())
    assert why == ["context-opened", "", "", "out-of-context"]


def test_the_policy_caps_the_requested_duration():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P", d=3600 * S)
    req(b, 10 * S - 1, "/fhir/Patient/P", "c1")
    req(b, 10 * S, "/fhir/Patient/P", "c1")
    _, why, _ = run(b, pol(max_s=10))
    assert why == ["context-opened", "", "out-of-context"]


def test_closed_context_and_other_patient_and_other_replica_are_out_of_context():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P")
    req(b, 1, "/fhir/Patient/Q", "c1")  # another patient
    req(b, 2, "/fhir/Patient/P", "c1", replica=1)  # contexts are per replica
    req(b, 3, "/fhir/Patient/P")  # no context presented
    req(b, 4, "/fhir/Patient/P", "c2")  # a context never opened
    closed(b, 5, "c1")
    req(b, 6, "/fhir/Patient/P", "c1")
    dec, why, _ = run(b, pol())
    assert why == ["context-opened"] + ["out-of-context"] * 4 + ["", "out-of-context"]
    assert dec[5] == ALLOW


def test_max_open_refuses_then_admits_after_a_close_or_an_expiry():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P", d=100 * S)
    opened(b, 1, "c2", "Q", d=50 * S)
    opened(b, 2, "c3", "R")  # two open: refused
    req(b, 3, "/fhir/Patient/R", "c3")
    opened(b, 4, "c1", "P")  # reopening an open context replaces it: not a third
    closed(b, 5, "c1")
    opened(b, 6, "c3", "R")  # one open now
    opened(b, 50 * S + 1, "c4", "T")  # c2 expired at 1 + 50 s: it no longer counts
    opened(b, 50 * S + 2, "c5", "U")  # c3 and c4 open
    dec, why, ev = run(b, pol(max_open=2))
    assert why == ["context-opened", "context-opened", "context-not-in-envelope", "out-of-context", "context-opened",
                   "", "context-opened", "context-opened", "context-not-in-envelope"]
    assert dec[2] == DENY and [e["event"] for e in ev if e["row"] == 2] == ["context-refused", "deny"]


def test_reopening_replaces_patient_encounter_and_expiry():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P", d=10 * S)
    opened(b, 1, "c1", "Q", d=100 * S)
    req(b, 2, "/fhir/Patient/P", "c1")
    req(b, 20 * S, "/fhir/Patient/Q", "c1")
    _, why, _ = run(b, pol())
    assert why == ["context-opened", "context-opened", "out-of-context", ""]


def test_no_context_section_refuses_activations_and_binds_nothing():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P")
    req(b, 1, "/fhir/Patient/Q", "c1")
    dec, why, _ = run(b, pol(context=False))
    assert why == ["context-not-in-envelope", ""] and dec == [DENY, ALLOW]


def test_observe_mode_opens_for_as_long_as_asked():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P", d=7200 * S)
    req(b, 7000 * S, "/fhir/Patient/Q", "c1")
    _, why, _ = run(b, pol(response="observe", max_s=1, max_open=1))
    assert why == ["context-opened", "observe"]


def test_an_agent_without_a_policy_is_unenforced_for_contexts_too():
    b = TraceBuilder("production")
    b.add(t_ns=0, agent="other", agent_class="cds", kind="context_open", launch_context="c1", patient_id="P")
    b.add(t_ns=1, agent="other", agent_class="cds", kind="context_close", launch_context="c1")
    _, why, _ = run(b, pol())
    assert why == ["unenforced", "unenforced"]


# ------------------------------------------------------------------ what a request names
def test_encounters_must_be_the_contexts_encounter():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P", "E1")
    opened(b, 0, "c2", "P")  # no encounter
    req(b, 1, "/fhir/Encounter/E1", "c1")
    req(b, 2, "/fhir/Encounter/E2", "c1")
    req(b, 3, "/fhir/Observation?patient=P&encounter=E1", "c1")
    req(b, 4, "/fhir/Encounter/E1", "c2")  # the context has no encounter
    req(b, 5, "/fhir/Observation?patient=P", "c2")
    _, why, _ = run(b, pol(max_open=3))
    assert why == ["context-opened", "context-opened", "", "out-of-context", "", "out-of-context", ""]


def test_unknown_patients_and_several_patients_are_never_in_context():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P")
    req(b, 1, "/fhir/Patient?name=smith", "c1")  # a search of patients naming none: a sweep
    req(b, 2, "/fhir/Observation?patient=P,Q", "c1")
    req(b, 3, "/fhir/Observation?patient=P,P", "c1")  # distinct ids: one patient
    req(b, 4, "/fhir/Observation?subject:identifier=urn:mrn|7", "c1")  # a patient by identifier: unknown
    _, why, _ = run(b, pol(max_open=3))
    assert why == ["context-opened", "out-of-context", "out-of-context", "", "out-of-context"]


def test_unscoped_pairs_and_the_unscoped_form_of_other_pairs():
    b = TraceBuilder("production")
    req(b, 1, "/fhir/DocumentReference", method="POST")  # a create names nobody: learned unscoped
    req(b, 2, "/fhir/Observation?code=8302-2")  # a population search: Observation search unscoped
    req(b, 3, "/fhir/Observation?code=8302-2&patient=P")  # scoped, but no context
    dec, why, _ = run(b, pol())
    assert why == ["", "out-of-context", "out-of-context"]
    _, why2, _ = run(b, pol(unscoped=[("DocumentReference", "create"), ("Observation", "search")]))
    assert why2 == ["", "", "out-of-context"]


def test_every_touch_of_an_unscoped_request_must_be_unscoped():
    b = TraceBuilder("production")
    # Observation search with an _include of the subject's Patient: names nobody, touches Patient read too
    req(b, 1, "/fhir/Observation?code=1&_include=Observation:subject:Patient")
    _, why, _ = run(b, pol(unscoped=[("Observation", "search")]))
    assert why == ["out-of-context"]
    _, why, _ = run(b, pol(unscoped=[("Observation", "search"), ("Patient", "read")]))
    assert why == [""]


def test_an_allowed_shape_names_an_unknown_patient():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P")
    req(b, 1, "/fhir/Patient/P/$everything", "c1")
    _, why, _ = run(b, pol(shapes=["operation"]))
    assert why == ["context-opened", "out-of-context"]


# ------------------------------------------------------------------ touches and lanes
def test_type_not_in_envelope_names_the_first_touch_outside():
    b = TraceBuilder("production")
    opened(b, 0, "c1", "P")
    req(b, 1, "/fhir/Observation?patient=P&_include=Observation:performer:Practitioner&_revinclude=Provenance:target", "c1")
    dec, why, ev = run(b, pol())
    assert why == ["context-opened", "type-not-in-envelope"]
    deny = [e for e in ev if e["event"] == "deny"]
    assert deny == [{"row": 1, "t_ns": 1, "event": "deny", "reason": "type-not-in-envelope", "touch": "Practitioner:read"}]


def lanes() -> dict[str, LanePolicy]:
    return {"code_blue": LanePolicy(allow=[Pair(type="Procedure", interaction="search")], max_duration_s=600)}


def test_a_lane_allows_out_of_context_and_its_pairs_until_its_expiry():
    b = TraceBuilder("production")
    b.add(t_ns=0, agent="scribe", agent_class="ambient_scribe", kind="lane_open", lane="code_blue", claim_id="bg1",
          duration_ns=60 * S)
    req(b, 1, "/fhir/Patient/Q", claim_id="bg1", lane="code_blue")  # out of context, under the lane
    req(b, 2, "/fhir/Procedure?patient=Q", claim_id="bg1", lane="code_blue")  # lane pair, out of context
    req(b, 3, "/fhir/Observation?patient=Q&_revinclude=Procedure:subject", claim_id="bg1")  # one touch via the lane
    req(b, 4, "/fhir/Patient/Q", claim_id="other")  # not the lane's claim
    req(b, 60 * S, "/fhir/Patient/Q", claim_id="bg1")  # the lane expired: out of context
    req(b, 60 * S, "/fhir/Procedure?patient=Q", claim_id="bg1")  # ... and its pair: lane-expired first
    _, why, _ = run(b, pol(lanes=lanes()))
    assert why == ["lane-opened", "lane", "lane", "lane", "out-of-context", "out-of-context", "lane-expired"]


# ------------------------------------------------------------------ the new-patient budget
def budget(burst: int = 2, every_s: int = 10) -> NewPatientBudget:
    return NewPatientBudget(burst=burst, interval_ns=every_s * S)


def test_budget_gcra_edges_count_first_seen_patients_only():
    # burst 2, T = 10 s: tau = 10 s.  P and Q at 0 spend it (tat = 20 s); P again is free.
    b = TraceBuilder("production")
    req(b, 0, "/fhir/Patient/P")
    req(b, 0, "/fhir/Patient/Q")
    req(b, 0, "/fhir/Patient/P")
    req(b, 0, "/fhir/Patient/R")  # tat 20 s - 0 > tau
    req(b, 10 * S - 1, "/fhir/Patient/R")  # 10 s + 1 ns > tau
    req(b, 10 * S, "/fhir/Patient/R")  # == tau: allowed, tat 30 s
    req(b, 10 * S, "/fhir/Observation?code=1")  # names nobody: free
    dec, why, _ = run(b, pol(bound=False, budget=budget(), unscoped=()))
    assert why == ["", "", "", "new-patient-budget", "new-patient-budget", "", ""]


def test_budget_charges_every_new_patient_of_a_request_and_unknown_patients_each_time():
    b = TraceBuilder("production")
    req(b, 0, "/fhir/Observation?patient=A,B")  # two steps at once: tat 20 s, x + T - t = 10 s <= tau
    req(b, 20 * S, "/fhir/Patient?name=x")  # unknown: one step, not recorded (tat 30 s)
    req(b, 20 * S, "/fhir/Patient?name=x")  # again: 30 s - 20 s = tau (tat 40 s)
    req(b, 20 * S, "/fhir/Patient?name=x")  # and again: 40 s - 20 s > tau
    req(b, 40 * S, "/fhir/Observation?patient=C,D,E")  # three at once: x + 2T - t = 20 s > tau
    req(b, 40 * S, "/fhir/Observation?patient=C,D")  # two: x + T - t = 10 s = tau
    req(b, 60 * S, "/fhir/Observation?patient=A,B,C,D,E")  # more than NPAT_MAX patients: over, whatever the state
    dec, why, _ = run(b, pol(bound=False, budget=budget(), unscoped=()))
    assert why == ["", "", "", "new-patient-budget", "new-patient-budget", "", "new-patient-budget"]
    assert contexts.NPAT_MAX == 4


def test_budget_is_spent_only_when_the_request_is_allowed():
    b = TraceBuilder("production")
    req(b, 0, "/fhir/Patient/P")
    req(b, 1, "/fhir/Patient/Q")  # over the rate limit: Q not seen, budget not spent
    req(b, 10 * S, "/fhir/Patient/Q")  # now first seen: one step
    req(b, 10 * S + 1, "/fhir/Encounter/E1")  # names an encounter only: no patient
    rate = RatePolicy(burst=1, interval_ns=10 * S)
    _, why, _ = run(b, pol(bound=False, budget=budget(burst=2), unscoped=(), rate=rate))
    assert why == ["", "rate-exceeded", "", "rate-exceeded"]


def test_budget_does_not_count_under_an_open_lane():
    b = TraceBuilder("production")
    b.add(t_ns=0, agent="scribe", agent_class="ambient_scribe", kind="lane_open", lane="code_blue", claim_id="bg1",
          duration_ns=60 * S)
    for k, p in enumerate("ABC"):
        req(b, 1 + k, f"/fhir/Patient/{p}", claim_id="bg1")
    req(b, 5, "/fhir/Patient/D")
    req(b, 6, "/fhir/Patient/A")  # not recorded under the lane: first seen now
    _, why, _ = run(b, pol(bound=False, budget=budget(burst=1), unscoped=(), lanes=lanes()))
    assert why == ["lane-opened", "", "", "", "", "new-patient-budget"]


def test_a_patient_not_named_for_the_window_is_new_again():
    b = TraceBuilder("production")
    req(b, 0, "/fhir/Patient/A")
    req(b, 300 * S - 1, "/fhir/Patient/A")  # named 1 ns within the window: not new, and named again now
    req(b, 600 * S - 2, "/fhir/Patient/A")  # within the window of the last naming
    req(b, 600 * S - 1, "/fhir/Patient/B")  # new: A spent the budget until 3000 s
    req(b, 900 * S - 2, "/fhir/Patient/A")  # exactly the window since A was last named: new, and over
    dec, why, _ = run(b, pol(bound=False, budget=NewPatientBudget(burst=1, interval_ns=3000 * S, window_ns=300 * S),
                             unscoped=()))
    assert why == ["", "", "", "new-patient-budget", "new-patient-budget"]


def test_a_full_set_of_seen_patients_charges_the_rest_each_time(monkeypatch):
    monkeypatch.setattr(contexts, "SEEN_MAX", 2)
    b = TraceBuilder("production")
    for k, p in enumerate("ABCC"):
        req(b, k * 10 * S, f"/fhir/Patient/{p}")
    req(b, 30 * S + 1, "/fhir/Patient/A")  # A was recorded: free
    _, why, _ = run(b, pol(bound=False, budget=budget(burst=1), unscoped=()))
    # A, B recorded; C is never recorded: at 20 s one step, at 30 s another (tat was 30 s: allowed);
    # A at 30 s is within its window
    assert why == ["", "", "", "", ""]
    b2 = TraceBuilder("production")
    for k, p in enumerate("ABC"):
        req(b2, k * 10 * S, f"/fhir/Patient/{p}")
    req(b2, 20 * S + 1, "/fhir/Patient/C")  # C charged again: the budget is spent until 30 s
    req(b2, 20 * S + 2, "/fhir/Patient/B")  # B recorded: free
    _, why2, _ = run(b2, pol(bound=False, budget=budget(burst=1), unscoped=()))
    assert why2 == ["", "", "", "new-patient-budget", ""]


def test_a_bound_agent_has_no_budget_and_an_alerting_agent_is_alerted():
    with pytest.raises(ValueError, match="applies to an agent that is not bound"):
        ContextPolicy(bound=True, max_open=1, max_duration_s=1, new_patient_budget=budget())
    with pytest.raises(ValueError, match="needs max_duration_s and max_open"):
        ContextPolicy(bound=True, max_open=None, max_duration_s=1)
    b = TraceBuilder("production")
    req(b, 0, "/fhir/Patient/P")
    dec, why, ev = run(b, pol(response="alert"))
    assert dec == [ALERT] and why == ["out-of-context"] and ev[0]["event"] == "alert"


# ------------------------------------------------------------------ fast path == general path
_ROW = st.tuples(
    st.integers(0, 7),  # 0-4 fhir, 5 context_open, 6 context_close, 7 lane_open
    st.integers(0, 1),  # replica
    st.integers(0, 40 * S),  # time
    st.sampled_from(["/fhir/Patient/P", "/fhir/Patient/Q", "/fhir/Observation?patient=P", "/fhir/Encounter/E",
                     "/fhir/Observation?code=1", "/fhir/Patient?name=x", "/fhir/Procedure?patient=Q",
                     "/fhir/Observation?patient=P,Q"]),
    st.sampled_from(["", "c1", "c2"]),  # launch context
    st.sampled_from(["P", "Q"]),  # a context's patient
    st.sampled_from(["", "E"]),  # a context's encounter
    st.sampled_from(["", "bg1"]),  # claim
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(_ROW, min_size=1, max_size=50), response=st.sampled_from(["deny", "quarantine", "alert"]),
       bound=st.booleans(), burst=st.integers(1, 3), max_open=st.integers(1, 2))
def test_fast_path_decides_exactly_like_the_general_path_with_contexts(rows, response, bound, burst, max_open):
    b = TraceBuilder("production")
    for kind, rep, t, path, ctx, pat, enc, claim in rows:
        if kind <= 4:
            req(b, t, path, ctx, replica=rep, claim_id=claim)
        elif kind == 5:
            opened(b, t, ctx or "c1", pat, enc, d=(5 + t % 20) * S, replica=rep)
        elif kind == 6:
            closed(b, t, ctx or "c1", replica=rep)
        else:
            b.add(t_ns=t, agent="scribe", agent_class="ambient_scribe", kind="lane_open", lane="code_blue",
                  claim_id="bg1", duration_ns=8 * S, replica=rep)
    tr = b.build()
    p = pol(bound=bound, budget=None if bound else budget(burst=burst, every_s=3), max_open=max_open, max_s=15,
            response=response, rate=RatePolicy(burst=burst + 1, interval_ns=2 * S), lanes=lanes())
    fast = decide(tr, p, REG, START)
    slow = decide(tr, p, REG, START, fast_path=False)
    assert fast.decision.tolist() == slow.decision.tolist()
    assert fast.reason.tolist() == slow.reason.tolist()
    assert fast.events == slow.events


def test_the_reason_codes_are_one_vocabulary():
    """The engine's, the kernel ABI's and the shared vocabulary's reasons are the same, in order
    (the kernel's codes index them)."""
    from paritybed.core import vocabulary
    from paritybed.enforcer import kernel_abi

    assert vocabulary.REASONS == kernel_abi.REASONS
    assert vocabulary.REASONS[13:] == ("out-of-context", "new-patient-budget", "context-opened", "context-not-in-envelope")
