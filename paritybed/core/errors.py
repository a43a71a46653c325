"""Errors a user can cause or fix, and the exit codes the CLI maps them to.

Every part of paritybed raises these (never a bare exception) for bad input or a missing
prerequisite, so the CLI can print one clear message without a traceback.  Exit codes are
documented in the README:

    0  success / parity pass
    1  parity fail (the gate said no)
    2  usage or input error (bad scenario, corrupt bundle, bad flag)
    3  environment problem (no Java, Synthea not resolved, needs root/BPF, port in use)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARITY_FAIL = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


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
