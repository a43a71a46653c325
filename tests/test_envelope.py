"""Envelope learning and policy compilation on synthetic traces whose answer is known."""

from __future__ import annotations

import json

import pytest

from paritybed.agents.trace import TraceBuilder
from paritybed.core.baa import Endpoint
from paritybed.core.errors import InputError
from paritybed.enforcer.engine import decide
from paritybed.enforcer.policy import Policy, load_policy, save_policy
from paritybed.enforcer.registry import Registry
from paritybed.parity import learn_envelope, policy_from_trace
from paritybed.parity.compile import FIVE_MIN_NS, rate_policy, trace_digest

S = 1_000_000_000
SERVER = "127.0.0.1:8080"
REG = Registry(version=4, endpoints=[Endpoint(name="embeddings", address="127.0.0.21:9443", baa_id="BAA-1")])


def staging_trace() -> "pa.Table":  # noqa: F821
    b = TraceBuilder("staging")
    # replica 0: 30 Observation searches in the first 5 minutes, then 10 spread out
    for i in range(30):
        b.add(t_ns=i * 5 * S, agent="cds", agent_class="cds", replica=0, kind="fhir", method="GET",
              resource_type="Observation", interaction="search", context_id=f"q{i // 3}")
    for i in range(10):
        b.add(t_ns=3600 * S + i * 60 * S, agent="cds", agent_class="cds", replica=0, kind="fhir", method="GET",
              resource_type="Condition", interaction="search", context_id=f"r{i}")
    # replica 1: 12 reads
    for i in range(12):
        b.add(t_ns=i * 2 * S, agent="cds", agent_class="cds", replica=1, kind="fhir", method="GET",
              resource_type="Patient", interaction="read", context_id=f"q{i // 3}")
    b.add(t_ns=100 * S, agent="cds", agent_class="cds", kind="egress", endpoint="embed", address="127.0.0.21:9443")
    b.add(t_ns=101 * S, agent="cds", agent_class="cds", kind="egress", endpoint="evil", address="10.9.9.9:443")
    b.add(t_ns=102 * S, agent="cds", agent_class="cds", kind="egress", address=SERVER)
    # a Code Blue lane: opened for 30 min, used for 20 min, plus a late probe (expected deny)
    b.add(t_ns=7200 * S, agent="cds", agent_class="cds", kind="lane_open", lane="code_blue", claim_id="cb1",
          identity="Practitioner/1|physician", duration_ns=1800 * S)
    b.add(t_ns=7210 * S, agent="cds", agent_class="cds", kind="fhir", resource_type="Procedure", interaction="read",
          lane="code_blue", claim_id="cb1")
    b.add(t_ns=7200 * S + 1200 * S, agent="cds", agent_class="cds", kind="fhir", resource_type="Observation",
          interaction="search", lane="code_blue", claim_id="cb1")
    b.add(t_ns=7200 * S + 2000 * S, agent="cds", agent_class="cds", kind="fhir", resource_type="Procedure",
          interaction="read", lane="code_blue", claim_id="cb1", expected="deny", label="lane-expiry-probe")
    # an attack-like row labelled deny must not enter the envelope
    b.add(t_ns=9000 * S, agent="cds", agent_class="cds", kind="fhir", resource_type="Patient", interaction="search",
          expected="deny", label="attack:x")
    # a second agent with a non-plain shape
    b.add(t_ns=50 * S, agent="scribe", agent_class="ambient_scribe", kind="fhir", resource_type="Patient",
          interaction="read", shape="operation")
    b.add(t_ns=51 * S, agent="scribe", agent_class="ambient_scribe", kind="fhir", resource_type="Encounter",
          interaction="read")
    return b.build()


