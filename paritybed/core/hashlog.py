"""Append-only, hash-chained JSON Lines logs (tamper-evident audit logs).

Used for the kernel event log, the break-glass attestation log, the AI-BOM first-contact log and
the policy version history.  Each line is one JSON object carrying ``seq`` (0, 1, 2, ...),
``prev`` (the ``hash`` of the previous line, or the genesis value) and ``hash`` = sha256 over
the canonical JSON (sorted keys, no spaces) of the record without its ``hash``.  Editing,
removing, inserting or reordering a line breaks the chain at that line; ``verify`` names it.

A chain proves order and content, not length: cutting off the tail leaves a valid chain.  Two
anchors close that gap (docs/attestation.md, "Tamper evidence"): the record count and final hash
kept elsewhere (``parity.json``'s ``logs``, checked by ``paritybed.parity.auditlog``), and the
*checkpoints* defined here: chained records ``{"checkpoint": {"final", "at", "key"}, "mac"}``
whose ``mac`` is an HMAC-SHA256, under a key the logging process holds and the logged agent
cannot read, of the record with its ``seq`` and ``prev``.  Whoever cuts the tail cannot forge the
final checkpoint that must end the log, so ``verify(path, key)`` detects every truncation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from paritybed.core.errors import EnvironmentProblem, InputError

GENESIS = "sha256:" + "0" * 64
MAC_PREFIX = "hmac-sha256:"
RESERVED = frozenset({"seq", "prev", "hash", "checkpoint", "mac"})


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def key_id(key: bytes) -> str:
    """A name for a checkpoint key that does not reveal it (which key signed, for messages)."""
    return "sha256:" + hashlib.sha256(key).hexdigest()[:16]


def checkpoint_mac(record: dict[str, Any], key: bytes) -> str:
    """The HMAC of a checkpoint record: over everything but ``mac`` and ``hash`` (so over its
    ``seq`` and ``prev``: the length and the last hash of the chain it vouches for)."""
    body = {k: v for k, v in record.items() if k not in ("mac", "hash")}
    return MAC_PREFIX + hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def read_checkpoint_key(path: str | Path, *, create: bool = False) -> bytes:
    """The checkpoint key in ``path`` (32 random bytes, created with mode 0600 when ``create``).
    A key that group or others may read is refused: the agent whose log it signs must not read it."""
    p = Path(path)
    if create and not p.exists():
        try:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise EnvironmentProblem(f"cannot create the checkpoint key {p} ({e.strerror})",
                                     hint="run as root, or give a key path in a folder you own") from None
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    try:
        st = p.stat()
        key = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: no such checkpoint key file") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read the checkpoint key ({e.strerror})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{p}: the checkpoint key is accessible to group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                         "an agent that can read it can forge checkpoints", hint=f"chmod 600 {p}")
    if len(key) < 16:
        raise InputError(f"{p}: a checkpoint key needs at least 16 bytes, found {len(key)}")
    return key


class HashLog:
    """An append-only chained log file.  Opening an existing file continues its chain.  With a
    ``checkpoint_key``, ``checkpoint()`` appends signed checkpoints (the writer calls it
    periodically and with ``final=True`` when it closes the log)."""

    def __init__(self, path: str | Path, checkpoint_key: bytes | None = None) -> None:
        self.path = Path(path)
        self._key = checkpoint_key
        self._last_cp: tuple[float, int] | None = None  # (monotonic time, records) at the last checkpoint
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
        """Append one record; returns it as written.  Its own keys must not be the chain's
        (seq, prev, hash) nor a checkpoint's (checkpoint, mac): a verifier would misread it."""
        clash = RESERVED & record.keys()
        if clash:
            raise ValueError(f"a log record may not carry {sorted(clash)}: those keys belong to the chain")
        rec = dict(record)
        rec["seq"] = self._seq
        rec["prev"] = self._prev
        rec["hash"] = record_hash(rec)
        self._f.write(_canonical(rec).decode() + "\n")
        self._seq += 1
        self._prev = rec["hash"]
        return rec

    @property
    def records(self) -> int:
        """Records in the log so far (its next ``seq``)."""
        return self._seq

    @property
    def signed(self) -> bool:
        """Whether this log writes checkpoints (it was opened with a key)."""
        return self._key is not None

    def checkpoint(self, *, final: bool = False, at: str | None = None) -> dict[str, Any]:
        """Append a signed checkpoint vouching for the chain so far; ``at`` is the wall-clock
        instant it was written (default: now, UTC)."""
        if self._key is None:
            raise ValueError("this log has no checkpoint key")
        if at is None:
            at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._last_cp = (time.monotonic(), self._seq + 1)
        rec = {"checkpoint": {"final": final, "at": at, "key": key_id(self._key)}, "seq": self._seq, "prev": self._prev}
        rec["mac"] = checkpoint_mac(rec, self._key)
        rec["hash"] = record_hash(rec)
        self._f.write(_canonical(rec).decode() + "\n")
        self._seq += 1
        self._prev = rec["hash"]
        return rec

    def checkpoint_if_due(self, every_s: float, *, now: float | None = None) -> dict[str, Any] | None:
        """A periodic checkpoint (the writer calls this often): when the log is signed, records
        were added since the last checkpoint and ``every_s`` seconds (monotonic clock) passed."""
        if self._key is None:
            return None
        now = time.monotonic() if now is None else now
        if self._last_cp is None:
            self._last_cp = (now, self._seq)
        since, seq = self._last_cp
        if self._seq <= seq or now - since < every_s:
            return None
        rec = self.checkpoint()
        self._last_cp = (now, self._seq)
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
    last_hash: str = GENESIS  # hash of the last record that verified (GENESIS for none)
    anchor: str = ""  # what vouched for the length: "" (nothing), a checkpoint key or an anchor file


