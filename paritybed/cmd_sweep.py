"""`paritybed sweep` (many runs on Dask, one table) and `paritybed calibrate` (the gate measured
against the replay's consequences).  The sweep is paritybed/sweep.py, the calibration
parity/calibration.py; this module is the command line.  Heavy imports happen inside the
commands so `paritybed --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the `sweep` and `calibrate` commands to the CLI."""
    app.command("sweep", help=(
        "Run every cell of a sweep spec (base scenarios x seeds x variant axes, docs/sweeps.md) as a full model-mode "
        "run, as Dask tasks: on a LocalCluster of processes on this machine (default, --workers N, one per CPU), or "
        "on any Dask cluster (--scheduler tcp://host:8786).  Writes OUT/runs.parquet (one row per run: variant, seed, "
        "every criterion metric with its interval, threshold and result, the verdict, the replay's consequences and "
        "the oracle's); a failed cell is recorded and the sweep goes on; a rerun skips the cells already done.  "
        "Exit 0 when every cell ran, 1 when some failed, 2 bad spec, 3 no cluster.\n\n"
        "Example: paritybed sweep sweeps/calibration.yaml --out runs/calibration\n\n"
        "Example: paritybed sweep sweeps/heldout.yaml --out runs/heldout --scheduler tcp://10.0.0.5:8786"))(sweep_command)
    app.command("calibrate", help=(
        "Measure the gate against the replay's consequences over a sweep's runs and set its thresholds from that: "
        "each run is safe or unsafe by its consequences compared with the oracle policy (learned from production "
        "itself); for each fidelity threshold the safe / unsafe / noise distributions, the ROC and the value that "
        "keeps the gate's false-fail rate <= 5 % and miss rate <= 1 % where it can; the gate's confusion table; "
        "with --holdout, the same gate scored on a sweep never used to set it.  Writes --out (calibration.json) "
        "and a plot per threshold into --plots.\n\n"
        "Example: paritybed calibrate runs/calibration --holdout runs/heldout --out sweeps/calibration.json "
        "--plots docs/calibration"))(calibrate_command)


