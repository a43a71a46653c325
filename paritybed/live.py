"""Live mode's decider: the production trace as real processes, real HTTP and real connects,
decided by the kernel.

`paritybed run SCENARIO --mode live` is the same pipeline as model mode (paritybed/run.py); only
"decide production" differs, and this module is it:

* the embedded FHIR server (or `--fhir-url`) holds the production patients (``fhir_endpoint``);
* every agent replica is a worker process (agents/live.py) in its own cgroup under the kernel
  enforcer (enforcer/kernel.py), sending the row's HTTP request over a keep-alive connection or
  connecting to the row's external endpoint; stand-in listeners answer on the 127.0.0.x
  addresses the BAA registry (and the attacks) name;
* break-glass activations go to the control plane (`open_lane`, the engine's rule), and so do
  launch contexts (`open_context` / `close_context`: ``context_row``);
* the kernel's decision and reason for a row are the kernel's own events for it: the driver
  sends one row at a time and reads the ring buffer after each answer (a hook writes its record
  before the send or connect returns), so the records read belong to that row.  No record means
  the kernel allowed it plainly.  An alert is allowed and recorded: distinct from an allow here,
  as it is for the engine.  What the caller saw (errno, HTTP status) is kept beside it.

Two clocks.  On the **virtual** clock the driver writes each row's simulated time into the
kernel's clock map before sending it and waits for the answer: deterministic, and the kernel must
agree with the reference engine on every row (the differential invariant; a disagreement fails
the run).  On the **real** clock rows are dispatched at their simulated time divided by the
compression factor and the kernel uses `bpf_ktime_get_ns()`; agreement is reported, not required,
since wall-clock jitter moves rate-limit and expiry edges.
"""

from __future__ import annotations

import errno as errno_mod
import json
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet.write_table

from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.core.pipe import PipeWorker
from paritybed.enforcer.decisions import Decisions
from paritybed.enforcer.engine import decision_events
from paritybed.enforcer.kernel_abi import (ALERT, ALLOW, DECISIONS, DENY, R_CONTEXT_NOT_IN_ENVELOPE, R_CONTEXT_OPENED,
                                           R_LANE_NOT_IN_ENVELOPE, R_LANE_OPENED, R_OK, R_UNENFORCED, REASONS)
from paritybed.scenarios import Scenario

ClockMode = Literal["virtual", "real"]
#: Kernel events that decide a row (the rest of the log is the control plane's own).
DECIDING = ("deny", "alert", "request")
ROW_EVENTS = DECIDING + ("first-contact", "quarantine", "kill", "lane-open", "lane-refused", "context-refused")


