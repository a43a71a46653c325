"""Kernel vs reference engine on the same production rows: the invariant live mode checks.

In live mode the kernel decides production; the reference engine decides the same rows under
the same policy once more, and the two are compared row by row on the decision (allow, deny,
alert) and on the reason.  On the virtual clock they must agree on every row (the run exits 1
otherwise); on the real clock time is compressed and they may differ, which is reported, not
hidden.  Computed once per run (paritybed/run.py); live.json and parity.json carry the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from paritybed.enforcer.decisions import Decisions
from paritybed.enforcer.kernel_abi import ALERT, DECISIONS, DENY, REASONS

FIRST = 20  # disagreements listed row by row


def agreement(trace: pa.Table, kernel: Decisions, engine: Decisions) -> dict[str, Any]:
    """Row-by-row comparison of the kernel's decisions and reasons with the engine's."""
    dec = kernel.decision != engine.decision
    rea = kernel.reason != engine.reason
    bad = np.nonzero(dec | rea)[0]
    first = []
    for i in bad[:FIRST].tolist():
        r = trace.slice(i, 1).to_pylist()[0]
        first.append({"row": i, "t_ns": r["t_ns"], "agent": f"{r['agent']}-{r['replica']}", "kind": r["kind"],
                      "request": r["path"] or r["address"] or r["lane"],
                      "engine": DECISIONS[engine.decision[i]], "engine_reason": REASONS[engine.reason[i]],
                      "kernel": DECISIONS[kernel.decision[i]], "kernel_reason": REASONS[kernel.reason[i]]})
    return {"compared": "decision and reason", "rows": int(len(dec)), "disagreements": int(len(bad)),
            "decision_disagreements": int(dec.sum()), "reason_disagreements": int((rea & ~dec).sum()),
            "first_disagreements": first,
            "engine_denied": int((engine.decision == DENY).sum()), "kernel_denied": int((kernel.decision == DENY).sum()),
            "engine_alerted": int((engine.decision == ALERT).sum()), "kernel_alerted": int((kernel.decision == ALERT).sum()),
            "denied_by_reason": _by_reason(kernel)}


def _by_reason(d: Decisions) -> dict[str, int]:
    codes, counts = np.unique(d.reason[d.decision == DENY], return_counts=True)
    return {REASONS[int(c)]: int(n) for c, n in sorted(zip(codes.tolist(), counts.tolist()), key=lambda x: REASONS[x[0]])}
