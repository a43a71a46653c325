"""Type-level and compartment search: query string -> SQL over the write-time index -> searchset.

The grammar is FHIR R4's (search.html), with the parameters of the R4 SearchParameter
definitions (`paritybed.core.r4spec`): every parameter of the type and the common ones, the
modifiers of fhir/conditions.py, chained parameters (``subject:Patient.name=x``, several hops),
reverse chains (``_has:Observation:patient:code=x``, nested), compartments
(``Patient/1/Observation``), and the result parameters ``_count _offset _sort _total _summary
_elements _include _revinclude _format _pretty``.

Strict by default, as the spec recommends and as HAPI answers: an unknown or unsupported
parameter, modifier or prefix is a 400 naming it, never silently ignored, because an ignored
filter returns *more* patient data than the client asked for.  A client can opt into
``Prefer: handling=lenient``; unknown and unsupported parameters are then dropped (and left out
of the links).  A malformed value stays a 400 either way.

Paging is offset-based and stateless: ``next``/``previous`` links repeat the request's own
path and parameters with ``_offset=N`` appended (``_count`` always present), for example
``/fhir/Observation?patient=X&category=laboratory&_count=50&_offset=50``.  HAPI's
``_getpages`` cursors are not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol
from urllib.parse import parse_qsl, quote

import orjson

from paritybed.core import r4spec
from paritybed.core.r4spec import SearchParam
from paritybed.fhir import conditions as cond
from paritybed.fhir import includes as inc
from paritybed.fhir import shape
from paritybed.fhir.index import COLUMN_PARAMS, TEXT
from paritybed.fhir.outcome import FhirError
from paritybed.fhir.store import Store

DEFAULT_COUNT = 20  # HAPI's default page size
MAX_COUNT = 1000
#: Matches of a search kept for its pages (beyond: the number is kept, each page is a query).
KEPT_MATCHES = 2000
MAX_CHAIN = 4  # hops of a chain or nested _has

#: Result parameters understood on every search (each at most once).
RESULT_PARAMS = ("_count", "_offset", "_sort", "_total", "_summary", "_elements", "_format", "_pretty",
                 "_contained", "_containedType")
INCLUDE_PARAMS = ("_include", "_revinclude")
#: Standard parameters this server does not implement: 400 (strict) with this reason.
UNSUPPORTED = {
    "_type": "system-level search is not supported: search one type",
    "_list": "search by List membership is not supported",
    "_query": "named queries are not supported",
    "_filter": "_filter is not supported",
    "_containedType": "searching contained resources is not supported",
}
JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
_SAFE = ":/|,.-_~$@!*'()"
_TABLE = {"token": "tokens", "reference": "tokens", "string": "tokens", "uri": "tokens", "date": "dates",
          "number": "numbers", "quantity": "numbers", "composite": "combos"}
_RANK = {"reference": 0, "token": 1, "string": 2, "uri": 2, "date": 3, "number": 3, "quantity": 3}


class UnknownParameter(FhirError):
    """A parameter the server does not know or does not support: dropped under lenient handling."""

    def __init__(self, text: str) -> None:
        super().__init__(400, text)


def encode_query(items: list[tuple[str, str]]) -> str:
    """Query string with FHIR's separators (``|``, ``,``, ``:``) left readable."""
    return "&".join(f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in items)


def check_format(value: str) -> None:
    """406 for any ``_format`` other than JSON (the server speaks JSON only)."""
    if value not in JSON_FORMATS:
        raise FhirError(406, f"_format={value} is not supported: this server answers JSON only")


# --------------------------------------------------------------------------- conditions
class Cond(Protocol):
    rank: int
    negated: bool

    def sql(self, driving: bool, alias: str) -> tuple[str, list[Any]]: ...


