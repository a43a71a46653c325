"""FHIR server benchmark: reads/s and searches/s of the embedded server, as a ratio to a bare
endpoint of the same ASGI stack served the same way in the same run.

* data: the 37 shared Synthea patients (or ``PARITYBED_BENCH_SYNTHEA=<folder>``), loaded
  in-process into a SQLite file first (its load time is reported too);
* servers: each in its own subprocess — the FHIR app over that file, and a Starlette app whose
  one route returns a fixed small JSON — with the identical uvicorn settings
  (`paritybed.fhir.server.UVICORN_OPTIONS`: uvloop, httptools, no access log, one worker);
* load: another process on loopback with keep-alive connections: ``wrk`` when it is installed,
  else a small asyncio client (``load`` below; ``PARITYBED_BENCH_LOADGEN=wrk|asyncio`` forces
  one); reads cycle over 1000 Observation ids, searches
  over ``Observation?patient=X&category=laboratory`` for the 37 patients (first page, 20 entries);
* each target is measured twice, interleaved, and the better run kept (the machine is shared).

Goal (issue 2): reads >= 40% of the bare endpoint.  Searches are reported, no goal.

    python benchmarks/bench_fhir.py            # run and print the rows
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from paritybed.testdata import synthea_r4

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
DEFAULT_DATA = synthea_r4()  # the 37 real Synthea patients (paritybed/testdata.py)
SECONDS = float(os.environ.get("PARITYBED_BENCH_SECONDS", "4"))
CONNECTIONS = 16
LOADGEN = os.environ.get("PARITYBED_BENCH_LOADGEN", "auto")  # auto | wrk | asyncio
READ_GOAL = 0.40


# ---------------------------------------------------------------------------- servers
def _bare_app():
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    body = b'{"resourceType":"Patient","id":"bare","active":true}'

    async def bare(request):
        return Response(body, media_type="application/fhir+json; charset=utf-8")

    return Starlette(routes=[Route("/bare", bare)])


def _serve(kind: str, db: str, port: int) -> None:
    import uvicorn

    from paritybed.fhir.server import UVICORN_OPTIONS, bind, create_app

    app = create_app(db) if kind == "fhir" else _bare_app()
    sock = bind("127.0.0.1", port)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", **UVICORN_OPTIONS)).run(sockets=[sock])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server subprocess (started and stopped by this benchmark only)."""

    def __init__(self, kind: str, db: str) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(HERE), "serve", "--kind", kind, "--db", db, "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        probe = "/fhir/metadata" if kind == "fhir" else "/bare"
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(f"GET {probe} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    if s.recv(12).endswith(b"200"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            time.sleep(0.1)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------ load generator
async def _connection(port: int, requests: list[bytes], offset: int, warm_until: float, stop_at: float, out: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    length = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
    try:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                break
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            m = length.search(head)
            if m:
                await reader.readexactly(int(m.group(1)))
            if time.perf_counter() >= warm_until:
                key = "ok" if head[9:10] == b"2" else "errors"
                out[key] += 1
    finally:
        writer.close()


async def _drive(port: int, paths: list[str], seconds: float, connections: int) -> dict:
    requests = [f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/fhir+json\r\n\r\n".encode() for p in paths]
    out = {"ok": 0, "errors": 0}
    start = time.perf_counter()
    warm_until, stop_at = start + 1.0, start + 1.0 + seconds
    await asyncio.gather(*(_connection(port, requests, k * 7, warm_until, stop_at, out) for k in range(connections)))
    out["seconds"] = seconds
    return out


def _load_main(port: int, paths_file: str, seconds: float, connections: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    paths = Path(paths_file).read_text().split()
    print(json.dumps(asyncio.run(_drive(port, paths, seconds, connections))))


def _wrk(port: int, paths: list[str], seconds: float, tmp: Path) -> dict:
    script = tmp / "paths.lua"
    listed = ",".join(json.dumps(p) for p in paths)
    script.write_text(
        f"local paths = {{{listed}}}\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n"
        "  return wrk.format('GET', paths[(i % #paths) + 1], {['Accept'] = 'application/fhir+json'})\nend\n"
    )
    r = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{int(seconds)}s", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", r.stdout).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", r.stdout)
    return {"ok": rps * seconds, "errors": int(bad.group(1)) if bad else 0, "seconds": seconds}


def measure(port: int, paths: list[str], tmp: Path) -> tuple[float, str]:
    """Requests per second against `port`, and which load generator measured it."""
    if LOADGEN == "wrk" or (LOADGEN == "auto" and shutil.which("wrk")):
        out, tool = _wrk(port, paths, SECONDS, tmp), "wrk"
    else:
        paths_file = tmp / "paths.txt"
        paths_file.write_text("\n".join(paths))
        r = subprocess.run(
            [sys.executable, "-P", str(HERE), "load", "--port", str(port), "--paths", str(paths_file),
             "--seconds", str(SECONDS), "--connections", str(CONNECTIONS)],
            capture_output=True, text=True, timeout=SECONDS + 120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"load generator failed: {r.stderr}")
        out, tool = json.loads(r.stdout), "asyncio client"
    if out["errors"]:
        raise RuntimeError(f"{out['errors']} non-2xx answers during the benchmark")
    return out["ok"] / out["seconds"], tool


# ------------------------------------------------------------------------------- bench
def run() -> list[dict]:
    from paritybed.fhir.loader import build_db
    from paritybed.fhir.store import Store

    folder = Path(os.environ.get("PARITYBED_BENCH_SYNTHEA", DEFAULT_DATA))
    if not folder.is_dir():
        return [{"name": "FHIR server", "value": None, "unit": "", "note": f"skipped: no Synthea data at {folder}"}]
    with tempfile.TemporaryDirectory(prefix="paritybed-bench-fhir-") as tmpdir:
        tmp = Path(tmpdir)
        db = tmp / "fhir.sqlite"
        t0 = time.perf_counter()
        counts = build_db([folder], db)
        load_s = time.perf_counter() - t0
        store = Store(db)
        obs = [r[0] for r in store.query("SELECT id FROM resources WHERE type='Observation' ORDER BY rid LIMIT 1000", ())]
        patients = [r[0] for r in store.query("SELECT id FROM resources WHERE type='Patient' ORDER BY id", ())]
        store.close()
        reads = [f"/fhir/Observation/{i}" for i in obs]
        searches = [f"/fhir/Observation?patient={p}&category=laboratory" for p in patients]
        best = {"bare": 0.0, "read": 0.0, "search": 0.0}
        tool = ""
        for _ in range(2):
            with Server("bare", str(db)) as bare:
                rps, tool = measure(bare.port, ["/bare"], tmp)
                best["bare"] = max(best["bare"], rps)
            with Server("fhir", str(db)) as fhir:
                best["read"] = max(best["read"], measure(fhir.port, reads, tmp)[0])
                best["search"] = max(best["search"], measure(fhir.port, searches, tmp)[0])
    read_ratio = best["read"] / best["bare"]
    how = f"{CONNECTIONS} keep-alive connections, {tool}, best of 2 x {SECONDS:g} s"
    return [
        {"name": "bare Starlette endpoint (same uvicorn stack)", "value": best["bare"], "unit": "req/s", "note": how},
        {"name": "read Observation/<id>", "value": best["read"], "unit": "req/s", "baseline": best["bare"],
         "ratio": read_ratio, "goal": f">= {READ_GOAL:.0%} of bare", "passed": read_ratio >= READ_GOAL,
         "note": "1000 ids cycled"},
        {"name": "search Observation?patient=X&category=laboratory", "value": best["search"], "unit": "req/s",
         "baseline": best["bare"], "ratio": best["search"] / best["bare"], "goal": "(reported)",
         "note": f"{len(patients)} patients cycled; first page of 20 with total"},
        {"name": f"in-process load of {len(patients)} patients", "value": load_s, "unit": "s",
         "note": f"{sum(counts.values())} resources into SQLite"},
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="(internal) serve one benchmark target")
    s.add_argument("--kind", choices=("fhir", "bare"), required=True)
    s.add_argument("--db", required=True)
    s.add_argument("--port", type=int, required=True)
    g = sub.add_parser("load", help="(internal) the asyncio load generator")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--paths", required=True)
    g.add_argument("--seconds", type=float, required=True)
    g.add_argument("--connections", type=int, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        _serve(args.kind, args.db, args.port)
    elif args.cmd == "load":
        _load_main(args.port, args.paths, args.seconds, args.connections)
    else:
        for row in run():
            print(json.dumps(row))


if __name__ == "__main__":
    main()
