"""`paritybed gate`, `paritybed profile` and `paritybed verify-log`: parity on artefacts.

Heavy imports happen inside the commands so that `paritybed --help` stays instant.
Exit codes: 0 pass / ok, 1 parity fail / broken log, 2 usage or input error.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the parity commands to the CLI."""
    app.command("gate", help=(
        "Gate CI on parity without re-running the simulation: score the staging trace (and the policy "
        "learned from it) against a de-identified production profile. Exit 0 pass, 1 fail, 2 bad input.\n\n"
        "Example: paritybed gate --policy runs/week/policy.json --staging-trace traces/staging.parquet "
        "--production-profile profile.json --junit reports/parity.xml"))(gate_command)
    app.command("profile", help=(
        "Build a de-identified production profile (aggregates only: no patient, record or clinician ids, no "
        "names) from a FHIR R4 AuditEvent export (NDJSON), for `paritybed gate`.\n\n"
        "Example: paritybed profile exports/auditevents.ndjson --out profile.json"))(profile_command)
    app.command("verify-log", help=(
        "Verify a hash-chained audit log (events.jsonl, attestation/*.jsonl or *.auditevents.ndjson); exits 1 "
        "naming the first record that was edited, removed, inserted or reordered.\n\n"
        "Example: paritybed verify-log runs/week/attestation/break_glass_log.jsonl"))(verify_log_command)


def gate_command(
    policy: Path = typer.Option(..., "--policy", help="policy.json compiled from the staging run"),
    staging_trace: Path = typer.Option(..., "--staging-trace", help="the staging trace (Parquet)"),
    production_profile: Path = typer.Option(..., "--production-profile", help="profile.json of production traffic"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="write JUnit XML here (one testcase per criterion and agent)"),
    scenario: Optional[Path] = typer.Option(None, "--scenario", help="scenario YAML: gate thresholds, declared break-glass classes, start instant"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the gate result as JSON here"),
) -> None:
    from paritybed.parity.gate import run_gate

    with err.status("scoring staging against the production profile"):
        res = run_gate(policy, staging_trace, production_profile, scenario_path=scenario, junit=junit, json_out=json_out)
    for n in res.notes:
        err.print(f"[yellow]note:[/] {n}", highlight=False)
    _scorecard(res.criteria)
    verdict = "[bold green]PASS[/]" if res.passed else "[bold red]FAIL[/]"
    out.print(f"parity gate: {verdict} (policy {res.policy.hash[:19]}…)")
    raise typer.Exit(0 if res.passed else 1)


def _scorecard(crit) -> None:  # noqa: ANN001 - paritybed.parity.criteria.Criteria, imported lazily
    from rich.markup import escape

    t = Table(title="parity criteria", show_lines=False)
    for c in ("criterion", "agent", "metric", "value", "threshold", "result"):
        t.add_column(c, overflow="fold")
    for c in crit.all():
        for m in c.metrics:
            v = "n/a" if m.value is None else f"{m.value:.4g}"
            t.add_row(c.name, m.agent_class, m.name, v, f"{m.op} {m.threshold:g}" if m.threshold is not None else "",
                      "[green]pass[/]" if m.passed else "[red]FAIL[/]")
    out.print(t)
    for c in crit.all():
        for m in c.metrics:
            if not m.passed:
                out.print(f"[red]✗[/] {escape(f'{c.name}[{m.agent_class}] {m.name}')}: {escape(m.reading)}",
                          highlight=False)


def profile_command(
    auditevents: List[Path] = typer.Argument(..., help="FHIR R4 AuditEvent exports, one JSON resource per line "
                                                      "(several files are read as one trail)"),
    out_path: Path = typer.Option(..., "--out", help="where to write profile.json"),
    arm: str = typer.Option("production", "--arm", help="label recorded in the profile"),
    time: str = typer.Option("recorded", "--time", help="recorded: each event's 'recorded' instant; request-id: the "
                             "simulated instant a paritybed live run sent in X-Request-ID (HAPI's BALP keeps it)"),
) -> None:
    from paritybed.errors import InputError
    from paritybed.parity.auditevent import profile_from_auditevents
    from paritybed.parity.profile import save_profile

    if time not in ("recorded", "request-id"):
        raise InputError(f"--time: expected recorded or request-id; found {time!r}")
    with out.status(f"reading {', '.join(map(str, auditevents))}"):
        p = profile_from_auditevents(auditevents, arm=arm, time=time)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_profile(p, out_path)
    total = sum(c.requests for c in p.classes.values())
    out.print(f"wrote {out_path}: {total} FHIR requests over {p.days} day(s), agent classes "
              f"{', '.join(sorted(p.classes)) or '(none)'}")


def verify_log_command(path: Path = typer.Argument(..., help="a chained .jsonl or AuditEvent .ndjson log")) -> None:
    from paritybed.errors import InputError
    from paritybed.parity.auditlog import verify_log

    if not path.is_file():
        raise InputError(f"{path}: no such log file")
    v = verify_log(path)
    if v.ok:
        out.print(f"{path}: ok, {v.records} records, chain intact", soft_wrap=True, highlight=False)
        raise typer.Exit(0)
    err.print(f"[bold red]{path}:{v.first_bad}:[/] record {v.first_bad} is bad: {v.problem} "
              f"({v.records} records before it verify)", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
