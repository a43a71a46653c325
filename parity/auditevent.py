"""FHIR R4 AuditEvent: the trace as an AuditEvent export, and a profile from such an export.

``auditevents_from_trace`` shows the format (and lets the tests run the round trip
trace -> AuditEvents -> profile -> criteria == trace -> profile -> criteria).
``profile_from_auditevents`` reads a hospital's NDJSON export and keeps aggregates only.

Field mapping (docs/parity.md, "Profiles from AuditEvent"):

De-identification fails closed (parity/deid.py): only codes and fixed vocabularies reach the
profile; display strings, descriptions, details and identifiers are never copied.

* time: ``recorded`` (fractional seconds to the nanosecond are kept).
* agent class: the user's mapping of client ids (an agent's ``who.identifier.value`` or
  ``who.reference``) to classes (``paritybed profile --agent-classes``), else the first
  non-requestor agent's ``role`` coding with system ``urn:paritybed:agent-class`` (a code).
  Never a display string: an event neither names is left out and counted.
* replica stream: the class's agent's client id + ``altId``, renamed ``<class>#<n>``.
* FHIR request: ``type`` = audit-event-type ``rest``; interaction from ``subtype``
  (restful-interaction: read, vread, search-type/-system, create, update, delete,
  history-instance/-type); resource type (an R4 type) from the ``entity`` whose ``type`` is in
  ``http://hl7.org/fhir/resource-types``.
* egress connect: ``type`` ``urn:paritybed:audit-event-type|egress``; endpoint name (a code) in
  ``entity.name``.
* break-glass activation: ``type`` DCM 110113 Security Alert, ``subtype`` DCM 110127 Emergency
  Override Started, ``period`` = activation to requested expiry; the class from ``purposeOfUse``
  with system ``urn:paritybed:break-glass-class`` (or ``break_glass`` when only v3 ActReason BTG is
  given; ``purposeOfEvent`` on the event or ``purposeOfUse`` on an agent); accesses under it carry it and the claim in ``agent.policy``.
* clinical context: the ``entity`` with ``type`` ``urn:paritybed:entity-type|context`` (else the
  Encounter the event references); it is only counted, never kept.

HAPI FHIR's BALP AuditEvents are read too (where they differ: parity/balp.py): the resource type
from the data or query entity, the class from the code in ``who.identifier.type`` (system
``urn:paritybed:agent-class``, as paritybed's HAPI launcher records it), the claim from the user
agent; an access with a claim but no lane takes the lane of the activation with that claim.  ``time="request-id"`` times events by the simulated instant in their request id.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa

from paritybed.core.errors import InputError
from paritybed.core.units import epoch_ns
from paritybed.enforcer.classify import R4_TYPES
from paritybed.parity import balp
from paritybed.parity.deid import require_code
from paritybed.parity.profile import Profile, Stream, build_profile, pair_key

REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}
EGRESS = {"system": "urn:paritybed:audit-event-type", "code": "egress", "display": "Egress connection"}
SECURITY_ALERT = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110113", "display": "Security Alert"}
OVERRIDE_STARTED = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110127",
                    "display": "Emergency Override Started"}
AGENT_CLASS = "urn:paritybed:agent-class"
BTG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG", "display": "break the glass"}
INTERACTION_CODE = {"read": "read", "vread": "vread", "search": "search-type", "create": "create", "update": "update",
                    "delete": "delete", "history": "history-instance"}
CODE_INTERACTION = {"read": "read", "vread": "vread", "search-type": "search", "search-system": "search",
                    "search": "search", "create": "create", "update": "update", "delete": "delete",
                    "history-instance": "history", "history-type": "history", "history-system": "history",
                    "history": "history"}
ACTION = {"read": "R", "vread": "R", "search": "E", "create": "C", "update": "U", "delete": "D", "history": "R"}
SOURCE = {"observer": {"display": "paritybed"},
          "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                    "display": "Application Server"}]}


def instant(origin_ns: int, t_ns: int) -> str:
    """An R4 instant with nanosecond fraction, UTC: 2026-01-05T07:00:00.000000001Z."""
    ns = origin_ns + t_ns
    sec, frac = divmod(ns, 1_000_000_000)
    d = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=sec)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def parse_instant(s: str) -> int:
    """Epoch ns of an R4 instant (any fraction length, Z or an offset)."""
    try:
        main, _, rest = s.partition(".")
        tz = "Z"
        frac = ""
        if rest:
            i = 0
            while i < len(rest) and rest[i].isdigit():
                i += 1
            frac, tz = rest[:i], rest[i:]
        else:
            if main.endswith("Z"):
                main, tz = main[:-1], "Z"
            elif len(main) > 19:
                main, tz = main[:19], main[19:]
        d = dt.datetime.fromisoformat(main + ("+00:00" if tz in ("Z", "") else tz))
    except ValueError:
        raise ValueError(f"not a FHIR instant: {s!r}") from None
    return epoch_ns(d) + int((frac + "000000000")[:9] or 0)


def _agent(name: str, cls: str, replica: int, claim: str, lane: str) -> dict[str, Any]:
    a: dict[str, Any] = {"who": {"identifier": {"system": "urn:paritybed:agent", "value": name}},
                         "role": [{"coding": [{"system": AGENT_CLASS, "code": cls}]}],
                         "altId": str(replica), "requestor": False}
    if claim:
        a["policy"] = [f"urn:paritybed:break-glass-claim:{claim}"]
    if lane:
        a["purposeOfUse"] = [{"coding": [BTG, {"system": "urn:paritybed:break-glass-class", "code": lane}]}]
    return a


def auditevents_from_trace(trace: pa.Table, start: dt.datetime, *, legitimate_only: bool = True) -> Iterator[dict[str, Any]]:
    """One AuditEvent per trace row (``expected=allow`` rows unless ``legitimate_only=False``),
    in time order, as a hospital's audit export would hold them."""
    origin = epoch_ns(start)
    cols = trace.select(["t_ns", "agent", "agent_class", "replica", "kind", "resource_type", "interaction",
                         "resource_id", "context_id", "context_kind", "patient_id", "lane", "claim_id",
                         "identity", "duration_ns", "endpoint", "address", "expected", "seq"]).to_pylist()
    for r in cols:
        if legitimate_only and r["expected"] == "deny":
            continue
        ev: dict[str, Any] = {"resourceType": "AuditEvent", "id": f"{trace['arm'][0].as_py()}-{r['seq']}",
                              "recorded": instant(origin, r["t_ns"]), "outcome": "0", "source": SOURCE}
        agent = _agent(r["agent"], r["agent_class"], r["replica"], r["claim_id"], r["lane"])
        entities: list[dict[str, Any]] = []
        if r["kind"] == "fhir":
            ev["type"] = REST
            ev["subtype"] = [{"system": "http://hl7.org/fhir/restful-interaction", "code": INTERACTION_CODE.get(
                r["interaction"], r["interaction"])}]
            ev["action"] = ACTION.get(r["interaction"], "E")
            ent: dict[str, Any] = {"type": {"system": "http://hl7.org/fhir/resource-types", "code": r["resource_type"]}}
            if r["resource_id"]:
                ent["what"] = {"reference": f"{r['resource_type']}/{r['resource_id']}"}
            entities.append(ent)
        elif r["kind"] == "egress":
            ev["type"] = EGRESS
            ev["action"] = "E"
            ent = {"what": {"identifier": {"system": "urn:paritybed:endpoint", "value": r["address"]}}}
            if r["endpoint"]:
                ent["name"] = r["endpoint"]
            entities.append(ent)
        else:  # lane_open
            ev["type"] = SECURITY_ALERT
            ev["subtype"] = [OVERRIDE_STARTED]
            ev["action"] = "E"
            ev["period"] = {"start": instant(origin, r["t_ns"]), "end": instant(origin, r["t_ns"] + r["duration_ns"])}
            ev["purposeOfEvent"] = [{"coding": [BTG, {"system": "urn:paritybed:break-glass-class", "code": r["lane"]}]}]
        if r["patient_id"]:
            entities.append({"what": {"reference": f"Patient/{r['patient_id']}"},
                             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}})
        if r["context_id"]:
            entities.append({"what": {"identifier": {"system": f"urn:paritybed:context:{r['context_kind'] or 'context'}",
                                                     "value": r["context_id"]}},
                             "type": {"system": "urn:paritybed:entity-type", "code": "context"}})
        agents = [agent]
        if r["identity"]:
            agents.append({"who": {"identifier": {"system": "urn:paritybed:clinician", "value": r["identity"]}},
                           "requestor": True})
        ev["agent"] = agents
        if entities:
            ev["entity"] = entities
        yield ev


