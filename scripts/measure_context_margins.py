"""Measure what the launch-context margins must cover: how far production goes beyond staging.

    .venv/bin/python -P scripts/measure_context_margins.py --seeds 101-110 --out runs/margins.json

For each seed (the scenario's traffic seed: production seed s, staging seed s + 1, the same
generated populations as the default run), both arms of the default scenario are simulated and
their launch contexts learned the way the policy learns them (parity.launch_contexts).  Per agent
it reports production's value over staging's for the three quantities a margin multiplies:

* the longest context held (a production context held longer than staging's longest x the
  margin expires before its work ends: over-blocks at the end of the work);
* the most contexts open at once on one replica (a production peak above staging's x the margin
  refuses contexts: every request of the refused work is out of context);
* the busiest 5 minutes of first-seen patients on one replica (for an agent that is not bound:
  production above staging's x the margin denies legitimate first reads of a patient).

The margin the policy needs is the largest ratio; what it costs is what it admits (docs/policy.md,
"Launch-context margins").  Seeds used to choose the margins are kept apart from the seeds that
check them.

``--check MARGIN`` replays each seed's production under the policy compiled with that margin for
all three (model mode, the reference engine) and reports the consequences: legitimate requests
the binding blocked, and the patients each attack reached; ``--unbound`` runs every agent without
launch contexts (so the new-patient budget is what binds them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from paritybed.core.columns import mask_eq
from paritybed.parity.launch_contexts import learn_contexts
from paritybed.run import prepare_populations, simulate_arms, with_duration
from paritybed.scenarios import load_scenario, resolve_arms

REPO = Path(__file__).resolve().parent.parent
QUANTITIES = ("longest_held_ns", "max_open", "new_patient_peak_5min")


def seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def simulate(scenario_path: Path, seed: int, days: float | None, unbound: bool) -> tuple[Any, dict[str, Any]]:
    sc = load_scenario(scenario_path).model_copy(update={"seed": seed})
    if unbound:
        sc = sc.model_copy(update={"agents": [a.model_copy(update={"launch_contexts": False}) for a in sc.agents]})
    sc = with_duration(sc, days=days)
    arms = resolve_arms(sc)
    return sc, simulate_arms(sc, arms, prepare_populations(arms), parallel=False)


def consequences(sc: Any, traces: dict[str, Any], margin: float) -> dict[str, Any]:
    """Production replayed under the policy compiled with ``margin`` for the three margins."""
    from paritybed.enforcer.engine import decide
    from paritybed.parity.compile import Margins, compile_policy
    from paritybed.parity.envelope import learn_envelope
    from paritybed.parity.evaluate import registry_of
    from paritybed.parity.replay import BINDING, replay

    registry = registry_of(sc)
    base = Margins.from_settings(sc.policy)
    margins = Margins(**{**base.as_policy_margins(), "context_duration_margin": margin, "context_open_margin": margin,
                         "new_patient_margin": margin})
    policy = compile_policy(learn_envelope(traces["staging"].table, registry), fhir_server=sc.policy.fhir_server,
                            fhir_base=sc.policy.fhir_base, responses={a.name: a.response_mode() for a in sc.agents},
                            margins=margins, registry=registry)
    start = sc.start.datetime()
    rep = replay(traces["production"].table, decide(traces["production"].table, policy, registry, start), start)
    by = rep.summary["over_blocks"]["by_reason"]
    return {"binding_over_blocks": {r: by[r] for r in BINDING if by.get(r)},
            "attacks": {a["name"]: {"first_reason": a["first_reason"], "patients_reached": a["patients_reached"]}
                        for a in rep.summary["attacks_caught"]},
            "budgets": {n: ap.context.new_patient_budget.burst for n, ap in policy.agents.items()
                        if ap.context is not None and ap.context.new_patient_budget is not None}}


def measure(traces: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, res in traces.items():
        t = res.table
        learn = ~mask_eq(t["expected"], "deny") & mask_eq(t["lane"], "")
        for agent, seen in learn_contexts(t, learn).items():
            out.setdefault(agent, {})[arm] = {q: float(getattr(seen, q)) for q in QUANTITIES}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "community-hospital-week.yaml")
    ap.add_argument("--seeds", default="101-110", help="a seed or a range lo-hi")
    ap.add_argument("--days", type=float, default=None, help="shorten the run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--check", type=float, default=None, help="replay production under this margin")
    ap.add_argument("--unbound", action="store_true", help="every agent without launch contexts")
    args = ap.parse_args(argv)
    rows, checks = [], []
    for s in seeds(args.seeds):
        sc, traces = simulate(args.scenario, s, args.days, args.unbound)
        if args.check is not None:
            checks.append({"seed": s, **consequences(sc, traces, args.check)})
            print(json.dumps(checks[-1]), file=sys.stderr)
        m = measure(traces)
        for agent, arms in sorted(m.items()):
            p, st = arms.get("production", {}), arms.get("staging", {})
            rows.append({"seed": s, "agent": agent, **{f"production_{q}": p.get(q, 0) for q in QUANTITIES},
                         **{f"staging_{q}": st.get(q, 0) for q in QUANTITIES},
                         **{f"ratio_{q}": (p.get(q, 0) / st[q]) if st.get(q) else None for q in QUANTITIES}})
        print(json.dumps(rows[-3:]), file=sys.stderr)
    summary = {}
    for agent in sorted({r["agent"] for r in rows}):
        mine = [r for r in rows if r["agent"] == agent]
        summary[agent] = {q: {"max_ratio": max((r[f"ratio_{q}"] for r in mine if r[f"ratio_{q}"] is not None), default=None),
                              "median_ratio": float(np.median([r[f"ratio_{q}"] for r in mine if r[f"ratio_{q}"] is not None]
                                                              or [0]))}
                          for q in QUANTITIES}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": args.seeds, "scenario": str(args.scenario), "unbound": args.unbound,
                                    "check_margin": args.check, "rows": rows, "checks": checks,
                                    "summary": summary}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
