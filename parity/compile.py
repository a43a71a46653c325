"""Compile a learned envelope into the enforceable ``policy.json`` (enforcer.policy models).

Margins (the scenario's ``policy:`` section, docs/policy.md):

* ``min_pair_count``: a (type, interaction) enters ``fhir.allow`` when staging used it at least
  this many times outside break-glass lanes (default 1: anything staging did is allowed).
* ``rate_margin``: the rate limit is a token bucket per replica (the kernel enforces per cgroup),
  written as GCRA in integer ns.  ``burst = ceil(rate_margin * P5)`` where P5 is the peak sliding
  5-minute count of the busiest replica in staging, and ``interval_ns = 300e9 // burst``: a
  replica may spend at once what staging's busiest replica ever spent in 5 minutes (times the
  margin), and the bucket refills at that same amount per 5 minutes.  A sustained production
  rate above ``rate_margin`` times staging's busiest 5 minutes is what it blocks.
* ``lane_duration_margin``: a lane's ``max_duration_s`` is the longest duration an activation
  requested in staging (or, if longer, the longest time an activation was used), times the margin.
* launch contexts (``context``, docs/policy.md): ``bound`` when every legitimate staging request
  naming a patient was in its context; ``max_duration_s`` = ``context_duration_margin`` x the
  longest context held, at least ``CONTEXT_MIN_S``; ``max_open`` = ``context_open_margin`` x the
  most contexts open at once on one replica; ``unscoped`` = the pairs used naming nobody; for an
  agent that is not bound, a ``new_patient_budget`` learned like the rate limit from the busiest
  5 minutes of new patients on one replica, times ``new_patient_margin``.  An agent that neither
  had launch contexts nor named a patient in staging gets no ``context`` section.
* ``quarantine_hold_min``: how long a quarantined replica stays quarantined (None: until released).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from paritybed.core.errors import InputError
from paritybed.core.units import FIVE_MIN_NS
from paritybed.enforcer.policy import (AgentPolicy, ContextPolicy, FhirPolicy, LanePolicy, NewPatientBudget, Pair, Policy,
                                      PolicySource, RatePolicy)
from paritybed.enforcer.registry import Registry
from paritybed.parity.envelope import AgentEnvelope, Envelope, learn_envelope
from paritybed.parity.launch_contexts import ContextSeen
from paritybed.scenarios import Scenario


@dataclass(frozen=True)
class Margins:
    """How much head-room the compiled policy leaves over what staging showed."""

    rate_margin: float = 1.5
    lane_duration_margin: float = 1.0
    quarantine_hold_min: float | None = 15
    min_pair_count: int = 1
    context_duration_margin: float = 2.0
    context_open_margin: float = 2.0
    new_patient_margin: float = 2.0

    @classmethod
    def from_mapping(cls, m: dict[str, Any] | None) -> "Margins":
        if not m:
            return cls()
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(m) - known)
        if bad:
            raise InputError(f"unknown policy margin(s) {bad}; expected some of {sorted(known)}")
        out = cls(**m)
        low = [k for k in ("rate_margin", "lane_duration_margin", "context_duration_margin", "context_open_margin",
                           "new_patient_margin", "min_pair_count") if getattr(out, k) < 1]
        if low:
            raise InputError(f"policy margins: {', '.join(low)} must be >= 1")
        return out

    @classmethod
    def from_settings(cls, settings: Any) -> "Margins":
        """From a scenario's ``policy:`` section (paritybed.scenarios.PolicySettings)."""
        return cls(**{k: getattr(settings, k) for k in cls.__dataclass_fields__})

    def as_policy_margins(self) -> dict[str, float | int | None]:
        return dict(asdict(self))


def rate_policy(peak_5min: int, rate_margin: float) -> RatePolicy | None:
    """GCRA parameters from the busiest replica's peak 5-minute count (None when nothing was seen)."""
    if peak_5min <= 0:
        return None
    burst = max(1, math.ceil(rate_margin * peak_5min - 1e-9))
    interval = FIVE_MIN_NS // burst
    return RatePolicy(burst=burst, interval_ns=interval, rate_per_s=round(1e9 / interval, 6))


#: A launch context lives at least this long (s): a query whose requests take seconds longer than
#: staging's (a slow server, a retry) must not outlive its context, and a minute more of the one
#: patient it names is all a longer context admits.
CONTEXT_MIN_S = 60


def _times(margin: float, x: float) -> int:
    return max(1, math.ceil(margin * x - 1e-9))


def context_policy(seen: ContextSeen, margins: Margins) -> ContextPolicy | None:
    """The ``context`` section from what staging showed of the agent's launch contexts (module
    doc); None when staging showed neither contexts nor a named patient."""
    if not seen.contexts and not seen.named:
        return None
    unscoped = sorted(p for p, n in seen.unscoped.items() if n >= margins.min_pair_count)
    budget = None
    if not seen.bound:
        r = rate_policy(max(1, seen.new_patient_peak_5min), margins.new_patient_margin)
        assert r is not None
        budget = NewPatientBudget(burst=r.burst, interval_ns=r.interval_ns, per_5min=float(r.burst))
    return ContextPolicy(
        bound=seen.bound,
        max_duration_s=max(CONTEXT_MIN_S, _times(margins.context_duration_margin, seen.longest_held_ns / 1e9))
        if seen.contexts else None,
        max_open=_times(margins.context_open_margin, seen.max_open) if seen.contexts else None,
        unscoped=[Pair(type=t, interaction=i) for t, i in unscoped], new_patient_budget=budget)


