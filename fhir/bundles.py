"""Synthea output folders as FHIR bundles on disk: which files, in which order, and how to make
them loadable by a FHIR server so that what the agents later read exists.

Both the population index (fhir/population.py) and the FHIR loader/server read Synthea data
through this module, so they agree on the load order and on the one change we make to
Synthea's bundles (`prepare_for_load`: contained Coverage becomes standalone Coverage, because
the prior-authorization agent searches ``Coverage?beneficiary=...``; see docs/population.md).

Synthea writes, per run:
  * ``hospitalInformation<ts>.json`` (Organization + Location) and
    ``practitionerInformation<ts>.json`` (Practitioner + PractitionerRole), ``batch`` bundles whose
    entries are ``POST`` with ``ifNoneExist``; older data sets prefix them with ``0-``;
  * one ``transaction`` bundle per patient (``<uuid>.json`` or ``Given_Family_<uuid>.json``),
    entries ``POST`` with ``urn:uuid:`` fullUrls; references are ``urn:uuid:...`` or conditional
    (``Practitioner?identifier=system|value``) resolving against the two batch bundles.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from paritybed.core.errors import EnvironmentProblem, InputError

#: Namespace of the deterministic ids of the Coverage resources `prepare_for_load` creates.
COVERAGE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://paritybed.dev/synthea/coverage")
#: Synthea's payer name for self-pay: not a coverage, so nothing is extracted for it.
NO_INSURANCE = "NO_INSURANCE"
URN = "urn:uuid:"


class BundleError(InputError):
    """A bundle file that cannot be used: not JSON, not a Bundle, or invalid under --strict."""


# ------------------------------------------------------------------------------------ files
def _kind(name: str) -> int:
    """Load rank of a file name: 0 hospital/organizations, 1 practitioners, 2 patients."""
    bare = name[2:] if name.startswith("0-") else name
    if bare.startswith("hospitalInformation"):
        return 0
    if bare.startswith("practitionerInformation"):
        return 1
    return 2


def synthea_files(folder: Path) -> list[Path]:
    """The bundle files of a Synthea output folder, in load order.

    Organizations/Locations first and Practitioners second, because the patient bundles refer
    to them by conditional reference; then the patient bundles sorted by file name (a stable
    order, so fingerprints and loads are deterministic).  Accepts Synthea's ``fhir/`` folder or
    its parent (Synthea 3 writes under ``<baseDirectory>/fhir/``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Synthea folder not found: {folder}")
    if (folder / "fhir").is_dir() and any((folder / "fhir").glob("*.json")):
        folder = folder / "fhir"
    files = [p for p in folder.iterdir() if p.suffix == ".json" and p.is_file()]
    if not files:
        raise InputError(
            f"no FHIR bundles (*.json) in {folder}",
            hint="point at a Synthea output folder (its fhir/ subfolder or the folder above it)",
        )
    return sorted(files, key=lambda p: (_kind(p.name), p.name))


def is_infrastructure(path: Path) -> bool:
    """True for the hospital and practitioner bundles (not a patient's record)."""
    return _kind(path.name) < 2


# ----------------------------------------------------------------------------------- reading
def read_bundle(path: Path, *, strict: bool = False) -> dict[str, Any]:
    """Parse one bundle file; `BundleError` names the file and what is wrong.

    Under `strict` the bundle is also validated as FHIR R4 with fhir.resources (through its
    R4B models, which parse R4 data), and the first validation error is reported.
    """
    path = Path(path)
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        found = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{path}: not a FHIR Bundle (resourceType is {found!r})")
    entries = data.get("entry", [])
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("resource"), dict) for e in entries
    ):
        raise BundleError(f"{path}: Bundle.entry must be a list of entries with a resource")
    if strict:
        validate_bundle(data, path)
    return data


def validate_bundle(data: dict[str, Any], path: Path) -> None:
    """Validate a parsed bundle as FHIR R4 (fhir.resources R4B models); raise BundleError."""
    from pydantic import ValidationError

    Bundle = _r4_bundle_model()

    try:
        Bundle.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise BundleError(f"{path}: invalid FHIR R4 Bundle at {where or '(root)'}: {first.get('msg')}") from None
    except Exception as e:  # noqa: BLE001 - fhir.resources raises plain errors for some inputs
        raise BundleError(f"{path}: invalid FHIR R4 Bundle: {e}") from None


