"""The population index: which patients, encounters and resources a Synthea folder holds.

The simulation picks patients and encounters from this index and the mock agents request the
ids it lists, so it must describe exactly what the FHIR server holds after loading the same
folder: it reads the same files in the same order (`fhir.bundles.synthea_files`) and applies
the same `prepare_for_load` (standalone Coverage), and it keeps Synthea's ids (the embedded
server keeps each ``urn:uuid`` as the id; the loader keeps ids on other servers).

Building the index is all-or-nothing: every file is read and indexed into local structures and
the `Population` is returned only at the end; a corrupt file is skipped with a warning naming
it, or, under ``strict``, raises `BundleError` naming it.  Built indexes are cached as a pickle
in ``<cache>/population-index/<fingerprint>.pickle`` (see docs/population.md).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable

from paritybed.core.cache import cache_dir
from paritybed.core.errors import InputError
from paritybed.fhir.bundles import (
    BundleError,
    conditional_targets,
    is_infrastructure,
    prepare_for_load,
    read_bundle,
    ref_id,
    resolve_reference,
    synthea_files,
)

#: Bump when the index layout changes, so stale pickles are not reused.
INDEX_VERSION = 2
#: meta.tag system of the encounter a derived patient was built around (fhir/reidentify.py).
VISIT_SYSTEM = "https://paritybed.dev/fhir/derived/visit"
#: Fields that tie a resource to its patient (FHIR search parameters patient/subject/beneficiary).
PATIENT_FIELDS = ("subject", "patient", "beneficiary")


class PopulationWarning(UserWarning):
    """A bundle file was skipped (corrupt or not a Bundle); the message names the file."""


@dataclass(frozen=True)
class PatientInfo:
    id: str
    gender: str
    birth_date: date | None
    deceased: bool


@dataclass(frozen=True)
class EncounterInfo:
    id: str
    patient_id: str
    class_code: str
    type_text: str
    start: datetime | None
    end: datetime | None
    practitioner_id: str | None
    visit: str = ""  # a derived patient's visit (the encounter the copy was built around): ed, inpatient, ...


@dataclass(frozen=True)
class ClaimInfo:
    id: str
    patient_id: str
    encounter_id: str | None
    coverage_id: str | None


@dataclass
class Population:
    """The index of one Synthea folder (see the module docstring)."""

    folder: Path
    fingerprint: str
    files: list[Path]
    patients: list[PatientInfo]
    encounters: list[EncounterInfo]
    claims: list[ClaimInfo]
    practitioners: list[str]
    skipped: list[Path] = field(default_factory=list)
    _ids: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)
    _categories: Counter = field(default_factory=Counter, repr=False)
    _by_encounter: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    _types: dict[str, int] = field(default_factory=dict, repr=False)
    _medications: dict[str, int] = field(default_factory=dict, repr=False)

    def encounters_by_class(self, class_code: str) -> list[EncounterInfo]:
        """Encounters whose ``Encounter.class.code`` is `class_code` ('AMB', 'EMER', 'IMP', ...)."""
        return [e for e in self.encounters if e.class_code == class_code]

    def visits(self, kind: str) -> list[EncounterInfo]:
        """The visits of `kind` (``ed``, ``inpatient``, ``outpatient``) derived patients were built
        around (fhir/derive.py): one per derived patient."""
        return [e for e in self.encounters if e.visit == kind]

    @property
    def derived(self) -> bool:
        """True for a population of derived patients (fhir/derive.py): each has one visit."""
        return any(e.visit for e in self.encounters)

    def ids(self, patient_id: str, resource_type: str) -> list[str]:
        """Sorted ids of `resource_type` whose subject/patient/beneficiary is the patient."""
        return list(self._ids.get((patient_id, resource_type), ()))

    def count(self, patient_id: str, resource_type: str, category: str | None = None) -> int:
        """How many `resource_type` resources the patient has (of `category`: first category code)."""
        if category is None:
            return len(self._ids.get((patient_id, resource_type), ()))
        return self._categories.get((patient_id, resource_type, category), 0)

    def encounter_resource_counts(self, encounter_id: str) -> dict[str, int]:
        """Resources per type whose encounter/context reference is this encounter."""
        return dict(self._by_encounter.get(encounter_id, {}))

    def coverage_of(self, patient_id: str) -> list[str]:
        """Ids of the patient's standalone Coverage (extracted from EOBs by prepare_for_load)."""
        return self.ids(patient_id, "Coverage")

    def type_counts(self) -> dict[str, int]:
        """Resources per type over the whole folder, as a server holds them after loading."""
        return dict(self._types)

    def summary(self) -> dict[str, Any]:
        """Counts for printing: patients, encounters by class, resources, medications, coverage."""
        classes = Counter(e.class_code for e in self.encounters)
        covered = sum(1 for p in self.patients if self._ids.get((p.id, "Coverage")))
        return {
            "folder": str(self.folder),
            "fingerprint": self.fingerprint,
            "files": len(self.files),
            "skipped": [str(p) for p in self.skipped],
            "patients": len(self.patients),
            "deceased": sum(p.deceased for p in self.patients),
            "genders": dict(sorted(Counter(p.gender for p in self.patients).items())),
            "encounters": len(self.encounters),
            "encounters_by_class": dict(sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))),
            "resources_by_type": dict(sorted(self._types.items(), key=lambda kv: (-kv[1], kv[0]))),
            "medications": dict(self._medications),
            "coverage": {
                "resources": self._types.get("Coverage", 0),
                "patients_with_coverage": covered,
                "claims_with_coverage": sum(1 for c in self.claims if c.coverage_id),
                "claims": len(self.claims),
            },
            "practitioners": len(self.practitioners),
        }


