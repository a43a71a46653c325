"""Load a Synthea output folder into a FHIR server: over HTTP into any server, or in-process.

Both paths read the folder through `paritybed.fhir.bundles` (load order: organizations and
locations, practitioners, then patients; `prepare_for_load` turns Synthea's contained Coverage
into standalone Coverage) and send each file as one batch/transaction Bundle.

Ids.  By default every ``POST`` entry with a ``urn:uuid:<uuid>`` fullUrl and no ``ifNoneExist``
is sent as ``PUT <Type>/<uuid>``: every server (the embedded one, HAPI with
``client_id_strategy=ANY``) then keeps Synthea's ids, so the population index's ids are the
server's ids, and loading twice updates in place instead of duplicating.  Entries with
``ifNoneExist`` (Synthea's organizations, locations, practitioners) stay conditional creates:
the patient bundles find them by identifier, and on HAPI they get HAPI's ids.  ``--server-ids``
sends the bundles unchanged (POST; HAPI assigns every id; the embedded server uses the uuid).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.fhir.bundles import is_infrastructure, prepare_for_load, read_bundle, synthea_files
from paritybed.fhir.outcome import FhirError
from paritybed.fhir.store import Store

if TYPE_CHECKING:
    from paritybed.fhir.bulk import BulkLoader

URN = "urn:uuid:"
RETRY_STATUSES = {429, 500, 502, 503, 504}


def keep_ids(bundle: dict[str, Any]) -> dict[str, Any]:
    """POST entries with a urn:uuid fullUrl and no ifNoneExist become ``PUT Type/<uuid>``."""
    entries = []
    for entry in bundle.get("entry", []):
        req = entry.get("request") or {}
        full = entry.get("fullUrl") or ""
        if req.get("method") == "POST" and full.startswith(URN) and not req.get("ifNoneExist"):
            rid = full[len(URN):]
            res = {**entry["resource"], "id": rid}
            entry = {**entry, "resource": res, "request": {"method": "PUT", "url": f"{res['resourceType']}/{rid}"}}
        entries.append(entry)
    return {**bundle, "entry": entries}


def prepared(path: Path, *, server_ids: bool) -> dict[str, Any]:
    """One file of the folder as the Bundle that is sent."""
    bundle = prepare_for_load(read_bundle(path))
    if bundle.get("type") not in ("batch", "transaction"):
        raise InputError(f"{path}: Bundle.type is {bundle.get('type')!r}; only batch and transaction bundles load")
    return bundle if server_ids else keep_ids(bundle)


def _tally(path: Path, sent: dict[str, Any], answer: dict[str, Any], counts: Counter[str], failures: list[str]) -> None:
    """Count the entries the server accepted per resource type; collect the failed ones."""
    answers = answer.get("entry") or []
    for i, entry in enumerate(sent.get("entry", [])):
        resp = (answers[i] if i < len(answers) and isinstance(answers[i], dict) else {}).get("response") or {}
        status = str(resp.get("status", ""))
        rtype = entry["resource"].get("resourceType", "?")
        if status[:1] == "2":
            counts[rtype] += 1
        else:
            diag = ""
            for issue in (resp.get("outcome") or {}).get("issue", [])[:1]:
                diag = issue.get("diagnostics", "")
            failures.append(f"{path.name} entry {i} ({rtype}): {status or 'no response'} {diag}".rstrip())


def _progress(enabled: bool, console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[current]}"), TimeElapsedColumn(),
        console=console, disable=not enabled, transient=False,
    )


def _outcome_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        return "; ".join(i.get("diagnostics", "") for i in data.get("issue", [])) or resp.text[:300]
    except ValueError:
        return resp.text[:300]


def _post(client: httpx.Client, url: str, body: bytes, path: Path, retries: int) -> dict[str, Any]:
    """POST one bundle, retrying connection errors, 429 and 5xx with exponential backoff."""
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            resp = client.post(url, content=body, headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
        except httpx.TransportError as e:
            if attempt == retries:
                raise EnvironmentProblem(f"FHIR server at {url} unreachable while loading {path.name}: {e}") from None
        else:
            if resp.status_code < 300:
                return resp.json()
            if resp.status_code not in RETRY_STATUSES:
                raise InputError(f"{path}: the server refused the bundle ({resp.status_code}): {_outcome_text(resp)}")
            if attempt == retries:
                raise EnvironmentProblem(f"FHIR server at {url} kept failing on {path.name} ({resp.status_code}): {_outcome_text(resp)}")
            after = resp.headers.get("Retry-After", "")
            if after.isdigit():
                delay = max(delay, float(after))
        time.sleep(delay)
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def load_folder(
    url: str,
    folder: str | Path,
    *,
    progress: bool = True,
    server_ids: bool = False,
    retries: int = 6,
    timeout: float = 600.0,
    console: Console | None = None,
) -> dict[str, int]:
    """Load a Synthea folder into the FHIR server at `url` (its base, e.g. ``.../fhir``).

    Returns the number of resources per type the server accepted (created, updated or, for a
    conditional create, already present).  Raises InputError naming the file and entry when
    the server refuses something, EnvironmentProblem when it cannot be reached.
    """
    base = url.rstrip("/")
    files = synthea_files(Path(folder))
    counts: Counter[str] = Counter()
    failures: list[str] = []
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0)) as client:
        try:
            meta = client.get(f"{base}/metadata", headers={"Accept": "application/fhir+json"})
        except httpx.TransportError as e:
            raise EnvironmentProblem(f"cannot reach a FHIR server at {base}: {e}",
                                     hint="start one: paritybed fhir serve, or docker compose up -d --wait") from None
        if meta.status_code != 200:
            raise EnvironmentProblem(f"{base}/metadata answered {meta.status_code}: is {base} a FHIR base URL?")
        with _progress(progress, console) as bar:
            task = bar.add_task("loading bundles", total=len(files), current="")
            for path in files:
                bar.update(task, current=path.name)
                sent = prepared(path, server_ids=server_ids)
                answer = _post(client, base, orjson.dumps(sent), path, retries)
                _tally(path, sent, answer, counts, failures)
                bar.advance(task)
    _raise_failures(failures, counts)
    return dict(sorted(counts.items()))


def _raise_failures(failures: list[str], counts: Counter[str]) -> None:
    if failures:
        shown = "\n  ".join(failures[:10])
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        raise InputError(
            f"{len(failures)} entries were refused ({sum(counts.values())} loaded):\n  {shown}{more}"
        )


def load_into_store(
    store: Store,
    folder: str | Path,
    *,
    server_ids: bool = False,
    validate: bool = False,
    progress: bool = False,
    console: Console | None = None,
    prebuilt_db: bool = True,
    derived: BulkLoader | None = None,
) -> dict[str, int]:
    """In-process load (``serve --load``, tests): same bundles, same transaction semantics.

    Skips HTTP and JSON re-encoding but runs every bundle through the same batch/transaction
    code the HTTP route uses, so what is stored is what an HTTP load would store.  A derived
    population (fhir/derive.py) loads in bulk from its base instead (same result, fhir/bulk.py),
    and into an empty store from its prebuilt database (`prebuilt_db`, built on first use).
    `derived`: the bulk loader of `folder` when the caller made it already (its base is read once).
    """
    from paritybed.fhir.bulk import derived_loader, prebuilt
    from paritybed.fhir.transaction import process

    files = synthea_files(Path(folder))
    if prebuilt_db and not (server_ids or validate) and store.is_empty():
        db = prebuilt(files[0].parent)
        if db is not None:
            store.restore(db)
            return store.counts()
    counts: Counter[str] = Counter()
    failures: list[str] = []

    def one(path: Path) -> dict[str, int]:
        sent = prepared(path, server_ids=server_ids)
        try:
            answer = process(store, sent, "", validate_resources=validate)
        except FhirError as e:
            raise InputError(f"{path}: {e.diagnostics}") from None
        got: Counter[str] = Counter()
        _tally(path, sent, answer, got, failures)
        return got

    # A derived population (fhir/derive.py) loads from its base in bulk: same result, ~20x faster.
    bulk = derived if derived is not None else None if (server_ids or validate) else derived_loader(store, files[0].parent)
    with _progress(progress, console) as bar:
        task = bar.add_task("loading bundles", total=len(files), current="")
        for path in files:
            if bulk is not None and not is_infrastructure(path):
                continue
            bar.update(task, current=path.name)
            counts.update(one(path))
            bar.advance(task)
        if bulk is not None:
            bar.update(task, current="derived patients (in bulk from their base)")
            counts.update(bulk.load(progress=lambda n: bar.update(task, advance=n)))
    store.analyze()
    _raise_failures(failures, counts)
    return dict(sorted(counts.items()))


def prebuilt_first(folders: Iterable[str | Path]) -> tuple[Path | None, list[Path]]:
    """(the prebuilt database of the first folder if it is a derived population, else None; the
    folders still to load on top of it).  A database file of `folders` starts as a copy of that
    database (fhir/bulk.py: built once per population, a file copy instead of a load)."""
    from paritybed.fhir.bulk import prebuilt

    folders = [Path(f) for f in folders]
    if not folders:
        return None, folders
    ready = prebuilt(synthea_files(folders[0])[0].parent)
    return (ready, folders[1:]) if ready is not None else (None, folders)


def build_db(folders: Iterable[str | Path], db: str | Path, *, progress: bool = False) -> dict[str, int]:
    """Load folders into a new SQLite file (benchmarks and tests reuse one such file).  A derived
    population first in line is its prebuilt database, copied (`prebuilt_first`)."""
    db = Path(db)
    if db.exists():
        raise InputError(f"{db} already exists")
    ready, folders = prebuilt_first(folders)
    counts: Counter[str] = Counter()
    if ready is not None:
        shutil.copyfile(ready, db)  # a file copy: no page-by-page write through the journal
    store = Store(db)
    try:
        if not store.is_empty():
            counts.update(store.counts())
        for folder in folders:
            counts.update(load_into_store(store, folder, progress=progress))
    finally:
        store.close()
    return dict(sorted(counts.items()))


#: Loaded databases kept in the cache (the most recently used; each is about 3 MB per patient).
CACHED_DBS = 4


def cached_db(folders: Iterable[str | Path], db: str | Path) -> None:
    """`build_db(folders, db)`, copied from paritybed's cache (``fhir-db/``) when the same files
    (by content) were loaded under the same search index before.  Live mode starts its server
    from such a copy every run: the default week's production patients took 20-40 s to load here,
    the copy takes a fraction of a second.  The server then writes to its copy, never the cache.
    A derived population alone is copied from its own prebuilt database (`prebuilt_first`), not
    cached a second time."""
    import hashlib
    import os

    from paritybed.fhir.population import cache_dir, fingerprint_files
    from paritybed.fhir.store import INDEX_VERSION

    folders = [Path(f) for f in folders]
    ready, rest = prebuilt_first(folders)
    if ready is not None and not rest:
        shutil.copyfile(ready, db)
        return
    h = hashlib.sha256(INDEX_VERSION.encode())
    for f in folders:
        h.update(fingerprint_files(synthea_files(f)).encode())
    where = cache_dir() / "fhir-db"
    cached = where / f"{h.hexdigest()[:24]}.sqlite"
    if not cached.is_file():
        where.mkdir(parents=True, exist_ok=True)
        part = where / f"{cached.name}.{os.getpid()}.part"
        part.unlink(missing_ok=True)
        try:
            build_db(folders, part)
            os.replace(part, cached)
        finally:
            part.unlink(missing_ok=True)
        for old in sorted(where.glob("*.sqlite"), key=lambda p: p.stat().st_mtime)[:-CACHED_DBS]:
            old.unlink(missing_ok=True)
    os.utime(cached)  # recently used
    shutil.copyfile(cached, db)


def counts_table(counts: dict[str, int], title: str) -> Table:
    """The per-type table the CLI prints after a load."""
    table = Table(title=title)
    table.add_column("resource type")
    table.add_column("resources", justify="right")
    for rtype, n in sorted(counts.items()):
        table.add_row(rtype, str(n))
    table.add_row("[bold]total", f"[bold]{sum(counts.values())}")
    return table
