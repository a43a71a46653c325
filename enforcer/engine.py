"""The reference policy engine: the decision the kernel makes, in pure deterministic Python.

Model mode uses it to decide every trace row; the kernel programs in bpf/ implement the same
decision, and the differential test holds them to it request by request.  The semantics are
written down in docs/enforcement.md; change that, this file, bpf/ and the differential test
together.  The reason codes are the kernel's (kernel_abi mirrors bpf/paritybed.h).

A decision has two parts, as in the kernel:

* **tables** (``build_tables``): everything about a row that does not depend on what happened
  before it, computed for all rows at once: are all the (type, interaction) pairs it touches in
  the envelope (and in its unscoped pairs), is the shape allowed, what does the BAA registry say
  of an egress address at t, which patients, encounters and launch context it names, and each
  replica's rate, budget, hold and response mode;
* **the sequential pass** (``Pass``): the state that does depend on the past, row after row in
  time order: quarantines, open break-glass lanes, open launch contexts, token buckets, the
  patients each replica has seen.

The steps of docs/enforcement.md for one row of replica R at time t (integer ns):

  lane_open rows (a break-glass activation, decided by the control plane):
     AgentPolicy.lane_expiry: the lane (R, claim) opens, or is refused  lane-not-in-envelope
  context_open / context_close rows (a launch context, decided by the control plane):
     AgentPolicy.context_expiry: the context (R, c) opens, or is refused  context-not-in-envelope
  fhir / egress rows:
   1. agent without a policy             -> allow unenforced
   2. response mode observe              -> allow observe
   3. R quarantined (t < q_until[R])     -> deny quarantined
   4. egress: address is the FHIR server -> allow
              no active BAA covering the address at t -> violation egress-not-in-BAA
              endpoint not in the agent's egress list -> violation egress-not-in-envelope
   5. fhir:   framing shape, or shape not plain and not allowed -> violation unclassifiable
              every touch allowed                              -> ok
              a lane (R, claim) is open for a class whose pairs hold every touch outside:
                  t < expiry -> ok (lane)      else violation lane-expired
              otherwise                        -> violation type-not-in-envelope (first touch outside)
              ok and the agent is bound: in context, or under an open lane (lane), else out-of-context
              ok, not bound, a new-patient budget, not under an open lane:
                  patients not named lately (+1 for an unknown patient) over the budget -> new-patient-budget
              ok and a rate limit: GCRA with T = interval_ns, tau = (burst-1)*T:
                  tat = max(tat[R], t); tat - t > tau -> violation rate-exceeded
                  else tat[R] = tat + T (and the new-patient budget is spent)
   6. violation: alert -> alert (allowed, recorded); deny -> deny;
                 quarantine/kill -> deny and q_until[R] = t + hold (forever if no hold).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from paritybed.core.columns import codes
from paritybed.core.units import I64_MAX, NS_PER_S
from paritybed.enforcer.decisions import Decisions
from paritybed.enforcer.kernel_abi import (
    ALERT,
    ALLOW,
    DENY,
    MODES,
    R_CONTEXT_NOT_IN_ENVELOPE,
    R_CONTEXT_OPENED,
    R_LANE,
    R_LANE_EXPIRED,
    R_LANE_NOT_IN_ENVELOPE,
    R_LANE_OPENED,
    R_NOT_BAA,
    R_NEW_PATIENT,
    R_NOT_ENVELOPE,
    R_OBSERVE,
    R_OK,
    R_OUT_OF_CONTEXT,
    R_QUARANTINED,
    R_RATE,
    R_TYPE,
    R_UNCLASSIFIABLE,
    R_UNENFORCED,
    REASONS,
)
from paritybed.enforcer.classify import FRAMING
from paritybed.enforcer.contexts import NPAT_MAX, Book, Naming, SeenPatients, naming
from paritybed.enforcer.policy import AgentPolicy, Policy
from paritybed.enforcer.registry import Registry

FHIR, EGRESS, LANE_OPEN, CONTEXT_OPEN, CONTEXT_CLOSE = 0, 1, 2, 3, 4  # row kinds
_KIND = {"fhir": FHIR, "egress": EGRESS, "lane_open": LANE_OPEN, "context_open": CONTEXT_OPEN,
         "context_close": CONTEXT_CLOSE}
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
    touch_ok: list[bool]  # every (type, interaction) the row touches is in the agent's envelope
    unscoped_ok: list[bool]  # every touch is among the agent's unscoped pairs
    shape_ok: list[bool]  # plain, or a family the policy allows
    egress_reason: list[int]  # R_OK, R_NOT_BAA or R_NOT_ENVELOPE (egress rows)
    address: list[int]  # address code (first contacts are per (replica, address))
    has_claim: list[bool]
    claim: list[int]  # claim code
    outside: list[tuple[tuple[str, str], ...]]  # touches outside the envelope, in order (fhir rows), else ()
    lane: list[str]  # lane class of lane_open rows
    duration: list[int]  # requested duration of lane_open and context_open rows
    names: Naming  # patients, encounters and the launch context of every row
    common: list[bool]  # the fast path may decide the row (a plain fhir row inside the envelope)
    policies: list[AgentPolicy | None]
    bound: list[bool]  # per agent: bound to its launch contexts
    mode: list[int]  # per slot: MODES value, or UNENFORCED
    interval: list[int]  # per slot: GCRA T (0: no rate limit)
    tau: list[int]  # per slot: GCRA tolerance
    np_interval: list[int]  # per slot: new-patient budget T (0: none)
    np_tau: list[int]
    np_window: list[int]  # per slot: a patient not named for this long is new again
    hold: list[int]  # per slot: quarantine hold (I64_MAX: until released)
    lane_pairs: dict[tuple[int, str], set[tuple[str, str]]]  # (agent, lane class) -> pairs
    registry_version: int


def _touch_tables(trace: pa.Table, agent_c: np.ndarray, policies: list[AgentPolicy | None]
                  ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Per row: all touches in the envelope?  all in the unscoped pairs?  And the flattened
    touches (names, codes, row starts) for the rows that need them one by one."""
    n = trace.num_rows
    col = trace["touches"].combine_chunks()
    lens = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    flat_c, flat_v = codes(pc.list_flatten(col))
    pairs = [tuple(v.split(":", 1)) for v in flat_v]
    allow = np.zeros((len(policies), len(flat_v)), dtype=bool)
    unscoped = np.zeros((len(policies), len(flat_v)), dtype=bool)
    for a, p in enumerate(policies):
        if p is None:
            continue
        ok, free = p.allowed_pairs(), p.context.unscoped_pairs() if p.context is not None else set()
        allow[a] = [q in ok for q in pairs]
        unscoped[a] = [q in free for q in pairs]
    row = np.repeat(np.arange(n), lens)
    start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=start[1:])
    out = np.bincount(row, weights=~allow[agent_c[row], flat_c], minlength=n) if len(row) else np.zeros(n)
    free_out = np.bincount(row, weights=~unscoped[agent_c[row], flat_c], minlength=n) if len(row) else np.zeros(n)
    return out == 0, free_out == 0, flat_v, flat_c, start


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

    # fhir rows: is every (type, interaction) touched in the envelope?  is the shape acceptable?
    touch_ok, unscoped_ok, flat_v, flat_c, tstart = _touch_tables(trace, agent_c, policies)
    shape_c, shape_v = codes(trace["shape"])
    shape_tab = np.zeros((len(agent_v), len(shape_v)), dtype=bool)
    for a, p in enumerate(policies):
        if p is None:
            continue
        shapes = set(p.fhir.allow_shapes) - FRAMING
        for si, sname in enumerate(shape_v):
            shape_tab[a, si] = sname == "plain" or sname in shapes
    shape_ok = shape_tab[agent_c, shape_c]

    # egress rows: the registry's verdict at t and the agent's envelope (quarantine is state).
    addr_c, addr_v = codes(trace["address"])
    egress_reason = _egress_reasons(policies, registry, start, agent_c, addr_c, addr_v, t_ns)

    # break-glass: claims as codes (equal strings <-> equal codes), lane rows' class and duration
    claim_c, claim_v = codes(trace["claim_id"])
    has_claim = claim_c != (claim_v.index("") if "" in claim_v else -1)
    lane = [""] * n
    duration = trace["duration_ns"].to_numpy().astype(np.int64).tolist()
    lane_rows = kind == LANE_OPEN
    if lane_rows.any():
        lane_c, lane_v = codes(trace["lane"])
        for i in np.nonzero(lane_rows)[0].tolist():
            lane[i] = lane_v[lane_c[i]]
    outside: list[tuple[tuple[str, str], ...]] = [()] * n
    for i in np.nonzero((kind == FHIR) & ~touch_ok)[0].tolist():
        a = policies[agent_c[i]]
        allowed = a.allowed_pairs() if a is not None else set()
        mine = (tuple(flat_v[k].split(":", 1)) for k in flat_c[tstart[i]:tstart[i + 1]].tolist())
        outside[i] = tuple(q for q in mine if q not in allowed)  # type: ignore[misc]

    names = naming(trace, (kind == CONTEXT_OPEN) | (kind == CONTEXT_CLOSE), unscoped_ok)
    common = (kind == FHIR) & shape_ok & touch_ok if fast_path else np.zeros(n, dtype=bool)
    mode, interval, tau, (np_interval, np_tau, np_window), hold = _slot_parameters(policies, max_rep)
    lane_pairs = {(a, cls): {q.key() for q in lp.allow}
                  for a, p in enumerate(policies) if p is not None for cls, lp in p.lanes.items()}
    bound = [p is not None and p.context is not None and p.context.bound for p in policies]
    return Tables(n=n, t=t_ns.tolist(), kind=kind.tolist(), slot=slot.tolist(), agent=agent_c.tolist(),
                  touch_ok=touch_ok.tolist(), unscoped_ok=unscoped_ok.tolist(), shape_ok=shape_ok.tolist(),
                  egress_reason=egress_reason.tolist(), address=addr_c.tolist(), has_claim=has_claim.tolist(),
                  claim=claim_c.tolist(), outside=outside, lane=lane, duration=duration, names=names,
                  common=common.tolist(), policies=policies, bound=bound, mode=mode, interval=interval, tau=tau,
                  np_interval=np_interval, np_tau=np_tau, np_window=np_window, hold=hold, lane_pairs=lane_pairs,
                  registry_version=registry.version)


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