def test_envelope_counts_pairs_rates_contexts_egress_and_lanes():
    env = learn_envelope(staging_trace(), REG)
    cds = env.agents["cds"]
    assert cds.agent_class == "cds"
    assert cds.pairs == {("Observation", "search"): 30, ("Condition", "search"): 10, ("Patient", "read"): 12}
    assert ("Patient", "search") not in cds.pairs  # the attack row is not learned
    assert cds.rate.peak_5min_by_replica == {0: 30, 1: 12}
    assert cds.rate.peak_5min == 30
    assert cds.rate.peak_1min == 12  # replica 0: 12 searches 5 s apart fit in one minute; replica 1: 12
    assert cds.egress["127.0.0.21:9443"]["registry_name"] == "embeddings"
    assert cds.egress["10.9.9.9:443"]["registry_name"] is None
    lane = cds.lanes["code_blue"]
    assert lane.activations == 1
    assert lane.pairs == {("Procedure", "read"): 1, ("Observation", "search"): 1}
    assert lane.max_requested_ns == 1800 * S and lane.longest_use_ns == 1200 * S
    # contexts: q0..q9 (q0..q3 shared by both replicas) and r0..r9
    assert cds.contexts == 20
    assert cds.requests_per_context["max"] == 6.0
    assert cds.types_per_context["max"] == 2.0
    assert env.agents["scribe"].shapes == {"operation": 1}
    json.dumps(env.to_dict())  # serialisable


def test_compile_policy_applies_margins_and_registry():
    pol = policy_from_trace(staging_trace(), fhir_server=SERVER, responses={"cds": "quarantine"},
                            margins={"rate_margin": 2.0, "quarantine_hold_min": 5, "lane_duration_margin": 1.5},
                            registry=REG)
    cds = pol.agents["cds"]
    assert {p.key() for p in cds.fhir.allow} == {("Observation", "search"), ("Condition", "search"), ("Patient", "read")}
    assert cds.rate.burst == 60 and cds.rate.interval_ns == FIVE_MIN_NS // 60
    assert cds.egress == ["embeddings"]  # the unregistered address and the FHIR server are not egress
    assert cds.response == "quarantine" and cds.quarantine_hold_s == 300
    # the lane holds only the pairs the base envelope lacks; its duration carries the margin
    assert [p.key() for p in cds.lanes["code_blue"].allow] == [("Procedure", "read")]
    assert cds.lanes["code_blue"].max_duration_s == 2700
    assert pol.agents["scribe"].fhir.allow_shapes == ["operation"]
    assert pol.agents["scribe"].response == "deny"
    assert pol.hash == pol.computed_hash() and pol.source.arm == "staging"


def test_min_pair_count_drops_rare_pairs():
    pol = policy_from_trace(staging_trace(), fhir_server=SERVER, margins={"min_pair_count": 11})
    assert {p.key() for p in pol.agents["cds"].fhir.allow} == {("Observation", "search"), ("Patient", "read")}


def test_policy_round_trips_and_the_staging_trace_passes_its_own_policy(tmp_path):
    tr = staging_trace()
    pol = policy_from_trace(tr, fhir_server=SERVER, registry=REG)
    path = tmp_path / "policy.json"
    save_policy(pol, path)
    assert load_policy(path) == pol
    import datetime as dt

    d = decide(tr, pol, REG, dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc))
    expected_deny = {i for i, (e, a) in enumerate(zip(tr["expected"].to_pylist(), tr["address"].to_pylist()))
                     if e == "deny" or a == "10.9.9.9:443"}
    assert {i for i in range(tr.num_rows) if d.decision[i] != 0} == expected_deny


def test_bad_margin_is_an_input_error():
    with pytest.raises(InputError, match="unknown policy margin"):
        policy_from_trace(staging_trace(), fhir_server=SERVER, margins={"rate_margn": 2})
    with pytest.raises(InputError):
        policy_from_trace(staging_trace(), fhir_server=SERVER, margins={"rate_margin": 0.5})


def test_rate_policy_edges():
    assert rate_policy(0, 1.5) is None
    r = rate_policy(7, 1.0)
    assert r.burst == 7 and r.interval_ns == FIVE_MIN_NS // 7


def test_trace_digest_ignores_chunking_but_not_values():
    tr = staging_trace()
    import pyarrow as pa

    chunked = pa.concat_tables([tr.slice(0, 10), tr.slice(10)])
    assert trace_digest(chunked) == trace_digest(tr)
    other = TraceBuilder("staging")
    other.add(t_ns=1, agent="cds")
    assert trace_digest(other.build()) != trace_digest(tr)
    assert isinstance(Policy.model_validate_json(policy_from_trace(tr, fhir_server=SERVER).to_json()), Policy)
