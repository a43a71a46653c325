"""FHIR R4 AuditEvent: the trace as an AuditEvent export, and a profile from such an export.

``auditevents_from_trace`` shows the format (and lets the tests run the round trip
trace -> AuditEvents -> profile -> criteria == trace -> profile -> criteria).
``profile_from_auditevents`` reads a hospital's NDJSON export and keeps aggregates only.

Field mapping (docs/parity.md, "Profiles from AuditEvent"):

* time: ``recorded`` (fractional seconds to the nanosecond are kept).
* agent class: ``agent[0].role`` coding with system ``urn:paritybed:agent-class``; without it,
  the ``agent[0].who.identifier.value`` (the agent's name) stands for its class.
* replica stream: ``agent[0].who.identifier.value`` + ``agent[0].altId``.
* FHIR request: ``type`` = audit-event-type ``rest``; interaction from ``subtype``
  (restful-interaction: read, vread, search-type/-system, create, update, delete,
  history-instance/-type); resource type from the ``entity`` whose ``type`` is in
  ``http://hl7.org/fhir/resource-types``.
* egress connect: ``type`` ``urn:paritybed:audit-event-type|egress``; endpoint name in
  ``entity.name``.
* break-glass activation: ``type`` DCM 110113 Security Alert, ``subtype`` DCM 110127 Emergency
  Override Started, ``period`` = activation to requested expiry; the class from ``purposeOfUse``
  with system ``urn:paritybed:break-glass-class`` (or ``break_glass`` when only v3 ActReason BTG is
  given; ``purposeOfEvent`` on the event or ``purposeOfUse`` on an agent); accesses under it carry it and the claim in ``agent.policy``.
* clinical context: the ``entity`` with ``type`` ``urn:paritybed:entity-type|context`` (else the
  Encounter the event references); it is only counted, never kept.

HAPI FHIR's BALP AuditEvents are read too (where they differ: parity/balp.py): the resource type
from the data or query entity, the client ``<agent>/<replica>`` and its class from
``who.identifier``, the claim from the user agent; an agent name without a class takes the class
other events give it, and an access with a claim but no lane takes the lane of the activation
with that claim.  ``time="request-id"`` times events by the simulated instant in their request id.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa

from paritybed.errors import InputError
from paritybed.parity import balp
from paritybed.parity.profile import Profile, Stream, _epoch_ns, build_profile, pair_key

REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}
EGRESS = {"system": "urn:paritybed:audit-event-type", "code": "egress", "display": "Egress connection"}
SECURITY_ALERT = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110113", "display": "Security Alert"}
OVERRIDE_STARTED = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110127",
                    "display": "Emergency Override Started"}
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
    return _epoch_ns(d) + int((frac + "000000000")[:9] or 0)


def _agent(name: str, cls: str, replica: int, claim: str, lane: str) -> dict[str, Any]:
    a: dict[str, Any] = {"who": {"identifier": {"system": "urn:paritybed:agent", "value": name}},
                         "role": [{"coding": [{"system": "urn:paritybed:agent-class", "code": cls}]}],
                         "altId": str(replica), "requestor": False}
    if claim:
        a["policy"] = [f"urn:paritybed:break-glass-claim:{claim}"]
    if lane:
        a["purposeOfUse"] = [{"coding": [BTG, {"system": "urn:paritybed:break-glass-class", "code": lane}]}]
    return a


def auditevents_from_trace(trace: pa.Table, start: dt.datetime, *, legitimate_only: bool = True) -> Iterator[dict[str, Any]]:
    """One AuditEvent per trace row (``expected=allow`` rows unless ``legitimate_only=False``),
    in time order, as a hospital's audit export would hold them."""
    origin = _epoch_ns(start)
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
            entities.append({"what": {"identifier": {"system": "urn:paritybed:endpoint", "value": r["address"]}},
                             "name": r["endpoint"] or r["address"]})
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


