"""Observe mode's product: the recorded kernel events as trace rows, and the envelope they imply
compiled into a policy (parity's policy_from_trace), so `paritybed enforce --mode observe` on a
real agent yields the policy to enforce it with.
"""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa

from paritybed.agents.trace import TraceBuilder
from paritybed.enforcer.policy import Policy
from paritybed.enforcer.registry import Registry
from paritybed.parity.compile import policy_from_trace


def trace_from_events(events: Iterable[dict[str, Any]], *, agent_class: str, fhir_server_addresses: set[str],
                      arm: str = "observed") -> pa.Table:
    """One trace row per recorded decision (kernel events 'request', 'deny', 'alert').

    Connects to the FHIR server itself are the agent's FHIR connections, not egress: left out.
    Break-glass claims are seen only as hashes, so requests made under a lane count as the
    agent's ordinary pairs."""
    tb = TraceBuilder(arm)
    for e in events:
        if e.get("event") not in ("request", "deny", "alert") or "agent" not in e:
            continue
        common = {"t_ns": int(e["t_ns"]), "agent": e["agent"], "agent_class": agent_class, "replica": int(e.get("replica", 0))}
        if e["kind"] == "fhir":
            tb.add(**common, kind="fhir", method=e.get("method", ""), resource_type=e.get("resource_type", ""),
                   interaction=e.get("interaction", ""), shape=e.get("shape", "plain"))
        elif e.get("address") not in fhir_server_addresses:
            tb.add(**common, kind="egress", address=e["address"], endpoint=e.get("endpoint") or "")
    return tb.build()


def observed_policy(trace: pa.Table, *, fhir_server: str, fhir_base: str, registry: Registry, agent: str) -> Policy:
    """The policy that allows what was observed (with parity's default margins), response deny."""
    return policy_from_trace(trace, fhir_server=fhir_server, fhir_base=fhir_base, registry=registry,
                             responses={agent: "deny"})