def _slot_parameters(policies: list[AgentPolicy | None], max_rep: int
                     ) -> tuple[list[int], list[int], list[int], tuple[list[int], list[int], list[int]], list[int]]:
    """Per replica slot: response mode, GCRA interval and tolerance, the new-patient budget's
    interval, tolerance and window, quarantine hold."""
    mode, interval, tau, np_interval, np_tau, np_window, hold = [], [], [], [], [], [], []
    for p in policies:
        rate = p.rate if p is not None else None
        budget = p.context.new_patient_budget if p is not None and p.context is not None else None
        for _ in range(max_rep):
            mode.append(MODES[p.response] if p is not None else UNENFORCED)
            interval.append(rate.interval_ns if rate is not None else 0)
            tau.append((rate.burst - 1) * rate.interval_ns if rate is not None else 0)
            np_interval.append(budget.interval_ns if budget is not None else 0)
            np_tau.append((budget.burst - 1) * budget.interval_ns if budget is not None else 0)
            np_window.append(budget.window_ns if budget is not None else 0)
            held = p is not None and p.quarantine_hold_s is not None
            hold.append(p.quarantine_hold_s * NS_PER_S if held else I64_MAX)  # type: ignore[union-attr]
    return mode, interval, tau, (np_interval, np_tau, np_window), hold


