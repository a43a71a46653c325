"""report.html: one self-contained page for clinical informatics review.

Verdict and scorecard first, then each criterion with its plot and its plain readings, then the
replay's consequences and the scope/audit artefacts.  Plots are embedded as base64 PNG so the
file can be mailed or attached to a change ticket as is.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

TITLES = {"fidelity": "Synthetic-PHI fidelity", "coverage": "FHIR resource-type coverage",
          "break_glass": "Break-glass representation"}
INTROS = {
    "fidelity": "Does staging traffic look like production traffic: the same record types, the same daily rhythm, the "
                "same bursts? A limit learned from calmer staging traffic blocks clinicians at the busiest moments.",
    "coverage": "Did staging exercise every kind of request each agent makes in production? A request type never seen "
                "in staging is not in the policy, so its first production use is blocked.",
    "break_glass": "Did staging rehearse each sanctioned emergency access (Code Blue, rapid response, ED triage)? If "
                   "not, the first real emergency runs into a security block.",
}


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _summary(doc: dict[str, Any]) -> str:
    failing = [TITLES[k].lower() for k in ("fidelity", "coverage", "break_glass") if not doc["criteria"][k]["pass"]]
    r = doc["replay"]
    if doc["verdict"] == "pass":
        head = "Staging represents production well enough: the policy learned in staging can be enforced in production."
    elif doc["verdict"] == "marginal":
        near = [f"{m['agent_class']} {m['name']}" for c in doc["criteria"].values() for m in c["metrics"]
                if m.get("status") == "marginal"]
        head = ("Too close to call: no check fails outright, but the uncertainty of "
                + ", ".join(near[:4]) + (" ..." if len(near) > 4 else "")
                + " reaches across its threshold. A longer or larger staging run would settle it.")
    else:
        head = ("Staging does not represent production well enough to enforce the policy learned from it"
                + (f" ({', '.join(failing)} failed)." if failing else " (the replay gate failed)."))
    return (f"{head} Replaying production under that policy blocked {r['over_blocks']['total']} legitimate request(s) "
            f"and caught {r['attacks_caught']} of {r['attacks_injected']} injected attack(s).")


def _replay_reading(doc: dict[str, Any]) -> str:
    r = doc["replay"]
    ob = r["over_blocks"]
    if not ob["total"]:
        text = "No legitimate clinical request was blocked."
    else:
        hours = ob["by_hour"]
        top = sorted(range(24), key=lambda h: (-hours[h], h))[:3]
        text = (f"{ob['total']} legitimate request(s) were blocked, most of them at "
                + ", ".join(f"{h:02d}:00" for h in top if hours[h]) +
                f"; the agents were blocked or quarantined for {r['clinical_impact_minutes']} agent-minute(s).")
    if ob.get("collateral"):
        text += (f" A further {ob['collateral']} request(s) were denied because the agent had just been quarantined "
                 "for a correct denial (an attack, an endpoint outside the BAA registry or an access after a "
                 "break-glass lane expired): the price of the response mode, not a parity gap.")
    return text


def render_report(doc: dict[str, Any], plots: dict[str, Path], attestation: list[str], path: Path) -> Path:
    env = Environment(loader=PackageLoader("paritybed.parity", "templates"), autoescape=select_autoescape(["html"]))
    classes = sorted({m["agent_class"] for c in doc["criteria"].values() for m in c["metrics"]})
    criteria = []
    for key in ("fidelity", "coverage", "break_glass"):
        c = doc["criteria"][key]
        status: dict[str, bool] = {}
        for m in c["metrics"]:
            status[m["agent_class"]] = status.get(m["agent_class"], True) and m["pass"]
        metrics = [dict(m, value_s=_fmt(m["value"]), threshold_s=_fmt(m["threshold"]),
                        interval_s=(f"{_fmt(m['interval'][0])} – {_fmt(m['interval'][1])}" if m.get("interval") else "—"),
                        margin_s=_fmt(m.get("margin")), status=m.get("status", "pass" if m["pass"] else "fail"))
                   for m in c["metrics"]]
        if key == "fidelity":
            imgs = [(k, p) for k, p in sorted(plots.items()) if k.startswith("rate_")]
        elif key == "coverage":
            imgs = [("coverage", plots["coverage"])] if "coverage" in plots else []
        else:
            imgs = [("break_glass", plots["break_glass"])] if "break_glass" in plots else []
        criteria.append({"key": key, "title": TITLES[key], "intro": INTROS[key], "passed": c["pass"],
                         "verdict": c.get("status", "pass" if c["pass"] else "fail"), "status": status,
                         "metrics": metrics, "images": [{"alt": k, "b64": _b64(p)} for k, p in imgs]})
    html = env.get_template("report.html").render(
        doc=doc, summary=_summary(doc), classes=classes, criteria=criteria, replay_reading=_replay_reading(doc),
        replay_images=[{"alt": "over_blocks", "b64": _b64(plots["over_blocks"])}] if "over_blocks" in plots else [],
        scope_images=[{"alt": "scope", "b64": _b64(plots["scope"])}] if "scope" in plots else [],
        attestation=attestation)
    path.write_text(html, encoding="utf-8")
    return path
