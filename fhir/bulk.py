"""Loading a derived population into the embedded store from its base, without re-indexing
every copy: what makes ~250,000 resources per arm load in seconds instead of minutes.

The generic load (fhir/loader.py) runs each bundle through the transaction code: every resource
is rebuilt, its references rewritten and its search index extracted (~0.5-1 ms a resource
here).  A derived population is thousands of copies of a few thousand *chart variants*
(fhir/derive.py), and a copy differs from its variant only in ids, dates and names, so:

* each variant is stored and indexed once, exactly as the transaction code would store it
  (same body, same rows from `index.extract`), then cut at the same ids, dates and names;
* each copy is its variants' pieces joined with the copy's own values; its index rows are the
  variant's rows with the same substitution (token values), dates moved by the copy's shift
  (date rows and date components of composites; quantities and numbers do not move), and its
  Patient (unique per copy) is indexed in full;
* rows are inserted in bulk, in the order the transaction code writes them.

The result is the generic load's, byte for byte and row for row, except ``meta.lastUpdated``
(the store's clock) — tests/test_derive.py loads the same folder both ways and compares.  It is
used only when it applies: the folder is a derived population whose manifest, files and base
are what the manifest says, and none of its patients is in the store yet (else the generic
load, which updates in place).  A base value the shift cannot move
exactly (a year or year-month date) makes its variant be indexed for every copy instead.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson

from paritybed.core import r4spec
from paritybed.core.errors import InputError
from paritybed.fhir import derive, reidentify
from paritybed.fhir.bundles import synthea_files
from paritybed.fhir.dates import iso_instant, parse_range
from paritybed.fhir.index import Rows, extract
from paritybed.fhir.population import fingerprint_files
from paritybed.fhir.store import INDEX_TABLES, INDEX_VERSION, SCHEMA, Store
from paritybed.fhir.transaction import _Resolver
from paritybed.fhir.types import check_bindings

DAY = 86400.0
INF = float("inf")
_DATE_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_LU = "@@paritybed-lastUpdated@@"
#: A JSON string that is a date of year or year-month precision (the shift leaves it as is).
_PARTIAL_DATE = re.compile(rb'"[0-9]{4}(-[0-9]{2})?"')
BATCH = 200  # copies per SQLite transaction
#: Processes building the rows of one load (the machine this was measured on has 2 cores).
WORKERS = min(2, os.cpu_count() or 1)
_CONDITIONAL = re.compile(rb'"reference":"([A-Z][A-Za-z]+\?[^"\\]+)"')
#: The prebuilt database of a derived population, kept in its cache folder (see `prebuilt`).
DB_NAME = "fhir.sqlite"
#: Search-index lookup indexes dropped during a bulk load and created again after it.
LOOKUP_INDEXES = ("tokens_lookup", "dates_lookup", "numbers_lookup", "combos_lookup")


def _lookup_index_sql() -> list[str]:
    """The CREATE INDEX statements of `LOOKUP_INDEXES`, from the store's schema."""
    return [stmt.strip() for stmt in SCHEMA.split(";") if any(f"EXISTS {n} " in stmt for n in LOOKUP_INDEXES)]

#: A date bound: a float moved by adding the shift (whole seconds: exact), or the date string it
#: was parsed from, re-parsed after the shift (fractions of a second: adding would round).
Bound = float | str | None


@dataclass
class Stored:
    """One chart variant as the store holds it, cut for copying."""

    rtype: str
    id_slot: bytes  # the variant's id (its copy's id is the copy's value for it)
    body: reidentify.Template
    tokens: list[tuple[str, str | None, "reidentify.Template | str | _Id"]]
    dates: list[tuple[str, Bound, Bound]]
    numbers: list[tuple[str, float, float, str | None, str | None]]
    combos: list[tuple[str, int, int, str | None, reidentify.Template | str | None, Bound, Bound, bool]]  # ..., is a date
    exact: bool  # False: re-index every copy (a date the shift cannot move exactly)


def _cut_value(value: str | None, transform: reidentify.Transform) -> reidentify.Template | str | None:
    """A token value as a copy writes it: the value itself when it holds no id, date or name."""
    if value is None:
        return None
    hit = transform.values.get(value)
    if hit is None:
        t = reidentify.cut(value.encode(), transform)
        if not t.slots:
            hit = value
        elif t.slots[0][0] == "u" and t.chunks == [b"", b""]:
            hit = _Id(t.slots[0][1])  # the most common: a reference to one of the record's resources
        else:
            hit = t
        transform.values[value] = hit
    return hit


