"""Live mode's decider: the production trace as real processes, real HTTP and real connects,
decided by the kernel.

`paritybed run SCENARIO --mode live` is the same pipeline as model mode (paritybed/run.py); only
"decide production" differs, and this module is it:

* the embedded FHIR server (or `--fhir-url`) holds the production patients (``fhir_endpoint``);
  the embedded one runs in processes of its own, one per core (fhir/server.py), because its
  searches are what bounds live mode's rate (docs/kernel.md, "Live mode's rate");
* every agent replica is a worker process (agents/live.py) in its own cgroup under the kernel
  enforcer (enforcer/kernel.py), given its rows before it starts; it sends each row's HTTP request
  over a pool of keep-alive connections or connects to the row's external endpoint; stand-in
  listeners (a process of their own) answer on the 127.0.0.x addresses the BAA registry (and the
  attacks) name;
* break-glass activations go to the control plane (`open_lane`, the engine's rule);
* the kernel's decision and reason for a row are the kernel's own events for it.  A hook writes
  its record before the send or connect returns, and each replica has at most one row between
  "go" and the worker's "sent", so after that line the driver reads the ring buffer and the
  replica's records are that row's.  No record means the kernel allowed it plainly.  An alert is
  allowed and recorded: distinct from an allow here, as it is for the engine.  What the caller saw
  (errno, HTTP status) is kept beside it.

Replicas run side by side.  On the **virtual** clock every replica has a clock of its own in the
kernel (``set_clock(t, replica=...)``): the driver sets it to the row's simulated time, tells the
worker to go, and moves on to the next row of that replica as soon as the worker says the send
(or connect) returned, without waiting for the answer.  Decisions depend on time only through the
replica's own state (rate limit, quarantine, lanes, first contacts) and the BAA windows, so each
replica's rows decided in its own order at its own times are decided exactly as the engine
decides them; a disagreement fails the run.  On the **real** clock each replica's rows are
dispatched at their simulated time divided by the compression factor and the kernel uses
`bpf_ktime_get_ns()`; agreement is reported, not required, since wall-clock jitter moves
rate-limit and expiry edges.
"""

from __future__ import annotations

import errno as errno_mod
import json
import multiprocessing as mp
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet.write_table

from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.enforcer.decisions import Decisions
from paritybed.enforcer.engine import decision_events
from paritybed.enforcer.kernel_abi import (ALERT, ALLOW, DECISIONS, DENY, R_LANE_NOT_IN_ENVELOPE, R_LANE_OPENED, R_OK,
                                           R_UNENFORCED, REASONS)
from paritybed.scenarios import Scenario

ClockMode = Literal["virtual", "real"]
#: Kernel events that decide a row (the rest of the log is the control plane's own).
DECIDING = ("deny", "alert", "request")
ROW_EVENTS = DECIDING + ("first-contact", "quarantine", "kill", "lane-open", "lane-refused")


# ------------------------------------------------------------------------------------ stand-ins
def _stand_ins_main(addresses: list[str], conn: Any) -> None:
    """The stand-ins process: listen on every address, accept and close, until told to stop;
    then report how many connections it accepted."""
    socks = []
    for addr in addresses:
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError as e:
            conn.send(f"cannot listen on {addr} for the stand-in endpoint: {e.strerror}")
            return
        s.listen(1024)
        s.setblocking(False)
        socks.append(s)
    conn.send("ok")
    accepted = 0
    while True:
        ready, _, _ = select.select([*socks, conn], [], [], 1.0)
        for s in ready:
            if s is conn:
                conn.recv()
                conn.send(accepted)
                return
            while True:  # a burst of connects: take them all
                try:
                    c, _ = s.accept()
                except BlockingIOError:
                    break
                c.close()
                accepted += 1


class StandIns:
    """TCP listeners on the external endpoints' loopback addresses: accept and close.

    They stand in for the embedding service, the LLM, the payer gateway and the attackers'
    endpoints, so a connect the kernel lets through really completes.  They run in a process of
    their own (100 k connects a week would otherwise compete with the driver for its interpreter)."""

    def __init__(self, addresses: list[str]) -> None:
        wanted = sorted(set(addresses))
        for addr in wanted:
            host = addr.rpartition(":")[0].strip("[]")
            if not host.startswith("127.") and host != "::1":
                raise InputError(f"live mode connects only to loopback stand-ins; {addr} is not on 127.0.0.0/8",
                                 hint="give external endpoints 127.0.0.x addresses in the scenario's BAA registry")
        self.accepted = 0
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_stand_ins_main, args=(wanted, child), name="stand-ins", daemon=True)
        self._proc.start()
        child.close()
        said = self._conn.recv() if self._conn.poll(60) else "the stand-in endpoints did not start"
        if said != "ok":
            self.close()
            raise EnvironmentProblem(str(said))

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send("stop")
                if self._conn.poll(10):
                    self.accepted = int(self._conn.recv())
            except (BrokenPipeError, EOFError, OSError):
                pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


