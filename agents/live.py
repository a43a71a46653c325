"""The live replica worker: one agent replica as a real process, for live (kernel) mode.

    python -P -m paritybed.agents.live --fhir 127.0.0.1:8080

reads one JSON command per line on stdin and answers one JSON line per command on stdout:

    {"row": 7, "kind": "fhir", "method": "GET", "path": "/fhir/Observation?patient=..&_count=50",
     "resource_type": "Observation", "claim_id": "", ...the columns body_for needs}
    {"row": 8, "kind": "egress", "address": "127.0.0.21:9443", "calls": 31}
    {"op": "quit"}
    -> {"row": 7, "ok": true, "status": 200, "errno": null, "ns": 812345}

FHIR requests go over ONE keep-alive HTTP/1.1 connection, each request (headers and body) written
with a single ``send``, because the kernel's ``sk_msg`` program classifies one message as one
request (docs/enforcement.md).  A row with a break-glass claim carries ``X-Break-Glass-Claim``.
When the kernel refuses, the worker reports it instead of crashing: ``EACCES`` from ``send`` is
an ``sk_msg`` drop (no byte left; the worker then reconnects, because the kernel keeps the drop
verdict on that socket), ``EPERM`` from ``connect`` is the cgroup ``connect4`` hook.  A connection the server closed is reopened and the request retried once.

An egress row is a TCP connect to the address followed by a close: the worker does NOT send the
``calls`` HTTP calls over it.  What enforcement sees of egress is the connect (``connect4``);
sending bytes would only put non-FHIR traffic through the replica's ``sk_msg`` program.
``calls`` is echoed back so the driver can account for it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno as errno_mod
import http.client
import select
import socket
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from paritybed.agents.bodies import body_for
from paritybed.core import pipe
from paritybed.core.pipe import PipeWorker

#: Trace columns a command carries (body_for's inputs plus what the request line needs).
COMMAND_FIELDS = ("kind", "method", "path", "resource_type", "resource_id", "patient_id", "context_id",
                  "context_kind", "workflow", "agent", "agent_class", "replica", "claim_id", "t_ns", "address",
                  "egress_calls")
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0


def command_for(row: Mapping[str, Any], i: int, start: str | None = None) -> dict[str, Any]:
    """The stdin command for trace row `i` (a dict of trace columns); `start` is the ISO instant
    of simulated t=0, used in the dates of bodies."""
    cmd: dict[str, Any] = {"row": i}
    for k in COMMAND_FIELDS:
        if k in row:
            cmd[k] = row[k]
    if row.get("kind") == "egress":
        cmd["calls"] = int(row.get("egress_calls", 0))
    if start:
        cmd["start"] = start
    return cmd


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


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
        origin = dt.datetime.fromisoformat(str(cmd["start"]))
        delta = origin - dt.datetime(1970, 1, 1, tzinfo=origin.tzinfo or dt.timezone.utc)
        ns = ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000 + int(cmd["t_ns"])
        out.append(f"X-Request-ID: pb-{ns}-{cmd.get('row', 0)}")
    return tuple(out)


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


class FhirConnection:
    """One keep-alive connection to the FHIR server (reopened when the server closes it)."""

    def __init__(self, hostport: str) -> None:
        self.hostport = hostport
        self.addr = _split(hostport)
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _connect(self) -> None:
        self.sock = socket.create_connection(self.addr, timeout=CONNECT_TIMEOUT_S)
        self.sock.settimeout(READ_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _peer_closed(self) -> bool:
        """True if the idle connection was closed by the server (readable with nothing to read)."""
        assert self.sock is not None
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send_all(self, data: bytes) -> None:
        assert self.sock is not None
        sent = self.sock.send(data)  # one send: one message for sk_msg
        while sent < len(data):  # a short write (rare on loopback): the rest follows
            sent += self.sock.send(data[sent:])

    def request(self, method: str, path: str, body: bytes = b"", claim: str | None = None,
                headers: Sequence[str] = ()) -> tuple[int | None, int | None]:
        """(HTTP status, None) or (None, errno) for one request."""
        data = request_bytes(method, path, self.hostport, body, claim, headers)
        for attempt in (0, 1):
            try:
                if self.sock is None or self._peer_closed():
                    self.close()
                    self._connect()
            except OSError as e:
                self.close()
                return None, e.errno or errno_mod.EIO
            try:
                self._send_all(data)
            except OSError as e:
                if e.errno == errno_mod.EACCES:
                    # sk_msg drop: nothing was sent.  The kernel (tcp_bpf) keeps the drop verdict
                    # on this socket, so every later send on it would fail without the program
                    # running again: reconnect for the next request, as HTTP clients do after a
                    # failed send (docs/kernel.md, "A dropped socket stays dropped").
                    self.close()
                    return None, e.errno
                self.close()
                if attempt == 0 and e.errno in (errno_mod.EPIPE, errno_mod.ECONNRESET, errno_mod.ENOTCONN):
                    continue
                return None, e.errno or errno_mod.EIO
            try:
                resp = http.client.HTTPResponse(self.sock, method=method)
                resp.begin()
                resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self.close()
                if attempt == 0:
                    continue
                return None, getattr(e, "errno", None) or errno_mod.ECONNRESET
            except (OSError, http.client.HTTPException) as e:
                self.close()
                return None, getattr(e, "errno", None) or errno_mod.EIO
            if resp.will_close:
                self.close()
            return resp.status, None
        return None, errno_mod.ECONNRESET


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
    """Execute one command; never raises for a refused request."""
    row = cmd.get("row")
    t0 = time.perf_counter_ns()
    kind = cmd.get("kind")
    if kind == "fhir":
        method = str(cmd.get("method", "GET"))
        try:
            body = body_for(cmd)
        except (ValueError, KeyError) as e:
            return {"row": row, "ok": False, "status": None, "errno": None, "ns": 0, "error": f"bad command: {e}"}
        status, err = conn.request(method, str(cmd["path"]), body, cmd.get("claim_id") or None, identity_headers(cmd))
        ok = status is not None and 200 <= status < 300
        return {"row": row, "ok": ok, "status": status, "errno": err, "ns": time.perf_counter_ns() - t0}
    if kind == "egress":
        err = egress(str(cmd["address"]))
        return {"row": row, "ok": err is None, "status": None, "errno": err, "ns": time.perf_counter_ns() - t0,
                "calls": int(cmd.get("calls", 0))}
    return {"row": row, "ok": False, "status": None, "errno": None, "ns": 0,
            "error": f"unknown command kind {kind!r} (expected fhir or egress; lanes are opened by the control plane)"}


def worker_argv(fhir: str) -> list[str]:
    """The command line of a replica worker talking to the FHIR server at ``fhir`` (host:port)."""
    return [sys.executable, "-P", "-m", "paritybed.agents.live", "--fhir", fhir]


def start_worker(fhir: str, **popen: Any) -> PipeWorker:
    """A worker subprocess outside any cgroup (tests; the live driver spawns them in cgroups)."""
    return PipeWorker(subprocess.Popen(worker_argv(fhir), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       bufsize=1, **popen))


def serve(hostport: str, stdin: Any = None, stdout: Any = None) -> int:
    """The command loop (stdin -> stdout) until EOF or {"op": "quit"} (paritybed.core.pipe)."""
    conn = FhirConnection(hostport)
    try:
        return pipe.serve(lambda cmd: handle(conn, cmd), stdin=stdin, stdout=stdout,
                          invalid=lambda msg: {"row": None, "ok": False, "status": None, "errno": None, "ns": 0,
                                               "error": msg})
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paritybed.agents.live", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fhir", required=True, help="host:port of the FHIR server (paths in the commands carry the base)")
    args = ap.parse_args(argv)
    return serve(args.fhir)


if __name__ == "__main__":
    sys.exit(main())
