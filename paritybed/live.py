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
* break-glass activations go to the control plane (`open_lane`, the engine's rule), and so do
  launch contexts (`open_context` / `close_context`: ``context_row``);
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
from paritybed.enforcer.kernel_abi import (ALERT, ALLOW, DECISIONS, DENY, R_CONTEXT_NOT_IN_ENVELOPE, R_CONTEXT_OPENED,
                                           R_LANE_NOT_IN_ENVELOPE, R_LANE_OPENED, R_OK, R_UNENFORCED, REASONS)
from paritybed.scenarios import Scenario

ClockMode = Literal["virtual", "real"]
#: Kernel events that decide a row (the rest of the log is the control plane's own).
DECIDING = ("deny", "alert", "request")
ROW_EVENTS = DECIDING + ("first-contact", "quarantine", "kill", "lane-open", "lane-refused", "context-refused")


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
def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Replica:
    """One agent replica: its rows (trace positions, in time order), the worker process that runs
    them inside its cgroup (started again after a kill, at the first row it did not report), and
    the kernel's records of it not yet given to a row."""

    def __init__(self, enforcer: Any, who: tuple[str, int], fhir_hostport: str, rows: list[int], commands: Path,
                 clock: ClockMode, origin_ns: int, compression: float) -> None:
        self.enforcer, self.who, self.fhir, self.rows, self.commands = enforcer, who, fhir_hostport, rows, commands
        self.clock, self.origin_ns, self.compression = clock, origin_ns, compression
        self.pos = 0  # rows decided so far (the worker reports them in order)
        self.records: dict[int, list[dict[str, Any]]] = {}  # virtual clock: by the replica's time at the decision
        self.timed: list[dict[str, Any]] = []  # real clock: in the order the kernel wrote them (ktime)
        self.deaths: dict[int, int] = {}  # row position -> workers that died before reporting it
        self.kills = 0
        self.cpu = 0.0  # CPU seconds of its workers (user + system)
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    def spawn(self) -> None:
        from paritybed.agents.live import worker_argv

        if self.clock == "virtual":
            fd, key = self.enforcer.replica_clock(*self.who)
            argv = worker_argv(self.fhir, self.commands, self.pos, clock=(fd, key))
            fds: tuple[int, ...] = (fd,)
        else:
            argv, fds = worker_argv(self.fhir, self.commands, self.pos, pace=(self.origin_ns, self.compression)), ()
        self.proc = self.enforcer.spawn(self.who[0], self.who[1], argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        bufsize=0, pass_fds=fds)
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]
        self._buf = b""

    def fileno(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def lines(self) -> list[bytes] | None:
        """Complete lines the worker wrote since the last call; None at end of stream (it died or ended)."""
        try:
            data = os.read(self.fileno(), 1 << 18)
        except BlockingIOError:
            return []
        if not data:
            return None
        *out, self._buf = (self._buf + data).split(b"\n")
        return out

    def tell(self, k: int) -> None:
        """Let the worker go on after an ``l``/``w`` line (a dead worker is noticed at end of stream)."""
        try:
            self.proc.stdin.write(b"%d\n" % k)  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError):
            pass

    def take(self, t: int, lo: int, hi: int) -> list[dict[str, Any]]:
        """The kernel's records of the row decided at simulated time t (virtual clock), or between
        the monotonic times lo and hi (real clock); the number of older records no row took is
        counted by the caller."""
        if self.clock == "virtual":
            return self.records.pop(t, [])
        out: list[dict[str, Any]] = []
        while self.timed and self.timed[0].get("ktime_ns", 0) <= hi:
            e = self.timed.pop(0)
            if e.get("ktime_ns", 0) >= lo:
                out.append(e)
        return out

    def reap(self) -> int:
        """The worker is gone; its exit code (-SIGKILL when the enforcer killed it).  Its CPU time
        is read from /proc while it is a zombie, before it is reaped."""
        assert self.proc is not None
        os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
        self.cpu += _cpu_seconds(self.proc.pid)
        code = self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self.proc = None
        return code

    def close(self) -> None:
        if self.proc is None:
            return
        self.proc.kill()
        self.reap()


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


