"""SQLite storage of the embedded FHIR server: versioned resources and their search index.

Layout (one database, a file or ``:memory:``):

* ``resources`` — the current version of every resource (``rid`` is the row key the index
  tables use; a deleted resource keeps its row with ``deleted=1`` and no body, so a read answers
  410 and a later update continues its version numbers);
* ``history`` — every earlier version, moved there when a newer one is written;
* ``tokens`` / ``dates`` / ``numbers`` / ``combos`` — the search index written with each version
  (index.py says what);
* ``meta`` — the counter behind server-assigned ids;
* ``generations`` — a counter per resource type, moved by every write of that type, so a search
  result remembered by any process sharing the database is known to be current or not.

The JSON body is stored exactly as served (with ``id`` and ``meta.versionId/lastUpdated``), so a
read is one primary-key lookup returning bytes, never a parse and re-serialization.

All access goes through one connection guarded by a lock: the server runs its handlers on one
event loop, and SQLite serializes writers anyway.  `atomic()` nests (SAVEPOINTs), which is how a
transaction Bundle is all-or-nothing and a batch entry fails alone.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from paritybed.fhir.dates import iso_instant
from paritybed.fhir.outcome import FhirError
from paritybed.fhir.index import extract

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources(
    rid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    lu REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    method TEXT NOT NULL,
    body BLOB,
    UNIQUE(type, id)
);
CREATE INDEX IF NOT EXISTS resources_lu ON resources(type, lu);
CREATE TABLE IF NOT EXISTS history(
    rid INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lu REAL NOT NULL,
    deleted INTEGER NOT NULL,
    method TEXT NOT NULL,
    body BLOB,
    PRIMARY KEY(rid, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_lu ON history(lu);
CREATE TABLE IF NOT EXISTS tokens(rid INTEGER NOT NULL, param TEXT NOT NULL, sys TEXT, val TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tokens_lookup ON tokens(param, val, sys, rid);
CREATE INDEX IF NOT EXISTS tokens_rid ON tokens(rid, param, val, sys);
CREATE TABLE IF NOT EXISTS dates(rid INTEGER NOT NULL, param TEXT NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL);
CREATE INDEX IF NOT EXISTS dates_lookup ON dates(param, lo, hi, rid);
CREATE INDEX IF NOT EXISTS dates_rid ON dates(rid, param, lo, hi);
CREATE TABLE IF NOT EXISTS numbers(rid INTEGER NOT NULL, param TEXT NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, sys TEXT, code TEXT);
CREATE INDEX IF NOT EXISTS numbers_lookup ON numbers(param, lo, hi, rid);
CREATE INDEX IF NOT EXISTS numbers_rid ON numbers(rid, param);
CREATE TABLE IF NOT EXISTS combos(rid INTEGER NOT NULL, param TEXT NOT NULL, grp INTEGER NOT NULL, comp INTEGER NOT NULL,
                                  sys TEXT, val TEXT, lo REAL, hi REAL);
CREATE INDEX IF NOT EXISTS combos_lookup ON combos(param, comp, val, sys, rid);
CREATE INDEX IF NOT EXISTS combos_rid ON combos(rid, param, grp, comp);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generations(type TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""
#: Search results kept per process (`Store.remembered`): enough for the pages of the searches
#: of a few hundred recent patient contexts.
REMEMBERED = 512
#: The index tables, each with its columns after (rid, param).
INDEX_TABLES = {"tokens": ("sys", "val"), "dates": ("lo", "hi"), "numbers": ("lo", "hi", "sys", "code"),
                "combos": ("grp", "comp", "sys", "val", "lo", "hi")}
#: Version of what the index holds: a database written under another version is re-indexed
#: when opened (the index is derived from the stored bodies, so nothing is lost).
INDEX_VERSION = "r4-search-parameters-2"

#: Namespace of server-assigned ids: uuid5(namespace, "<n>") for the database's n-th create.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://paritybed.dev/fhir/server-assigned-id")


@dataclass(frozen=True)
class Version:
    """One stored version of a resource."""

    rid: int
    type: str
    id: str
    version: int
    lu: float
    deleted: bool
    method: str
    body: bytes | None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True)
class WriteResult:
    """What a create/update/delete did: 201 created, 200 updated (or unchanged)."""

    status: int
    version: Version


_COLS = "rid, type, id, version, lu, deleted, method, body"


def _version(row: tuple[Any, ...]) -> Version:
    return Version(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7])


def parse_etag(value: str) -> int | None:
    """``W/"3"``, ``"3"`` or ``3`` -> 3; None if it is not a version tag."""
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    return int(v) if v.isdigit() else None


def _same_content(old_body: bytes, new: dict[str, Any]) -> bool:
    """True when two versions differ only in meta.versionId/lastUpdated (a no-op update)."""
    old = orjson.loads(old_body)
    for r in (old, new):
        meta = r.get("meta")
        if isinstance(meta, dict):
            meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
            if meta:
                r["meta"] = meta
            else:
                r.pop("meta", None)
    return old == new


class Store:
    """Versioned FHIR resources with a write-time search index, in SQLite."""

    def __init__(self, db: str | Path = ":memory:", *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(db)
        self.clock = clock
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA cache_size=-262144")  # 256 MiB page cache
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.executescript(SCHEMA)
        self._depth = 0
        self._last_lu = 0.0
        self._remembered: OrderedDict[Any, tuple[int, Any]] = OrderedDict()
        self.remembered_hits = self.remembered_misses = 0
        row = self.conn.execute("SELECT value FROM meta WHERE key='index_version'").fetchone()
        if row is None or row[0] != INDEX_VERSION:
            self.reindex()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # ------------------------------------------------------------------------ transactions
    @contextmanager
    def atomic(self) -> Iterator[None]:
        """All writes inside commit together or not at all; nests through SAVEPOINTs."""
        with self.lock:
            depth = self._depth
            self.conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT sp{depth}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth = depth
                if depth == 0:
                    self.conn.execute("ROLLBACK")
                else:
                    self.conn.execute(f"ROLLBACK TO sp{depth}")
                    self.conn.execute(f"RELEASE sp{depth}")
                raise
            self._depth = depth
            self.conn.execute("COMMIT" if depth == 0 else f"RELEASE sp{depth}")

    # ------------------------------------------------------------------------------- reads
    def read(self, rtype: str, rid: str) -> Version | None:
        """The current version (possibly a deletion), or None if it never existed."""
        with self.lock:
            row = self.conn.execute(
                f"SELECT {_COLS} FROM resources WHERE type=? AND id=?", (rtype, rid)
            ).fetchone()
        return _version(row) if row else None

    def vread(self, rtype: str, rid: str, version: int) -> Version | None:
        """A given version of a resource, or None."""
        cur = self.read(rtype, rid)
        if cur is None or version > cur.version:
            return None
        if version == cur.version:
            return cur
        with self.lock:
            row = self.conn.execute(
                "SELECT version, lu, deleted, method, body FROM history WHERE rid=? AND version=?",
                (cur.rid, version),
            ).fetchone()
        return Version(cur.rid, rtype, rid, row[0], row[1], bool(row[2]), row[3], row[4]) if row else None

    def history(
        self, rtype: str | None, rid: str | None, *, since: float | None, count: int, offset: int
    ) -> tuple[int, list[Version]]:
        """(total, page) of versions of one resource or of a whole type, newest first."""
        where, args = [], []
        if rtype is not None:
            where.append("r.type=?")
            args.append(rtype)
        if rid is not None:
            where.append("r.id=?")
            args.append(rid)
        cond = " AND ".join(where) or "1"
        since_cond = " AND v.lu >= ?" if since is not None else ""
        since_args = [since] if since is not None else []
        union = (
            f"SELECT r.rid, r.type, r.id, r.version, r.lu, r.deleted, r.method, r.body FROM resources r "
            f"WHERE {cond}"
            f" UNION ALL SELECT r.rid, r.type, r.id, h.version, h.lu, h.deleted, h.method, h.body "
            f"FROM history h JOIN resources r ON r.rid = h.rid WHERE {cond}"
        )
        base = f"SELECT * FROM ({union}) v WHERE 1{since_cond}"
        with self.lock:
            total = self.conn.execute(f"SELECT count(*) FROM ({base})", (*args, *args, *since_args)).fetchone()[0]
            rows = self.conn.execute(
                f"{base} ORDER BY v.lu DESC, v.rid DESC, v.version DESC LIMIT ? OFFSET ?",
                (*args, *args, *since_args, count, offset),
            ).fetchall()
        return total, [_version(r) for r in rows]

    def query(self, sql: str, args: tuple[Any, ...] | list[Any]) -> list[tuple[Any, ...]]:
        """Run a read-only query (search.py builds them)."""
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def is_empty(self) -> bool:
        """No resource was ever written (a new database)."""
        return not self.query("SELECT 1 FROM resources LIMIT 1", ())

    def restore(self, path: str | Path) -> None:
        """Replace this (empty) database by a copy of the database file `path` (SQLite's online
        backup: pages, not rows; a prebuilt population loads in seconds, fhir/bulk.py)."""
        with self.lock:
            if not self.is_empty():
                raise ValueError("restore needs an empty store")
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                src.backup(self.conn)
            finally:
                src.close()
            self.conn.executescript(SCHEMA)  # tables added to the schema since `path` was made
            row = self.conn.execute("SELECT max(lu) FROM resources").fetchone()
            self._last_lu = max(self._last_lu, row[0] or 0.0)
            self._remembered.clear()  # searches answered while empty (the counters may match)

    def rows_by_rid(self, rids: list[int]) -> list[tuple[int, str, str, bytes]]:
        """(rid, type, id, body) of live resources, in the order of ``rids`` (a search page)."""
        if not rids:
            return []
        with self.lock:
            found = {r[0]: r for r in self.conn.execute(
                f"SELECT rid, type, id, body FROM resources WHERE rid IN ({','.join('?' * len(rids))})", rids)}
        return [found[rid] for rid in rids if rid in found]

    def generation(self, rtype: str) -> int:
        """The write counter of `rtype` (in the database: every process sharing it sees it)."""
        with self.lock:
            row = self.conn.execute("SELECT n FROM generations WHERE type=?", (rtype,)).fetchone()
        return row[0] if row else 0

    def remembered(self, rtype: str, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, remembered under `key` until a resource of `rtype` is written (by any
        process).  For results that depend on `rtype` resources only (search.py: a search's
        matches, which its next pages reuse, as HAPI FHIR reuses a search's result list).  The
        counter is read before computing, so a write racing the computation makes the result look
        older than it is (recomputed next time), never newer."""
        gen = self.generation(rtype)
        with self.lock:
            hit = self._remembered.get(key)
            if hit is not None and hit[0] == gen:
                self._remembered.move_to_end(key)
                self.remembered_hits += 1
                return hit[1]
        value = compute()
        with self.lock:
            self.remembered_misses += 1
            self._remembered[key] = (gen, value)
            self._remembered.move_to_end(key)
            while len(self._remembered) > REMEMBERED:
                self._remembered.popitem(last=False)
        return value

    def _changed(self, rtype: str) -> None:
        self.conn.execute("INSERT INTO generations(type, n) VALUES(?, 1) ON CONFLICT(type) DO UPDATE SET n = n + 1",
                          (rtype,))

    def counts(self) -> dict[str, int]:
        """Number of live resources per type."""
        rows = self.query("SELECT type, count(*) FROM resources WHERE deleted=0 GROUP BY type ORDER BY type", ())
        return {t: n for t, n in rows}

    # ------------------------------------------------------------------------------ writes
    def new_id(self, rtype: str) -> str:
        """A server-assigned id: uuid5 of the database's create counter (deterministic).

        The same sequence of creates on an empty database yields the same ids, which keeps
        runs reproducible; a collision with a client-assigned id is skipped.
        """
        with self.atomic():
            while True:
                row = self.conn.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()
                n = int(row[0]) if row else 1
                self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('next_id', ?)", (str(n + 1),))
                candidate = str(uuid.uuid5(ID_NAMESPACE, str(n)))
                if not self.conn.execute("SELECT 1 FROM resources WHERE type=? AND id=?", (rtype, candidate)).fetchone():
                    return candidate

    def _now(self) -> float:
        """Wall-clock time, strictly increasing so versions of one resource order by time."""
        now = self.clock()
        if now <= self._last_lu:
            now = self._last_lu + 0.001
        self._last_lu = now
        return now

    def write(
        self,
        rtype: str,
        rid: str,
        resource: dict[str, Any],
        *,
        method: str,
        if_match: str | None = None,
        create_only: bool = False,
        rewrite: Callable[[bytes], bytes] | None = None,
        resolve: Callable[[str], str] | None = None,
    ) -> WriteResult:
        """Create or update `rtype/rid` with `resource` (stored with its id and meta set).

        `create_only` (a POST) answers 409 if the id is taken.  `if_match` (an ETag) answers
        412 unless it names the current version.  `rewrite` turns the serialized body into its
        final bytes and `resolve` gives the final form of a reference for the index — bundle
        processing uses both to rewrite urn:uuid and conditional references.  An update whose
        content equals the current version's keeps that version (200, no new version), as HAPI
        does, so reloading the same data is idempotent.
        """
        with self.atomic():
            cur = self.read(rtype, rid)
            if if_match is not None:
                want = parse_etag(if_match)
                if cur is None or cur.deleted:
                    raise FhirError(412, f"If-Match {if_match}: {rtype}/{rid} does not exist")
                if want != cur.version:
                    raise FhirError(412, f"If-Match {if_match} does not match the current version W/\"{cur.version}\" of {rtype}/{rid}")
            if create_only and cur is not None and not cur.deleted:
                raise FhirError(409, f"{rtype}/{rid} already exists")
            lu = self._now()
            version = 1 if cur is None else cur.version + 1
            meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
            resource = {
                "resourceType": rtype,
                "id": rid,
                "meta": {**meta, "versionId": str(version), "lastUpdated": iso_instant(lu)},
                **{k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")},
            }
            body = orjson.dumps(resource)
            if rewrite is not None:
                body = rewrite(body)
            if cur is not None and not cur.deleted and cur.body is not None:
                if _same_content(cur.body, orjson.loads(body)):
                    return WriteResult(200, cur)
            status = 201 if cur is None or cur.deleted else 200
            if cur is None:
                row_id = self.conn.execute(
                    "INSERT INTO resources(type, id, version, lu, deleted, method, body) VALUES(?,?,?,?,0,?,?)",
                    (rtype, rid, version, lu, method, body),
                ).lastrowid
                assert row_id is not None
            else:
                row_id = cur.rid
                self._archive(row_id)
                self.conn.execute(
                    "UPDATE resources SET version=?, lu=?, deleted=0, method=?, body=? WHERE rid=?",
                    (version, lu, method, body, row_id),
                )
            self._index(row_id, resource, resolve, fresh=cur is None)
            self._changed(rtype)
            return WriteResult(status, Version(row_id, rtype, rid, version, lu, False, method, body))

    def delete(self, rtype: str, rid: str) -> WriteResult:
        """Delete: a new version marked deleted; 404 if it never existed (idempotent after)."""
        with self.atomic():
            cur = self.read(rtype, rid)
            if cur is None:
                raise FhirError(404, f"{rtype}/{rid} is not known")
            if cur.deleted:
                return WriteResult(200, cur)
            lu = self._now()
            self._archive(cur.rid)
            self.conn.execute(
                "UPDATE resources SET version=?, lu=?, deleted=1, method='DELETE', body=NULL WHERE rid=?",
                (cur.version + 1, lu, cur.rid),
            )
            self._unindex(cur.rid)
            self._changed(rtype)
            return WriteResult(200, Version(cur.rid, rtype, rid, cur.version + 1, lu, True, "DELETE", None))

    def _archive(self, row_id: int) -> None:
        self.conn.execute(
            "INSERT INTO history(rid, version, lu, deleted, method, body) "
            "SELECT rid, version, lu, deleted, method, body FROM resources WHERE rid=?",
            (row_id,),
        )

    def _unindex(self, row_id: int) -> None:
        for table in INDEX_TABLES:
            self.conn.execute(f"DELETE FROM {table} WHERE rid=?", (row_id,))

    def _index(self, row_id: int, resource: dict[str, Any], resolve: Callable[[str], str] | None, *, fresh: bool) -> None:
        if not fresh:
            self._unindex(row_id)
        rows = extract(resource, resolve)
        for table, found in (("tokens", rows.tokens), ("dates", rows.dates), ("numbers", rows.numbers),
                             ("combos", rows.combos)):
            if found:
                cols = INDEX_TABLES[table]
                self.conn.executemany(
                    f"INSERT INTO {table}(rid, param, {', '.join(cols)}) VALUES(?, ?{', ?' * len(cols)})",
                    [(row_id, *r) for r in found],
                )

    def reindex(self) -> None:
        """Rebuild the whole search index from the stored bodies (after a change of what is
        indexed: `INDEX_VERSION`).  References are indexed as stored (already rewritten)."""
        with self.atomic():
            for table in INDEX_TABLES:
                self.conn.execute(f"DELETE FROM {table}")
            rows = self.conn.execute("SELECT rid, body FROM resources WHERE deleted=0 AND body IS NOT NULL").fetchall()
            for row_id, body in rows:
                self._index(row_id, orjson.loads(body), None, fresh=True)
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('index_version', ?)", (INDEX_VERSION,))
            self.conn.execute("UPDATE generations SET n = n + 1")

    def analyze(self) -> None:
        """Refresh the query planner's statistics (after a bulk load)."""
        with self.lock:
            self.conn.execute("ANALYZE")