def _r4_bundle_model() -> type:
    """fhir.resources' R4 Bundle model (heavy import, only under --strict).

    When the checkout's root is on sys.path (``python -m ...`` run from it) its ``fhir/`` folder
    shadows the ``fhir`` namespace package of fhir.resources; say so instead of a traceback.
    """
    try:
        from fhir.resources.R4B.bundle import Bundle
    except ModuleNotFoundError as e:
        raise EnvironmentProblem(
            f"cannot import fhir.resources ({e})",
            hint="the paritybed checkout's fhir/ folder shadows it when the checkout root is on "
            "sys.path: run `paritybed` or `python -P -m ...` instead of `python -m` from the checkout",
        ) from None
    return Bundle


def ref_id(reference: str | None) -> str | None:
    """The id in a literal reference: ``urn:uuid:X`` or ``Type/X`` -> X; else None."""
    if not reference:
        return None
    if reference.startswith(URN):
        return reference[len(URN):]
    if "?" in reference or reference.startswith("#"):
        return None
    return reference.rsplit("/", 1)[-1] or None


def conditional_targets(bundle: dict[str, Any]) -> dict[str, str]:
    """Conditional references this (batch) bundle satisfies -> the id of the target.

    For each entry with ``request.ifNoneExist`` = ``identifier=sys|val`` the key is
    ``<Type>?identifier=sys|val``, exactly how patient bundles write the reference, and the value
    is the resource id (the embedded server and the loader keep Synthea's ids).
    """
    out: dict[str, str] = {}
    for entry in bundle.get("entry", []):
        res, req = entry["resource"], entry.get("request") or {}
        cond = req.get("ifNoneExist")
        rid = res.get("id") or ref_id(entry.get("fullUrl"))
        if cond and rid:
            out[f"{res['resourceType']}?{cond}"] = rid
        for ident in res.get("identifier", []) if rid else []:
            if ident.get("system") and ident.get("value"):
                out.setdefault(f"{res['resourceType']}?identifier={ident['system']}|{ident['value']}", rid)
    return out


def resolve_reference(reference: str | None, conditional: dict[str, str]) -> str | None:
    """The target id of a literal or conditional reference (None if it does not resolve)."""
    if reference and "?" in reference:
        return conditional.get(reference)
    return ref_id(reference)


# --------------------------------------------------------------------------- prepare_for_load
def coverage_id(patient_id: str, payer: str) -> str:
    """Deterministic id of the standalone Coverage of `patient_id` with `payer`."""
    return str(uuid.uuid5(COVERAGE_NAMESPACE, f"{patient_id}|{payer}"))


def _payer(cov: dict[str, Any]) -> str | None:
    payors = cov.get("payor") or []
    name = (payors[0].get("display") if payors else None) or (cov.get("type") or {}).get("text")
    return name or None


