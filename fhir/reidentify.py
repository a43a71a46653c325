"""Re-identification and re-dating of one copy of a Synthea record (a derived patient).

A copy must be a *different patient* to every reader, human or program: its own ids on the
server, its own name, identifiers, telecom and address, and its own dates; and it must stay a
consistent record: every reference points at the copy's own resources, ages and intervals are
unchanged.  What changes, per copy (docs/population.md, "Derived patients"):

* **ids**: every id of the record (and every reference, identifier or note that names one) is
  replaced by ``uuid5(namespace, "<seed>|<copy>|<old id>")``; ids of the shared organizations,
  locations and practitioners are kept (they are not the patient's);
* **names**: each given and family name of the patient (and of the mother's maiden name) is
  replaced, everywhere it appears (names, reference displays, clinical notes), by a name drawn
  from the base population's names of the same kind and sex, with Synthea's numeric suffix
  redrawn;
* **identifiers, telecom**: SSN, driver's licence, passport and phone keep their first three
  characters (Synthea's ``999`` / ``S99`` / ``555`` markers of fake values) and get new digits;
  the medical record number is the new patient id;
* **address, birthplace**: drawn from the base population's addresses (city, state, postal
  code and geolocation stay together), the street number and suite redrawn;
* **dates**: every date in the record (and in its notes) moves by the copy's shift, a whole
  number of days, keeping the time of day and the written UTC offset, so every instant moves
  by exactly ``shift x 86400`` s and every interval and age is unchanged;
* **death**: a copy is alive (it is built around a visit before any death).

Clinical content (codes, values, the sequence of care) is the base record's.  The transform is
one regular-expression pass over each resource's JSON bytes (uuids, dates, name tokens), which
is what makes thousands of copies cheap (each base resource is cut once at its ids, dates and
names; a copy joins the pieces with its own values); base64 notes are decoded, cut the same way
and re-encoded per copy.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import orjson

#: Namespace of the ids of derived patients' resources.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://paritybed.dev/fhir/derived-patient")
#: meta.tag system marking derived data: ``derived-patient`` on the Patient.
TAG_SYSTEM = "https://paritybed.dev/fhir/derived"
#: meta.tag system of the encounter a copy was built around (the visit the simulated hospital
#: sees it for); the code names what the visit is (``ed``, ``inpatient``, ``outpatient``).
VISIT_SYSTEM = "https://paritybed.dev/fhir/derived/visit"
_NAMESPACE_BYTES = ID_NAMESPACE.bytes
UUID = rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
DATE = rb"(?<![0-9])[0-9]{4}-[0-9]{2}-[0-9]{2}(?![0-9])"
_DIGITS = re.compile(r"\d")
_SUFFIX = re.compile(r"\d+$")
_PLACEHOLDER = "@@paritybed-attachment-{}@@"
_PLACEHOLDER_RE = re.compile(rb"@@paritybed-attachment-(\d+)@@")
MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
BIRTH_PLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"


def bare(name: str) -> str:
    """A Synthea name without its numeric suffix (``Abram53`` -> ``Abram``)."""
    return _SUFFIX.sub("", name) or name


@dataclass
class Pools:
    """What new identities are drawn from: the base population's own names and addresses."""

    given: dict[str, list[str]]  # gender -> given names (bare)
    family: list[str]
    addresses: list[dict[str, Any]]
    birthplaces: list[dict[str, Any]]

    @classmethod
    def of(cls, patients: list[dict[str, Any]]) -> "Pools":
        given: dict[str, set[str]] = {}
        family: set[str] = set()
        addresses, birthplaces = {}, {}
        for p in patients:
            for n in p.get("name", []):
                for g in n.get("given", []):
                    given.setdefault(p.get("gender", "unknown"), set()).add(bare(g))
                if n.get("family"):
                    family.add(bare(n["family"]))
            for a in p.get("address", []):
                addresses[orjson.dumps(a, option=orjson.OPT_SORT_KEYS)] = a
            for ext in p.get("extension", []):
                if ext.get("url") == BIRTH_PLACE and isinstance(ext.get("valueAddress"), dict):
                    birthplaces[orjson.dumps(ext["valueAddress"], option=orjson.OPT_SORT_KEYS)] = ext["valueAddress"]
        everyone = sorted(set().union(*given.values())) if given else ["Alex"]
        return cls(
            given={g: sorted(v) for g, v in sorted(given.items())} | {"": everyone},
            family=sorted(family) or ["Doe"],
            addresses=[addresses[k] for k in sorted(addresses)],
            birthplaces=[birthplaces[k] for k in sorted(birthplaces)],
        )


