"""The four artefacts of an OCR (HHS Office for Civil Rights) request, in ``attestation/``.

1. minimum_necessary.json: per agent, declared scope minus observed scope (and the reverse), and
   the patient-level dimension: the share of its accesses naming a patient that stayed in their
   launch context, and the pairs it used naming nobody (against the policy's unscoped pairs).
2. ai_bom.json: the runtime AI bill of materials: each agent, its policy, and every external
   endpoint it contacted, joined against the BAA registry with the registry version in force at
   first contact; ai_bom_first_contact.jsonl + .auditevents.ndjson are the chained log.
3. break_glass_log.jsonl (+ .auditevents.ndjson): each activation with class, clinician
   identity, agent, activation, expiry, the records accessed under it and the patients and
   encounters those accesses named.
4. policy_history.jsonl (+ .auditevents.ndjson): every policy version with its hash and parent.

The logs are append-only and hash-chained (``paritybed verify-log FILE``).  docs/attestation.md
documents each field.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from paritybed.core.baa import covered
from paritybed.core.hashlog import HashLog
from paritybed.core.units import epoch_ns
from paritybed.enforcer.kernel_abi import REASONS
from paritybed.enforcer.policy import Policy
from paritybed.enforcer.registry import Registry
from paritybed.parity.auditevent import AGENT_CLASS, BTG, OVERRIDE_STARTED, SECURITY_ALERT, SOURCE, instant
from paritybed.parity.auditlog import chain_auditevents
from paritybed.parity.launch_contexts import ContextSeen, learn_contexts
from paritybed.parity.replay import Replay
from paritybed.scenarios import Scenario

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _content_hash(policy: Policy) -> str:
    """The policy's hash with its history fields neutral: equal for the same learned content."""
    return policy.model_copy(update={"version": 1, "parent": None}).computed_hash()


def policy_history_version(path: Path, policy: Policy) -> tuple[int, str | None]:
    """(version, parent) for ``policy`` given the history so far: the same content keeps its
    version; new content becomes the next version with the last policy as parent."""
    if not path.exists() or not path.stat().st_size:
        return 1, None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            last = json.loads(line)
    if last is None:
        return 1, None
    if last.get("content_hash") == _content_hash(policy):
        return int(last["version"]), last.get("parent")
    return int(last["version"]) + 1, last["hash_policy"]


def _iso(origin: int, t: int) -> str:
    return instant(origin, t)


def minimum_necessary(scenario: Scenario, policy: Policy, production: pa.Table, rep: Replay) -> dict[str, Any]:
    legit = production.filter(pc.not_equal(production["expected"], "deny"))
    used: dict[str, dict[tuple[str, str], int]] = {}
    under_lane: dict[str, dict[tuple[str, str], int]] = {}
    fh = legit.filter(pc.equal(legit["kind"], "fhir")).select(["agent", "resource_type", "interaction", "lane"])
    if fh.num_rows:
        fh = fh.set_column(3, "lane", pc.not_equal(fh["lane"].cast(pa.string()), ""))
        g = fh.group_by(["agent", "resource_type", "interaction", "lane"]).aggregate([([], "count_all")])
        for r in g.to_pylist():
            target = under_lane if r["lane"] else used
            target.setdefault(r["agent"], {})[(r["resource_type"], r["interaction"])] = r["count_all"]
    launch = learn_contexts(production, (~np.asarray(pc.equal(production["expected"], "deny"))) &
                            np.asarray(pc.equal(production["lane"].cast(pa.string()), ""))) if production.num_rows else {}
    agents = {}
    for a in scenario.agents:
        declared = {(s.type, i) for s in a.scope for i in s.interactions}
        observed = used.get(a.name, {})
        ap = policy.agents.get(a.name)
        allowed = ap.allowed_pairs() if ap else set()
        lane_pairs = {q.key() for lp in (ap.lanes.values() if ap else []) for q in lp.allow}
        gap = sorted(declared - set(observed))
        agents[a.name] = {
            "agent_class": a.agent_class,
            "declared_scope": _pairs(declared),
            "observed_scope": [{"type": t, "interaction": i, "requests": n} for (t, i), n in sorted(observed.items())],
            "observed_under_break_glass": [{"type": t, "interaction": i, "requests": n}
                                           for (t, i), n in sorted(under_lane.get(a.name, {}).items())],
            "policy_scope": _pairs(allowed),
            "policy_lane_scope": _pairs(lane_pairs),
            "declared_not_observed": _pairs(gap),
            "observed_not_declared": _pairs(set(observed) - declared) if declared else [],
            "policy_beyond_declared": _pairs(allowed - declared) if declared else [],
            "gap": len(gap),
            "patient_level": _patient_level(launch.get(a.name, ContextSeen()), ap),
            "reading": (f"{a.name} declares {len(declared)} (type, interaction) pairs and used {len(observed)} in "
                        f"production outside break-glass lanes; {len(gap)} declared pair(s) were never used and should be dropped from its "
                        "declared scope (minimum necessary)." if declared else
                        f"{a.name} declares no scope; the observed scope is listed for the record."),
        }
    return {"schema": "paritybed.attestation.minimum-necessary/1", "policy": policy.hash, "agents": agents}


