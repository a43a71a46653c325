"""A patient's chart as of one visit: the part of a Synthea record a derived patient copies.

A derived patient (fhir/derive.py) is built around one *anchor* encounter of a real Synthea
record: the visit the simulated hospital will see that patient for.  Copying the whole record
for each of ~6,000 patients a week would load ~2.5 million resources per arm (hours, tens of
GB), so a copy holds the record *as of the visit*:

* the Patient and their Coverage (already standalone: bundles are prepared, fhir/bundles.py);
* the anchor encounter, and every encounter that started up to ``history_days`` before it;
* every resource of those encounters (``encounter``, ``context``, ``item[].encounter``);
* what was still current at the visit: conditions with an onset before it and no abatement
  before it, allergies recorded before it, medication requests still active (as exported,
  authored before it), care plans and care teams whose period covers it;
* the Provenance, its targets cut to the resources of the chart;
* the closure: every resource a chart resource refers to (a claim's procedures, a request's
  medication, a report's results, a plan's conditions), except encounters outside the chart;
* not the payer's ExplanationOfBenefit (`NOT_CHARTED`).

And edited so that it is consistent and nothing in it lies in the visit's future:

* references to encounters outside the chart are removed (a problem-list entry keeps its
  condition, not a link to the visit years ago where it was first recorded);
* a condition abated, or a care plan or care team ended, after the visit is shown as it was at
  the visit: active, without the later abatement or end.

Everything else is the record exactly as Synthea wrote it.  What this costs in fidelity is in
docs/population.md ("Derived patients").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any, Iterator

import re

import orjson

URN = "urn:uuid:"
#: The id a reference names inside the bundle (``urn:uuid:X`` or ``Type/X``).
_REFERENCE = re.compile(rb'"reference":"(?:urn:uuid:|[A-Z][A-Za-z]+/)([^"\\/?#]+)"')
ALWAYS = ("Patient", "Coverage")
#: Not part of a chart: an ExplanationOfBenefit is the *payer's* adjudication (CARIN Blue
#: Button), not the hospital's record; its Coverage is already standalone (fhir/bundles.py).
#: Leaving it out also leaves out ~35% of a Synthea record's bytes.
NOT_CHARTED = frozenset({"ExplanationOfBenefit"})
#: Clinical-status codings as of the visit (CodeSystem condition-clinical; CarePlan/CareTeam status).
ACTIVE_CONDITION = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}


def instant(value: Any) -> datetime | None:
    """A FHIR date/dateTime as an aware datetime (dates and naive times as UTC); None if absent."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _period(r: dict[str, Any], key: str = "period") -> tuple[datetime | None, datetime | None]:
    p = r.get(key)
    if not isinstance(p, dict):
        return None, None
    return instant(p.get("start")), instant(p.get("end"))


def _local_id(ref: str) -> str | None:
    """The id of a reference within the bundle (``urn:uuid:X`` or ``Type/X``), else None."""
    if ref.startswith(URN):
        return ref[len(URN):]
    if "?" in ref or ref.startswith("#") or "/" not in ref:
        return None
    return ref.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Visit:
    """An encounter a derived patient can be built around."""

    index: int  # entry index in the record's bundle
    id: str
    class_code: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Part:
    """One resource of a chart: its entry index, the resource as the chart holds it, and a key
    naming that variant (charts of different visits share a variant: fhir/derive.py caches
    one serialization per key)."""

    index: int
    key: tuple[Any, ...]
    resource: dict[str, Any]