@dataclass(frozen=True)
class IndexCond:
    """A test on index rows of the resource: ``param IN keys AND (ors)``."""

    rank: int  # lower = likely more selective: drives the query
    table: str
    keys: tuple[str, ...]
    ors: str
    args: tuple[Any, ...]
    negated: bool = False

    def sql(self, driving: bool, alias: str) -> tuple[str, list[Any]]:
        keys = "param=?" if len(self.keys) == 1 else f"param IN ({','.join('?' * len(self.keys))})"
        args = [*self.keys, *self.args]
        if driving:
            return f"{alias}.rid IN (SELECT rid FROM {self.table} WHERE {keys} AND ({self.ors}))", args
        neg = "NOT " if self.negated else ""
        return f"{neg}EXISTS (SELECT 1 FROM {self.table} x WHERE x.rid={alias}.rid AND x.{keys} AND ({self.ors}))", args


@dataclass(frozen=True)
class RawCond:
    """Any other test of the resource row (``_id``, ``_lastUpdated``, ``_has``, composites);
    `render(alias, driving)` may answer the driving form (``alias.rid IN (...)``) or not."""

    rank: int
    render: Callable[[str, bool], tuple[str, list[Any]]]
    negated: bool = False

    def sql(self, driving: bool, alias: str) -> tuple[str, list[Any]]:
        return self.render(alias, driving)


class Aliases:
    """Fresh table aliases for nested subqueries (chains, _has)."""

    def __init__(self) -> None:
        self.n = 0

    def new(self) -> str:
        self.n += 1
        return f"r{self.n}"


def matching_ids(rtype: str, conds: list[Cond], alias: str, column: str = "id") -> tuple[str, list[Any]]:
    """SQL selecting `column` of the live resources of `rtype` that meet every condition."""
    clauses, args = [f"{alias}.type=?", f"{alias}.deleted=0"], [rtype]
    for i, c in enumerate(sorted(conds, key=lambda c: c.rank)):
        sql, a = c.sql(driving=i == 0 and not c.negated, alias=alias)
        clauses.append(sql)
        args.extend(a)
    return f"SELECT {alias}.{column} FROM resources {alias} WHERE {' AND '.join(clauses)}", args


# ------------------------------------------------------------------------ parameters
def known_names(rtype: str) -> str:
    return ", ".join(sorted(r4spec.search_params(rtype)))


def parameter(rtype: str, name: str, raw: str, aliases: Aliases, depth: int = 0) -> Cond:
    """The condition of one search parameter (``name`` as written, with modifier or chain)."""
    if depth > MAX_CHAIN:
        raise FhirError(400, f"{name}: chains and _has nest at most {MAX_CHAIN} deep here")
    if name.startswith("_has:"):
        return _has(rtype, name, raw, aliases, depth)
    head, dot, rest = name.partition(".")
    if dot:
        return _chain(rtype, head, rest, raw, aliases, depth)
    code, _, modifier = name.partition(":")
    if code == "_id":
        return _id(modifier, raw)
    if code == "_lastUpdated":
        return _last_updated(modifier, raw)
    if code in ("_text", "_content"):
        return _text_scan(rtype, code, modifier, raw)
    if code in UNSUPPORTED:
        raise UnknownParameter(f"search parameter '{code}': {UNSUPPORTED[code]}")
    p = r4spec.search_params(rtype).get(code)
    if p is None:
        raise UnknownParameter(f"unknown search parameter '{code}' for {rtype} (R4 defines: {known_names(rtype)})")
    if not p.indexable or p.type == "special":
        why = p.note or f"{p.type} parameters are not supported"
        raise UnknownParameter(f"search parameter '{code}' of {rtype} is not supported by this server: {why}")
    return _indexed(rtype, p, modifier or None, raw)


def _values(code: str, raw: str) -> list[str]:
    values = cond.split_escaped(raw, ",")
    if any(v == "" for v in values):
        raise FhirError(400, f"empty value in {code}={raw!r}")
    return values


