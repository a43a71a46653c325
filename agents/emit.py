"""Fast trace emission: the simulation records *bursts*, not rows, and the rows are expanded
column-wise at the end.

A week of a 300-bed hospital is about half a million requests per arm.  Appending each row's
27 columns in Python would cost more than the whole discrete-event simulation, so the three
things a row is made of are interned once and referenced by index:

* a **request** (kind, method, path, resource type, interaction, params, resource id, patient,
  endpoint, address, egress calls): the same ``GET /fhir/Condition?patient=X&_count=50`` is
  built once per patient, however often it is sent;
* a **context** (agent, replica, context id and kind, patient, workflow, lane, claim, identity,
  requested duration): one per clinical context (an encounter's scribe burst, a CDS query, a
  claim, a break-glass activation);
* a **tag** (expected outcome, label): ``allow`` for clinical work, ``deny`` + a label for an
  attack, a hotfix connect or an access after a lane's expiry.

A burst is (start time, context, tag, tuple of request indices); the requests of a burst are a
few milliseconds apart (each waits for the previous response), drawn at build time from a
seeded generator.  `Emitter.build` turns the bursts into the typed, time-ordered trace table of
agents/trace.py with numpy gathers and Arrow ``take``: no per-row Python work.
"""

from __future__ import annotations

from array import array
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from paritybed.agents.trace import COLUMNS, FACT_COLUMNS, TRACE_SCHEMA, facts_columns, request_facts

REQUEST_COLUMNS = ("kind", "method", "path", "resource_type", "interaction", "shape", "params",
                   "resource_id", "patient_id", "endpoint", "address", "egress_calls") + FACT_COLUMNS
CONTEXT_COLUMNS = ("agent", "agent_class", "replica", "context_id", "context_kind", "patient_id",
                   "workflow", "lane", "claim_id", "identity", "duration_ns", "launch_context", "encounter_id")
TAG_COLUMNS = ("expected", "label")

#: Gap between consecutive requests of one burst: 1 ms + exponential with this mean (ms).
GAP_MIN_NS = 1_000_000
GAP_MEAN_NS = 8_000_000

ALLOW = 0  # the tag index of plain clinical work (expected=allow, no label)