class _Id(bytes):
    """A token value that is exactly one id of the base record."""


def _date_components(key: str) -> set[int]:
    """Component positions of a composite search parameter (``Type.code``) that are dates."""
    rtype, code = key.split(".", 1)
    p = r4spec.search_params(rtype).get(code)
    return {i for i, c in enumerate(p.components) if c.type == "date"} if p else set()


def stored_form(entry: dict[str, Any], resolver: _Resolver) -> tuple[dict[str, Any], bytes]:
    """(resource, body) as `Store.write` stores a PUT of this entry (``fhir load`` keeps ids),
    with the lastUpdated placeholder."""
    res = entry["resource"]
    meta = res.get("meta") if isinstance(res.get("meta"), dict) else {}
    rid = res.get("id") or entry["fullUrl"].removeprefix("urn:uuid:")
    resource = {
        "resourceType": res["resourceType"],
        "id": rid,
        "meta": {**meta, "versionId": "1", "lastUpdated": _LU},
        **{k: v for k, v in res.items() if k not in ("resourceType", "id", "meta")},
    }
    return resource, resolver.rewrite(orjson.dumps(resource))


def stored(t: reidentify.Template, transform: reidentify.Transform, resolver: _Resolver) -> Stored:
    """The stored, indexed and cut form of one variant (raises FhirError like the transaction
    code would for a resource it refuses)."""
    assert t.entry is not None
    check_bindings(t.entry["resource"])
    resource, body = stored_form(t.entry, resolver)
    rows: Rows = extract(resource, resolver)
    starts, ends = _date_sources(resource)
    exact = not _PARTIAL_DATE.search(body)

    def bound(x: float | None, sources: dict[float, str]) -> Bound:
        nonlocal exact
        if x is None or x in (INF, -INF) or x == int(x):
            return x
        if x not in sources:
            exact = False
        return sources.get(x, x)

    combos = []
    for key, grp, comp, sys, val, lo, hi in rows.combos:
        is_date = comp in _date_components(key)
        combos.append((key, grp, comp, sys, _cut_value(val, transform),
                       bound(lo, starts) if is_date else lo, bound(hi, ends) if is_date else hi, is_date))
    return Stored(
        rtype=resource["resourceType"],
        id_slot=resource["id"].encode(),
        body=reidentify.cut(body, transform, t.notes),
        tokens=[(k, s, _cut_value(v, transform)) for k, s, v in rows.tokens],
        dates=[(k, bound(lo, starts), bound(hi, ends)) for k, lo, hi in rows.dates],
        numbers=list(rows.numbers),
        combos=combos,
        exact=exact,
    )


def _date_sources(node: Any) -> tuple[dict[float, str], dict[float, str]]:
    """Every date string of a resource by the start and by the end of the range it stands for."""
    starts: dict[float, str] = {}
    ends: dict[float, str] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, str) and _DATE_START.match(n):
            r = parse_range(n)
            if r is not None:
                starts.setdefault(r[0], n)
                ends.setdefault(r[1], n)
    return starts, ends


def _join(t: reidentify.Template | str | None, who: reidentify.Identity) -> str | None:
    if t is None or isinstance(t, str):
        return t
    if isinstance(t, _Id):
        new = who.ids.get(t)
        if new is None:
            new = who.ids[t] = who.new_id(t.decode()).encode()
        return new.decode()
    return reidentify.copy_entry(t, who).decode()


def _moved(x: Bound, who: reidentify.Identity, end: bool) -> float | None:
    """A date bound of the copy: the variant's moved by the copy's shift."""
    if x is None or isinstance(x, float) and x in (INF, -INF):
        return x  # type: ignore[return-value]
    if isinstance(x, str):  # re-parse the shifted text, as the transaction code parses it
        text = reidentify.copy_entry(reidentify.Template([b"", x[10:].encode()], [("d", x[:10].encode())]), who).decode()
        r = parse_range(text)
        assert r is not None
        return r[1] if end else r[0]
    return x + who.shift_days * DAY


