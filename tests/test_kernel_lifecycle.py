"""The kernel enforcer outlives its control plane: pinned state, fail-closed enforcement while the
control plane is dead (a lane and a launch context still close on time), adoption by a new control plane without a
gap, events lost to a full ring buffer counted exactly, and cleanup removing everything.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from paritybed.enforcer.policy import AgentPolicy, ContextPolicy, FhirPolicy, LanePolicy, Pair, Policy, save_policy
from paritybed.enforcer.registry import Registry, save_registry

pytestmark = pytest.mark.bpf

START = dt.datetime(2025, 3, 3, tzinfo=dt.timezone.utc)
H = "HTTP/1.1\r\nHost: fhir\r\n\r\n"
OBS = f"GET /fhir/Observation?patient=p1 {H}"
PATIENT = f"GET /fhir/Patient/p1 {H}"
LANE = "GET /fhir/Patient/p1 HTTP/1.1\r\nHost: fhir\r\nX-Break-Glass-Claim: cb-1\r\n\r\n"

CONTROL_PLANE = r"""
import datetime as dt, json, sys, time
from pathlib import Path
from paritybed.enforcer.policy import load_policy
from paritybed.enforcer.kernel import KernelEnforcer
policy, registry, name, log, lane_s = sys.argv[1:6]
ke = KernelEnforcer(load_policy(policy), Path(registry), start=dt.datetime.now(dt.timezone.utc), clock="real",
                    name=name, event_log=Path(log))
ke.add_replica("cds", 0)
ke.open_lane("cds", 0, "cb-1", "code_blue", int(float(lane_s) * 1e9), ke.now_ns())
ke.add_replica("scribe", 0)
ke.open_context("scribe", 0, "lc-1", "p1", "", int(float(lane_s) * 1e9), ke.now_ns())
print(json.dumps({"dir": str(ke.replica_dir("cds", 0)), "scribe": str(ke.replica_dir("scribe", 0))}), flush=True)
time.sleep(3600)
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    from paritybed.enforcer.probe import Sink

    sink = Sink()
    policy = Policy(agents={"cds": AgentPolicy(
        agent_class="cds", fhir=FhirPolicy(server=sink.address, allow=[Pair(type="Observation", interaction="search")]),
        lanes={"code_blue": LanePolicy(allow=[Pair(type="Patient", interaction="read")], max_duration_s=60)}),
        "scribe": AgentPolicy(
            agent_class="ambient_scribe", fhir=FhirPolicy(server=sink.address, allow=[Pair(type="Patient", interaction="read")]),
            context=ContextPolicy(bound=True, max_duration_s=60, max_open=4))})
    save_policy(policy, tmp_path / "policy.json")
    save_registry(Registry(version=1), tmp_path / "baa.json")
    yield {"sink": sink, "policy": policy, "tmp": tmp_path}
    sink.close()


def _probe(cgroup: Path):
    from paritybed.enforcer.cgroups import spawn_in
    from paritybed.enforcer.probe import ProbeProcess, probe_argv

    return ProbeProcess(spawn_in(cgroup, probe_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))


