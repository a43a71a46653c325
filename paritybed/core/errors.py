"""Errors a user can cause or fix, and the exit codes the CLI maps them to.

Every part of paritybed raises these (never a bare exception) for bad input or a missing
prerequisite, so the CLI can print one clear message without a traceback.  Exit codes are
documented in the README:

    0  success / parity pass
    1  parity fail (the gate said no)
    2  usage or input error (bad scenario, corrupt bundle, bad flag)
    3  environment problem (no Java, Synthea not resolved, needs root/BPF, port in use)
    4  parity marginal: no metric fails outright, but one's confidence interval straddles its
       threshold (``--marginal-as pass|fail`` turns it into 0 or 1 for CI)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARITY_FAIL = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_MARGINAL = 4


class ParitybedError(Exception):
    """Base class: a message meant for the user, plus the exit code the CLI uses."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(ParitybedError):
    """Bad input: a scenario, a bundle, a policy, a trace or a flag the user gave us."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(ParitybedError):
    """A prerequisite of the machine is missing: Java, Synthea, root, BPF, a free port."""

    exit_code = EXIT_ENVIRONMENT


#: The three verdicts of the gate (docs/parity.md, "Verdict with a margin").
VERDICTS = ("pass", "marginal", "fail")


def verdict_exit_code(verdict: str, marginal_as: str | None = None) -> int:
    """The exit code of a verdict: 0 pass, 1 fail, 4 marginal, unless ``marginal_as`` ("pass" or
    "fail", what CI asked for) says how to read a marginal one."""
    if verdict == "marginal" and marginal_as in ("pass", "fail"):
        verdict = marginal_as
    return {"pass": EXIT_OK, "fail": EXIT_PARITY_FAIL, "marginal": EXIT_MARGINAL}[verdict]
