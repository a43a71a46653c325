"""Export a FHIR server's AuditEvents as NDJSON: the production audit trail `paritybed profile` reads.

    n = export_auditevents("http://127.0.0.1:8080/fhir", "audit.ndjson", since="2026-12-03T14:00:00Z")

An ordinary paged search, ``GET AuditEvent?date=ge<since>&date=lt<until>&_count=1000``, following
the server's ``next`` links, one resource per line.  ``until`` defaults to the moment the export
starts, so the AuditEvents the server writes about the export's own searches (BALP audits
every search, this one included) are left out.  Against paritybed's HAPI launcher the export
first waits until its BALP writer has stored every event it was handed
(``GET /paritybed/audit``: ``pending`` 0); other servers are exported as they are.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import httpx
import orjson

from paritybed.core.errors import EnvironmentProblem

PAGE = 1000


def _instant(value: str | dt.datetime | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wait_for_audit_writer(base: str, timeout: float = 120.0) -> None:
    """Wait until paritybed's HAPI launcher has stored every BALP AuditEvent (no-op elsewhere)."""
    root = base.rstrip("/").rsplit("/fhir", 1)[0]
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as c:
        while True:
            try:
                r = c.get(f"{root}/paritybed/audit")
            except httpx.TransportError as e:
                raise EnvironmentProblem(f"FHIR server at {base} unreachable: {e}") from None
            if r.status_code != 200:
                return  # not paritybed's launcher: nothing to wait for
            status = r.json()
            if status.get("pending", 0) == 0:
                if status.get("failed"):
                    raise EnvironmentProblem(f"the HAPI server failed to store {status['failed']} BALP AuditEvents: "
                                             f"{status.get('last_error', '')}")
                return
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"the HAPI server still had {status['pending']} AuditEvents to store after "
                                         f"{timeout:.0f} s")
            time.sleep(0.2)


def export_auditevents(base: str, out: str | Path, *, since: str | dt.datetime | None = None,
                       until: str | dt.datetime | None = None) -> int:
    """Write the AuditEvents recorded in [since, until) at `base` to `out` (NDJSON); returns the count."""
    until = _instant(until) or _instant(dt.datetime.now(dt.timezone.utc))
    wait_for_audit_writer(base)
    params = [("date", f"lt{until}"), ("_count", str(PAGE)), ("_sort", "date")]
    if since is not None:
        params.insert(0, ("date", f"ge{_instant(since)}"))
    url: str | None = f"{base.rstrip('/')}/AuditEvent"
    n = 0
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=120, headers={"Accept": "application/fhir+json"}) as c, Path(out).open("wb") as f:
        query: list[tuple[str, str]] | None = params
        while url:
            try:
                r = c.get(url, params=query)
            except httpx.TransportError as e:
                raise EnvironmentProblem(f"FHIR server at {base} unreachable while exporting AuditEvents: {e}") from None
            if r.status_code != 200:
                raise EnvironmentProblem(f"GET {r.request.url} answered {r.status_code}: {r.text[:300]}")
            bundle = r.json()
            for entry in bundle.get("entry", []):
                res = entry.get("resource")
                if isinstance(res, dict) and res.get("resourceType") == "AuditEvent":
                    f.write(orjson.dumps(res) + b"\n")
                    n += 1
            url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
            query = None  # the next link carries the paging state
    return n