# ------------------------------------------------------------------------------------ stand-ins
class StandIns:
    """TCP listeners on the external endpoints' loopback addresses: accept and close.

    They stand in for the embedding service, the LLM, the payer gateway and the attackers'
    endpoints, so a connect the kernel lets through really completes."""

    def __init__(self, addresses: list[str]) -> None:
        self.socks: list[socket.socket] = []
        for addr in sorted(set(addresses)):
            host, _, port = addr.rpartition(":")
            host = host.strip("[]")
            if not host.startswith("127.") and host != "::1":
                raise InputError(f"live mode connects only to loopback stand-ins; {addr} is not on 127.0.0.0/8",
                                 hint="give external endpoints 127.0.0.x addresses in the scenario's BAA registry")
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, int(port)))
            except OSError as e:
                s.close()
                self.close()
                raise EnvironmentProblem(f"cannot listen on {addr} for the stand-in endpoint: {e.strerror}") from None
            s.listen(1024)
            s.setblocking(False)
            self.socks.append(s)
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._loop, name="stand-ins", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.socks:
                time.sleep(0.1)
                continue
            ready, _, _ = select.select(self.socks, [], [], 0.1)
            for s in ready:
                try:
                    conn, _ = s.accept()
                    conn.close()
                    self.accepted += 1
                except BlockingIOError:
                    pass

    def close(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()
            self._thread.join(timeout=2)
        for s in self.socks:
            s.close()


# ------------------------------------------------------------------------------------ replicas
class Replica:
    """One agent replica's worker process inside its cgroup (respawned after a kill)."""

    def __init__(self, enforcer: Any, agent: str, replica: int, fhir_hostport: str) -> None:
        self.enforcer, self.agent, self.replica, self.fhir = enforcer, agent, replica, fhir_hostport
        self.kills = 0
        self.worker = self._spawn()

    def _spawn(self) -> PipeWorker:
        from paritybed.agents.live import worker_argv

        return PipeWorker(self.enforcer.spawn(self.agent, self.replica, worker_argv(self.fhir), stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, text=True, bufsize=1))

    def send(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        """The worker's answer.  A worker killed (the control plane's `kill` response to an earlier
        row) while handling the command may have died before sending it, so the kernel never saw the
        row: the command goes once more to a fresh worker in the same cgroup, and the kernel decides
        it (a killed replica stays quarantined).  None only if that one is killed too."""
        for _ in range(2):
            if not self.worker.alive():
                self._reap()
                self.worker = self._spawn()
            answer = self.worker.ask(cmd)
            if answer is not None:
                return answer
            self._reap()
            self.worker = self._spawn()
        return None

    def _reap(self) -> None:
        code = self.worker.proc.wait(timeout=10)
        if code != -signal.SIGKILL:
            raise EnvironmentProblem(f"the live worker of {self.agent}-{self.replica} exited with code {code} "
                                     "(not killed by the enforcer)")
        self.kills += 1

    def close(self) -> None:
        self.worker.close()


# ------------------------------------------------------------------------------------ the kernel's decisions
class RowDecisions:
    """The kernel's decision and reason per production row, built from its events (module doc)."""

    def __init__(self, n: int) -> None:
        self.decision = np.full(n, ALLOW, dtype=np.int8)
        self.reason = np.full(n, R_OK, dtype=np.int8)
        self.events: list[dict[str, Any]] = []
        self.caller_mismatch = 0  # the caller's view (errno) disagrees with the kernel's record
        self.unattributed = 0  # records of another replica than the row's (none expected)

    def lane(self, i: int, t: int, enforced: bool, opened: bool, events: list[dict[str, Any]]) -> None:
        """A lane_open row: the control plane's decision (AgentPolicy.lane_expiry)."""
        if not enforced:
            self.reason[i] = R_UNENFORCED
        elif opened:
            self.reason[i] = R_LANE_OPENED
        else:
            self.decision[i], self.reason[i] = DENY, R_LANE_NOT_IN_ENVELOPE
        self._keep(i, t, events, ("lane-open", "lane-refused"))

    def context(self, i: int, t: int, enforced: bool, kind: str, opened: bool, events: list[dict[str, Any]]) -> None:
        """A context_open / context_close row: the control plane's decision (AgentPolicy.context_expiry)."""
        if not enforced:
            self.reason[i] = R_UNENFORCED
        elif kind == "context_open":
            if opened:
                self.reason[i] = R_CONTEXT_OPENED
            else:
                self.decision[i], self.reason[i] = DENY, R_CONTEXT_NOT_IN_ENVELOPE
        self._keep(i, t, events, ("context-refused",))

    def row(self, i: int, t: int, who: tuple[str, int], kind: str, enforced: bool, refused: bool,
            events: list[dict[str, Any]]) -> None:
        """A FHIR request or an egress connect: the kernel's records for it decide."""
        mine = [e for e in events if e.get("event") in ROW_EVENTS and (e.get("agent"), e.get("replica")) == who]
        self.unattributed += sum(1 for e in events if e.get("event") in ROW_EVENTS) - len(mine)
        deciding = [e for e in mine if e["event"] in DECIDING]
        if not enforced:
            self.reason[i] = R_UNENFORCED
        elif deciding:
            e = deciding[0]  # a row sent again after a kill: its first decision is the row's
            self.decision[i] = DECISIONS.index(e["event"]) if e["event"] != "request" else ALLOW
            self.reason[i] = REASONS.index(e.get("reason", ""))
        elif kind == "egress":
            fc = next((e for e in mine if e["event"] == "first-contact"), None)
            self.reason[i] = REASONS.index(fc.get("reason", "")) if fc is not None else R_OK
        if refused != (self.decision[i] == DENY):
            self.caller_mismatch += 1
        # A FHIR row may reconnect to the server first: that connect's first contact is not the row's.
        self._keep(i, t, mine, ("quarantine", "kill") + (("first-contact",) if kind == "egress" else ()))

    def _keep(self, i: int, t: int, events: list[dict[str, Any]], kinds: tuple[str, ...]) -> None:
        """The row's events in the engine's vocabulary (deny/alert are added from the decisions)."""
        for e in events:
            if e.get("event") in kinds:
                rec = {k: v for k, v in e.items() if k not in ("agent", "replica", "kind", "claim", "t_ns")}
                self.events.append({"row": i, "t_ns": t, **rec})

    def result(self, t_ns: list[int]) -> Decisions:
        decision_events(self.events, self.decision, self.reason, t_ns)
        return Decisions(self.decision, self.reason, self.events, decided_by="kernel")


def context_row(ke: Any, r: dict[str, Any], t: int) -> bool:
    """A launch context opened or closed by the EHR side (a context_open / context_close row),
    through the kernel enforcer's control plane; True when an opening was accepted (a closing
    always is)."""
    agent, replica, ctx = r["agent"], int(r["replica"]), r["launch_context"]
    if r["kind"] == "context_close":
        ke.close_context(agent, replica, ctx, t)
        return True
    return bool(ke.open_context(agent, replica, ctx, r["patient_id"], r["encounter_id"], int(r["duration_ns"]), t))


def _refused(kind: str, answer: dict[str, Any] | None) -> bool:
    """What the caller saw: a kernel refusal (EACCES from send, EPERM from connect) or a kill."""
    if answer is None:
        return True  # killed while handling it: the kill follows a denied request
    err = answer.get("errno")
    if answer.get("error"):
        raise EnvironmentProblem(f"the live worker could not run row {answer.get('row')}: {answer['error']}")
    if kind == "fhir":
        return err in (errno_mod.EACCES, errno_mod.EPERM)  # sk_msg drop; the (re)connect refused
    return err == errno_mod.EPERM


# ------------------------------------------------------------------------------------ the driver
@dataclass
class LiveResult:
    decisions: Decisions  # the kernel's decision and reason per production row
    lost_events: int
    summary: dict[str, Any] = field(default_factory=dict)


def drive(scenario: Scenario, production: pa.Table, policy: Any, registry_path: Path, out: Path, fhir_hostport: str,
          *, clock: ClockMode = "virtual", compression: float = 60.0, name: str = "paritybed",
          progress: Callable[[int, int], None] | None = None) -> LiveResult:
    """Send every production row through the kernel enforcer; the kernel's decisions."""
    from paritybed.agents.live import command_for
    from paritybed.enforcer.kernel import KernelEnforcer

    start = scenario.start.datetime()
    start_iso = start.isoformat()
    rows = production.to_pylist()
    egress_addrs = [r["address"] for r in rows if r["kind"] == "egress"]
    stand_ins = StandIns(egress_addrs)
    ke = KernelEnforcer(policy, registry_path, start=start, clock=clock, compression=compression,
                        event_log=out / "kernel-events.jsonl", name=name)
    replicas: dict[tuple[str, int], Replica] = {}
    kernel = RowDecisions(len(rows))
    seen_errno: list[int] = []  # what the caller saw: 0 or the errno of the refused send/connect
    seen_status: list[int] = []  # HTTP status of a FHIR request that went through (0 otherwise)
    latency: list[int] = []
    t_wall0 = time.monotonic()
    behind = 0
    try:
        for agent, rep in sorted({(r["agent"], int(r["replica"])) for r in rows}):
            replicas[(agent, rep)] = Replica(ke, agent, rep, fhir_hostport)
        ke.drain()  # the control plane's start: not a row's
        for i, r in enumerate(rows):
            t = int(r["t_ns"])
            if clock == "virtual":
                ke.set_clock(t)
            else:
                due = t_wall0 + t / 1e9 / compression
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -0.05:
                    behind += 1
            who = (r["agent"], int(r["replica"]))
            enforced = r["agent"] in policy.agents
            if r["kind"] == "lane_open":
                ok = ke.open_lane(r["agent"], who[1], r["claim_id"], r["lane"], int(r["duration_ns"]), t)
                kernel.lane(i, t, enforced, ok, ke.drain())
                seen_errno.append(0)
                seen_status.append(0)
            elif r["kind"] in ("context_open", "context_close"):
                kernel.context(i, t, enforced, r["kind"], context_row(ke, r, t), ke.drain())
                seen_errno.append(0)
                seen_status.append(0)
            else:
                answer = replicas[who].send(command_for(r, i, start_iso))
                kernel.row(i, t, who, r["kind"], enforced, _refused(r["kind"], answer), ke.drain())
                seen_errno.append(int((answer or {}).get("errno") or (0 if answer is not None else -1)))
                seen_status.append(int((answer or {}).get("status") or 0))
                if answer is not None:
                    latency.append(int(answer.get("ns") or 0))
            if progress is not None and (i % 64 == 0 or i == len(rows) - 1):
                progress(i + 1, len(rows))
        time.sleep(0.2)  # let the last events reach the ring buffer consumer
        ke.drain()
        lost = ke.lost_events()
        counters = ke.counters()
    finally:
        for w in replicas.values():
            w.close()
        ke.close(cleanup=True)
        stand_ins.close()
    decisions = kernel.result([int(r["t_ns"]) for r in rows])
    lat = np.asarray(latency or [0], dtype=np.int64)
    summary = {
        "clock": clock, "compression": compression if clock == "real" else None,
        "rows": len(rows), "wall_seconds": round(time.monotonic() - t_wall0, 2),
        "kernel_allowed": int((decisions.decision == ALLOW).sum()), "kernel_denied": int((decisions.decision == DENY).sum()),
        "kernel_alerted": int((decisions.decision == ALERT).sum()),
        "caller_saw_otherwise": kernel.caller_mismatch, "unattributed_events": kernel.unattributed,
        "worker_kills": sum(w.kills for w in replicas.values()),
        "rows_dispatched_late": behind if clock == "real" else None,
        "request_latency_us": {"p50": round(float(np.percentile(lat, 50)) / 1e3, 1),
                               "p99": round(float(np.percentile(lat, 99)) / 1e3, 1)},
        "lost_events": lost, "kernel_counters": counters, "stand_in_connections": stand_ins.accepted,
    }
    seen = production.append_column("decision", decisions.decision_strings()) \
        .append_column("reason", decisions.reason_strings()) \
        .append_column("errno", pa.array(seen_errno, pa.int32())) \
        .append_column("http_status", pa.array(seen_status, pa.int16()))
    pa.parquet.write_table(seen, out / "live.parquet", compression="zstd")
    return LiveResult(decisions, lost, summary)


# ------------------------------------------------------------------------------------ in the pipeline
def require_root() -> None:
    import os

    if os.geteuid() != 0:
        raise EnvironmentProblem("live mode needs root (eBPF programs and cgroups)",
                                 hint="run as root, or use the default model mode (same decisions, reference engine)")


def fhir_endpoint(stack: Any, fhir_url: str | None, folder: Path, base: str,
                  stage: Callable[[str], None] | None = None) -> str:
    """host:port of the FHIR server the replicas talk to: ``fhir_url``, or the embedded server
    started in ``stack`` with the production patients.  Its base must be the policy's."""
    from urllib.parse import urlsplit

    if fhir_url:
        u = urlsplit(fhir_url)
        if not u.hostname or not u.port:
            raise InputError(f"--fhir-url {fhir_url}: expected http://host:port/base")
        hostport, got = f"{u.hostname}:{u.port}", u.path.rstrip("/") or "/fhir"
    else:
        from paritybed.fhir.server import running_server

        if stage:
            stage("fhir")
        u = urlsplit(stack.enter_context(running_server(load=[folder])))
        hostport, got = f"{u.hostname}:{u.port}", u.path
    if got != base:
        raise InputError(f"the FHIR base {got} differs from the scenario's policy.fhir_base {base}")
    return hostport


class KernelDecider:
    """``decide(production, policy, registry)`` for the pipeline: the kernel decides (``drive``)."""

    def __init__(self, scenario: Scenario, out: Path, fhir_hostport: str, *, clock: ClockMode, compression: float,
                 name: str, progress: Callable[[int, int], None] | None = None) -> None:
        self.scenario, self.out, self.hostport = scenario, out, fhir_hostport
        self.clock, self.compression, self.name, self.progress = clock, compression, name, progress
        self.result: LiveResult | None = None

    def __call__(self, production: pa.Table, policy: Any, registry: Any) -> Decisions:
        # The registry file the control plane watches is the run's (written with the policy).
        self.result = drive(self.scenario, production, policy, self.out / "baa-registry.json", self.out, self.hostport,
                            clock=self.clock, compression=self.compression, name=self.name, progress=self.progress)
        return self.result.decisions

    def lost_events(self) -> int:
        return self.result.lost_events if self.result is not None else 0

    def write_summary(self, agreement: dict[str, Any] | None) -> dict[str, Any]:
        """live.json: the driver's summary and the agreement with the reference engine."""
        assert self.result is not None
        summary = dict(self.result.summary, agreement=agreement, required_agreement=self.clock == "virtual")
        (self.out / "live.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        return summary
