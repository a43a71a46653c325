"""Type-level search: query string -> SQL over the write-time index -> searchset Bundle.

Strict by default, as the spec recommends and as HAPI answers: an unknown or unsupported
parameter, modifier or prefix is a 400 naming it, never silently ignored, because an ignored
filter returns *more* patient data than the client asked for.  A client can opt into
``Prefer: handling=lenient``; unknown parameters are then dropped (and left out of the links).

Paging is offset-based and stateless: ``next``/``previous`` links repeat the request's own
path and parameters with ``_offset=N`` appended (``_count`` always present), for example
``/fhir/Observation?patient=X&category=laboratory&_count=50&_offset=50``.  That is the form the
kernel's request parser recognizes; HAPI's ``_getpages`` cursors are not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from paritybed.fhir import dates
from paritybed.fhir.outcome import FhirError
from paritybed.fhir.params import Param, normalize_string, params_for, split_reference
from paritybed.fhir.store import Store

DEFAULT_COUNT = 20  # HAPI's default page size
MAX_COUNT = 1000

#: Result parameters understood on every search.
RESULT_PARAMS = ("_count", "_offset", "_sort", "_total", "_summary", "_format", "_pretty")
#: Standard parameters this server does not implement: 400 (strict) with this reason.
UNSUPPORTED = {
    "_include", "_revinclude", "_elements", "_contained", "_containedType", "_has", "_type",
    "_text", "_content", "_list", "_query", "_filter", "_security", "_tag", "_profile", "_source",
}
JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
_SAFE = ":/|,.-_~$@!*'()"


def encode_query(items: list[tuple[str, str]]) -> str:
    """Query string with FHIR's separators (``|``, ``,``, ``:``) left readable."""
    return "&".join(f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in items)


def check_format(value: str) -> None:
    """406 for any ``_format`` other than JSON (the server speaks JSON only)."""
    if value not in JSON_FORMATS:
        raise FhirError(406, f"_format={value} is not supported: this server answers JSON only")


@dataclass(frozen=True)
class IndexCond:
    """One parameter's test against an index table: ``param=? AND (ors)``."""

    rank: int  # lower = likely more selective: drives the query
    table: str
    key: str
    ors: str
    args: tuple[Any, ...]
    negated: bool = False

    def sql(self, driving: bool, alias: str = "r") -> str:
        if driving:
            return f"{alias}.rid IN (SELECT rid FROM {self.table} WHERE param=? AND ({self.ors}))"
        neg = "NOT " if self.negated else ""
        return f"{neg}EXISTS (SELECT 1 FROM {self.table} x WHERE x.rid={alias}.rid AND x.param=? AND ({self.ors}))"


_RANK = {"reference": 0, "token": 1, "string": 2, "date": 3}


@dataclass
class Search:
    """A parsed search: SQL conditions on ``resources r`` plus paging and sorting."""

    rtype: str
    where: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    conds: list[IndexCond] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    with_total: bool = True
    kept: list[tuple[str, str]] = field(default_factory=list)  # for the links, minus _offset


