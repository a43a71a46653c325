"""HTTP handlers of the embedded FHIR server (Starlette endpoints).

Each handler does the HTTP part only (headers, status, body bytes) and leaves storage, search
and bundles to store.py, search.py and transaction.py.  Handlers call SQLite synchronously on
the event loop: a read is one primary-key lookup (tens of microseconds), cheaper than a hop to
a thread pool; a large transaction bundle does hold the loop while it commits, which keeps
writes strictly ordered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from paritybed.fhir import search as fsearch
from paritybed.fhir import shape
from paritybed.fhir.dates import http_date, iso_instant, parse_range
from paritybed.fhir.outcome import FHIR_JSON, FhirError, information, status_line
from paritybed.fhir.store import Store, Version, WriteResult
from paritybed.fhir.transaction import process
from paritybed.fhir.types import RESOURCE_TYPES, check_id, check_type, validate

_HOST_RE = re.compile(r"^[A-Za-z0-9.\-_\[\]:]+$")
_HISTORY_PARAMS = ("_count", "_offset", "_since", "_format")


# ----------------------------------------------------------------------------- helpers
def store_of(request: Request) -> Store:
    return request.app.state.store


def base_url(request: Request) -> str:
    """``scheme://host[:port]/fhir`` as the client addressed us (for fullUrl and links)."""
    host = request.headers.get("host", "")
    if not _HOST_RE.match(host):
        server = request.scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{request.url.scheme}://{host}{request.scope.get('root_path', '')}/fhir"


def fhir_response(body: bytes, status: int = 200, v: Version | None = None, location: str | None = None) -> Response:
    headers: dict[str, str] = {}
    if v is not None:
        headers["ETag"] = v.etag
        headers["Last-Modified"] = http_date(v.lu)
    if location:
        headers["Location"] = location
    return Response(body, status, headers=headers, media_type=FHIR_JSON)


def error_response(err: FhirError) -> Response:
    return Response(err.body(), err.status, media_type=FHIR_JSON)


def check_accept(request: Request) -> None:
    """406 when the client accepts only a format other than JSON (XML, Turtle)."""
    accept = request.headers.get("accept")
    if accept and "json" not in accept and "*/*" not in accept and "application/*" not in accept:
        raise FhirError(406, f"cannot answer in {accept}: this server speaks application/fhir+json only")


def query_items(request: Request) -> list[tuple[str, str]]:
    return parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)


def lenient(request: Request) -> bool:
    return "handling=lenient" in request.headers.get("prefer", "")


async def json_body(request: Request) -> Any:
    ctype = request.headers.get("content-type", "")
    if ctype and "json" not in ctype:
        raise FhirError(415, f"Content-Type {ctype} is not supported: send application/fhir+json")
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise FhirError(400, f"request body is not valid JSON: {e}") from None


def _written(request: Request, w: WriteResult) -> Response:
    """201/200 answer of a create or update, honouring ``Prefer: return=...``."""
    v = w.version
    location = f"{base_url(request)}/{v.type}/{v.id}/_history/{v.version}"
    prefer = request.headers.get("prefer", "")
    if "return=minimal" in prefer:
        body = b""
    elif "return=OperationOutcome" in prefer:
        body = orjson.dumps(information(f"{v.type}/{v.id} version {v.version} stored ({status_line(w.status)})"))
    else:
        body = v.body or b""
    return fhir_response(body, w.status, v, location)