def verify(path: str | Path, key: bytes | None = None) -> Verification:
    """Check a chained log end to end.  The first broken line is named with what is wrong.

    With the checkpoint ``key`` every checkpoint's MAC is checked and the log must end with a
    final checkpoint: records cut off its end (or a shorter chain put in its place) are then
    detected, and the problem names the last checkpoint that still holds."""
    v = _verify_chain(path, key)
    if not v.ok or key is None:
        return v
    return _final_checkpoint(path, v)


def _verify_chain(path: str | Path, key: bytes | None) -> Verification:
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
                return Verification(False, n, lineno, "content does not match its hash (the record was edited)", prev)
            if key is not None and "checkpoint" in rec and not hmac.compare_digest(
                    str(rec.get("mac", "")), checkpoint_mac(rec, key)):
                signer = (rec["checkpoint"] or {}).get("key") if isinstance(rec["checkpoint"], dict) else None
                return Verification(False, n, lineno, f"checkpoint whose MAC does not verify with key {key_id(key)} "
                                    f"(it names key {signer}): forged, or the wrong key", prev)
            prev = rec["hash"]
            n += 1
    return Verification(True, n, last_hash=prev)


def _final_checkpoint(path: str | Path, v: Verification) -> Verification:
    """The chain verified and its checkpoints are genuine: does a final checkpoint end it?"""
    last_cp: tuple[int, dict[str, Any]] | None = None
    last: dict[str, Any] | None = None
    with Path(path).open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            last = json.loads(line)
            if "checkpoint" in last:
                last_cp = (lineno, last)
    if last is not None and "checkpoint" in last and (last["checkpoint"] or {}).get("final") is True:
        return Verification(True, v.records, last_hash=v.last_hash, anchor=f"its final checkpoint (key {last['checkpoint'].get('key')})")
    if v.records == 0:
        why = "the log is empty: it has no final checkpoint, so every record it had may have been removed"
    elif last_cp is None:
        why = (f"none of its {v.records} records is a checkpoint: it may have been replaced by a shorter chain "
               "(or was written without a checkpoint key)")
    else:
        lineno, cp = last_cp
        after = v.records - lineno
        why = (f"the log ends {after} record(s) after its last checkpoint (line {lineno}, at {cp['checkpoint'].get('at')}) "
               "without a final checkpoint: records after it may have been removed (or the writer stopped without "
               "closing the log)")
    return Verification(False, v.records, v.records + 1, why, v.last_hash)