class BulkLoader:
    """Loads the copies of one derived folder into a store (module doc)."""

    def __init__(self, store: Store, folder: Path, manifest: dict[str, Any], opts: derive.DeriveOptions,
                 base: derive.Base) -> None:
        self.store, self.folder, self.manifest = store, folder, manifest
        self.files = synthea_files(folder)[0].parent
        self.base, self.opts = base, opts
        self.builder = derive.Builder(base, opts)
        self.resolvers: dict[int, _Resolver] = {}
        self.conditional: dict[str, str] = {}  # conditional reference -> Type/id, shared by every record
        self.variants: dict[int, Stored | None] = {}  # id(template) -> stored (None: not exact)
        self.counts: Counter[str] = Counter()

    def resolver(self, record: int) -> _Resolver:
        """The reference map of a base record: every fullUrl -> ``Type/id``; conditional
        references resolve against the store (where the infrastructure is loaded)."""
        hit = self.resolvers.get(record)
        if hit is None:
            hit = self.resolvers[record] = _Resolver(self.store)
            hit.cache = self.conditional
            for e in self.base.records[record].entries:
                res = e["resource"]
                if e.get("fullUrl"):
                    hit.map[e["fullUrl"]] = f"{res['resourceType']}/{res.get('id') or e['fullUrl'].removeprefix('urn:uuid:')}"
        return hit

    def load(self, progress: Callable[[int], None] | None = None) -> dict[str, int]:
        """Load every copy; `progress(n)` after each batch of n copies."""
        store = self.store
        copies, _ = derive.plan(self.base, self.opts)
        self._resolve_conditional()
        with store.atomic():  # the lookup indexes are rebuilt once at the end (a sort, not 3M inserts)
            for name in LOOKUP_INDEXES:
                store.conn.execute(f"DROP INDEX IF EXISTS {name}")
        try:
            parts = _split(copies, WORKERS if store.path != ":memory:" and "fork" in mp.get_all_start_methods() else 1)
            self._load_parts(parts, progress)
        finally:
            with store.atomic():
                for sql in _lookup_index_sql():
                    store.conn.execute(sql)
        return dict(self.counts)

    def _load_parts(self, parts: list[list[derive.Copy]], progress: Callable[[int], None] | None) -> None:
        """The first part here, each other one in a forked process into a file of its own (the
        rows are CPU-bound Python), then copied in after this one's rows, with their row keys
        moved (SQL, no Python per row).  A part whose process failed is loaded here instead (so
        its error, if any, is raised as in a one-process load)."""
        ctx = mp.get_context("fork") if len(parts) > 1 else None
        children = []
        for k, part in enumerate(parts[1:], 1):
            path = Path(f"{self.store.path}.part{k}")
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
            assert ctx is not None
            proc = ctx.Process(target=self._load_part, args=(part, path), daemon=True)
            proc.start()
            children.append((proc, part, path))
        try:
            self._load(parts[0], progress)
            for proc, part, path in children:
                proc.join()
                if proc.exitcode == 0:
                    self._merge(path)
                else:
                    self._load(part, None)
                if progress:
                    progress(len(part))
        finally:
            for proc, _, path in children:
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
                for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    p.unlink(missing_ok=True)

    def _load_part(self, copies: list[derive.Copy], path: Path) -> None:
        """A forked process's part: its rows in a new database file `path` (row keys from 1)."""
        code = 1
        try:
            self.store = Store(path)
            self.store.conn.execute("PRAGMA journal_mode=OFF")
            self.store.conn.execute("PRAGMA synchronous=OFF")
            for name in LOOKUP_INDEXES:
                self.store.conn.execute(f"DROP INDEX IF EXISTS {name}")
            self.resolvers = {}  # bound to the parent's store; the conditional references are cached
            self._load(copies, None)
            self.store.close()
            code = 0
        finally:
            os._exit(code)  # no atexit handlers or finalizers of the parent's objects

    def _merge(self, path: Path) -> None:
        """Append a part's rows (`_load_part`) after the store's own, row keys moved to follow."""
        store, conn = self.store, self.store.conn
        with store.lock:
            conn.execute("ATTACH DATABASE ? AS part", (str(path),))
            try:
                with store.atomic():
                    delta = conn.execute("SELECT coalesce(max(rid), 0) FROM main.resources").fetchone()[0]
                    conn.execute("INSERT INTO main.resources(rid, type, id, version, lu, deleted, method, body) "
                                 "SELECT rid + ?, type, id, version, lu, deleted, method, body FROM part.resources "
                                 "ORDER BY rid", (delta,))
                    for table, cols in INDEX_TABLES.items():
                        names = ", ".join(cols)
                        conn.execute(f"INSERT INTO main.{table}(rid, param, {names}) "
                                     f"SELECT rid + ?, param, {names} FROM part.{table}", (delta,))
                    got = conn.execute("SELECT type, count(*), max(lu) FROM part.resources GROUP BY type").fetchall()
                    for rtype, n, lu in got:
                        self.counts[rtype] += n
                        store._changed(rtype)
                        store._last_lu = max(store._last_lu, lu)
            finally:
                conn.execute("DETACH DATABASE part")

    def _resolve_conditional(self) -> None:
        """Resolve every conditional reference of the base records now, while the store is small
        and indexed (the chart variants then find them in the cache)."""
        resolver = _Resolver(self.store)
        resolver.cache = self.conditional
        for rec in self.base.records:
            for e in rec.entries:
                for m in _CONDITIONAL.findall(orjson.dumps(e["resource"])):
                    resolver(m.decode())

    def _load(self, copies: list[derive.Copy], progress: Callable[[int], None] | None) -> None:
        store = self.store
        for start in range(0, len(copies), BATCH):
            batch = copies[start:start + BATCH]
            with store.atomic():
                next_rid = store.conn.execute("SELECT coalesce(max(rid), 0) + 1 FROM resources").fetchone()[0]
                rows: dict[str, list[tuple[Any, ...]]] = {"resources": [], **{t: [] for t in INDEX_TABLES}}
                for c in batch:
                    next_rid = self._copy(c, next_rid, rows)
                self._insert(rows)
                for rtype in {r[1] for r in rows["resources"]}:
                    store._changed(rtype)  # searches remembered by any process sharing the database
            if progress:
                progress(len(batch))

    def _copy(self, c: derive.Copy, rid: int, rows: dict[str, list[tuple[Any, ...]]]) -> int:
        who = self.builder.identity(c)
        templates = self.builder.templates(c)
        transform, resolver = self.base.transforms[c.record], self.resolver(c.record)
        own: _Resolver | None = None
        for rtype, t in templates:
            v = None if rtype == "Patient" else self._variant(t, transform, resolver)
            if v is None:  # indexed in full: the Patient, or a variant the shift cannot move
                own = own or self._copy_resolver(c, templates, who)
                entry = orjson.loads(self.builder.entry(c, who, rtype, t))
                resource, body = stored_form(entry, own)
                lu = self.store._now()
                body = body.replace(_LU.encode(), iso_instant(lu).encode())
                resource["meta"]["lastUpdated"] = iso_instant(lu)
                r = extract(resource, own)
                rows["resources"].append((rid, rtype, resource["id"], 1, lu, 0, "PUT", body))
                rows["tokens"] += [(rid, *x) for x in r.tokens]
                rows["dates"] += [(rid, *x) for x in r.dates]
                rows["numbers"] += [(rid, *x) for x in r.numbers]
                rows["combos"] += [(rid, *x) for x in r.combos]
            else:
                lu = self.store._now()
                body = reidentify.copy_entry(v.body, who).replace(_LU.encode(), iso_instant(lu).encode())
                new_id = who.ids.get(v.id_slot)
                if new_id is None:
                    new_id = who.ids[v.id_slot] = who.new_id(v.id_slot.decode()).encode()
                rows["resources"].append((rid, rtype, new_id.decode(), 1, lu, 0, "PUT", body))
                rows["tokens"] += [(rid, k, s, _join(val, who)) for k, s, val in v.tokens]
                rows["dates"] += [(rid, k, _moved(lo, who, False), _moved(hi, who, True)) for k, lo, hi in v.dates]
                rows["numbers"] += [(rid, *x) for x in v.numbers]
                rows["combos"] += [(rid, k, g, comp, s, _join(val, who),
                                    _moved(lo, who, False) if is_date else lo, _moved(hi, who, True) if is_date else hi)
                                   for k, g, comp, s, val, lo, hi, is_date in v.combos]
            self.counts[rtype] += 1
            rid += 1
        return rid

    def _copy_resolver(self, c: derive.Copy, templates: list[tuple[str, reidentify.Template]],
                       who: reidentify.Identity) -> _Resolver:
        """The reference map of one copy's bundle: each entry's fullUrl with the copy's id."""
        own = _Resolver(self.store)
        own.cache = self.conditional
        ids = [("Patient", self.base.records[c.record].patient["id"])]
        ids += [(rtype, t.entry["fullUrl"][len("urn:uuid:"):]) for rtype, t in templates
                if t.entry is not None and t.entry.get("fullUrl", "").startswith("urn:uuid:")]
        for rtype, old in ids:
            new = who.new_id(old)
            own.map[f"urn:uuid:{new}"] = f"{rtype}/{new}"
        return own

    def _variant(self, t: reidentify.Template, transform: reidentify.Transform, resolver: _Resolver) -> Stored | None:
        key = id(t)
        if key not in self.variants:
            v = stored(t, transform, resolver)
            self.variants[key] = v if v.exact else None
        return self.variants[key]

    def _insert(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        conn = self.store.conn
        conn.executemany("INSERT INTO resources(rid, type, id, version, lu, deleted, method, body) VALUES(?,?,?,?,?,?,?,?)",
                         rows["resources"])
        for table, cols in INDEX_TABLES.items():
            if rows[table]:
                conn.executemany(f"INSERT INTO {table}(rid, param, {', '.join(cols)}) VALUES(?, ?{', ?' * len(cols)})",
                                 rows[table])


def _manifest(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """(root, manifest) of a derived population's folder (its fhir/ folder or the one above)."""
    root = folder if (folder / derive.MANIFEST).is_file() else folder.parent
    try:
        return root, json.loads((root / derive.MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _split(copies: list[derive.Copy], n: int) -> list[list[derive.Copy]]:
    """`copies` in `n` parts of about equal work, each in plan order; the copies of one visit stay
    together (its chart variants are stored and indexed once, by the part that has them)."""
    groups: dict[tuple[int, str, str], list[derive.Copy]] = {}
    for c in copies:
        groups.setdefault((c.record, c.anchor.id, c.demand), []).append(c)
    parts: list[list[derive.Copy]] = [[] for _ in range(max(1, n))]
    for group in sorted(groups.values(), key=len, reverse=True):
        min(parts, key=len).extend(group)
    return [sorted(p, key=lambda c: c.number) for p in parts if p]


def derived_loader(store: Store, folder: Path) -> BulkLoader | None:
    """A bulk loader for `folder` if it is an intact derived population with its base present
    and none of its patients is in the store yet (module doc), else None (load it the generic
    way, which also updates what is there)."""
    found = _manifest(folder)
    if found is None:
        return None
    root, manifest = found
    try:
        opts = derive.options_of(manifest)
        base_folder = Path(manifest["base"]["folder"])
        if fingerprint_files(synthea_files(root)) != manifest["fingerprint"]:
            return None
        base = derive.Base.read(base_folder)
    except (OSError, KeyError, ValueError, TypeError, InputError):
        return None
    if base.fingerprint != manifest["base"]["fingerprint"]:
        return None
    copies, _ = derive.plan(base, opts)
    ids = [derive.patient_id(base, opts, c) for c in copies]
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        if store.query(f"SELECT 1 FROM resources WHERE type='Patient' AND id IN ({','.join('?' * len(chunk))}) LIMIT 1", chunk):
            return None
    return BulkLoader(store, root, manifest, opts, base)


def prebuilt(folder: Path) -> Path | None:
    """The database of a derived population, built once into its cache folder and reused: a new
    store then restores it (`Store.restore`, seconds) instead of loading 250,000 resources.
    Built (bulk, ~1 minute per 6,500 patients here) on first use; None for a folder that is not
    an intact derived population (the generic load then).  Callers at the same time (the demo's
    background builder and a server starting) wait for one build instead of making two."""
    found = _manifest(folder)
    if found is None:
        return None
    root, manifest = found
    try:
        if fingerprint_files(synthea_files(root)) != manifest.get("fingerprint"):
            return None
    except (OSError, InputError):
        return None
    path = root / DB_NAME
    if _stamp(path) == (manifest["fingerprint"], INDEX_VERSION):
        return path
    with open(root / f".{DB_NAME}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        if _stamp(path) == (manifest["fingerprint"], INDEX_VERSION):
            return path  # built by whoever held the lock
        return _build(folder, path)


def _build(folder: Path, path: Path) -> Path | None:
    """`prebuilt`'s database written to a scratch file renamed into place (`path`).  Written
    without a journal (a scratch file: a crash leaves nothing in place, and every page is
    written once instead of to the WAL and then again to the database)."""
    tmp = path.with_name(f".{DB_NAME}.tmp-{os.getpid()}")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    store = Store(tmp)
    try:
        store.conn.execute("PRAGMA journal_mode=OFF")
        store.conn.execute("PRAGMA synchronous=OFF")
        loader = derived_loader(store, folder)
        if loader is None:
            return None
        from paritybed.fhir.loader import load_into_store

        load_into_store(store, folder, prebuilt_db=False, derived=loader)
        with store.atomic():
            store.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('derived_fingerprint', ?)",
                               (loader.manifest["fingerprint"],))
        store.close()
        os.replace(tmp, path)
        return path
    finally:
        store.close()
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            p.unlink(missing_ok=True)


def _stamp(path: Path) -> tuple[str | None, str | None]:
    """(derived fingerprint, index version) a prebuilt database was made for."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        finally:
            con.close()
    except sqlite3.Error:
        return None, None
    return meta.get("derived_fingerprint"), meta.get("index_version")