# ------------------------------------------------------------------------------------ the pass
class Pass:
    """The sequential decision pass over the tables: quarantine, lanes, launch contexts, token
    buckets and the patients each replica has seen are state per replica (docs/enforcement.md)."""

    def __init__(self, tab: Tables) -> None:
        self.tab = tab
        n_slots = len(tab.mode)
        self.decision = [ALLOW] * tab.n
        self.reason = [R_OK] * tab.n
        self.events: list[dict[str, Any]] = []
        self.tat = [0] * n_slots  # GCRA theoretical arrival time
        self.q_until = [-1] * n_slots  # quarantined while t < q_until
        self.lanes: dict[tuple[int, int], tuple[str, int]] = {}  # (slot, claim) -> (class, expiry)
        self.contexts = Book()  # launch contexts per slot
        self.np_tat = [0] * n_slots  # new-patient budget: GCRA theoretical arrival time
        self.seen = [SeenPatients(w) for w in tab.np_window]  # patients each slot named lately
        self.seen_contact: set[tuple[int, int]] = set()  # (slot, address) already contacted

    def run(self) -> None:
        tab, nm = self.tab, self.tab.names
        D, RS, q_until, tat, interval, tau, mode = self.decision, self.reason, self.q_until, self.tat, tab.interval, tab.tau, tab.mode
        bound, agent, np_interval, named, kind = tab.bound, tab.agent, tab.np_interval, nm.named, tab.kind
        fast, pat, enc, held = nm.fast, nm.pat, nm.enc, self.contexts.open
        for i, c, s, t in zip(range(tab.n), tab.common, tab.slot, tab.t):
            if c and mode[s] >= M_ALERT:
                # The common row, a plain request inside the envelope of an enforcing agent, in
                # its launch context (or of an agent that is not bound, naming nobody a budget
                # counts): only step 3 (quarantine) and the rate limit of step 5 can refuse it.
                if q_until[s] > t:
                    D[i] = DENY
                    RS[i] = R_QUARANTINED
                    continue
                if bound[agent[i]]:
                    f = fast[i]
                    if f != -2:  # names someone (or an unscoped form staging never used): Book.holds inline
                        got = held.get(s)
                        e = got.get(f) if got is not None and f >= 0 else None
                        if e is None or t >= e[2] or (pat[i] >= 0 and pat[i] != e[0]) or \
                                (enc[i] >= 0 and (e[1] < 0 or enc[i] != e[1])):
                            self.general(i, s, t)
                            continue
                elif np_interval[s] and named[i]:
                    self.general(i, s, t)
                    continue
                T = interval[s]
                if T:
                    x = tat[s] if tat[s] > t else t
                    if x - t > tau[s]:
                        self.violation(i, s, t, R_RATE)
                        continue
                    tat[s] = x + T
                continue
            if kind[i] >= CONTEXT_OPEN:
                self.context_row(i, s, t)
                continue
            self.general(i, s, t)

    def general(self, i: int, s: int, t: int) -> None:
        """Steps 1-6 for one row, in the order of docs/enforcement.md."""
        tab = self.tab
        kind, m = tab.kind[i], tab.mode[s]
        if kind == LANE_OPEN:
            self.lane_open(i, s, t)
            return
        if kind in (CONTEXT_OPEN, CONTEXT_CLOSE):
            self.context_row(i, s, t)
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
        lane = self.lanes.get((s, tab.claim[i])) if tab.has_claim[i] else None
        lane_open = lane is not None and t < lane[1]
        via_lane = False
        if not tab.touch_ok[i]:
            v = self.lane_verdict(i, t, lane)
            if v:
                self.violation(i, s, t, v, {"touch": ":".join(tab.outside[i][0])} if v == R_TYPE else None)
                return
            via_lane = True
        if tab.bound[tab.agent[i]] and not self.in_context(i, s, t):
            if not lane_open:
                self.violation(i, s, t, R_OUT_OF_CONTEXT)
                return
            via_lane = True  # break-glass: outside every context, under an open lane
        spend = None
        if tab.np_interval[s] and tab.names.named[i] and not tab.bound[tab.agent[i]] and not lane_open:
            spend = self.new_patients(i, s, t)
            if spend is None:
                self.violation(i, s, t, R_NEW_PATIENT)
                return
        if self.rate_exceeded(s, t):
            self.violation(i, s, t, R_RATE)
            return
        if spend is not None:
            self.np_tat[s] = spend
            self.seen[s].named(tab.names.patients(i), t)
        if via_lane:
            self.reason[i] = R_LANE

    def in_context(self, i: int, s: int, t: int) -> bool:
        """The context check: a request naming a patient or an encounter is in one of the
        replica's launch contexts; one naming nobody uses only unscoped pairs."""
        nm = self.tab.names
        if not nm.named[i]:
            return self.tab.unscoped_ok[i]
        return self.contexts.holds(s, nm.ctx[i], t, nm.npat[i], nm.pat[i], nm.nenc[i], nm.enc[i], nm.unknown[i])

    def new_patients(self, i: int, s: int, t: int) -> int | None:
        """The new-patient budget: its next arrival time if the patients this request names that
        the replica has not named lately fit (an unknown patient costs one step too), None if over
        the budget.  Spent, and the patients recorded as named, only once the request is allowed."""
        nm, tab = self.tab.names, self.tab
        if nm.npat[i] > NPAT_MAX:
            return None
        k = len(self.seen[s].new(nm.patients(i), t)) + (1 if nm.unknown[i] else 0)
        if not k:
            return self.np_tat[s]
        T = tab.np_interval[s]
        x = max(self.np_tat[s], t)
        if x + (k - 1) * T - t > tab.np_tau[s]:
            return None
        return x + k * T

    def lane_verdict(self, i: int, t: int, lane: tuple[str, int] | None) -> int:
        """Touches outside the envelope: R_OK if the open lane of the request's claim holds every
        one of them, R_LANE_EXPIRED if that lane has expired, else R_TYPE."""
        if lane is None:
            return R_TYPE
        pairs = self.tab.lane_pairs.get((self.tab.agent[i], lane[0]))
        if pairs is None or any(q not in pairs for q in self.tab.outside[i]):
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

    def context_row(self, i: int, s: int, t: int) -> None:
        """A launch context opened or closed by the EHR side, decided as the control plane does
        (an opening refused is recorded; openings and closings are in the trace already)."""
        tab, nm = self.tab, self.tab.names
        p = tab.policies[tab.agent[i]]
        if p is None:
            self.reason[i] = R_UNENFORCED
            return
        c = nm.ctx[i]
        if tab.kind[i] == CONTEXT_CLOSE:
            self.contexts.close(s, c)
            return
        expiry = p.context_expiry(t, tab.duration[i], self.contexts.others_open(s, c, t))
        if expiry is None:
            self.decision[i] = DENY
            self.reason[i] = R_CONTEXT_NOT_IN_ENVELOPE
            self.events.append({"row": i, "t_ns": t, "event": "context-refused"})
            return
        self.contexts.put(s, c, nm.pat[i], nm.enc[i], expiry)
        self.reason[i] = R_CONTEXT_OPENED

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

    def violation(self, i: int, s: int, t: int, v: int, detail: dict[str, Any] | None = None) -> None:
        """Step 6: the agent's response mode turns a violation into a decision (``detail``: what
        the deny or alert event names, e.g. the first touch outside the envelope)."""
        m = self.tab.mode[s]
        self.reason[i] = v
        self.decision[i] = ALERT if m == M_ALERT else DENY
        if detail:
            self.events.append({"row": i, "t_ns": t, "event": "alert" if m == M_ALERT else "deny",
                                "reason": REASONS[v], **detail})
        if m == M_ALERT:
            return
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

    ``fast_path`` (default) decides the common row (a plain FHIR request whose touches are in the
    envelope, of an enforcing agent, in its launch context or naming nobody a new-patient budget
    counts) with only the quarantine and token-bucket steps; every other row takes the general
    path.  ``fast_path=False`` sends every row through the general path:
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
        have = {e["row"] for e in events if e["event"] not in ("deny", "alert")}
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
