"""The reference engine's semantics (docs/enforcement.md), case by case, at the exact edges.

These pin the decisions the kernel mirrors; an optimisation of enforcer/engine.py must keep them.
"""

from __future__ import annotations

import datetime as dt

import pytest

from paritybed.agents.trace import TraceBuilder
from paritybed.core.baa import Endpoint
from paritybed.enforcer.decisions import with_decisions
from paritybed.enforcer.engine import decide
from paritybed.enforcer.kernel_abi import ALERT, ALLOW, DENY, REASONS
from paritybed.enforcer.policy import AgentPolicy, FhirPolicy, LanePolicy, Pair, Policy, RatePolicy
from paritybed.enforcer.registry import Registry

S = 1_000_000_000
SERVER = "127.0.0.1:8080"
START = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)  # a Monday, 00:00 UTC
REG = Registry(version=7, endpoints=[
    Endpoint(name="embed", address="127.0.0.21:9443", status="active"),
    Endpoint(name="payer", address="127.0.0.22:443", status="active",
             effective_from=dt.date(2026, 1, 6), effective_to=dt.date(2026, 1, 6)),
    Endpoint(name="old", address="127.0.0.23:443", status="terminated"),
])


def pol(response: str = "deny", *, rate: RatePolicy | None = None, hold: int | None = None,
        lanes: dict[str, LanePolicy] | None = None, shapes: list[str] | None = None,
        egress: list[str] | None = None) -> Policy:
    return Policy(agents={"cds": AgentPolicy(
        agent_class="cds",
        fhir=FhirPolicy(server=SERVER, allow=[Pair(type="Observation", interaction="search")],
                        allow_shapes=shapes or []),
        rate=rate, egress=egress if egress is not None else ["embed", "payer"], lanes=lanes or {},
        response=response, quarantine_hold_s=hold)})


def fhir(b: TraceBuilder, t: int, typ: str = "Observation", inter: str = "search", **kw) -> None:
    b.add(t_ns=t, agent="cds", agent_class="cds", kind="fhir", resource_type=typ, interaction=inter, **kw)


def egress(b: TraceBuilder, t: int, address: str, **kw) -> None:
    b.add(t_ns=t, agent="cds", agent_class="cds", kind="egress", address=address, **kw)


def run(b: TraceBuilder, p: Policy, reg: Registry = REG):
    d = decide(b.build(), p, reg, START)
    return [int(x) for x in d.decision], [REASONS[int(x)] for x in d.reason], d.events


def test_envelope_pair_allowed_and_other_pair_denied():
    b = TraceBuilder("production")
    fhir(b, 1)
    fhir(b, 2, "Patient", "read")
    dec, why, ev = run(b, pol())
    assert dec == [ALLOW, DENY] and why == ["", "type-not-in-envelope"]
    assert ev == [{"row": 1, "t_ns": 2, "event": "deny", "reason": "type-not-in-envelope", "touch": "Patient:read"}]


def test_unclassifiable_shape_denied_unless_allowed():
    b = TraceBuilder("production")
    fhir(b, 1, shape="bundle")
    fhir(b, 2, shape="operation")
    dec, why, _ = run(b, pol(shapes=["operation"]))
    assert dec == [DENY, ALLOW] and why == ["unclassifiable", ""]


def test_agent_without_policy_is_unenforced():
    b = TraceBuilder("production")
    b.add(t_ns=1, agent="other", agent_class="cds", kind="fhir", resource_type="Patient", interaction="delete")
    dec, why, _ = run(b, pol())
    assert dec == [ALLOW] and why == ["unenforced"]


