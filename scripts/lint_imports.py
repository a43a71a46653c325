"""import-linter on paritybed as installed: `.venv/bin/lint-imports` (written by set-up) runs this.

The folders are mapped into one namespace by pyproject's package-dir, which an editable install
resolves with an import hook that grimp does not follow; so the package is laid out as pip would
install it (symlinks in a temporary folder) and the linter runs on that, in a process of its own.
Arguments are passed to import-linter (e.g. ``--verbose``); the exit code is the linter's.

    .venv/bin/lint-imports            # or: python scripts/lint_imports.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: paritybed.<name> lives in the checkout's <name>/ (pyproject package-dir); core is in paritybed/.
MAPPED = ("scenarios", "fhir", "enforcer", "agents", "sim", "parity", "bpf")


def installed_layout(tmp: Path) -> Path:
    """tmp/paritybed as pip would install it: paritybed/ plus each mapped folder under its name."""
    pkg = tmp / "paritybed"
    pkg.mkdir(parents=True)
    for entry in (REPO / "paritybed").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name in MAPPED:
        (pkg / name).symlink_to(REPO / name)
    return tmp


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="paritybed-layout-") as d:
        root = installed_layout(Path(d) / "site")
        env = {**os.environ, "PYTHONPATH": str(root)}
        cmd = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
               "--config", str(REPO / "pyproject.toml"), "--no-cache", *argv]
        return subprocess.run(cmd, cwd=d, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
