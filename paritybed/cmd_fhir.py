"""`paritybed fhir serve` (the embedded FHIR R4 server) and `paritybed fhir load` (into any server).

Heavy imports happen inside the commands so that `paritybed --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)

fhir_app = typer.Typer(
    name="fhir",
    help=(
        "The embedded FHIR R4 server, and loading Synthea patients into any FHIR server "
        "(the embedded one or HAPI FHIR).\n\n"
        "Example: paritybed fhir serve --load populations/ma-20 --port 8080"
    ),
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the `fhir` command group to the CLI."""
    app.add_typer(fhir_app)


@fhir_app.command(
    "serve",
    help=(
        "Serve FHIR R4 (JSON) at http://HOST:PORT/fhir from SQLite, optionally loading Synthea "
        "folders first. Runs until Ctrl-C.\n\n"
        "Example: paritybed fhir serve --db runs/fhir.sqlite --load populations/ma-20 --port 8080"
    ),
)
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8080, "--port", help="TCP port (0: any free port)"),
    db: str = typer.Option(":memory:", "--db", help="SQLite file to keep the data in (default: memory only)"),
    load: Optional[List[Path]] = typer.Option(None, "--load", help="Synthea output folder to load before serving (repeatable)"),
    validate: bool = typer.Option(False, "--validate", help="also validate every resource of batch/transaction bundles with fhir.resources (slower loads)"),
) -> None:
    from paritybed.fhir.server import serve

    if db != ":memory:":
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    serve(host, port, db, load or [], validate_bundles=validate)


@fhir_app.command(
    "load",
    help=(
        "Load a Synthea output folder into a FHIR server over HTTP, in order (organizations, "
        "practitioners, patients), with retries, and print the resources per type. Synthea's ids "
        "are kept (POST entries are sent as PUT Type/<uuid>; HAPI needs client_id_strategy=ANY, "
        "as in docker-compose.yml) unless --server-ids.\n\n"
        "Example: paritybed fhir load --url http://localhost:8080/fhir populations/ma-20"
    ),
)
def load_command(
    folder: Path = typer.Argument(..., help="Synthea output folder (its fhir/ subfolder or the folder above)"),
    url: str = typer.Option("http://127.0.0.1:8080/fhir", "--url", help="base URL of the FHIR server"),
    server_ids: bool = typer.Option(False, "--server-ids", help="send the bundles unchanged: the server assigns ids"),
    retries: int = typer.Option(6, "--retries", help="retries per bundle on connection errors, 429 and 5xx"),
) -> None:
    import time

    from paritybed.fhir.loader import counts_table, load_folder

    t0 = time.perf_counter()
    counts = load_folder(url, folder, progress=True, server_ids=server_ids, retries=retries, console=err)
    out.print(counts_table(counts, f"loaded into {url} in {time.perf_counter() - t0:.1f} s"))


@fhir_app.command(
    "hapi",
    help=(
        "Run the real HAPI FHIR JPA server (R4, H2) without Docker: the Maven module in fhir/hapi/, "
        "built by `make setup`. Waits until GET /fhir/metadata answers, prints where it listens, "
        "runs until Ctrl-C. Every read, search, create and update is recorded as an IHE BALP "
        "AuditEvent (export them with `paritybed fhir export-audit`).\n\n"
        "Example: paritybed fhir hapi --port 8080 --db runs/hapi/fhir"
    ),
)
def hapi_command(
    port: int = typer.Option(8080, "--port", help="TCP port on 127.0.0.1 (0: any free port)"),
    db: str = typer.Option("mem", "--db", help="'mem' (in memory, lost at exit) or an H2 database file path (kept)"),
    heap: Optional[str] = typer.Option(None, "--heap", help="Java heap (-Xmx), e.g. 2g (default: 3g in memory, 1g with a file)"),
) -> None:
    import signal
    import time

    from paritybed.fhir.hapi_launcher import describe, running_hapi

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM/SIGHUP too: leave through the launcher, which stops Java

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    t0 = time.perf_counter()
    err.print(f"starting {describe()} on 127.0.0.1:{port or '<free port>'} (about 20-40 s)...")
    try:
        with running_hapi(port, db, heap=heap) as hapi:
            storage = "memory" if db == "mem" else str(Path(db).resolve())
            out.print(f"HAPI FHIR R4 at [bold]{hapi.base}[/] (H2: {storage}; healthy after "
                      f"{time.perf_counter() - t0:.0f} s; log: {hapi.log}); Ctrl-C stops it", soft_wrap=True)
            hapi.process.wait()
    except KeyboardInterrupt:
        err.print("stopped HAPI FHIR")
        return
    if hapi.process.returncode not in (0, 143, -15, None):
        from paritybed.core.errors import EnvironmentProblem

        raise EnvironmentProblem(f"the HAPI FHIR server exited with code {hapi.process.returncode}; see {hapi.log}")


@fhir_app.command(
    "export-audit",
    help=(
        "Export the AuditEvents a FHIR server recorded (HAPI's BALP trail) as NDJSON for "
        "`paritybed profile`. Waits for paritybed's HAPI launcher to store every pending event; "
        "events recorded after the export starts (its own searches) are left out.\n\n"
        "Example: paritybed fhir export-audit --url http://127.0.0.1:8080/fhir --since 2026-12-03T14:00:00Z --out audit.ndjson"
    ),
)
def export_audit_command(
    out_path: Path = typer.Option(..., "--out", help="NDJSON file to write"),
    url: str = typer.Option("http://127.0.0.1:8080/fhir", "--url", help="base URL of the FHIR server"),
    since: Optional[str] = typer.Option(None, "--since", help="only events recorded at or after this instant (ISO 8601)"),
    until: Optional[str] = typer.Option(None, "--until", help="only events recorded before this instant (default: now)"),
) -> None:
    from paritybed.fhir.audit_export import export_auditevents

    n = export_auditevents(url, out_path, since=since, until=until)
    out.print(f"{n} AuditEvents from {url} -> {out_path}")
