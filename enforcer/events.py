"""Kernel events: ring buffer -> decoded records -> the engine's event vocabulary -> the log.

One kernel record describes one decision and may carry flags (first contact, quarantine, kill);
``expand`` turns it into the same events the reference engine emits (``first-contact``,
``quarantine``/``kill``, ``deny``/``alert``, and ``request`` for recorded allowed decisions), so
model-mode and live-mode event logs read alike.  The log is hash-chained (paritybed.core.hashlog).
"""

from __future__ import annotations

import ctypes as ct
from collections import Counter
from typing import Any, Callable, Iterable

from paritybed.enforcer import kernel_abi as abi


class RingReader:
    """Consumes the pinned ring buffers by fd (FHIR decisions, egress and refusals: two rings, so
    a flood of one kind cannot push the other out); the callback gets each record as an abi.Event.

    The consumer positions live in the maps, so a new control plane continues exactly where a
    dead one stopped: records written in between are read, not lost (unless a buffer filled
    up, which the kernel counts in the ``lost`` and ``lost_by`` maps)."""

    def __init__(self, fds: list[int], on_event: Callable[[abi.Event], None]) -> None:
        from bcc import lib
        from bcc.libbcc import _RINGBUF_CB_TYPE

        self._lib, self._on_event = lib, on_event
        self._cb = _RINGBUF_CB_TYPE(self._handle)
        self._rb = lib.bpf_new_ringbuf(fds[0], self._cb, None)
        if not self._rb or any(lib.bpf_add_ringbuf(self._rb, fd, self._cb, None) != 0 for fd in fds[1:]):
            raise OSError("could not open the events ring buffers")

    def _handle(self, _ctx: Any, data: int, size: int) -> int:
        n = min(size, ct.sizeof(abi.Event))
        ev = abi.Event()
        ct.memmove(ct.addressof(ev), data, n)
        self._on_event(ev)
        return 0

    def poll(self, timeout_ms: int) -> int:
        return self._lib.bpf_poll_ringbuf(self._rb, timeout_ms)

    def close(self) -> None:
        if self._rb:
            self._lib.bpf_free_ringbuf(self._rb)
            self._rb = None


def expand(d: dict[str, Any], *, record_all: bool) -> list[dict[str, Any]]:
    """A decoded kernel record (kernel_abi.decode_event plus agent/replica) -> log events."""
    common = {k: d[k] for k in ("t_ns", "agent", "replica", "kind") if k in d}
    if "ktime_ns" in d:
        common["ktime_ns"] = d["ktime_ns"]
    what = ({k: d[k] for k in ("method", "resource_type", "interaction", "shape", "size", "claim_hash", "touches",
                               "named_patients", "more_patients", "named_encounters", "more_encounters", "unknown_patient",
                               "context", "touch") if k in d}
            if d["kind"] == "fhir" else {k: d[k] for k in ("address", "endpoint", "baa_id", "vendor") if k in d})
    what.update({k: d[k] for k in ("refused", "desync") if k in d})
    out = []
    flags = d["flags"]
    if flags & abi.F_FIRST_CONTACT:
        fc = {**common, **what, "event": "first-contact", "registry_version": d.get("registry_version", 0)}
        if d["reason"] != "observe":
            fc["reason"] = d["reason"]
        out.append(fc)
    if flags & (abi.F_QUARANTINE | abi.F_KILL):
        out.append({**common, "event": "kill" if flags & abi.F_KILL else "quarantine", "reason": d["reason"],
                    "until_ns": d.get("until_sim_ns", d.get("until_ns"))})
    if d["decision"] != "allow":
        out.append({**common, **what, "event": d["decision"], "reason": d["reason"], "hook": d["hook"]})
    elif record_all or d["reason"] in ("observe", "lane"):
        out.append({**common, **what, "event": "request", "reason": d["reason"], "hook": d["hook"]})
    return out


def summarize(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts for a summary table: decisions by (kind, event, reason), first contacts by address."""
    by: Counter = Counter()
    contacts: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["event"] == "first-contact":
            contacts.setdefault(e.get("address", "?"), e)
        elif e["event"] in ("deny", "alert", "request"):
            by[(e.get("kind", ""), e["event"], e.get("reason", "") or "allowed", e.get("shape", ""))] += 1
    return {"decisions": dict(by), "first_contacts": contacts}
