"""Learn each agent's behavioural envelope from a (staging) trace.

The envelope is what the agent was *seen* doing, before any margin is applied: every
(resource type, interaction) pair its requests touched, with counts, the per-replica rate envelope
(per-minute counts, the peak 5-minute and 1-minute counts), clinical-context grouping, its launch
contexts (parity.launch_contexts: bound or not, unscoped pairs, longest and most open contexts,
first-seen patients), egress endpoints and the break-glass lanes it used.  ``parity.compile`` turns it into an enforceable ``policy.json``.

Only rows whose ground truth is ``expected=allow`` are learned from: in staging the rows labelled
``deny`` are deliberate probes (access after a lane's expiry), not behaviour to permit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from paritybed.core.columns import codes, ints, mask_eq
from paritybed.core.units import FIVE_MIN_NS, NS_PER_MIN
from paritybed.enforcer.registry import Registry
from paritybed.parity.launch_contexts import ContextSeen, learn_contexts
from paritybed.parity.windows import sliding_peak

Pair = tuple[str, str]


@dataclass
class LaneSeen:
    """One break-glass class as staging exercised it for one agent."""

    cls: str
    activations: int = 0
    pairs: dict[Pair, int] = field(default_factory=dict)  # every pair used under the lane
    max_requested_ns: int = 0  # longest lane duration requested by an activation
    longest_use_ns: int = 0  # longest time from activation to the last access under it

    def to_dict(self) -> dict[str, Any]:
        return {"activations": self.activations, "pairs": _pairs_out(self.pairs),
                "max_requested_s": self.max_requested_ns / 1e9, "longest_use_s": self.longest_use_ns / 1e9}


@dataclass
class RateEnvelope:
    """Per-replica request rate (FHIR requests only: egress connects are not rate limited)."""

    peak_5min: int = 0  # busiest replica, busiest sliding 5-minute window
    peak_1min: int = 0
    peak_5min_by_replica: dict[int, int] = field(default_factory=dict)
    per_minute_p50: float = 0.0  # over every minute of the trace's span, per replica
    per_minute_p95: float = 0.0
    per_minute_p99: float = 0.0
    per_minute_max: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"peak_5min": self.peak_5min, "peak_1min": self.peak_1min,
                "peak_5min_by_replica": {str(k): v for k, v in sorted(self.peak_5min_by_replica.items())},
                "per_minute": {"p50": self.per_minute_p50, "p95": self.per_minute_p95,
                               "p99": self.per_minute_p99, "max": self.per_minute_max}}


@dataclass
class AgentEnvelope:
    agent: str
    agent_class: str
    requests: int = 0
    pairs: dict[Pair, int] = field(default_factory=dict)  # outside break-glass lanes
    shapes: dict[str, int] = field(default_factory=dict)  # non-plain request families seen
    rate: RateEnvelope = field(default_factory=RateEnvelope)
    contexts: int = 0
    requests_per_context: dict[str, float] = field(default_factory=dict)  # p50 / p95 / max
    types_per_context: dict[str, float] = field(default_factory=dict)
    egress: dict[str, dict[str, Any]] = field(default_factory=dict)  # address -> endpoint, name, count
    lanes: dict[str, LaneSeen] = field(default_factory=dict)
    launch: ContextSeen = field(default_factory=ContextSeen)  # launch contexts (patient-level binding)

    def to_dict(self) -> dict[str, Any]:
        return {"agent_class": self.agent_class, "requests": self.requests, "pairs": _pairs_out(self.pairs),
                "shapes": dict(sorted(self.shapes.items())), "rate": self.rate.to_dict(),
                "contexts": self.contexts, "requests_per_context": self.requests_per_context,
                "types_per_context": self.types_per_context, "launch_contexts": self.launch.to_dict(),
                "egress": {k: self.egress[k] for k in sorted(self.egress)},
                "lanes": {k: self.lanes[k].to_dict() for k in sorted(self.lanes)}}


@dataclass
class Envelope:
    agents: dict[str, AgentEnvelope]
    span_ns: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"span_ns": list(self.span_ns), "agents": {k: self.agents[k].to_dict() for k in sorted(self.agents)}}


def _pairs_out(pairs: dict[Pair, int]) -> list[dict[str, Any]]:
    return [{"type": t, "interaction": i, "count": n} for (t, i), n in sorted(pairs.items())]


def touch_counts(touches: pa.ChunkedArray, rows: np.ndarray) -> dict[Pair, int]:
    """How often each (type, interaction) was touched by the rows marked in ``rows`` (every touch
    of a request counts: what it includes, chains through, searches in a compartment)."""
    idx = np.nonzero(rows)[0]
    if len(idx) == 0:
        return {}
    flat = pc.list_flatten(touches.take(pa.array(idx)).combine_chunks())
    if len(flat) == 0:
        return {}
    c, v = codes(flat)
    uniq, cnt = np.unique(c, return_counts=True)
    return {tuple(v[k].split(":", 1)): int(m) for k, m in zip(uniq.tolist(), cnt.tolist())}  # type: ignore[misc]


def _quantiles(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    q = np.percentile(x, [50, 95])
    return {"p50": float(q[0]), "p95": float(q[1]), "max": float(x.max())}


def learn_envelope(trace: pa.Table, registry: Registry | None = None) -> Envelope:
    """The envelope of every agent in ``trace`` (rows with expected=allow)."""
    n = trace.num_rows
    t_all = ints(trace["t_ns"])
    span = (int(t_all.min()), int(t_all.max()) + 1) if n else (0, 0)
    keep = ~mask_eq(trace["expected"], "deny") if n else np.zeros(0, dtype=bool)
    agent_c, agent_v = codes(trace["agent"])
    class_c, class_v = codes(trace["agent_class"])
    kind_c, kind_v = codes(trace["kind"])
    type_c, _ = codes(trace["resource_type"])
    shape_c, shape_v = codes(trace["shape"])
    lane_c, lane_v = codes(trace["lane"])
    addr_c, addr_v = codes(trace["address"])
    ep_c, ep_v = codes(trace["endpoint"])
    replica = ints(trace["replica"])
    by_addr = registry.by_address() if registry is not None else {}

    def kind_is(name: str) -> np.ndarray:
        return kind_c == kind_v.index(name) if name in kind_v else np.zeros(n, dtype=bool)

    is_fhir, is_egress, is_open = kind_is("fhir"), kind_is("egress"), kind_is("lane_open")
    no_lane = lane_c == lane_v.index("") if "" in lane_v else np.zeros(n, dtype=bool)
    plain = shape_c == shape_v.index("plain") if "plain" in shape_v else np.zeros(n, dtype=bool)
    claims = None  # materialised lazily: only lane rows need claim ids
    launch = learn_contexts(trace, keep & no_lane)

    agents: dict[str, AgentEnvelope] = {}
    for a, name in enumerate(agent_v):
        rows_a = (agent_c == a)
        if not rows_a.any():
            continue
        first = int(np.argmax(rows_a))
        env = AgentEnvelope(agent=name, agent_class=class_v[class_c[first]])
        mine = rows_a & keep
        f = mine & is_fhir
        env.requests = int(f.sum())
        base = f & no_lane
        env.pairs = touch_counts(trace["touches"], base)  # an allowed shape still needs its pair
        odd = base & ~plain
        if odd.any():
            u, c = np.unique(shape_c[odd], return_counts=True)
            env.shapes = {shape_v[k]: int(m) for k, m in zip(u.tolist(), c.tolist())}
        env.rate = _rate(t_all[f], replica[f], span)
        env.contexts, env.requests_per_context, env.types_per_context = _contexts(trace, f, type_c)
        e = mine & is_egress
        if e.any():
            u, cnt = np.unique(addr_c[e], return_counts=True)
            for k, m in zip(u.tolist(), cnt.tolist()):
                addr = addr_v[k]
                reg = by_addr.get(addr)
                ep = ep_v[int(ep_c[e][np.argmax(addr_c[e] == k)])]
                env.egress[addr] = {"endpoint": ep, "registry_name": reg.name if reg else None, "count": int(m)}
        lanes_rows = f & ~no_lane
        opens = rows_a & is_open
        if lanes_rows.any() or opens.any():
            if claims is None:
                claims = trace["claim_id"]
            env.lanes = _lanes(t_all, lane_c, lane_v, trace["touches"], lanes_rows, opens, claims, trace["duration_ns"])
        env.launch = launch.get(name, ContextSeen())
        agents[name] = env
    return Envelope(agents=agents, span_ns=span)


def _rate(t: np.ndarray, rep: np.ndarray, span: tuple[int, int]) -> RateEnvelope:
    r = RateEnvelope()
    if len(t) == 0:
        return r
    minutes = max(1, -(-(span[1] - span[0]) // NS_PER_MIN))
    per_min_all = []
    for k in np.unique(rep).tolist():
        tk = t[rep == k]  # already time-ordered (trace rows are in time order)
        p5 = sliding_peak(tk, FIVE_MIN_NS)
        r.peak_5min_by_replica[int(k)] = p5
        r.peak_5min = max(r.peak_5min, p5)
        r.peak_1min = max(r.peak_1min, sliding_peak(tk, NS_PER_MIN))
        per_min_all.append(np.bincount((tk - span[0]) // NS_PER_MIN, minlength=minutes))
    pm = np.concatenate(per_min_all)
    q = np.percentile(pm, [50, 95, 99])
    r.per_minute_p50, r.per_minute_p95, r.per_minute_p99 = (float(x) for x in q)
    r.per_minute_max = int(pm.max())
    return r


def _contexts(trace: pa.Table, rows: np.ndarray, type_c: np.ndarray) -> tuple[int, dict[str, float], dict[str, float]]:
    if not rows.any():
        return 0, _quantiles(np.zeros(0)), _quantiles(np.zeros(0))
    ctx = trace["context_id"].filter(pa.array(rows))
    cc, cv = codes(ctx)
    per = np.bincount(cc, minlength=len(cv))
    if "" in cv:  # rows without a clinical context do not form a group
        per[cv.index("")] = 0
    per = per[per > 0]
    pairs = np.unique(cc * (int(type_c.max()) + 1) + type_c[rows])
    ctx_of_pair = pairs // (int(type_c.max()) + 1)
    types = np.bincount(ctx_of_pair, minlength=len(cv))
    if "" in cv:
        types[cv.index("")] = 0
    types = types[types > 0]
    return int(len(per)), _quantiles(per), _quantiles(types)


def _lanes(t: np.ndarray, lane_c: np.ndarray, lane_v: list[str], touches: pa.ChunkedArray, lane_rows: np.ndarray,
           opens: np.ndarray, claims: pa.ChunkedArray, duration: pa.ChunkedArray) -> dict[str, LaneSeen]:
    out: dict[str, LaneSeen] = {}
    dur = ints(duration)
    open_at: dict[str, int] = {}
    claim_list_idx = np.nonzero(lane_rows | opens)[0]
    claim_vals = claims.take(pa.array(claim_list_idx)).to_pylist()
    last_use: dict[str, int] = {}
    for i, claim in zip(claim_list_idx.tolist(), claim_vals):
        cls = lane_v[lane_c[i]]
        if not cls:
            continue
        seen = out.setdefault(cls, LaneSeen(cls=cls))
        if opens[i]:
            seen.activations += 1
            seen.max_requested_ns = max(seen.max_requested_ns, int(dur[i]))
            open_at[claim] = int(t[i])
        else:
            last_use[claim] = int(t[i])
    for cls, seen in out.items():
        m = lane_rows & (lane_c == lane_v.index(cls))
        seen.pairs = touch_counts(touches, m)
    for claim, tl in last_use.items():
        if claim in open_at:
            i = claim_list_idx[claim_vals.index(claim)]
            cls = lane_v[lane_c[i]]
            out[cls].longest_use_ns = max(out[cls].longest_use_ns, tl - open_at[claim])
    return out
