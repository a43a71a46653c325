"""Each hook's allow and deny through real sockets: what the caller sees (EACCES, EPERM), what
the server receives (nothing of a denied request), the events, and every response mode.

One KernelEnforcer on the virtual clock enforces several agents, one per response mode; every
test drives a probe process inside a replica cgroup (enforcer/probe.py).
"""

from __future__ import annotations

import datetime as dt
import errno
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from paritybed.enforcer.policy import AgentPolicy, FhirPolicy, LanePolicy, Pair, Policy, RatePolicy
from paritybed.enforcer.registry import Endpoint, Registry, save_registry

pytestmark = pytest.mark.bpf

START = dt.datetime(2025, 3, 3, tzinfo=dt.timezone.utc)
S = 1_000_000_000
H = "HTTP/1.1\r\nHost: fhir\r\n\r\n"
OBS = f"GET /fhir/Observation?patient=p1 {H}"
PATIENT = f"GET /fhir/Patient/p1 {H}"


def claim_req(claim: str) -> str:
    return f"GET /fhir/Patient/p1 HTTP/1.1\r\nHost: fhir\r\nX-Break-Glass-Claim: {claim}\r\n\r\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup
    from paritybed.enforcer.probe import Sink

    tmp = tmp_path_factory.mktemp("hooks")
    sink = Sink()
    ext = [Sink() for _ in range(3)]  # stand-in external endpoints (listening, so an allowed connect succeeds)
    v6 = Sink("::1")
    ports = [s.address.rsplit(":", 1)[1] for s in ext]
    reg = Registry(version=1, endpoints=[
        Endpoint(name="embedder", address=f"127.0.0.1:{ports[0]}", baa_id="BAA-1", vendor="Embed Inc"),
        Endpoint(name="other", address=f"127.0.0.1:{ports[1]}"),
        Endpoint(name="v6svc", address=v6.address),
        Endpoint(name="later", address="127.0.0.31:9000", effective_from=dt.date(2025, 3, 4)),
    ])
    reg_path = tmp / "baa-registry.json"
    save_registry(reg, reg_path)
    fhir = FhirPolicy(server=sink.address, allow=[Pair(type="Observation", interaction="search"),
                                                  Pair(type="Observation", interaction="create")])
    lanes = {"code_blue": LanePolicy(allow=[Pair(type="Patient", interaction="read")], max_duration_s=60)}

    def agent(response: str, **kw: Any) -> AgentPolicy:
        return AgentPolicy(agent_class="cds", fhir=fhir, egress=["embedder", "v6svc", "later", "newsvc", "fresh"],
                           lanes=lanes, response=response, **kw)

    policy = Policy(agents={"deny-a": agent("deny"), "alert-a": agent("alert"), "quar-a": agent("quarantine", quarantine_hold_s=60),
                            "kill-a": agent("kill"), "obs-a": agent("observe"),
                            "rate-a": agent("deny", rate=RatePolicy(burst=3, interval_ns=S))})
    cleanup("pbt-hooks")
    ke = KernelEnforcer(policy, reg_path, start=START, name="pbt-hooks", event_log=tmp / "events.jsonl")
    for a in policy.agents:
        ke.add_replica(a, 0)
    ke.add_replica("stranger", 0)  # no policy: unenforced
    e = {"ke": ke, "sink": sink, "ext": ext, "ports": ports, "v6": v6, "reg": reg, "reg_path": reg_path, "tmp": tmp}
    yield e
    ke.close()
    for s in [sink, v6, *ext]:
        s.close()


def probe(env: dict[str, Any], agent: str, replica: int = 0):
    from paritybed.enforcer.probe import ProbeProcess, probe_argv

    return ProbeProcess(env["ke"].spawn(agent, replica, probe_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))


def events(env: dict[str, Any], agent: str | None = None, settle: float = 0.05) -> list[dict[str, Any]]:
    """Kernel events since the last call (of one agent)."""
    time.sleep(settle)
    return [e for e in env["ke"].drain() if "kind" in e and (agent is None or e.get("agent") == agent)]


def http(p: Any, env: dict[str, Any], raw: str, fresh: bool = True) -> dict[str, Any]:
    return p(op="http", addr=env["sink"].address, writes=[raw], fresh=fresh)