def _row(ev: dict[str, Any], time: str = "recorded") -> dict[str, Any] | None:
    """The aggregate-relevant fields of one AuditEvent, or None for events we do not profile."""
    typ = ev.get("type") or {}
    code = (typ.get("system"), typ.get("code"))
    subs = [(c.get("system"), c.get("code")) for c in ev.get("subtype", []) or []]
    agents = ev.get("agent") or []
    a0 = next((a for a in agents if not a.get("requestor")), agents[0] if agents else {})
    client = ((a0.get("who") or {}).get("identifier") or {}).get("value") or (a0.get("who") or {}).get("display") or ""
    name, replica = balp.split_client(client, a0.get("altId"))
    explicit = next((c.get("code") for r in a0.get("role", []) or [] for c in _coding(r)
                     if c.get("system") == "urn:paritybed:agent-class"), None) or balp.agent_class(a0)
    cls = explicit or name
    lane = ""
    for p in (ev.get("purposeOfEvent", []) or []) + [q for a in agents for q in (a.get("purposeOfUse", []) or [])]:
        for c in _coding(p):
            if c.get("system") == "urn:paritybed:break-glass-class":
                lane = c.get("code") or lane
            elif c.get("code") == "BTG" and not lane:
                lane = "break_glass"
    claim = next((u.split(":", 3)[-1] for a in agents for u in a.get("policy", []) or []
                  if u.startswith("urn:paritybed:break-glass-claim:")), "") or balp.claim(agents)
    t = balp.request_time(ev) if time == "request-id" else None
    out = {"t": parse_instant(ev["recorded"]) if t is None else t, "cls": cls, "name": name,
           "explicit": explicit is not None, "stream": f"{name}#{replica}",
           "kind": "", "pair": "", "lane": lane, "claim": claim, "dur": 0, "ctx": "", "endpoint": ""}
    entities = ev.get("entity", []) or []
    for e in entities:
        et = e.get("type") or {}
        if et.get("system") == "urn:paritybed:entity-type" and et.get("code") == "context":
            out["ctx"] = ((e.get("what") or {}).get("identifier") or {}).get("value", "")
    if not out["ctx"]:
        for e in entities:
            ref = (e.get("what") or {}).get("reference", "")
            if ref.startswith("Encounter/") or "/Encounter/" in ref:
                out["ctx"] = ref
    if code == ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest"):
        inter = next((CODE_INTERACTION.get(c) for s, c in subs if c in CODE_INTERACTION), None)
        rtype = next(((e.get("type") or {}).get("code") for e in entities
                      if (e.get("type") or {}).get("system") == "http://hl7.org/fhir/resource-types"), None) \
            or balp.resource_type(entities)
        if inter is None or rtype is None:
            return None
        out.update(kind="fhir", pair=pair_key(rtype, inter))
    elif code == (EGRESS["system"], EGRESS["code"]):
        out.update(kind="egress", endpoint=next((e.get("name", "") for e in entities), ""))
    elif (OVERRIDE_STARTED["system"], OVERRIDE_STARTED["code"]) in subs:
        per = ev.get("period") or {}
        if per.get("start") and per.get("end"):
            out["dur"] = parse_instant(per["end"]) - parse_instant(per["start"])
        out.update(kind="lane_open")
    else:
        return None
    return out


def _fill_in(rows: list[dict[str, Any]]) -> None:
    """Classes and lanes one event lacks but another gives: an agent name's class (break-glass
    activations name the agent only), a claim's lane (HAPI sees the claim, not the lane)."""
    classes = {r["name"]: r["cls"] for r in rows if r["explicit"]}
    lanes = {r["claim"]: r["lane"] for r in rows if r["kind"] == "lane_open" and r["claim"] and r["lane"]}
    for r in rows:
        if not r["explicit"] and r["name"] in classes:
            r["cls"] = classes[r["name"]]
        if r["claim"] and not r["lane"] and r["claim"] in lanes:
            r["lane"] = lanes[r["claim"]]


def read_auditevents(paths: str | Path | Iterable[str | Path], time: str = "recorded") -> list[dict[str, Any]]:
    """Parse AuditEvent NDJSON exports (one or several files, e.g. the FHIR server's and the
    EHR's break-glass log) into profile rows; errors name the file and line."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows += _read_one(path, time)
    if not rows:
        raise InputError(f"{', '.join(map(str, paths))}: no AuditEvent of a FHIR request, egress connect or "
                         "break-glass activation found", hint="see docs/parity.md for the fields paritybed reads")
    _fill_in(rows)
    return rows


def _read_one(p: Path, time: str) -> list[dict[str, Any]]:
    if not p.exists():
        raise InputError(f"{p}: no such AuditEvent export")
    rows = []
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
                r = _row(ev, time)
            except ValueError as e:
                raise InputError(f"{p}:{lineno}: {e}") from None
            if r is not None:
                rows.append(r)
    return rows


def _enc(values: list[str]) -> tuple[np.ndarray, list[str]]:
    a = pa.array(values, type=pa.string()).dictionary_encode()
    return a.indices.to_numpy(zero_copy_only=False).astype(np.int64), a.dictionary.to_pylist()


def profile_from_auditevents(path: str | Path | Iterable[str | Path], *, arm: str = "production",
                             time: str = "recorded") -> Profile:
    """The de-identified profile of AuditEvent NDJSON exports (aggregates only); `time`:
    ``recorded`` (the event's own instant) or ``request-id`` (the simulated instant a paritybed
    live run put in the request id, parity/balp.py)."""
    rows = read_auditevents(path, time)
    rows.sort(key=lambda r: r["t"])
    t = np.array([r["t"] for r in rows], dtype=np.int64)
    cls_c, cls_v = _enc([r["cls"] for r in rows])
    st_c, st_v = _enc([r["stream"] for r in rows])
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
