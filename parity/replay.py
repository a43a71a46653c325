"""Replay production under the staging-built policy: the consequence, counted and timed.

The replay takes the decisions it is given (enforcer.decisions.Decisions): the reference engine's
in model mode, the kernel's own in live mode; it never decides anything itself, so every number
it reports is the named decider's (``decided_by``).

Over-blocks are legitimate requests (``expected=allow``) the policy denies; those denied only
because an attack had just quarantined the replica are *collateral* and counted apart.  Clinical
impact is the set of agent-replica minutes during which the agent was blocked (an over-block in
that minute) or quarantined, by hour of day.  Under-blocks are rows that should have been denied
(attacks, a hotfix endpoint outside the BAA registry, accesses after a lane's expiry) and were not.
Each labelled attack gets its time from first action to first enforcement event and the
patients it reached: the distinct patients its allowed (or only alerted) requests named, in all
and before its first enforcement.  ``binding`` sums what the clinical-context binding did: the
legitimate requests it blocked (``out-of-context``, ``context-not-in-envelope``,
``new-patient-budget``) and the attacks it caught first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from paritybed.core.columns import codes, ints, mask_eq
from paritybed.core.hashlog import HashLog
from paritybed.core.units import HOUR_NS, NS_PER_MIN
from paritybed.enforcer.decisions import Decisions, with_decisions
from paritybed.enforcer.kernel_abi import ALERT, ALLOW, DENY, R_QUARANTINED, REASONS

#: The reasons of the clinical-context binding (docs/enforcement.md)
BINDING = ("out-of-context", "context-not-in-envelope", "new-patient-budget")


@dataclass
class Replay:
    decisions: Decisions
    summary: dict[str, Any]
    over_block_rows: np.ndarray  # row indices (non-collateral over-blocks)
    collateral_rows: np.ndarray


def replay(trace: pa.Table, d: Decisions, start: dt.datetime) -> Replay:
    """The consequences of the decisions ``d`` (one per production row) for clinical work and attacks."""
    n = trace.num_rows
    t = ints(trace["t_ns"])
    legit = ~mask_eq(trace["expected"], "deny")
    denied = d.decision == DENY
    over = legit & denied
    collateral = _collateral(trace, d, legit) & over
    agent_c, agent_v = codes(trace["agent"])
    replica = ints(trace["replica"])
    tod0 = (start.hour * 60 + start.minute) * NS_PER_MIN
    hour = ((t + tod0) // HOUR_NS) % 24 if n else np.zeros(0, dtype=np.int64)
    reason_v = list(REASONS)

    def by(mask: np.ndarray, c: np.ndarray, v: list[str]) -> dict[str, int]:
        if not mask.any():
            return {}
        u, k = np.unique(c[mask], return_counts=True)
        return {v[a]: int(b) for a, b in zip(u.tolist(), k.tolist())}

    real = over & ~collateral
    summary: dict[str, Any] = {
        "requests": int(n),
        "legitimate": int(legit.sum()),
        "over_blocks": {
            "total": int(real.sum()),
            "share": round(float(real.sum()) / max(1, int(legit.sum())), 6),
            "by_reason": by(real, d.reason.astype(np.int64), reason_v),
            "by_agent": by(real, agent_c, agent_v),
            "by_hour": np.bincount(hour[real], minlength=24).tolist() if n else [0] * 24,
            "collateral": int(collateral.sum()),
            "collateral_by_agent": by(collateral, agent_c, agent_v),
        },
        "under_blocks": _under_blocks(trace, d, legit),
        "attacks_caught": _attacks(trace, d, t),
        "binding": {},
        "clinical_impact_minutes": _impact(d, agent_c, agent_v, replica, t, tod0, over, collateral, trace),
        "lost_events": 0,
    }
    summary["binding"] = _binding(summary, trace, d)
    return Replay(decisions=d, summary=summary, over_block_rows=np.nonzero(real)[0],
                  collateral_rows=np.nonzero(collateral)[0])


def _binding(summary: dict[str, Any], trace: pa.Table, d: Decisions) -> dict[str, Any]:
    """What the clinical-context binding did: legitimate requests it blocked, attacks it caught
    first, launch contexts opened and refused."""
    by = summary["over_blocks"]["by_reason"]
    kinds = codes(trace["kind"])
    opens = kinds[0] == kinds[1].index("context_open") if "context_open" in kinds[1] else np.zeros(len(d.reason), bool)
    return {"over_blocks": sum(by.get(r, 0) for r in BINDING),
            "over_blocks_by_reason": {r: by[r] for r in BINDING if by.get(r)},
            "attacks_caught_first": sorted(a["name"] for a in summary["attacks_caught"] if a["first_reason"] in BINDING),
            "contexts_opened": int((opens & (d.decision != DENY)).sum()),
            "contexts_refused": int((opens & (d.decision == DENY)).sum())}


def _patients(named: pa.ChunkedArray, rows: np.ndarray) -> int:
    """Distinct patients the rows name."""
    if len(rows) == 0:
        return 0
    flat = pc.list_flatten(named.take(pa.array(rows, type=pa.int64())).combine_chunks())
    return int(len(pc.unique(flat))) if len(flat) else 0


def _slot(trace: pa.Table) -> np.ndarray:
    agent_c, _ = codes(trace["agent"])
    rep = ints(trace["replica"])
    return agent_c * (int(rep.max()) + 1 if len(rep) else 1) + rep


def _quarantines(d: Decisions) -> list[dict[str, Any]]:
    return [e for e in d.events if e["event"] in ("quarantine", "kill")]


def _collateral(trace: pa.Table, d: Decisions, legit: np.ndarray) -> np.ndarray:
    """Rows denied as ``quarantined`` whose quarantine was started by an attack row."""
    out = np.zeros(trace.num_rows, dtype=bool)
    q = _quarantines(d)
    if not q:
        return out
    slot = _slot(trace)
    qrows = np.array([e["row"] for e in q], dtype=np.int64)
    qslot = slot[qrows]
    qrow_attack = ~legit[qrows]
    held = np.nonzero(d.reason == R_QUARANTINED)[0]
    for s in np.unique(slot[held]).tolist():
        rows = held[slot[held] == s]
        starts = qrows[qslot == s]
        if len(starts) == 0:
            continue
        k = np.searchsorted(starts, rows, side="right") - 1  # the quarantine in force
        ok = k >= 0
        out[rows[ok]] = qrow_attack[qslot == s][k[ok]]
    return out


def _under_blocks(trace: pa.Table, d: Decisions, legit: np.ndarray) -> dict[str, Any]:
    bad = ~legit
    through = bad & (d.decision != DENY)
    lab_c, lab_v = codes(trace["label"])
    by_label: dict[str, dict[str, int]] = {}
    for k in np.unique(lab_c[bad]).tolist():
        m = bad & (lab_c == k)
        by_label[lab_v[k] or "(unlabelled)"] = {"rows": int(m.sum()), "allowed": int((m & (d.decision == ALLOW)).sum()),
                                               "alerted": int((m & (d.decision == ALERT)).sum()),
                                               "patients_reached": _patients(trace["named_patients"],
                                                                             np.nonzero(m & (d.decision != DENY))[0])}
    return {"total": int(through.sum()), "expected_deny": int(bad.sum()),
            "alerted": int((bad & (d.decision == ALERT)).sum()), "by_label": by_label}


def _attacks(trace: pa.Table, d: Decisions, t: np.ndarray) -> list[dict[str, Any]]:
    """One entry per labelled attack or hotfix: caught?, at first contact?, time to first event."""
    lab_c, lab_v = codes(trace["label"])
    agent_c, agent_v = codes(trace["agent"])
    kind_c, kind_v = codes(trace["kind"])
    out = []
    for k, lab in enumerate(lab_v):
        if not (lab.startswith("attack:") or lab.startswith("hotfix:")):
            continue
        rows = np.nonzero(lab_c == k)[0]
        if len(rows) == 0:
            continue
        enforced = rows[d.decision[rows] != ALLOW]
        first = int(rows[0])
        through = rows[d.decision[rows] != DENY]
        before = through[through < enforced[0]] if len(enforced) else through
        entry: dict[str, Any] = {
            "label": lab, "name": lab.split(":", 1)[1], "kind": "attack" if lab.startswith("attack:") else "hotfix",
            "agent": agent_v[agent_c[first]], "action": kind_v[kind_c[first]], "rows": int(len(rows)),
            "blocked": int((d.decision[rows] == DENY).sum()), "caught": bool(len(enforced)),
            "caught_at_first_contact": bool(d.decision[first] != ALLOW),
            "first_at_ns": int(t[first]),
            "patients_reached": _patients(trace["named_patients"], through),
            "patients_before_enforcement": _patients(trace["named_patients"], before),
        }
        if len(enforced):
            e = int(enforced[0])
            entry.update(first_enforcement_ns=int(t[e]), time_to_enforcement_s=round((int(t[e]) - int(t[first])) / 1e9, 3),
                         first_reason=REASONS[int(d.reason[e])])
        else:
            entry.update(first_enforcement_ns=None, time_to_enforcement_s=None, first_reason=None)
        out.append(entry)
    return sorted(out, key=lambda e: (e["first_at_ns"], e["label"]))


def _impact(d: Decisions, agent_c: np.ndarray, agent_v: list[str], replica: np.ndarray, t: np.ndarray, tod0: int,
            over: np.ndarray, collateral: np.ndarray, trace: pa.Table) -> dict[str, Any]:
    """Blocked-or-quarantined agent-replica minutes: minutes with an over-block, plus every minute
    a replica spent quarantined (to the end of the trace at most), counted once."""
    n = len(t)
    end = int(t.max()) + 1 if n else 0
    width = int(replica.max()) + 1 if n else 1
    minutes: dict[int, set[int]] = {}
    caused_by_attack: dict[int, set[int]] = {}
    for i in np.nonzero(over)[0].tolist():
        s = int(agent_c[i]) * width + int(replica[i])
        (caused_by_attack if collateral[i] else minutes).setdefault(s, set()).add(int(t[i]) // NS_PER_MIN)
    legit = ~mask_eq(trace["expected"], "deny")
    for e in _quarantines(d):
        i = e["row"]
        s = int(agent_c[i]) * width + int(replica[i])
        lo = int(t[i]) // NS_PER_MIN
        hi = (min(int(e["until_ns"]), end) - 1) // NS_PER_MIN
        target = minutes if legit[i] else caused_by_attack
        target.setdefault(s, set()).update(range(lo, hi + 1))
    for s, mins in caused_by_attack.items():
        mins -= minutes.get(s, set())

    def summarise(src: dict[int, set[int]]) -> tuple[int, dict[str, int], list[int]]:
        by_agent: dict[str, int] = {}
        hours = [0] * 24
        for s, mins in src.items():
            name = agent_v[s // width]
            by_agent[name] = by_agent.get(name, 0) + len(mins)
            if mins:
                m = np.fromiter(mins, dtype=np.int64)
                hours = (np.array(hours) + np.bincount(((m * NS_PER_MIN + tod0) // HOUR_NS) % 24, minlength=24)).tolist()
        return sum(by_agent.values()), dict(sorted(by_agent.items())), [int(h) for h in hours]

    total, by_agent, by_hour = summarise(minutes)
    c_total, c_agent, _ = summarise(caused_by_attack)
    return {"total": total, "by_agent": by_agent, "by_hour": by_hour,
            "after_attacks": c_total, "after_attacks_by_agent": c_agent}


def write_replay(trace: pa.Table, rep: Replay, out_dir: Path, *, policy_hash: str) -> None:
    """replay.parquet (trace + decision + reason) and the hash-chained events.jsonl."""
    table = with_decisions(trace, rep.decisions)
    pq.write_table(table, str(out_dir / "replay.parquet"), compression="zstd", write_statistics=False)
    path = out_dir / "events.jsonl"
    if path.exists():
        path.unlink()
    agent = trace["agent"].combine_chunks()
    replica = ints(trace["replica"])
    seq = ints(trace["seq"])
    rows = sorted({e["row"] for e in rep.decisions.events})
    names = dict(zip(rows, agent.take(pa.array(rows, type=pa.int64())).cast(pa.string()).to_pylist())) if rows else {}
    with HashLog(path) as log:
        for e in rep.decisions.events:
            i = e["row"]
            rec = {k: v for k, v in e.items() if k != "row"}
            rec.update(seq_row=int(seq[i]), agent=names[i], replica=int(replica[i]), policy=policy_hash)
            log.append(rec)