def test_sk_msg_allows_and_denies(env: dict[str, Any]) -> None:
    env["ke"].set_clock(0)
    p = probe(env, "deny-a")
    try:
        events(env)
        assert http(p, env, OBS) == {"ok": True, "status": 200}
        before = env["sink"].data()
        assert http(p, env, PATIENT) == {"ok": False, "errno": errno.EACCES}
        time.sleep(0.05)
        assert env["sink"].data() == before  # not one byte of the denied request reached the server
        [ev] = [e for e in events(env) if e["kind"] == "fhir"]
        assert (ev["event"], ev["reason"], ev["resource_type"], ev["interaction"], ev["agent"]) == \
            ("deny", "type-not-in-envelope", "Patient", "read", "deny-a")
        # an unclassifiable shape is denied too
        assert http(p, env, f"GET /fhir/Observation/o1/$everything {H}")["errno"] == errno.EACCES
        assert [e["shape"] for e in events(env) if e["kind"] == "fhir"] == ["operation"]
    finally:
        p.close()


def test_a_denied_connection_stays_denied(env: dict[str, Any]) -> None:
    """tcp_bpf keeps a drop verdict on the socket: later sends on it fail too; a new connection works."""
    p = probe(env, "deny-a")
    sink = env["sink"].address
    try:
        assert p(op="http", addr=sink, writes=[PATIENT], fresh=True, keep_on_error=True)["errno"] == errno.EACCES
        assert p(op="http", addr=sink, writes=[OBS], fresh=False)["errno"] == errno.EACCES
        assert http(p, env, OBS) == {"ok": True, "status": 200}
    finally:
        p.close()


def test_connect4_egress(env: dict[str, Any]) -> None:
    p = probe(env, "deny-a")
    ports = env["ports"]
    try:
        events(env)
        assert p(op="connect", addr=f"127.0.0.1:{ports[0]}") == {"ok": True}
        assert p(op="connect", addr=f"127.0.0.1:{ports[1]}") == {"ok": False, "errno": errno.EPERM}
        assert p(op="connect", addr="127.0.0.23:9999") == {"ok": False, "errno": errno.EPERM}
        evs = [e for e in events(env) if e["kind"] == "egress"]
        first = {e["address"]: e for e in evs if e["event"] == "first-contact"}
        assert first[f"127.0.0.1:{ports[0]}"]["registry_version"] == 1
        assert first[f"127.0.0.1:{ports[0]}"]["endpoint"] == "embedder"
        assert first[f"127.0.0.1:{ports[0]}"]["baa_id"] == "BAA-1"
        denies = {e["address"]: e["reason"] for e in evs if e["event"] == "deny"}
        assert denies == {f"127.0.0.1:{ports[1]}": "egress-not-in-envelope", "127.0.0.23:9999": "egress-not-in-BAA"}
    finally:
        p.close()


def test_connect6_v4_mapped_and_udp(env: dict[str, Any]) -> None:
    p = probe(env, "deny-a")
    try:
        assert p(op="connect", addr=env["v6"].address) == {"ok": True}
        assert p(op="connect", addr="[::1]:9") == {"ok": False, "errno": errno.EPERM}
        assert p(op="connect", addr=f"[::ffff:127.0.0.1]:{env['ports'][0]}") == {"ok": True}  # same endpoint via v6
        assert p(op="connect", addr=f"[::ffff:127.0.0.1]:{env['ports'][1]}") == {"ok": False, "errno": errno.EPERM}
        assert p(op="udp", addr="127.0.0.23:53") == {"ok": False, "errno": errno.EPERM}
        evs = events(env)
        assert {e["hook"] for e in evs if e["event"] == "deny"} == {"connect6", "sendmsg4"}
    finally:
        p.close()


def test_fast_open_is_refused_and_sendfile_is_parsed(env: dict[str, Any]) -> None:
    """TCP Fast Open would queue the request before the socket reaches the socket hash: a connect
    carrying Fast Open data to the FHIR server is refused (EPERM, an event saying so, no
    violation).  sendfile goes through sk_msg like send: a forbidden request is denied."""
    p = probe(env, "deny-a")
    sink = env["sink"]
    try:
        events(env)
        before = len(sink.data())
        assert p(op="tfo", addr=sink.address, data=f"GET /fhir/Patient/tfo-secret {H}") == {"ok": False, "errno": errno.EPERM}
        r = p(op="sendfile", addr=sink.address, data=f"GET /fhir/Patient/file-secret {H}")
        assert r["ok"] is False or r.get("status") is None  # denied: EACCES, or no answer where splice swallows it
        assert p(op="sendfile", addr=sink.address, data=OBS) == {"ok": True, "status": 200}
        time.sleep(0.1)
        got = sink.data()[before:]
        assert b"secret" not in got and got == OBS.encode()
        evs = [(e["kind"], e["event"], e["hook"], e["reason"], e.get("shape", e.get("refused")))
               for e in events(env, "deny-a") if e["event"] in ("deny", "quarantine")]
        assert evs == [("egress", "deny", "connect4", "refused", "fast-open"),
                       ("fhir", "deny", "sk_msg", "type-not-in-envelope", "plain")]
    finally:
        p.close()


