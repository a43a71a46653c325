"""CI cannot go green without what it claims to check (.ci/run, tests/conftest.py, setup.sh).

.ci/run is run for real with a stand-in `make` first on PATH (the whole suite is not re-run from
inside itself); the conftest switches are exercised on pytest sessions of one small test file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAKE_MAKE = """#!/bin/sh
{ echo "ARGS: $*"; env; } > "$CI_PROBE"
"""


def test_ci_run_clears_every_filter_and_requires_every_part(tmp_path):
    (tmp_path / "make").write_text(FAKE_MAKE)
    (tmp_path / "make").chmod(0o755)
    probe = tmp_path / "seen.txt"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "CI_PROBE": str(probe),
           "PYTEST_ARGS": '-m "not bpf"', "PYTEST_ADDOPTS": "-k nothing", "MAKEFLAGS": "PYTEST_ARGS=-x",
           "PARITYBED_REQUIRE_BPF": "0"}
    r = subprocess.run([str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seen = probe.read_text().splitlines()
    assert seen[0] == "ARGS: test PYTEST_ARGS="  # the README's test command, with no arguments for pytest
    env_seen = dict(line.split("=", 1) for line in seen[1:] if "=" in line)
    for var in ("PYTEST_ARGS", "PYTEST_ADDOPTS", "MAKEFLAGS"):
        assert var not in env_seen, var
    for part in ("BPF", "SYNTHEA", "COMPOSE", "SETPRIV", "FULL_SUITE"):
        assert env_seen.get(f"PARITYBED_REQUIRE_{part}") == "1", part


def test_make_test_ignores_pytest_args_from_the_environment_when_ci_overrides_them():
    """`make test PYTEST_ARGS=` (what .ci/run runs) passes nothing to pytest, whatever the environment says."""
    # make's own flags are dropped: under `make test PYTEST_ARGS=` (CI) they carry that override here.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "GNUMAKEFLAGS", "MAKELEVEL")}
    env["PYTEST_ARGS"] = '-m "not bpf"'
    r = subprocess.run(["make", "-n", "test", "PYTEST_ARGS="], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "pytest" in x)
    assert "not bpf" not in line and line.split("pytest", 1)[1].split("#")[0].strip() == "-n 2 --dist loadgroup"
    r = subprocess.run(["make", "-n", "test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert "not bpf" in r.stdout  # without the override the environment would reach pytest


def pytest_session(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PARITYBED_REQUIRE_") and k != "PYTEST_ADDOPTS"}
    return subprocess.run([sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO,
                          env={**full, **env}, capture_output=True, text=True, timeout=300)


def test_a_filter_fails_the_full_suite_switch():
    r = pytest_session(["tests/test_fhir_compose.py", "-k", "pinned"], PARITYBED_REQUIRE_FULL_SUITE="1")
    assert r.returncode == 1, r.stdout[-2000:]
    assert "a filter left tests out" in r.stdout and "deselected" in r.stdout and "not collected" in r.stdout
    r = pytest_session(["tests/test_fhir_compose.py", "-k", "pinned"])
    assert r.returncode == 0, r.stdout[-2000:]  # the same filter is fine outside CI


def test_a_filter_in_a_worker_fails_the_full_suite_switch_too():
    """Under `make test`'s workers the filter is applied where the tests are collected, in each
    worker: what it left out must still reach the session's verdict."""
    r = pytest_session(["-n", "2", "--dist", "loadgroup", "tests/test_fhir_compose.py", "-k", "pinned"],
                       PARITYBED_REQUIRE_FULL_SUITE="1")
    assert r.returncode == 1, r.stdout[-2000:]
    assert "a filter left tests out" in r.stdout and "deselected" in r.stdout and "not collected" in r.stdout


def test_a_missing_part_skips_outside_ci_and_fails_when_required(tmp_path):
    """No compose client on PATH: the compose test skips, or fails under PARITYBED_REQUIRE_COMPOSE=1."""
    path = str(Path(sys.executable).parent)  # python only: no docker, no docker-compose
    test = "tests/test_fhir_compose.py::test_compose_client_parses_the_file"
    r = pytest_session([test, "-rs"], PATH=path)
    assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout[-2000:]
    r = pytest_session([test], PATH=path, PARITYBED_REQUIRE_COMPOSE="1")
    assert r.returncode == 1 and "PARITYBED_REQUIRE_COMPOSE=1 but no compose client here" in r.stdout, r.stdout[-2000:]


def test_setup_fails_instead_of_warning_when_synthea_is_required_but_cannot_be_resolved():
    """The Synthea step of scripts/setup.sh, on its own: Maven missing -> a warning, or exit 3 under CI."""
    script = (REPO / "scripts" / "setup.sh").read_text()
    assert 'synthea_missing "Maven not found' in script and 'synthea_missing "could not resolve Synthea' in script
    fn = script[script.index("synthea_missing() {"):script.index("}\n", script.index("synthea_missing() {")) + 2]
    prog = "warn() { echo \"$*\" >&2; }\n" + fn + 'synthea_missing "Maven not found"\necho carried-on\n'
    r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, env={**os.environ, "PARITYBED_REQUIRE_SYNTHEA": ""})
    assert r.returncode == 0 and "carried-on" in r.stdout and "Synthea commands will say so" in r.stderr
    r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, env={**os.environ, "PARITYBED_REQUIRE_SYNTHEA": "1"})
    assert r.returncode == 3 and "carried-on" not in r.stdout and "PARITYBED_REQUIRE_SYNTHEA=1: Maven not found" in r.stderr


def test_make_test_keeps_each_file_and_the_kernel_files_together_on_one_worker():
    """Two kernel files and a plain one on `make test`'s two workers: the kernel tests all on one
    worker (they may not run next to each other), each file's tests on one worker."""
    r = pytest_session(["-n", "2", "--dist", "loadgroup", "-v", "tests/test_kernel_abi.py", "tests/test_kernel_classify.py",
                        "-k", "ctypes or codes or header_lines or compose", "tests/test_fhir_compose.py"])
    assert r.returncode == 0, r.stdout[-3000:]
    ran = re.findall(r"\[(gw\d)\] \[\s*\d+%\] PASSED (tests/\S+?)::", r.stdout)
    kernel = {w for w, f in ran if "kernel" in f}
    assert {f for _, f in ran} >= {"tests/test_kernel_abi.py", "tests/test_fhir_compose.py"} and len(kernel) == 1, ran
    assert all(len({w for w, f2 in ran if f2 == f}) == 1 for _, f in ran), ran