def _indexed(rtype: str, p: SearchParam, modifier: str | None, raw: str) -> Cond:
    key = f"{rtype}.{p.code}"
    table = _TABLE[p.type]
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise FhirError(400, f"{p.code}:missing must be true or false")
        return IndexCond(9, table, (key,), "1", (), negated=raw == "true")
    type_modifier = None
    if p.type == "reference" and modifier and modifier[:1].isupper():
        if modifier not in p.targets:
            raise FhirError(400, f"{p.code}:{modifier}: {rtype}.{p.code} refers to {', '.join(p.targets)}")
        type_modifier = modifier
    elif modifier is not None and modifier not in cond.MODIFIERS[p.type]:
        allowed = ", ".join(f":{m}" for m in sorted(cond.MODIFIERS[p.type] | {"missing"}))
        raise UnknownParameter(f"modifier ':{modifier}' is not supported on {p.type} parameter '{p.code}' (supported: {allowed})")
    if p.type == "composite":
        return _composite(rtype, key, p, raw)
    ors, args = [], []
    for value in _values(p.code, raw):
        if p.type == "reference":
            sql, a = cond.reference(p, value, type_modifier)
        else:
            sql, a = cond.simple(p.type, p.code, value, modifier)
        ors.append(sql)
        args.extend(a)
    if modifier == "text":
        key += TEXT
    negated = modifier == "not"
    return IndexCond(9 if negated else _RANK[p.type], table, (key,), " OR ".join(ors), tuple(args), negated)


def _composite(rtype: str, key: str, p: SearchParam, raw: str) -> Cond:
    """``code-value-quantity=http://loinc.org|8480-6$gt140``: every component on one root."""
    n = len(p.components)
    tests: list[tuple[str, list[Any]]] = []
    for value in _values(p.code, raw):
        parts = cond.split_escaped(value, "$")
        if len(parts) != n:
            names = "$".join(c.param for c in p.components)
            raise FhirError(400, f"{p.code}={value!r}: expected {n} components separated by '$' ({names})")
        clauses, args = [], []
        for i, (comp, part) in enumerate(zip(p.components, parts)):
            columns = cond.combo_columns(f"c{i}")
            if comp.type == "reference":
                part_param = r4spec.search_params(rtype).get(comp.param) or SearchParam(comp.param, "reference", ())
                sql, a = cond.reference(part_param, part, None, columns)
            else:
                sql, a = cond.simple(comp.type, f"{p.code} ({comp.param})", part, None, columns)
            clauses.append(f"c{i}.comp={i} AND {sql}")
            args.extend(a)
        joins = "".join(f" JOIN combos c{i} ON c{i}.rid=c0.rid AND c{i}.param=c0.param AND c{i}.grp=c0.grp"
                        for i in range(1, n))
        tests.append((f"FROM combos c0{joins} WHERE c0.param=? AND {' AND '.join(clauses)}", args))

    def render(alias: str, driving: bool) -> tuple[str, list[Any]]:
        args = [x for _, a in tests for x in (key, *a)]
        if driving:  # the first component's index drives, the others join on (rid, grp)
            return f"{alias}.rid IN ({' UNION '.join(f'SELECT c0.rid {body}' for body, _ in tests)})", args
        return f"({' OR '.join(f'EXISTS (SELECT 1 {body} AND c0.rid={alias}.rid)' for body, _ in tests)})", args

    return RawCond(2, render)


def _id(modifier: str, raw: str) -> Cond:
    if modifier:
        raise UnknownParameter(f"modifier ':{modifier}' is not supported on _id")
    ids = [cond.unescape(v) for v in _values("_id", raw)]
    return RawCond(0, lambda a, _: (f"{a}.id IN ({','.join('?' * len(ids))})", list(ids)))


def _last_updated(modifier: str, raw: str) -> Cond:
    if modifier:
        raise UnknownParameter(f"modifier ':{modifier}' is not supported on _lastUpdated")
    values = _values("_lastUpdated", raw)

    def render(alias: str, _: bool) -> tuple[str, list[Any]]:
        cols = cond.Columns(lo=f"{alias}.lu", hi=f"({alias}.lu + 0.001)")
        parts = [cond.date("_lastUpdated", v, cols) for v in values]
        return f"({' OR '.join(p[0] for p in parts)})", [x for p in parts for x in p[1]]

    return RawCond(4, render)


