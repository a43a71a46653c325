"""Observe mode's product: the recorded kernel events as trace rows, and the envelope they imply
compiled into a policy (parity's policy_from_trace), so `paritybed enforce --mode observe` on a
real agent yields the policy to enforce it with: every pair its requests touched and, when the
events name patients and the control plane recorded launch contexts, its context binding.
"""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa

from paritybed.agents.trace import TraceBuilder
from paritybed.enforcer.policy import Policy
from paritybed.enforcer.registry import Registry
from paritybed.parity.compile import policy_from_trace


#: What a FHIR event may say beyond its primary pair, and the trace column each fills: every
#: touch (``Type:interaction``), the patients and encounters named (ids or their hashes: compared
#: only with each other), an unknown patient, the launch context presented.
NAMES = {"touches": "touches", "named_patients": "named_patients", "named_encounters": "named_encounters",
         "unknown_patient": "unknown_patient", "context": "launch_context"}


def trace_from_events(events: Iterable[dict[str, Any]], *, agent_class: str, fhir_server_addresses: set[str],
                      arm: str = "observed") -> pa.Table:
    """One trace row per recorded decision (kernel events 'request', 'deny', 'alert'), and one
    per launch context the control plane opened or closed ('context-open' with ``context``,
    ``patient``, ``encounter``, ``duration_ns``; 'context-close').

    Connects to the FHIR server itself are the agent's FHIR connections, not egress: left out.
    Break-glass claims are seen only as hashes, so requests made under a lane count as the
    agent's ordinary pairs.  A FHIR event carrying the keys of ``NAMES`` gives the learner every
    pair the request touched and what it named; without them only the primary pair is learned
    and the request names nobody (so no context section is compiled for the agent)."""
    tb = TraceBuilder(arm)
    for e in events:
        if "agent" not in e:
            continue
        common = {"t_ns": int(e["t_ns"]), "agent": e["agent"], "agent_class": agent_class, "replica": int(e.get("replica", 0))}
        if e.get("event") in ("context-open", "context-close"):
            tb.add(**common, kind=e["event"].replace("-", "_"), launch_context=str(e.get("context", "")),
                   patient_id=str(e.get("patient", "")), encounter_id=str(e.get("encounter", "")),
                   duration_ns=int(e.get("duration_ns", 0)))
            continue
        if e.get("event") not in ("request", "deny", "alert"):
            continue
        if e["kind"] == "fhir":
            named = {col: e[key] for key, col in NAMES.items() if key in e}
            tb.add(**common, kind="fhir", method=e.get("method", ""), resource_type=e.get("resource_type", ""),
                   interaction=e.get("interaction", ""), shape=e.get("shape", "plain"), **named)
        elif e.get("address") not in fhir_server_addresses:
            tb.add(**common, kind="egress", address=e["address"], endpoint=e.get("endpoint") or "")
    return tb.build()


def observed_policy(trace: pa.Table, *, fhir_server: str, fhir_base: str, registry: Registry, agent: str) -> Policy:
    """The policy that allows what was observed (with parity's default margins), response deny."""
    return policy_from_trace(trace, fhir_server=fhir_server, fhir_base=fhir_base, registry=registry,
                             responses={agent: "deny"})
