"""Shared test set-up.

Kernel tests carry ``@pytest.mark.bpf``.  Where root or BPF is missing they skip with the
reason; under ``PARITYBED_REQUIRE_BPF=1`` (what `.ci/run` sets, CI being root with BPF) a
missing prerequisite or any skipped kernel test fails the run instead.  Tests against the real
HAPI FHIR server carry ``@pytest.mark.hapi`` and do the same with Java and the set-up's build
of fhir/hapi, under ``PARITYBED_REQUIRE_HAPI=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REQUIRE_BPF = os.environ.get("PARITYBED_REQUIRE_BPF") == "1"
REQUIRE_HAPI = os.environ.get("PARITYBED_REQUIRE_HAPI") == "1"
_skipped_bpf: list[str] = []


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

    from paritybed.errors import EnvironmentProblem
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
            if REQUIRE_HAPI:
                pytest.fail(f"PARITYBED_REQUIRE_HAPI=1 but the HAPI test cannot run: {reason}", pytrace=False)
            pytest.skip(reason)
    if item.get_closest_marker("bpf") is None:
        return
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    if REQUIRE_BPF:
        pytest.fail(f"PARITYBED_REQUIRE_BPF=1 but kernel test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "bpf" in report.keywords:
        _skipped_bpf.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_BPF and _skipped_bpf:
        print(f"\nPARITYBED_REQUIRE_BPF=1: {len(_skipped_bpf)} kernel test(s) were skipped: {_skipped_bpf[:5]}")
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
    from paritybed.run import simulate_arm, with_duration
    from paritybed.sim.population import load_population
    from paritybed.sim.scenario import Population, load_scenario

    sc = load_scenario(REPO / "scenarios" / "tiny.yaml").model_copy(update={"population": Population(folder=str(shared_synthea))})
    sc = with_duration(sc, hours=12)
    pop = load_population(shared_synthea)
    return [r for a in ("production", "staging") for r in simulate_arm(sc, a, pop).to_pylist()]
