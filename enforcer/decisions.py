"""What a decider returns for a trace: one decision and one reason per row, plus its events.

Both deciders of production return this: the reference engine (enforcer/engine.py, model mode)
and the kernel driver (paritybed/live.py, live mode, from the kernel's own events).  The replay,
the agreement between the two and the artefacts read it, so every number downstream says which
decider produced it (``decided_by``).  Codes are kernel_abi's (the mirror of bpf/paritybed.h).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from paritybed.enforcer.kernel_abi import DECISIONS, REASONS

#: Who decided: the reference engine (model mode) or the Linux kernel (live mode).
Decider = Literal["engine", "kernel"]


@dataclass
class Decisions:
    """Per-row decision and reason codes (aligned with the trace) plus the enforcement events
    (each with the ``row`` it belongs to, in row order)."""

    decision: np.ndarray  # int8, DECISIONS index
    reason: np.ndarray  # int8, REASONS index
    events: list[dict[str, Any]] = field(default_factory=list)
    decided_by: Decider = "engine"

    def decision_strings(self) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(self.decision.astype(np.int32)), pa.array(list(DECISIONS)))

    def reason_strings(self) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(self.reason.astype(np.int32)), pa.array(list(REASONS)))


def with_decisions(trace: pa.Table, d: Decisions) -> pa.Table:
    """The trace with ``decision`` and ``reason`` columns appended (the replay table)."""
    return trace.append_column("decision", d.decision_strings()).append_column("reason", d.reason_strings())
