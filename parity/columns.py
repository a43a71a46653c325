"""Small columnar helpers shared by the parity modules (envelope, replay, profile, criteria).

Traces can be tens of millions of rows, so everything here works on dictionary codes and numpy
arrays, never on Python objects per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NS_PER_S = 1_000_000_000
NS_PER_MIN = 60 * NS_PER_S
FIVE_MIN_NS = 5 * NS_PER_MIN
DAY_NS = 24 * 60 * NS_PER_MIN


def codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes (int64) and dictionary values of a string column, encoded or not."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    if col.null_count:
        col = pc.fill_null(col.cast(pa.string()), "").dictionary_encode()
    return col.indices.to_numpy(zero_copy_only=False).astype(np.int64), [str(x) for x in col.dictionary.to_pylist()]


def mask_eq(col: pa.ChunkedArray | pa.Array, value: str) -> np.ndarray:
    """Boolean numpy mask: rows whose string column equals ``value``."""
    c, v = codes(col)
    if value not in v:
        return np.zeros(len(c), dtype=bool)
    return c == v.index(value)


def ints(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An integer column as a numpy int64 array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


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
