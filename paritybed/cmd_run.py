"""`paritybed run` (scenario -> traces of both arms + summary), `paritybed validate` and
`paritybed demo`.  The pipeline itself is paritybed/run.py; this module is the command line and
the progress display.  Heavy imports happen inside the commands so `paritybed --help` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from paritybed.cmd_parity import MARGINAL_HELP, STATUS_STYLE, check_marginal_as
from paritybed.core.errors import EXIT_USAGE, verdict_exit_code

out = Console()
err = Console(stderr=True)

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "community-hospital-week.yaml"


def register(app: typer.Typer) -> None:
    """Add the `run`, `validate` and `demo` commands to the CLI."""
    app.command(
        "run",
        help=(
            "Run a scenario end to end: generate (or load) each arm's Synthea population, simulate the hospital "
            "and the agents for the production and staging arms (OUT/traces/*.parquet, OUT/summary.json), learn the "
            "envelope from staging (OUT/policy.json), replay production under it, score fidelity, coverage and "
            "break-glass, and write OUT/parity.json, junit.xml, report.html, plots/ and attestation/.  "
            "Exit code 0 parity pass, 1 parity fail, 2 bad input, 3 environment problem, 4 parity marginal (a "
            "metric's confidence interval straddles its threshold; --marginal-as pass|fail decides).  With --mode live "
            "(root) production runs as real processes under the eBPF enforcer.\n\n"
            "Example: paritybed run scenarios/community-hospital-week.yaml --out runs/week\n\n"
            "Example: sudo paritybed run scenarios/live-smoke.yaml --mode live --out runs/live"
        ),
    )(run_command)
    app.command(
        "validate",
        help=(
            "Check scenario files against the schema and print every problem (file:line:col, field, "
            "expected, found; in the file or in the one it extends).  Exit code 0 if all are valid, 2 otherwise.  "
            "--show prints the merged document of a variant (extends: resolved).\n\n"
            "Example: paritybed validate scenarios/*.yaml\n\n"
            "Example: paritybed validate --show scenarios/uniform-staging.yaml"
        ),
    )(validate_command)
    app.command(
        "demo",
        help=(
            "Run the default scenario end to end (one week of a 300-bed community hospital, all three agent "
            "classes), then load its patients into an embedded FHIR server database (OUT/fhir.db); ends with the "
            "verdict and the report's path.  Production is decided by the kernel (live mode) as root on a kernel "
            "with BPF, else by the reference engine (model mode); the first line says which and why.  This is what "
            "`make demo` runs.\n\n"
            "Example: paritybed demo --out runs/demo"
        ),
    )(demo_command)


def run_command(
    scenario: Path = typer.Argument(..., help="scenario YAML (see docs/scenarios.md)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="run folder to write (created if missing)"),
    days: Optional[float] = typer.Option(None, "--days", help="override the duration of both arms (days), for a quick run"),
    hours: Optional[float] = typer.Option(None, "--hours", help="override the duration of both arms (hours)"),
    sequential: bool = typer.Option(False, "--sequential", help="simulate the arms one after the other (default: in parallel processes)"),
    traces_only: bool = typer.Option(False, "--traces-only", help="stop after the traces and summary (no parity step)"),
    mode: str = typer.Option("model", "--mode", help="model: the reference engine decides (no privileges); live: real "
                             "processes, HTTP and connects under the eBPF enforcer (root)"),
    clock: str = typer.Option("virtual", "--clock", help="live mode: virtual (the driver sets simulated time in the "
                              "kernel; exact agreement with model mode) or real (bpf_ktime, compressed time)"),
    compression: float = typer.Option(60.0, "--compression", help="live mode, real clock: simulated seconds per wall second"),
    fhir_url: Optional[str] = typer.Option(None, "--fhir-url", help="live mode: an already loaded FHIR server "
                                           "(e.g. HAPI, http://localhost:8080/fhir) instead of the embedded one"),
    marginal_as: Optional[str] = typer.Option(None, "--marginal-as", help=MARGINAL_HELP),
) -> None:
    if mode not in ("model", "live") or clock not in ("virtual", "real") or compression <= 0:
        from paritybed.core.errors import InputError

        raise InputError(f"--mode must be model or live, --clock virtual or real, --compression > 0 "
                         f"(got {mode!r}, {clock!r}, {compression})")
    check_marginal_as(marginal_as)
    from paritybed.run import LiveOptions

    live = LiveOptions(clock=clock, compression=compression, fhir_url=fhir_url) if mode == "live" else None  # type: ignore[arg-type]
    result = run_with_progress(scenario, out_dir, days=days, hours=hours, parallel=not sequential,
                               score=not traces_only, live=live)
    print_run(result.summary, result.traces)
    if result.live is not None:
        print_live(result.live)
    if result.verdict is not None:
        print_verdict(result.verdict, marginal_as)
        require_agreement(result.live)
        raise typer.Exit(verdict_exit_code(result.verdict.verdict, marginal_as))


def require_agreement(live: dict[str, Any] | None) -> None:
    """README exit codes: on the virtual clock a disagreement between the kernel and the reference
    engine is exit 1, whatever the verdict."""
    agree = live["agreement"] if live is not None else None
    if agree is not None and live["clock"] == "virtual" and agree["disagreements"]:  # type: ignore[index]
        err.print(f"[bold red]the kernel and the reference engine disagree on {agree['disagreements']} of "
                  f"{agree['rows']} requests[/] (first: {agree['first_disagreements'][:3]}); see live.json",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def demo_command(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="run folder to write"),
    mode: str = typer.Option("auto", "--mode", help="auto: the kernel decides (live mode) where it can, else the "
                             "reference engine (model mode); live or model to choose"),
) -> None:
    """The default scenario end to end, then its production patients loaded into an embedded
    FHIR server database (OUT/fhir.db, serve it with `paritybed fhir serve --db OUT/fhir.db`).

    The production arm's derived population is built into its prebuilt database (fhir/bulk.py)
    by a background process alongside the simulation (live mode's server starts from it, waiting
    for the build if it is not done), then copied into OUT/fhir.db."""
    from paritybed.live import unavailable_reason
    from paritybed.run import LiveOptions

    if mode not in ("auto", "live", "model"):
        from paritybed.core.errors import InputError

        raise InputError(f"--mode must be auto, live or model (got {mode!r})")
    why = unavailable_reason() if mode != "model" else "--mode model"
    live = mode == "live" or (mode == "auto" and why is None)
    if live:
        err.print("[bold]the kernel decides production[/] (live mode: real processes, HTTP and connects under the eBPF "
                  "enforcer, on the virtual clock)" + (": root with BPF here" if mode == "auto" else ""),
                  highlight=False, soft_wrap=True)
    else:
        err.print(f"[bold]the reference engine decides production[/] (model mode): {why}", highlight=False,
                  soft_wrap=True)
    builder = PrebuiltInBackground()
    try:
        result = run_with_progress(DEFAULT_SCENARIO, out_dir, parallel=True, score=True,
                                   live=LiveOptions() if live else None,
                                   populations_ready=lambda pops: builder.start(pops["production"].folder))
    except BaseException:
        builder.stop()
        raise
    print_run(result.summary, result.traces)
    if result.live is not None:
        print_live(result.live)
    from paritybed.fhir.loader import build_db

    db = Path(out_dir) / "fhir.db"
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    with err.status(f"loading the production patients into the embedded FHIR server ({db})"):
        builder.join()
        counts = build_db([result.populations["production"].folder], db)
    from rich.table import Table

    t = Table(title=f"embedded FHIR server database {db}", title_justify="left")
    t.add_column("resource type")
    t.add_column("resources", justify="right")
    for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        t.add_row(k, f"{v:,}")
    out.print(t)
    out.print(f"serve it: paritybed fhir serve --db {db}   (http://127.0.0.1:8080/fhir)", highlight=False, soft_wrap=True)
    print_verdict(result.verdict)
    require_agreement(result.live)


class PrebuiltInBackground:
    """Builds a derived population's prebuilt database in a forked process (CPU-bound: it runs
    beside the simulation instead of after it); `join` waits for it, `stop` ends it.  Anything it
    cannot do is done again, with its error, by the load that follows.  Not a daemon process: the
    build forks processes of its own (fhir/bulk.py), which a daemon process may not."""

    def __init__(self) -> None:
        self.proc: Any = None

    def start(self, folder: Path) -> None:
        import multiprocessing as mp

        if "fork" not in mp.get_all_start_methods():
            return
        from paritybed.fhir.bulk import prebuilt

        self.proc = mp.get_context("fork").Process(target=_quiet(prebuilt), args=(Path(folder),))
        self.proc.start()

    def join(self) -> None:
        if self.proc is not None:
            self.proc.join()

    def stop(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def _quiet(fn: Any) -> Any:
    """`fn` for a background process: failures are left to the foreground load to report."""
    def run(*args: Any) -> None:
        try:
            fn(*args)
        except BaseException:  # noqa: BLE001 - the foreground load repeats the work and reports
            pass
    return run


def validate_command(
    files: list[Path] = typer.Argument(..., help="scenario YAML files"),
    show: bool = typer.Option(False, "--show", help="print each valid file's merged document (after extends:)"),
) -> None:
    from paritybed.scenarios import ScenarioError, load_scenario, merged_yaml

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
        if show:
            out.print(merged_yaml(f), highlight=False, markup=False, soft_wrap=True, end="")
    if bad:
        raise typer.Exit(EXIT_USAGE)


def run_with_progress(scenario: Path, out_dir: Path, **kw: Any):
    """`run.run_scenario` with a rich progress bar per arm and step (then one per parity stage)."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from paritybed.run import run_scenario

    labels = {"synthea": "Synthea patients", "derive": "derive distinct patients", "index": "index population",
              "simulate": "simulate",
              "live": "live: requests through the kernel"}
    live = kw.get("live") is not None
    with Progress(TextColumn("{task.description:<44}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=err, transient=False) as bar:
        tasks: dict[tuple[str, str], Any] = {}

        def progress(arm: str, what: str, done: float, total: float) -> None:
            key = (arm, what)
            if key not in tasks:
                tasks[key] = bar.add_task(f"{arm:<10} {labels.get(what, what)}", total=total or None)
            bar.update(tasks[key], completed=done, total=total or None)

        stage_labels = {"write": "writing traces and summary", "fhir": "starting the embedded FHIR server",
                        "learn": "parity: learn envelope, compile policy",
                        "decide": ("the kernel decides production (eBPF enforcer, replicas)" if live
                                   else "the reference engine decides production"),
                        "replay": "parity: replay the decisions", "score": "parity: score the criteria",
                        "artefacts": "parity: report, plots, attestation"}
        current: list[Any] = []

        def stage(name: str) -> None:
            for task in current:  # the previous stage is done when the next one starts
                bar.update(task, total=1, completed=1)
            current.clear()
            current.append(bar.add_task(stage_labels.get(name, name), total=None))

        result = run_scenario(scenario, out_dir, progress=progress, stage=stage, **kw)
        for task in current:
            bar.update(task, total=1, completed=1)
    return result


def print_live(live: dict[str, Any]) -> None:
    a = live["agreement"]
    out.print(f"live mode ({live['clock']} clock): {live['rows']:,} production rows as real requests and connects in "
              f"{live['wall_seconds']} s; the kernel allowed {live['kernel_allowed']:,}, alerted {live['kernel_alerted']:,} "
              f"and denied {live['kernel_denied']:,}; {live['worker_kills']} replica kills; lost events: "
              f"{live['lost_events']}", highlight=False, soft_wrap=True)
    colour = "green" if a["disagreements"] == 0 else "red"
    out.print(f"[{colour}]kernel vs reference engine (decision and reason): {a['disagreements']} disagreements on "
              f"{a['rows']:,} rows[/]", highlight=False)


def print_verdict(verdict: Any, marginal_as: str | None = None) -> None:
    """The answer first: verdict, report path, then the scorecard and the replay's consequences."""
    from rich.table import Table

    doc = verdict.parity
    colour = {"pass": "green", "fail": "red", "marginal": "yellow"}[doc["verdict"]]
    report = verdict.out_dir / "report.html"
    out.print(f"\nReport: {report}", highlight=False, soft_wrap=True)
    out.print(f"[bold {colour}]parity verdict: {doc['verdict'].upper()}[/]  "
              f"(exit code {verdict_exit_code(doc['verdict'], marginal_as)}; parity.json, junit.xml, policy.json, "
              f"attestation/ in {verdict.out_dir})", highlight=False, soft_wrap=True)
    t = Table(title="criteria", title_justify="left")
    for col in ("criterion", "result", "failing or marginal metrics"):
        t.add_column(col, overflow="fold")
    for name in ("fidelity", "coverage", "break_glass"):
        c = doc["criteria"][name]
        failing = _failing_metrics(c)
        t.add_row(name, STATUS_STYLE[c["status"]], ", ".join(failing[:6]) + (" ..." if len(failing) > 6 else ""))
    for g in doc["replay"]["gates"]:
        if not g["pass"]:
            t.add_row("replay", STATUS_STYLE["fail"], f"{g['name']} {g['value']:g} > {g['threshold']:g}")
    out.print(t)
    r = doc["replay"]
    ob = r["over_blocks"]
    who = "the kernel's" if r.get("decided_by") == "kernel" else "the reference engine's"
    out.print(
        f"replay of production under the staging-built policy ({who} decisions): {ob['total']:,} over-blocks "
        f"(legitimate requests denied), {r['under_blocks']['total']:,} under-blocks (attack actions allowed), "
        f"{r['attacks_caught']}/{r['attacks_injected']} attacks caught, "
        f"{r['clinical_impact_minutes']:,} agent-minutes of clinical impact",
        highlight=False, soft_wrap=True)
    collateral = ob.get("collateral") or 0
    if collateral:
        after = r.get("clinical_impact", {}).get("after_attacks", 0)
        out.print(f"[yellow]and {collateral:,} legitimate requests denied while an agent was quarantined or killed after a "
                  f"correct denial (attack, endpoint outside the BAA registry, access after lane expiry): "
                  f"{after:,} agent-minutes, the cost of the response mode (see the report)[/]",
                  highlight=False, soft_wrap=True)


def _failing_metrics(criterion: dict[str, Any]) -> list[str]:
    """'agent class: metric' for every failing (or marginal, marked ?) metric of a criterion in parity.json."""
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            status = node.get("status", "pass" if node.get("pass") is not False else "fail")
            if "name" in node and "value" in node and status != "pass":
                who = node.get("agent_class") or node.get("class") or ""
                mark = "?" if status == "marginal" else ""
                names.append(f"{who}: {node['name']}{mark}" if who else f"{node['name']}{mark}")
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(criterion)
    return names


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
