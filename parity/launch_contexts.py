"""What staging shows of each agent's launch contexts: the envelope's patient-level dimension.

Per agent, from the legitimate requests outside break-glass lanes (docs/enforcement.md, "Clinical
context binding"; docs/policy.md, how it compiles):

* whether it is **context-bound**: it had launch contexts, and every request naming a patient or
  an encounter was in the context it presented (the same check the engine makes, with the
  contexts held as the EHR side opened and closed them, no limits);
* the pairs it used **unscoped** (every touch of a request naming nobody);
* the **longest context held** (opening to closing) and the **most contexts open at once** on one
  replica;
* the busiest 5 minutes of **new patients** on one replica (what the new-patient budget of an
  agent that is not bound is learned from), counted as the budget counts them: a patient the
  replica has not named in the last 5 minutes is one, a request naming an unknown patient one more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from paritybed.core.columns import codes, ints, mask_eq
from paritybed.core.units import FIVE_MIN_NS
from paritybed.enforcer.contexts import Book, SeenPatients, naming
from paritybed.parity.windows import sliding_peak

Pair = tuple[str, str]


@dataclass
class ContextSeen:
    """One agent's launch contexts in a trace (module doc)."""

    contexts: int = 0  # launch contexts opened
    named: int = 0  # legitimate requests outside lanes that name a patient or an encounter
    in_context: int = 0  # ... of which in the context they presented
    unscoped: dict[Pair, int] = field(default_factory=dict)  # pairs touched by requests naming nobody
    longest_held_ns: int = 0
    max_open: int = 0  # most contexts open at once on one replica
    new_patient_peak_5min: int = 0  # busiest replica, busiest 5 minutes of new patients
    patients: int = 0  # distinct patients named

    @property
    def bound(self) -> bool:
        return self.contexts > 0 and self.in_context == self.named

    def to_dict(self) -> dict[str, Any]:
        return {"contexts": self.contexts, "bound": self.bound, "named_requests": self.named,
                "in_context": self.in_context, "out_of_context": self.named - self.in_context,
                "unscoped": [{"type": t, "interaction": i, "count": n} for (t, i), n in sorted(self.unscoped.items())],
                "longest_held_s": self.longest_held_ns / 1e9, "max_open": self.max_open,
                "new_patient_peak_5min": self.new_patient_peak_5min, "patients": self.patients}


def learn_contexts(trace: pa.Table, learn: np.ndarray) -> dict[str, ContextSeen]:
    """Per agent, the launch contexts of ``trace``; ``learn`` marks the rows to learn from
    (legitimate requests outside break-glass lanes)."""
    n = trace.num_rows
    if n == 0:
        return {}
    agent_c, agent_v = codes(trace["agent"])
    rep = ints(trace["replica"])
    slot = agent_c * (int(rep.max()) + 1) + rep
    t = ints(trace["t_ns"])
    dur = ints(trace["duration_ns"])
    is_open, is_close = mask_eq(trace["kind"], "context_open"), mask_eq(trace["kind"], "context_close")
    fhir = mask_eq(trace["kind"], "fhir") & learn
    nm = naming(trace, is_open | is_close)
    out = {name: ContextSeen() for name in agent_v}
    book = Book()
    opened: dict[tuple[int, int], int] = {}  # (slot, context) -> when it opened
    last_use: dict[tuple[int, int], int] = {}
    seen: dict[int, SeenPatients] = {}
    distinct: dict[int, set[int]] = {}
    first_seen: dict[int, list[int]] = {}  # slot -> times a new patient was named
    rows = np.nonzero(is_open | is_close | fhir)[0].tolist()
    for i in rows:
        s, c, ti = int(slot[i]), nm.ctx[i], int(t[i])
        cs = out[agent_v[agent_c[i]]]
        if is_open[i]:
            cs.contexts += 1
            book.put(s, c, nm.pat[i], nm.enc[i], ti + int(dur[i]))
            opened[(s, c)] = ti
            cs.max_open = max(cs.max_open, book.others_open(s, -1, ti))
        elif is_close[i]:
            book.close(s, c)
            if (s, c) in opened:
                cs.longest_held_ns = max(cs.longest_held_ns, ti - opened.pop((s, c)))
        elif nm.named[i]:
            cs.named += 1
            if book.holds(s, c, ti, nm.npat[i], nm.pat[i], nm.nenc[i], nm.enc[i], nm.unknown[i]):
                cs.in_context += 1
                last_use[(s, c)] = ti
            mine = seen.setdefault(s, SeenPatients(FIVE_MIN_NS))
            named = nm.patients(i)
            k = len(mine.new(named, ti)) + (1 if nm.unknown[i] else 0)
            mine.named(named, ti)
            distinct.setdefault(s, set()).update(named)
            if k:
                first_seen.setdefault(s, []).extend([ti] * k)
    for (s, c), t0 in opened.items():  # never closed before the trace ended: held until its last use
        if (s, c) in last_use:
            cs = out[agent_v[s // (int(rep.max()) + 1)]]
            cs.longest_held_ns = max(cs.longest_held_ns, last_use[(s, c)] - t0)
    width = int(rep.max()) + 1
    for s, times in first_seen.items():
        cs = out[agent_v[s // width]]
        cs.new_patient_peak_5min = max(cs.new_patient_peak_5min, sliding_peak(np.asarray(times), FIVE_MIN_NS))
    for s, mine in distinct.items():
        out[agent_v[s // width]].patients += len(mine)
    _unscoped(trace, fhir, nm.named, agent_c, agent_v, out)
    return out


def _unscoped(trace: pa.Table, fhir: np.ndarray, named: list[bool], agent_c: np.ndarray, agent_v: list[str],
              out: dict[str, ContextSeen]) -> None:
    """The pairs each agent touched in requests naming nobody."""
    rows = np.nonzero(fhir & ~np.asarray(named, dtype=bool))[0]
    if not len(rows):
        return
    touches = trace["touches"].take(pa.array(rows)).combine_chunks()
    lens = pc.list_value_length(touches).to_numpy(zero_copy_only=False).astype(np.int64)
    flat_c, flat_v = codes(pc.list_flatten(touches))
    who = np.repeat(agent_c[rows], lens)
    key = who * max(1, len(flat_v)) + flat_c
    u, cnt = np.unique(key, return_counts=True)
    for k, m in zip(u.tolist(), cnt.tolist()):
        a, p = divmod(k, max(1, len(flat_v)))
        tp, _, inter = flat_v[p].partition(":")
        out[agent_v[a]].unscoped[(tp, inter)] = int(m)
