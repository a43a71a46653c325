"""Derived patients: as many distinct patients as the hospital has visits, from Synthea records.

A week of a 300-bed hospital has ~6,000 distinct visits; Synthea here makes ~1.3 patients per
second per process after a ~30 s start (docs/population.md), so generating 6,000 patients per
arm would take over an hour.  Instead each arm's real Synthea patients are the *base*, and each
derived patient is a copy of one base record built around one of its encounters (the *visit*):
the record as of that visit (fhir/charts.py), re-identified and re-dated (fhir/reidentify.py),
with its own ids.  A demand says how many patients are needed for which visits (the hospital
computes it: sim/demand.py); each demand's copies are spread evenly over the base encounters
of its preferred class.

The result is an ordinary folder of Synthea-style bundles (infrastructure bundles copied from
the base, one transaction bundle per derived patient), so the index, the loaders, HAPI and
``paritybed population`` read it like any Synthea output.  It is cached in
``<cache>/populations/derived-<key>/`` (key: the base's fingerprint, the options and
`DERIVE_VERSION`; made once under the entry's lock); its index is built while writing and cached too; a manifest
``paritybed-derived.json`` records the options, the demands and what was made of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import orjson

from paritybed.core.cache import cache_dir, entry_lock
from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.fhir import charts, reidentify
from paritybed.fhir.bundles import is_infrastructure, prepare_for_load, read_bundle, synthea_files
from paritybed.fhir.population import Indexer, Population, cache_index, fingerprint_files

#: Bump when what a copy holds changes (cached derived populations are then rebuilt).
DERIVE_VERSION = 2
MANIFEST = "paritybed-derived.json"
#: A class with fewer base encounters than this is topped up with the next class of the demand.
MIN_ANCHORS = 5
#: When the base has more visits than a demand needs, each visit used is the anchor of about
#: this many copies (a seeded random choice of ~patients/4 of them): what a bulk load indexes in
#: full is one chart per visit used (fhir/bulk.py), so this keeps it near a quarter of the
#: patients.  The rare visits (inpatient, ED) are all used whenever the demand exceeds them.
COPIES_PER_VISIT = 4

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Demand:
    """`patients` derived patients for visits of one kind (``ed``, ``inpatient``, ...), built
    around base encounters of the first of `classes` the base has (topped up with the next)."""

    name: str
    classes: tuple[str, ...]
    patients: int


@dataclass(frozen=True)
class DeriveOptions:
    """Everything a derived population depends on besides its base (the cache key)."""

    seed: int
    demands: tuple[Demand, ...]
    visits_before: date  # each copy's visit moves into the `recent_days` days before this date
    recent_days: int = 28
    history_days: int = 0  # earlier encounters (and their resources) kept before the visit

    def check(self) -> None:
        if not self.demands or sum(d.patients for d in self.demands) < 1:
            raise InputError("a derived population needs at least one patient")
        if any(d.patients < 0 for d in self.demands):
            raise InputError("a demand cannot ask for a negative number of patients")
        if self.recent_days < 1:
            raise InputError(f"recent_days must be at least 1 (got {self.recent_days})")
        if self.history_days < 0:
            raise InputError(f"history_days must be >= 0 (got {self.history_days})")

    def key(self, base_fingerprint: str) -> str:
        blob = json.dumps({"version": DERIVE_VERSION, "base": base_fingerprint, **asdict(self)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class DerivedResult:
    path: Path  # the folder holding fhir/*.json
    cached: bool
    patients: int
    resources: int
    seconds: float
    index: Population | None = None  # built while writing (None when cached: load_population reads the pickle)
    manifest: dict[str, Any] = field(default_factory=dict)


def options_of(manifest: dict[str, Any]) -> DeriveOptions:
    """The options a manifest records (fhir/bulk.py rebuilds the copies from them)."""
    o = manifest["options"]
    return DeriveOptions(
        seed=int(o["seed"]),
        demands=tuple(Demand(d["name"], tuple(d["classes"]), int(d["patients"])) for d in o["demands"]),
        visits_before=date.fromisoformat(o["visits_before"]),
        recent_days=int(o["recent_days"]),
        history_days=int(o["history_days"]),
    )


# ------------------------------------------------------------------------------------ the base
@dataclass
class Base:
    """The base folder, read once: infrastructure files and one chart-able record per patient."""

    folder: Path
    fingerprint: str
    infrastructure: list[Path]
    records: list[charts.Record]
    pools: reidentify.Pools
    transforms: list[reidentify.Transform]

    @classmethod
    def read(cls, folder: Path) -> "Base":
        files = synthea_files(folder)
        records, infra = [], []
        for path in files:
            if is_infrastructure(path):
                infra.append(path)
                continue
            rec = charts.record(prepare_for_load(read_bundle(path)))
            if rec is not None:
                records.append(rec)
        if not records:
            raise InputError(f"no patient bundle in {files[0].parent}: nothing to derive patients from")
        records.sort(key=lambda r: r.patient["id"])
        transforms = [reidentify.Transform(set(r.by_id), reidentify.name_tokens(r.patient)) for r in records]
        return cls(files[0].parent, fingerprint_files(files), infra, records, reidentify.Pools.of([r.patient for r in records]),
                   transforms)

    def anchors(self, classes: tuple[str, ...]) -> tuple[list[tuple[int, charts.Visit]], list[str]]:
        """(record index, visit) of the classes a demand draws from, and the classes used."""
        chosen: list[tuple[int, charts.Visit]] = []
        used: list[str] = []
        for cls in classes:
            if len(chosen) >= MIN_ANCHORS:
                break
            got = [(k, v) for k, r in enumerate(self.records) for v in r.anchors() if v.class_code == cls]
            if got:
                chosen += got
                used.append(cls)
        if not chosen:  # an unusual base: any visit
            chosen = [(k, v) for k, r in enumerate(self.records) for v in r.anchors()]
            used = sorted({v.class_code for _, v in chosen})
        if not chosen:
            raise InputError(f"the patients in {self.folder} have no encounter: a derived patient is built around one")
        chosen.sort(key=lambda kv: (self.records[kv[0]].patient["id"], kv[1].start, kv[1].id))
        return chosen, used


# ------------------------------------------------------------------------------------ copies
@dataclass(frozen=True)
class Copy:
    """One derived patient: copy number, demand, the base record and visit it is built from."""

    number: int
    demand: str
    record: int
    anchor: charts.Visit
    shift_days: int


def plan(base: Base, opts: DeriveOptions) -> tuple[list[Copy], dict[str, Any]]:
    """Which copy is built around which visit, and the shift of its dates (deterministic)."""
    copies: list[Copy] = []
    report: dict[str, Any] = {}
    n = 0
    for k, demand in enumerate(opts.demands):
        if demand.patients == 0:
            continue
        anchors, used = base.anchors(demand.classes)
        rng = np.random.default_rng([opts.seed, 1, k])
        order = rng.permutation(len(anchors))
        order = order[:max(1, min(len(anchors), math.ceil(demand.patients / COPIES_PER_VISIT)))]
        offsets = rng.integers(1, opts.recent_days + 1, size=demand.patients)
        for j in range(demand.patients):
            rec, visit = anchors[int(order[j % len(order)])]
            target = opts.visits_before - timedelta(days=int(offsets[j]))
            copies.append(Copy(n, demand.name, rec, visit, (target - visit.start.date()).days))
            n += 1
        chosen = [anchors[int(i)] for i in order]
        report[demand.name] = {"patients": demand.patients, "classes": used, "base_visits": len(anchors),
                               "visits_used": len(chosen), "base_patients": len({r for r, _ in chosen})}
    return copies, report


def patient_id(base: Base, opts: DeriveOptions, c: Copy) -> str:
    """The id of a copy's Patient (without building the copy)."""
    return reidentify.Identity(opts.seed, c.number, 0, {}, None, None, None).new_id(base.records[c.record].patient["id"])  # type: ignore[arg-type]