class Emitter:
    """Collects interned requests/contexts/tags and bursts; `build` makes the trace table."""

    def __init__(self, arm: str, gap_rng: np.random.Generator, base: str = "/fhir") -> None:
        self.arm = arm
        self.base = base  # the FHIR base of the requests' paths (what the classifier strips)
        self._gap_rng = gap_rng
        self._req_index: dict[tuple[Any, ...], int] = {}
        self.requests: list[tuple[Any, ...]] = []
        self.contexts: list[tuple[Any, ...]] = []
        self._tag_index: dict[tuple[str, str], int] = {("allow", ""): ALLOW}
        self.tags: list[tuple[str, str]] = [("allow", "")]
        self._bursts = array("q")  # flat (t_ns, context, tag, rows) per burst
        self._rows = array("q")  # request index per row, burst after burst
        self._tails = array("q")  # flat (not before t_ns, after the rows of context, context, request) per tail

    # ------------------------------------------------------------------ interning
    def request(self, *, kind: str = "fhir", method: str = "", path: str = "", resource_type: str = "",
                interaction: str = "", shape: str = "plain", params: str = "", resource_id: str = "",
                patient_id: str = "", endpoint: str = "", address: str = "", egress_calls: int = 0) -> int:
        """Index of a request (interned: the same request always gets the same index).  A FHIR
        request is classified once here (the touches and names the trace records); a request
        the classifier reads otherwise than the simulation meant is a programming error."""
        key = (kind, method, path, resource_type, interaction, shape, params, resource_id, patient_id,
               endpoint, address, int(egress_calls))
        i = self._req_index.get(key)
        if i is None:
            facts: tuple = ((), (), (), False)
            if kind == "fhir":
                c = request_facts(method, path, self.base)
                if (c.shape, c.resource_type, c.interaction) != (shape, resource_type, interaction):
                    raise ValueError(f"{method} {path} classifies as {c.shape} {c.resource_type} {c.interaction}, "
                                     f"not {shape} {resource_type} {interaction}")
                facts = facts_columns(c)
            i = self._req_index[key] = len(self.requests)
            self.requests.append(key + facts)
        return i

    def request_type(self, i: int) -> str:
        return self.requests[i][3]

    def context(self, agent: str, agent_class: str, replica: int, context_id: str, context_kind: str,
                patient_id: str, workflow: str, lane: str = "", claim_id: str = "", identity: str = "",
                duration_ns: int = 0, launch_context: str = "", encounter_id: str = "") -> int:
        """Index of a new context (not interned: contexts are mostly unique)."""
        self.contexts.append((agent, agent_class, replica, context_id, context_kind, patient_id, workflow,
                              lane, claim_id, identity, int(duration_ns), launch_context, encounter_id))
        return len(self.contexts) - 1

    def tag(self, expected: str, label: str = "") -> int:
        key = (expected, label)
        i = self._tag_index.get(key)
        if i is None:
            i = self._tag_index[key] = len(self.tags)
            self.tags.append(key)
        return i

    # ------------------------------------------------------------------ bursts
    def burst(self, t_ns: int, ctx: int, reqs: Sequence[int], tag: int = ALLOW) -> None:
        """Requests `reqs` sent back to back from `t_ns` (ms apart) in context `ctx`."""
        if reqs:
            self._bursts.extend((t_ns, ctx, tag, len(reqs)))
            self._rows.extend(reqs)

    def tail(self, t_ns: int, after: int, ctx: int, req: int) -> None:
        """One row of context `ctx` placed after every burst row of context `after` (a few ms
        after the last, and not before `t_ns`): what ends a piece of work, such as the EHR closing
        the launch context when the note is signed, must follow the work's last request, whose
        time is only drawn at build."""
        self._tails.extend((t_ns, after, ctx, req))

    def __len__(self) -> int:
        return len(self._rows) + len(self._tails) // 4

    def _burst_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        b = np.frombuffer(self._bursts, dtype=np.int64).reshape(-1, 4)
        return b[:, 0], b[:, 1], b[:, 2], b[:, 3]

    # ------------------------------------------------------------------ build
    def row_times(self) -> np.ndarray:
        """Per-row time: burst start + cumulative in-burst gaps (the first row at the start)."""
        b_t, _, _, n = self._burst_columns()
        total = int(n.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        gaps = GAP_MIN_NS + (self._gap_rng.exponential(GAP_MEAN_NS, total)).astype(np.int64)
        starts = np.zeros(len(n), dtype=np.int64)
        np.cumsum(n[:-1], out=starts[1:])
        gaps[starts] = 0
        cs = np.cumsum(gaps)
        return np.repeat(b_t, n) + cs - np.repeat(cs[starts], n)

    def build(self) -> pa.Table:
        """The trace table (schema agents/trace.py), rows in time order (ties: emission order)."""
        t = self.row_times()
        _, b_ctx, b_tag, b_n = self._burst_columns()
        req = np.frombuffer(self._rows, dtype=np.int64)
        ctx = np.repeat(b_ctx, b_n)
        tag = np.repeat(b_tag, b_n)
        if self._tails:
            tails = np.frombuffer(self._tails, dtype=np.int64).reshape(-1, 4)
            last = np.full(len(self.contexts), -GAP_MIN_NS, dtype=np.int64)
            np.maximum.at(last, ctx, t)
            t = np.concatenate([t, np.maximum(tails[:, 0], last[tails[:, 1]] + GAP_MIN_NS)])
            req = np.concatenate([req, tails[:, 3]])
            ctx = np.concatenate([ctx, tails[:, 2]])
            tag = np.concatenate([tag, np.full(len(tails), ALLOW, dtype=np.int64)])
        n = len(t)
        order = np.argsort(t, kind="stable")
        req, ctx, tag = req[order], ctx[order], tag[order]
        sources = {
            **_by_column(self.requests, REQUEST_COLUMNS, req),
            **_by_column(self.contexts, CONTEXT_COLUMNS, ctx),
            **_by_column(self.tags, TAG_COLUMNS, tag),
        }
        arrays: list[pa.Array] = []
        for name, (typ, _) in COLUMNS.items():
            if name == "arm":
                arrays.append(pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([self.arm])))
            elif name == "seq":
                arrays.append(pa.array(np.arange(n, dtype=np.int64)))
            elif name == "t_ns":
                arrays.append(pa.array(t[order]))
            elif name == "patient_id":
                arrays.append(self._patient_column(sources["patient_id"][0], sources["context_patient_id"][0], req, ctx))
            else:
                values, idx = sources[name]
                arrays.append(_gather(values, idx, typ))
        return pa.Table.from_arrays(arrays, schema=TRACE_SCHEMA)

    @staticmethod
    def _patient_column(r_pid: list[str], c_pid: list[str], req: np.ndarray, ctx: np.ndarray) -> pa.Array:
        """The request's patient (a read or search names one) or else the context's."""
        values = list(r_pid) + list(c_pid)
        has = np.fromiter((bool(p) for p in r_pid), dtype=bool, count=len(r_pid))
        idx = np.where(has[req], req, len(r_pid) + ctx) if len(req) else req
        return _gather(values, idx, pa.string())


def _by_column(table: list[tuple[Any, ...]], names: tuple[str, ...], idx: np.ndarray) -> dict[str, tuple[list[Any], np.ndarray]]:
    """Column lists of an interned table (a context's patient is keyed context_patient_id)."""
    cols = list(zip(*table)) if table else [() for _ in names]
    return {(("context_" + n) if (n == "patient_id" and names is CONTEXT_COLUMNS) else n): (list(c), idx)
            for n, c in zip(names, cols)}


def _gather(values: list[Any], idx: np.ndarray, typ: pa.DataType) -> pa.Array:
    """`values[idx]` as an Arrow array of `typ`; dictionary columns keep only used values, in
    first-interned order, so the dictionary is deterministic and describes the rows exactly."""
    if pa.types.is_dictionary(typ):
        small = pa.array(values, type=pa.string()).dictionary_encode()
        codes = small.indices.to_numpy(zero_copy_only=False).astype(np.int64)[idx] if len(idx) else np.zeros(0, np.int64)
        used = np.bincount(codes, minlength=len(small.dictionary)) > 0
        remap = np.cumsum(used) - 1
        dictionary = small.dictionary.filter(pa.array(used))
        return pa.DictionaryArray.from_arrays(pa.array(remap[codes].astype(np.int32)), dictionary).cast(typ)
    if pa.types.is_integer(typ):
        return pa.array(np.asarray(values, dtype=typ.to_pandas_dtype())[idx] if len(idx) else np.zeros(0, typ.to_pandas_dtype()), type=typ)
    return pa.array(values, type=typ).take(pa.array(idx))