def _text_scan(rtype: str, code: str, modifier: str, raw: str) -> Cond:
    """``_content`` (the whole resource) and ``_text`` (its narrative): a case-insensitive
    substring test over the stored JSON of the type's resources, a scan (no full-text index)."""
    if modifier:
        raise UnknownParameter(f"modifier ':{modifier}' is not supported on {code}")
    if code == "_text" and rtype in ("Binary", "Bundle", "Parameters"):
        raise UnknownParameter(f"{rtype} has no narrative: _text does not apply")
    values = [cond.unescape(v).lower() for v in _values(code, raw)]

    def render(alias: str, _: bool) -> tuple[str, list[Any]]:
        target = f"lower(CAST({alias}.body AS TEXT))" if code == "_content" \
            else f"lower(json_extract(CAST({alias}.body AS TEXT), '$.text.div'))"
        return f"({' OR '.join(f'instr({target}, ?) > 0' for _ in values)})", list(values)

    return RawCond(8, render)


def _reference_param(rtype: str, code: str, what: str) -> SearchParam:
    p = r4spec.search_params(rtype).get(code)
    if p is None:
        raise UnknownParameter(f"{what}: {rtype} has no search parameter '{code}'")
    if p.type != "reference" or not p.indexable:
        raise FhirError(400, f"{what}: {rtype}.{code} is a {p.type} parameter, not a reference: it cannot be chained")
    return p


def _chain(rtype: str, head: str, rest: str, raw: str, aliases: Aliases, depth: int) -> Cond:
    """``subject:Patient.name=x``: a reference whose target matches the rest of the chain."""
    code, _, type_modifier = head.partition(":")
    what = f"chained parameter '{head}.{rest}'"
    p = _reference_param(rtype, code, what)
    next_code = rest.split(".", 1)[0].split(":", 1)[0]
    if type_modifier:
        if type_modifier not in p.targets:
            raise FhirError(400, f"{what}: {rtype}.{code} refers to {', '.join(p.targets)}, not {type_modifier}")
        targets = [type_modifier]
    else:
        targets = [t for t in p.targets if next_code in r4spec.search_params(t) or next_code in COLUMN_PARAMS
                   or next_code == "_has"]
        if not targets:
            raise UnknownParameter(f"{what}: no type {rtype}.{code} refers to has a parameter '{next_code}'")
    ors, args = [], []
    for target in targets:
        alias = aliases.new()
        inner = parameter(target, rest, raw, aliases, depth + 1)
        sub, sub_args = matching_ids(target, [inner], alias)
        ors.append(f"(sys=? AND val IN ({sub}))")
        args.extend([target, *sub_args])
    return IndexCond(4, "tokens", (f"{rtype}.{code}",), " OR ".join(ors), tuple(args))


def _has(rtype: str, name: str, raw: str, aliases: Aliases, depth: int) -> Cond:
    """``_has:Observation:patient:code=x``: resources some Observation refers to through
    ``patient`` and whose code is x (the rest may be another ``_has``)."""
    parts = name.split(":", 3)
    if len(parts) < 4 or not parts[3]:
        raise FhirError(400, f"{name}: expected _has:Type:reference-parameter:parameter")
    _, source, code, rest = parts
    if not r4spec.is_resource_type(source):
        raise FhirError(400, f"{name}: {source!r} is not an R4 resource type")
    p = _reference_param(source, code, name)
    if p.targets and rtype not in p.targets:
        raise FhirError(400, f"{name}: {source}.{code} refers to {', '.join(p.targets)}, not {rtype}")
    alias = aliases.new()
    inner = parameter(source, rest, raw, aliases, depth + 1)
    sub, sub_args = matching_ids(source, [inner], alias, column="rid")
    key = f"{source}.{code}"

    def render(a: str, _: bool) -> tuple[str, list[Any]]:
        return (f"{a}.id IN (SELECT h.val FROM tokens h WHERE h.param=? AND h.sys=? AND h.rid IN ({sub}))",
                [key, rtype, *sub_args])

    return RawCond(6, render)