class Builder:
    """Builds copies' bundles from the base; chart templates are shared by copies of one visit."""

    def __init__(self, base: Base, opts: DeriveOptions) -> None:
        self.base, self.opts = base, opts
        self._templates: dict[tuple[int, str, str], list[tuple[str, reidentify.Template]]] = {}
        self._variants: dict[tuple[Any, ...], reidentify.Template] = {}

    def templates(self, c: Copy) -> list[tuple[str, reidentify.Template]]:
        """(resource type, template) of each chart entry of the copy's visit, in bundle order."""
        key = (c.record, c.anchor.id, c.demand)
        hit = self._templates.get(key)
        if hit is None:
            rec = self.base.records[c.record]
            hit = []
            for part in rec.chart(c.anchor, self.opts.history_days):
                res = part.resource
                rtype = res.get("resourceType", "")
                if rtype == "Patient":
                    hit.append((rtype, reidentify.Template([], [])))  # built per copy
                    continue
                visit = c.demand if part.index == c.anchor.index else ""
                vkey = (c.record, visit, *part.key)
                t = self._variants.get(vkey)
                if t is None:
                    entry = _entry(rec.entries[part.index], reidentify.tag_visit(res, visit) if visit else res)
                    t = self._variants[vkey] = reidentify.template(entry, self.base.transforms[c.record])
                hit.append((rtype, t))
            self._templates[key] = hit
        return hit

    def identity(self, c: Copy) -> reidentify.Identity:
        return reidentify.draw_identity(self.opts.seed, c.number, c.shift_days, self.base.records[c.record].patient,
                                        self.base.pools)

    def entry(self, c: Copy, who: reidentify.Identity, rtype: str, t: reidentify.Template) -> bytes:
        """The JSON of one bundle entry of the copy (its Patient is made for the copy)."""
        if rtype == "Patient":
            rec = self.base.records[c.record]
            entry = next(e for e in rec.entries if e["resource"] is rec.patient)
            t = reidentify.template(_entry(entry, reidentify.copy_patient(rec.patient, who)), self.base.transforms[c.record])
        return reidentify.copy_entry(t, who)

    def bundle(self, c: Copy) -> tuple[reidentify.Identity, list[bytes]]:
        """The copy's identity and the JSON of each of its bundle entries."""
        who = self.identity(c)
        return who, [self.entry(c, who, rtype, t) for rtype, t in self.templates(c)]


