"""The reference policy engine: the decision the kernel makes, in pure deterministic Python.

Model mode uses it to decide every trace row; the kernel programs in bpf/ implement the same
decision, and the differential test holds them to it request by request.  The semantics are
written down in docs/enforcement.md; change that, this file, bpf/ and the differential test
together.  The reason codes are the kernel's (kernel_abi mirrors bpf/paritybed.h).

A decision has two parts, as in the kernel:

* **tables** (``build_tables``): everything about a row that does not depend on what happened
  before it, computed for all rows at once: is the (type, interaction) in the envelope, is the
  shape allowed, what does the BAA registry say of an egress address at t, and each replica's
  rate, hold and response mode;
* **the sequential pass** (``Pass``): the state that does depend on the past, row after row in
  time order: quarantines, open break-glass lanes and token buckets.

The steps of docs/enforcement.md for one row of replica R at time t (integer ns):

  lane_open rows (a break-glass activation, decided by the control plane):
     AgentPolicy.lane_expiry: the lane (R, claim) opens, or is refused  lane-not-in-envelope
  fhir / egress rows:
   1. agent without a policy             -> allow unenforced
   2. response mode observe              -> allow observe
   3. R quarantined (t < q_until[R])     -> deny quarantined
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from paritybed.core.columns import codes
from paritybed.core.units import I64_MAX, NS_PER_S
from paritybed.enforcer.decisions import Decisions
from paritybed.enforcer.kernel_abi import (
    ALERT,
    ALLOW,
    DENY,
    MODES,
    R_LANE,
    R_LANE_EXPIRED,
    R_LANE_NOT_IN_ENVELOPE,
    R_LANE_OPENED,
    R_NOT_BAA,
    R_NOT_ENVELOPE,
    R_OBSERVE,
    R_OK,
    R_QUARANTINED,
    R_RATE,
    R_TYPE,
    R_UNCLASSIFIABLE,
    R_UNENFORCED,
    REASONS,
)
from paritybed.enforcer.policy import AgentPolicy, Policy
from paritybed.enforcer.registry import Registry

FHIR, EGRESS, LANE_OPEN = 0, 1, 2  # row kinds
_KIND = {"fhir": FHIR, "egress": EGRESS, "lane_open": LANE_OPEN}
UNENFORCED = -1  # the mode of an agent without a policy
M_OBSERVE, M_ALERT, M_QUARANTINE, M_KILL = MODES["observe"], MODES["alert"], MODES["quarantine"], MODES["kill"]


# ------------------------------------------------------------------------------------ tables
@dataclass
class Tables:
    """Per-row facts and per-replica parameters, before any state (module doc)."""

    n: int
    t: list[int]
    kind: list[int]
    slot: list[int]  # one state slot per (agent, replica)
    agent: list[int]  # agent code (index into policies)
    pair_ok: list[bool]  # (type, interaction) in the agent's envelope
    shape_ok: list[bool]  # plain, or a family the policy allows
    egress_reason: list[int]  # R_OK, R_NOT_BAA or R_NOT_ENVELOPE (egress rows)
    address: list[int]  # address code (first contacts are per (replica, address))
    has_claim: list[bool]
    claim: list[int]  # claim code
    pair: list[tuple[str, str]]  # (type, interaction) of fhir rows that need a lane lookup, else ("", "")
    lane: list[str]  # lane class of lane_open rows
    duration: list[int]  # requested lane duration of lane_open rows
    common: list[bool]  # the fast path may decide the row (a plain fhir row inside the envelope)
    policies: list[AgentPolicy | None]
    mode: list[int]  # per slot: MODES value, or UNENFORCED
    interval: list[int]  # per slot: GCRA T (0: no rate limit)
    tau: list[int]  # per slot: GCRA tolerance
    hold: list[int]  # per slot: quarantine hold (I64_MAX: until released)
    lane_pairs: dict[tuple[int, str], set[tuple[str, str]]]  # (agent, lane class) -> pairs
    registry_version: int


def build_tables(trace: pa.Table, policy: Policy, registry: Registry, start: dt.datetime,
                 *, fast_path: bool = True) -> Tables:
    """Everything stateless about every row, vectorised over the trace."""
    n = trace.num_rows
    kind_c, kind_v = codes(trace["kind"])
    kind = np.array([_KIND.get(k, FHIR) for k in kind_v], dtype=np.int8)[kind_c] if n else np.zeros(0, np.int8)
    agent_c, agent_v = codes(trace["agent"])
    replica = trace["replica"].to_numpy().astype(np.int64)
    t_ns = trace["t_ns"].to_numpy()
    policies: list[AgentPolicy | None] = [policy.agents.get(a) for a in agent_v]
    max_rep = int(replica.max()) + 1 if n else 1
    slot = agent_c * max_rep + replica

    # fhir rows: is the (type, interaction) in the base envelope?  is the shape acceptable?
    type_c, type_v = codes(trace["resource_type"])
    inter_c, inter_v = codes(trace["interaction"])
    shape_c, shape_v = codes(trace["shape"])
    pair_tab = np.zeros((len(agent_v), len(type_v), len(inter_v)), dtype=bool)
    shape_tab = np.zeros((len(agent_v), len(shape_v)), dtype=bool)
    for a, p in enumerate(policies):
        if p is None:
            continue
        allowed = p.allowed_pairs()
        for ti, tname in enumerate(type_v):
            for ii, iname in enumerate(inter_v):
                pair_tab[a, ti, ii] = (tname, iname) in allowed
        shapes = set(p.fhir.allow_shapes)
        for si, sname in enumerate(shape_v):
            shape_tab[a, si] = sname == "plain" or sname in shapes
    pair_ok = pair_tab[agent_c, type_c, inter_c]
    shape_ok = shape_tab[agent_c, shape_c]

    # egress rows: the registry's verdict at t and the agent's envelope (quarantine is state).
    addr_c, addr_v = codes(trace["address"])
    egress_reason = _egress_reasons(policies, registry, start, agent_c, addr_c, addr_v, t_ns)

    # break-glass: claims as codes (equal strings <-> equal codes), lane rows' class and duration
    claim_c, claim_v = codes(trace["claim_id"])
    has_claim = claim_c != (claim_v.index("") if "" in claim_v else -1)
    lane_rows = kind == LANE_OPEN
    lane = [""] * n
    duration = [0] * n
    if lane_rows.any():
        lane_c, lane_v = codes(trace["lane"])
        dur = trace["duration_ns"].to_numpy()
        for i in np.nonzero(lane_rows)[0].tolist():
            lane[i], duration[i] = lane_v[lane_c[i]], int(dur[i])
    needs_lane = (kind == FHIR) & ~pair_ok & has_claim
    pair = [("", "")] * n
    for i in np.nonzero(needs_lane)[0].tolist():
        pair[i] = (type_v[type_c[i]], inter_v[inter_c[i]])

    common = (kind == FHIR) & shape_ok & pair_ok if fast_path else np.zeros(n, dtype=bool)
    mode, interval, tau, hold = _slot_parameters(policies, max_rep)
    lane_pairs = {(a, cls): {q.key() for q in lp.allow}
                  for a, p in enumerate(policies) if p is not None for cls, lp in p.lanes.items()}
    return Tables(n=n, t=t_ns.tolist(), kind=kind.tolist(), slot=slot.tolist(), agent=agent_c.tolist(),
                  pair_ok=pair_ok.tolist(), shape_ok=shape_ok.tolist(), egress_reason=egress_reason.tolist(),
                  address=addr_c.tolist(), has_claim=has_claim.tolist(), claim=claim_c.tolist(), pair=pair,
                  lane=lane, duration=duration, common=common.tolist(), policies=policies, mode=mode,
                  interval=interval, tau=tau, hold=hold, lane_pairs=lane_pairs, registry_version=registry.version)


def _egress_reasons(policies: list[AgentPolicy | None], registry: Registry, start: dt.datetime, agent_c: np.ndarray,
                    addr_c: np.ndarray, addr_v: list[str], t_ns: np.ndarray) -> np.ndarray:
    """Step 4 of every row as if it were an egress connect: R_OK, R_NOT_BAA or R_NOT_ENVELOPE."""
    by_addr = registry.by_address()
    lo = np.full(len(addr_v), I64_MAX, dtype=np.int64)  # empty window: not covered
    hi = np.full(len(addr_v), -I64_MAX - 1, dtype=np.int64)
    for i, a in enumerate(addr_v):
        e = by_addr.get(a)
        if e is not None and e.status == "active":
            lo[i], hi[i] = e.window_ns(start)
    covered = (lo[addr_c] <= t_ns) & (t_ns < hi[addr_c])
    in_env = np.zeros((len(policies), len(addr_v)), dtype=bool)
    is_server = np.zeros((len(policies), len(addr_v)), dtype=bool)
    for a, p in enumerate(policies):
        if p is None:
            continue
        names = set(p.egress)
        for i, addr in enumerate(addr_v):
            e = by_addr.get(addr)
            in_env[a, i] = e is not None and e.name in names
            is_server[a, i] = addr == p.fhir.server
    reason = np.where(covered, np.where(in_env[agent_c, addr_c], R_OK, R_NOT_ENVELOPE), R_NOT_BAA).astype(np.int8)
    reason[is_server[agent_c, addr_c]] = R_OK
    return reason


def _slot_parameters(policies: list[AgentPolicy | None], max_rep: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Per replica slot: response mode, GCRA interval and tolerance, quarantine hold."""
    mode, interval, tau, hold = [], [], [], []
    for p in policies:
        for _ in range(max_rep):
            mode.append(MODES[p.response] if p is not None else UNENFORCED)
            rate = p.rate if p is not None else None
            interval.append(rate.interval_ns if rate is not None else 0)
            tau.append((rate.burst - 1) * rate.interval_ns if rate is not None else 0)
            held = p is not None and p.quarantine_hold_s is not None
            hold.append(p.quarantine_hold_s * NS_PER_S if held else I64_MAX)
    return mode, interval, tau, hold