# ------------------------------------------------------------------------------------ loading
def fingerprint_files(files: list[Path]) -> str:
    """sha256 over (file name, size, content) of each file, in load order."""
    h = hashlib.sha256()
    for p in files:
        data = p.read_bytes()
        h.update(f"{p.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def load_population(
    folder: str | Path,
    *,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    use_cache: bool = True,
) -> Population:
    """Index a Synthea output folder (see the module docstring); `progress(done, total)` per file."""
    files = synthea_files(Path(folder))
    folder_path = files[0].parent
    fp = fingerprint_files(files)
    pickle_path = index_path(fp, strict)
    if use_cache and pickle_path.is_file():
        cached = _read_pickle(pickle_path)
        if cached is not None:
            # Warnings about skipped files are repeated: the caller must see them every time.
            for p in cached.skipped:
                warnings.warn(f"skipped {folder_path / p.name}: not a loadable Synthea bundle", PopulationWarning, stacklevel=2)
            if progress:
                progress(len(files), len(files))
            cached.folder, cached.files = folder_path, files
            cached.skipped = [folder_path / p.name for p in cached.skipped]
            return cached
    pop = _build(folder_path, files, fp, strict=strict, progress=progress)
    if use_cache:
        _write_pickle(pickle_path, pop)
    return pop


def index_path(fingerprint: str, strict: bool = False) -> Path:
    """Where the built index of a folder with this fingerprint is cached."""
    return cache_dir() / "population-index" / f"v{INDEX_VERSION}-{'strict-' if strict else ''}{fingerprint}.pickle"


def cache_index(pop: Population) -> None:
    """Cache an index built elsewhere from the same bundles (fhir/derive.py builds the index
    of the bundles it writes), so `load_population` of the folder does not parse them again."""
    _write_pickle(index_path(pop.fingerprint), pop)


def _read_pickle(path: Path) -> Population | None:
    try:
        with path.open("rb") as f:
            obj = pickle.load(f)
    except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never fatal
        return None
    return obj if isinstance(obj, Population) else None