def test_gcra_edge_exactly_at_tau():
    # burst 3, T = 10 s: tau = 20 s.  Three back-to-back at t=0 fill the bucket (tat = 30 s).
    # At t = 10 s - 1 ns: tat - t = 20 s + 1 ns > tau -> rate-exceeded (state unchanged).
    # At t = 10 s exactly: tat - t = 20 s = tau -> allowed (the limit is inclusive).
    rate = RatePolicy(burst=3, interval_ns=10 * S)
    b = TraceBuilder("production")
    for _ in range(3):
        fhir(b, 0)
    fhir(b, 10 * S - 1)
    fhir(b, 10 * S)
    fhir(b, 10 * S)  # tat = 40 s now: 30 s > tau -> exceeded
    dec, why, _ = run(b, pol(rate=rate))
    assert dec == [ALLOW, ALLOW, ALLOW, DENY, ALLOW, DENY]
    assert why[3] == why[5] == "rate-exceeded"


def test_gcra_state_is_per_replica():
    rate = RatePolicy(burst=1, interval_ns=10 * S)
    b = TraceBuilder("production")
    fhir(b, 0, replica=0)
    fhir(b, 0, replica=1)
    fhir(b, 1, replica=0)
    dec, _, _ = run(b, pol(rate=rate))
    assert dec == [ALLOW, ALLOW, DENY]


def test_denied_pair_does_not_spend_tokens():
    rate = RatePolicy(burst=1, interval_ns=10 * S)
    b = TraceBuilder("production")
    fhir(b, 0, "Patient", "read")
    fhir(b, 1)
    dec, why, _ = run(b, pol(rate=rate))
    assert dec == [DENY, ALLOW]


def lane_policy(max_s: int = 600) -> dict[str, LanePolicy]:
    return {"code_blue": LanePolicy(allow=[Pair(type="Procedure", interaction="read")], max_duration_s=max_s)}


def test_lane_allows_its_pairs_until_exactly_the_expiry():
    b = TraceBuilder("production")
    b.add(t_ns=100, agent="cds", agent_class="cds", kind="lane_open", lane="code_blue", claim_id="c1",
          duration_ns=300 * S)
    fhir(b, 100 + 300 * S - 1, "Procedure", "read", lane="code_blue", claim_id="c1")
    fhir(b, 100 + 300 * S, "Procedure", "read", lane="code_blue", claim_id="c1")  # t == expiry: closed
    fhir(b, 200, "Procedure", "read", lane="code_blue", claim_id="other")  # unknown claim
    fhir(b, 201, "Procedure", "read")  # no claim
    fhir(b, 202, "Patient", "read", lane="code_blue", claim_id="c1")  # not a lane pair
    dec, why, ev = run(b, pol(lanes=lane_policy()))
    by_t = dict(zip([100, 200, 201, 202, 100 + 300 * S - 1, 100 + 300 * S], zip(dec, why)))
    assert by_t[100] == (ALLOW, "lane-opened")
    assert by_t[100 + 300 * S - 1] == (ALLOW, "lane")
    assert by_t[100 + 300 * S] == (DENY, "lane-expired")
    assert by_t[200] == (DENY, "type-not-in-envelope")
    assert by_t[201] == (DENY, "type-not-in-envelope")
    assert by_t[202] == (DENY, "type-not-in-envelope")
    opened = [e for e in ev if e["event"] == "lane-open"]
    assert opened == [{"row": 0, "t_ns": 100, "event": "lane-open", "lane": "code_blue", "expires_ns": 100 + 300 * S}]


def test_lane_duration_is_capped_by_the_policy():
    b = TraceBuilder("production")
    b.add(t_ns=0, agent="cds", agent_class="cds", kind="lane_open", lane="code_blue", claim_id="c1",
          duration_ns=3600 * S)
    fhir(b, 60 * S, "Procedure", "read", lane="code_blue", claim_id="c1")
    dec, why, _ = run(b, pol(lanes=lane_policy(max_s=60)))
    assert why == ["lane-opened", "lane-expired"]


def test_lane_of_a_class_not_in_the_policy_is_refused():
    b = TraceBuilder("production")
    b.add(t_ns=0, agent="cds", agent_class="cds", kind="lane_open", lane="rapid_response", claim_id="r1",
          duration_ns=60 * S)
    fhir(b, 1, "Procedure", "read", lane="rapid_response", claim_id="r1")
    dec, why, ev = run(b, pol(lanes=lane_policy()))
    assert dec == [DENY, DENY] and why == ["lane-not-in-envelope", "type-not-in-envelope"]
    assert {e["event"] for e in ev if e["row"] == 0} == {"lane-refused", "deny"}


