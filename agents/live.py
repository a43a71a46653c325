"""The live replica worker: one agent replica as a real process, for live (kernel) mode.

    python -P -m paritybed.agents.live --fhir 127.0.0.1:8080 --rows ROWS.jsonl [--start K]
        [--clock-fd FD --clock-key KEY | --origin-ns NS --compression X]

``ROWS.jsonl`` holds the replica's rows in time order, one command per line (``command_for``:
the trace columns a row needs), written by the live driver before the worker starts.  The worker
runs them itself, from line K, one after the other:

* on the **virtual** clock it first sets its own clock in the kernel to the row's simulated time
  (`enforcer.bpfsys.ReplicaClock`: an fd of the kernel's ``vclock`` map that the control plane
  passed, and the replica's key in it), then sends the request or makes the connect, so the
  kernel decides the row at that time;
* on the **real** clock it waits until the row's time (``NS + t / X``, CLOCK_MONOTONIC) instead.

It tells the driver, on stdout:

    s K ERRNO LO HI   row K was sent, or its connect made: the kernel has decided.  ERRNO 0, or what
                      send/connect got (EACCES from sk_msg, EPERM from connect4); LO, HI:
                      CLOCK_MONOTONIC ns around the send/connect (the real clock's records fall inside)
    r K STATUS NS     row K's answer came: HTTP status (0: none will come), ns from the send
    l K               row K is the control plane's: a break-glass activation, a launch context
                      opened or closed
    w K               row K is at the same simulated time as the row before it
    x K MESSAGE       row K could not be run (a bad command): the driver stops

and after ``l K`` or ``w K`` waits for the driver to write ``K`` on stdin (the driver opens the
lane or the context, or first takes the kernel's records of the row before, which carry the same time).  Each
``s`` line is written at once, so a worker the enforcer kills has said "sent" for every row it
sent before the one that got it killed; the driver starts a fresh worker at the first row it
did not hear about.

Why this shape: the kernel decides a request inside ``send`` (sk_msg) and an egress row inside
``connect`` (connect4), at the clock value of the replica; nothing else needs the driver.  The
worker does not wait for the answer either: it sends the next row on another keep-alive
connection of its pool (at most ``POOL`` open, each carrying one request at a time, as HTTP/1.1
clients do) and reads answers as they come.  The schedule, not the answers, decides what is sent
(the simulation already did), and no per-row message goes from the driver to the worker.

Each request (headers and body) is written with a single ``send``, because the kernel's
``sk_msg`` program classifies one message as one request (docs/enforcement.md).  A row with a
break-glass claim carries ``X-Break-Glass-Claim``, a row in a launch context
``X-Launch-Context``.  ``EACCES`` from ``send`` is an ``sk_msg`` drop:
no byte left, and the worker closes that connection, because the kernel keeps the drop verdict
on the socket (docs/kernel.md, "A dropped socket stays dropped").  A connection the server closed
while idle is noticed before it is used; a send that fails because the server reset it (the
kernel refuses a socket in error before deciding) is retried once on a fresh connection, inside
the row's clock window.  An answer that never comes (the server closed the connection after the
send) is status 0: the kernel's decision stands, it was made at the send.

An egress row is a TCP connect to the address followed by a close: the worker does NOT send the
``calls`` HTTP calls over it.  What enforcement sees of egress is the connect (``connect4``);
sending bytes would only put non-FHIR traffic through the replica's ``sk_msg`` program.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno as errno_mod
import functools
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import httptools
import orjson

from paritybed.agents.bodies import body_for
from paritybed.core.units import epoch_ns
from paritybed.enforcer.bpfsys import ReplicaClock

#: Trace columns a command carries (body_for's inputs plus what the request line needs).
COMMAND_FIELDS = ("kind", "method", "path", "resource_type", "resource_id", "patient_id", "context_id",
                  "context_kind", "workflow", "agent", "agent_class", "replica", "claim_id", "t_ns", "address",
                  "egress_calls", "launch_context")
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
#: Keep-alive connections a replica keeps to the FHIR server (one request in flight on each).
POOL = 4
#: Send errors that mean the server had already reset the connection: the kernel refuses a socket
#: in error before its program runs, so a retry on a fresh connection is still the row's only decision.
RESET = (errno_mod.EPIPE, errno_mod.ECONNRESET, errno_mod.ENOTCONN)


def command_for(row: Mapping[str, Any], i: int, start: str | None = None) -> dict[str, Any]:
    """The command for trace row `i` (a dict of trace columns); `start` is the ISO instant of
    simulated t=0, used in the dates of bodies."""
    cmd: dict[str, Any] = {"row": i}
    for k in COMMAND_FIELDS:
        if k in row:
            cmd[k] = row[k]
    if row.get("kind") == "egress":
        cmd["calls"] = int(row.get("egress_calls", 0))
    if start:
        cmd["start"] = start
    return cmd


#: What a write's body is built from (agents/bodies.py), beyond the columns every FHIR row carries.
BODY_FIELDS = ("resource_type", "resource_id", "patient_id", "context_id", "context_kind", "workflow", "agent")


def commands(trace: Any, start: str) -> list[dict[str, Any]]:
    """``command_for`` of every row of a trace table (pyarrow), column by column and with only what
    each row needs (a read or search: its method, path, claim, time and the sender's identity; a
    write: its body's inputs too; an egress connect: its address), so a week's 650 k rows take seconds, not a minute."""
    import pyarrow as pa

    n = trace.num_rows
    kind, t_ns = trace["kind"].to_pylist(), trace["t_ns"].to_pylist()
    method, path = trace["method"].to_pylist(), trace["path"].to_pylist()
    claim, address = trace["claim_id"].to_pylist(), trace["address"].to_pylist()
    calls = trace["egress_calls"].to_pylist() if "egress_calls" in trace.column_names else [0] * n
    cols = trace.column_names
    agent = trace["agent"].to_pylist() if "agent" in cols else [None] * n
    agent_class = trace["agent_class"].to_pylist() if "agent_class" in cols else [None] * n
    replica = trace["replica"].to_pylist() if "replica" in cols else [0] * n
    lctx = trace["launch_context"].to_pylist() if "launch_context" in cols else [None] * n
    writes = [i for i in range(n) if method[i] in ("POST", "PUT")]
    bodies = dict(zip(writes, trace.select([c for c in BODY_FIELDS if c in trace.column_names])
                      .take(pa.array(writes, pa.int64())).to_pylist()))
    out: list[dict[str, Any]] = []
    for i in range(n):
        cmd: dict[str, Any] = {"row": i, "kind": kind[i], "t_ns": t_ns[i]}
        if kind[i] == "fhir":
            cmd["method"], cmd["path"] = method[i], path[i]
            if agent[i]:  # who sends it and when, for the server's audit trail (identity_headers)
                cmd.update(agent=agent[i], agent_class=agent_class[i], replica=replica[i], start=start)
            if claim[i]:
                cmd["claim_id"] = claim[i]
            if lctx[i]:
                cmd["launch_context"] = lctx[i]
            if i in bodies:
                cmd.update(bodies[i], start=start)
        elif kind[i] == "egress":
            cmd["address"], cmd["calls"] = address[i], int(calls[i] or 0)
        out.append(cmd)
    return out


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


@functools.lru_cache(maxsize=8)
def _origin_ns(start: str) -> int:
    """The ISO instant of simulated t=0 in ns since the epoch (computed once per run, not per row)."""
    return epoch_ns(dt.datetime.fromisoformat(start))


def identity_headers(cmd: Mapping[str, Any]) -> tuple[str, ...]:
    """Who sends the request and when it happens in the simulation, for the server's audit trail
    (docs/fhir.md, "Client identity"): ``X-Paritybed-Agent: <agent>/<replica>``,
    ``X-Paritybed-Agent-Class``, and ``X-Request-ID: pb-<simulated instant, epoch ns>-<row>`` (HAPI
    copies the request id into each BALP AuditEvent, so a profile can be timed on the virtual
    clock).  Empty for a command without an agent."""
    if not cmd.get("agent"):
        return ()
    out = [f"X-Paritybed-Agent: {cmd['agent']}/{int(cmd.get('replica') or 0)}"]
    if cmd.get("agent_class"):
        out.append(f"X-Paritybed-Agent-Class: {cmd['agent_class']}")
    if cmd.get("start") and cmd.get("t_ns") is not None:
        ns = _origin_ns(str(cmd["start"])) + int(cmd["t_ns"])
        out.append(f"X-Request-ID: pb-{ns}-{cmd.get('row', 0)}")
    return tuple(out)


def context_headers(cmd: Mapping[str, Any]) -> tuple[str, ...]:
    """The launch context the request presents (docs/enforcement.md, "Clinical context binding"):
    ``X-Launch-Context: <id>``, or nothing outside a context."""
    ctx = cmd.get("launch_context")
    return (f"X-Launch-Context: {ctx}",) if ctx else ()


def request_bytes(method: str, path: str, host: str, body: bytes, claim: str | None,
                  headers: Sequence[str] = ()) -> bytes:
    """One complete HTTP/1.1 request: request line, headers and body in one buffer."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Accept: application/fhir+json", "User-Agent: paritybed-agent",
             *headers]
    if claim:
        lines.append(f"X-Break-Glass-Claim: {claim}")
    if method in ("POST", "PUT"):
        lines += ["Content-Type: application/fhir+json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def request_for(cmd: Mapping[str, Any], hostport: str) -> bytes:
    """The bytes of a FHIR row's request (ValueError/KeyError for a command that has none)."""
    return request_bytes(str(cmd.get("method", "GET")), str(cmd["path"]), hostport, body_for(cmd),
                         cmd.get("claim_id") or None, identity_headers(cmd) + context_headers(cmd))


# ------------------------------------------------------------------------------------ connections
class FhirConnection:
    """One keep-alive connection to the FHIR server, opened on first use.

    ``send(data, tag)`` writes one request and returns at once; ``read()`` takes what the server
    sent and returns the answers it completed as (tag, HTTP status, ns since the send), in order.
    ``request(...)`` is both, waiting for the answer (tests, one-off clients)."""

    def __init__(self, hostport: str) -> None:
        self.hostport = hostport
        self.addr = _split(hostport)
        self.sock: socket.socket | None = None
        self.pending: deque[tuple[Any, int]] = deque()  # (tag, send time) of requests without an answer
        self._parser: Any = None
        self._done: list[tuple[Any, int, int]] = []
        self._keep_alive = True

    # httptools callbacks (one parser per connection; answers come in request order)
    def on_message_complete(self) -> None:
        if not self.pending:  # an answer to nothing: the connection is not to be trusted
            self._keep_alive = False
            return
        tag, t0 = self.pending.popleft()
        self._done.append((tag, self._parser.get_status_code(), time.perf_counter_ns() - t0))
        self._keep_alive = self._keep_alive and self._parser.should_keep_alive()

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def close(self) -> list[tuple[Any, int, int]]:
        """Close it; requests still without an answer are returned as answered with status 0."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        lost = [(tag, 0, time.perf_counter_ns() - t0) for tag, t0 in self.pending]
        self.pending.clear()
        return lost

    def open(self) -> None:
        self.close()
        s = socket.create_connection(self.addr, timeout=CONNECT_TIMEOUT_S)
        s.settimeout(None)  # blocking: a send is one message; the OS send timeout bounds it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(READ_TIMEOUT_S), 0))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self._parser, self._keep_alive = s, httptools.HttpResponseParser(self), True

    def usable(self) -> bool:
        """Open, idle and not closed by the server (an idle server closes keep-alive connections)."""
        if self.sock is None or self.pending or not self._keep_alive:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing to read: still open
        except OSError:
            pass
        self.close()  # end of stream (or bytes nobody asked for)
        return False

    def send(self, data: bytes, tag: Any = None) -> int | None:
        """Write one request (opening the connection if needed); None, or the errno."""
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self.open()
                assert self.sock is not None
                t0 = time.perf_counter_ns()
                sent = self.sock.send(data)  # one send: one message for sk_msg
                while sent < len(data):  # a short write (rare on loopback): the rest follows
                    sent += self.sock.send(data[sent:])
            except OSError as e:
                self.close()
                if attempt == 0 and e.errno in RESET:
                    continue
                return e.errno or errno_mod.EIO
            self.pending.append((tag, t0))
            return None
        return errno_mod.ECONNRESET

    def read(self) -> list[tuple[Any, int, int]]:
        """Answers completed by what the server sent (call when the socket is readable)."""
        assert self.sock is not None
        try:
            data = self.sock.recv(262144, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            return self.close()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._done.extend(self.close())
        done, self._done = self._done, []
        if not self._keep_alive and not self.pending:
            self.close()
        return done

    def request(self, method: str, path: str, body: bytes = b"", claim: str | None = None,
                headers: Sequence[str] = ()) -> tuple[int | None, int | None]:
        """(HTTP status, None) or (None, errno) for one request, waiting for its answer."""
        if self.sock is not None and not self.usable():
            self.close()
        err = self.send(request_bytes(method, path, self.hostport, body, claim, headers))
        if err is not None:
            return None, err
        deadline = time.monotonic() + READ_TIMEOUT_S
        while self.sock is not None and time.monotonic() < deadline:
            if select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                for _, status, _ in self.read():
                    return (status, None) if status else (None, errno_mod.ECONNRESET)
        self.close()
        return None, errno_mod.ETIMEDOUT


def egress(address: str) -> int | None:
    """TCP connect to address then close; None on success, else the errno."""
    try:
        with socket.create_connection(_split(address), timeout=CONNECT_TIMEOUT_S):
            pass
    except TimeoutError:
        return errno_mod.ETIMEDOUT
    except OSError as e:
        return e.errno or errno_mod.EIO
    return None


def handle(conn: FhirConnection, cmd: Mapping[str, Any]) -> dict[str, Any]:
    """Run one command and wait for its answer (tests, one-off clients); never raises for a
    refused request."""
    row = cmd.get("row")
    t0 = time.perf_counter_ns()
    kind = cmd.get("kind")
    if kind == "fhir":
        try:
            body = body_for(cmd)
        except (ValueError, KeyError) as e:
            return {"row": row, "ok": False, "status": None, "errno": None, "ns": 0, "error": f"bad command: {e}"}
        status, err = conn.request(str(cmd.get("method", "GET")), str(cmd["path"]), body, cmd.get("claim_id") or None,
                                   identity_headers(cmd) + context_headers(cmd))
        ok = status is not None and 200 <= status < 300
        return {"row": row, "ok": ok, "status": status, "errno": err, "ns": time.perf_counter_ns() - t0}
    if kind == "egress":
        err = egress(str(cmd["address"]))
        return {"row": row, "ok": err is None, "status": None, "errno": err, "ns": time.perf_counter_ns() - t0,
                "calls": int(cmd.get("calls", 0))}
    return {"row": row, "ok": False, "status": None, "errno": None, "ns": 0,
            "error": f"unknown command kind {kind!r} (expected fhir or egress; lanes and launch contexts are opened by the control plane)"}


# ------------------------------------------------------------------------------------ the worker
class Worker:
    """One replica's rows, run in order (module doc): its own virtual clock set before each row
    (or each row paced to its wall-clock time), a pool of connections, answers read as they come."""

    def __init__(self, hostport: str, commands: list[dict[str, Any]], in_fd: int, out_fd: int, *,
                 clock: ReplicaClock | None = None, pace: tuple[int, float] | None = None, pool: int = POOL) -> None:
        self.hostport, self.commands, self.in_fd, self.out_fd = hostport, commands, in_fd, out_fd
        self.clock, self.pace = clock, pace  # pace: (CLOCK_MONOTONIC ns at simulated t=0, compression)
        self.conns = [FhirConnection(hostport) for _ in range(pool)]
        self.out: list[bytes] = []
        self._in = b""

    def run(self, start: int = 0) -> int:
        for k in range(start, len(self.commands)):
            cmd = self.commands[k]
            sync = cmd.get("sync")
            if sync:  # the driver's turn first: a lane or context, or a row at the same time as the last
                self.say(b"%s %d\n" % (b"l" if sync == "control" else b"w", k))
                if not self.reply(k):
                    return 1  # the driver is gone
                if sync == "control":
                    continue
            t = int(cmd["t_ns"])
            if self.clock is not None:
                self.clock.set(t)
            elif self.pace is not None:
                self.pause_until(self.pace[0] + t / self.pace[1])
            lo = time.monotonic_ns()
            err = self.run_row(k, cmd)
            if err is not None:
                self.say(b"s %d %d %d %d\n" % (k, err, lo, time.monotonic_ns()))
            self.wait_answers(until=0)
        while any(c.pending for c in self.conns):
            self.wait_answers(until=time.monotonic_ns() + READ_TIMEOUT_S * 1e9, give_up=True)
        self.flush()
        return 0

    def run_row(self, k: int, cmd: Mapping[str, Any]) -> int | None:
        """Send the row's request or make its connect: the errno the caller saw (0), or None for a
        command that is not the worker's (an ``x`` line)."""
        kind = cmd.get("kind")
        if kind == "egress":
            return egress(str(cmd["address"])) or 0
        if kind != "fhir":
            self.out.append(f"x {k} unknown command kind {kind!r} (lanes and launch contexts are the control plane's)\n".encode())
            return None
        try:
            data = request_for(cmd, self.hostport)
        except (ValueError, KeyError) as e:
            self.out.append(f"x {k} bad command: {e}\n".encode())
            return None
        err = self.free().send(data, k)
        if err is not None:
            self.out.append(b"r %d 0 0\n" % k)  # no answer will come
        return err or 0

    def free(self) -> FhirConnection:
        """An idle connection (a closed slot opens at the send), waiting for an answer if all are busy."""
        while True:
            for c in self.conns:
                if c.sock is not None and c.usable():
                    return c
            for c in self.conns:
                if c.sock is None:
                    return c
            self.wait_answers(until=time.monotonic_ns() + READ_TIMEOUT_S * 1e9, give_up=True, one=True)

    def pause_until(self, when_ns: float) -> None:
        """Real clock: wait for the row's time, reading answers meanwhile."""
        while (left := when_ns - time.monotonic_ns()) > 0:
            if any(c.pending for c in self.conns):
                self.wait_answers(until=when_ns, one=True)
            else:
                time.sleep(left / 1e9)

    def wait_answers(self, until: float, give_up: bool = False, one: bool = False) -> None:
        """Read answers until none is outstanding or the monotonic time `until` (0: only what is
        there now); with `one`, return after the first read; with `give_up`, drop the oldest
        connection's answers when nothing came by then."""
        while True:
            busy = [c for c in self.conns if c.pending]
            left = max(0.0, (until - time.monotonic_ns()) / 1e9)
            if not busy:
                return
            ready, _, _ = select.select(busy, [], [], left)
            for c in ready:
                if c.sock is not None:
                    self.answers(c.read())
            if not ready:
                if give_up:
                    self.answers(min(busy, key=lambda c: c.pending[0][1]).close())
                return
            if one or until == 0:
                return

    def reply(self, k: int) -> bool:
        """Wait for the driver to say ``k`` (reading answers meanwhile); False at end of input."""
        while True:
            while b"\n" in self._in:  # replies come in the order the worker asked
                line, self._in = self._in.split(b"\n", 1)
                if line.strip() == b"%d" % k:
                    return True
            busy = [c for c in self.conns if c.pending]
            ready, _, _ = select.select([self.in_fd, *busy], [], [], READ_TIMEOUT_S)
            for r in ready:
                if r == self.in_fd:
                    data = os.read(self.in_fd, 4096)
                    if not data:
                        return False
                    self._in += data
                elif r.sock is not None:
                    self.answers(r.read())
            self.flush()

    def answers(self, done: Iterable[tuple[Any, int, int]]) -> None:
        self.out.extend(b"r %d %d %d\n" % (k, status, ns) for k, status, ns in done)

    def say(self, line: bytes) -> None:
        self.out.append(line)
        self.flush()

    def flush(self) -> None:
        if self.out:
            data, self.out = b"".join(self.out), []
            while data:
                data = data[os.write(self.out_fd, data):]


def read_commands(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def write_commands(path: Path, commands: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "wb") as f:
        f.writelines(orjson.dumps(c) + b"\n" for c in commands)


def worker_argv(fhir: str, rows: Path, start: int = 0, *, clock: tuple[int, int] | None = None,
                pace: tuple[int, float] | None = None) -> list[str]:
    """The command line of a replica worker talking to the FHIR server at ``fhir`` (host:port),
    running ``rows`` from line ``start``; ``clock`` = (fd, key) of its virtual clock (pass the fd
    to the child), or ``pace`` = (CLOCK_MONOTONIC ns at simulated t=0, compression)."""
    argv = [sys.executable, "-P", "-m", "paritybed.agents.live", "--fhir", fhir, "--rows", str(rows), "--start", str(start)]
    if clock is not None:
        argv += ["--clock-fd", str(clock[0]), "--clock-key", str(clock[1])]
    if pace is not None:
        argv += ["--origin-ns", str(pace[0]), "--compression", repr(pace[1])]
    return argv


def start_worker(fhir: str, rows: Path, **popen: Any) -> subprocess.Popen:
    """A worker subprocess outside any cgroup and without a clock (tests; the live driver spawns
    them in cgroups)."""
    return subprocess.Popen(worker_argv(fhir, rows), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, **popen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paritybed.agents.live", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fhir", required=True, help="host:port of the FHIR server (paths in the commands carry the base)")
    ap.add_argument("--rows", required=True, type=Path, help="the replica's commands, one JSON object per line")
    ap.add_argument("--start", type=int, default=0, help="first line to run (a worker started again after a kill)")
    ap.add_argument("--clock-fd", type=int, help="virtual clock: an inherited fd of the kernel's vclock map")
    ap.add_argument("--clock-key", type=int, help="virtual clock: the replica's key (cgroup id) in that map")
    ap.add_argument("--origin-ns", type=int, help="real clock: CLOCK_MONOTONIC ns at simulated t=0 (rows are paced)")
    ap.add_argument("--compression", type=float, default=1.0, help="real clock: simulated seconds per wall second")
    args = ap.parse_args(argv)
    clock = ReplicaClock(args.clock_fd, args.clock_key) if args.clock_fd is not None else None
    pace = (args.origin_ns, args.compression) if args.origin_ns is not None else None
    return Worker(args.fhir, read_commands(args.rows), sys.stdin.fileno(), sys.stdout.fileno(), clock=clock,
                  pace=pace).run(args.start)


if __name__ == "__main__":
    sys.exit(main())