def compartment(owner: str, owner_id: str, rtype: str) -> Cond:
    """Membership of `rtype` resources in the compartment of ``owner/owner_id``: any of the
    compartment definition's parameters refers to it (the owner itself is in its compartment)."""
    if owner not in r4spec.compartment_types():
        raise FhirError(400, f"{owner} defines no compartment (R4 compartments: {', '.join(r4spec.compartment_types())})")
    members = r4spec.compartment(owner)
    if rtype not in members and rtype != owner:
        raise FhirError(400, f"{rtype} is not in the {owner} compartment")
    keys = tuple(f"{rtype}.{c}" for c in members.get(rtype, ()) if c != "{def}")
    index = IndexCond(0, "tokens", keys, "sys=? AND val=?", (owner, owner_id)) if keys else None
    if rtype != owner:
        assert index is not None
        return index

    def render(alias: str, _: bool) -> tuple[str, list[Any]]:
        if index is None:
            return f"{alias}.id=?", [owner_id]
        sql, args = index.sql(False, alias)
        return f"({alias}.id=? OR {sql})", [owner_id, *args]

    return RawCond(0, render)


# ----------------------------------------------------------------------------- search
@dataclass
class Search:
    """A parsed search: conditions on ``resources r`` plus paging, sorting and result shape."""

    rtype: str
    path: str = ""  # relative path of the links: ``Observation`` or ``Patient/1/Observation``
    conds: list[Cond] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    order_args: list[Any] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    with_total: bool = True
    includes: list[inc.Include] = field(default_factory=list)
    shape: shape.Shape | None = None
    pretty: bool = False
    kept: list[tuple[str, str]] = field(default_factory=list)  # for the links, minus _offset