def prepare_for_load(bundle: dict[str, Any]) -> dict[str, Any]:
    """Make a Synthea patient bundle's Coverage searchable: one standalone Coverage per payer.

    Synthea puts Coverage only *inside* each ExplanationOfBenefit (``contained``, referenced as
    ``#coverage``), so ``GET Coverage?beneficiary=...`` finds nothing on any server.  Here each
    contained Coverage is moved out: one Coverage resource per (patient, payer), id
    ``uuid5(patient id | payer)``, fullUrl ``urn:uuid:<id>``, ``POST Coverage`` in transaction
    bundles, ``beneficiary`` = the patient's urn, ``period`` spanning the EOBs' billable periods;
    each EOB's ``insurance[].coverage.reference`` then points at that urn and its contained
    Coverage is removed (a contained resource must be referenced from its container).
    Self-pay (``NO_INSURANCE``) is not a coverage and stays as Synthea wrote it.

    Returns a new bundle (the input is not modified); idempotent: preparing a prepared bundle
    returns an equal bundle.  Bundles without contained Coverage come back unchanged.
    """
    entries = bundle.get("entry", [])
    patient_urn: str | None = None
    for entry in entries:
        if entry["resource"].get("resourceType") == "Patient":
            patient_urn = entry.get("fullUrl") or f"{URN}{entry['resource'].get('id')}"
            break
    if patient_urn is None or not any(
        c.get("resourceType") == "Coverage"
        for e in entries if e["resource"].get("resourceType") == "ExplanationOfBenefit"
        for c in e["resource"].get("contained", [])
    ):
        return bundle
    patient_id = ref_id(patient_urn) or ""
    existing = {e["resource"].get("id") for e in entries if e["resource"].get("resourceType") == "Coverage"}
    created: dict[str, dict[str, Any]] = {}  # coverage id -> Coverage resource
    new_entries: list[dict[str, Any]] = []
    for entry in entries:
        res = entry["resource"]
        if res.get("resourceType") == "ExplanationOfBenefit":
            entry = _extract_eob_coverage(entry, patient_id, patient_urn, created)
        new_entries.append(entry)
    transaction = bundle.get("type") in ("transaction", "batch")
    cov_entries = []
    for cid, cov in created.items():
        if cid in existing:
            continue
        e: dict[str, Any] = {"fullUrl": f"{URN}{cid}", "resource": cov}
        if transaction:
            e["request"] = {"method": "POST", "url": "Coverage"}
        cov_entries.append(e)
    # Right after the Patient, so a reader sees the Coverage before the claims that use it.
    at = next(i for i, e in enumerate(new_entries) if e["resource"].get("resourceType") == "Patient") + 1
    out = dict(bundle)
    out["entry"] = new_entries[:at] + cov_entries + new_entries[at:]
    return out


def _extract_eob_coverage(
    entry: dict[str, Any], patient_id: str, patient_urn: str, created: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One EOB entry with its contained Coverage moved into `created` (a new entry if changed)."""
    eob = entry["resource"]
    contained = eob.get("contained", [])
    covs = {f"#{c.get('id')}": c for c in contained if c.get("resourceType") == "Coverage"}
    if not covs:
        return entry
    moved: dict[str, str] = {}  # "#coverage" -> urn of the standalone Coverage
    for local, cov in covs.items():
        payer = _payer(cov)
        if not payer or payer == NO_INSURANCE:
            continue
        cid = coverage_id(patient_id, payer)
        moved[local] = f"{URN}{cid}"
        standalone = created.get(cid)
        if standalone is None:
            standalone = {
                "resourceType": "Coverage",
                "id": cid,
                "status": cov.get("status", "active"),
                "type": cov.get("type") or {"text": payer},
                "beneficiary": {"reference": patient_urn},
                "payor": cov.get("payor") or [{"display": payer}],
            }
            created[cid] = standalone
        _widen_period(standalone, eob.get("billablePeriod") or {})
    if not moved:
        return entry
    new_eob = dict(eob)
    kept = [c for c in contained if f"#{c.get('id')}" not in moved]
    if kept:
        new_eob["contained"] = kept
    else:
        new_eob.pop("contained", None)
    insurance = []
    for ins in eob.get("insurance", []):
        ref = (ins.get("coverage") or {}).get("reference")
        if ref in moved:
            ins = {**ins, "coverage": {**ins["coverage"], "reference": moved[ref]}}
        insurance.append(ins)
    if insurance:
        new_eob["insurance"] = insurance
    return {**entry, "resource": new_eob}


def _widen_period(cov: dict[str, Any], period: dict[str, Any]) -> None:
    """Extend Coverage.period to include `period` (compared as instants: offsets may differ)."""
    start, end = period.get("start"), period.get("end") or period.get("start")
    if not start:
        return
    cur = cov.setdefault("period", {"start": start, "end": end})
    if _instant(start) < _instant(cur["start"]):
        cur["start"] = start
    if end and _instant(end) > _instant(cur.get("end") or end):
        cur["end"] = end


def _instant(value: str) -> datetime:
    """A FHIR dateTime as an aware datetime (dates and naive times read as UTC)."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
