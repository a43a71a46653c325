"""`paritybed gate`, `paritybed profile` and `paritybed verify-log`: parity on artefacts.

Heavy imports happen inside the commands so that `paritybed --help` stays instant.
Exit codes: 0 pass / ok, 1 parity fail / broken log, 2 usage or input error, 4 parity marginal
(unless --marginal-as says how to read it).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)

MARGINAL_HELP = ("how CI reads a marginal verdict (a metric's confidence interval straddles its threshold): pass "
                 "(exit 0) or fail (exit 1); default: exit 4")
VERDICT_STYLE = {"pass": "[bold green]PASS[/]", "fail": "[bold red]FAIL[/]", "marginal": "[bold yellow]MARGINAL[/]"}
STATUS_STYLE = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "marginal": "[yellow]marginal[/]"}


def register(app: typer.Typer) -> None:
    """Add the parity commands to the CLI."""
    app.command("gate", help=(
        "Gate CI on parity without re-running the simulation: score the staging trace (and the policy "
        "learned from it) against a de-identified production profile. Exit 0 pass, 1 fail, 2 bad input, 4 marginal "
        "(a metric's confidence interval straddles its threshold; --marginal-as pass|fail decides for CI).\n\n"
        "Example: paritybed gate --policy runs/week/policy.json --staging-trace traces/staging.parquet "
        "--production-profile profile.json --junit reports/parity.xml"))(gate_command)
    app.command("profile", help=(
        "Build a de-identified production profile (aggregates only: no patient, record or clinician ids, no "
        "names) from a FHIR R4 AuditEvent export (NDJSON), for `paritybed gate`.  Agent classes come from "
        "--agent-classes (client id -> class) or a coded agent.role, never from display strings; a field that must be "
        "a code and holds a name, an id or free text is refused (exit 2).\n\n"
        "Example: paritybed profile exports/auditevents.ndjson --out profile.json --agent-classes clients.json"))(profile_command)
    app.command("verify-log", help=(
        "Verify a hash-chained audit log (events.jsonl, attestation/*.jsonl or *.auditevents.ndjson) against its "
        "anchor: the record count and final hash in the run's parity.json (or paritybed enforce's summary.json), "
        "found beside the log or given with --anchor, and, with --key, the signed checkpoints of a paritybed "
        "enforce log.  Exits 1 naming the first record that was edited, removed, inserted or reordered, or the "
        "records missing at the end; without an anchor it says that only order and content were checked.\n\n"
        "Example: paritybed verify-log runs/week/attestation/break_glass_log.jsonl\n\n"
        "Example: paritybed verify-log runs/enforce/events.jsonl --key /var/lib/paritybed/checkpoint.key"))(verify_log_command)


def gate_command(
    policy: Path = typer.Option(..., "--policy", help="policy.json compiled from the staging run"),
    staging_trace: Path = typer.Option(..., "--staging-trace", help="the staging trace (Parquet)"),
    production_profile: Path = typer.Option(..., "--production-profile", help="profile.json of production traffic"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="write JUnit XML here (one testcase per criterion and agent)"),
    scenario: Optional[Path] = typer.Option(None, "--scenario", help="scenario YAML: gate thresholds, declared break-glass classes, start instant"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the gate result as JSON here"),
    marginal_as: Optional[str] = typer.Option(None, "--marginal-as", help=MARGINAL_HELP),
) -> None:
    from paritybed.core.errors import verdict_exit_code
    from paritybed.parity.gate import run_gate

    check_marginal_as(marginal_as)

    with err.status("scoring staging against the production profile"):
        res = run_gate(policy, staging_trace, production_profile, scenario_path=scenario, junit=junit, json_out=json_out)
    for n in res.notes:
        err.print(f"[yellow]note:[/] {n}", highlight=False, soft_wrap=True)
    _scorecard(res.criteria)
    code = verdict_exit_code(res.verdict, marginal_as)
    out.print(f"parity gate: {VERDICT_STYLE[res.verdict]} (policy {res.policy.hash[:19]}…; exit code {code})")
    raise typer.Exit(code)


def check_marginal_as(value: str | None) -> None:
    """--marginal-as takes pass or fail (exit 2 otherwise)."""
    if value not in (None, "pass", "fail"):
        from paritybed.core.errors import InputError

        raise InputError(f"--marginal-as: expected pass or fail; found {value!r}")


def _scorecard(crit) -> None:  # noqa: ANN001 - paritybed.parity.criteria.Criteria, imported lazily
    from rich.markup import escape

    t = Table(title="parity criteria", show_lines=False)
    for c in ("criterion", "agent", "metric", "value", "interval", "threshold", "result"):
        t.add_column(c, overflow="fold")
    for c in crit.all():
        for m in c.metrics:
            v = "n/a" if m.value is None else f"{m.value:.4g}"
            iv = "" if m.interval is None else f"{m.interval[0]:.4g}..{m.interval[1]:.4g}"
            t.add_row(c.name, m.agent_class, m.name, v, iv, f"{m.op} {m.threshold:g}" if m.threshold is not None else "",
                      STATUS_STYLE[m.status])
    out.print(t)
    for c in crit.all():
        for m in c.metrics:
            if m.status != "pass":
                mark = "[red]✗[/]" if m.status == "fail" else "[yellow]?[/]"
                extra = "" if m.status == "fail" else (f" (marginal: its {m.interval[0]:.4g}..{m.interval[1]:.4g} "
                                                        f"interval straddles {m.threshold:g})")
                out.print(f"{mark} {escape(f'{c.name}[{m.agent_class}] {m.name}')}: {escape(m.reading)}{extra}",
                          highlight=False)


def profile_command(
    auditevents: List[Path] = typer.Argument(..., help="FHIR R4 AuditEvent exports, one JSON resource per line "
                                                      "(several files are read as one trail)"),
    out_path: Path = typer.Option(..., "--out", help="where to write profile.json"),
    arm: str = typer.Option("production", "--arm", help="label recorded in the profile"),
    agent_classes: Optional[Path] = typer.Option(None, "--agent-classes", help="JSON object mapping client ids "
                                                 "(agent.who.identifier.value or who.reference) to agent classes"),
    time: str = typer.Option("recorded", "--time", help="recorded: each event's 'recorded' instant; request-id: the "
                             "simulated instant a paritybed live run sent in X-Request-ID (HAPI's BALP keeps it)"),
) -> None:
    from paritybed.core.errors import InputError
    from paritybed.parity.auditevent import profile_from_rows, read_auditevents
    from paritybed.parity.deid import load_agent_classes
    from paritybed.parity.profile import save_profile

    if time not in ("recorded", "request-id"):
        raise InputError(f"--time: expected recorded or request-id; found {time!r}")
    classes = load_agent_classes(agent_classes) if agent_classes else None
    with out.status(f"reading {', '.join(map(str, auditevents))}"):
        read = read_auditevents(auditevents, agent_classes=classes, time=time)
        p = profile_from_rows(read.rows, arm=arm)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_profile(p, out_path)
    total = sum(c.requests for c in p.classes.values())
    out.print(f"wrote {out_path}: {total} FHIR requests over {p.days} day(s), agent classes "
              f"{', '.join(sorted(p.classes)) or '(none)'}", highlight=False, soft_wrap=True)
    if read.unclassified:
        err.print(f"[yellow]note:[/] {read.unclassified} AuditEvent(s) of FHIR requests, connects or break-glass left out: "
                  "no agent class (client not in --agent-classes, no coded agent.role); display names are never used",
                  highlight=False, soft_wrap=True)


def verify_log_command(
    path: Path = typer.Argument(..., help="a chained .jsonl or AuditEvent .ndjson log"),
    anchor: Optional[Path] = typer.Option(None, "--anchor", help="the JSON file that anchors the log (parity.json, "
                                          "summary.json); default: the one found beside the log"),
    key: Optional[Path] = typer.Option(None, "--key", help="the checkpoint key of paritybed enforce: check every "
                                       "checkpoint and that a final one ends the log"),
) -> None:
    from paritybed.core.errors import InputError
    from paritybed.core.hashlog import read_checkpoint_key
    from paritybed.parity.anchors import verify_anchored

    if not path.is_file():
        raise InputError(f"{path}: no such log file")
    if anchor is not None and not anchor.is_file():
        raise InputError(f"--anchor {anchor}: no such file")
    v, caveat = verify_anchored(path, key=read_checkpoint_key(key) if key else None, anchor=anchor)
    if v.ok:
        held = f", length and final hash vouched for by {v.anchor}" if v.anchor else f" ({caveat})"
        out.print(f"{path}: ok, {v.records} records, chain intact{held}", soft_wrap=True, highlight=False)
        raise typer.Exit(0)
    err.print(f"[bold red]{path}:{v.first_bad}:[/] {v.problem} ({v.records} records verify)",
              highlight=False, soft_wrap=True)
    raise typer.Exit(1)
