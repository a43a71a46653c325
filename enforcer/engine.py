"""The reference policy engine: the decision the kernel makes, in pure deterministic Python.

Model mode uses it to decide every trace row; the kernel programs in bpf/ implement the same
decision, and the differential test holds them to it request by request.  The semantics are
written down in docs/enforcement.md; change that, this file, bpf/ and the differential test
together.

Decision for one row of agent replica R at simulated time t (integer ns):

  lane_open rows (a break-glass activation, decided by the control plane):
     lane class in the policy  -> allow, lane (R, claim) open until t + min(requested, max)
     otherwise                  -> deny  lane-not-in-envelope
  fhir / egress rows:
   1. agent without a policy            -> allow (unenforced)
   2. response mode observe             -> allow (observe)
   3. R quarantined (t < q_until[R])    -> deny quarantined
   4. egress: address is the FHIR server -> allow
              no active BAA covering the address at t -> violation egress-not-in-BAA
              endpoint not in the agent's egress list -> violation egress-not-in-envelope
   5. fhir:   shape not plain and not allowed -> violation unclassifiable
              (type, interaction) allowed     -> ok
              a lane (R, claim) is open for a class whose pairs include it:
                  t < expiry -> ok (lane)      else violation lane-expired
              otherwise                        -> violation type-not-in-envelope
              ok and a rate limit: GCRA with T = interval_ns, tau = (burst-1)*T:
                  tat = max(tat[R], t); tat - t > tau -> violation rate-exceeded
                  else tat[R] = tat + T
   6. violation: alert -> alert (allowed, recorded); deny -> deny;
                 quarantine/kill -> deny and q_until[R] = t + hold (forever if no hold).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from paritybed.core.columns import codes
from paritybed.core.units import I64_MAX, NS_PER_S
from paritybed.enforcer.policy import AgentPolicy, Policy
from paritybed.enforcer.registry import Registry

ALLOW, DENY, ALERT = 0, 1, 2
DECISIONS = ("allow", "deny", "alert")

REASONS = (
    "",  # 0 allowed by the envelope
    "observe",  # 1 observe mode: allowed and recorded
    "lane",  # 2 allowed under an open break-glass lane
    "type-not-in-envelope",  # 3
    "rate-exceeded",  # 4
    "egress-not-in-BAA",  # 5
    "egress-not-in-envelope",  # 6
    "quarantined",  # 7
    "lane-expired",  # 8
    "unclassifiable",  # 9
    "lane-not-in-envelope",  # 10 lane_open refused: the policy has no lane of that class
    "lane-opened",  # 11 lane_open accepted
    "unenforced",  # 12 the agent has no policy
)
R = {name: i for i, name in enumerate(REASONS)}

_KIND = {"fhir": 0, "egress": 1, "lane_open": 2}
_MODE = {"observe": 0, "alert": 1, "deny": 2, "quarantine": 3, "kill": 4}


@dataclass
class Decisions:
    """Per-row decision and reason codes (aligned with the trace) plus the enforcement events."""

    decision: np.ndarray  # int8, DECISIONS index
    reason: np.ndarray  # int8, REASONS index
    events: list[dict[str, Any]] = field(default_factory=list)

    def decision_strings(self) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(self.decision.astype(np.int32)), pa.array(list(DECISIONS)))

    def reason_strings(self) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(self.reason.astype(np.int32)), pa.array(list(REASONS)))


def decide(trace: pa.Table, policy: Policy, registry: Registry, start: dt.datetime,
           *, record_allowed: bool = False, fast_path: bool = True) -> Decisions:
    """Decide every row of a trace (in its row order, which is time order) under a policy.

    ``start`` is the calendar instant of simulated t=0 (for BAA effective dates).  Events are
    produced for every non-plain decision (deny, alert, lane open/refusal, quarantine start,
    first contact of an agent with an endpoint); ``record_allowed`` adds one for every row, which
    is what observe mode does in the kernel.

    ``fast_path`` (default) decides the common row (a plain FHIR request whose pair is in the
    envelope, of an enforcing agent) with only the quarantine and token-bucket steps; every other
    row takes the general path.  ``fast_path=False`` sends every row through the general path:
    the same decisions (tests/test_engine.py holds them equal), kept as the readable reference.
    """
    n = trace.num_rows
    decision = np.zeros(n, dtype=np.int8)
    reason = np.zeros(n, dtype=np.int8)
    events: list[dict[str, Any]] = []
    if n == 0:
        return Decisions(decision, reason, events)

    kind_c, kind_v = codes(trace["kind"])
    kind_map = np.array([_KIND.get(k, 0) for k in kind_v], dtype=np.int8)
    kind = kind_map[kind_c]
    agent_c, agent_v = codes(trace["agent"])
    replica = trace["replica"].to_numpy().astype(np.int64)
    t_ns = trace["t_ns"].to_numpy()
    policies: list[AgentPolicy | None] = [policy.agents.get(a) for a in agent_v]

    # One state slot per (agent, replica).
    max_rep = int(replica.max()) + 1 if n else 1
    slot = agent_c * max_rep + replica
    n_slots = len(agent_v) * max_rep
    mode_of_agent = np.array([(_MODE[p.response] if p is not None else -1) for p in policies], dtype=np.int8)

    # ---- fhir rows: is the (type, interaction) in the base envelope? is the shape acceptable?
    type_c, type_v = codes(trace["resource_type"])
    inter_c, inter_v = codes(trace["interaction"])
    shape_c, shape_v = codes(trace["shape"])
    nt, ni = len(type_v), len(inter_v)
    pair_ok_tab = np.zeros((len(agent_v), nt, ni), dtype=bool)
    shape_ok_tab = np.zeros((len(agent_v), len(shape_v)), dtype=bool)
    for a, p in enumerate(policies):
        if p is None:
            continue
        allowed = p.allowed_pairs()
        for ti, tname in enumerate(type_v):
            for ii, iname in enumerate(inter_v):
                pair_ok_tab[a, ti, ii] = (tname, iname) in allowed
        shapes = set(p.fhir.allow_shapes)
        for si, sname in enumerate(shape_v):
            shape_ok_tab[a, si] = sname == "plain" or sname in shapes
    pair_ok = pair_ok_tab[agent_c, type_c, inter_c]
    shape_ok = shape_ok_tab[agent_c, shape_c]

    # ---- egress rows: stateless verdict except time windows (vectorised), quarantine in the loop.
    addr_c, addr_v = codes(trace["address"])
    by_addr = registry.by_address()
    lo = np.full(len(addr_v), I64_MAX, dtype=np.int64)  # empty window: not covered
    hi = np.full(len(addr_v), -I64_MAX - 1, dtype=np.int64)
    for i, a in enumerate(addr_v):
        e = by_addr.get(a)
        if e is not None and e.status == "active":
            lo[i], hi[i] = e.window_ns(start)
    covered = (lo[addr_c] <= t_ns) & (t_ns < hi[addr_c])
    in_env_tab = np.zeros((len(agent_v), len(addr_v)), dtype=bool)
    is_server_tab = np.zeros((len(agent_v), len(addr_v)), dtype=bool)
    for a, p in enumerate(policies):
        if p is None:
            continue
        names = set(p.egress)
        for i, addr in enumerate(addr_v):
            e = by_addr.get(addr)
            in_env_tab[a, i] = e is not None and e.name in names
            is_server_tab[a, i] = addr == p.fhir.server
    egress_v = np.where(covered, np.where(in_env_tab[agent_c, addr_c], 0, R["egress-not-in-envelope"]),
                        R["egress-not-in-BAA"]).astype(np.int8)
    egress_v[is_server_tab[agent_c, addr_c]] = 0

    # ---- per-slot parameters
    interval = [0] * n_slots
    tau = [0] * n_slots
    hold = [I64_MAX] * n_slots
    mode = [-1] * n_slots
    for a, p in enumerate(policies):
        for r in range(max_rep):
            s = a * max_rep + r
            mode[s] = int(mode_of_agent[a])
            if p is None:
                continue
            if p.rate is not None:
                interval[s] = p.rate.interval_ns
                tau[s] = (p.rate.burst - 1) * p.rate.interval_ns
            if p.quarantine_hold_s is not None:
                hold[s] = p.quarantine_hold_s * NS_PER_S

    lane_pairs: dict[tuple[int, str], set[tuple[str, str]]] = {}
    for a, p in enumerate(policies):
        if p is not None:
            for cls, lp in p.lanes.items():
                lane_pairs[(a, cls)] = {q.key() for q in lp.allow}

    # Claims and lane classes as dictionary codes: equal strings <-> equal codes, no per-row strings.
    claim_c, claim_v = codes(trace["claim_id"])
    claim = claim_c.tolist()
    has_claim = claim_c != (claim_v.index("") if "" in claim_v else -1)
    lane_c, lane_v = codes(trace["lane"]) if (kind == 2).any() else (None, None)
    duration = trace["duration_ns"].to_numpy() if lane_c is not None else None
    # 0: a plain FHIR row whose pair and shape are in the envelope (the fast path), 1: anything else
    common = (kind == 0) & shape_ok & pair_ok if fast_path else np.zeros(n, dtype=bool)
    L_code = (~common).astype(np.int8).tolist()

    # ---- the sequential pass: quarantine, lanes and token buckets are state.
    tat = [0] * n_slots
    q_until = [-1] * n_slots
    lanes: dict[tuple[int, str], tuple[str, int]] = {}
    seen_contact: set[tuple[int, int]] = set()

    L_kind = kind.tolist()
    L_slot = slot.tolist()
    L_t = t_ns.tolist()
    L_pair = pair_ok.tolist()
    L_shape = shape_ok.tolist()
    L_egress = egress_v.tolist()
    L_claim = has_claim.tolist()
    L_agent = agent_c.tolist()
    L_type = type_c.tolist()
    L_inter = inter_c.tolist()
    L_addr = addr_c.tolist()
    reg_version = registry.version
    dec = decision  # numpy writes are slower than list writes; collect in lists then convert
    D = [0] * n
    RS = [0] * n

    def violation(i: int, s: int, t: int, v: int) -> None:
        m = mode[s]
        if m == 1:  # alert
            D[i] = ALERT
        else:
            D[i] = DENY
            if m >= 3:  # quarantine or kill
                q_until[s] = t + hold[s] if hold[s] != I64_MAX else I64_MAX
                events.append({"row": i, "t_ns": t, "event": "quarantine" if m == 3 else "kill",
                               "reason": REASONS[v], "until_ns": q_until[s]})
        RS[i] = v

    for i, c, s, t in zip(range(n), L_code, L_slot, L_t):
        m = mode[s]
        if c == 0 and m >= 1:  # fast path: steps 3 and 5 (GCRA) of the general path below
            if q_until[s] > t:
                D[i] = DENY
                RS[i] = 7
                continue
            T = interval[s]
            if T:
                x = tat[s]
                if x < t:
                    x = t
                if x - t > tau[s]:
                    violation(i, s, t, 4)
                    continue
                tat[s] = x + T
            continue
        k = L_kind[i]
        if k == 2:  # lane_open
            a = L_agent[i]
            cls = lane_v[lane_c[i]]
            p = policies[a]
            if p is None:
                RS[i] = 12
                continue
            if cls in p.lanes or m == 0:
                max_ns = p.lanes[cls].max_duration_s * NS_PER_S if cls in p.lanes else int(duration[i])
                exp = t + min(int(duration[i]), max_ns)
                lanes[(s, claim[i])] = (cls, exp)
                RS[i] = R["lane-opened"]
                events.append({"row": i, "t_ns": t, "event": "lane-open", "lane": cls, "expires_ns": exp})
            else:
                D[i] = DENY
                RS[i] = R["lane-not-in-envelope"]
                events.append({"row": i, "t_ns": t, "event": "lane-refused", "lane": cls})
            continue
        if m == -1:
            RS[i] = 12
            continue
        if m == 0:
            RS[i] = 1
            if k == 1 and (s, L_addr[i]) not in seen_contact:
                seen_contact.add((s, L_addr[i]))
                events.append({"row": i, "t_ns": t, "event": "first-contact", "registry_version": reg_version})
            continue
        if q_until[s] > t:
            D[i] = DENY
            RS[i] = 7
            continue
        if k == 1:  # egress
            v = L_egress[i]
            if (s, L_addr[i]) not in seen_contact:
                seen_contact.add((s, L_addr[i]))
                events.append({"row": i, "t_ns": t, "event": "first-contact", "registry_version": reg_version,
                               "reason": REASONS[v]})
            if v:
                violation(i, s, t, v)
            continue
        # fhir
        if not L_shape[i]:
            violation(i, s, t, 9)
            continue
        via_lane = False
        if not L_pair[i]:
            v = 3
            if L_claim[i]:
                lane = lanes.get((s, claim[i]))
                if lane is not None:
                    pairs = lane_pairs.get((L_agent[i], lane[0]))
                    if pairs is not None and (type_v[L_type[i]], inter_v[L_inter[i]]) in pairs:
                        v = 0 if t < lane[1] else 8
                        via_lane = v == 0
            if v:
                violation(i, s, t, v)
                continue
        T = interval[s]
        if T:
            x = tat[s]
            if x < t:
                x = t
            if x - t > tau[s]:
                violation(i, s, t, 4)
                continue
            tat[s] = x + T
        if via_lane:
            RS[i] = 2

    dec[:] = D
    reason[:] = RS
    if record_allowed:
        have = {e["row"] for e in events}
        events.extend({"row": i, "t_ns": int(t_ns[i]), "event": "request"} for i in range(n) if i not in have)
        events.sort(key=lambda e: (e["row"], e["event"]))
    _decision_events(events, decision, reason, t_ns)
    return Decisions(decision, reason, events)


def _decision_events(events: list[dict[str, Any]], decision: np.ndarray, reason: np.ndarray, t_ns: np.ndarray) -> None:
    """Add one event per denied or alerted row, in row order (the kernel emits the same)."""
    rows = np.nonzero(decision != ALLOW)[0]
    have = {(e["row"], e["event"]) for e in events}
    for i in rows.tolist():
        ev = "deny" if decision[i] == DENY else "alert"
        if (i, ev) not in have:
            events.append({"row": i, "t_ns": int(t_ns[i]), "event": ev, "reason": REASONS[int(reason[i])]})
    events.sort(key=lambda e: (e["row"], e["event"]))


def with_decisions(trace: pa.Table, d: Decisions) -> pa.Table:
    """The trace with ``decision`` and ``reason`` columns appended (the replay table)."""
    return trace.append_column("decision", d.decision_strings()).append_column("reason", d.reason_strings())


def count_by(values: pa.Array, mask: np.ndarray) -> dict[str, int]:
    """Small helper for summaries: value counts of a column under a mask."""
    if not mask.any():
        return {}
    vc = pc.value_counts(values.filter(pa.array(mask)))
    return {str(x["values"]): int(x["counts"]) for x in vc.to_pylist()}
