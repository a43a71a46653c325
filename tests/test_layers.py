"""The layering is a test: the import-linter contracts in pyproject.toml (layers, imports only
downward; fhir/ and enforcer/ on the foundations alone) hold for the code as it is.

The folders are mapped into one namespace by pyproject's package-dir, which an editable install
resolves with an import hook that grimp does not follow; scripts/lint_imports.py lays the package
out as installed and runs the linter on that, and set-up makes it `.venv/bin/lint-imports`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("core", "scenarios", "fhir", "enforcer", "agents", "sim", "parity", "bpf")
_spec = importlib.util.spec_from_file_location("paritybed_lint_imports", REPO / "scripts" / "lint_imports.py")
lint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint)  # type: ignore[union-attr]
installed_layout = lint.installed_layout


def test_import_linter_contracts_hold():
    """What `.venv/bin/lint-imports` runs (scripts/lint_imports.py)."""
    r = subprocess.run([str(REPO / ".venv" / "bin" / "lint-imports")], capture_output=True, text=True, timeout=300)
    # On failure import-linter names each offending import (module -> module, line) and its contract.
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in r.stdout, r.stdout


def test_the_linter_sees_every_module(tmp_path):
    """Not vacuous: the graph the contracts run on holds every subpackage's modules."""
    root = installed_layout(tmp_path / "site")
    code = ("import grimp, json; g = grimp.build_graph('paritybed'); "
            "print(json.dumps(sorted({m.split('.')[1] for m in g.modules if m.count('.') >= 1})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = set(__import__("json").loads(r.stdout))
    assert set(SUBPACKAGES) - {"bpf"} <= seen, seen
