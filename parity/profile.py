"""The de-identified traffic profile of one arm: everything the three criteria need, nothing more.

A profile is an aggregate per agent class: (type, interaction) counts, an hour-of-day histogram,
a bounded quantile sample of inter-arrival times (ms), per-5-minute counts per replica and day
with each replica-day's sliding 5-minute peak, a quantile sample of requests per clinical
context, a quantile sample of how long launch contexts were held, and the break-glass classes with the pairs used under them, their durations and whether
an access after expiry was exercised.  It holds no patient, record, context, claim or clinician
id, no names and no request paths (docs/parity.md, "Profiles"), so a hospital can build one from
its production AuditEvent export (``paritybed profile``) and gate staging against it without
moving PHI.  ``profile_from_trace`` and ``parity.auditevent.profile_from_auditevents`` feed the
same ``ProfileBuilder`` so both paths give the same numbers.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from paritybed.core.columns import codes, ints, mask_eq
from paritybed.core.errors import InputError
from paritybed.core.units import DAY_NS, FIVE_MIN_NS, HOUR_NS, epoch_ns
from paritybed.parity.windows import sliding_counts

PROFILE_SCHEMA = "paritybed.profile/1"
SAMPLE_MAX = 4000  # quantile-sample size: KS resolution ~1/4000, a few kB per class
BINS_PER_DAY = 288


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LaneProfile(_M):
    activations: int = 0
    pairs: dict[str, int] = Field(default_factory=dict)  # "Type.interaction" -> accesses under the lane
    max_requested_s: float = 0.0
    longest_use_s: float = 0.0
    expiry_exercised: bool = False  # an access was attempted at or after the lane's expiry


class ClassProfile(_M):
    requests: int = 0
    replicas: int = 0
    pairs: dict[str, int] = Field(default_factory=dict)  # outside break-glass lanes
    hours: list[int] = Field(default_factory=lambda: [0] * 24)
    interarrival_ms: list[float] = Field(default_factory=list)  # sorted quantile sample
    interarrival_n: int = 0
    interarrival_basis: str = "context"  # context: gaps between new clinical contexts; request: per replica
    requests_per_context: list[float] = Field(default_factory=list)  # sorted quantile sample
    contexts: int = 0
    context_held_s: list[float] = Field(default_factory=list)  # launch contexts, opening to closing: quantile sample
    launch_contexts: int = 0
    peak5: dict[str, dict[str, int]] = Field(default_factory=dict)  # replica -> day -> sliding 5-min peak
    bins5: dict[str, dict[str, list[int]]] = Field(default_factory=dict)  # replica -> day -> 288 counts
    egress: dict[str, int] = Field(default_factory=dict)  # endpoint name -> connects
    lanes: dict[str, LaneProfile] = Field(default_factory=dict)


class Profile(_M):
    schema_: str = Field(PROFILE_SCHEMA, alias="schema")
    source: str = "trace"  # trace | auditevent
    arm: str = ""
    first_day: str = ""  # ISO date of day index 0 (UTC)
    days: int = 0
    classes: dict[str, ClassProfile] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")) + "\n"


def pair_key(t: str, i: str) -> str:
    return f"{t}.{i}"


def split_pair(k: str) -> tuple[str, str]:
    t, _, i = k.rpartition(".")
    return t, i


def quantile_sample(x: np.ndarray, k: int = SAMPLE_MAX) -> list[float]:
    """At most ``k`` evenly spaced order statistics of ``x`` (all of it when small), rounded to
    microseconds: a deterministic summary whose empirical CDF is within 1/k of the original."""
    if len(x) == 0:
        return []
    s = np.sort(x)
    if len(s) > k:
        s = s[np.round(np.linspace(0, len(s) - 1, k)).astype(np.int64)]
    return [round(float(v), 3) for v in s]


@dataclass
class Stream:
    """Columnar events of one arm, in absolute UTC ns, as both input paths produce them."""

    abs_ns: np.ndarray  # int64, sorted
    agent_class: list[str]  # per row (small python list of dictionary values via codes)
    cls_c: np.ndarray
    stream_c: np.ndarray  # replica stream key code: "agent#replica"
    stream_v: list[str]
    kind_fhir: np.ndarray  # bool
    kind_egress: np.ndarray
    kind_open: np.ndarray
    pair_c: np.ndarray  # code into pair_v ("" for non-fhir)
    pair_v: list[str]
    lane_c: np.ndarray
    lane_v: list[str]
    legit: np.ndarray  # bool: counts for the profile (expected allow)
    context_c: np.ndarray  # code; value "" = no context
    context_v: list[str]
    claim_c: np.ndarray
    claim_v: list[str]
    duration_ns: np.ndarray
    endpoint_c: np.ndarray
    endpoint_v: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    held_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per launch context closed
    held_cls: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ... its agent class code


def stream_from_trace(trace: pa.Table, start: dt.datetime) -> Stream:
    """The trace's rows as a Stream (t_ns offset by the scenario's start instant)."""
    origin = epoch_ns(start)
    t = ints(trace["t_ns"]) + origin
    cls_c, cls_v = codes(trace["agent_class"])
    agent_c, agent_v = codes(trace["agent"])
    rep = ints(trace["replica"])
    key = agent_c * (int(rep.max()) + 1 if len(rep) else 1) + rep
    uk, stream_c = np.unique(key, return_inverse=True)
    width = int(rep.max()) + 1 if len(rep) else 1
    stream_v = [f"{agent_v[k // width]}#{k % width}" for k in uk.tolist()]
    type_c, type_v = codes(trace["resource_type"])
    inter_c, inter_v = codes(trace["interaction"])
    pk = type_c * len(inter_v) + inter_c
    upk, pair_c = np.unique(pk, return_inverse=True)
    pair_v = [pair_key(type_v[k // len(inter_v)], inter_v[k % len(inter_v)]) for k in upk.tolist()]
    lane_c, lane_v = codes(trace["lane"])
    ctx_c, ctx_v = codes(trace["context_id"])
    claim_c, claim_v = codes(trace["claim_id"])
    ep_c, ep_v = codes(trace["endpoint"])
    held, held_cls = _held(trace, t, cls_c, stream_c)
    return Stream(abs_ns=t, agent_class=cls_v, cls_c=cls_c, stream_c=stream_c, stream_v=stream_v, held_ns=held,
                  held_cls=held_cls,
                  kind_fhir=mask_eq(trace["kind"], "fhir"), kind_egress=mask_eq(trace["kind"], "egress"),
                  kind_open=mask_eq(trace["kind"], "lane_open"), pair_c=pair_c, pair_v=pair_v,
                  lane_c=lane_c, lane_v=lane_v, legit=~mask_eq(trace["expected"], "deny"),
                  context_c=ctx_c, context_v=ctx_v, claim_c=claim_c, claim_v=claim_v,
                  duration_ns=ints(trace["duration_ns"]), endpoint_c=ep_c, endpoint_v=ep_v)


def _held(trace: pa.Table, t: np.ndarray, cls_c: np.ndarray, stream_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How long each launch context was held (its opening to its closing, on its replica) and its
    agent class; contexts still open when the trace ends are left out."""
    opening, closing = mask_eq(trace["kind"], "context_open"), mask_eq(trace["kind"], "context_close")
    if not closing.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.nonzero(opening | closing)[0]
    ids = trace["launch_context"].take(pa.array(rows)).to_pylist()
    since: dict[tuple[int, str], int] = {}
    held, cls = [], []
    for i, c in zip(rows.tolist(), ids):
        key = (int(stream_c[i]), c)
        if opening[i]:
            since[key] = int(t[i])
        elif key in since:
            held.append(int(t[i]) - since.pop(key))
            cls.append(int(cls_c[i]))
    return np.asarray(held, dtype=np.int64), np.asarray(cls, dtype=np.int64)



