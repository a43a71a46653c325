"""Write the human- and auditor-facing artefacts of a run: plots/, attestation/, report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from paritybed.core.columns import codes, ints
from paritybed.core.units import epoch_ns
from paritybed.enforcer.policy import Policy
from paritybed.enforcer.registry import Registry
from paritybed.parity import plots
from paritybed.parity.attestation import write_attestation
from paritybed.parity.criteria import Criteria
from paritybed.parity.profile import Profile
from paritybed.parity.replay import Replay
from paritybed.parity.report import render_report
from paritybed.scenarios import Scenario


def write_artefacts(out_dir: Path, *, scenario: Scenario, policy: Policy, registry: Registry, staging: pa.Table,
                    production: pa.Table, rep: Replay, sp: Profile, pp: Profile, crit: Criteria,
                    doc: dict[str, Any]) -> dict[str, Path]:
    start = scenario.start.datetime()
    pdir = out_dir / "plots"
    paths: dict[str, Path] = {}
    origin = epoch_ns(start)
    t = ints(production["t_ns"])
    cls_c, cls_v = codes(production["agent_class"])
    for cls in sorted(set(pp.classes) | set(sp.classes)):
        k = cls_v.index(cls) if cls in cls_v else -1
        over = rep.over_block_rows[cls_c[rep.over_block_rows] == k] if k >= 0 else np.zeros(0, dtype=np.int64)
        paths[f"rate_{cls}"] = plots.plot_rate(cls, sp, pp, policy, t[over] + origin, pdir / f"rate_{cls}.png")
    paths["coverage"] = plots.plot_coverage(sp, pp, pdir / "coverage.png")
    paths["break_glass"] = plots.plot_break_glass(production, rep, pdir / "break_glass.png")
    paths["over_blocks"] = plots.plot_over_blocks(production, rep, start, pdir / "over_blocks.png")
    att = write_attestation(out_dir / "attestation", scenario=scenario, policy=policy, registry=registry,
                            production=production, rep=rep)
    mn = json.loads(att["minimum_necessary.json"].read_text(encoding="utf-8"))
    paths["scope"] = plots.plot_scope(mn, pdir / "scope.png")
    report = render_report(doc, paths, sorted(att), out_dir / "report.html")
    out = {f"plot:{k}": v for k, v in paths.items()}
    out.update({f"attestation:{k}": v for k, v in att.items()})
    out["report"] = report
    return out
