"""Sliding-window counts over sorted event times (the burst metrics and the learned rate limit).

Traces can be tens of millions of rows, so these work on numpy arrays, never on Python objects
per row.  Column access helpers are in paritybed.core.columns.
"""

from __future__ import annotations

import numpy as np


def sliding_peak(t_ns: np.ndarray, window_ns: int) -> int:
    """Largest number of events inside any half-open window [t, t + window) of sorted times."""
    if len(t_ns) == 0:
        return 0
    ends = np.searchsorted(t_ns, t_ns + window_ns, side="left")
    return int((ends - np.arange(len(t_ns))).max())


def sliding_counts(t_ns: np.ndarray, window_ns: int) -> np.ndarray:
    """For each event (sorted times), the events in [t_i, t_i + window): the window it opens."""
    if len(t_ns) == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.searchsorted(t_ns, t_ns + window_ns, side="left")
    return ends - np.arange(len(t_ns))
