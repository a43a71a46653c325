"""Start the real HAPI FHIR JPA server (R4, H2, BALP audit) as a Java process and wait for it.

    with running_hapi(db="mem") as hapi:        # a free port on 127.0.0.1
        load_folder(hapi.base, population)      # hapi.base == "http://127.0.0.1:<port>/fhir"
        ...
        hapi.rss_bytes(), hapi.audit_status()

The server is the Maven module in fhir/hapi/, built into the cache by set-up
(fhir/hapi_build.py).  Health is ``GET /fhir/metadata`` answering 200.  Environment problems
(exit 3): no Java, no build for the current sources, a port in use, a server that exits or
does not become healthy in time (its log's last lines are in the message).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.fhir.hapi_build import MAIN_CLASS, SETUP_HINT, classpath, hapi_version, installed_build
from paritybed.fhir.server import bind

#: JVM heap: H2 keeps an in-memory database in the heap (the 37 test patients, 27k resources,
#: and their BALP AuditEvents take about 1.5 GB); a file database needs far less.
HEAP = {"mem": "3g", "file": "1g"}
STARTUP_TIMEOUT_S = 300.0


@dataclass
class HapiProcess:
    """A running HAPI FHIR server: its base URL, process and log file."""

    base: str
    process: subprocess.Popen[bytes]
    log: Path
    db: str

    @property
    def root(self) -> str:
        return self.base.rsplit("/fhir", 1)[0]

    def rss_bytes(self) -> int:
        """Resident memory of the Java process (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def audit_status(self) -> dict[str, Any]:
        """The BALP writer's counters: pending, written, failed, last_error."""
        return httpx.get(f"{self.root}/paritybed/audit", timeout=10).json()


def jdbc_url(db: str) -> str:
    """``mem`` -> an in-memory H2 database; a path -> an H2 file database there (``.mv.db``)."""
    if db == "mem":
        return "jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1"
    p = Path(db).expanduser().resolve()
    if p.is_dir():
        raise InputError(f"--db {db}: expected 'mem' or a database file path, found a folder")
    p.parent.mkdir(parents=True, exist_ok=True)
    name = str(p)[: -len(".mv.db")] if str(p).endswith(".mv.db") else str(p)
    return f"jdbc:h2:file:{name}"


def java_command(port: int, db: str, heap: str | None = None) -> list[str]:
    """The command line of the server (Java from PATH, the cached build's class path)."""
    java = shutil.which("java")
    if java is None:
        raise EnvironmentProblem("Java not found: the HAPI FHIR server needs Java 17 (`java` is not on PATH)",
                                 hint=SETUP_HINT)
    target = installed_build()
    heap = heap or HEAP["mem" if db == "mem" else "file"]
    # Serial GC: the smallest footprint, and no GC threads competing for this machine's 2 cores.
    # IPv4 sockets, as every other paritybed server and the live-mode hooks (connect4) use.
    return [java, f"-Xmx{heap}", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true", "-cp", classpath(target), MAIN_CLASS, f"--server.port={port}", "--server.address=127.0.0.1",
            f"--spring.datasource.url={jdbc_url(db)}"]


def _free_port(port: int) -> int:
    """`port` if it is free (else EnvironmentProblem, exit 3), or any free port for 0.

    A connect test comes first: a Java server listens on an IPv6 socket (::ffff:127.0.0.1),
    which a plain IPv4 bind with SO_REUSEADDR does not see as taken."""
    if port:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            pass
        else:
            raise EnvironmentProblem(f"cannot listen on 127.0.0.1:{port}: something already answers there",
                                     hint="choose another --port, or stop what uses this one")
    sock = bind("127.0.0.1", port)
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()


def _tail(log: Path, n: int = 15) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def wait_healthy(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll ``GET base/metadata`` until 200; EnvironmentProblem if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as c:
        while True:
            code = process.poll()
            if code is not None:
                raise EnvironmentProblem(f"the HAPI FHIR server exited with code {code} before it was healthy; "
                                         f"the end of {log}:\n{_tail(log)}")
            try:
                if c.get(f"{base}/metadata", headers={"Accept": "application/fhir+json"}).status_code == 200:
                    if process.poll() is None:  # ours answered, not another server on the port
                        return
                    continue
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"the HAPI FHIR server did not answer {base}/metadata within {timeout:.0f} s; "
                                         f"the end of {log}:\n{_tail(log)}")
            time.sleep(0.5)


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (Spring closes the database cleanly), SIGKILL after `timeout`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_hapi(port: int = 0, db: str = "mem", *, heap: str | None = None, log: str | Path | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT_S) -> Iterator[HapiProcess]:
    """Start HAPI FHIR on 127.0.0.1:`port` (0: a free one) with H2 `db` (``mem`` or a file path),
    wait until it is healthy, yield it, stop it on exit."""
    port = _free_port(port)
    cmd = java_command(port, db, heap)
    if log is None:
        fd, name = tempfile.mkstemp(prefix="paritybed-hapi-", suffix=".log")
        os.close(fd)
        log = name
    log = Path(log)
    with log.open("wb") as f:
        process = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/fhir"
        wait_healthy(base, process, log, startup_timeout)
        yield HapiProcess(base=base, process=process, log=log, db=db)
    finally:
        stop(process)


def describe() -> str:
    """One line for the CLI: which HAPI this is."""
    return f"HAPI FHIR {hapi_version()} JPA server (R4, H2, BALP audit)"
