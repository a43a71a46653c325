"""batch and transaction Bundles POSTed to the base, as FHIR R4 (http.html#transaction) defines.

What makes Synthea's bundles load here exactly as into HAPI:

* ``urn:uuid:`` fullUrls: every POST entry gets its id first, and every reference in the bundle
  that names a fullUrl is rewritten to ``Type/id`` (in the stored bytes and in the index).  A
  POST whose fullUrl is ``urn:uuid:<uuid>`` is given ``<uuid>`` as its server id: deterministic,
  and the population index's ids are then the server's ids.  If that id is taken, the entry
  fails with 409 (load with PUT to update, as ``paritybed fhir load`` does by default).
* conditional references (``Practitioner?identifier=system|value``): resolved by a search; no
  match or several matches is 412, as for a conditional create.
* ``ifNoneExist``: a conditional create; one match means no write, ``200`` and that resource's
  location (and its fullUrl maps to it), several matches 412.

A transaction is atomic (one SQLite transaction: any failing entry rolls everything back and
the error names the entry); a batch runs each entry in its own savepoint and reports per-entry
status.  Entries run in the spec's order (DELETE, POST, PUT, GET) and answer in request order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from paritybed.fhir import search as fsearch
from paritybed.fhir.dates import iso_instant
from paritybed.fhir.outcome import FhirError, status_line
from paritybed.fhir.store import Store, Version, WriteResult
from paritybed.fhir.types import ID_RE, check_bindings, check_id, check_type, validate

_REF_RE = re.compile(rb'"reference":"([^"\\]+)"')
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
URN = "urn:uuid:"


@dataclass
class Entry:
    index: int
    method: str
    rtype: str
    rid: str | None
    version: int | None
    query: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_match: str | None
    if_none_exist: str | None


def _relative(url: str, base: str) -> str:
    """A request url relative to the base (absolute urls on this server are accepted)."""
    if url.startswith(base + "/"):
        return url[len(base) + 1:]
    if "://" in url:
        parts = urlsplit(url)
        path = parts.path
        if "/fhir/" in path:
            path = path.split("/fhir/", 1)[1]
        return path + (f"?{parts.query}" if parts.query else "")
    return url.lstrip("/")


def _parse_entry(i: int, raw: Any, base: str) -> Entry:
    if not isinstance(raw, dict):
        raise FhirError(400, f"entry {i} is not an object")
    req = raw.get("request")
    if not isinstance(req, dict) or not isinstance(req.get("method"), str) or not isinstance(req.get("url"), str):
        raise FhirError(400, f"entry {i} has no request.method and request.url")
    method = req["method"].upper()
    if method not in _ORDER:
        raise FhirError(400, f"entry {i}: request.method {method} is not a FHIR method")
    path, _, query = _relative(req["url"], base).partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise FhirError(400, f"entry {i}: request.url {req['url']!r} names no resource type")
    rtype = check_type(parts[0])
    rid = check_id(parts[1]) if len(parts) > 1 else None
    version = None
    if len(parts) == 4 and parts[2] == "_history" and parts[3].isdigit():
        version = int(parts[3])
    elif len(parts) > 2:
        raise FhirError(501, f"entry {i}: request.url {req['url']!r} is not a supported interaction")
    resource = raw.get("resource")
    if method == "PATCH":
        raise FhirError(501, f"entry {i}: PATCH is not supported")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise FhirError(400, f"entry {i}: {method} needs a resource")
        if resource.get("resourceType") != rtype:
            raise FhirError(400, f"entry {i}: resource is a {resource.get('resourceType')}, request.url says {rtype}")
        if method == "POST" and rid is not None:
            raise FhirError(400, f"entry {i}: POST goes to the type ({rtype}), not to an id")
        if method == "PUT":
            if rid is None:
                raise FhirError(501, f"entry {i}: conditional update (PUT {rtype}?...) is not supported")
            if resource.get("id") not in (None, rid):
                raise FhirError(400, f"entry {i}: resource.id {resource.get('id')!r} differs from the url's id {rid!r}")
    if method == "DELETE" and rid is None:
        raise FhirError(501, f"entry {i}: conditional delete is not supported")
    full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    return Entry(i, method, rtype, rid, version, query or None, resource, full_url,
                 req.get("ifMatch"), req.get("ifNoneExist"))


class _Resolver:
    """Final form of every reference of one bundle: fullUrls, then conditional references."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.map: dict[str, str] = {}
        self.cache: dict[str, str] = {}

    def __call__(self, ref: str) -> str:
        hit = self.map.get(ref)
        if hit is not None:
            return hit
        if ref.startswith(URN):
            raise FhirError(400, f"reference {ref} names no entry of this bundle")
        if "?" in ref and not ref.startswith("#"):
            hit = self.cache.get(ref)
            if hit is None:
                rtype, _, query = ref.partition("?")
                check_type(rtype)
                ids = fsearch.find_ids(self.store, rtype, query)
                if len(ids) != 1:
                    what = "no resource" if not ids else "more than one resource"
                    raise FhirError(412, f"conditional reference {ref} matches {what}")
                hit = self.cache[ref] = f"{rtype}/{ids[0]}"
            return hit
        return ref

    def rewrite(self, body: bytes) -> bytes:
        def sub(m: re.Match[bytes]) -> bytes:
            ref = m.group(1).decode()
            new = self(ref)
            return m.group(0) if new == ref else b'"reference":"' + new.encode() + b'"'

        return _REF_RE.sub(sub, body)