def test_quarantine_holds_exactly_until_t_plus_hold_then_releases():
    b = TraceBuilder("production")
    fhir(b, 10 * S, "Patient", "read")  # violation -> quarantined until 70 s
    fhir(b, 70 * S - 1)
    egress(b, 70 * S - 1, "127.0.0.21:9443")  # connects are held too
    fhir(b, 70 * S)
    fhir(b, 70 * S, replica=1)  # other replica unaffected
    dec, why, ev = run(b, pol("quarantine", hold=60))
    assert dec == [DENY, DENY, DENY, ALLOW, ALLOW]
    assert why[:3] == ["type-not-in-envelope", "quarantined", "quarantined"]
    q = [e for e in ev if e["event"] == "quarantine"]
    assert q == [{"row": 0, "t_ns": 10 * S, "event": "quarantine", "reason": "type-not-in-envelope", "until_ns": 70 * S}]


def test_quarantine_without_hold_is_forever_and_kill_behaves_the_same():
    for mode in ("quarantine", "kill"):
        b = TraceBuilder("production")
        fhir(b, 0, "Patient", "read")
        fhir(b, 10**15)
        dec, why, ev = run(b, pol(mode, hold=None))
        assert dec == [DENY, DENY] and why[1] == "quarantined"
        assert any(e["event"] == mode for e in ev)


def test_deny_mode_denies_only_the_offending_request():
    b = TraceBuilder("production")
    fhir(b, 0, "Patient", "read")
    fhir(b, 1)
    dec, _, ev = run(b, pol("deny"))
    assert dec == [DENY, ALLOW]
    assert not any(e["event"] == "quarantine" for e in ev)


def test_alert_mode_allows_and_records():
    b = TraceBuilder("production")
    fhir(b, 0, "Patient", "read")
    egress(b, 1, "10.0.0.1:443")
    fhir(b, 2)
    dec, why, ev = run(b, pol("alert"))
    assert dec == [ALERT, ALERT, ALLOW]
    assert why == ["type-not-in-envelope", "egress-not-in-BAA", ""]
    assert [e["event"] for e in ev if e["event"] == "alert"] == ["alert", "alert"]


def test_observe_mode_allows_everything_and_records_first_contacts():
    b = TraceBuilder("production")
    fhir(b, 0, "Patient", "delete")
    egress(b, 1, "10.0.0.1:443")
    egress(b, 2, "10.0.0.1:443")
    b.add(t_ns=3, agent="cds", agent_class="cds", kind="lane_open", lane="ed_triage", claim_id="e1", duration_ns=S)
    dec, why, ev = run(b, pol("observe"))
    assert dec == [ALLOW] * 4 and why == ["observe", "observe", "observe", "lane-opened"]
    assert [e["event"] for e in ev] == ["first-contact", "lane-open"]
    assert ev[0]["registry_version"] == 7


def test_egress_reasons_and_the_baa_window():
    day = 86400 * S
    b = TraceBuilder("production")
    egress(b, 0, SERVER)  # own FHIR server
    egress(b, 1, "127.0.0.21:9443")  # registered, in policy
    egress(b, 2, "10.0.0.1:443")  # not in the registry
    egress(b, 3, "127.0.0.23:443")  # terminated BAA
    egress(b, day - 1, "127.0.0.22:443")  # window opens 2026-01-06 00:00 = t 1 day
    egress(b, day, "127.0.0.22:443")
    egress(b, 2 * day - 1, "127.0.0.22:443")  # effective_to inclusive: until the next midnight
    egress(b, 2 * day, "127.0.0.22:443")
    dec, why, ev = run(b, pol(egress=["embed", "payer", "old"]))
    assert why == ["", "", "egress-not-in-BAA", "egress-not-in-BAA", "egress-not-in-BAA", "", "", "egress-not-in-BAA"]
    b2 = TraceBuilder("production")
    egress(b2, 1, "127.0.0.21:9443")
    _, why2, _ = run(b2, pol(egress=["payer"]))
    assert why2 == ["egress-not-in-envelope"]


