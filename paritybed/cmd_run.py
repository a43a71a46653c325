"""`paritybed run` (scenario -> traces of both arms + summary), `paritybed validate` and
`paritybed demo`.  The pipeline itself is paritybed/run.py; this module is the command line and
the progress display.  Heavy imports happen inside the commands so `paritybed --help` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from paritybed.errors import EXIT_USAGE

out = Console()
err = Console(stderr=True)

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "community-hospital-week.yaml"


def register(app: typer.Typer) -> None:
    """Add the `run`, `validate` and `demo` commands to the CLI."""
    app.command(
        "run",
        help=(
            "Simulate a scenario: generate (or load) each arm's Synthea population, run the hospital "
            "and the agents for the production and staging arms, and write OUT/traces/production.parquet, "
            "OUT/traces/staging.parquet and OUT/summary.json.\n\n"
            "Example: paritybed run scenarios/community-hospital-week.yaml --out runs/week"
        ),
    )(run_command)
    app.command(
        "validate",
        help=(
            "Check scenario files against the schema and print every problem (file:line:col, field, "
            "expected, found).  Exit code 0 if all are valid, 2 otherwise.\n\n"
            "Example: paritybed validate scenarios/*.yaml"
        ),
    )(validate_command)
    app.command(
        "demo",
        help=(
            "Run the default scenario (one week of a 300-bed community hospital, all three agent classes).\n\n"
            "Example: paritybed demo --out runs/demo"
        ),
    )(demo_command)


def run_command(
    scenario: Path = typer.Argument(..., help="scenario YAML (see docs/scenarios.md)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="run folder to write (created if missing)"),
    days: Optional[float] = typer.Option(None, "--days", help="override the duration of both arms (days), for a quick run"),
    hours: Optional[float] = typer.Option(None, "--hours", help="override the duration of both arms (hours)"),
    sequential: bool = typer.Option(False, "--sequential", help="simulate the arms one after the other (default: in parallel processes)"),
) -> None:
    result = run_with_progress(scenario, out_dir, days=days, hours=hours, parallel=not sequential)
    print_run(result.summary, result.traces)


def demo_command(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="run folder to write"),
) -> None:
    run_command(DEFAULT_SCENARIO, out_dir, None, None, False)


def validate_command(files: list[Path] = typer.Argument(..., help="scenario YAML files")) -> None:
    from paritybed.sim.scenario import ScenarioError, load_scenario

    bad = 0
    for f in files:
        try:
            sc = load_scenario(f)
        except ScenarioError as e:
            bad += 1
            err.print(f"[bold red]invalid:[/] {f}", highlight=False)
            for line in e.problems:
                err.print(f"  {line}", highlight=False, soft_wrap=True)
            continue
        out.print(f"[green]ok[/]  {f}  ({sc.name}: {len(sc.agents)} agents, {len(sc.break_glass)} break-glass classes, "
                  f"{len(sc.attacks)} attacks)", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(EXIT_USAGE)


def run_with_progress(scenario: Path, out_dir: Path, **kw: Any):
    """`run.run_scenario` with a rich progress bar per arm and step."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from paritybed.run import run_scenario

    labels = {"synthea": "Synthea patients", "index": "index population", "simulate": "simulate"}
    with Progress(TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=err, transient=False) as bar:
        tasks: dict[tuple[str, str], Any] = {}

        def progress(arm: str, what: str, done: float, total: float) -> None:
            key = (arm, what)
            if key not in tasks:
                tasks[key] = bar.add_task(f"{arm:<10} {labels.get(what, what)}", total=total or None)
            bar.update(tasks[key], completed=done, total=total or None)

        def stage(name: str) -> None:
            tasks[("all", name)] = bar.add_task("writing traces and summary", total=None)

        result = run_scenario(scenario, out_dir, progress=progress, stage=stage, **kw)
        if ("all", "write") in tasks:
            bar.update(tasks[("all", "write")], total=1, completed=1)
    return result


def print_run(summary: dict[str, Any], traces: dict[str, Path]) -> None:
    from rich.table import Table

    t = Table(title=f"scenario {summary['scenario']}", title_justify="left")
    t.add_column("")
    arms = list(summary["arms"])
    for a in arms:
        t.add_column(a, justify="right")
    rows = [
        ("simulated hours", lambda s: f"{s['duration_hours']:.0f}"),
        ("patients", lambda s: str(s["population"]["patients"])),
        ("FHIR requests", lambda s: f"{s['fhir_requests']:,}"),
        ("egress connects", lambda s: f"{s['by_kind'].get('egress', 0):,}"),
        ("break-glass lanes opened", lambda s: str(sum(s["lanes_opened"].values()))),
        ("rows expected deny", lambda s: str(sum(s["expected_deny"].values()))),
    ]
    classes = sorted({c for s in summary["arms"].values() for c in s["fhir_by_agent_class"]})
    rows += [(f"  {c}", (lambda s, c=c: f"{s['fhir_by_agent_class'].get(c, 0):,}")) for c in classes]
    for label, fn in rows:
        t.add_row(label, *[fn(summary["arms"][a]) for a in arms])
    out.print(t)
    for a, p in traces.items():
        out.print(f"{a} trace: {p}", highlight=False, soft_wrap=True)
