"""Launch contexts: which patients and encounters a trace row names, and the contexts each replica
holds (docs/enforcement.md, "Clinical context binding").

The reference engine decides with these, and parity learns from them whether an agent stayed in
its contexts in staging, so both read a request's names the one way the kernel does: the
classifier's distinct patient and encounter ids (kept as codes here, as 64-bit hashes there), the
first of each, how many, and whether an unknown patient is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from paritybed.core.columns import codes

#: Distinct patients a request's names are kept for (the kernel's PB_NPAT): a request naming more
#: is over any new-patient budget (and never in one context).
NPAT_MAX = 4
#: Patients a replica's set records (per replica, for the new-patient budget).  A full set records
#: no more: a patient not in it costs one step of the budget every time it is named.
SEEN_MAX = 4096


@dataclass
class Naming:
    """Per trace row (lists, for the sequential pass): the launch context it presents or opens or
    closes (code, -1 none); how many distinct patients and encounters it names and the first of
    each (codes, -1 none); whether it names an unknown patient; ``named``: any of these.  Context
    rows' patient and encounter are ``pat``/``enc`` too.  ``patients(i)``: every patient row i
    names, in order."""

    ctx: list[int]
    npat: list[int]
    pat: list[int]
    nenc: list[int]
    enc: list[int]
    unknown: list[bool]
    named: list[bool]
    fast: list[int] = field(default_factory=list)  # see naming()
    pat_flat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pat_start: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))

    def patients(self, i: int) -> list[int]:
        return self.pat_flat[self.pat_start[i]:self.pat_start[i + 1]].tolist()


class _Ids:
    """One code per distinct id string, shared by every column that holds such ids."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {"": -1}

    def encode(self, col: pa.ChunkedArray | pa.Array) -> np.ndarray:
        c, v = codes(col)
        table = np.array([self.index.setdefault(x, len(self.index) - 1) for x in v] or [-1], dtype=np.int64)
        return table[c] if len(c) else np.zeros(0, np.int64)


def _lists(col: pa.ChunkedArray, ids: _Ids) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lengths, first code or -1, flattened codes, start of each row in them) of a list<string>
    column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lens = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = ids.encode(pc.list_flatten(arr))
    start = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=start[1:])
    first = np.full(len(lens), -1, dtype=np.int64)
    has = lens > 0
    first[has] = flat[start[:-1][has]]
    return lens, first, flat, start


def naming(trace: pa.Table, context_rows: np.ndarray, unscoped_ok: np.ndarray | None = None) -> Naming:
    """The names of every row; ``context_rows`` marks context_open/close rows, whose patient and
    encounter are the context's (``patient_id``, ``encounter_id``).  ``fast`` (for the engine's
    common path): the context a row naming at most one patient and one encounter and no unknown
    patient presents (its code), -2 for a row naming nobody whose touches are all unscoped
    (``unscoped_ok``), -1 for any other row (the context check proper decides it)."""
    pids, eids = _Ids(), _Ids()
    npat, pat, pat_flat, start = _lists(trace["named_patients"], pids)
    nenc, enc, _, _ = _lists(trace["named_encounters"], eids)
    unknown = trace["unknown_patient"].to_numpy().astype(bool) if trace.num_rows else np.zeros(0, bool)
    if context_rows.any():
        pat = np.where(context_rows, pids.encode(trace["patient_id"]), pat)
        enc = np.where(context_rows, eids.encode(trace["encounter_id"]), enc)
    ctx = _Ids().encode(trace["launch_context"])
    named = (npat > 0) | (nenc > 0) | unknown
    simple = (ctx >= 0) & ~unknown & (npat <= 1) & (nenc <= 1)
    free = unscoped_ok if unscoped_ok is not None else np.zeros(len(npat), dtype=bool)
    fast = np.where(named, np.where(simple, ctx, -1), np.where(free, -2, -1))
    return Naming(ctx=ctx.tolist(), npat=npat.tolist(), pat=pat.tolist(), nenc=nenc.tolist(), enc=enc.tolist(),
                  unknown=unknown.tolist(), named=named.tolist(), fast=fast.tolist(), pat_flat=pat_flat,
                  pat_start=start)


class Book:
    """The launch contexts replicas hold: per state slot, context code -> (patient, encounter,
    expiry).  A context is in force while ``t < expiry`` and until it is closed."""

    def __init__(self) -> None:
        self.open: dict[int, dict[int, tuple[int, int, int]]] = {}

    def others_open(self, s: int, c: int, t: int) -> int:
        """Contexts of slot s in force at t, other than c (expired ones are dropped)."""
        held = self.open.get(s)
        if not held:
            return 0
        for k in [k for k, v in held.items() if v[2] <= t]:
            del held[k]
        return len(held) - (c in held)

    def put(self, s: int, c: int, patient: int, encounter: int, expiry: int) -> None:
        self.open.setdefault(s, {})[c] = (patient, encounter, expiry)

    def close(self, s: int, c: int) -> None:
        self.open.get(s, {}).pop(c, None)

    def holds(self, s: int, c: int, t: int, npat: int, pat: int, nenc: int, enc: int, unknown: bool) -> bool:
        """A request of slot s presenting context c at t, naming ``npat`` patients (the first
        ``pat``), ``nenc`` encounters (the first ``enc``) and maybe an unknown patient, is in
        context: c is in force, every patient named is its patient, every encounter its
        encounter, and no unknown patient is named."""
        if c < 0 or unknown or npat > 1 or nenc > 1:
            return False
        got = self.open.get(s, {}).get(c)
        if got is None or t >= got[2]:
            return False
        if npat and pat != got[0]:
            return False
        return not nenc or (got[1] >= 0 and enc == got[1])


class SeenPatients:
    """The patients one replica named lately, for the new-patient budget: patient -> when it was
    last named in an allowed request.  A patient is **new** when it is not in the set or was last
    named ``window_ns`` or longer ago.  Entries are never removed (a patient named again is
    updated in place); a set holding ``SEEN_MAX`` entries records no other patient."""

    def __init__(self, window_ns: int) -> None:
        self.window = window_ns
        self.last: dict[int, int] = {}

    def new(self, patients: list[int], t: int) -> list[int]:
        last, w = self.last, self.window
        return [p for p in patients if p not in last or t - last[p] >= w]

    def named(self, patients: list[int], t: int) -> None:
        last = self.last
        for p in patients:
            if p in last or len(last) < SEEN_MAX:
                last[p] = t