# ------------------------------------------------------------------------------------ replicas
class Replica:
    """One agent replica: its rows (trace positions, in time order), its worker process inside its
    cgroup (respawned after a kill), and the row it has in flight."""

    def __init__(self, enforcer: Any, who: tuple[str, int], fhir_hostport: str, rows: list[int],
                 worker_rows: list[int], commands: Path) -> None:
        self.enforcer, self.who, self.fhir, self.commands = enforcer, who, fhir_hostport, commands
        self.rows = rows  # every row of the replica (lane activations included)
        self.local = {i: k for k, i in enumerate(worker_rows)}  # trace row -> line of the worker's commands
        self.worker_rows = worker_rows
        self.pos = 0  # next position in self.rows
        self.inflight: int | None = None  # trace row told to go, "sent" not yet read
        self.tries = 0  # workers the in-flight row has been given to
        self.events: list[dict[str, Any]] = []  # kernel records of this replica not yet given to a row
        self.kills = 0
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    def spawn(self) -> None:
        from paritybed.agents.live import worker_argv

        self.proc = self.enforcer.spawn(self.who[0], self.who[1], worker_argv(self.fhir, self.commands),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""

    def fileno(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def go(self, i: int) -> bool:
        """Tell the worker to run trace row i (spawning one if there is none); False if it died."""
        if self.proc is None:
            self.spawn()
        assert self.proc is not None and self.proc.stdin is not None
        self.inflight = i
        try:
            self.proc.stdin.write(b"%d\n" % self.local[i])
        except (BrokenPipeError, ValueError):
            return False
        return True

    def lines(self) -> list[bytes] | None:
        """Complete lines the worker wrote since the last call; None at end of stream (it died or quit)."""
        try:
            data = os.read(self.fileno(), 1 << 16)
        except BlockingIOError:
            return []
        if not data:
            return None
        *out, self._buf = (self._buf + data).split(b"\n")
        return out

    def reap(self) -> None:
        """The worker is gone: it must have been killed by the enforcer (kill response)."""
        assert self.proc is not None
        code = self.proc.wait(timeout=10)
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc = None
        if code != -signal.SIGKILL:
            raise EnvironmentProblem(f"the live worker of {self.who[0]}-{self.who[1]} exited with code {code} "
                                     "(not killed by the enforcer)")
        self.kills += 1

    def quit(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass

    def close(self) -> None:
        if self.proc is None:
            return
        self.quit()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc = None


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


def _refused(kind: str, err: int | None) -> bool:
    """What the caller saw: a kernel refusal (EACCES from send, EPERM from connect) or a kill
    (``None``: the worker died before it could say)."""
    if err is None:
        return True  # killed while handling it: the kill follows a denied request
    if kind == "fhir":
        return err in (errno_mod.EACCES, errno_mod.EPERM)  # sk_msg drop; the (re)connect refused
    return err == errno_mod.EPERM


# ------------------------------------------------------------------------------------ the driver
@dataclass
class LiveResult:
    decisions: Decisions  # the kernel's decision and reason per production row
    lost_events: int
    summary: dict[str, Any] = field(default_factory=dict)


class Driver:
    """The loop of ``drive``: every replica's rows through its worker, replicas side by side."""

    def __init__(self, ke: Any, policy: Any, production: pa.Table, start_iso: str, fhir_hostport: str, tmp: Path,
                 clock: ClockMode, compression: float, progress: Callable[[int, int], None] | None) -> None:
        from paritybed.agents.live import COMMAND_FIELDS, command_for, write_commands

        self.ke, self.policy, self.clock, self.compression, self.progress = ke, policy, clock, compression, progress
        n = production.num_rows
        self.n = n
        col = {c: production[c].to_pylist() for c in ("kind", "agent", "replica", "t_ns", "claim_id", "lane", "duration_ns")}
        self.kind, self.t = col["kind"], col["t_ns"]
        self.col = col
        self.kernel = RowDecisions(n)
        self.errno = np.zeros(n, dtype=np.int32)  # what the caller saw: 0 or the errno of the refused send/connect
        self.status = np.zeros(n, dtype=np.int16)  # HTTP status of a FHIR request that went through (0 otherwise)
        self.latency: list[int] = []
        self.done = 0
        self.behind = 0
        by: dict[tuple[str, int], list[int]] = {}
        for i, (a, r) in enumerate(zip(col["agent"], col["replica"])):
            by.setdefault((a, int(r)), []).append(i)
        fields = production.select([c for c in COMMAND_FIELDS if c in production.column_names])
        self.replicas: dict[tuple[str, int], Replica] = {}
        for who, rows in sorted(by.items()):
            worker_rows = [i for i in rows if self.kind[i] != "lane_open"]
            path = tmp / f"{who[0]}-{who[1]}.jsonl"
            cmds = fields.take(pa.array(worker_rows, pa.int64())).to_pylist()
            write_commands(path, (command_for(c, i, start_iso) for c, i in zip(cmds, worker_rows)))
            ke.add_replica(*who)
            self.replicas[who] = Replica(ke, who, fhir_hostport, rows, worker_rows, path)
        self.t_wall0 = time.monotonic()

    # ---------------------------------------------------------------- kernel records
    def route(self, events: list[dict[str, Any]]) -> None:
        """Hand the kernel's records to the replica they are about (row events of no replica of
        this run are counted: none are expected)."""
        for e in events:
            rep = self.replicas.get((e.get("agent"), e.get("replica")))  # type: ignore[arg-type]
            if rep is not None:
                rep.events.append(e)
            elif e.get("event") in ROW_EVENTS:
                self.kernel.unattributed += 1

    def _row_done(self, i: int) -> None:
        self.done += 1
        if self.progress is not None and (self.done % 256 == 0 or self.done == self.n):
            self.progress(self.done, self.n)

    # ---------------------------------------------------------------- one replica
    def advance(self, rep: Replica) -> float | None:
        """Start the replica's next row (lane activations are the control plane's, done here);
        on the real clock a row not due yet is left for later: its due time (monotonic) is returned."""
        while rep.pos < len(rep.rows):
            i = rep.rows[rep.pos]
            t = int(self.t[i])
            if self.clock == "real":
                due = self.t_wall0 + t / 1e9 / self.compression
                wait = due - time.monotonic()
                if wait > 0:
                    return due
                if wait < -0.05:
                    self.behind += 1
            else:
                self.ke.set_clock(t, replica=rep.who)
            if self.kind[i] == "lane_open":
                ok = self.ke.open_lane(rep.who[0], rep.who[1], self.col["claim_id"][i], self.col["lane"][i],
                                       int(self.col["duration_ns"][i]), t)
                self.route(self.ke.drain())
                self.kernel.lane(i, t, rep.who[0] in self.policy.agents, ok, rep.events)
                rep.events = []
                rep.pos += 1
                self._row_done(i)
                continue
            rep.tries = 1
            while not rep.go(i):  # the worker was killed after its last row: a fresh one takes this one
                rep.reap()
            return None
        rep.quit()
        return None

    def sent(self, rep: Replica, i: int, err: int | None) -> None:
        """The kernel has decided row i (the worker's send or connect returned, or it died twice)."""
        self.route(self.ke.drain())
        kind = self.kind[i]
        self.kernel.row(i, int(self.t[i]), rep.who, kind, rep.who[0] in self.policy.agents, _refused(kind, err),
                        rep.events)
        rep.events = []
        self.errno[i] = err if err is not None else -1
        rep.inflight = None
        rep.pos += 1
        self._row_done(i)

    def _died(self, rep: Replica) -> float | None:
        """The worker is gone (the enforcer's kill).  A row it had not said "sent" for goes once
        more to a fresh worker in the same cgroup, and the kernel decides it (a killed replica stays
        quarantined); if that one is killed too, the row counts as refused and the replica moves on."""
        rep.reap()
        i = rep.inflight
        if i is None:
            return None
        if rep.tries >= 2:
            self.sent(rep, i, None)
            return self.advance(rep)
        rep.tries += 1
        while not rep.go(i):
            rep.reap()
        return None

    def read(self, rep: Replica) -> float | None:
        """What the worker wrote: rows sent (the next row goes at once), answers, or its end."""
        lines = rep.lines()
        if lines is None:
            if rep.pos >= len(rep.rows):  # it quit after its last row and its last answers
                rep.close()
                return None
            return self._died(rep)
        due = None
        for line in lines:
            what, k, *rest = line.split(b" ", 2)
            i = rep.worker_rows[int(k)]
            if what == b"s":
                self.sent(rep, i, int(rest[0]))
                due = self.advance(rep)
            elif what == b"r":
                status, ns = rest[0].split()
                self.status[i] = int(status)
                if int(status):
                    self.latency.append(int(ns))
            else:
                raise EnvironmentProblem(f"the live worker of {rep.who[0]}-{rep.who[1]} could not run row {i}: "
                                         f"{b' '.join(rest).decode(errors='replace')}")
        return due

    # ---------------------------------------------------------------- all replicas
    def run(self) -> None:
        waiting: dict[tuple[str, int], float] = {}  # replicas whose next row is not due yet (real clock)
        for who, rep in self.replicas.items():
            due = self.advance(rep)
            if due is not None:
                waiting[who] = due
        open_ = {who for who, rep in self.replicas.items() if rep.proc is not None}
        while open_ or waiting:
            timeout = max(0.0, min(waiting.values()) - time.monotonic()) if waiting else 1.0
            ready, _, _ = select.select([self.replicas[w] for w in open_], [], [], timeout)
            for rep in ready:
                due = self.read(rep)
                if due is not None:
                    waiting[rep.who] = due
            now = time.monotonic()
            for who in [w for w, d in waiting.items() if d <= now]:
                del waiting[who]
                due = self.advance(self.replicas[who])
                if due is not None:
                    waiting[who] = due
            open_ = {who for who, rep in self.replicas.items() if rep.proc is not None}


def drive(scenario: Scenario, production: pa.Table, policy: Any, registry_path: Path, out: Path, fhir_hostport: str,
          *, clock: ClockMode = "virtual", compression: float = 60.0, name: str = "paritybed",
          progress: Callable[[int, int], None] | None = None) -> LiveResult:
    """Send every production row through the kernel enforcer; the kernel's decisions."""
    from paritybed.enforcer.kernel import KernelEnforcer

    start = scenario.start.datetime()
    kinds = production["kind"].to_pylist()
    addresses = production["address"].to_pylist()
    stand_ins = StandIns([a for k, a in zip(kinds, addresses) if k == "egress"])
    ke = None
    driver: Driver | None = None
    try:
        ke = KernelEnforcer(policy, registry_path, start=start, clock=clock, compression=compression,
                            event_log=out / "kernel-events.jsonl", name=name)
        with tempfile.TemporaryDirectory(prefix="paritybed-live-") as tmp:
            driver = Driver(ke, policy, production, start.isoformat(), fhir_hostport, Path(tmp), clock, compression,
                            progress)
            ke.drain()  # the control plane's start: not a row's
            driver.run()
        time.sleep(0.2)  # let the last events reach the ring buffer consumer
        driver.route(ke.drain())
        lost = ke.lost_events()
        counters = ke.counters()
    finally:
        if driver is not None:
            for rep in driver.replicas.values():
                rep.close()
        if ke is not None:
            ke.close(cleanup=True)
        stand_ins.close()
    wall = time.monotonic() - driver.t_wall0
    decisions = driver.kernel.result(production["t_ns"].to_pylist())
    lat = np.asarray(driver.latency or [0], dtype=np.int64)
    summary = {
        "clock": clock, "compression": compression if clock == "real" else None,
        "rows": production.num_rows, "wall_seconds": round(wall, 2),
        "rows_per_second": round(production.num_rows / wall) if wall > 0 else None,
        "replicas": len(driver.replicas),
        "kernel_allowed": int((decisions.decision == ALLOW).sum()), "kernel_denied": int((decisions.decision == DENY).sum()),
        "kernel_alerted": int((decisions.decision == ALERT).sum()),
        "caller_saw_otherwise": driver.kernel.caller_mismatch, "unattributed_events": driver.kernel.unattributed,
        "worker_kills": sum(r.kills for r in driver.replicas.values()),
        "rows_dispatched_late": driver.behind if clock == "real" else None,
        "fhir_answers": {"2xx": int(((driver.status >= 200) & (driver.status < 300)).sum()),
                         "other": int(((driver.status > 0) & ((driver.status < 200) | (driver.status >= 300))).sum()),
                         "none": int(((driver.status == 0) & (np.asarray(kinds) == "fhir") & (driver.errno == 0)).sum())},
        "request_latency_us": {"p50": round(float(np.percentile(lat, 50)) / 1e3, 1),
                               "p99": round(float(np.percentile(lat, 99)) / 1e3, 1)},
        "lost_events": lost, "kernel_counters": counters, "stand_in_connections": stand_ins.accepted,
    }
    seen = production.append_column("decision", decisions.decision_strings()) \
        .append_column("reason", decisions.reason_strings()) \
        .append_column("errno", pa.array(driver.errno, pa.int32())) \
        .append_column("http_status", pa.array(driver.status, pa.int16()))
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
        from paritybed.fhir.server import running_server_processes

        if stage:
            stage("fhir")
        u = urlsplit(stack.enter_context(running_server_processes(load=[folder])))
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
