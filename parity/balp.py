"""Reading HAPI FHIR's IHE Basic Audit Log Patterns (BALP) AuditEvents into profile rows.

What HAPI's ``BalpAuditCaptureInterceptor`` writes differs from paritybed's own AuditEvent form
(parity/auditevent.py) in four places; these helpers let the one reader accept both:

* resource type: no entity typed with ``http://hl7.org/fhir/resource-types``; a read, create or
  update names the resource in the data entity (role 4, domain resource), absolute
  (``http://host/fhir/Observation/1``); a search has a query entity (role 24) whose ``query`` is
  the base64 request URL.
* client: ``agent[0].who.identifier`` as paritybed's launcher presents it (fhir/hapi/
  AgentIdentity.java): value ``<agent>/<replica>``, the class in ``identifier.type`` with system
  ``urn:paritybed:agent-class``; HAPI sets no ``role`` and no ``altId``.
* break-glass claim: the user agent's ``who.identifier`` with system
  ``urn:paritybed:break-glass-claim`` (HAPI never knows the lane: the reader takes it from the
  activation AuditEvent with the same claim, when the export holds one).
* time: ``recorded`` is the server's wall clock.  A live run on the virtual clock reaches the
  server at machine pace, so its requests carry the simulated instant in ``X-Request-ID``
  (``pb-<epoch ns>-<row>``), which BALP keeps as the ``XrequestId`` entity; ``request_time``
  reads it (``paritybed profile --time request-id``).
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import urlsplit

from paritybed.enforcer.classify import R4_TYPES

OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
REQUEST_ID_TYPE = ("https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "XrequestId")
CLASS_SYSTEM = "urn:paritybed:agent-class"
CLAIM_SYSTEM = "urn:paritybed:break-glass-claim"
_REQUEST_ID = re.compile(r"^pb-(\d+)-\d+$")


def type_from_url(url: str) -> str | None:
    """The R4 resource type a (relative or absolute) FHIR URL addresses: the last path segment
    that is a type name, looked for from the end (``.../fhir/Observation/1`` -> Observation)."""
    for seg in reversed(urlsplit(url).path.split("/")):
        if seg in R4_TYPES:
            return seg
    return None


def resource_type(entities: list[dict[str, Any]]) -> str | None:
    """The resource type of a BALP event: from the data entity's reference, else the query."""
    for e in entities:
        if (e.get("role") or {}).get("system") == OBJECT_ROLE and (e.get("role") or {}).get("code") == "4":
            t = type_from_url((e.get("what") or {}).get("reference", ""))
            if t:
                return t
    for e in entities:
        if (e.get("role") or {}).get("code") == "24":
            if e.get("query"):
                try:
                    t = type_from_url(base64.b64decode(e["query"]).decode("utf-8", "replace"))
                except ValueError:
                    t = None
                if t:
                    return t
            desc = e.get("description") or ""
            t = type_from_url(desc.split(" ", 1)[-1])
            if t:
                return t
    return None


def agent_class(agent: dict[str, Any]) -> str | None:
    """The class from the client's ``who.identifier.type`` (paritybed's HAPI launcher)."""
    ident = (agent.get("who") or {}).get("identifier") or {}
    for c in (ident.get("type") or {}).get("coding", []) or []:
        if c.get("system") == CLASS_SYSTEM and c.get("code"):
            return c["code"]
    return None


def claim(agents: list[dict[str, Any]]) -> str:
    """The break-glass claim a user agent carries as its identifier, or ''."""
    for a in agents:
        ident = (a.get("who") or {}).get("identifier") or {}
        if ident.get("system") == CLAIM_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return ""


def request_id(ev: dict[str, Any]) -> str | None:
    """The request id BALP recorded (the client's X-Request-ID, or the one HAPI made up).  HAPI
    writes one AuditEvent per patient whose records a request returned (a CareTeam search that
    returns three patients' teams is three events), so the reader counts a request once by it."""
    for e in ev.get("entity", []) or []:
        t = e.get("type") or {}
        if (t.get("system"), t.get("code")) == REQUEST_ID_TYPE:
            v = ((e.get("what") or {}).get("identifier") or {}).get("value")
            if isinstance(v, str) and v:
                return v
    return None


def request_time(ev: dict[str, Any]) -> int | None:
    """The simulated instant (epoch ns) a paritybed request carried in X-Request-ID, or None."""
    for e in ev.get("entity", []) or []:
        t = e.get("type") or {}
        if (t.get("system"), t.get("code")) == REQUEST_ID_TYPE:
            m = _REQUEST_ID.match(((e.get("what") or {}).get("identifier") or {}).get("value", ""))
            if m:
                return int(m.group(1))
    return None