def profile_from_trace(trace: pa.Table, scenario_start: dt.datetime, *, arm: str | None = None,
                       basis: Mapping[str, str] | None = None) -> Profile:
    """The de-identified profile of one arm's trace (``scenario_start`` = the instant of t=0).
    ``basis`` (class -> ``request``) measures a class's inter-arrival gaps between requests even
    where the trace has contexts: what a gate does when the other side's profile has none (an
    audit trail without context entities), so both sides are measured alike."""
    if arm is None:
        arm = str(trace["arm"][0].as_py()) if trace.num_rows else ""
    return build_profile(stream_from_trace(trace, scenario_start), source="trace", arm=arm, basis=basis)


def build_profile(s: Stream, *, source: str, arm: str, basis: Mapping[str, str] | None = None) -> Profile:
    if len(s.abs_ns) == 0:
        return Profile(source=source, arm=arm)
    day0 = int(s.abs_ns.min()) // DAY_NS
    last = int(s.abs_ns.max()) // DAY_NS
    classes = {}
    for c, name in enumerate(s.agent_class):
        rows = s.cls_c == c
        if rows.any():
            classes[name] = _class_profile(s, rows, day0, (basis or {}).get(name, "context"))
    first_day = dt.date(1970, 1, 1) + dt.timedelta(days=day0)
    return Profile(source=source, arm=arm, first_day=first_day.isoformat(), days=last - day0 + 1,
                   classes=dict(sorted(classes.items())))