@dataclass
class Identity:
    """One copy's new identity (drawn once; the transform applies it)."""

    seed: int
    copy: int
    shift_days: int
    names: dict[bytes, bytes]  # old name token -> new one
    rng: random.Random
    address: dict[str, Any] | None
    birthplace: dict[str, Any] | None
    ids: dict[bytes, bytes] = field(default_factory=dict)
    dates: dict[bytes, bytes] = field(default_factory=dict)

    def new_id(self, old: str) -> str:
        """``uuid5(ID_NAMESPACE, "<seed>|<copy>|<old>")`` (RFC 4122, computed without uuid.UUID)."""
        h = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{self.seed}|{self.copy}|{old}".encode()).digest()[:16])
        h[6] = (h[6] & 0x0F) | 0x50
        h[8] = (h[8] & 0x3F) | 0x80
        x = h.hex()
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"

    def digits(self, value: str) -> str:
        """The value with every digit after its first three characters redrawn."""
        head, tail = value[:3], value[3:]
        return head + _DIGITS.sub(lambda _: str(self.rng.randrange(10)), tail)


def draw_identity(seed: int, copy: int, shift_days: int, patient: dict[str, Any], pools: Pools) -> Identity:
    """The identity of copy number `copy` of `patient` (deterministic in seed and copy: Python's
    Mersenne Twister seeded with a hash of both, whose sequence is stable across versions)."""
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}|{copy}".encode()).digest()[:8], "big"))
    names: dict[bytes, bytes] = {}

    def fresh(old: str, choices: list[str]) -> None:
        key = old.encode()
        if key not in names and old:
            pick = choices[rng.randrange(len(choices))]
            names[key] = f"{pick}{rng.randrange(10, 1000)}".encode()

    gender = patient.get("gender", "")
    own_given = pools.given.get(gender) or pools.given[""]
    for n in patient.get("name", []):
        for g in n.get("given", []):
            fresh(g, own_given)
        if n.get("family"):
            fresh(n["family"], pools.family)
    for ext in patient.get("extension", []):
        if ext.get("url") == MAIDEN_NAME and isinstance(ext.get("valueString"), str):
            parts = ext["valueString"].split()
            for k, part in enumerate(parts):
                fresh(part, pools.family if k == len(parts) - 1 else (pools.given.get("female") or pools.given[""]))
    address = pools.addresses[rng.randrange(len(pools.addresses))] if pools.addresses else None
    birthplace = pools.birthplaces[rng.randrange(len(pools.birthplaces))] if pools.birthplaces else None
    return Identity(seed, copy, shift_days, names, rng, address, birthplace)


class Transform:
    """Where a base record's resources name its ids, dates and the patient's names.

    A resource is cut once into literal chunks and *slots* (an id of the record, a date, a name
    token, a note); a copy is the chunks joined with its own value for each slot, so the regular
    expressions run once per base resource, not once per copy."""

    def __init__(self, record_ids: set[str], name_tokens: list[str]) -> None:
        self.record_ids = {i.encode() for i in record_ids}
        self.names = [t.encode() for t in name_tokens]
        self.values: dict[str, Any] = {}  # cut search-index values (fhir/bulk.py)
        alts = b"|".join(re.escape(t) for t in sorted(self.names, key=len, reverse=True))
        self.name_re = re.compile(rb"(?<![\w])(?:" + alts + rb")(?![\w])") if self.names else None

    def cut(self, data: bytes) -> tuple[list[bytes], list[tuple[str, bytes]]]:
        """(chunks, slots): ``data == chunks[0] + slot0 + chunks[1] + ...`` with each slot's bytes."""
        spans = [(m.start(), m.end(), "u") for m in _UUID_RE.finditer(data) if m.group(0) in self.record_ids]
        spans += [(m.start(), m.end(), "d") for m in _DATE_RE.finditer(data)]
        if self.name_re is not None and any(n in data for n in self.names):
            spans += [(m.start(), m.end(), "n") for m in self.name_re.finditer(data)]
        spans += [(m.start(), m.end(), "a") for m in _PLACEHOLDER_RE.finditer(data)]
        spans.sort()
        chunks, slots, at = [], [], 0
        for start, end, kind in spans:
            if start < at:  # overlapping matches: the first one wins
                continue
            chunks.append(data[at:start])
            slots.append((kind, data[start:end]))
            at = end
        chunks.append(data[at:])
        return chunks, slots


_UUID_RE = re.compile(UUID)
_DATE_RE = re.compile(DATE)


def _shift(text: bytes, days: int) -> bytes:
    try:
        d = date(int(text[:4]), int(text[5:7]), int(text[8:10]))
        return (d + timedelta(days=days)).isoformat().encode()
    except (ValueError, OverflowError):
        return text


