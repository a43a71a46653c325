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