def _entry(entry: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    """A transaction entry for `resource` (Synthea's own request kept: POST to the type)."""
    out: dict[str, Any] = {}
    if entry.get("fullUrl"):
        out["fullUrl"] = entry["fullUrl"]
    out["resource"] = resource
    out["request"] = entry.get("request") or {"method": "POST", "url": resource.get("resourceType", "")}
    return out


def bundle_bytes(entries: list[bytes]) -> bytes:
    return b'{"resourceType":"Bundle","type":"transaction","entry":[' + b",".join(entries) + b"]}"


def file_name(patient_entry: bytes) -> str:
    """Synthea 3's file name for a patient bundle: ``Given_Family_<id>.json`` (the Patient is
    a bundle's first entry, as Synthea writes it)."""
    p = orjson.loads(patient_entry)["resource"]
    if p.get("resourceType") != "Patient":
        raise AssertionError("a derived bundle must start with its Patient")
    name = (p.get("name") or [{}])[0]
    given = (name.get("given") or ["Patient"])[0]
    return f"{given}_{name.get('family', 'Unknown')}_{p['id']}.json"


# ------------------------------------------------------------------------------------ derive
def cache_path(base_folder: str | Path, opts: DeriveOptions) -> Path:
    """Where the derived population of `base_folder` under `opts` is cached."""
    return cache_dir() / "populations" / f"derived-{opts.key(fingerprint_files(synthea_files(Path(base_folder))))}"


def is_cached(base_folder: str | Path, opts: DeriveOptions) -> Path | None:
    """The cached derived population's folder, if it was made before."""
    target = cache_path(base_folder, opts)
    return target if (target / MANIFEST).is_file() else None


def derive(base_folder: str | Path, opts: DeriveOptions, *, progress: Progress | None = None,
           use_cache: bool = True) -> DerivedResult:
    """The derived population of `base_folder` under `opts` (module doc), from the cache if
    it was made before.  `progress(done, total)` per derived patient."""
    opts.check()
    started = time.monotonic()
    target = cache_path(base_folder, opts)
    if use_cache and (target / MANIFEST).is_file():
        return _cached(target, progress, started)
    with entry_lock(target):  # a sweep's workers asking at once: one derives, the others wait
        if use_cache and (target / MANIFEST).is_file():
            return _cached(target, progress, started)
        return _derive(Path(base_folder), opts, target, progress, started)


def _cached(target: Path, progress: Progress | None, started: float) -> DerivedResult:
    manifest = json.loads((target / MANIFEST).read_text())
    if progress:
        progress(manifest["patients"], manifest["patients"])
    return DerivedResult(target, True, manifest["patients"], manifest["resources"], time.monotonic() - started,
                         manifest=manifest)


def _derive(base_folder: Path, opts: DeriveOptions, target: Path, progress: Progress | None,
            started: float) -> DerivedResult:
    """`derive` when it is not cached (the entry's lock held)."""
    base = Base.read(base_folder)
    copies, report = plan(base, opts)
    scratch = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        (scratch / "fhir").mkdir(parents=True)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write the paritybed cache {target.parent}: {e.strerror}",
                                 hint="set PARITYBED_CACHE to a writable folder") from None
    try:
        index, resources = _write(base, opts, copies, scratch / "fhir", progress)
        manifest = {
            "derived": DERIVE_VERSION,
            "base": {"folder": str(base.folder), "fingerprint": base.fingerprint, "patients": len(base.records)},
            "options": {**asdict(opts), "visits_before": opts.visits_before.isoformat()},
            "demands": report,
            "patients": len(copies),
            "resources": resources,
            "fingerprint": index.fingerprint,
            "seconds": round(time.monotonic() - started, 1),
        }
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        shutil.rmtree(target, ignore_errors=True)  # an entry made again (use_cache=False), under the lock
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    index.folder = target / "fhir"
    index.files = synthea_files(target)
    return DerivedResult(target, False, len(copies), resources, time.monotonic() - started, index=index, manifest=manifest)