def write_ndjson(events: Iterable[dict[str, Any]], path: str | Path) -> int:
    n = 0
    with Path(path).open("wb") as f:
        for e in events:
            f.write(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n")
            n += 1
    return n


def _coding(cc: Any) -> list[dict[str, Any]]:
    if isinstance(cc, dict):
        return cc.get("coding", []) if "coding" in cc else [cc]
    return []


def _client_ids(agent: dict[str, Any]) -> list[str]:
    """The ids a client (software) agent is known by: its identifier value and its reference."""
    who = agent.get("who") or {}
    ids = [(who.get("identifier") or {}).get("value"), who.get("reference")]
    return [x for x in ids if isinstance(x, str) and x]


def _agent_class(agents: list[dict[str, Any]], classes: dict[str, str] | None,
                 where: str) -> tuple[str, dict[str, Any]] | None:
    """(agent class, the agent it belongs to): from the user's mapping of client ids to classes,
    else from the coded role (system urn:paritybed:agent-class); never from a display string or an
    identifier value.  None when neither says."""
    for a in agents if classes else []:
        for cid in _client_ids(a):
            if cid in classes:  # type: ignore[operator]
                return classes[cid], a  # type: ignore[index]
    a0 = next((a for a in agents if not a.get("requestor")), agents[0] if agents else {})
    for r in a0.get("role", []) or []:
        for c in _coding(r):
            if c.get("system") == AGENT_CLASS:
                return require_code(c.get("code"), f"{where}: agent.role ({AGENT_CLASS})"), a0
    coded = balp.agent_class(a0)  # HAPI's BALP: coded in who.identifier.type (fhir/hapi/AgentIdentity)
    if coded is not None:
        return require_code(coded, f"{where}: agent.who.identifier.type ({AGENT_CLASS})"), a0
    return None


def _row(ev: dict[str, Any], classes: dict[str, str] | None, where: str,
         time: str = "recorded") -> dict[str, Any] | None:
    """The aggregate-relevant fields of one AuditEvent, or None for events we do not profile.
    Only codes leave this function (parity/deid.py): the stream key and the context are kept
    for counting and pseudonymised or dropped before anything is written.  An event we profile
    whose agent class nobody gave comes back as ``{"unclassified": True}``."""
    typ = ev.get("type") or {}
    code = (typ.get("system"), typ.get("code"))
    subs = [(c.get("system"), c.get("code")) for c in ev.get("subtype", []) or []]
    entities = ev.get("entity", []) or []
    out: dict[str, Any] = {"kind": "", "pair": "", "lane": "", "claim": "", "dur": 0, "ctx": "", "endpoint": ""}
    if code == ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest"):
        inter = next((CODE_INTERACTION.get(c) for s, c in subs if c in CODE_INTERACTION), None)
        rtype = next(((e.get("type") or {}).get("code") for e in entities
                      if (e.get("type") or {}).get("system") == "http://hl7.org/fhir/resource-types"), None) \
            or balp.resource_type(entities)
        if inter is None or rtype is None:
            return None
        if rtype not in R4_TYPES:
            raise ValueError(f"entity.type (http://hl7.org/fhir/resource-types) {str(rtype)[:40]!r} is not an R4 resource type")
        out.update(kind="fhir", pair=pair_key(rtype, inter))
    elif code == (EGRESS["system"], EGRESS["code"]):
        name = next((e["name"] for e in entities if e.get("name")), "")
        out.update(kind="egress", endpoint=require_code(name, f"{where}: entity.name (egress endpoint)") if name else "")
    elif (OVERRIDE_STARTED["system"], OVERRIDE_STARTED["code"]) in subs:
        per = ev.get("period") or {}
        if per.get("start") and per.get("end"):
            out["dur"] = parse_instant(per["end"]) - parse_instant(per["start"])
        out.update(kind="lane_open")
    else:
        return None
    agents = ev.get("agent") or []
    found = _agent_class(agents, classes, where)
    if found is None:
        return {"unclassified": True}
    cls, agent = found
    for p in (ev.get("purposeOfEvent", []) or []) + [q for a in agents for q in (a.get("purposeOfUse", []) or [])]:
        for c in _coding(p):
            if c.get("system") == "urn:paritybed:break-glass-class":
                out["lane"] = require_code(c.get("code"), f"{where}: purposeOfUse (urn:paritybed:break-glass-class)")
            elif c.get("code") == "BTG" and not out["lane"]:
                out["lane"] = "break_glass"
    out["claim"] = next((u.split(":", 3)[-1] for a in agents for u in a.get("policy", []) or []
                         if u.startswith("urn:paritybed:break-glass-claim:")), "") or balp.claim(agents)
    ids = _client_ids(agent)
    t = balp.request_time(ev) if time == "request-id" else None
    out.update(t=parse_instant(ev["recorded"]) if t is None else t, cls=cls,
               stream=(cls, ids[0] if ids else "", str(agent.get("altId", "0"))))
    for e in entities:
        et = e.get("type") or {}
        if et.get("system") == "urn:paritybed:entity-type" and et.get("code") == "context":
            out["ctx"] = ((e.get("what") or {}).get("identifier") or {}).get("value", "")
    if not out["ctx"]:
        for e in entities:
            ref = (e.get("what") or {}).get("reference", "")
            if ref.startswith("Encounter/") or "/Encounter/" in ref:
                out["ctx"] = ref
    return out


@dataclass
class AuditRows:
    """The profile-relevant rows of an export, and how many events were left out for want of an
    agent class (another application's traffic, or a client missing from the mapping)."""

    rows: list[dict[str, Any]]
    unclassified: int = 0


def read_auditevents(paths: str | Path | Iterable[str | Path], *, agent_classes: dict[str, str] | None = None,
                     time: str = "recorded") -> AuditRows:
    """Parse AuditEvent NDJSON exports (one or several files read as one audit trail, e.g. the FHIR
    server's and the EHR's break-glass log) into profile rows; errors name the file and line.
    ``agent_classes`` maps client ids to agent classes (parity/deid.py); ``time``: ``recorded`` or
    ``request-id`` (parity/balp.py)."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    rows: list[dict[str, Any]] = []
    unclassified = 0
    requests: set[tuple[str, str]] = set()  # (request id, pair) already counted
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such AuditEvent export")
        with p.open("rb") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    ev = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise InputError(f"{p}:{lineno}: not valid JSON ({e})") from None
                if not isinstance(ev, dict) or ev.get("resourceType") != "AuditEvent":
                    found = ev.get("resourceType") if isinstance(ev, dict) else type(ev).__name__
                    raise InputError(f"{p}:{lineno}: expected a FHIR AuditEvent, found {found!r}")
                if "recorded" not in ev:
                    raise InputError(f"{p}:{lineno}: AuditEvent without 'recorded' (required in R4)")
                try:
                    r = _row(ev, agent_classes, f"{p}:{lineno}", time)
                except ValueError as e:
                    raise InputError(f"{p}:{lineno}: {e}") from None
                if r is not None and r.get("unclassified"):
                    unclassified += 1
                elif r is not None:
                    rid = balp.request_id(ev) if r["kind"] == "fhir" else None
                    if rid is not None:
                        if (rid, r["pair"]) in requests:
                            continue  # another patient's event of the same request
                        requests.add((rid, r["pair"]))
                    rows.append(r)
    names = ", ".join(map(str, paths))
    if not rows:
        if unclassified:
            raise InputError(f"{names}: none of its {unclassified} AuditEvents of agent traffic says which agent class "
                             "made it", hint=f"give --agent-classes MAP.json (client id -> class), or code agent.role "
                                              f"with system {AGENT_CLASS}; display names are never used")
        raise InputError(f"{names}: no AuditEvent of a FHIR request, egress connect or break-glass activation found",
                         hint="see docs/parity.md for the fields paritybed reads")
    # HAPI sees a break-glass claim but not its lane: the activation with that claim names it
    lanes = {r["claim"]: r["lane"] for r in rows if r["kind"] == "lane_open" and r["claim"] and r["lane"]}
    for r in rows:
        if r["claim"] and not r["lane"] and r["claim"] in lanes:
            r["lane"] = lanes[r["claim"]]
    return AuditRows(rows, unclassified)


def _enc(values: list[str]) -> tuple[np.ndarray, list[str]]:
    a = pa.array(values, type=pa.string()).dictionary_encode()
    return a.indices.to_numpy(zero_copy_only=False).astype(np.int64), a.dictionary.to_pylist()


def profile_from_auditevents(paths: str | Path | Iterable[str | Path], *, arm: str = "production",
                             agent_classes: dict[str, str] | None = None, time: str = "recorded") -> Profile:
    """The de-identified profile of AuditEvent NDJSON exports (aggregates only)."""
    return profile_from_rows(read_auditevents(paths, agent_classes=agent_classes, time=time).rows, arm=arm)


def profile_from_rows(rows: list[dict[str, Any]], *, arm: str = "production") -> Profile:
    """The profile of rows from ``read_auditevents``.  Replica streams are named ``<class>#<n>``,
    numbered in the order of their client id and altId: the names of the export never reach it."""
    rows = sorted(rows, key=lambda r: r["t"])
    t = np.array([r["t"] for r in rows], dtype=np.int64)
    pseudonym: dict[tuple[str, str, str], str] = {}
    for key in sorted({r["stream"] for r in rows}):
        pseudonym[key] = f"{key[0]}#{sum(1 for k in pseudonym if k[0] == key[0])}"
    cls_c, cls_v = _enc([r["cls"] for r in rows])
    st_c, st_v = _enc([pseudonym[r["stream"]] for r in rows])
    pair_c, pair_v = _enc([r["pair"] for r in rows])
    lane_c, lane_v = _enc([r["lane"] for r in rows])
    ctx_c, ctx_v = _enc([r["ctx"] for r in rows])
    claim_c, claim_v = _enc([r["claim"] for r in rows])
    ep_c, ep_v = _enc([r["endpoint"] for r in rows])
    kind = np.array([r["kind"] for r in rows])
    s = Stream(abs_ns=t, agent_class=cls_v, cls_c=cls_c, stream_c=st_c, stream_v=st_v,
               kind_fhir=kind == "fhir", kind_egress=kind == "egress", kind_open=kind == "lane_open",
               pair_c=pair_c, pair_v=pair_v, lane_c=lane_c, lane_v=lane_v, legit=np.ones(len(rows), dtype=bool),
               context_c=ctx_c, context_v=ctx_v, claim_c=claim_c, claim_v=claim_v,
               duration_ns=np.array([r["dur"] for r in rows], dtype=np.int64), endpoint_c=ep_c, endpoint_v=ep_v)
    return build_profile(s, source="auditevent", arm=arm)
