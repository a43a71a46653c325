"""Launch contexts in live mode without a kernel: the worker presents the row's context in the
header the kernel reads, and the driver opens and closes contexts through the enforcer's control
plane with the signature the kernel side implements (``open_context`` / ``close_context``)."""

from __future__ import annotations

from typing import Any

from paritybed.agents.live import command_for, context_headers, request_bytes
from paritybed.enforcer.classify import classify
from paritybed.enforcer.kernel_abi import DENY, REASONS
from paritybed.live import RowDecisions, context_row


class ControlPlane:
    """Records what the driver asks of the kernel enforcer; refuses openings past ``room``."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.calls: list[tuple[Any, ...]] = []

    def open_context(self, agent: str, replica: int, ctx_id: str, patient: str, encounter: str, duration_ns: int,
                     t: int) -> bool:
        self.calls.append(("open", agent, replica, ctx_id, patient, encounter, duration_ns, t))
        self.room -= 1
        return self.room >= 0

    def close_context(self, agent: str, replica: int, ctx_id: str, t: int) -> None:
        self.calls.append(("close", agent, replica, ctx_id, t))


def test_the_worker_presents_the_rows_launch_context_as_the_kernel_reads_it():
    row = {"kind": "fhir", "method": "GET", "path": "/fhir/Patient/p1", "agent": "scribe", "replica": 1,
           "launch_context": "scribe-lc0000042", "t_ns": 5}
    cmd = command_for(row, 7)
    assert cmd["launch_context"] == "scribe-lc0000042"
    raw = request_bytes("GET", "/fhir/Patient/p1", "127.0.0.1:8080", b"", None, context_headers(cmd))
    c = classify(raw)
    assert (c.shape, c.context, c.patients) == ("plain", "scribe-lc0000042", ("p1",))
    assert context_headers({"launch_context": ""}) == ()


def test_the_driver_opens_and_closes_contexts_through_the_control_plane():
    ke = ControlPlane(room=1)
    base = {"agent": "scribe", "replica": 0, "launch_context": "c1", "patient_id": "p1", "encounter_id": "e1",
            "duration_ns": 99}
    assert context_row(ke, {**base, "kind": "context_open"}, 10) is True
    assert context_row(ke, {**base, "kind": "context_open", "launch_context": "c2"}, 11) is False
    assert context_row(ke, {**base, "kind": "context_close"}, 12) is True
    assert ke.calls == [("open", "scribe", 0, "c1", "p1", "e1", 99, 10), ("open", "scribe", 0, "c2", "p1", "e1", 99, 11),
                        ("close", "scribe", 0, "c1", 12)]
    k = RowDecisions(4)
    k.context(0, 10, True, "context_open", True, [])
    k.context(1, 11, True, "context_open", False, [{"event": "context-refused", "agent": "scribe", "replica": 0}])
    k.context(2, 12, True, "context_close", True, [])
    k.context(3, 13, False, "context_open", True, [])
    d = k.result([10, 11, 12, 13])
    assert [REASONS[r] for r in d.reason] == ["context-opened", "context-not-in-envelope", "", "unenforced"]
    assert d.decision[1] == DENY
    assert {(e["row"], e["event"]) for e in d.events} == {(1, "context-refused"), (1, "deny")}