@dataclass
class Record:
    """One prepared Synthea patient bundle, indexed for chart selection."""

    bundle: dict[str, Any]
    patient: dict[str, Any]
    by_id: dict[str, int]
    refs: list[tuple[str, ...]]  # per entry: ids of entries it refers to
    members: dict[str, list[int]]  # encounter id -> entries that belong to it
    current: list[tuple[int, str, datetime, datetime | None]]  # (entry, type, from, until) of problem-list items
    always: list[int]  # Patient, Coverage, Provenance
    visits: list[Visit]  # encounters, by start
    died: datetime | None
    _charts: dict[tuple[str, int], list[Part]] = field(default_factory=dict, repr=False)
    _variants: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict, repr=False)
    _targets: dict[int, list[tuple[Any, int | None]]] = field(default_factory=dict, repr=False)

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.bundle["entry"]

    def anchors(self) -> list[Visit]:
        """Encounters a copy can be built around: every finished encounter before a death."""
        return [v for v in self.visits if self.died is None or v.start < self.died]

    def chart(self, anchor: Visit, history_days: int = 0) -> list[Part]:
        """The chart as of `anchor`, in bundle order (module doc).  A resource that needs no
        edit is the record's own dict: never modify it."""
        key = (anchor.id, history_days)
        hit = self._charts.get(key)
        if hit is None:
            hit = self._charts[key] = self._chart(anchor, history_days)
        return hit

    def _chart(self, anchor: Visit, history_days: int) -> list[Part]:
        since = anchor.start - timedelta(days=history_days)
        encounters = {v.id for v in self.visits if v.id == anchor.id or since <= v.start <= anchor.start}
        todo = [v.index for v in self.visits if v.id in encounters]
        for e in encounters:
            todo += self.members.get(e, ())
        todo += self.always
        todo += [i for i, rtype, frm, until in self.current if _current(rtype, frm, until, anchor)]
        chosen: set[int] = set()
        entries, by_id, refs = self.entries, self.by_id, self.refs
        visit_ids = self._visit_ids
        while todo:  # the closure, not through encounters or the Provenance
            i = todo.pop()
            if i in chosen:
                continue
            chosen.add(i)
            if i in self._provenance:
                continue
            for rid in refs[i]:
                if rid not in visit_ids:
                    j = by_id[rid]
                    if j not in chosen and j not in self._uncharted:
                        todo.append(j)
        dropped = visit_ids - encounters
        out = []
        for i in sorted(chosen):
            stale = tuple(sorted(dropped.intersection(refs[i])))
            r = entries[i]["resource"]
            later = _later(r, anchor)
            if i in self._provenance:
                key: tuple[Any, ...] = (i, "targets", tuple(sorted(chosen)))
            else:
                key = (i, stale, later)
            variant = self._variants.get(key)
            if variant is None:
                variant = self._variants[key] = _as_of_visit(r, later, chosen if i in self._provenance else None, self, stale)
            out.append(Part(i, key, variant))
        return out

    def provenance_targets(self, provenance: dict[str, Any]) -> list[tuple[Any, int | None]]:
        """(target, entry index) of a Provenance of the record (computed once)."""
        key = id(provenance)
        hit = self._targets.get(key)
        if hit is None:
            hit = self._targets[key] = [(t, self.by_id.get(_local_id(t.get("reference", "")) or ""))
                                        for t in provenance.get("target", []) if isinstance(t, dict)]
        return hit

    @cached_property
    def _visit_ids(self) -> set[str]:
        return {v.id for v in self.visits}

    @cached_property
    def _uncharted(self) -> set[int]:
        return {i for i, e in enumerate(self.entries) if e["resource"].get("resourceType") in NOT_CHARTED}

    @cached_property
    def _provenance(self) -> set[int]:
        return {i for i in self.always if self.entries[i]["resource"].get("resourceType") == "Provenance"}


def _current(rtype: str, frm: datetime, until: datetime | None, anchor: Visit) -> bool:
    """Still part of the patient's current record at the visit (problem list, allergies, active
    medications, care plans and teams): begun by the end of the visit, not over before it."""
    return frm <= anchor.end and (until is None or until > anchor.start)


def _later(r: dict[str, Any], anchor: Visit) -> bool:
    """A condition abated, or a care plan or team ended, after the visit."""
    rtype = r.get("resourceType")
    if rtype == "Condition":
        abated = instant(r.get("abatementDateTime"))
        return abated is not None and abated > anchor.end
    if rtype in ("CarePlan", "CareTeam"):
        return (_period(r)[1] or anchor.end) > anchor.end
    return False


def _as_of_visit(r: dict[str, Any], later: bool, targets: set[int] | None, rec: Record,
                 stale: tuple[str, ...]) -> dict[str, Any]:
    """The resource as the chart holds it (module doc): the record's own dict when unchanged.
    `later`: shown as it was at the visit; `targets`: the chart (a Provenance's targets are cut
    to it); `stale`: encounters outside the chart it refers to (the references are removed)."""
    if not later and targets is None and not stale:
        return r
    if targets is not None:  # a Provenance: only its target list changes
        kept = [t for t, i in rec.provenance_targets(r) if i in targets]
        return {**r, "target": kept}
    out = orjson.loads(orjson.dumps(r))  # a deep copy: the record's dicts are shared by charts
    if later and out.get("resourceType") == "Condition":
        out.pop("abatementDateTime", None)
        out["clinicalStatus"] = ACTIVE_CONDITION
    elif later:
        out["period"] = {k: v for k, v in out["period"].items() if k != "end"}
        out["status"] = "active"
    if stale:
        _drop_refs(out, set(stale))
    return out