def test_enforcement_survives_the_control_plane_and_is_adopted_without_a_gap(setup: dict[str, Any]) -> None:
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup

    name, tmp, sink = "pbt-adopt", setup["tmp"], setup["sink"]
    cleanup(name)
    lane_s = 2.5
    cp = subprocess.Popen([sys.executable, "-c", CONTROL_PLANE, str(tmp / "policy.json"), str(tmp / "baa.json"), name,
                           str(tmp / "events-1.jsonl"), str(lane_s)], stdout=subprocess.PIPE, text=True)
    ke = None
    p = scribe = None
    try:
        line = cp.stdout.readline()
        lane_opened = time.monotonic()
        assert line, "the control plane did not start"
        cgroup = Path(json.loads(line)["dir"])
        p = _probe(cgroup)
        http = lambda raw: p(op="http", addr=sink.address, writes=[raw], fresh=True)  # noqa: E731
        scribe = _probe(Path(json.loads(line)["scribe"]))
        in_ctx = lambda pid: scribe(op="http", addr=sink.address, fresh=True, writes=[  # noqa: E731
            f"GET /fhir/Patient/{pid} HTTP/1.1\r\nHost: fhir\r\nX-Launch-Context: lc-1\r\n\r\n"])
        assert http(LANE)["status"] == 200
        cp.send_signal(signal.SIGKILL)
        cp.wait(timeout=5)
        # the launch context holds its patient and no other
        assert in_ctx("p1")["status"] == 200
        assert in_ctx("p2")["errno"] == errno.EACCES
        # the control plane is dead: the kernel goes on deciding, and closes the lane on time
        assert http(OBS)["status"] == 200
        assert http(PATIENT)["errno"] == errno.EACCES
        assert time.monotonic() - lane_opened < lane_s - 0.5, "too slow to test the lane before its expiry"
        assert http(LANE)["status"] == 200
        time.sleep(max(0.0, lane_opened + lane_s + 0.3 - time.monotonic()))
        assert http(LANE)["errno"] == errno.EACCES  # expired: checked by the kernel alone
        assert in_ctx("p1")["errno"] == errno.EACCES  # the launch context too
        # a new control plane takes over while requests keep flowing: no request passes or fails wrongly
        results: list[tuple[float, str, dict[str, Any]]] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():  # paced: the denials must fit the ring buffer while nobody reads it
                for raw, label in ((OBS, "allowed"), (PATIENT, "denied")):
                    results.append((time.monotonic(), label, http(raw)))
                time.sleep(0.004)

        th = threading.Thread(target=traffic)
        th.start()
        t0 = time.monotonic()
        ke = KernelEnforcer(setup["policy"], tmp / "baa.json", start=START, clock="real", name=name,
                            event_log=tmp / "events-2.jsonl")
        t1 = time.monotonic()
        time.sleep(0.2)
        stop.set()
        th.join()
        assert ke.adopted
        during = [r for r in results if t0 <= r[0] <= t1]
        assert len(during) >= 4, "no traffic while the new control plane loaded"
        assert all(r["status"] == 200 for _, label, r in results if label == "allowed")
        assert all(r.get("errno") == errno.EACCES for _, label, r in results if label == "denied")
        # the decisions taken while no control plane ran were kept in the pinned ring buffer
        time.sleep(0.1)
        evs = [e for e in ke.drain() if e.get("kind") == "fhir"]
        assert ("cds", "lane-expired") in {(e.get("agent"), e["reason"]) for e in evs}
        assert sum(e["reason"] == "type-not-in-envelope" for e in evs) >= 1 + len([r for r in results if r[1] == "denied"])
        assert ke.lost_events() == 0
    finally:
        if cp.poll() is None:
            cp.kill()
        if p is not None:
            p.close()
        if scribe is not None:
            scribe.close()
        if ke is not None:
            ke.close()
        cleanup(name)


def test_lost_events_are_counted_exactly(setup: dict[str, Any]) -> None:
    """A one-page ring buffer, nobody reading it, 300 decisions: read + lost = decisions."""
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup

    name, tmp, sink = "pbt-lost", setup["tmp"], setup["sink"]
    cleanup(name)
    ke = KernelEnforcer(setup["policy"], tmp / "baa.json", start=START, name=name, rb_pages=1, record_all=True)
    cgroup = ke.add_replica("cds", 0)
    ke.drain()
    ke.close(cleanup=False)  # the control plane goes away; the kernel keeps deciding and recording
    p = _probe(cgroup)
    try:
        n = 300
        for _ in range(n):
            assert p(op="http", addr=sink.address, writes=[OBS])["status"] == 200
    finally:
        p.close()
    ke2 = KernelEnforcer(setup["policy"], tmp / "baa.json", start=START, name=name, record_all=True)
    try:
        assert ke2.adopted
        time.sleep(0.1)
        read = [e for e in ke2.drain() if e.get("event") in ("request", "deny", "alert")]
        decisions = sum(sum(v.values()) for v in ke2.counters().values())
        lost = ke2.lost_events()
        assert decisions == n + 1, ke2.counters()  # the requests and the one connect
        assert lost > 0
        assert len(read) + lost == decisions
        assert 0 < len(read) < 60  # what fits in one page
    finally:
        ke2.close()


