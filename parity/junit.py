"""JUnit XML: one testcase per criterion per agent class, plus one per injected attack.

CI systems (GitLab, Jenkins, GitHub test reporters) show these natively, so a failed gate reads
as "coverage[cds] failed: staging never performed DiagnosticReport search" in the CI UI.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from paritybed.parity.criteria import Criteria


def junit_xml(crit: Criteria, attacks: list[dict[str, Any]] | None = None, *, suite: str = "paritybed") -> str:
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
                                 f"{'pass' if m.passed else 'FAIL'} - {m.reading}" for m in ms)
            cases.append(tc)
        _counts(ts)
    if attacks is not None:
        ts = ET.SubElement(root, "testsuite", name=f"{suite}.attacks")
        for a in attacks:
            tc = ET.SubElement(ts, "testcase", classname=f"{suite}.attacks", name=a["label"], time="0")
            if not a["caught"]:
                f = ET.SubElement(tc, "failure", message=f"{a['label']} was never blocked or alerted ({a['rows']} actions)",
                                  type="UnderBlock")
                f.text = f"The injected {a['kind']} {a['name']} by agent {a['agent']} got through the policy."
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


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}"


def write_junit(path: str | Path, crit: Criteria, attacks: list[dict[str, Any]] | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(junit_xml(crit, attacks), encoding="utf-8")