def sweep_command(
    spec: Path = typer.Argument(..., help="sweep spec YAML (docs/sweeps.md)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="sweep folder (created; a rerun resumes it)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="address of an existing Dask scheduler "
                                            "(tcp://host:8786); default: a LocalCluster on this machine"),
    workers: Optional[int] = typer.Option(None, "--workers", help="LocalCluster worker processes (default: one per CPU)"),
    keep_runs: bool = typer.Option(False, "--keep-runs", help="keep each run's folder (OUT/runs/<cell>/, with report)"),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from paritybed.sweep import run_sweep

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task(f"sweep {spec.name}", total=None)
        failed: list[dict[str, Any]] = []

        def progress(done: int, total: int, row: dict[str, Any]) -> None:
            bar.update(task, completed=done, total=total)
            if row.get("error"):
                failed.append(row)
                bar.console.print(f"[yellow]cell {row['cell']} ({row['label']}, seed {row['seed']}) failed:[/] "
                                  f"{row['error'].splitlines()[0]}", highlight=False, soft_wrap=True)

        res = run_sweep(spec, out_dir, scheduler=scheduler, workers=workers, keep_runs=keep_runs, progress=progress)
    out.print(f"{res.cells} cells ({res.ran} run now, {res.reused} found done, {res.failed} failed): {res.table}",
              highlight=False, soft_wrap=True)
    raise typer.Exit(1 if res.failed else 0)


def calibrate_command(
    sweep_dir: Path = typer.Argument(..., help="a `paritybed sweep` output folder (runs.parquet)"),
    out_path: Path = typer.Option(Path("calibration.json"), "--out", "-o", help="where to write the calibration"),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="a second sweep folder, scored with the thresholds "
                                           "found and never used to find them"),
    plots: Optional[Path] = typer.Option(None, "--plots", help="folder for one PNG per calibrated threshold"),
) -> None:
    import json

    from paritybed.parity.calibration import calibrate, runs_of
    from paritybed.sweep import read_table

    table = read_table(sweep_dir)
    held = read_table(holdout) if holdout is not None else None
    doc = calibrate(table, holdout=held, sweep=_sweep_info(sweep_dir), holdout_sweep=_sweep_info(holdout) if holdout else None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if plots is not None:
        from paritybed.parity.calibration_plots import plot_all

        plot_all(runs_of(table, "run"), runs_of(table, "noise"), doc, plots)
    print_calibration(doc)
    out.print(f"wrote {out_path}" + (f" and the plots in {plots}" if plots else ""), highlight=False, soft_wrap=True)


def _sweep_info(folder: Path | None) -> dict[str, Any]:
    import json

    if folder is None or not (folder / "sweep.json").is_file():
        return {}
    doc = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    return {"name": doc.get("name"), "spec": doc.get("spec"), "code": doc.get("code"), "cells": len(doc.get("cells", []))}


def _rates(c: dict[str, Any]) -> str:
    return (f"false-fail {_pct(c['false_fail_rate'])}, miss {_pct(c['miss_rate'])} "
            f"({c['safe']} safe, {c['unsafe']} unsafe runs); with intervals: marginal {_pct(c['marginal_rate'])}, "
            f"false-fail counting marginal as fail {_pct(c['false_fail_rate_marginal_as_fail'])}, miss counting "
            f"marginal as pass {_pct(c['miss_rate_marginal_as_pass'])}")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def print_calibration(doc: dict[str, Any]) -> None:
    from rich.table import Table

    g = doc["ground_truth"]
    out.print(f"{doc['sweep'].get('runs')} runs: {g['safe']} safe, {g['unsafe']} unsafe "
              f"({', '.join(f'{k} {v}' for k, v in g['unsafe_because'].items()) or 'none'}); "
              f"{doc['sweep'].get('noise_rows')} noise-baseline rows; {doc['sweep'].get('errors')} failed cells",
              highlight=False, soft_wrap=True)
    t = Table(title="calibrated thresholds", title_justify="left")
    for col in ("threshold", "before", "calibrated", "AUC", "safe (median / worst)", "unsafe (median)", "noise (mean ± sd)", "flag"):
        t.add_column(col, overflow="fold")
    for key, m in doc["metrics"].items():
        worst = "max" if m["op"] == "<=" else "min"
        ns = m["noise"]
        t.add_row(key, f"{m['op']} {m['default_before']:g}", f"{m['op']} {m['threshold']:g}", str(m["roc"]["auc"]),
                  f"{m['safe'].get('median', '-')} / {m['safe'].get(worst, '-')}", str(m["unsafe"].get("median", "-")),
                  f"{ns.get('mean', '-')} ± {ns.get('sd', '-')}",
                  "[yellow]near the noise[/]" if m["too_close_to_noise"] else "")
    out.print(t)
    for line in doc["steps"]:
        out.print(f"  {line}", highlight=False, soft_wrap=True)
    cal = doc["calibration_set"]
    out.print(f"calibration set, defaults before: {_rates(cal['with_defaults_before'])}", highlight=False, soft_wrap=True)
    out.print(f"calibration set, calibrated: {_rates(cal['calibrated'])}", highlight=False, soft_wrap=True)
    if "holdout" in doc:
        h = doc["holdout"]
        met = h["targets_met"]
        colour = "green" if met["false_fail"] and met["miss"] else "red"
        out.print(f"[{colour}]held-out set, calibrated: {_rates(h['calibrated'])}[/]", highlight=False, soft_wrap=True)
        ct = Table(title="held-out confusion (calibrated gate, with intervals)", title_justify="left")
        for col in ("truth", "pass", "marginal", "fail"):
            ct.add_column(col)
        for truth in ("safe", "unsafe"):
            row = h["calibrated"]["with_intervals"][truth]
            ct.add_row(truth, str(row["pass"]), str(row["marginal"]), str(row["fail"]))
        out.print(ct)
