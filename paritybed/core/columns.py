"""Arrow column helpers shared by the reference engine and the parity modules.

Traces can be tens of millions of rows, so everything here works on dictionary codes and numpy
arrays, never on Python objects per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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