def _patient_level(seen: ContextSeen, ap: Any) -> dict[str, Any]:
    """The patient-level dimension of minimum necessary: did the agent read only the patients it
    was launched for, and what did it use without naming a patient."""
    ctx = ap.context if ap is not None else None
    share = round(seen.in_context / seen.named, 6) if seen.named else None
    out: dict[str, Any] = {
        "launch_contexts": seen.contexts, "bound_by_policy": bool(ctx is not None and ctx.bound),
        "accesses_naming_a_patient": seen.named, "in_context": seen.in_context, "share_in_context": share,
        "patients": seen.patients,
        "unscoped_observed": [{"type": t, "interaction": i, "requests": n} for (t, i), n in sorted(seen.unscoped.items())],
        "unscoped_in_policy": _pairs(ctx.unscoped_pairs()) if ctx is not None else [],
        "new_patient_budget": ctx.new_patient_budget.model_dump() if ctx is not None and ctx.new_patient_budget else None,
    }
    if share is None:
        out["reading"] = "The agent named no patient outside break-glass lanes."
    elif share == 1:
        out["reading"] = (f"Every one of its {seen.named} accesses naming a patient was to the patient (and encounter) "
                          "its launch context named.")
    else:
        out["reading"] = (f"{seen.named - seen.in_context} of its {seen.named} accesses naming a patient were outside "
                          "the launch context they presented (attacks included: see the replay).")
    return out


def _pairs(pairs: Any) -> list[dict[str, str]]:
    return [{"type": t, "interaction": i} for t, i in sorted(pairs)]


