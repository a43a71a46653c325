"""Real FHIR client libraries under kernel enforcement (issue 11): every ordinary operation of
tests/client_ops.py (fhirpy, fhirclient, requests) runs from a process in a replica's cgroup
against the embedded server, with a policy that allows exactly the pairs the operations touch:
all of them succeed (0 false denials).  Then, for operations that touch a pair no other
operation touches, the policy without that one pair: that operation is denied by the kernel,
the others still succeed (every touch is enforced, not just the request's primary pair).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

import client_ops
from paritybed.enforcer.policy import AgentPolicy, FhirPolicy, Pair, Policy
from paritybed.enforcer.registry import Registry, save_registry
from paritybed.fhir.server import running_server

pytestmark = pytest.mark.bpf

TESTS = Path(__file__).resolve().parent
ALL = frozenset(t for op in client_ops.OPERATIONS for t in op.touches)
@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_server() as url:
        client_ops.seed(url)  # unenforced: the record the operations read
        yield url


def run_enforced(base: str, allow: frozenset[tuple[str, str]], tmp: Path) -> tuple[dict[str, dict[str, Any]], list]:
    """Every operation from inside a replica's cgroup under a deny-mode policy allowing `allow`:
    (name -> result, the kernel's deny records)."""
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup

    server = urlsplit(base).netloc
    policy = Policy(agents={"client": AgentPolicy(
        agent_class="cds", response="deny",
        fhir=FhirPolicy(server=server, base="/fhir", allow=[Pair(type=t, interaction=i) for t, i in sorted(allow)]))})
    save_registry(Registry(version=1), tmp / "baa.json")
    cleanup("pbt-clients")
    ke = KernelEnforcer(policy, tmp / "baa.json", start=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc),
                        name="pbt-clients")
    try:
        p = ke.spawn("client", 0, [sys.executable, "-P", str(TESTS / "client_ops.py"), "run", base],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(TESTS))
        out, err = p.communicate(timeout=600)
        denies = [e for e in ke.drain() if e.get("event") == "deny"]
    finally:
        ke.close()
    results = {r["name"]: r for r in (json.loads(line) for line in out.splitlines() if line.startswith("{"))}
    assert len(results) == len(client_ops.OPERATIONS), (out[-2000:], err[-2000:])
    return results, denies


def test_every_operation_passes_under_the_exact_policy(base: str, tmp_path: Path) -> None:
    results, denies = run_enforced(base, ALL, tmp_path)
    failed = {n: r["error"] for n, r in results.items() if not r["ok"]}
    assert not failed  # requests' POST _search with its form body in a write of its own included
    assert not denies, denies


def _unique_touch(name: str) -> tuple[str, str]:
    mine = client_ops.BY_NAME[name].touches
    others = frozenset(t for op in client_ops.OPERATIONS if op.name != name for t in op.touches)
    only = sorted(mine - others)
    assert only, f"{name} touches nothing the other operations do not"
    return only[0]


#: operations with a pair no other operation touches: an untyped include's extra target, a chain's
#: second hop, a version read (each run restarts the enforcer: a few, not all nine)
MISSING = ("fc-include-untyped", "rq-multi-hop-chain", "rq-vread-and-history")


@pytest.mark.parametrize("name", MISSING)
def test_one_pair_missing_denies_exactly_its_operation(base: str, tmp_path: Path, name: str) -> None:
    pair = _unique_touch(name)
    results, denies = run_enforced(base, ALL - {pair}, tmp_path)
    failed = {n for n, r in results.items() if not r["ok"]}
    assert failed == {name}, (pair, {n: results[n].get("error") for n in failed})
    assert denies and all(d["reason"] == "type-not-in-envelope" for d in denies), denies
    assert f"{pair[0]}:{pair[1]}" in {d.get("touch") for d in denies}, denies