def test_first_contact_recorded_once_per_replica_and_address_with_the_registry_version():
    b = TraceBuilder("production")
    egress(b, 1, "127.0.0.21:9443")
    egress(b, 2, "127.0.0.21:9443")
    egress(b, 3, "127.0.0.21:9443", replica=1)
    egress(b, 4, "10.0.0.1:443")
    _, _, ev = run(b, pol())
    fc = [e for e in ev if e["event"] == "first-contact"]
    assert [(e["row"], e["reason"], e["registry_version"]) for e in fc] == [
        (0, "", 7), (2, "", 7), (3, "egress-not-in-BAA", 7)]


def test_events_are_in_row_order_and_with_decisions_appends_columns():
    b = TraceBuilder("production")
    fhir(b, 0, "Patient", "read")
    fhir(b, 1 * S)
    fhir(b, 2 * S, "Patient", "read")
    tr = b.build()
    d = decide(tr, pol("quarantine", hold=1), REG, START)
    rows = [e["row"] for e in d.events]
    assert rows == sorted(rows)
    out = with_decisions(tr, d)
    assert out["decision"].to_pylist() == ["deny", "allow", "deny"]
    assert out["reason"].to_pylist() == ["type-not-in-envelope", "", "type-not-in-envelope"]


def test_record_allowed_adds_a_request_event_for_every_row():
    b = TraceBuilder("production")
    fhir(b, 0)
    fhir(b, 1, "Patient", "read")
    d = decide(b.build(), pol(), REG, START, record_allowed=True)
    assert [(e["row"], e["event"]) for e in d.events] == [(0, "request"), (1, "deny"), (1, "request")]


@pytest.mark.parametrize("n", [0])
def test_empty_trace(n):
    d = decide(TraceBuilder("production").build(), pol(), REG, START)
    assert len(d.decision) == 0 and d.events == []


# ------------------------------------------------------------------ fast path == general path
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ROW = st.tuples(
    st.integers(0, 4),  # kind: 0-2 fhir, 3 egress, 4 lane_open
    st.integers(0, 2),  # replica
    st.integers(0, 40 * S),  # time
    st.sampled_from([("Observation", "search"), ("Patient", "read"), ("Procedure", "read")]),
    st.sampled_from(["plain", "plain", "plain", "bundle"]),
    st.sampled_from(["", "c1", "c2"]),  # claim
    st.sampled_from(["127.0.0.21:9443", "10.0.0.1:443", SERVER]),
    st.sampled_from(["cds", "other"]),
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(_ROW, min_size=1, max_size=60), response=st.sampled_from(["deny", "quarantine", "kill", "alert", "observe"]),
       hold=st.sampled_from([None, 5, 30]), burst=st.integers(1, 4))
def test_fast_path_decides_exactly_like_the_general_path(rows, response, hold, burst):
    b = TraceBuilder("production")
    for kind, rep, t, (typ, inter), shape, claim, addr, agent in rows:
        common = dict(t_ns=t, agent=agent, agent_class="cds", replica=rep)
        if kind <= 2:
            b.add(kind="fhir", resource_type=typ, interaction=inter, shape=shape, claim_id=claim,
                  lane="code_blue" if claim else "", **common)
        elif kind == 3:
            b.add(kind="egress", address=addr, **common)
        else:
            b.add(kind="lane_open", lane="code_blue", claim_id=claim or "c1", duration_ns=10 * S, **common)
    tr = b.build()
    p = pol(response, rate=RatePolicy(burst=burst, interval_ns=3 * S), hold=hold, lanes=lane_policy(max_s=8))
    fast = decide(tr, p, REG, START)
    slow = decide(tr, p, REG, START, fast_path=False)
    assert fast.decision.tolist() == slow.decision.tolist()
    assert fast.reason.tolist() == slow.reason.tolist()
    assert fast.events == slow.events
