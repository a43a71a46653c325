"""`paritybed synthea` (run the real Synthea) and `paritybed population` (print the index).

Heavy imports happen inside the commands so that `paritybed --help` stays instant.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the `synthea` and `population` commands to the CLI."""
    app.command(
        "synthea",
        help=(
            "Generate patients with the real Synthea (Java) and write its FHIR R4 bundles.\n\n"
            "Results are cached by (Synthea version, options): an identical second call returns at once.\n\n"
            "Example: paritybed synthea --patients 20 --seed 7 --state Massachusetts --out populations/ma-20"
        ),
    )(synthea_command)
    app.command(
        "population",
        help=(
            "Index a Synthea output folder and print what it holds: patients, encounters by class, "
            "resources by type, medications, coverage.\n\n"
            "Example: paritybed population populations/ma-20 --strict"
        ),
    )(population_command)


def synthea_command(
    patients: int = typer.Option(10, "--patients", "-p", help="living patients to generate (Synthea also writes the deceased ones it meets)"),
    seed: int = typer.Option(1, "--seed", "-s", help="population seed"),
    clinician_seed: Optional[int] = typer.Option(None, "--clinician-seed", help="clinician seed (default: the population seed)"),
    state: Optional[str] = typer.Option(None, "--state", help="US state, e.g. Massachusetts (Synthea's default)"),
    city: Optional[str] = typer.Option(None, "--city", help="city within --state"),
    years: int = typer.Option(3, "--years-of-history", help="years of history kept in each record (0: all)"),
    reference_date: str = typer.Option("20260101", "--reference-date", help="simulate up to this date, YYYYMMDD (fixed for determinism)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="copy the bundles to OUT/fhir/ (default: print the cache folder)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="run Synthea even if this exact population is cached"),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from paritybed.sim.synthea import generate, synthea_version

    version = synthea_version()
    with Progress(
        TextColumn("[bold]Synthea {task.fields[version]}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("patients  {task.fields[note]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("synthea", total=patients, version=version, note="starting Java, loading modules")

        def tick(alive: int, total: int, deceased: int) -> None:
            bar.update(task, completed=alive, note=f"(+{deceased} deceased also exported)" if deceased else "")

        result = generate(
            patients, seed, clinician_seed=clinician_seed, state=state, city=city, years_of_history=years,
            reference_date=reference_date, out=out_dir, progress=tick, use_cache=not no_cache,
        )
    how = "[green]cached[/] (identical earlier run)" if result.cached else f"generated in {result.seconds:.1f} s"
    out.print(
        f"Synthea {version}: {result.patients} patient bundles ({result.deceased} deceased) + "
        f"{result.files - result.patients} hospital/practitioner bundles, {how}"
    )
    out.print(f"bundles: {result.path / 'fhir'}", highlight=False, soft_wrap=True)


def population_command(
    folder: Path = typer.Argument(..., help="Synthea output folder (its fhir/ subfolder or the folder above it)"),
    strict: bool = typer.Option(False, "--strict", help="validate every bundle as FHIR R4 (fhir.resources); a bad file is an error"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON instead of tables"),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from paritybed.fhir.population import PopulationWarning, load_population

    with warnings.catch_warnings(record=True) as caught, Progress(
        TextColumn("indexing bundles"), BarColumn(), MofNCompleteColumn(), console=err, transient=True
    ) as bar:
        warnings.simplefilter("always", PopulationWarning)
        task = bar.add_task("index", total=None)
        pop = load_population(folder, strict=strict, progress=lambda done, total: bar.update(task, completed=done, total=total))
    for w in caught:
        if issubclass(w.category, PopulationWarning):
            err.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
    summary = pop.summary()
    if as_json:
        import json

        out.print_json(json.dumps(summary))
        return
    print_summary(summary)


def print_summary(s: dict[str, Any]) -> None:
    """The index summary as rich tables (also used by `make demo` until the simulation exists)."""
    head = Table(title=f"Synthea population  {s['folder']}", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column(justify="right")
    head.add_row("patients", f"{s['patients']} ({s['deceased']} deceased; " + ", ".join(f"{k} {v}" for k, v in s["genders"].items()) + ")")
    head.add_row("encounters", str(s["encounters"]))
    head.add_row("practitioners", str(s["practitioners"]))
    head.add_row("bundle files", f"{s['files']}" + (f" ({len(s['skipped'])} skipped)" if s["skipped"] else ""))
    head.add_row("fingerprint", s["fingerprint"][:16])
    out.print(head)

    classes = Table(title="Encounters by class", title_justify="left", min_width=40)
    classes.add_column("class")
    classes.add_column("encounters", justify="right")
    for code, n in s["encounters_by_class"].items():
        classes.add_row(code or "(none)", str(n))
    out.print(classes)

    types = Table(title="Resources by type (after loading)", title_justify="left", min_width=40)
    types.add_column("resource type")
    types.add_column("count", justify="right")
    for rtype, n in s["resources_by_type"].items():
        types.add_row(rtype + (" *" if rtype == "Coverage" else ""), str(n))
    out.print(types)
    out.print("[dim]* Coverage: extracted from the ExplanationOfBenefits' contained Coverage, one per patient and payer (docs/population.md)[/]")

    meds = Table(title="Medications", title_justify="left", show_header=False, min_width=40)
    meds.add_column()
    meds.add_column(justify="right")
    for k, v in s["medications"].items():
        meds.add_row(k, str(v))
    out.print(meds)

    cov = s["coverage"]
    cover = Table(title="Coverage", title_justify="left", show_header=False, min_width=40)
    cover.add_column()
    cover.add_column(justify="right")
    cover.add_row("Coverage resources", str(cov["resources"]))
    cover.add_row("patients with coverage", f"{cov['patients_with_coverage']} / {s['patients']}")
    cover.add_row("claims with a coverage", f"{cov['claims_with_coverage']} / {cov['claims']} (the rest are self-pay)")
    out.print(cover)