def _int(name: str, value: str, lo: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise FhirError(400, f"{name}={value!r} is not an integer") from None
    if n < lo:
        raise FhirError(400, f"{name}={value} must be >= {lo}")
    return n


def _sort(s: Search, raw: str) -> None:
    params = r4spec.search_params(s.rtype)
    for item in raw.split(","):
        desc = item.startswith("-")
        name = item[1:] if desc else item
        p = params.get(name)
        if name == "_lastUpdated":
            expr, args = "r.lu", []
        elif name == "_id":
            expr, args = "r.id", []
        elif p is not None and p.indexable and p.type in _RANK:
            col = {"tokens": "val", "dates": "lo", "numbers": "lo"}[_TABLE[p.type]]
            expr = f"(SELECT min({col}) FROM {_TABLE[p.type]} d WHERE d.rid=r.rid AND d.param=?)"
            args = [f"{s.rtype}.{name}"]
        else:
            raise FhirError(400, f"_sort={item!r}: {s.rtype} has no sortable parameter '{name}' "
                                 "(_id, _lastUpdated or a parameter of the type, each optionally with '-')")
        # A resource may lack the element: those sort last (one index lookup per candidate with
        # NULLS LAST, where a separate "IS NULL" key looked the value up twice).
        nulls = " NULLS LAST" if expr.startswith("(") else ""
        s.order.append(f"{expr} {'DESC' if desc else 'ASC'}{nulls}")
        s.order_args.extend(args)


def _result(s: Search, name: str, raw: str) -> None:
    base, _, modifier = name.partition(":")
    if modifier:
        raise FhirError(400, f"{base} takes no modifier")
    if base == "_count":
        s.count = min(_int("_count", raw, 0), MAX_COUNT)
    elif base == "_offset":
        s.offset = _int("_offset", raw, 0)
    elif base == "_sort":
        _sort(s, raw)
    elif base == "_total":
        if raw not in ("none", "estimate", "accurate"):
            raise FhirError(400, "_total must be none, estimate or accurate")
        s.with_total = raw != "none"
    elif base == "_summary":
        mode = shape.parse_summary(raw)
        if s.shape is not None and mode not in ("count", "false"):
            raise FhirError(400, "_summary and _elements cannot be combined")
        if mode == "count":
            s.count = 0
        elif mode != "false":
            s.shape = shape.Shape(summary=mode)
    elif base == "_elements":
        if s.shape is not None:
            raise FhirError(400, "_summary and _elements cannot be combined")
        s.shape = shape.Shape(elements=shape.parse_elements(s.rtype, raw))
    elif base == "_format":
        check_format(raw)
    elif base == "_pretty":
        if raw not in ("true", "false"):
            raise FhirError(400, "_pretty must be true or false")
        s.pretty = raw == "true"
    elif base == "_contained":
        if raw != "false":
            raise UnknownParameter(f"_contained={raw}: searching contained resources is not supported")
    else:
        raise UnknownParameter(f"search parameter '{base}': {UNSUPPORTED[base]}")


def parse(rtype: str, items: list[tuple[str, str]], *, lenient: bool = False,
          compartment_of: tuple[str, str] | None = None) -> Search:
    """Parse the parameters of a search on `rtype` (already checked to be a resource type),
    optionally inside the compartment of (owner type, owner id)."""
    s = Search(rtype, path=rtype)
    if compartment_of is not None:
        s.conds.append(compartment(*compartment_of, rtype))
        s.path = f"{compartment_of[0]}/{compartment_of[1]}/{rtype}"
    aliases = Aliases()
    seen: set[str] = set()
    for name, raw in items:
        base = name.partition(":")[0]
        try:
            if base in RESULT_PARAMS:
                if base in seen:
                    raise FhirError(400, f"{base} given more than once")
                seen.add(base)
                _result(s, name, raw)
                if base == "_offset":
                    continue  # the links add their own _offset
            elif base in INCLUDE_PARAMS:
                s.includes.append(inc.parse(rtype, name, raw))
            else:
                s.conds.append(parameter(rtype, name, raw, aliases))
        except UnknownParameter:
            if lenient:
                continue
            raise
        s.kept.append((name, raw))
    return s


# -------------------------------------------------------------------------------- run
def _total(store: Store, s: Search, conds: list[Cond]) -> int:
    """Number of matches.  With a positive index condition and nothing else, counted on the
    index alone (index rows exist only for live resources of the type): ~40% cheaper than
    going through ``resources``, and ``total`` is on every search page."""
    if len(conds) >= 1 and isinstance(conds[0], IndexCond) and not conds[0].negated \
            and all(isinstance(c, IndexCond) for c in conds):
        d, rest = conds[0], conds[1:]
        keys = "param=?" if len(d.keys) == 1 else f"param IN ({','.join('?' * len(d.keys))})"
        clauses, args = [f"d.{keys} AND ({d.ors})"], [*d.keys, *d.args]
        for c in rest:
            sql, a = c.sql(driving=False, alias="d")
            clauses.append(sql)
            args.extend(a)
        return store.query(f"SELECT count(DISTINCT d.rid) FROM {d.table} d WHERE {' AND '.join(clauses)}", args)[0][0]
    sql, args = matching_ids(s.rtype, conds, "r", column="rid")
    return store.query(f"SELECT count(*) FROM ({sql})", args)[0][0]


Row = tuple[int, str, str, bytes]  # rid, type, id, body


def run(store: Store, s: Search) -> tuple[int | None, list[Row], list[Row]]:
    """(total, matches of the page, included resources).

    A search on the type's own index (every condition an index test of the resource itself, no
    chain, ``_has`` or compartment) depends on resources of that type only: its matches, in the
    search's order, are kept (`Store.remembered`) until a resource of the type is written, and its
    pages and its total come from them, as HAPI FHIR pages through a search's stored result list.
    The agents' second page (``_offset=50``) then costs one read of 50 bodies by key, and no page
    needs a separate count (docs/fhir.md, "Performance")."""
    conds = sorted(s.conds, key=lambda c: c.rank)
    # The most selective positive condition drives (IN over its index), the others are checked
    # per candidate (EXISTS on the index by rid): measured ~10x faster than IN for all.
    clauses, args = ["r.type=?", "r.deleted=0"], [s.rtype]
    for i, c in enumerate(conds):
        sql, a = c.sql(driving=i == 0 and not c.negated, alias="r")
        clauses.append(sql)
        args.extend(a)
    where, order = " AND ".join(clauses), ", ".join([*s.order, "r.rid"])
    total: int | None = None
    kept: list[int] | None = None
    if all(isinstance(c, IndexCond) for c in conds):
        total, kept = store.remembered(s.rtype, ("search", where, tuple(args), order, tuple(s.order_args)),
                                       lambda: _matches(store, s, conds, where, args, order))
    elif s.with_total:
        total = _total(store, s, conds)
    rows: list[Row] = []
    if kept is not None:
        rows = store.rows_by_rid(kept[s.offset:s.offset + s.count]) if s.count > 0 else []
    elif s.count > 0 and (total is None or s.offset < total):
        if s.order:
            # Sorted: the page's ids first, its bodies after.  Sorting (id, body) rows copied every
            # matching body into SQLite's sorter; sorting ids and then reading one page of bodies
            # by primary key halved the agents' sorted searches (docs/fhir.md, "Performance").
            page = store.query(f"SELECT r.rid FROM resources r WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                               [*args, *s.order_args, s.count, s.offset])
            rows = store.rows_by_rid([rid for rid, in page])
        else:  # in id order SQLite stops at the page without a sorter: one query is cheaper
            rows = store.query(f"SELECT r.rid, r.type, r.id, r.body FROM resources r WHERE {where} "
                               f"ORDER BY {order} LIMIT ? OFFSET ?", [*args, s.count, s.offset])
    included = inc.resolve(store, rows, s.includes) if s.includes and rows else []
    return (total if s.with_total else None), rows, included


def _matches(store: Store, s: Search, conds: list[Cond], where: str, args: list[Any],
             order: str) -> tuple[int, list[int] | None]:
    """(number of matches, their ids in the search's order), or (number, None) beyond
    `KEPT_MATCHES` (each page is then a query of its own)."""
    rids = [rid for rid, in store.query(f"SELECT r.rid FROM resources r WHERE {where} ORDER BY {order} LIMIT ?",
                                        [*args, *s.order_args, KEPT_MATCHES + 1])]
    if len(rids) <= KEPT_MATCHES:
        return len(rids), rids
    return _total(store, s, conds), None


def find_ids(store: Store, rtype: str, query: str, limit: int = 2) -> list[str]:
    """Ids matching a search query string (conditional references, ifNoneExist, If-None-Exist)."""
    s = parse(rtype, parse_qsl(query, keep_blank_values=True))
    s.count, s.offset, s.with_total, s.includes = limit, 0, False, []
    return [row[2] for row in run(store, s)[1]]


def bundle(base: str, s: Search, total: int | None, rows: list[Row], included: list[Row] = ()) -> bytes:
    """The searchset Bundle: envelope by orjson, stored resource bodies spliced in as bytes."""
    kept = s.kept if any(k == "_count" for k, _ in s.kept) else [*s.kept, ("_count", str(s.count))]
    url = f"{base}/{s.path}"

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

    def body(raw: bytes) -> Any:
        out = shape.apply(raw, s.shape) if s.shape is not None else raw
        return orjson.loads(out) if s.pretty else orjson.Fragment(out)

    entries = [
        {"fullUrl": f"{base}/{t}/{rid}", "resource": body(b), "search": {"mode": mode}}
        for part, mode in ((rows, "match"), (included, "include"))
        for _, t, rid, b in part
    ]
    if entries:
        # Stored bodies are spliced in as they are (orjson.Fragment): no parse, no re-encode.
        head["entry"] = entries
    return orjson.dumps(head, option=orjson.OPT_INDENT_2 if s.pretty else 0)


def search_bundle(store: Store, base: str, rtype: str, items: list[tuple[str, str]], *, lenient: bool = False,
                  compartment_of: tuple[str, str] | None = None) -> bytes:
    """Parse, run and render one search (the HTTP routes and bundle GET entries use it)."""
    s = parse(rtype, items, lenient=lenient, compartment_of=compartment_of)
    total, rows, included = run(store, s)
    return bundle(base, s, total, rows, included)

