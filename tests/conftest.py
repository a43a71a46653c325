"""Shared test set-up, and the switches that keep CI from going green without what it checks.

Kernel tests carry ``@pytest.mark.bpf``.  Where root or BPF is missing they skip with the
reason; under ``PARITYBED_REQUIRE_BPF=1`` (what `.ci/run` sets, CI being root with BPF) a
missing prerequisite or any skipped kernel test fails the run instead.

The other parts a test may find missing are named too: ``require(part, reason)`` skips where
the part is optional and fails the test under ``PARITYBED_REQUIRE_<PART>=1`` (`.ci/run` sets
SYNTHEA, COMPOSE and SETPRIV).  Under ``PARITYBED_REQUIRE_FULL_SUITE=1`` (also set by `.ci/run`)
a run that deselects a test (``-m``, ``-k``, ``--deselect``) or leaves a test file out of the
collection fails, whatever put the filter there.
Tests against the real HAPI FHIR server carry ``@pytest.mark.hapi`` and need Java and the
set-up's build of fhir/hapi (part HAPI); the time they take is printed at the end.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
REQUIRE_BPF = os.environ.get("PARITYBED_REQUIRE_BPF") == "1"
REQUIRE_FULL_SUITE = os.environ.get("PARITYBED_REQUIRE_FULL_SUITE") == "1"
#: The parts `require` knows, each switched on by PARITYBED_REQUIRE_<NAME>=1.
PARTS = ("SYNTHEA", "COMPOSE", "SETPRIV", "HAPI")
_skipped_bpf: list[str] = []
_deselected: list[str] = []
_not_collected: list[str] = []


def required(part: str) -> bool:
    """Whether PARITYBED_REQUIRE_<PART>=1 makes ``part`` required in this run."""
    if part.upper() not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")
    return os.environ.get(f"PARITYBED_REQUIRE_{part.upper()}") == "1"


def require_or_skip(part: str, reason: str) -> NoReturn:
    """``part`` is missing here: fail under PARITYBED_REQUIRE_<PART>=1, else skip with the reason."""
    if required(part):
        pytest.fail(f"PARITYBED_REQUIRE_{part.upper()}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def paritybed_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """Run the paritybed CLI in this process: ``paritybed_cli("verify-log", path)`` -> (exit code,
    stdout + stderr), through ``cli.main`` as the installed command runs it."""

    def run(*args: str) -> tuple[int, str]:
        from paritybed import cli

        monkeypatch.setattr(sys, "argv", ["paritybed", *args])
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        c = capsys.readouterr()
        return code, c.out + c.err

    return run


@pytest.fixture(scope="session")
def require() -> Callable[[str, str], NoReturn]:
    """``require(part, reason)``: call it where a test finds ``part`` missing (see the module doc)."""
    return require_or_skip


def kernel_files() -> set[str]:
    """The test files (as node ids start) with a kernel or HAPI FHIR test: one group under `make
    test`'s two workers, run in order on one of them (they load programs, cgroups and a JVM and
    time real clocks: not next to each other).  Read from the files' text because the controller
    schedules before any test is imported; each worker checks it against the marks it collected."""
    return {f"tests/{p.name}" for p in (REPO / "tests").glob("test_*.py")
            if re.search(r"mark\.(bpf|hapi)\b", p.read_text())}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return
    kernel = kernel_files()
    for i in items:
        if (i.get_closest_marker("bpf") or i.get_closest_marker("hapi")) and i.nodeid.split("::")[0] not in kernel:
            raise pytest.UsageError(f"{i.nodeid} is a kernel or HAPI test its file's text does not mark as one")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 - xdist's types
    """``--dist loadgroup`` as `make test` means it: each test file one group (its module fixtures
    built once), the kernel files (kernel_files) one group together.  xdist's own loadgroup reads
    ``xdist_group`` marks by rewriting node ids, which pytest 9 no longer lets it do."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    kernel = kernel_files()

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return "kernel" if path in kernel else path

    return FileGroups(config, log)


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.extend(i.nodeid for i in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    if not REQUIRE_FULL_SUITE:
        return
    collected = {Path(str(i.path)).resolve() for i in session.items}
    every = {p.resolve() for p in (REPO / "tests").glob("test_*.py")}
    _not_collected.extend(sorted(str(p.relative_to(REPO)) for p in every - collected))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ANN001 - xdist's WorkerController
    """A worker's filters reach the controller, whose session verdict is the one that counts."""
    out = getattr(node, "workeroutput", {})
    _deselected.extend(d for d in out.get("paritybed_deselected", []) if d not in _deselected)
    _not_collected.extend(f for f in out.get("paritybed_not_collected", []) if f not in _not_collected)


def bpf_unavailable_reason() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (eBPF programs and cgroups)"
    if not Path("/sys/fs/cgroup/unified/cgroup.controllers").exists() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "needs cgroup v2"
    try:
        import bcc  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"needs BCC's Python module (python3-bpfcc exposed to the venv): {e}"
    return None


def hapi_unavailable_reason() -> str | None:
    """Why the HAPI FHIR tests cannot run here (no Java, or no build of fhir/hapi), or None."""
    import shutil

    from paritybed.core.errors import EnvironmentProblem
    from paritybed.fhir.hapi_build import installed_build

    if shutil.which("java") is None:
        return "needs Java 17 (the HAPI FHIR server)"
    try:
        installed_build()
    except EnvironmentProblem as e:
        return e.message
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("hapi") is not None:
        reason = hapi_unavailable_reason()
        if reason is not None:
            require_or_skip("HAPI", f"the HAPI FHIR test cannot run: {reason}")
    if item.get_closest_marker("bpf") is None:
        return
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    if REQUIRE_BPF:
        pytest.fail(f"PARITYBED_REQUIRE_BPF=1 but kernel test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


_hapi_seconds: list[float] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "bpf" in report.keywords:
        _skipped_bpf.append(report.nodeid)
    if "hapi" in report.keywords:
        _hapi_seconds.append(report.duration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workeroutput"):  # an xdist worker: the controller checks and prints
        session.config.workeroutput["paritybed_deselected"] = list(_deselected)
        session.config.workeroutput["paritybed_not_collected"] = list(_not_collected)
        return
    if _hapi_seconds:  # the HAPI FHIR tests' share of the run (set-up, call and teardown of each)
        print(f"\nHAPI FHIR tests: {sum(_hapi_seconds):.0f} s")
    if REQUIRE_BPF and _skipped_bpf:
        print(f"\nPARITYBED_REQUIRE_BPF=1: {len(_skipped_bpf)} kernel test(s) were skipped: {_skipped_bpf[:5]}")
        session.exitstatus = 1
    if REQUIRE_FULL_SUITE and (_deselected or _not_collected):
        print(f"\nPARITYBED_REQUIRE_FULL_SUITE=1 but a filter left tests out: {len(_deselected)} deselected "
              f"{_deselected[:5]}, test files not collected {_not_collected[:5]}")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def shared_synthea() -> Path:
    """The 37 real Synthea patients (older Synthea, see tests/data/synthea-r4.SOURCE.md): the
    vendored copy of ../shared/data/synthea-r4, so the tests run the same wherever the clone is."""
    from paritybed.testdata import synthea_r4

    return synthea_r4()


@pytest.fixture(scope="module")
def rows(shared_synthea) -> list[dict]:
    """Both arms of the tiny scenario over the shared patients (12 h, every agent and lane), as
    trace rows: the agents' requests the FHIR server tests send."""
    from paritybed.fhir.population import load_population
    from paritybed.run import simulate_arm, with_duration
    from paritybed.scenarios import PopulationSettings, load_scenario

    sc = load_scenario(REPO / "scenarios" / "tiny.yaml").model_copy(update={"population": PopulationSettings(folder=str(shared_synthea))})
    sc = with_duration(sc, hours=12)
    pop = load_population(shared_synthea)
    return [r for a in ("production", "staging") for r in simulate_arm(sc, a, pop).to_pylist()]