def _page_params(items: list[tuple[str, str]], allowed: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in items:
        if k not in allowed:
            raise FhirError(400, f"parameter '{k}' is not supported here (supported: {', '.join(allowed)})")
        if k in out:
            raise FhirError(400, f"{k} given more than once")
        out[k] = v
    if "_format" in out:
        fsearch.check_format(out["_format"])
    return out


def _int(p: dict[str, str], name: str, default: int) -> int:
    raw = p.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise FhirError(400, f"{name}={raw!r} must be a non-negative integer")
    return int(raw)


# ---------------------------------------------------------------------------- handlers
async def metadata(request: Request) -> Response:
    if request.method not in ("GET", "HEAD"):
        raise FhirError(405, f"{request.method} is not allowed on /metadata")
    check_accept(request)
    from importlib.metadata import version

    from paritybed.fhir.capability import capability_bytes

    return fhir_response(capability_bytes(base_url(request), version("paritybed")))


async def system(request: Request) -> Response:
    """The base: POST a batch or transaction Bundle."""
    if request.method == "POST":
        check_accept(request)
        bundle = await json_body(request)
        answer = process(store_of(request), bundle, base_url(request),
                         validate_resources=request.app.state.validate_bundles)
        return fhir_response(orjson.dumps(answer))
    if request.method in ("GET", "HEAD"):
        raise FhirError(501, "system-level search is not supported: search a resource type (GET /fhir/<Type>?...)")
    raise FhirError(405, f"{request.method} is not allowed on the base")


async def type_level(request: Request) -> Response:
    rtype = request.path_params["type"]
    if rtype == "_history":
        raise FhirError(501, "system-level history is not supported: use /fhir/<Type>/_history")
    if rtype.startswith("$"):
        raise FhirError(501, f"operation {rtype} is not supported")
    check_type(rtype)
    check_accept(request)
    if request.method in ("GET", "HEAD"):
        body = fsearch.search_bundle(store_of(request), base_url(request), rtype, query_items(request), lenient=lenient(request))
        return fhir_response(body)
    if request.method == "POST":
        return await _create(request, rtype)
    if request.method in ("PUT", "DELETE", "PATCH"):
        raise FhirError(501, f"conditional {request.method} ({request.method} /fhir/{rtype}?...) is not supported")
    raise FhirError(405, f"{request.method} is not allowed on /fhir/{rtype}")


async def _create(request: Request, rtype: str) -> Response:
    resource = await json_body(request)
    if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
        found = resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
        raise FhirError(400, f"POST /fhir/{rtype} takes a {rtype}, got {found}")
    validate(resource)
    store = store_of(request)
    # Conditional create: If-None-Exist (the spec's header) or, as fhirpy sends it, the query.
    condition = request.headers.get("if-none-exist") or request.scope["query_string"].decode("latin-1")
    with store.atomic():
        if condition:
            ids = fsearch.find_ids(store, rtype, condition.lstrip("?"))
            if len(ids) > 1:
                raise FhirError(412, f"conditional create: {rtype}?{condition} matches more than one resource")
            if ids:
                v = store.read(rtype, ids[0])
                assert v is not None
                return _written(request, WriteResult(200, v))
        w = store.write(rtype, store.new_id(rtype), resource, method="POST", create_only=True)
    return _written(request, w)


async def instance(request: Request) -> Response:
    rtype, rid = request.path_params["type"], request.path_params["id"]
    if rid == "_history":
        return await _type_history(request, check_type(rtype))
    if rid == "_search" and request.method == "POST":
        return await _post_search(request, check_type(rtype))
    if rid.startswith("$") or rtype.startswith("$"):
        raise FhirError(501, f"operation {rid} is not supported")
    if rtype not in RESOURCE_TYPES:
        check_type(rtype)
    method = request.method
    if method in ("GET", "HEAD"):
        return _read(request, rtype, rid)
    check_id(rid)
    check_accept(request)
    if method == "PUT":
        return await _update(request, rtype, rid)
    if method == "DELETE":
        w = store_of(request).delete(rtype, rid)
        return fhir_response(orjson.dumps(information(f"{rtype}/{rid} deleted")), 200, w.version)
    if method == "PATCH":
        raise FhirError(501, "PATCH is not supported: send the whole resource with PUT")
    raise FhirError(405, f"{method} is not allowed on /fhir/{rtype}/{rid}")


def _read(request: Request, rtype: str, rid: str) -> Response:
    view = _read_view(rtype, query_items(request)) if request.scope["query_string"] else None
    if "accept" in request.headers:
        check_accept(request)
    v = store_of(request).read(rtype, rid)
    if v is None:
        raise FhirError(404, f"{rtype}/{rid} is not known")
    if v.deleted:
        return Response(FhirError(410, f"{rtype}/{rid} was deleted").body(), 410,
                        headers={"ETag": v.etag}, media_type=FHIR_JSON)
    if request.headers.get("if-none-match") == v.etag:
        return Response(b"", 304, headers={"ETag": v.etag})
    body = v.body or b""
    if view is not None:
        body = shape.apply(body, view) if view.summary or view.elements else body
        if view.pretty:
            body = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    return fhir_response(body, 200, v)


@dataclass(frozen=True)
class _View(shape.Shape):
    pretty: bool = False


def _read_view(rtype: str, items: list[tuple[str, str]]) -> _View | None:
    """``_summary``, ``_elements``, ``_pretty`` and ``_format`` on a read (other parameters are
    ignored, as HAPI does)."""
    summary, elements, pretty = None, None, False
    for k, v in items:
        if k == "_format":
            fsearch.check_format(v)
        elif k == "_summary":
            mode = shape.parse_summary(v)
            if mode == "count":
                raise FhirError(400, "_summary=count applies to searches, not to a read")
            summary = None if mode == "false" else mode
        elif k == "_elements":
            elements = shape.parse_elements(rtype, v)
        elif k == "_pretty":
            pretty = v == "true"
    if summary and elements:
        raise FhirError(400, "_summary and _elements cannot be combined")
    return _View(summary, elements, pretty)


async def _update(request: Request, rtype: str, rid: str) -> Response:
    resource = await json_body(request)
    if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
        raise FhirError(400, f"PUT /fhir/{rtype}/{rid} takes a {rtype}")
    if resource.get("id") != rid:
        raise FhirError(400, f"resource id {resource.get('id')!r} must equal the id in the URL ({rid!r})")
    validate(resource)
    w = store_of(request).write(rtype, rid, resource, method="PUT", if_match=request.headers.get("if-match"))
    return _written(request, w)


async def _post_search(request: Request, rtype: str) -> Response:
    """``POST /fhir/<Type>/_search`` with form-encoded parameters (and/or a query string)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype and ctype != "application/x-www-form-urlencoded":
        raise FhirError(415, f"POST {rtype}/_search takes application/x-www-form-urlencoded parameters, not {ctype}")
    check_accept(request)
    form = (await request.body()).decode("utf-8")
    items = query_items(request) + parse_qsl(form, keep_blank_values=True)
    body = fsearch.search_bundle(store_of(request), base_url(request), rtype, items, lenient=lenient(request))
    return fhir_response(body)


async def instance_history(request: Request) -> Response:
    rtype, rid = check_type(request.path_params["type"]), request.path_params["id"]
    if request.method not in ("GET", "HEAD"):
        raise FhirError(405, f"{request.method} is not allowed on a history")
    check_id(rid)
    if store_of(request).read(rtype, rid) is None:
        raise FhirError(404, f"{rtype}/{rid} is not known")
    return _history(request, rtype, rid)


async def _type_history(request: Request, rtype: str) -> Response:
    if request.method not in ("GET", "HEAD"):
        raise FhirError(405, f"{request.method} is not allowed on a history")
    return _history(request, rtype, None)


def _history(request: Request, rtype: str, rid: str | None) -> Response:
    check_accept(request)
    p = _page_params(query_items(request), _HISTORY_PARAMS)
    count = min(_int(p, "_count", fsearch.DEFAULT_COUNT), fsearch.MAX_COUNT)
    offset = _int(p, "_offset", 0)
    since = None
    if "_since" in p:
        rng = parse_range(p["_since"])
        if rng is None:
            raise FhirError(400, f"_since={p['_since']!r} is not a FHIR instant")
        since = rng[0]
    total, rows = store_of(request).history(rtype, rid, since=since, count=count, offset=offset)
    base = base_url(request)
    path = f"{base}/{rtype}" + (f"/{rid}" if rid else "") + "/_history"
    kept = [(k, v) for k, v in query_items(request) if k not in ("_offset", "_count")] + [("_count", str(count))]

    def link(rel: str, off: int) -> dict[str, str]:
        return {"relation": rel, "url": f"{path}?{fsearch.encode_query([*kept, ('_offset', str(off))])}"}

    links = [link("self", offset)]
    if count and offset + count < total:
        links.append(link("next", offset + count))
    if offset and count:
        links.append(link("previous", max(0, offset - count)))
    entries = [_history_entry(base, v) for v in rows]
    return fhir_response(orjson.dumps({"resourceType": "Bundle", "type": "history", "total": total, "link": links, "entry": entries}))


def _history_entry(base: str, v: Version) -> dict[str, Any]:
    status = 200 if v.deleted else (201 if v.method == "POST" or v.version == 1 else 200)
    entry: dict[str, Any] = {"fullUrl": f"{base}/{v.type}/{v.id}"}
    if v.body is not None:
        entry["resource"] = orjson.Fragment(v.body)
    entry["request"] = {"method": v.method, "url": v.type if v.method == "POST" else f"{v.type}/{v.id}"}
    entry["response"] = {"status": status_line(status), "etag": v.etag, "lastModified": iso_instant(v.lu)}
    return entry


async def vread(request: Request) -> Response:
    rtype, rid = check_type(request.path_params["type"]), request.path_params["id"]
    if request.method not in ("GET", "HEAD"):
        raise FhirError(405, f"{request.method} is not allowed on a version")
    check_accept(request)
    vid = request.path_params["vid"]
    v = store_of(request).vread(rtype, check_id(rid), int(vid)) if vid.isdigit() else None
    if v is None:
        raise FhirError(404, f"{rtype}/{rid}/_history/{vid} is not known")
    if v.deleted:
        raise FhirError(410, f"{rtype}/{rid} version {vid} is a deletion")
    return fhir_response(v.body or b"", 200, v)


async def below_instance(request: Request) -> Response:
    """Paths below an instance that are not _history: a compartment search
    (``/fhir/Patient/1/Observation``), ``$operations`` (501), anything else 404."""
    rtype, rid, op = request.path_params["type"], request.path_params["id"], request.path_params["op"]
    if op.startswith("$"):
        raise FhirError(501, f"operation {op} is not supported")
    if op == "*":
        raise FhirError(501, f"searching every type of a compartment ({rtype}/{rid}/*) is not supported: name one type")
    if op not in RESOURCE_TYPES or rtype not in RESOURCE_TYPES:
        raise FhirError(404, f"no such path: {request.url.path}")
    if request.method not in ("GET", "HEAD"):
        raise FhirError(405, f"{request.method} is not allowed on a compartment search")
    check_id(rid)
    check_accept(request)
    body = fsearch.search_bundle(store_of(request), base_url(request), op, query_items(request),
                                 lenient=lenient(request), compartment_of=(rtype, rid))
    return fhir_response(body)
