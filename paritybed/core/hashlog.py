"""Append-only, hash-chained JSON Lines logs (tamper-evident audit logs).

Used for the kernel event log, the break-glass attestation log, the AI-BOM first-contact log and
the policy version history.  Each line is one JSON object carrying ``seq`` (0, 1, 2, ...),
``prev`` (the ``hash`` of the previous line, or the genesis value) and ``hash`` = sha256 over
the canonical JSON (sorted keys, no spaces) of the record without its ``hash``.  Editing,
removing, inserting or reordering a line breaks the chain at that line; ``verify`` names it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

GENESIS = "sha256:" + "0" * 64


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


class HashLog:
    """An append-only chained log file.  Opening an existing file continues its chain."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq = 0
        self._prev = GENESIS
        if self.path.exists() and self.path.stat().st_size:
            last = None
            with self.path.open("rb") as f:
                for line in f:
                    if line.strip():
                        last = line
            if last is not None:
                rec = json.loads(last)
                self._seq = int(rec["seq"]) + 1
                self._prev = rec["hash"]
        self._f = self.path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one record (its own keys must not be seq/prev/hash); returns it as written."""
        rec = dict(record)
        rec["seq"] = self._seq
        rec["prev"] = self._prev
        rec["hash"] = record_hash(rec)
        self._f.write(_canonical(rec).decode() + "\n")
        self._seq += 1
        self._prev = rec["hash"]
        return rec

    def extend(self, records: Iterable[dict[str, Any]]) -> int:
        n = 0
        for r in records:
            self.append(r)
            n += 1
        return n

    def flush(self, durable: bool = False) -> None:
        self._f.flush()
        if durable:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "HashLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Verification:
    ok: bool
    records: int
    first_bad: int | None = None  # 1-based line number of the first bad record
    problem: str = ""


def verify(path: str | Path) -> Verification:
    """Check a chained log end to end.  The first broken line is named with what is wrong."""
    prev = GENESIS
    n = 0
    with Path(path).open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                return Verification(False, n, lineno, "empty line inside the log")
            try:
                rec = json.loads(line)
            except ValueError:
                return Verification(False, n, lineno, "not valid JSON")
            if not isinstance(rec, dict) or "hash" not in rec or "prev" not in rec or "seq" not in rec:
                return Verification(False, n, lineno, "not a chained record (seq/prev/hash missing)")
            if rec["seq"] != n:
                return Verification(False, n, lineno, f"sequence number {rec['seq']} where {n} was expected (a record was removed, inserted or reordered)")
            if rec["prev"] != prev:
                return Verification(False, n, lineno, "does not chain to the previous record (a record was removed, inserted or reordered)")
            if record_hash(rec) != rec["hash"]:
                return Verification(False, n, lineno, "content does not match its hash (the record was edited)")
            prev = rec["hash"]
            n += 1
    return Verification(True, n)