def test_processes_outside_the_replica_cgroups_are_unenforced(env: dict[str, Any]) -> None:
    from paritybed.enforcer.probe import ProbeProcess, probe_argv

    outside = ProbeProcess(subprocess.Popen(probe_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    stranger = probe(env, "stranger")
    try:
        for p in (outside, stranger):
            assert http(p, env, PATIENT) == {"ok": True, "status": 200}
            assert p(op="connect", addr="127.0.0.23:9999") == {"ok": True}  # refused, not EPERM
    finally:
        outside.close()
        stranger.close()


def test_alert_allows_and_records(env: dict[str, Any]) -> None:
    p = probe(env, "alert-a")
    try:
        events(env)
        assert http(p, env, PATIENT) == {"ok": True, "status": 200}
        assert [(e["event"], e["reason"]) for e in events(env, "alert-a") if e["kind"] == "fhir"] == [("alert", "type-not-in-envelope")]
    finally:
        p.close()


def test_observe_allows_everything_and_records_everything(env: dict[str, Any]) -> None:
    p = probe(env, "obs-a")
    try:
        events(env)
        assert http(p, env, OBS)["status"] == 200
        assert http(p, env, f"GET /fhir/Patient/p1/$everything {H}")["status"] == 200
        assert p(op="connect", addr="127.0.0.23:9999") == {"ok": True}
        evs = events(env, "obs-a")
        fhir = [(e["event"], e["reason"], e["shape"], e["resource_type"]) for e in evs if e["kind"] == "fhir"]
        assert fhir == [("request", "observe", "plain", "Observation"), ("request", "observe", "operation", "Patient")]
        assert any(e["event"] == "first-contact" and e["address"] == "127.0.0.23:9999" for e in evs)
    finally:
        p.close()


def test_quarantine_holds_until_released_or_expired(env: dict[str, Any]) -> None:
    ke = env["ke"]
    ke.set_clock(10 * S)
    p = probe(env, "quar-a")
    try:
        events(env)
        assert http(p, env, PATIENT)["errno"] == errno.EACCES
        evs = events(env, "quar-a")
        assert [e["event"] for e in evs if e["kind"] == "fhir"] == ["quarantine", "deny"]
        assert next(e for e in evs if e["event"] == "quarantine")["until_ns"] == 70 * S
        # every further request and connect is denied: a fresh connection to the FHIR server too
        r = http(p, env, OBS)
        assert (r["ok"], r["errno"]) == (False, errno.EPERM)
        assert p(op="connect", addr=f"127.0.0.1:{env['ports'][0]}")["errno"] == errno.EPERM
        assert {e["reason"] for e in events(env, "quar-a") if e["event"] == "deny"} == {"quarantined"}
        ke.set_clock(70 * S)  # the hold is over
        assert http(p, env, OBS)["status"] == 200
        assert http(p, env, PATIENT)["errno"] == errno.EACCES  # quarantined again at t=70 s
        assert http(p, env, OBS)["ok"] is False
        written: list[str] = []
        put = ke.maps.put
        ke.maps.put = lambda name, *a: (written.append(name), put(name, *a))[1]
        try:
            ke.release("quar-a", 0)
        finally:
            del ke.maps.put
        # asked, not written: the kernel's entry (its GCRA state, a new quarantine) is never overwritten
        assert "replicas" not in written and "releases" in written
        assert http(p, env, OBS)["status"] == 200
        assert http(p, env, PATIENT)["errno"] == errno.EACCES  # a violation after the release: held again,
        r = http(p, env, OBS)  # and the release already applied does not lift it
        assert (r["ok"], r["errno"]) == (False, errno.EPERM)
        ke.release("quar-a", 0)
        assert http(p, env, OBS)["status"] == 200
    finally:
        p.close()


def test_kill_kills_the_cgroup_and_blocks_respawns(env: dict[str, Any]) -> None:
    ke = env["ke"]
    p = probe(env, "kill-a")
    bystander = ke.spawn("kill-a", 0, [sys.executable, "-c", "import time; time.sleep(60)"])
    events(env)
    try:
        try:
            assert http(p, env, PATIENT)["errno"] == errno.EACCES
        except RuntimeError:
            pass  # killed before it could even report the EACCES
        assert p.proc.wait(timeout=5) == -9
        assert bystander.wait(timeout=5) == -9  # every process of the replica
        assert [e["event"] for e in events(env, "kill-a") if e["kind"] == "fhir"] == ["kill", "deny"]
        p2 = probe(env, "kill-a")  # a respawn stays blocked
        r = http(p2, env, OBS)
        assert (r["ok"], r["errno"]) == (False, errno.EPERM)
        ke.release("kill-a", 0)
        assert http(p2, env, OBS)["status"] == 200
        p2.close()
    finally:
        bystander.kill()
        if p.proc.poll() is None:
            p.close()


def test_rate_limit_gcra_on_the_virtual_clock(env: dict[str, Any]) -> None:
    ke = env["ke"]
    ke.set_clock(1000 * S)
    p = probe(env, "rate-a")
    try:
        got = [http(p, env, OBS).get("status") for _ in range(4)]
        assert got == [200, 200, 200, None]  # burst 3, then rate-exceeded
        assert [e["reason"] for e in events(env, "rate-a") if e["event"] == "deny"] == ["rate-exceeded"]
        ke.set_clock(1001 * S)  # one interval later: exactly one more token
        assert [http(p, env, OBS).get("status") for _ in range(2)] == [200, None]
        ke.set_clock(1010 * S)
        assert http(p, env, OBS)["status"] == 200
    finally:
        p.close()


def test_break_glass_lane_on_the_virtual_clock(env: dict[str, Any]) -> None:
    ke = env["ke"]
    ke.set_clock(100 * S)
    assert ke.open_lane("deny-a", 0, "cb-1", "code_blue", 30 * S, 100 * S) is True
    assert ke.open_lane("deny-a", 0, "x-1", "rapid_response", 30 * S, 100 * S) is False
    p = probe(env, "deny-a")
    try:
        events(env)
        ke.set_clock(110 * S)
        assert http(p, env, claim_req("cb-1"))["status"] == 200
        assert http(p, env, claim_req("cb-2"))["errno"] == errno.EACCES  # not the claim of the lane
        assert http(p, env, PATIENT)["errno"] == errno.EACCES  # no claim
        ke.set_clock(130 * S - 1)
        assert http(p, env, claim_req("cb-1"))["status"] == 200
        ke.set_clock(130 * S)  # expiry: checked by the kernel
        assert http(p, env, claim_req("cb-1"))["errno"] == errno.EACCES
        evs = [(e["event"], e["reason"]) for e in events(env, "deny-a") if e["kind"] == "fhir"]
        assert evs == [("request", "lane"), ("deny", "type-not-in-envelope"), ("deny", "type-not-in-envelope"),
                       ("request", "lane"), ("deny", "lane-expired")]
    finally:
        p.close()


def test_body_in_later_writes_and_smuggling_after_it(env: dict[str, Any]) -> None:
    p = probe(env, "deny-a")
    sink = env["sink"]
    try:
        head = "POST /fhir/Observation HTTP/1.1\r\nHost: fhir\r\nContent-Length: 13\r\n\r\n"
        r = p(op="http", addr=sink.address, writes=[head + '{"a"', ':1,"b":2}'], fresh=True)
        assert r == {"ok": True, "status": 200}
        assert sink.data().endswith((head + '{"a":1,"b":2}').encode())
        # the rest of a body plus a second request in one write: pipelined, denied
        events(env)
        before = len(sink.data())
        r = p(op="http", addr=sink.address, writes=[head + '{"a"', ':1,"b":2}' + PATIENT], fresh=True)
        assert r["errno"] == errno.EACCES
        went = (head + '{"a"').encode()
        deadline = time.monotonic() + 5  # the sink reads on its own thread: wait for the head (a loaded machine)
        while len(sink.data()) - before < len(went) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # and nothing after it
        assert sink.data()[before:] == went  # the head went; the smuggling write did not
        assert [e["shape"] for e in events(env, "deny-a") if e["event"] == "deny"] == ["pipelined"]
    finally:
        p.close()


def test_registry_change_applies_at_the_next_connect(env: dict[str, Any]) -> None:
    ke, reg = env["ke"], env["reg"]
    ke.set_clock(0)
    p = probe(env, "deny-a")
    extra = env["ext"][2]
    try:
        assert p(op="connect", addr=extra.address)["errno"] == errno.EPERM  # no BAA yet
        added = [Endpoint(name="newsvc", address=extra.address), Endpoint(name="fresh", address="127.0.0.32:9000")]
        new = reg.model_copy(update={"version": 2, "endpoints": [*reg.endpoints, *added]})
        save_registry(new, env["reg_path"])
        deadline = time.monotonic() + 5
        while ke.registry_version != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ke.registry_version == 2
        assert p(op="connect", addr=extra.address) == {"ok": True}  # no program was reloaded
        assert p(op="connect", addr="127.0.0.32:9000") == {"ok": True}
        first = {e["address"]: e for e in events(env, "deny-a") if e["event"] == "first-contact"}
        assert (first[extra.address]["registry_version"], first[extra.address]["reason"]) == (1, "egress-not-in-BAA")
        assert (first["127.0.0.32:9000"]["registry_version"], first["127.0.0.32:9000"]["endpoint"]) == (2, "fresh")
        # terminating a BAA takes effect the same way
        ended = [e.model_copy(update={"status": "terminated"}) if e.name == "embedder" else e for e in new.endpoints]
        save_registry(new.model_copy(update={"version": 3, "endpoints": ended}), env["reg_path"])
        while ke.registry_version != 3 and time.monotonic() < deadline + 5:
            time.sleep(0.02)
        assert p(op="connect", addr=f"127.0.0.1:{env['ports'][0]}")["errno"] == errno.EPERM
        evs = env["ke"].drain()
        assert [e["registry_version"] for e in evs if e["event"] == "registry-change"] == [3]
        denied = [e["reason"] for e in evs if e["event"] == "deny" and e["kind"] == "egress"]
        assert denied[-1] == "egress-not-in-BAA"
        # effective dates: 'later' is covered from 2025-03-04 00:00 UTC = 1 day after the start
        assert p(op="connect", addr="127.0.0.31:9000")["errno"] == errno.EPERM
        ke.set_clock(86400 * S)
        assert p(op="connect", addr="127.0.0.31:9000") == {"ok": True}
    finally:
        save_registry(reg, env["reg_path"])
        p.close()


def test_event_log_is_hash_chained(env: dict[str, Any]) -> None:
    from paritybed.core.hashlog import verify

    env["ke"].drain()
    time.sleep(0.1)
    v = verify(env["tmp"] / "events.jsonl")
    assert v.ok and v.records > 5, v.problem


def test_each_replica_can_have_its_own_virtual_clock(env: dict[str, Any]) -> None:
    """set_clock(t, replica=...): replicas decided at their own simulated times, side by side (what
    lets a live driver keep rows of different replicas in flight at once)."""
    ke = env["ke"]
    for n in (1, 2):
        ke.add_replica("quar-a", n)
    ke.set_clock(0)
    ke.set_clock(10 * S, replica=("quar-a", 1))
    ke.set_clock(500 * S, replica=("quar-a", 2))
    p1, p2 = probe(env, "quar-a", 1), probe(env, "quar-a", 2)
    try:
        events(env)
        assert http(p1, env, PATIENT)["errno"] == errno.EACCES  # quarantined at replica 1's t = 10 s
        assert next(e for e in events(env, "quar-a") if e["event"] == "quarantine")["until_ns"] == 70 * S
        ke.set_clock(1000 * S)  # the shared clock moves on; replica 1 keeps its own time
        assert http(p1, env, OBS)["ok"] is False
        ke.set_clock(69 * S, replica=("quar-a", 1))
        assert http(p1, env, OBS)["ok"] is False
        ke.set_clock(70 * S, replica=("quar-a", 1))  # its own hold is over at its own 70 s
        assert http(p1, env, OBS)["status"] == 200
        assert http(p2, env, OBS)["status"] == 200  # replica 2 (own clock 500 s) was never touched
        denied_at = [e["t_ns"] for e in events(env, "quar-a") if e["kind"] == "egress" and e["event"] == "deny"]
        assert denied_at and set(denied_at) <= {10 * S, 69 * S}  # each decision at replica 1's own time
    finally:
        p1.close()
        p2.close()