def _drop_refs(node: Any, ids: set[str]) -> bool:
    """Remove, in place, every Reference to one of `ids` (and containers left empty by it);
    True when `node` itself is such a Reference or became empty."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and _local_id(ref) in ids:
            return True
        for k in list(node):
            v = node[k]
            if isinstance(v, (dict, list)) and _drop_refs(v, ids):
                del node[k]
        return not node
    if isinstance(node, list):
        node[:] = [v for v in node if not (isinstance(v, (dict, list)) and _drop_refs(v, ids))]
        return not node
    return False


def record(bundle: dict[str, Any]) -> Record | None:
    """Index a prepared patient bundle; None if it has no Patient."""
    entries = bundle.get("entry", [])
    patient = next((e["resource"] for e in entries if e["resource"].get("resourceType") == "Patient"), None)
    if patient is None:
        return None
    by_id: dict[str, int] = {}
    for i, e in enumerate(entries):
        rid = e["resource"].get("id") or _local_id(e.get("fullUrl") or "")
        if rid:
            by_id[rid] = i
    refs: list[tuple[str, ...]] = []
    members: dict[str, list[int]] = {}
    current: list[tuple[int, str, datetime, datetime | None]] = []
    always: list[int] = []
    visits: list[Visit] = []
    for i, e in enumerate(entries):
        r = e["resource"]
        rtype = r.get("resourceType", "")
        found = {m.decode() for m in _REFERENCE.findall(orjson.dumps(r))}
        refs.append(tuple(sorted(x for x in found if x in by_id)))
        if rtype in NOT_CHARTED:
            continue
        for enc in set(_encounter_refs(r)):
            members.setdefault(enc, []).append(i)
        if rtype in ALWAYS or rtype == "Provenance":
            always.append(i)
        elif rtype == "Encounter":
            start, end = _period(r)
            if start is not None:
                visits.append(Visit(i, r["id"], (r.get("class") or {}).get("code", ""), start, end or start))
        else:
            span = _span(r)
            if span is not None:
                current.append((i, rtype, *span))
    visits.sort(key=lambda v: (v.start, v.id))
    died = instant(patient.get("deceasedDateTime"))
    return Record(bundle, patient, by_id, refs, members, current, always, visits, died)


def _span(r: dict[str, Any]) -> tuple[datetime, datetime | None] | None:
    """(from, until) of a problem-list item: what decides whether it is current at a visit."""
    rtype = r.get("resourceType")
    if rtype == "Condition":
        onset = instant(r.get("onsetDateTime")) or instant(r.get("recordedDate"))
        return (onset, instant(r.get("abatementDateTime"))) if onset else None
    if rtype == "AllergyIntolerance":
        recorded = instant(r.get("recordedDate"))
        return (recorded, None) if recorded else None
    if rtype == "MedicationRequest":
        authored = instant(r.get("authoredOn"))
        return (authored, None) if authored and r.get("status") == "active" else None
    if rtype in ("CarePlan", "CareTeam"):
        start, end = _period(r)
        return (start, end) if start else None
    return None


def _encounter_refs(r: dict[str, Any]) -> Iterator[str]:
    """Encounter ids a resource belongs to: encounter, context (MedicationAdministration),
    context.encounter[] (DocumentReference), item[].encounter[] (Claim, ExplanationOfBenefit)."""
    enc = r.get("encounter")
    if isinstance(enc, dict) and isinstance(enc.get("reference"), str):
        yield from _some(_local_id(enc["reference"]))
    ctx = r.get("context")
    if isinstance(ctx, dict):
        if isinstance(ctx.get("reference"), str):
            yield from _some(_local_id(ctx["reference"]))
        for e in ctx.get("encounter", []) if isinstance(ctx.get("encounter"), list) else []:
            if isinstance(e, dict) and isinstance(e.get("reference"), str):
                yield from _some(_local_id(e["reference"]))
    for item in r.get("item", []) if isinstance(r.get("item"), list) else []:
        for e in item.get("encounter", []) if isinstance(item, dict) else []:
            if isinstance(e, dict) and isinstance(e.get("reference"), str):
                yield from _some(_local_id(e["reference"]))


def _some(x: str | None) -> Iterator[str]:
    if x:
        yield x