@dataclass
class Template:
    """One resource of a chart (a bundle entry), cut for copying (`Transform.cut`); its text
    notes (base64 attachments) are cut separately and re-encoded per copy."""

    chunks: list[bytes]
    slots: list[tuple[str, bytes]]
    notes: list["Template"] = field(default_factory=list)
    entry: dict[str, Any] | None = None  # the entry serialized (notes as placeholders)


def template(entry: dict[str, Any], transform: Transform) -> Template:
    """Serialize a bundle entry for copying: text attachments become placeholders."""
    notes: list[bytes] = []
    data = orjson.dumps(entry)
    if b'"contentType":"text/' in data:
        entry = _strip_notes(entry, notes)
        data = orjson.dumps(entry)
    return cut(data, transform, [cut(text, transform) for text in notes], entry)


def cut(data: bytes, transform: Transform, notes: list[Template] | None = None,
        entry: dict[str, Any] | None = None) -> Template:
    """`data` cut at the record's ids, dates and names (a Template without notes by default)."""
    chunks, slots = transform.cut(data)
    return Template(chunks, slots, notes or [], entry)


def _strip_notes(node: Any, notes: list[bytes]) -> Any:
    if isinstance(node, dict):
        ctype = node.get("contentType")
        if isinstance(node.get("data"), str) and isinstance(ctype, str) and ctype.startswith("text/"):
            try:
                text = base64.b64decode(node["data"], validate=True)
            except ValueError:
                return {k: _strip_notes(v, notes) for k, v in node.items()}
            notes.append(text)
            return {**node, "data": _PLACEHOLDER.format(len(notes) - 1)}
        return {k: _strip_notes(v, notes) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_notes(v, notes) for v in node]
    return node


def copy_entry(t: Template, who: Identity) -> bytes:
    """The entry's JSON for this copy: each slot replaced by the copy's value."""
    out = [t.chunks[0]]
    ids, dates, names = who.ids, who.dates, who.names
    for (kind, text), chunk in zip(t.slots, t.chunks[1:]):
        if kind == "u":
            new = ids.get(text)
            if new is None:
                new = ids[text] = who.new_id(text.decode()).encode()
        elif kind == "d":
            new = dates.get(text)
            if new is None:
                new = dates[text] = _shift(text, who.shift_days)
        elif kind == "n":
            new = names.get(text, text)
        else:
            new = base64.b64encode(copy_entry(t.notes[int(text[len(b"@@paritybed-attachment-"):-2])], who))
        out.append(new)
        out.append(chunk)
    return b"".join(out)


def copy_patient(patient: dict[str, Any], who: Identity) -> dict[str, Any]:
    """The Patient resource of a copy before the byte transform (which then maps its ids,
    dates and names): identifiers, telecom, address and birthplace redrawn, alive, tagged."""
    p = orjson.loads(orjson.dumps(patient))
    p.pop("deceasedDateTime", None)
    p.pop("deceasedBoolean", None)
    for ident in p.get("identifier", []):
        value = ident.get("value")
        if isinstance(value, str) and not re.fullmatch(UUID.decode(), value):
            ident["value"] = who.digits(value)
    for tel in p.get("telecom", []):
        if isinstance(tel.get("value"), str):
            tel["value"] = who.digits(tel["value"])
    if who.address is not None and p.get("address"):
        a = orjson.loads(orjson.dumps(who.address))
        if isinstance(a.get("line"), list):
            a["line"] = [_DIGITS.sub(lambda _: str(who.rng.randrange(1, 10)), line) for line in a["line"]]
        p["address"] = [a] + p["address"][1:]
    for ext in p.get("extension", []):
        if ext.get("url") == BIRTH_PLACE and who.birthplace is not None:
            ext["valueAddress"] = who.birthplace
    meta = p.setdefault("meta", {})
    meta["tag"] = [*meta.get("tag", []), {"system": TAG_SYSTEM, "code": "derived-patient",
                                          "display": "re-identified, re-dated copy of a Synthea record"}]
    return p


def tag_visit(resource: dict[str, Any], kind: str) -> dict[str, Any]:
    """The encounter a copy is built around, tagged as its visit of `kind` (a new dict)."""
    r = dict(resource)
    meta = dict(r.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), {"system": VISIT_SYSTEM, "code": kind,
                                          "display": f"the {kind} visit this derived patient was built around"}]
    r["meta"] = meta
    return r


def name_tokens(patient: dict[str, Any]) -> list[str]:
    """The patient's name tokens the transform replaces (given, family, mother's maiden name)."""
    out: list[str] = []
    for n in patient.get("name", []):
        out += [g for g in n.get("given", []) if g]
        if n.get("family"):
            out.append(n["family"])
    for ext in patient.get("extension", []):
        if ext.get("url") == MAIDEN_NAME and isinstance(ext.get("valueString"), str):
            out += ext["valueString"].split()
    return sorted(set(out))
