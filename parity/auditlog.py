"""Tamper-evident FHIR AuditEvent NDJSON logs, and one verifier for every chained log we write.

The JSON logs use ``paritybed.core.hashlog`` (``seq``/``prev``/``hash`` keys).  An AuditEvent may not
carry foreign keys, so its chain lives in an extension (valid R4)::

    {"url": "urn:paritybed:hash-chain", "extension": [
        {"url": "seq", "valueInteger": 0}, {"url": "prev", "valueString": "sha256:00.."},
        {"url": "hash", "valueString": "sha256:.."}]}

``hash`` is sha256 over the canonical JSON (sorted keys, no spaces) of the resource without the
``hash`` sub-extension.  Editing, removing, inserting or reordering a line breaks the chain there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from paritybed.core.hashlog import GENESIS, Verification
from paritybed.core.hashlog import verify as verify_jsonl

CHAIN_URL = "urn:paritybed:hash-chain"


def _canonical(d: dict[str, Any]) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _without_hash(ev: dict[str, Any]) -> dict[str, Any]:
    out = dict(ev)
    exts = []
    for x in ev.get("extension", []):
        if x.get("url") == CHAIN_URL:
            x = {**x, "extension": [s for s in x.get("extension", []) if s.get("url") != "hash"]}
        exts.append(x)
    out["extension"] = exts
    return out


def chain_auditevents(events: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write AuditEvents as a chained NDJSON log (a fresh file: one run, one log)."""
    prev, n = GENESIS, 0
    with Path(path).open("w", encoding="utf-8") as f:
        for ev in events:
            ev = dict(ev)
            link = {"url": CHAIN_URL, "extension": [{"url": "seq", "valueInteger": n}, {"url": "prev", "valueString": prev}]}
            ev["extension"] = [x for x in ev.get("extension", []) if x.get("url") != CHAIN_URL] + [link]
            h = "sha256:" + hashlib.sha256(_canonical(ev)).hexdigest()
            link["extension"].append({"url": "hash", "valueString": h})
            f.write(_canonical(ev).decode() + "\n")
            prev, n = h, n + 1
    return n


def chain_link(ev: dict[str, Any]) -> dict[str, Any] | None:
    """The hash-chain extension's values (seq, prev, hash) of an AuditEvent, or None."""
    for x in ev.get("extension", []) or []:
        if isinstance(x, dict) and x.get("url") == CHAIN_URL:
            vals = {}
            for s in x.get("extension", []):
                vals[s.get("url")] = s.get("valueInteger", s.get("valueString"))
            return vals
    return None


def verify_auditevents(path: str | Path) -> Verification:
    prev, n = GENESIS, 0
    with Path(path).open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                return Verification(False, n, lineno, "empty line inside the log")
            try:
                ev = json.loads(line)
            except ValueError:
                return Verification(False, n, lineno, "not valid JSON")
            link = chain_link(ev) if isinstance(ev, dict) else None
            if link is None or not {"seq", "prev", "hash"} <= set(link):
                return Verification(False, n, lineno, "AuditEvent without its hash-chain extension")
            if link["seq"] != n:
                return Verification(False, n, lineno, f"sequence number {link['seq']} where {n} was expected "
                                                      "(a record was removed, inserted or reordered)")
            if link["prev"] != prev:
                return Verification(False, n, lineno, "does not chain to the previous record "
                                                      "(a record was removed, inserted or reordered)")
            if "sha256:" + hashlib.sha256(_canonical(_without_hash(ev))).hexdigest() != link["hash"]:
                return Verification(False, n, lineno, "content does not match its hash (the record was edited)")
            prev, n = link["hash"], n + 1
    return Verification(True, n, last_hash=prev)


def is_auditevent_log(first_record: Any) -> bool:
    """Whether a log whose first record is this is an AuditEvent NDJSON log (else a JSONL one)."""
    return isinstance(first_record, dict) and first_record.get("resourceType") == "AuditEvent"


def first_record(path: str | Path) -> Any:
    """The parsed first line of a log ({} when empty or not JSON): tells the log's kind."""
    with Path(path).open("r", encoding="utf-8") as f:
        first = f.readline()
    try:
        return json.loads(first) if first.strip() else {}
    except ValueError:
        return {}


def verify_log(path: str | Path) -> Verification:
    """Verify a chained log of either kind (JSONL records or AuditEvent NDJSON), by its first line."""
    if is_auditevent_log(first_record(path)):
        return verify_auditevents(path)
    return verify_jsonl(path)
