"""``_include`` and ``_revinclude``: the resources a page of matches refers to, or that refer to it.

``_include=Observation:patient`` adds the Patients the matched Observations' ``patient``
parameter points at; ``_include=Observation:subject:Patient`` only those of that type;
``_include=Observation:*`` every reference parameter of the type.  ``_revinclude=Provenance:target``
adds the Provenances whose ``target`` points at a matched resource.  ``:iterate`` (and R4's
older ``:recurse``) applies the include again to what was included, up to `MAX_DEPTH` rounds.
Everything is read from the search index (reference rows are (target type, id)), so an include
is two indexed queries per round, and at most `MAX_INCLUDED` resources are added to a page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from paritybed.core import r4spec
from paritybed.fhir.outcome import FhirError
from paritybed.fhir.store import Store

MAX_DEPTH = 4  # rounds of :iterate after the first
MAX_INCLUDED = 1000  # included resources per page
_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True)
class Include:
    """One ``_include`` / ``_revinclude`` value."""

    reverse: bool
    iterate: bool
    source: str  # the type whose reference parameter is followed
    param: str | None  # None: every reference parameter of `source` (``*``)
    target: str | None  # only references to this type

    def codes(self) -> list[str]:
        params = r4spec.search_params(self.source)
        if self.param is not None:
            return [self.param]
        return sorted(c for c, p in params.items() if p.type == "reference" and p.indexable)

    def text(self) -> str:
        return ":".join(x for x in (self.source, self.param or "*", self.target) if x)


def parse(rtype: str, name: str, value: str) -> Include:
    """``_include[:iterate]=Source:param[:Target]`` (or ``*``); 400 naming what is wrong."""
    base, _, modifier = name.partition(":")
    reverse = base == "_revinclude"
    if modifier not in ("", "iterate", "recurse"):
        raise FhirError(400, f"{base}:{modifier}: the only modifier is :iterate")
    iterate = bool(modifier)
    if value == "*" and not reverse:
        return Include(False, iterate, rtype, None, None)
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise FhirError(400, f"{name}={value!r}: expected SourceType:parameter[:TargetType]")
    source, code, target = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    if not r4spec.is_resource_type(source):
        raise FhirError(400, f"{name}={value!r}: {source!r} is not an R4 resource type")
    if not reverse and not iterate and source != rtype:
        raise FhirError(400, f"{name}={value!r}: the search is on {rtype}; including from {source} needs {base}:iterate")
    if code == "*":
        if reverse:
            raise FhirError(400, f"{name}={value!r}: _revinclude takes one parameter, not '*'")
        return Include(False, iterate, source, None, target)
    p = r4spec.search_params(source).get(code)
    if p is None or p.type != "reference":
        raise FhirError(400, f"{name}={value!r}: {source} has no reference parameter '{code}'")
    if target is not None and target not in p.targets:
        raise FhirError(400, f"{name}={value!r}: {source}.{code} refers to {', '.join(p.targets)}, not {target}")
    if reverse and not iterate and target is not None and target != rtype:
        raise FhirError(400, f"{name}={value!r}: the search is on {rtype}, not {target}")
    return Include(reverse, iterate, source, code, target)


Resource = tuple[int, str, str, bytes]  # rid, type, id, body


def _chunks(items: list, n: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _forward(store: Store, inc: Include, frontier: list[Resource]) -> set[tuple[str, str]]:
    """(type, id) the frontier's resources of type `inc.source` refer to through the include."""
    rids = [r[0] for r in frontier if r[1] == inc.source]
    keys = [f"{inc.source}.{c}" for c in inc.codes()]
    if not rids or not keys:
        return set()
    out: set[tuple[str, str]] = set()
    for chunk in _chunks(rids):
        rows = store.query(
            f"SELECT sys, val FROM tokens WHERE rid IN ({','.join('?' * len(chunk))}) "
            f"AND param IN ({','.join('?' * len(keys))}) AND sys IS NOT NULL",
            [*chunk, *keys],
        )
        out.update((s, v) for s, v in rows if inc.target is None or s == inc.target)
    return out


def _reverse(store: Store, inc: Include, frontier: list[Resource]) -> list[Resource]:
    """Resources of type `inc.source` whose parameter refers to a frontier resource."""
    key = f"{inc.source}.{inc.param}"
    out: list[Resource] = []
    by_type: dict[str, list[str]] = {}
    for _, t, i, _ in frontier:
        if inc.target is None or t == inc.target:
            by_type.setdefault(t, []).append(i)
    for t, ids in by_type.items():
        for chunk in _chunks(ids):
            out.extend(store.query(
                "SELECT r.rid, r.type, r.id, r.body FROM tokens x JOIN resources r ON r.rid = x.rid "
                f"WHERE x.param=? AND x.sys=? AND x.val IN ({','.join('?' * len(chunk))}) AND r.deleted=0",
                [key, t, *chunk],
            ))
    return out


def _fetch(store: Store, wanted: set[tuple[str, str]]) -> list[Resource]:
    by_type: dict[str, list[str]] = {}
    for t, i in sorted(wanted):
        by_type.setdefault(t, []).append(i)
    out: list[Resource] = []
    for t, ids in by_type.items():
        for chunk in _chunks(ids):
            out.extend(store.query(
                f"SELECT rid, type, id, body FROM resources WHERE type=? AND deleted=0 AND id IN ({','.join('?' * len(chunk))})",
                [t, *chunk],
            ))
    return out


def resolve(store: Store, matches: list[Resource], includes: list[Include]) -> list[Resource]:
    """The included resources of a page (each once, none that is already a match), in the
    order they were found."""
    seen = {(r[1], r[2]) for r in matches}
    added: list[Resource] = []
    frontier = matches
    for depth in range(MAX_DEPTH + 1):
        active = includes if depth == 0 else [i for i in includes if i.iterate]
        if not active or not frontier:
            break
        found: list[Resource] = []
        wanted: set[tuple[str, str]] = set()
        for inc in active:
            if inc.reverse:
                found.extend(_reverse(store, inc, frontier))
            else:
                wanted |= _forward(store, inc, frontier)
        found.extend(_fetch(store, wanted - seen))
        new: list[Resource] = []
        for r in found:
            if (r[1], r[2]) not in seen and len(added) < MAX_INCLUDED:
                seen.add((r[1], r[2]))
                new.append(r)
                added.append(r)
        frontier = new
    return added