def _response(status: int, v: Version | None, *, location: bool = True) -> dict[str, Any]:
    resp: dict[str, Any] = {"status": status_line(status)}
    if v is not None:
        if location:
            resp["location"] = f"{v.type}/{v.id}/_history/{v.version}"
        resp["etag"] = v.etag
        resp["lastModified"] = iso_instant(v.lu)
    return resp


def _get(store: Store, base: str, e: Entry) -> dict[str, Any]:
    if e.rid is None:
        body = fsearch.search_bundle(store, base, e.rtype, parse_qsl(e.query or "", keep_blank_values=True))
        return {"resource": orjson.loads(body), "response": {"status": status_line(200)}}
    v = store.read(e.rtype, e.rid) if e.version is None else store.vread(e.rtype, e.rid, e.version)
    if v is None:
        raise FhirError(404, f"{e.rtype}/{e.rid}{'' if e.version is None else f'/_history/{e.version}'} is not known")
    if v.deleted:
        raise FhirError(410, f"{e.rtype}/{e.rid} was deleted")
    return {"resource": orjson.loads(v.body or b"{}"), "response": _response(200, v, location=False)}


def _write(store: Store, e: Entry, res: _Resolver, assigned: dict[int, str], validate_resources: bool) -> dict[str, Any]:
    if e.method == "DELETE":
        assert e.rid is not None
        w = store.delete(e.rtype, e.rid)
        return {"response": _response(200, w.version, location=False)}
    assert e.resource is not None
    if validate_resources:
        validate(e.resource)
    else:  # the required bindings always: cheap, and a wrong code is no resource to store
        check_bindings(e.resource)
    rid = assigned[e.index] if e.method == "POST" else e.rid
    assert rid is not None
    try:
        w: WriteResult = store.write(
            e.rtype, rid, e.resource, method=e.method, if_match=e.if_match,
            create_only=e.method == "POST", rewrite=res.rewrite, resolve=res,
        )
    except FhirError as err:
        if err.status == 409 and e.full_url and e.full_url.startswith(URN):
            raise FhirError(409, f"{err.diagnostics}: a POST with fullUrl {e.full_url} takes that uuid as its id; "
                                 f"send PUT {e.rtype}/{rid} to update it (paritybed fhir load does by default)") from None
        raise
    return {"response": _response(w.status, w.version)}


