"""JUnit XML: one testcase per criterion per agent class, plus one per injected attack.

An attack's testcase fails when it was never caught, and (``fail_through``, the default verdict:
``gate.replay.max_under_blocks`` set) when any of its actions got through, caught or not.  A
criterion's testcase whose metrics are only *marginal* passes, with the margin in its output.

CI systems (GitLab, Jenkins, GitHub test reporters) show these natively, so a failed gate reads
as "coverage[cds] failed: staging never performed DiagnosticReport search" in the CI UI.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from paritybed.parity.criteria import Criteria


def junit_xml(crit: Criteria, attacks: list[dict[str, Any]] | None = None, *, suite: str = "paritybed",
              fail_through: bool = False) -> str:
    root = ET.Element("testsuites", name=suite)
    cases: list[ET.Element] = []
    for c in crit.all():
        ts = ET.SubElement(root, "testsuite", name=f"{suite}.{c.name}")
        for cls in c.classes():
            ms = c.for_class(cls)
            tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{c.name}", name=f"{c.name}[{cls}]", time="0")
            bad = [m for m in ms if not m.passed]
            if bad:
                f = ET.SubElement(tc, "failure", message="; ".join(f"{m.name}={_fmt(m.value)} (needs {m.op} {_fmt(m.threshold)})"
                                                                    for m in bad), type="ParityFailure")
                f.text = "\n".join(m.reading for m in bad)
            out = ET.SubElement(tc, "system-out")
            out.text = "\n".join(f"{m.name}: {_fmt(m.value)} {m.op} {_fmt(m.threshold)} "
                                 f"{_status(m.status)}{_interval(m.interval)} - {m.reading}" for m in ms)
            cases.append(tc)
        _counts(ts)
    if attacks is not None:
        ts = ET.SubElement(root, "testsuite", name=f"{suite}.attacks")
        for a in attacks:
            tc = ET.SubElement(ts, "testcase", classname=f"{suite}.attacks", name=a["label"], time="0")
            through = a["rows"] - a["blocked"]
            if not a["caught"]:
                f = ET.SubElement(tc, "failure", message=f"{a['label']} was never blocked or alerted ({a['rows']} actions)",
                                  type="UnderBlock")
                f.text = f"The injected {a['kind']} {a['name']} by agent {a['agent']} got through the policy."
            elif fail_through and through > 0:
                f = ET.SubElement(tc, "failure", message=f"{through} of {a['rows']} actions of {a['label']} got through "
                                  f"(caught after {a['time_to_enforcement_s']} s, {a['first_reason']})", type="UnderBlock")
                f.text = (f"The injected {a['kind']} {a['name']} by agent {a['agent']} was caught, but {through} of its "
                          "actions were allowed or only alerted first.")
            else:
                out = ET.SubElement(tc, "system-out")
                out.text = (f"caught after {a['time_to_enforcement_s']} s ({a['first_reason']}); "
                            f"{a['blocked']} of {a['rows']} actions blocked; at first contact: {a['caught_at_first_contact']}")
        _counts(ts)
    tests = sum(int(ts.get("tests", "0")) for ts in root)
    fails = sum(int(ts.get("failures", "0")) for ts in root)
    root.set("tests", str(tests))
    root.set("failures", str(fails))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _counts(ts: ET.Element) -> None:
    cases = ts.findall("testcase")
    ts.set("tests", str(len(cases)))
    ts.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    ts.set("errors", "0")


def _status(status: str) -> str:
    return {"pass": "pass", "fail": "FAIL", "marginal": "MARGINAL"}[status]


def _interval(iv: tuple[float, float] | None) -> str:
    return "" if iv is None else f" (interval {_fmt(iv[0])}..{_fmt(iv[1])})"


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}"


def write_junit(path: str | Path, crit: Criteria, attacks: list[dict[str, Any]] | None = None, *,
                fail_through: bool = False) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(junit_xml(crit, attacks, fail_through=fail_through), encoding="utf-8")