def _write(base: Base, opts: DeriveOptions, copies: list[Copy], out: Path,
           progress: Progress | None) -> tuple[Population, int]:
    """Write the infrastructure and every copy's bundle into `out`, indexing them as they are
    written (the index does not depend on the order once the infrastructure is first)."""
    ix = Indexer()
    for path in base.infrastructure:
        shutil.copyfile(path, out / path.name)
        ix.add_file(out / path.name, read_bundle(out / path.name))
    builder = Builder(base, opts)
    resources = 0
    for c in copies:
        _, entries = builder.bundle(c)
        data = bundle_bytes(entries)
        path = out / file_name(entries[0])
        if path.exists():
            raise AssertionError(f"two derived patients share the file name {path.name}")
        path.write_bytes(data)
        ix.add_file(path, orjson.loads(data))
        resources += len(entries)
        if progress:
            progress(c.number + 1, len(copies))
    files = synthea_files(out)
    pop = ix.finish(out, files, fingerprint_files(files), [])
    cache_index(pop)
    return pop, resources


def derived_copies(base_folder: str | Path, opts: DeriveOptions) -> Iterator[tuple[Copy, list[bytes]]]:
    """Every copy and its entries, as `derive` writes them (for loaders that build from the base)."""
    base = Base.read(Path(base_folder))
    copies, _ = plan(base, opts)
    builder = Builder(base, opts)
    for c in copies:
        yield c, builder.bundle(c)[1]