LANE_EVENTS = ("lane-open", "lane-refused")
#: Kernel events of the control plane's rows (lanes, launch contexts): theirs, not a request's.
CONTROL_EVENTS = LANE_EVENTS + ("context-refused",)
#: Rows the control plane decides: the worker waits while the driver runs them.
CONTROL_ROWS = ("lane_open", "context_open", "context_close")


class Driver:
    """The loop of ``drive``: every replica's worker runs its rows; the driver opens lanes, gives
    the kernel's records to the rows the workers report, and restarts killed workers."""

    def __init__(self, ke: Any, policy: Any, production: pa.Table, start_iso: str, fhir_hostport: str, tmp: Path,
                 clock: ClockMode, compression: float, progress: Callable[[int, int], None] | None) -> None:
        from paritybed.agents.live import commands, write_commands

        self.ke, self.policy, self.clock, self.compression, self.progress = ke, policy, clock, compression, progress
        n = production.num_rows
        self.n = n
        col = {c: production[c].to_pylist() for c in ("kind", "agent", "replica", "t_ns")}
        # what open_lane and open/close_context need, for those rows
        ctl = [i for i, k in enumerate(col["kind"]) if k in CONTROL_ROWS]
        col.update({c: dict(zip(ctl, production[c].take(pa.array(ctl, pa.int64())).to_pylist()))
                    for c in ("claim_id", "lane", "duration_ns", "launch_context", "patient_id", "encounter_id")
                    if c in production.column_names})
        self.kind, self.t, self.col = col["kind"], col["t_ns"], col
        self.kernel = RowDecisions(n)
        self.errno = [0] * n  # what the caller saw: 0 or the errno of the refused send/connect (-1: killed twice)
        self.status = [0] * n  # HTTP status of a FHIR request that went through (0 otherwise)
        self.latency: list[int] = []
        self.done = 0
        self.late = 0
        self.t_wall0 = time.monotonic()
        origin_ns = time.monotonic_ns() + 500_000_000  # real clock: simulated t=0, once the workers are up
        by: dict[tuple[str, int], list[int]] = {}
        for i, (a, r) in enumerate(zip(col["agent"], col["replica"])):
            by.setdefault((a, int(r)), []).append(i)
        every = commands(production, start_iso)
        self.replicas: dict[tuple[str, int], Replica] = {}
        for who, rows in sorted(by.items()):
            path = tmp / f"{who[0]}-{who[1]}.jsonl"
            write_commands(path, self._synced([every[i] for i in rows]))
            ke.add_replica(*who)
            self.replicas[who] = Replica(ke, who, fhir_hostport, rows, path, clock, origin_ns, compression)
        self.origin_ns = origin_ns

    @staticmethod
    def _synced(cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A replica's commands, where the control plane's rows (lane activations, launch contexts)
        and rows at the time of the row before them wait for the driver (``sync``)."""
        last = None
        for cmd in cmds:
            if cmd["kind"] in CONTROL_ROWS:
                cmd["sync"] = "control"
            elif cmd["t_ns"] == last:
                cmd["sync"] = "wait"
            last = cmd["t_ns"]
        return cmds

    # ---------------------------------------------------------------- kernel records
    def route(self, events: list[dict[str, Any]]) -> None:
        """Give each kernel record to its replica, to be taken by the row reported next with its
        time (row events of no replica of this run are counted: none are expected)."""
        for e in events:
            rep = self.replicas.get((e.get("agent"), e.get("replica")))  # type: ignore[arg-type]
            if rep is None or e.get("event") in CONTROL_EVENTS or "t_ns" not in e:
                if e.get("event") in ROW_EVENTS and e.get("event") not in CONTROL_EVENTS:
                    self.kernel.unattributed += 1
            elif self.clock == "virtual":
                rep.records.setdefault(e["t_ns"], []).append(e)
            else:
                rep.timed.append(e)

    def _done(self) -> None:
        self.done += 1
        if self.progress is not None and (self.done % 512 == 0 or self.done == self.n):
            self.progress(self.done, self.n)

    # ---------------------------------------------------------------- what a worker says
    def sent(self, rep: Replica, k: int, err: int | None, lo: int = 0, hi: int = 0) -> None:
        """The kernel has decided row k of the replica (its send or connect returned; err None: the
        worker was killed twice before it could say)."""
        if k != rep.pos:
            raise EnvironmentProblem(f"the live worker of {rep.who[0]}-{rep.who[1]} reported row {k} out of order "
                                     f"(expected {rep.pos})")
        i = rep.rows[k]
        t = int(self.t[i])
        kind = self.kind[i]
        self.kernel.row(i, t, rep.who, kind, rep.who[0] in self.policy.agents, _refused(kind, err), rep.take(t, lo, hi))
        self.errno[i] = err if err is not None else -1
        if self.clock == "real" and lo - (self.origin_ns + t / self.compression) > 50e6:
            self.late += 1
        rep.pos += 1
        self._done()

    def control(self, rep: Replica, k: int) -> None:
        """Row k is the control plane's (a break-glass activation, a launch context opened or
        closed): its decision (the engine's rule)."""
        i = rep.rows[k]
        t = int(self.t[i])
        kind, enforced, col = self.kind[i], rep.who[0] in self.policy.agents, self.col
        if kind == "lane_open":
            ok = self.ke.open_lane(rep.who[0], rep.who[1], col["claim_id"][i], col["lane"][i], int(col["duration_ns"][i]), t)
        else:
            ok = context_row(self.ke, {"agent": rep.who[0], "replica": rep.who[1], "kind": kind,
                                       **{c: col[c][i] for c in ("launch_context", "patient_id", "encounter_id",
                                                                 "duration_ns")}}, t)
        events = self.ke.drain()
        self.route(events)
        mine = [e for e in events if e.get("event") in CONTROL_EVENTS and (e.get("agent"), e.get("replica")) == rep.who]
        if kind == "lane_open":
            self.kernel.lane(i, t, enforced, ok, mine)
        else:
            self.kernel.context(i, t, enforced, kind, ok, mine)
        rep.pos += 1
        self._done()

    def read(self, rep: Replica) -> None:
        lines = rep.lines()
        if lines is None:
            self.ended(rep)
            return
        self.route(self.ke.drain())  # after the lines: every record of the rows they report is in
        for line in lines:
            what, k_, *rest = line.split(b" ", 2)
            k = int(k_)
            if what == b"s":
                err, lo, hi = rest[0].split()
                self.sent(rep, k, int(err), int(lo), int(hi))
            elif what == b"r":
                status, ns = rest[0].split()
                self.status[rep.rows[k]] = int(status)
                if int(status):
                    self.latency.append(int(ns))
            elif what == b"l":
                self.control(rep, k)
                rep.tell(k)
            elif what == b"w":
                rep.tell(k)
            else:
                raise EnvironmentProblem(f"the live worker of {rep.who[0]}-{rep.who[1]} could not run row {rep.rows[k]}: "
                                         f"{b' '.join(rest).decode(errors='replace')}")

    def ended(self, rep: Replica) -> None:
        """The worker's output ended: after its last row, or killed by the enforcer (kill
        response).  A row it had not reported goes to a fresh worker in the same cgroup, and the
        kernel decides it (a killed replica stays quarantined); if that one is killed too before it
        reports the row, the row counts as refused and the next worker starts after it."""
        code = rep.reap()
        if rep.pos >= len(rep.rows):
            return
        if code != -signal.SIGKILL:
            raise EnvironmentProblem(f"the live worker of {rep.who[0]}-{rep.who[1]} exited with code {code} "
                                     "(not killed by the enforcer)")
        rep.kills += 1
        rep.deaths[rep.pos] = rep.deaths.get(rep.pos, 0) + 1
        if rep.deaths[rep.pos] >= 2:
            self.route(self.ke.drain())
            i = rep.rows[rep.pos]
            if self.kind[i] in CONTROL_ROWS:
                self.control(rep, rep.pos)
            else:
                self.sent(rep, rep.pos, None, 0, time.monotonic_ns())
        if rep.pos < len(rep.rows):
            rep.spawn()

    def left_over(self) -> None:
        """Records no reported row took (none are expected) are counted."""
        for rep in self.replicas.values():
            left = [e for es in rep.records.values() for e in es] + rep.timed
            self.kernel.unattributed += sum(1 for e in left if e.get("event") in ROW_EVENTS)
            rep.records, rep.timed = {}, []

    # ---------------------------------------------------------------- all replicas
    def run(self) -> None:
        for rep in self.replicas.values():
            rep.spawn()
        poller = select.poll()
        watched: dict[int, Replica] = {}
        while True:
            live = {rep.fileno(): rep for rep in self.replicas.values() if rep.proc is not None}
            if not live:
                break
            for fd in set(watched) - set(live):
                poller.unregister(fd)
            for fd in set(live) - set(watched):
                poller.register(fd, select.POLLIN)
            watched = live
            for fd, _ in poller.poll(1000):
                rep = watched[fd]
                if rep.proc is not None and rep.fileno() == fd:
                    self.read(rep)


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
            cpu0 = time.process_time()
            driver.run()
            driver_cpu = time.process_time() - cpu0
        time.sleep(0.2)  # let the last events reach the ring buffer consumer
        driver.route(ke.drain())
        driver.left_over()
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
    status, errno_seen = np.asarray(driver.status, dtype=np.int16), np.asarray(driver.errno, dtype=np.int32)
    fhir = np.asarray(kinds) == "fhir"
    summary = {
        "clock": clock, "compression": compression if clock == "real" else None,
        "rows": production.num_rows, "wall_seconds": round(wall, 2),
        "rows_per_second": round(production.num_rows / wall) if wall > 0 else None,
        "replicas": len(driver.replicas),
        "kernel_allowed": int((decisions.decision == ALLOW).sum()), "kernel_denied": int((decisions.decision == DENY).sum()),
        "kernel_alerted": int((decisions.decision == ALERT).sum()),
        "caller_saw_otherwise": driver.kernel.caller_mismatch, "unattributed_events": driver.kernel.unattributed,
        "worker_kills": sum(r.kills for r in driver.replicas.values()),
        "rows_dispatched_late": driver.late if clock == "real" else None,
        "fhir_answers": {"2xx": int(((status >= 200) & (status < 300)).sum()),
                         "other": int(((status > 0) & ((status < 200) | (status >= 300))).sum()),
                         "none": int(((status == 0) & fhir & (errno_seen == 0)).sum())},
        "cpu_seconds": {"driver": round(driver_cpu, 1), "workers": round(sum(r.cpu for r in driver.replicas.values()), 1)},
        "request_latency_us": {"p50": round(float(np.percentile(lat, 50)) / 1e3, 1),
                               "p99": round(float(np.percentile(lat, 99)) / 1e3, 1)},
        "lost_events": lost, "kernel_counters": counters, "stand_in_connections": stand_ins.accepted,
    }
    seen = production.append_column("decision", decisions.decision_strings()) \
        .append_column("reason", decisions.reason_strings()) \
        .append_column("errno", pa.array(errno_seen, pa.int32())) \
        .append_column("http_status", pa.array(status, pa.int16()))
    pa.parquet.write_table(seen, out / "live.parquet", compression="zstd")
    return LiveResult(decisions, lost, summary)


# ------------------------------------------------------------------------------------ in the pipeline
def unavailable_reason() -> str | None:
    """Why live mode cannot run here (what `paritybed demo` says when it falls back to model
    mode), or None when it can: root, a cgroup v2 hierarchy, BTF of the running kernel, BCC's
    Python module and the kernel headers it compiles against."""
    import platform

    from paritybed.enforcer.btf import VMLINUX
    from paritybed.enforcer.cgroups import cgroup2_mount

    if os.geteuid() != 0:
        return "not root (eBPF programs and cgroups need root)"
    try:
        cgroup2_mount()
    except EnvironmentProblem:
        return "no cgroup v2 hierarchy is mounted"
    if not VMLINUX.exists():
        return f"the kernel has no BTF ({VMLINUX})"
    try:
        import bcc  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the same: no BCC here
        return f"BCC's Python module is not available ({e})"
    headers = Path("/lib/modules") / platform.release() / "build"
    if not headers.exists():
        return f"no kernel headers at {headers} (BCC compiles against them; `make setup` links them as root)"
    return None


def require_root() -> None:
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