def _write_pickle(path: Path, pop: Population) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")  # one writer per name: atomic replace
        with tmp.open("wb") as f:
            pickle.dump(pop, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    except OSError:
        pass  # the cache is an optimisation; a read-only cache dir is not an error


def _build(
    folder: Path, files: list[Path], fp: str, *, strict: bool, progress: Callable[[int, int], None] | None
) -> Population:
    ix = Indexer()
    skipped: list[Path] = []
    for n, path in enumerate(files, 1):
        try:
            bundle = read_bundle(path, strict=strict)
        except BundleError as e:
            if strict:
                raise
            warnings.warn(f"skipped {path}: {e.message.removeprefix(f'{path}: ')}", PopulationWarning, stacklevel=3)
            skipped.append(path)
        else:
            ix.add_file(path, bundle)
        if progress:
            progress(n, len(files))
    if not ix.patients:
        raise InputError(f"no Patient found in the bundles of {folder}")
    return ix.finish(folder, files, fp, skipped)


class Indexer:
    """Accumulates one folder's resources; `finish` turns them into a Population."""

    def __init__(self) -> None:
        self.conditional: dict[str, str] = {}
        self.patients: list[PatientInfo] = []
        self.encounters: list[EncounterInfo] = []
        self.claims: list[dict[str, Any]] = []
        self.practitioners: list[str] = []
        self.ids: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        self.categories: Counter = Counter()
        self.by_encounter: defaultdict[str, Counter] = defaultdict(Counter)
        self.types: Counter = Counter()
        self.eob_coverage: dict[str, str] = {}  # claim id -> coverage id (from the claim's EOB)
        self.meds: Counter = Counter()

    def add_file(self, path: Path, bundle: dict[str, Any]) -> None:
        """One bundle file of the folder, as `load_population` reads it (in load order)."""
        if is_infrastructure(path):
            self.conditional.update(conditional_targets(bundle))
        self.add(prepare_for_load(bundle))

    def add(self, bundle: dict[str, Any]) -> None:
        for entry in bundle.get("entry", []):
            self._resource(entry["resource"])

    def _resource(self, r: dict[str, Any]) -> None:
        rtype, rid = r.get("resourceType"), r.get("id")
        if not rtype or not rid:
            return
        self.types[rtype] += 1
        pid = _patient_of(r)
        if rtype == "Patient":
            self.patients.append(_patient(r))
            pid = rid
        elif rtype == "Practitioner":
            self.practitioners.append(rid)
        elif rtype == "Encounter" and pid:
            self.encounters.append(self._encounter(r, pid))
        elif rtype == "Claim" and pid:
            self.claims.append(r)
        elif rtype == "ExplanationOfBenefit":
            claim = ref_id((r.get("claim") or {}).get("reference"))
            cov = next((ref_id((i.get("coverage") or {}).get("reference")) for i in r.get("insurance", [])), None)
            if claim and cov:
                self.eob_coverage[claim] = cov
        if rtype.startswith("Medication"):
            self.meds[rtype] += 1
        if pid and rtype != "Patient":
            self.ids[(pid, rtype)].append(rid)
            cat = _first_category(r)
            if cat:
                self.categories[(pid, rtype, cat)] += 1
        for enc in _encounters_of(r):
            self.by_encounter[enc][rtype] += 1

    def _encounter(self, r: dict[str, Any], pid: str) -> EncounterInfo:
        period = r.get("period") or {}
        types = r.get("type") or [{}]
        text = types[0].get("text") or next((c.get("display", "") for c in types[0].get("coding", [])), "")
        practitioner = None
        for part in r.get("participant", []):
            ref = (part.get("individual") or {}).get("reference")
            if ref and ref.startswith("Practitioner"):
                practitioner = resolve_reference(ref, self.conditional)
                break
        return EncounterInfo(
            id=r["id"],
            patient_id=pid,
            class_code=(r.get("class") or {}).get("code", ""),
            type_text=text,
            start=_datetime(period.get("start")),
            end=_datetime(period.get("end")),
            practitioner_id=practitioner,
            visit=next((t.get("code", "") for t in (r.get("meta") or {}).get("tag", [])
                        if isinstance(t, dict) and t.get("system") == VISIT_SYSTEM), ""),
        )

    def finish(self, folder: Path, files: list[Path], fp: str, skipped: list[Path]) -> Population:
        claims = []
        for r in self.claims:
            pid = _patient_of(r) or ""
            enc = next((ref_id(e.get("reference")) for i in r.get("item", []) for e in i.get("encounter", [])), None)
            claims.append(ClaimInfo(id=r["id"], patient_id=pid, encounter_id=enc, coverage_id=self._claim_coverage(r, pid)))
        ids = {k: sorted(v) for k, v in self.ids.items()}
        meds = {f"{t} resources": n for t, n in sorted(self.meds.items())}
        meds["MedicationStatement resources"] = self.types.get("MedicationStatement", 0)
        meds["patients with a MedicationRequest"] = sum(1 for (_, t) in ids if t == "MedicationRequest")
        return Population(
            folder=folder,
            fingerprint=fp,
            files=files,
            patients=sorted(self.patients, key=lambda p: p.id),
            encounters=sorted(self.encounters, key=lambda e: (e.patient_id, _sort_time(e.start), e.id)),
            claims=sorted(claims, key=lambda c: (c.patient_id, c.id)),
            practitioners=sorted(self.practitioners),
            skipped=skipped,
            _ids=ids,
            _categories=self.categories,
            _by_encounter={k: dict(v) for k, v in self.by_encounter.items()},
            _types=dict(sorted(self.types.items())),
            _medications=meds,
        )

    def _claim_coverage(self, r: dict[str, Any], pid: str) -> str | None:
        """The Coverage a claim was paid under: its EOB's reference, else its payer's Coverage."""
        if r["id"] in self.eob_coverage:
            return self.eob_coverage[r["id"]]
        from paritybed.fhir.bundles import coverage_id

        own = set(self.ids.get((pid, "Coverage"), ()))
        for ins in r.get("insurance", []):
            display = (ins.get("coverage") or {}).get("display")
            if display and coverage_id(pid, display) in own:
                return coverage_id(pid, display)
        return None


def _patient_of(r: dict[str, Any]) -> str | None:
    for key in PATIENT_FIELDS:
        ref = r.get(key)
        if isinstance(ref, dict):
            pid = ref_id(ref.get("reference"))
            if pid:
                return pid
    return None


def _patient(r: dict[str, Any]) -> PatientInfo:
    birth = r.get("birthDate")
    try:
        born = date.fromisoformat(birth) if birth else None
    except ValueError:
        born = None
    deceased = bool(r.get("deceasedDateTime")) or bool(r.get("deceasedBoolean"))
    return PatientInfo(id=r["id"], gender=r.get("gender", "unknown"), birth_date=born, deceased=deceased)


def _first_category(r: dict[str, Any]) -> str | None:
    cats = r.get("category")
    if isinstance(cats, dict):  # some types have a single CodeableConcept
        cats = [cats]
    for cat in cats or []:
        for coding in cat.get("coding", []) if isinstance(cat, dict) else []:
            if coding.get("code"):
                return coding["code"]
        return None
    return None


def _encounters_of(r: dict[str, Any]) -> set[str]:
    """Encounter ids a resource points at: encounter, context (R4 MedicationAdministration),
    context.encounter[] (DocumentReference), item[].encounter[] (Claim, ExplanationOfBenefit)."""
    refs: list[str | None] = []
    enc = r.get("encounter")
    if isinstance(enc, dict):
        refs.append(enc.get("reference"))
    ctx = r.get("context")
    if isinstance(ctx, dict):
        refs.append(ctx.get("reference"))
        refs.extend(e.get("reference") for e in ctx.get("encounter", []) if isinstance(e, dict))
    if r.get("resourceType") in ("Claim", "ExplanationOfBenefit"):
        refs.extend(e.get("reference") for i in r.get("item", []) for e in i.get("encounter", []))
    return {i for i in (ref_id(x) for x in refs) if i}


def _datetime(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _sort_time(t: datetime | None) -> float:
    return t.timestamp() if t else float("-inf")
