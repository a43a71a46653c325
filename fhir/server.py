"""The embedded FHIR R4 server: a Starlette app on uvicorn, base path ``/fhir``.

Public entry points:

* `create_app(db)` — the ASGI app over a SQLite store (a file or ``:memory:``);
* `running_server(db=..., load=[folders])` — a context manager that serves the app with uvicorn
  in a background thread on a free loopback port and yields the base URL (tests);
* `running_server_processes(load=[folders])` — the same from one process per core over a
  shared SQLite file (live mode, where the server's searches bound the rate);
* `serve(...)` — what ``paritybed fhir serve`` runs.

uvicorn runs with uvloop and httptools, without access log: the same stack the benchmark
measures against a bare endpoint.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from paritybed.core.errors import EnvironmentProblem
from paritybed.fhir import routes
from paritybed.fhir.outcome import FhirError
from paritybed.fhir.store import Store

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
#: uvicorn settings shared by the server, the CLI and the benchmark (same stack everywhere).
UVICORN_OPTIONS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "access_log": False, "lifespan": "off"}


async def _fhir_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    return routes.error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    text = "no such path" if exc.status_code == 404 else exc.detail
    return routes.error_response(FhirError(exc.status_code, f"{text}: {request.method} {request.url.path}"))


async def _server_error(request: Request, exc: Exception) -> Response:
    return routes.error_response(FhirError(500, f"internal error: {type(exc).__name__}: {exc}"))


def create_app(db: str | Path = ":memory:", *, validate_bundles: bool = False, store: Store | None = None) -> Starlette:
    """The FHIR app over `db` (or over an existing `store`).

    `validate_bundles` also validates every resource of batch/transaction bundles with
    fhir.resources (create and update always validate; bundles skip it by default because it
    multiplies a Synthea load's time, see docs/fhir.md).
    """
    # Starlette tries routes in order until one matches: the read route comes first because
    # reads are the bulk of agent traffic (each route tried costs ~2 us).
    r = [
        Route("/fhir/{type}/{id}", routes.instance, methods=ALL_METHODS),
        Route("/fhir/metadata", routes.metadata, methods=ALL_METHODS),
        Route("/fhir/{type}", routes.type_level, methods=ALL_METHODS),
        Route("/fhir", routes.system, methods=ALL_METHODS),
        Route("/fhir/", routes.system, methods=ALL_METHODS),
        Route("/fhir/{type}/{id}/_history", routes.instance_history, methods=ALL_METHODS),
        Route("/fhir/{type}/{id}/_history/{vid}", routes.vread, methods=ALL_METHODS),
        Route("/fhir/{type}/{id}/{op}", routes.below_instance, methods=ALL_METHODS),
    ]
    app = Starlette(
        routes=r,
        exception_handlers={FhirError: _fhir_error, HTTPException: _http_error, Exception: _server_error},
    )
    app.state.store = store if store is not None else Store(db)
    app.state.validate_bundles = validate_bundles
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0 = a free port); EnvironmentProblem if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise EnvironmentProblem(f"cannot listen on {host}:{port}: {e.strerror}",
                                 hint="choose another --port, or stop what uses this one") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextmanager
def running_server(
    db: str | Path = ":memory:",
    host: str = "127.0.0.1",
    port: int = 0,
    load: Iterable[str | Path] = (),
    *,
    validate_bundles: bool = False,
    startup_timeout: float = 30.0,
) -> Iterator[str]:
    """Serve a FHIR app in a background thread; yields its base URL (``http://host:port/fhir``).

    `load` folders are loaded in-process before serving.  On exit the server stops and the
    thread is joined, so the port is free again.
    """
    import uvicorn

    from paritybed.fhir.loader import load_into_store

    app = create_app(db, validate_bundles=validate_bundles)
    store: Store = app.state.store
    try:
        for folder in load:
            load_into_store(store, folder, validate=validate_bundles)
        sock = bind(host, port)
    except BaseException:
        store.close()
        raise
    actual = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **UVICORN_OPTIONS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fhir-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise EnvironmentProblem(f"the FHIR server did not start on {host}:{actual}")
            time.sleep(0.01)
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{actual}/fhir"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        store.close()


@contextmanager
def running_server_processes(
    load: Iterable[str | Path],
    *,
    processes: int = 0,
    host: str = "127.0.0.1",
    port: int = 0,
    keep_alive_s: float = 600.0,
    startup_timeout: float = 60.0,
) -> Iterator[str]:
    """Serve the FHIR app from ``processes`` processes (0: one per core) sharing one listening
    socket and one SQLite file (WAL), loaded first with the `load` folders (a copy of the cached
    load when there is one: `loader.cached_db`); yields the base URL.

    Live mode uses it: the server's searches are what bounds live mode's rate, and one process
    (one interpreter) uses one core.  Each process is ``python -m paritybed.fhir.server``, an
    ordinary uvicorn server over the shared database (SQLite serializes the writers; reads run in
    parallel).  Idle keep-alive connections are kept for `keep_alive_s` (uvicorn's default is
    5 s), since a replica's connection may idle between its rows.  On exit the processes stop and
    the database is removed."""
    import subprocess
    import sys
    import tempfile

    from paritybed.fhir.loader import build_db, cached_db

    processes = processes or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="paritybed-fhir-") as tmp:
        db = Path(tmp) / "fhir.sqlite"
        folders = list(load)
        (cached_db if folders else build_db)(folders, db)
        # One process readies the file (WAL mode, schema, index version) before the servers open it:
        # switching a file to WAL takes an exclusive lock, and servers starting at once on a file
        # copied without a journal failed with "database is locked"
        Store(db).close()
        sock = bind(host, port)
        procs: list[subprocess.Popen] = []
        try:
            for _ in range(processes):
                procs.append(subprocess.Popen(
                    [sys.executable, "-P", "-m", "paritybed.fhir.server", "--fd", str(sock.fileno()), "--db", str(db),
                     "--keep-alive", str(keep_alive_s)], pass_fds=(sock.fileno(),), stdout=subprocess.PIPE))
            deadline = time.monotonic() + startup_timeout
            for p in procs:
                assert p.stdout is not None
                ready = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]
                if not ready or p.stdout.readline().strip() != b"ready":
                    raise EnvironmentProblem(f"the FHIR server process did not start on {host}:{sock.getsockname()[1]}")
            url_host = f"[{host}]" if ":" in host else host
            yield f"http://{url_host}:{sock.getsockname()[1]}/fhir"
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                if p.stdout is not None:
                    p.stdout.close()
            sock.close()


def serve_socket(fd: int, db: str | Path, keep_alive_s: float) -> None:
    """One server process of `running_server_processes`: the app over `db` on the inherited
    listening socket `fd`; prints ``ready`` once it accepts connections, stops on SIGTERM."""
    import uvicorn

    sock = socket.socket(fileno=fd)
    server = uvicorn.Server(uvicorn.Config(create_app(db), log_level="warning", timeout_keep_alive=keep_alive_s,
                                           **UVICORN_OPTIONS))

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        print("ready", flush=True)

    threading.Thread(target=announce, name="announce", daemon=True).start()
    server.run(sockets=[sock])


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    db: str | Path = ":memory:",
    load: Iterable[str | Path] = (),
    *,
    validate_bundles: bool = False,
    progress: bool = True,
) -> None:
    """Run the server in the foreground until interrupted (``paritybed fhir serve``)."""
    import uvicorn
    from rich.console import Console

    from paritybed.fhir.loader import counts_table, load_into_store

    console = Console(stderr=True)
    sock = bind(host, port)  # fail early, before a long load, if the port is taken
    app = create_app(db, validate_bundles=validate_bundles)
    store: Store = app.state.store
    for folder in load:
        counts = load_into_store(store, folder, progress=progress, console=console, validate=validate_bundles)
        console.print(counts_table(counts, f"loaded {folder}"))
    url_host = f"[{host}]" if ":" in host else host
    port = sock.getsockname()[1]
    console.print(f"FHIR R4 server at [bold]http://{url_host}:{port}/fhir[/] (storage: {db}); Ctrl-C stops it", soft_wrap=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", **UVICORN_OPTIONS)).run(sockets=[sock])
    finally:
        sock.close()
        store.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m paritybed.fhir.server --fd N --db FILE``: one process of `running_server_processes`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m paritybed.fhir.server", description=main.__doc__)
    ap.add_argument("--fd", type=int, required=True, help="an inherited listening socket")
    ap.add_argument("--db", required=True, help="the SQLite file to serve")
    ap.add_argument("--keep-alive", type=float, default=600.0, help="seconds an idle keep-alive connection is kept")
    args = ap.parse_args(argv)
    serve_socket(args.fd, args.db, args.keep_alive)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