def test_adoption_under_a_changed_policy_keeps_each_agent_to_its_own(setup: dict[str, Any]) -> None:
    """A new control plane adopts the pinned maps with a policy that drops the scribe, adds an
    agent and changes the CDS agent's pairs: the CDS replica is enforced by its new pairs, the
    dropped scribe's running process fails closed (its cgroup is not unenforced), and the new
    agent does not inherit the scribe's policy (agents: slots, kernel_maps.load_policy)."""
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup

    name, tmp, sink = "pbt-repolicy", setup["tmp"], setup["sink"]
    cleanup(name)
    ke = KernelEnforcer(setup["policy"], tmp / "baa.json", start=START, clock="real", name=name)
    ke2 = None
    probes = []
    try:
        cds, scribe = _probe(ke.add_replica("cds", 0)), _probe(ke.add_replica("scribe", 0))
        probes += [cds, scribe]
        ke.open_context("scribe", 0, "lc-1", "p1", "", 60 * 10**9, ke.now_ns())
        in_ctx = f"GET /fhir/Patient/p1 HTTP/1.1\r\nHost: fhir\r\nX-Launch-Context: lc-1\r\n\r\n"
        http = lambda p, raw: p(op="http", addr=sink.address, writes=[raw], fresh=True)  # noqa: E731
        assert http(scribe, in_ctx)["status"] == 200 and http(cds, OBS)["status"] == 200
        assert http(cds, PATIENT)["errno"] == errno.EACCES
        ke.close(cleanup=False)
        old = setup["policy"].agents
        policy = Policy(agents={
            "cds": old["cds"].model_copy(update={"fhir": FhirPolicy(server=sink.address, allow=[
                Pair(type="Patient", interaction="read")])}),
            "prior_auth": AgentPolicy(agent_class="prior_auth", fhir=FhirPolicy(
                server=sink.address, allow=[Pair(type="Coverage", interaction="read")]))})
        ke2 = KernelEnforcer(policy, tmp / "baa.json", start=START, clock="real", name=name)
        assert ke2.adopted
        assert http(cds, PATIENT)["status"] == 200 and http(cds, OBS)["errno"] == errno.EACCES
        # dropped from the policy: fails closed (its connect is refused, EPERM; a send would get EACCES)
        assert http(scribe, in_ctx).get("errno") in (errno.EPERM, errno.EACCES)
        pa = _probe(ke2.add_replica("prior_auth", 0))
        probes.append(pa)
        assert http(pa, f"GET /fhir/Coverage/c1 {H}")["status"] == 200
        assert http(pa, in_ctx)["errno"] == errno.EACCES  # not the scribe's pairs
    finally:
        for p in probes:
            p.close()
        (ke2 or ke).close()
        cleanup(name)


def test_cleanup_removes_programs_pins_cgroups_and_processes(setup: dict[str, Any]) -> None:
    from paritybed.enforcer import bpfsys
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup
    from paritybed.enforcer.kernel_load import INET4_CONNECT, pin_dir

    name, tmp = "pbt-clean", setup["tmp"]
    cleanup(name)
    ke = KernelEnforcer(setup["policy"], tmp / "baa.json", start=START, name=name)
    ke.add_replica("cds", 0)
    sleeper = ke.spawn("cds", 0, [sys.executable, "-c", "import time; time.sleep(60)"])
    root = ke.tree.root
    ke.close(cleanup=False)
    fd = os.open(root, os.O_RDONLY)
    try:
        assert len(bpfsys.prog_query(fd, INET4_CONNECT)) == 1
    finally:
        os.close(fd)
    assert pin_dir(name).is_dir() and (root / "cds-0").is_dir()
    done = cleanup(name)
    assert sleeper.wait(timeout=5) == -9
    assert not root.exists() and not pin_dir(name).exists()
    assert any("detached" in d for d in done)
    assert cleanup(name) == []  # idempotent
