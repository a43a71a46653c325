"""A scripted network client to run inside a replica cgroup, and a raw TCP sink to count what
arrives: the kernel tests, the benchmark and `paritybed enforce` demos drive real sockets with
them and see exactly what the caller sees (errno) and what the server received.

The client (``python -m paritybed.enforcer.probe``) reads one JSON command per line on stdin and
answers one JSON line on stdout:

    {"op": "http", "addr": "127.0.0.1:8080", "writes": ["GET /fhir/... HTTP/1.1\\r\\n\\r\\n"],
     "fresh": false, "wait": true, "keep_on_error": false}
                                                -> {"ok": true, "status": 200} | {"ok": false, "errno": 13}
    {"op": "connect", "addr": "127.0.0.21:9443"}   -> {"ok": true} | {"ok": false, "errno": 1}
    {"op": "udp", "addr": "127.0.0.21:53"}         -> {"ok": true} | {"ok": false, "errno": 1}
    {"op": "tfo", "addr": ..., "data": "GET ..."}  -> sendto(MSG_FASTOPEN), then wait up to 1 s for a reply
    {"op": "sendfile", "addr": ..., "data": "GET ..."} -> the bytes from a file with sendfile(2)
    {"op": "exit"}                              (or "quit": the pipe protocol of paritybed.core.pipe)

Writes are latin-1 strings, sent with one ``send`` each.  After a failed send the connection is
closed (unless ``keep_on_error``) and the next command reconnects: the kernel keeps a drop
verdict on that socket, so every later send on it fails too.
A refused or unanswered connect counts as allowed: only EPERM/EACCES are the enforcer's.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
from typing import Any

from paritybed.core.pipe import PipeWorker, serve


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _read_response(s: socket.socket) -> int | None:
    """Read one HTTP response (status line, headers, Content-Length body); its status or None."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    n = next((int(x.split(b":", 1)[1]) for x in lines[1:] if x.lower().startswith(b"content-length:")), 0)
    while len(body) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1])


class Client:
    def __init__(self) -> None:
        self.conns: dict[str, socket.socket] = {}

    def http(self, cmd: dict[str, Any]) -> dict[str, Any]:
        addr = cmd["addr"]
        s = self.conns.get(addr)
        if s is None or cmd.get("fresh"):
            if s is not None:
                s.close()
            try:
                s = socket.create_connection(_addr(addr), timeout=cmd.get("timeout", 5))
            except OSError as e:
                return {"ok": False, "errno": e.errno, "stage": "connect"}
            self.conns[addr] = s
        try:
            for w in cmd["writes"]:
                s.sendall(w.encode("latin-1"))
        except OSError as e:
            if not cmd.get("keep_on_error"):
                s.close()
                del self.conns[addr]
            return {"ok": False, "errno": e.errno}
        if not cmd.get("wait", True):
            return {"ok": True}
        try:
            status = _read_response(s)
        except (OSError, ValueError, IndexError):
            status = None
        if status is None:
            s.close()
            del self.conns[addr]
        return {"ok": True, "status": status}

    @staticmethod
    def connect(cmd: dict[str, Any]) -> dict[str, Any]:
        try:
            socket.create_connection(_addr(cmd["addr"]), timeout=cmd.get("timeout", 1)).close()
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EACCES):
                return {"ok": False, "errno": e.errno}
        except TimeoutError:
            pass
        return {"ok": True}

    @staticmethod
    def tfo(cmd: dict[str, Any]) -> dict[str, Any]:
        """TCP Fast Open: the request rides on (or queues behind) the SYN, before any sendmsg."""
        host, port = _addr(cmd["addr"])
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.sendto(cmd["data"].encode("latin-1"), socket.MSG_FASTOPEN, (host, port))  # blocking: queued
                s.settimeout(1.0)
                return {"ok": True, "status": _read_response(s)}
            except (OSError, ValueError) as e:
                return {"ok": False, "errno": getattr(e, "errno", None)}

    @staticmethod
    def sendfile(cmd: dict[str, Any]) -> dict[str, Any]:
        import tempfile

        with tempfile.TemporaryFile() as f, socket.create_connection(_addr(cmd["addr"]), timeout=1.0) as s:
            f.write(cmd["data"].encode("latin-1"))
            f.flush()
            try:
                s.sendfile(f, 0)
                return {"ok": True, "status": _read_response(s)}
            except OSError as e:
                return {"ok": False, "errno": e.errno}

    @staticmethod
    def udp(cmd: dict[str, Any]) -> dict[str, Any]:
        host, port = _addr(cmd["addr"])
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(b"x", (host, port))
            except OSError as e:
                return {"ok": False, "errno": e.errno}
        return {"ok": True}


def main() -> None:
    c = Client()
    ops = {"http": c.http, "connect": c.connect, "udp": c.udp, "tfo": c.tfo, "sendfile": c.sendfile}
    serve(lambda cmd: ops[cmd["op"]](cmd))


class Sink:
    """A raw TCP server on loopback that records every byte received and answers each request
    head with ``200 {}``: the counter behind 'nothing reached the server'."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 2\r\n\r\n{}"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        v6 = ":" in host
        self.server = socket.create_server((host, port), family=socket.AF_INET6 if v6 else socket.AF_INET)
        self.address = f"[{host}]:{self.server.getsockname()[1]}" if v6 else f"{host}:{self.server.getsockname()[1]}"
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        self._reading = threading.Event()  # cleared: connections are not read (their buffers fill up)
        self._reading.set()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            while True:
                self._reading.wait()
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.received.append(data)
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    n = next((int(x.split(b":", 1)[1]) for x in head.split(b"\r\n")[1:]
                              if x.lower().startswith(b"content-length:") and x.split(b":", 1)[1].strip().isdigit()), 0)
                    pending = pending[n:]
                    try:
                        conn.sendall(self.RESPONSE)
                    except OSError:
                        return

    def data(self) -> bytes:
        with self.lock:
            return b"".join(self.received)

    def pause(self) -> None:
        """Stop reading (each connection finishes the read it is in): a client's buffers fill up."""
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    def close(self) -> None:
        self._stop = True
        self.server.close()


class ProbeProcess(PipeWorker):
    """The client running inside a cgroup (started by KernelEnforcer.spawn), driven over pipes."""

    def __call__(self, **cmd: Any) -> dict[str, Any]:
        answer = self.ask(cmd)
        if answer is None:
            raise RuntimeError(f"probe process exited ({self.proc.poll()})")
        return answer


def probe_argv() -> list[str]:
    return [sys.executable, "-m", "paritybed.enforcer.probe"]


if __name__ == "__main__":
    main()
