"""The request trace: one row per agent action, columnar (Arrow in memory, Parquet on disk).

The trace is the contract between the simulation (which writes it), enforcement (which decides
each row: the reference engine in model mode, the kernel in live mode) and parity (which learns
the envelope from the staging trace and replays the production trace).  The schema is documented
in docs/trace.md; change both together.

Rows are in simulated-time order within an arm (``seq`` is the position); ``t_ns`` is integer
nanoseconds since the scenario start, so decisions that depend on time (token bucket, lane expiry)
are exact integer arithmetic in Python and in the kernel alike.

The simulation builds its (large) traces with ``paritybed.agents.emit.Emitter``, which interns
requests and contexts and expands bursts column-wise; `TraceBuilder` here is the simple row-wise
builder for small, hand-made traces (tests, synthetic traffic).  Both produce this schema.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from paritybed.core.errors import InputError
from paritybed.enforcer.classify import Classification, classify, request_bytes

TRACE_SCHEMA_VERSION = "paritybed.trace/1"

_DICT = pa.dictionary(pa.int32(), pa.string())
_LIST = pa.list_(pa.string())

#: name -> (arrow type, description).  Order is the column order on disk.
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "arm": (_DICT, "traffic source: production | staging"),
    "seq": (pa.int64(), "row position within the arm, in time order"),
    "t_ns": (pa.int64(), "simulated time, integer ns since the scenario start"),
    "agent": (_DICT, "fleet agent name (the policy key), e.g. cds"),
    "agent_class": (_DICT, "ambient_scribe | cds | prior_auth"),
    "replica": (pa.int16(), "replica number of the agent (one process / cgroup each in live mode)"),
    "kind": (_DICT, "fhir (an HTTP request to the FHIR server) | egress (a TCP connect to an external endpoint) | lane_open (a break-glass activation) | context_open / context_close (a launch context opened or closed by the EHR side)"),
    "method": (_DICT, "HTTP method (fhir rows), else empty"),
    "path": (pa.string(), "HTTP request target incl. query, e.g. /fhir/Observation?patient=..&category=laboratory (fhir rows)"),
    "resource_type": (_DICT, "FHIR resource type the request acts on (fhir rows)"),
    "interaction": (_DICT, "read | vread | search | create | update | delete | history (fhir rows)"),
    "shape": (_DICT, "plain, or the family of a request the strict parser cannot classify (bundle, operation, include, compartment, chained, ...)"),
    "touches": (_LIST, "every (type, interaction) the request touches as Type:interaction, the primary pair first (the classifier's; fhir rows)"),
    "params": (_DICT, "sorted, comma-joined query parameter names (fhir rows)"),
    "resource_id": (pa.string(), "the id read or updated, else empty"),
    "context_id": (pa.string(), "clinical context: Encounter id, Claim id or CDS query id"),
    "context_kind": (_DICT, "encounter | claim | query | lane | attack"),
    "launch_context": (pa.string(), "launch context id the row presents (X-Launch-Context) or opens / closes (context rows), else empty"),
    "encounter_id": (pa.string(), "the Encounter of the row's launch context (context rows and the requests made in it), else empty"),
    "patient_id": (pa.string(), "the Patient the row concerns (empty for egress without a patient)"),
    "named_patients": (_LIST, "the Patient ids the request names (the classifier's: target, compartment, patient references, _id)"),
    "named_encounters": (_LIST, "the Encounter ids the request names"),
    "unknown_patient": (pa.bool_(), "the request names a patient without an id (a search of patients by name, a chain, a non-plain shape)"),
    "workflow": (_DICT, "clinical trigger: ed_visit, admission, rounds, handoff, med_rec_admission, med_rec_discharge, discharge, outpatient, lab_result, order, prior_auth, break_glass, attack, ..."),
    "lane": (_DICT, "break-glass class the row runs under (code_blue, rapid_response, ed_triage), else empty"),
    "claim_id": (pa.string(), "break-glass claim id the row presents (lane rows), else empty"),
    "identity": (pa.string(), "lane_open rows: the clinician identity claim (Practitioner id|role)"),
    "duration_ns": (pa.int64(), "lane_open rows: requested lane duration in ns, else 0"),
    "endpoint": (_DICT, "egress rows: endpoint name as the agent knows it"),
    "address": (_DICT, "egress rows: ip:port connected to"),
    "egress_calls": (pa.int32(), "egress rows: HTTP calls made over the connection (e.g. embedding calls per query)"),
    "expected": (_DICT, "ground truth: allow (legitimate clinical work) | deny (attack, hotfix outside the BAA registry, access after lane expiry)"),
    "label": (_DICT, "empty, or attack:<name> | hotfix:<name> | lane-expiry-probe"),
}

TRACE_SCHEMA = pa.schema(
    [pa.field(n, t, nullable=False) for n, (t, _) in COLUMNS.items()],
    metadata={b"paritybed.schema": TRACE_SCHEMA_VERSION.encode()},
)

#: Column defaults for rows that do not set them.
DEFAULTS: dict[str, Any] = {
    n: (0 if pa.types.is_integer(t) else () if pa.types.is_list(t) else False if pa.types.is_boolean(t) else "")
    for n, (t, _) in COLUMNS.items()
}
DEFAULTS["shape"] = "plain"
DEFAULTS["expected"] = "allow"
#: What the classifier says of a request (``request_facts``): filled in for fhir rows.
FACT_COLUMNS = ("touches", "named_patients", "named_encounters", "unknown_patient")


@lru_cache(maxsize=65536)
def request_facts(method: str, path: str, base: str = "/fhir", *, body: bool = False) -> Classification:
    """What the kernel's classifier sees in the request a row stands for (method and target as
    the live worker writes them): its shape, the pairs it touches, the patients and encounters it
    names.  The trace records these, so the engine decides what the kernel decides."""
    return classify(request_bytes(method, path, body=b"{}" if body or method in ("POST", "PUT") else b""), base)


def facts_columns(c: Classification) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], bool]:
    """The trace's FACT_COLUMNS of a classification."""
    return (tuple(f"{t}:{i}" for t, i in c.touches), c.patients, c.encounters, c.unknown_patient)