def _int(name: str, value: str, lo: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise FhirError(400, f"{name}={value!r} is not an integer") from None
    if n < lo:
        raise FhirError(400, f"{name}={value} must be >= {lo}")
    return n


def _token_or(value: str) -> tuple[str, list[Any]]:
    """``sys|code``, ``|code``, ``sys|`` or ``code`` as an SQL condition on tokens."""
    if "|" in value:
        sys, _, code = value.partition("|")
        if not sys and not code:
            raise FhirError(400, "empty token '|'")
        if not sys:
            return "(sys IS NULL AND val=?)", [code]
        if not code:
            return "(sys=?)", [sys]
        return "(val=? AND sys=?)", [code, sys]
    return "(val=?)", [value]


def _reference_or(p: Param, value: str, type_modifier: str | None) -> tuple[str, list[Any]]:
    """``id``, ``Type/id`` or an absolute URL as an SQL condition on the reference index."""
    if "/" in value:
        tid = split_reference(value)
        if tid is None:
            raise FhirError(400, f"{p.name}={value!r} is not a reference (Type/id or id)")
        if p.target and tid[0] != p.target:
            raise FhirError(400, f"{p.name} refers to {p.target}, not {tid[0]}")
        return "(val=? AND sys=?)", [tid[1], tid[0]]
    if type_modifier:
        return "(val=? AND sys=?)", [value, type_modifier]
    return "(val=?)", [value]


def _date_or(key: str, value: str, lo_col: str = "lo", hi_col: str = "hi") -> tuple[str, list[Any]]:
    prefix, text = dates.split_prefix(value)
    if prefix not in dates.PREFIXES:
        raise FhirError(400, f"date prefix '{prefix}' is not supported (supported: {', '.join(dates.PREFIXES)})")
    rng = dates.parse_range(text)
    if rng is None:
        raise FhirError(400, f"{key}={value!r}: not a FHIR date/dateTime (e.g. 2020, 2020-03-04, 2020-03-04T10:00:00Z)")
    return dates.sql_condition(prefix, lo_col, hi_col, rng[0], rng[1])


def _param_condition(s: Search, p: Param, modifier: str | None, raw: str) -> None:
    key = f"{s.rtype}.{p.name}"
    table = "dates" if p.kind == "date" else "tokens"
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise FhirError(400, f"{p.name}:missing must be true or false")
        s.conds.append(IndexCond(9, table, key, "1", (), negated=raw == "true"))
        return
    allowed = {"token": {None, "not"}, "reference": {None}, "date": {None}, "string": {None}}[p.kind]
    type_modifier = None
    if p.kind == "reference" and modifier and modifier[:1].isupper():
        type_modifier = modifier
    elif modifier not in allowed:
        raise FhirError(400, f"modifier ':{modifier}' is not supported on {p.kind} parameter '{p.name}'")
    ors, args = [], []
    for value in raw.split(","):
        if value == "":
            raise FhirError(400, f"empty value in {p.name}={raw!r}")
        if p.kind == "token":
            sql, a = _token_or(value)
        elif p.kind == "reference":
            sql, a = _reference_or(p, value, type_modifier)
        elif p.kind == "date":
            sql, a = _date_or(p.name, value)
        else:
            norm = normalize_string(value)
            sql, a = "(val >= ? AND val < ?)", [norm, norm + "\U0010ffff"]
        ors.append(sql)
        args.extend(a)
    negated = modifier == "not"
    s.conds.append(IndexCond(9 if negated else _RANK[p.kind], table, key, " OR ".join(ors), tuple(args), negated))


def _sort(s: Search, raw: str, params: dict[str, Param]) -> None:
    for item in raw.split(","):
        desc = item.startswith("-")
        name = item[1:] if desc else item
        if name == "_lastUpdated":
            expr = "r.lu"
        elif name == "_id":
            expr = "r.id"
        elif name in params and params[name].kind == "date":
            expr = f"(SELECT min(lo) FROM dates d WHERE d.rid=r.rid AND d.param='{s.rtype}.{name}')"
        else:
            dated = sorted(n for n, p in params.items() if p.kind == "date")
            raise FhirError(
                400,
                f"_sort={item!r} is not supported on {s.rtype} "
                f"(supported: _lastUpdated, _id{''.join(', ' + n for n in dated)}, each optionally with '-')",
            )
        if expr.startswith("("):  # a resource may lack the element: those sort last
            s.order.append(f"{expr} IS NULL")
        s.order.append(f"{expr} {'DESC' if desc else 'ASC'}")


def parse(rtype: str, items: list[tuple[str, str]], *, lenient: bool = False) -> Search:
    """Parse search parameters for `rtype` (already checked to be a resource type)."""
    s = Search(rtype)
    params = params_for(rtype)
    seen_result: set[str] = set()
    for name, raw in items:
        base, _, modifier = name.partition(":")
        if base in RESULT_PARAMS:
            if base in seen_result:
                raise FhirError(400, f"{base} given more than once")
            seen_result.add(base)
            if base == "_count":
                s.count = min(_int("_count", raw, 0), MAX_COUNT)
            elif base == "_offset":
                s.offset = _int("_offset", raw, 0)
                continue  # the links add their own _offset
            elif base == "_sort":
                _sort(s, raw, params)
            elif base == "_total":
                if raw not in ("none", "estimate", "accurate"):
                    raise FhirError(400, "_total must be none, estimate or accurate")
                s.with_total = raw != "none"
            elif base == "_summary":
                if raw == "count":
                    s.count = 0
                elif raw != "false":
                    raise FhirError(400, f"_summary={raw} is not supported (supported: count, false)")
            elif base == "_format":
                check_format(raw)
            s.kept.append((name, raw))
            continue
        if "." in base and base not in params:
            err = FhirError(400, f"chained parameter '{name}' is not supported")
        elif base in UNSUPPORTED:
            err = FhirError(400, f"search parameter '{base}' is not supported by this server")
        elif base == "_id":
            if modifier:
                raise FhirError(400, f"modifier ':{modifier}' is not supported on _id")
            ids = [v for v in raw.split(",") if v]
            if not ids:
                raise FhirError(400, "empty value in _id")
            s.where.append(f"r.id IN ({','.join('?' * len(ids))})")
            s.args.extend(ids)
            s.kept.append((name, raw))
            continue
        elif base == "_lastUpdated":
            if modifier:
                raise FhirError(400, f"modifier ':{modifier}' is not supported on _lastUpdated")
            ors, args = [], []
            for v in raw.split(","):
                sql, a = _date_or("_lastUpdated", v, "r.lu", "(r.lu + 0.001)")
                ors.append(sql)
                args.extend(a)
            s.where.append(f"({' OR '.join(ors)})")
            s.args.extend(args)
            s.kept.append((name, raw))
            continue
        elif base in params:
            _param_condition(s, params[base], modifier or None, raw)
            s.kept.append((name, raw))
            continue
        else:
            known = ", ".join(["_id", "_lastUpdated", *sorted(params)])
            err = FhirError(400, f"unknown search parameter '{base}' for {rtype} (supported: {known})")
        if not lenient:
            raise err
    return s


def _total(store: Store, s: Search, conds: list[IndexCond]) -> int:
    """Number of matches.  With a positive index condition and nothing on ``resources`` itself,
    counted on the index alone (index rows exist only for live resources of the type): ~40%
    cheaper than going through ``resources``, and ``total`` is on every search page."""
    if conds and not conds[0].negated and not s.where:
        d, rest = conds[0], conds[1:]
        clauses = [f"d.param=? AND ({d.ors})", *(c.sql(driving=False, alias="d") for c in rest)]
        args = [d.key, *d.args, *(a for c in rest for a in (c.key, *c.args))]
        sql = f"SELECT count(DISTINCT d.rid) FROM {d.table} d WHERE {' AND '.join(clauses)}"
        return store.query(sql, args)[0][0]
    clauses, args = ["r.type=?", "r.deleted=0", *s.where], [s.rtype, *s.args]
    for c in conds:
        clauses.append(c.sql(driving=False))
        args.extend([c.key, *c.args])
    return store.query(f"SELECT count(*) FROM resources r WHERE {' AND '.join(clauses)}", args)[0][0]


def run(store: Store, s: Search) -> tuple[int | None, list[tuple[str, bytes]]]:
    """(total, [(id, body)]) of one page of a parsed search."""
    clauses, args = ["r.type=?", "r.deleted=0", *s.where], [s.rtype, *s.args]
    # The most selective positive condition drives (IN over its index), the others are checked
    # per candidate (EXISTS on the index by rid): measured ~10x faster than IN for all.
    conds = sorted(s.conds, key=lambda c: c.rank)
    for i, c in enumerate(conds):
        clauses.append(c.sql(driving=i == 0 and not c.negated))
        args.extend([c.key, *c.args])
    where = " AND ".join(clauses)
    order = ", ".join([*s.order, "r.rid"])
    total = _total(store, s, conds) if s.with_total else None
    rows: list[tuple[str, bytes]] = []
    if s.count > 0 and (total is None or s.offset < total):
        rows = store.query(
            f"SELECT r.id, r.body FROM resources r WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*args, s.count, s.offset],
        )
    return total, rows


def find_ids(store: Store, rtype: str, query: str, limit: int = 2) -> list[str]:
    """Ids matching a search query string (conditional references, ifNoneExist, If-None-Exist)."""
    from urllib.parse import parse_qsl

    s = parse(rtype, parse_qsl(query, keep_blank_values=True))
    s.count, s.offset, s.with_total = limit, 0, False
    return [rid for rid, _ in run(store, s)[1]]


def bundle(base: str, s: Search, total: int | None, rows: list[tuple[str, bytes]]) -> bytes:
    """The searchset Bundle: envelope by orjson, stored resource bodies spliced in as bytes."""
    kept = s.kept if any(k == "_count" for k, _ in s.kept) else [*s.kept, ("_count", str(s.count))]
    url = f"{base}/{s.rtype}"

    def link(relation: str, offset: int) -> dict[str, str]:
        return {"relation": relation, "url": f"{url}?{encode_query([*kept, ('_offset', str(offset))])}"}

    links = [link("self", s.offset)]
    if s.count > 0 and (total is None and len(rows) == s.count or total is not None and s.offset + s.count < total):
        links.append(link("next", s.offset + s.count))
    if s.offset > 0 and s.count > 0:
        links.append(link("previous", max(0, s.offset - s.count)))
    head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        head["total"] = total
    head["link"] = links
    if rows:
        # Stored bodies are spliced in as they are (orjson.Fragment): no parse, no re-encode.
        head["entry"] = [
            {"fullUrl": f"{url}/{rid}", "resource": orjson.Fragment(body), "search": {"mode": "match"}}
            for rid, body in rows
        ]
    return orjson.dumps(head)


def search_bundle(store: Store, base: str, rtype: str, items: list[tuple[str, str]], *, lenient: bool = False) -> bytes:
    """Parse, run and render one search (the HTTP route and bundle GET entries use it)."""
    s = parse(rtype, items, lenient=lenient)
    total, rows = run(store, s)
    return bundle(base, s, total, rows)