def ai_bom(scenario: Scenario, policy: Policy, registry: Registry, production: pa.Table, rep: Replay,
           start: dt.datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The AI-BOM and its first-contact log records (time order)."""
    origin = epoch_ns(start)
    fc_rows = [e for e in rep.decisions.events if e["event"] == "first-contact"]
    idx = [e["row"] for e in fc_rows]
    sub = production.take(pa.array(idx, type=pa.int64())).select(
        ["t_ns", "agent", "replica", "address", "endpoint", "label"]).to_pylist() if idx else []
    by_addr = registry.by_address()
    log = []
    first_of: dict[tuple[str, str], dict[str, Any]] = {}
    for e, r in zip(fc_rows, sub):
        ent = by_addr.get(r["address"])
        rec = {"agent": r["agent"], "replica": r["replica"], "address": r["address"], "endpoint": r["endpoint"],
               "at": _iso(origin, r["t_ns"]), "t_ns": r["t_ns"], "registry_version": e["registry_version"],
               "registry_entry": ent.name if ent else None, "baa_id": ent.baa_id if ent else None,
               "covered": covered(ent, r["t_ns"], start),
               "decision": "deny" if e.get("reason") else "allow", "reason": e.get("reason", ""),
               "label": r["label"]}
        log.append(rec)
        first_of.setdefault((r["agent"], r["address"]), rec)
    eg = production.filter(pc.equal(production["kind"], "egress")).select(["agent", "address"])
    counts: dict[tuple[str, str], int] = {}
    if eg.num_rows:
        for r in eg.group_by(["agent", "address"]).aggregate([([], "count_all")]).to_pylist():
            counts[(r["agent"], r["address"])] = r["count_all"]
    agents = {}
    for a in scenario.agents:
        ap = policy.agents.get(a.name)
        eps = []
        for (ag, addr), rec in sorted(first_of.items(), key=lambda kv: kv[1]["t_ns"]):
            if ag != a.name:
                continue
            ent = by_addr.get(addr)
            eps.append({"address": addr, "endpoint": rec["endpoint"], "connects": counts.get((ag, addr), 0),
                        "first_contact": rec["at"], "registry_version_at_first_contact": rec["registry_version"],
                        "decision_at_first_contact": rec["decision"], "reason": rec["reason"],
                        "baa": ent.model_dump(mode="json") if ent else None,
                        "covered_at_first_contact": rec["covered"],
                        "in_policy": bool(ap and ent and ent.name in ap.egress)})
        agents[a.name] = {"agent_class": a.agent_class, "criticality": a.criticality, "replicas": a.replicas,
                          "response": ap.response if ap else None, "declared_egress": list(a.egress),
                          "policy_egress": list(ap.egress) if ap else [], "endpoints": eps,
                          "uncovered_endpoints": [e["address"] for e in eps if not e["covered_at_first_contact"]]}
    bom = {"schema": "paritybed.attestation.ai-bom/1", "policy": policy.hash,
           "registry": {"version": registry.version, "hash": registry.content_hash()}, "agents": agents}
    return bom, log


def break_glass_records(production: pa.Table, rep: Replay, start: dt.datetime) -> list[dict[str, Any]]:
    """One record per activation in production: who, which class, when, until when, and every
    record accessed under its claim with the decision."""
    origin = epoch_ns(start)
    opens = [e for e in rep.decisions.events if e["event"] in ("lane-open", "lane-refused")]
    if not opens:
        return []
    cols = production.select(["t_ns", "agent", "replica", "lane", "claim_id", "identity", "duration_ns", "kind",
                              "resource_type", "interaction", "resource_id", "patient_id", "named_patients",
                              "named_encounters"])
    claim = cols["claim_id"].combine_chunks()
    lane_rows = np.nonzero(np.asarray(pc.not_equal(claim, "").to_numpy(zero_copy_only=False)))[0]
    sub = cols.take(pa.array(lane_rows, type=pa.int64())).to_pylist()
    by_claim: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for i, r in zip(lane_rows.tolist(), sub):
        if r["kind"] == "fhir":
            by_claim.setdefault((r["agent"], r["replica"], r["claim_id"]), []).append(
                {"at": _iso(origin, r["t_ns"]), "type": r["resource_type"], "interaction": r["interaction"],
                 "id": r["resource_id"], "patient": r["patient_id"], "patients": r["named_patients"],
                 "encounters": r["named_encounters"],
                 "decision": ("allow", "deny", "alert")[int(rep.decisions.decision[i])],
                 "reason": REASONS[int(rep.decisions.reason[i])]})
    rows = production.take(pa.array([e["row"] for e in opens], type=pa.int64())).select(
        ["t_ns", "agent", "agent_class", "replica", "lane", "claim_id", "identity", "duration_ns"]).to_pylist()
    out = []
    for e, r in zip(opens, rows):
        acc = by_claim.get((r["agent"], r["replica"], r["claim_id"]), [])
        out.append({"class": r["lane"], "identity": r["identity"], "agent": r["agent"], "agent_class": r["agent_class"],
                    "replica": r["replica"],
                    "claim": r["claim_id"], "activation": _iso(origin, r["t_ns"]),
                    "requested_s": r["duration_ns"] / 1e9,
                    "status": "opened" if e["event"] == "lane-open" else "refused (no lane in the policy)",
                    "expiry": _iso(origin, e["expires_ns"]) if e["event"] == "lane-open" else None,
                    "accessed": acc, "accesses": len(acc),
                    "patients": _distinct(x for a in acc if a["decision"] != "deny" for x in a["patients"]),
                    "encounters": _distinct(x for a in acc if a["decision"] != "deny" for x in a["encounters"]),
                    "denied": sum(1 for x in acc if x["decision"] == "deny")})
    return out


def _distinct(xs: Any) -> list[str]:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(xs))


def _ae(recorded: str, typ: dict[str, Any], subtype: dict[str, Any] | None, outcome: str, agents: list[dict[str, Any]],
        entities: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    ev = {"resourceType": "AuditEvent", "type": typ, "recorded": recorded, "outcome": outcome, "agent": agents,
          "source": SOURCE, "entity": entities, "action": "E"}
    if subtype:
        ev["subtype"] = [subtype]
    ev.update(extra)
    return ev


def _agent_ref(name: str, replica: int | None = None, agent_class: str | None = None) -> dict[str, Any]:
    a: dict[str, Any] = {"who": {"identifier": {"system": "urn:paritybed:agent", "value": name}}, "requestor": False}
    if agent_class:  # coded, so a profile built from this log with a server's trail knows the class
        a["role"] = [{"coding": [{"system": AGENT_CLASS, "code": agent_class}]}]
    if replica is not None:
        a["altId"] = str(replica)
    return a


def break_glass_auditevents(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        pou = [{"coding": [BTG, {"system": "urn:paritybed:break-glass-class", "code": r["class"]}]}]
        agents = [_agent_ref(r["agent"], r["replica"], r.get("agent_class")) | {"policy": [f"urn:paritybed:break-glass-claim:{r['claim']}"]},
                  {"who": {"identifier": {"system": "urn:paritybed:clinician", "value": r["identity"] or "unknown"}},
                   "requestor": True, "purposeOfUse": pou}]
        ents = [{"what": {"reference": f"{a['type']}/{a['id']}"} if a["id"] else {"display": a["type"]},
                 "type": {"system": "http://hl7.org/fhir/resource-types", "code": a["type"]},
                 "description": f"{a['interaction']} at {a['at']}: {a['decision']}"} for a in r["accessed"]]
        ents += [{"what": {"reference": f"{kind}/{x}"}, "type": {"system": "http://hl7.org/fhir/resource-types", "code": kind},
                  "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
                  if kind == "Patient" else None, "description": f"{kind} accessed under the lane"}
                 for kind, xs in (("Patient", r.get("patients", [])), ("Encounter", r.get("encounters", []))) for x in xs]
        ents = [{k: v for k, v in e.items() if v is not None} for e in ents]
        extra = {"purposeOfEvent": pou}
        if r["expiry"]:
            extra["period"] = {"start": r["activation"], "end": r["expiry"]}
        out.append(_ae(r["activation"], SECURITY_ALERT, OVERRIDE_STARTED, "0" if r["expiry"] else "4", agents,
                       ents, outcomeDesc=r["status"], **extra))
    return out


def first_contact_auditevents(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in log:
        ent = {"what": {"identifier": {"system": "urn:paritybed:endpoint", "value": r["address"]}},
               "name": r["endpoint"] or r["address"],
               "detail": [{"type": "registry_version", "valueString": str(r["registry_version"])},
                          {"type": "baa_id", "valueString": r["baa_id"] or "none"}]}
        out.append(_ae(r["at"], {"system": DCM, "code": "110100", "display": "Application Activity"},
                       {"system": "urn:paritybed:audit-event-type", "code": "egress-first-contact"},
                       "0" if r["decision"] == "allow" else "4", [_agent_ref(r["agent"], r["replica"])], [ent],
                       outcomeDesc=r["reason"] or "allowed"))
    return out


def policy_auditevent(rec: dict[str, Any]) -> dict[str, Any]:
    ent = {"what": {"identifier": {"system": "urn:paritybed:policy", "value": rec["hash_policy"]}},
           "name": f"policy version {rec['version']}",
           "detail": [{"type": "parent", "valueString": rec["parent"] or "none"},
                      {"type": "scenario_hash", "valueString": rec["scenario_hash"] or "none"}]}
    return _ae(rec["created"] or "1970-01-01T00:00:00Z", SECURITY_ALERT,
               {"system": DCM, "code": "110129", "display": "Security Configuration"}, "0",
               [{"who": {"display": "paritybed parity compiler"}, "requestor": False}], [ent])


def write_attestation(out: Path, *, scenario: Scenario, policy: Policy, registry: Registry, production: pa.Table,
                      rep: Replay) -> dict[str, Path]:
    """Write the four artefacts; returns name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    start = scenario.start.datetime()
    paths: dict[str, Path] = {}

    def dump(name: str, doc: Any) -> None:
        paths[name] = out / name
        paths[name].write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")

    def fresh_log(name: str, records: list[dict[str, Any]]) -> None:
        p = out / name
        if p.exists():
            p.unlink()  # per-run logs: one run, one chain
        with HashLog(p) as log:
            log.extend(records)
        paths[name] = p

    dump("minimum_necessary.json", minimum_necessary(scenario, policy, production, rep))
    bom, fc = ai_bom(scenario, policy, registry, production, rep, start)
    dump("ai_bom.json", bom)
    fresh_log("ai_bom_first_contact.jsonl", fc)
    chain_auditevents(first_contact_auditevents(fc), out / "ai_bom_first_contact.auditevents.ndjson")
    bg = break_glass_records(production, rep, start)
    fresh_log("break_glass_log.jsonl", bg)
    chain_auditevents(break_glass_auditevents(bg), out / "break_glass_log.auditevents.ndjson")
    # policy history: continues across runs written to the same folder
    hist = out / "policy_history.jsonl"
    rec = {"version": policy.version, "hash_policy": policy.hash, "parent": policy.parent,
           "content_hash": _content_hash(policy), "created": policy.created,
           "scenario": policy.source.scenario, "scenario_hash": policy.source.scenario_hash,
           "trace_sha256": policy.source.trace_sha256, "margins": policy.margins}
    existing = []
    if hist.exists():
        existing = [json.loads(x) for x in hist.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not existing or existing[-1]["hash_policy"] != policy.hash:
        with HashLog(hist) as log:
            log.append(rec)
        existing.append(rec)
    paths["policy_history.jsonl"] = hist
    chain_auditevents([policy_auditevent(r) for r in existing], out / "policy_history.auditevents.ndjson")
    for n in ("ai_bom_first_contact", "break_glass_log", "policy_history"):
        paths[f"{n}.auditevents.ndjson"] = out / f"{n}.auditevents.ndjson"
    return paths