def _row_facts(row: dict[str, Any]) -> None:
    """Fill a hand-made fhir row's facts: what the classifier reads in its path when the row
    gives a path that classifies as the row's pair (or no pair: the path's is taken), else the
    row's primary pair alone, naming nobody unless told."""
    if any(k in row for k in FACT_COLUMNS):
        row.setdefault("touches", (f"{row['resource_type']}:{row['interaction']}",) if row.get("resource_type") else ())
        return
    if row.get("path"):
        c = request_facts(row.get("method") or "GET", row["path"])
        if not row.get("resource_type") or (c.resource_type, c.interaction) == (row["resource_type"], row.get("interaction")):
            row.update(zip(FACT_COLUMNS, facts_columns(c)))
            row.update(resource_type=c.resource_type, interaction=c.interaction)
            row.setdefault("shape", c.shape)
            return
    if row.get("resource_type") and row.get("interaction"):
        row["touches"] = (f"{row['resource_type']}:{row['interaction']}",)
    row["unknown_patient"] = row.get("shape", "plain") != "plain"  # as the classifier says of them


class TraceBuilder:
    """Accumulates rows column-wise (fast appends), then sorts by time into an Arrow table;
    ``add`` takes one row as keyword arguments."""

    def __init__(self, arm: str) -> None:
        self.arm = arm
        self._cols: dict[str, list[Any]] = {n: [] for n in COLUMNS if n not in ("arm", "seq")}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, **row: Any) -> None:
        if row.get("kind") == "fhir":
            _row_facts(row)
        for n, col in self._cols.items():
            col.append(row.get(n, DEFAULTS[n]))
        self._n += 1

    def build(self) -> pa.Table:
        """Sort by (t_ns, insertion order), number the rows, and return the typed table."""
        import numpy as np

        t = np.asarray(self._cols["t_ns"], dtype=np.int64)
        order = np.argsort(t, kind="stable")
        arrays = []
        for name, (typ, _) in COLUMNS.items():
            if name == "arm":
                arrays.append(pa.DictionaryArray.from_arrays(pa.array(np.zeros(self._n, dtype=np.int32)), pa.array([self.arm])))
                continue
            if name == "seq":
                arrays.append(pa.array(np.arange(self._n, dtype=np.int64)))
                continue
            raw = self._cols[name]
            if pa.types.is_dictionary(typ):
                arr = pa.array(raw, type=pa.string()).take(pa.array(order)).dictionary_encode()
                arr = arr.cast(typ)
            elif pa.types.is_integer(typ):
                arr = pa.array(np.asarray(raw, dtype=typ.to_pandas_dtype())[order], type=typ)
            else:
                arr = pa.array(raw, type=typ).take(pa.array(order))
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=TRACE_SCHEMA)


def write_trace(table: pa.Table, path: str | Path) -> None:
    """Write a trace as Parquet.  Deterministic: same table -> same bytes."""
    check_schema(table, str(path))
    pq.write_table(table, str(path), compression="zstd", use_dictionary=True, write_statistics=False)


def read_trace(path: str | Path) -> pa.Table:
    """Read a trace written by ``write_trace``; a missing/corrupt/foreign file is an InputError."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such trace file")
    try:
        table = pq.read_table(str(p))
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise InputError(f"{p}: not a readable Parquet trace ({e})") from None
    check_schema(table, str(p))
    return table


def check_schema(table: pa.Table, where: str) -> None:
    missing = [n for n in COLUMNS if n not in table.column_names]
    if missing:
        raise InputError(f"{where}: not a paritybed trace: missing columns {missing} (see docs/trace.md)")