def _assign(store: Store, e: Entry, res: _Resolver, assigned: dict[int, str]) -> dict[str, Any] | None:
    """Give a POST entry its id (or its ifNoneExist match); returns the response if no write."""
    if e.if_none_exist:
        ids = fsearch.find_ids(store, e.rtype, e.if_none_exist)
        if len(ids) > 1:
            raise FhirError(412, f"ifNoneExist {e.rtype}?{e.if_none_exist} matches more than one resource")
        if ids:
            if e.full_url:
                res.map[e.full_url] = f"{e.rtype}/{ids[0]}"
            return {"response": _response(200, store.read(e.rtype, ids[0]))}
    candidate = e.full_url[len(URN):] if e.full_url and e.full_url.startswith(URN) else None
    rid = candidate if candidate and ID_RE.match(candidate) else store.new_id(e.rtype)
    assigned[e.index] = rid
    if e.full_url:
        res.map[e.full_url] = f"{e.rtype}/{rid}"
    return None


def process(store: Store, bundle: Any, base: str, *, validate_resources: bool = False) -> dict[str, Any]:
    """Run a batch or transaction Bundle; returns the batch-/transaction-response Bundle.

    A transaction raises `FhirError` (the failing entry's status, its index and fullUrl in the
    text) and leaves the store unchanged; a batch never raises for an entry's failure.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(400, "POST to the base takes a Bundle of type batch or transaction")
    btype = bundle.get("type")
    if btype not in ("batch", "transaction"):
        raise FhirError(400, f"Bundle.type {btype!r}: only batch and transaction can be POSTed to the base")
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise FhirError(400, "Bundle.entry must be a list")
    if btype == "transaction":
        return _transaction(store, raw_entries, base, validate_resources)
    return _batch(store, raw_entries, base, validate_resources)


def _label(e: Entry | int) -> str:
    if isinstance(e, int):
        return f"entry {e}"
    return f"entry {e.index}" + (f" ({e.full_url})" if e.full_url else f" ({e.method} {e.rtype})")


def _transaction(store: Store, raw: list[Any], base: str, validate_resources: bool) -> dict[str, Any]:
    entries = [_parse_entry(i, r, base) for i, r in enumerate(raw)]
    seen: set[str] = set()
    for e in entries:
        if e.full_url:
            if e.full_url in seen:
                raise FhirError(400, f"{_label(e)}: fullUrl appears twice in the transaction")
            seen.add(e.full_url)
    out: list[dict[str, Any] | None] = [None] * len(entries)
    res, assigned = _Resolver(store), {}
    with store.atomic():
        for e in entries:
            try:
                if e.method == "POST":
                    out[e.index] = _assign(store, e, res, assigned)
                elif e.method == "PUT" and e.full_url:
                    res.map[e.full_url] = f"{e.rtype}/{e.rid}"
            except FhirError as err:
                raise _named(err, e) from None
        for e in sorted(entries, key=lambda x: (_ORDER[x.method], x.index)):
            if out[e.index] is not None:
                continue
            try:
                out[e.index] = _get(store, base, e) if e.method in ("GET", "HEAD") else _write(store, e, res, assigned, validate_resources)
            except FhirError as err:
                raise _named(err, e) from None
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}


def _named(err: FhirError, e: Entry) -> FhirError:
    return FhirError(err.status, f"transaction failed at {_label(e)}: {err.diagnostics}", code=err.code,
                     expression=err.expression, extra=err.extra)


def _batch(store: Store, raw: list[Any], base: str, validate_resources: bool) -> dict[str, Any]:
    out: list[dict[str, Any] | None] = [None] * len(raw)
    parsed: list[Entry] = []
    for i, r in enumerate(raw):
        try:
            parsed.append(_parse_entry(i, r, base))
        except FhirError as err:
            out[i] = _failed(err)
    res, assigned = _Resolver(store), {}
    with store.atomic():
        for e in sorted(parsed, key=lambda x: (_ORDER[x.method], x.index)):
            try:
                with store.atomic():
                    if e.method == "POST":
                        out[e.index] = _assign(store, e, res, assigned)
                        if out[e.index] is not None:
                            continue
                    elif e.method == "PUT" and e.full_url:
                        res.map[e.full_url] = f"{e.rtype}/{e.rid}"
                    out[e.index] = (
                        _get(store, base, e) if e.method in ("GET", "HEAD")
                        else _write(store, e, res, assigned, validate_resources)
                    )
            except FhirError as err:
                out[e.index] = _failed(err)
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}


def _failed(err: FhirError) -> dict[str, Any]:
    return {"response": {"status": status_line(err.status), "outcome": err.outcome()}}
