"""Anchors: what makes a removed tail of a hash-chained log detectable.

A hash chain proves order and content, not length: cut off its last records (or put a shorter
valid chain in its place) and it still verifies.  An *anchor* is the log's record count and
final hash kept somewhere else: ``parity.json`` of a run lists every chained log of its folder
under ``logs`` (``{"events.jsonl": {"records": 212, "last_hash": "sha256:…"}, …}``), and
``paritybed enforce`` writes the same into its ``summary.json``.  ``verify_anchored`` checks a
log's chain, its checkpoints (with the key, paritybed.core.hashlog) and its anchor (given, or found
in the log's folder or the two above it), and names what is missing.  The threat model (who can
rewrite what, and what each anchor protects against) is in docs/attestation.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from paritybed.core.errors import InputError
from paritybed.core.hashlog import Verification, verify
from paritybed.parity.auditlog import chain_link, first_record, is_auditevent_log, verify_log

#: The files that carry a ``logs`` map, in the order they are looked for.
ANCHOR_FILES = ("parity.json", "summary.json")
#: The chained logs of a run folder, as globs relative to it.
RUN_LOGS = ("events.jsonl", "kernel-events.jsonl", "attestation/*.jsonl", "attestation/*.auditevents.ndjson")


def log_anchor(path: Path) -> dict[str, Any]:
    """``{"records", "last_hash"}`` of a chained log as it is now (``problem`` if it does not verify)."""
    v = verify_log(path)
    out: dict[str, Any] = {"records": v.records, "last_hash": v.last_hash}
    if not v.ok:
        out["problem"] = f"line {v.first_bad}: {v.problem}"
    return out


def run_log_anchors(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The anchors of every chained log in a run folder, keyed by path relative to it."""
    found = sorted({p for g in RUN_LOGS for p in run_dir.glob(g) if p.is_file()})
    return {p.relative_to(run_dir).as_posix(): log_anchor(p) for p in found}


def _entry(anchor_file: Path, log: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(anchor_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    logs = doc.get("logs") if isinstance(doc, dict) else None
    if not isinstance(logs, dict):
        return None
    try:
        rel = log.resolve().relative_to(anchor_file.parent.resolve()).as_posix()
    except ValueError:
        return None
    e = logs.get(rel)
    return e if isinstance(e, dict) and isinstance(e.get("records"), int) and isinstance(e.get("last_hash"), str) else None


def find_anchor(log: Path) -> tuple[Path, dict[str, Any]] | None:
    """The anchor file that lists ``log`` (its folder, then up to two folders above), and its entry."""
    d = log.resolve().parent
    for folder in (d, d.parent, d.parent.parent):
        for name in ANCHOR_FILES:
            f = folder / name
            if f.is_file():
                e = _entry(f, log)
                if e is not None:
                    return f, e
    return None


def _hash_of_record(path: Path, index: int) -> str | None:
    """The chain hash carried by record ``index`` (0-based) of either log kind."""
    with path.open("r", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == index:
                rec = json.loads(line)
                if is_auditevent_log(rec):
                    return (chain_link(rec) or {}).get("hash")
                return rec.get("hash")
    return None


def check_anchor(path: Path, v: Verification, entry: dict[str, Any], anchor_name: str) -> Verification:
    """An intact chain against its anchor: same length and final hash, or what is missing."""
    n, want, last = v.records, int(entry["records"]), str(entry["last_hash"])
    short = last[:19] + "…"
    if n == want and v.last_hash == last:
        return Verification(True, n, last_hash=v.last_hash, anchor=f"its anchor {anchor_name}")
    if n < want:
        gone = f"all {want} records are missing (the file is empty)" if n == 0 else \
            f"the last {want - n} record(s) are missing: the log ends after record {n}"
        return Verification(False, n, n + 1, f"{gone}; its anchor {anchor_name} records {want} ending in {short}: "
                            f"records {n + 1}–{want} were removed, or a shorter chain was put in its place", v.last_hash)
    if n == want:
        return Verification(False, n, n, f"the log has the {want} records its anchor {anchor_name} records but ends in a "
                            f"different hash ({v.last_hash[:19]}… where {short} was anchored): it was replaced by "
                            "another chain", v.last_hash)
    if _hash_of_record(path, want - 1) != last:
        return Verification(False, n, want, f"record {want} does not carry the final hash its anchor {anchor_name} "
                            f"records ({short}): the log was replaced by another chain", v.last_hash)
    return Verification(False, n, want + 1, f"records {want + 1}–{n} were appended after its anchor {anchor_name} was "
                        f"written ({want} records): nothing vouches for them", v.last_hash)


def verify_anchored(path: Path, *, key: bytes | None = None, anchor: Path | None = None) -> tuple[Verification, str]:
    """Verify ``path``'s chain, its checkpoints (``key``) and its anchor (``anchor``, or the one
    found beside it).  Returns the verification and one plain sentence on what was checked."""
    if key is not None and is_auditevent_log(first_record(path)):
        raise InputError(f"{path}: an AuditEvent log carries no checkpoints (only the .jsonl logs of paritybed "
                         "enforce do): --key does not apply")
    v = verify(path, key) if key is not None else verify_log(path)
    if anchor is not None:
        entry = _entry(anchor, path)
        if entry is None:
            raise InputError(f"{anchor}: not an anchor of {path} (expected a JSON file whose 'logs' lists "
                             f"{path.name} by its path relative to {anchor.parent})")
        found: tuple[Path, dict[str, Any]] | None = (anchor, entry)
    else:
        found = find_anchor(path)
    if not v.ok:
        return v, ""
    if found is not None:
        v2 = check_anchor(path, v, found[1], str(found[0]))
        if key is not None and v2.ok:
            v2.anchor = f"{v.anchor} and {v2.anchor}"
        return v2, ""
    if key is not None:
        return v, ""
    return v, ("order and content only: no anchor was found (parity.json or summary.json listing this log) and no "
               "--key was given, so a removed tail cannot be detected")