def _counts(c: np.ndarray, v: list[str]) -> dict[str, int]:
    if len(c) == 0:
        return {}
    u, n = np.unique(c, return_counts=True)
    return {v[k]: int(m) for k, m in zip(u.tolist(), n.tolist()) if v[k]}


def _class_profile(s: Stream, rows: np.ndarray, day0: int, basis: str = "context") -> ClassProfile:
    f = rows & s.kind_fhir & s.legit
    t = s.abs_ns[f]
    no_lane = s.lane_c == s.lane_v.index("") if "" in s.lane_v else np.zeros(len(s.lane_c), dtype=bool)
    pairs = _counts(s.pair_c[f & no_lane], s.pair_v)
    hours = np.bincount((t // HOUR_NS) % 24, minlength=24).tolist() if len(t) else [0] * 24
    # inter-arrival and bursts per replica stream (the unit the kernel rate-limits)
    peak5, bins5 = {}, {}
    st = s.stream_c[f]
    for k in np.unique(st).tolist():
        tk = t[st == k]
        day = tk // DAY_NS - day0
        win = sliding_counts(tk, FIVE_MIN_NS)
        name = s.stream_v[k]
        peak5[name] = {}
        bins5[name] = {}
        for d in np.unique(day).tolist():
            m = day == d
            peak5[name][str(d)] = int(win[m].max())
            b = ((tk[m] % DAY_NS) // FIVE_MIN_NS)
            bins5[name][str(d)] = np.bincount(b, minlength=BINS_PER_DAY).tolist()
    ctx = s.context_c[f]
    ia, basis = _interarrival(t, ctx, s.context_v, st, use_contexts=basis == "context")
    ctx_counts = np.bincount(ctx, minlength=len(s.context_v)) if len(ctx) else np.zeros(0, dtype=np.int64)
    if "" in s.context_v and len(ctx_counts):
        ctx_counts[s.context_v.index("")] = 0
    ctx_counts = ctx_counts[ctx_counts > 0]
    e = rows & s.kind_egress & s.legit
    c = int(s.cls_c[np.argmax(rows)])
    held = s.held_ns[s.held_cls == c] / 1e9
    return ClassProfile(
        requests=int(f.sum()), replicas=len(peak5), pairs=dict(sorted(pairs.items())), hours=hours,
        interarrival_ms=quantile_sample(ia), interarrival_n=int(len(ia)), interarrival_basis=basis,
        requests_per_context=quantile_sample(ctx_counts.astype(np.float64)), contexts=int(len(ctx_counts)),
        context_held_s=quantile_sample(held), launch_contexts=int(len(held)),
        peak5=peak5, bins5=bins5, egress=dict(sorted(_counts(s.endpoint_c[e], s.endpoint_v).items())),
        lanes=_lanes(s, rows),
    )


def _interarrival(t: np.ndarray, ctx: np.ndarray, ctx_v: list[str], stream: np.ndarray, *,
                  use_contexts: bool = True) -> tuple[np.ndarray, str]:
    """Inter-arrival times (ms) of the agent's *work*: the gaps between the first requests of
    successive clinical contexts (encounters, claims, queries) of the class.  The requests inside
    one task follow each other at machine pace in both arms alike; what staging must reproduce is
    when clinical work arrives (bursts at rounds, quiet nights).  Without contexts (an export that
    does not carry them) the gaps between requests of each replica stand in."""
    has = ctx != (ctx_v.index("") if "" in ctx_v else -1)
    if use_contexts and has.sum() >= 2:
        _, first = np.unique(ctx[has], return_index=True)
        ft = np.sort(t[has][first])
        return np.diff(ft) / 1e6, "context"
    gaps = [np.diff(t[stream == k]) for k in np.unique(stream).tolist() if (stream == k).sum() > 1]
    return (np.concatenate(gaps) / 1e6 if gaps else np.zeros(0)), "request"


def _lanes(s: Stream, rows: np.ndarray) -> dict[str, LaneProfile]:
    """Break-glass classes: activations (lane_open rows), accesses under them (legit ones give the
    pairs; every access, probes included, tells whether expiry was exercised)."""
    out: dict[str, dict[str, Any]] = {}
    opens = np.nonzero(rows & s.kind_open)[0]
    open_of_claim: dict[int, tuple[int, int]] = {}
    for i in opens.tolist():
        cls = s.lane_v[s.lane_c[i]]
        if not cls:
            continue
        o = out.setdefault(cls, {"activations": 0, "max_req": 0, "longest": 0, "expiry": False, "pairs": {}})
        o["activations"] += 1
        o["max_req"] = max(o["max_req"], int(s.duration_ns[i]))
        open_of_claim[int(s.claim_c[i])] = (int(s.abs_ns[i]), int(s.duration_ns[i]))
    lane_rows = rows & s.kind_fhir & (s.lane_c != (s.lane_v.index("") if "" in s.lane_v else -1))
    idx = np.nonzero(lane_rows)[0]
    for c in np.unique(s.lane_c[idx]).tolist():
        cls = s.lane_v[c]
        o = out.setdefault(cls, {"activations": 0, "max_req": 0, "longest": 0, "expiry": False, "pairs": {}})
        m = idx[s.lane_c[idx] == c]
        legit = m[s.legit[m]]
        o["pairs"] = _counts(s.pair_c[legit], s.pair_v)
        for claim in np.unique(s.claim_c[m]).tolist():
            if claim not in open_of_claim:
                continue
            t0, dur = open_of_claim[claim]
            tc = s.abs_ns[m[s.claim_c[m] == claim]]
            if (tc >= t0 + dur).any():
                o["expiry"] = True
            used = tc[s.legit[m[s.claim_c[m] == claim]]]
            if len(used):
                o["longest"] = max(o["longest"], int(used.max()) - t0)
    return {k: LaneProfile(activations=v["activations"], pairs=dict(sorted(v["pairs"].items())),
                           max_requested_s=v["max_req"] / 1e9, longest_use_s=v["longest"] / 1e9,
                           expiry_exercised=v["expiry"]) for k, v in sorted(out.items())}


def save_profile(p: Profile, path: str | Path) -> None:
    Path(path).write_text(p.to_json(), encoding="utf-8")


def load_profile(path: str | Path) -> Profile:
    """Read a profile.json; a missing, unreadable or foreign file is an InputError naming it."""
    from paritybed.core.jsonfile import load_model

    def is_profile(raw: Any) -> None:
        if not isinstance(raw, dict) or raw.get("schema") != PROFILE_SCHEMA:
            found = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
            raise InputError(f"{Path(path)}: not a paritybed profile: expected schema {PROFILE_SCHEMA!r}, found {found!r}",
                             hint="build one with: paritybed profile AUDITEVENTS.ndjson --out profile.json")

    return load_model(path, Profile, "profile", "docs/parity.md", check=is_profile)