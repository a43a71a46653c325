"""The `paritybed` command.  Each part registers its commands from its own module (cmd_*.py) so
that the CLI stays thin; heavy imports happen inside the commands, so `--help` is instant.

Exit codes (README): 0 ok/pass, 1 parity fail, 2 usage or input error, 3 environment problem.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from paritybed.core.errors import EXIT_USAGE, ParitybedError

app = typer.Typer(
    name="paritybed",
    help=(
        "Staging-parity testbed for AI agents that touch patient data: Synthea patients through a "
        "simulated hospital and mock agents, under real eBPF enforcement; scores whether the "
        "staging-built envelope is good enough to enforce in production.\n\n"
        "Example: paritybed run scenarios/community-hospital-week.yaml --out runs/week"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err = Console(stderr=True)

#: Modules that add commands to `app` (each defines `register(app)`), in help order.
COMMAND_MODULES = (
    "paritybed.cmd_run",
    "paritybed.cmd_parity",
    "paritybed.cmd_sweep",
    "paritybed.cmd_population",
    "paritybed.cmd_fhir",
    "paritybed.cmd_enforce",
)

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as _e:  # a part not built yet
        if _e.name != _name:
            raise
        continue
    _mod.register(app)


def main() -> None:
    """Entry point: run the app, turning user errors into one clear message and an exit code."""
    try:
        rc = app(standalone_mode=False)  # click returns (not raises) a command's typer.Exit code here
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except ParitybedError as e:
        err.print(f"[bold red]error:[/] {e.message}", highlight=False, soft_wrap=True)
        if e.hint:
            err.print(f"[dim]hint: {e.hint}[/]", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(EXIT_USAGE)
        raise


if __name__ == "__main__":
    main()