# ------------------------------------------------------------------------------------ the pass
class Pass:
    """The sequential decision pass over the tables: quarantine, lanes and token buckets are
    state per replica (docs/enforcement.md)."""

    def __init__(self, tab: Tables) -> None:
        self.tab = tab
        n_slots = len(tab.mode)
        self.decision = [ALLOW] * tab.n
        self.reason = [R_OK] * tab.n
        self.events: list[dict[str, Any]] = []
        self.tat = [0] * n_slots  # GCRA theoretical arrival time
        self.q_until = [-1] * n_slots  # quarantined while t < q_until
        self.lanes: dict[tuple[int, int], tuple[str, int]] = {}  # (slot, claim) -> (class, expiry)
        self.seen_contact: set[tuple[int, int]] = set()  # (slot, address) already contacted

    def run(self) -> None:
        tab = self.tab
        D, RS, q_until, tat, interval, tau, mode = self.decision, self.reason, self.q_until, self.tat, tab.interval, tab.tau, tab.mode
        for i, c, s, t in zip(range(tab.n), tab.common, tab.slot, tab.t):
            if c and mode[s] >= M_ALERT:
                # The common row, a plain request inside the envelope of an enforcing agent:
                # only step 3 (quarantine) and the rate limit of step 5 can refuse it.
                if q_until[s] > t:
                    D[i] = DENY
                    RS[i] = R_QUARANTINED
                    continue
                T = interval[s]
                if T:
                    x = tat[s] if tat[s] > t else t
                    if x - t > tau[s]:
                        self.violation(i, s, t, R_RATE)
                        continue
                    tat[s] = x + T
                continue
            self.general(i, s, t)

    def general(self, i: int, s: int, t: int) -> None:
        """Steps 1-6 for one row, in the order of docs/enforcement.md."""
        tab = self.tab
        kind, m = tab.kind[i], tab.mode[s]
        if kind == LANE_OPEN:
            self.lane_open(i, s, t)
            return
        if m == UNENFORCED:
            self.reason[i] = R_UNENFORCED
            return
        if m == M_OBSERVE:
            self.reason[i] = R_OBSERVE
            if kind == EGRESS:
                self.first_contact(i, s, t, None)
            return
        if self.q_until[s] > t:
            self.decision[i] = DENY
            self.reason[i] = R_QUARANTINED
            return
        if kind == EGRESS:
            v = tab.egress_reason[i]
            self.first_contact(i, s, t, v)
            if v:
                self.violation(i, s, t, v)
            return
        if not tab.shape_ok[i]:
            self.violation(i, s, t, R_UNCLASSIFIABLE)
            return
        via_lane = False
        if not tab.pair_ok[i]:
            v = self.lane_verdict(i, s, t)
            if v:
                self.violation(i, s, t, v)
                return
            via_lane = True
        if self.rate_exceeded(s, t):
            self.violation(i, s, t, R_RATE)
            return
        if via_lane:
            self.reason[i] = R_LANE

    def lane_verdict(self, i: int, s: int, t: int) -> int:
        """A pair outside the envelope: R_OK if an open lane of the request's claim covers it,
        R_LANE_EXPIRED if that lane has expired, else R_TYPE."""
        tab = self.tab
        if not tab.has_claim[i]:
            return R_TYPE
        lane = self.lanes.get((s, tab.claim[i]))
        if lane is None:
            return R_TYPE
        pairs = tab.lane_pairs.get((tab.agent[i], lane[0]))
        if pairs is None or tab.pair[i] not in pairs:
            return R_TYPE
        return R_OK if t < lane[1] else R_LANE_EXPIRED

    def rate_exceeded(self, s: int, t: int) -> bool:
        """GCRA: over the limit leaves the bucket as it was; otherwise one request is counted."""
        T = self.tab.interval[s]
        if not T:
            return False
        x = max(self.tat[s], t)
        if x - t > self.tab.tau[s]:
            return True
        self.tat[s] = x + T
        return False

    def lane_open(self, i: int, s: int, t: int) -> None:
        """A break-glass activation, decided as the control plane decides it."""
        tab = self.tab
        p = tab.policies[tab.agent[i]]
        if p is None:
            self.reason[i] = R_UNENFORCED
            return
        cls = tab.lane[i]
        expiry = p.lane_expiry(cls, t, tab.duration[i])
        if expiry is None:
            self.decision[i] = DENY
            self.reason[i] = R_LANE_NOT_IN_ENVELOPE
            self.events.append({"row": i, "t_ns": t, "event": "lane-refused", "lane": cls})
            return
        self.lanes[(s, tab.claim[i])] = (cls, expiry)
        self.reason[i] = R_LANE_OPENED
        self.events.append({"row": i, "t_ns": t, "event": "lane-open", "lane": cls, "expires_ns": expiry})

    def first_contact(self, i: int, s: int, t: int, reason: int | None) -> None:
        """The first connect of a replica to an address is recorded with the registry version."""
        key = (s, self.tab.address[i])
        if key in self.seen_contact:
            return
        self.seen_contact.add(key)
        ev: dict[str, Any] = {"row": i, "t_ns": t, "event": "first-contact", "registry_version": self.tab.registry_version}
        if reason is not None:
            ev["reason"] = REASONS[reason]
        self.events.append(ev)

    def violation(self, i: int, s: int, t: int, v: int) -> None:
        """Step 6: the agent's response mode turns a violation into a decision."""
        m = self.tab.mode[s]
        self.reason[i] = v
        if m == M_ALERT:
            self.decision[i] = ALERT
            return
        self.decision[i] = DENY
        if m in (M_QUARANTINE, M_KILL):
            hold = self.tab.hold[s]
            self.q_until[s] = t + hold if hold != I64_MAX else I64_MAX
            self.events.append({"row": i, "t_ns": t, "event": "quarantine" if m == M_QUARANTINE else "kill",
                                "reason": REASONS[v], "until_ns": self.q_until[s]})


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
    if n == 0:
        return Decisions(np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int8), [])
    tab = build_tables(trace, policy, registry, start, fast_path=fast_path)
    run = Pass(tab)
    run.run()
    decision = np.array(run.decision, dtype=np.int8)
    reason = np.array(run.reason, dtype=np.int8)
    events = run.events
    if record_allowed:
        have = {e["row"] for e in events}
        events.extend({"row": i, "t_ns": tab.t[i], "event": "request"} for i in range(n) if i not in have)
        events.sort(key=lambda e: (e["row"], e["event"]))
    decision_events(events, decision, reason, tab.t)
    return Decisions(decision, reason, events, decided_by="engine")


def decision_events(events: list[dict[str, Any]], decision: np.ndarray, reason: np.ndarray, t_ns: list[int]) -> None:
    """Add one event per denied or alerted row, in row order (the kernel emits the same)."""
    rows = np.nonzero(decision != ALLOW)[0]
    have = {(e["row"], e["event"]) for e in events}
    for i in rows.tolist():
        ev = "deny" if decision[i] == DENY else "alert"
        if (i, ev) not in have:
            events.append({"row": i, "t_ns": int(t_ns[i]), "event": ev, "reason": REASONS[int(reason[i])]})
    events.sort(key=lambda e: (e["row"], e["event"]))
