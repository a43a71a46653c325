"""The new-patient budget under concurrent senders: threads of one replica naming fresh patients
at once get exactly the budget's burst through, never one more (np_tat by compare-and-swap).

An unbound agent (Patient read allowed) with a burst of 200 new patients and an hour per new
patient after that: every request names a patient never named before, each on a connection of
its own (a denied connection stays dropped), 400 of them sent by 16 threads released together,
so that decisions of the budget's first steps overlap on the two CPUs.  (The race the
compare-and-swap closes is a window of tens of nanoseconds: this test did not hit it with the
plain store either; it holds the count exact, which a wrong retry would break.)
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paritybed.enforcer.policy import AgentPolicy, ContextPolicy, FhirPolicy, NewPatientBudget, Pair, Policy
from paritybed.enforcer.registry import Registry, save_registry

pytestmark = pytest.mark.bpf

BURST = 200
THREADS, EACH = 16, 25
RACER = r"""
import socket, sys, threading
host, port, threads, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks = [[socket.create_connection((host, port)) for _ in range(each)] for _ in range(threads)]
go, sent = threading.Barrier(threads), []
def run(k):
    go.wait()
    for i, s in enumerate(socks[k]):
        try:
            s.send(f"GET /fhir/Patient/t{k}-p{i} HTTP/1.1\r\nHost: fhir\r\n\r\n".encode())
            sent.append((k, i))
        except OSError:
            pass
ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
print(len(sent))
"""


def test_concurrent_senders_get_the_burst_and_no_more(tmp_path: Path) -> None:
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup
    from paritybed.enforcer.probe import Sink

    sink = Sink()
    save_registry(Registry(version=1), tmp_path / "baa.json")
    budget = NewPatientBudget(burst=BURST, interval_ns=3600 * 10**9)
    policy = Policy(agents={"scribe": AgentPolicy(
        agent_class="scribe", response="deny",
        fhir=FhirPolicy(server=sink.address, allow=[Pair(type="Patient", interaction="read")]),
        context=ContextPolicy(bound=False, new_patient_budget=budget))})
    cleanup("pbt-budget")
    ke = KernelEnforcer(policy, tmp_path / "baa.json", start=dt.datetime.now(dt.timezone.utc), clock="real",
                        name="pbt-budget")
    try:
        ke.add_replica("scribe", 0)
        host, port = sink.address.rsplit(":", 1)
        p = ke.spawn("scribe", 0, [sys.executable, "-c", RACER, host, port, str(THREADS), str(EACH)], stdout=subprocess.PIPE,
                     text=True)
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        time.sleep(0.3)
        heads = sink.data().count(b"GET /fhir/Patient/")
        evs = [e for e in ke.drain() if e.get("kind") == "fhir"]
    finally:
        ke.close()
        sink.close()
    assert int(out) == BURST  # the senders' view: the burst went through, the rest got EACCES
    assert heads == BURST  # the server's view
    assert sum(e.get("reason") == "new-patient-budget" for e in evs) == THREADS * EACH - BURST