def agent_policy(env: AgentEnvelope, *, fhir_server: str, fhir_base: str, response: str, margins: Margins,
                 registry: Registry | None) -> AgentPolicy:
    allow = sorted(p for p, n in env.pairs.items() if n >= margins.min_pair_count)
    shapes = sorted(s for s, n in env.shapes.items() if n >= margins.min_pair_count)
    egress: set[str] = set()
    for addr, seen in env.egress.items():
        if addr == fhir_server:
            continue
        if registry is not None:
            if seen["registry_name"]:
                egress.add(seen["registry_name"])  # no BAA entry: nothing a policy name could allow
        elif seen["endpoint"]:
            egress.add(seen["endpoint"])
    lanes: dict[str, LanePolicy] = {}
    base = set(allow)
    for cls, lane in sorted(env.lanes.items()):
        extra = sorted(p for p in lane.pairs if p not in base)
        longest = max(lane.max_requested_ns, lane.longest_use_ns)
        max_s = max(1, math.ceil(margins.lane_duration_margin * longest / 1e9 - 1e-9))
        lanes[cls] = LanePolicy(allow=[Pair(type=t, interaction=i) for t, i in extra], max_duration_s=max_s)
    hold = None if margins.quarantine_hold_min is None else max(1, int(round(margins.quarantine_hold_min * 60)))
    return AgentPolicy(
        agent_class=env.agent_class,
        fhir=FhirPolicy(server=fhir_server, base=fhir_base, allow=[Pair(type=t, interaction=i) for t, i in allow],
                        allow_shapes=shapes),
        rate=rate_policy(env.rate.peak_5min, margins.rate_margin),
        egress=sorted(egress),
        lanes=lanes,
        context=context_policy(env.launch, margins),
        response=response,
        quarantine_hold_s=hold,
    )


def compile_policy(envelope: Envelope, *, fhir_server: str, fhir_base: str = "/fhir",
                   responses: dict[str, str] | None = None, margins: Margins | None = None,
                   registry: Registry | None = None, source: PolicySource | None = None,
                   version: int = 1, parent: str | None = None, created: str = "") -> Policy:
    """The sealed (content-hashed) policy for every agent of the envelope."""
    margins = margins or Margins()
    responses = responses or {}
    agents = {name: agent_policy(env, fhir_server=fhir_server, fhir_base=fhir_base,
                                 response=responses.get(name, "deny"), margins=margins, registry=registry)
              for name, env in sorted(envelope.agents.items())}
    pol = Policy(version=version, parent=parent, created=created, source=source or PolicySource(),
                 margins=margins.as_policy_margins(), agents=agents)
    return pol.sealed()


def compile_scenario_policy(envelope: Envelope, scenario: Scenario, registry: Registry, source: PolicySource, *,
                            version: int = 1, parent: str | None = None) -> Policy:
    """``compile_policy`` with everything a scenario decides: its FHIR server and base, each
    agent's response mode, its margins, and its start instant as the policy's creation time."""
    return compile_policy(envelope, fhir_server=scenario.policy.fhir_server, fhir_base=scenario.policy.fhir_base,
                          responses={a.name: a.response_mode() for a in scenario.agents},
                          margins=Margins.from_settings(scenario.policy), registry=registry, source=source,
                          version=version, parent=parent, created=scenario.start.datetime().isoformat())


def trace_digest(trace: pa.Table) -> str:
    """sha256 over the trace's values column by column (independent of chunking and dictionary
    order), so a policy names the exact trace it was learned from."""
    h = hashlib.sha256()
    for name in trace.column_names:
        col = trace[name]
        if pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        h.update(name.encode() + b"\0")
        if pa.types.is_list(arr.type):  # list<string>: the lengths, then the values
            h.update(np.ascontiguousarray(pc.list_value_length(arr).to_numpy(zero_copy_only=False)).tobytes())
            arr = pc.list_flatten(arr)
        if pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type):
            h.update(np.ascontiguousarray(arr.to_numpy(zero_copy_only=False)).tobytes())
        else:
            _string_bytes(h, arr)
    return "sha256:" + h.hexdigest()


def _string_bytes(h: Any, arr: pa.Array) -> None:
    """A string array's offsets (from 0) and bytes into the digest ``h``."""
    arr = arr.cast(pa.large_string())
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    h.update((offsets - offsets[0]).tobytes())
    h.update(bufs[2].to_pybytes()[offsets[0]:offsets[-1]] if bufs[2] is not None else b"")


def policy_from_trace(trace: pa.Table, *, fhir_server: str, fhir_base: str = "/fhir",
                      responses: dict[str, str] | None = None, margins: dict | None = None,
                      registry: Registry | None = None) -> Policy:
    """Learn the envelope of ``trace`` and compile it: the one call ``paritybed enforce`` needs.

    ``responses`` maps agent name -> response mode (default ``deny``); ``margins`` takes the keys
    of :class:`Margins`; with a ``registry`` egress endpoints are named as the BAA registry names
    them (addresses without a registry entry are left out: no policy could allow them), without
    one the agent's own endpoint names are used.
    """
    env = learn_envelope(trace, registry)
    arm = ""
    if trace.num_rows:
        arm = str(trace["arm"][0].as_py())
    src = PolicySource(arm=arm, trace_sha256=trace_digest(trace))
    return compile_policy(env, fhir_server=fhir_server, fhir_base=fhir_base, responses=responses,
                          margins=Margins.from_mapping(margins), registry=registry, source=src)
