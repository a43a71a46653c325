"""The enforcer attacked as a compromised agent would: unprivileged (uid 65534, no capabilities),
inside the agent's cgroup, with every way to send it has.  Each attack (tests/adversary.py) runs
as its own process; the assertions are on what the servers received, not only on errno: the
forbidden request (``Patient/secret``) never reaches the FHIR server, no byte leaves by another
protocol, and the enforcer said so in its events.

The policy allows Observation search, read and create; the response mode is deny (so one attack
does not quarantine the next).
"""

from __future__ import annotations

import array
import datetime as dt
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from paritybed.enforcer.policy import AgentPolicy, FhirPolicy, Pair, Policy
from paritybed.enforcer.registry import Endpoint, Registry, save_registry

pytestmark = pytest.mark.bpf

NOBODY = 65534
SECRET = b"Patient/secret"
PYTHON = "/usr/bin/python3"  # the system Python: the attacker runs as nobody, without paritybed
ADVERSARY = Path(__file__).resolve().parent / "adversary.py"


class UdpSink:
    """A UDP socket on the FHIR server's own port: what a UDP service there would receive."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self.got: list[bytes] = []
        self._stop = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._stop:
            try:
                self.got.append(self.sock.recv(65536))
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup
    from paritybed.enforcer.probe import Sink

    if not Path(PYTHON).exists():
        pytest.fail(f"{PYTHON} is needed to run the attacker as an unprivileged user")
    tmp = Path(tempfile.mkdtemp(prefix="pbt-adv-"))
    tmp.chmod(0o755)  # the attacker (nobody) reads its script from here
    script = tmp / "adversary.py"
    shutil.copy(ADVERSARY, script)
    script.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    sink = Sink()
    udp = UdpSink(int(sink.address.rsplit(":", 1)[1]))
    lab = UdpSink(0)  # an endpoint the agent may send to (BAA and envelope): what arrives there
    lab4 = f"127.0.0.1:{lab.sock.getsockname()[1]}"
    reg = tmp / "baa-registry.json"
    save_registry(Registry(version=1, endpoints=[Endpoint(name="lab", address=lab4, baa_id="BAA-T", vendor="test",
                                                          status="active", effective_from="2020-01-01")]), reg)
    allow = [Pair(type="Observation", interaction=i) for i in ("search", "read", "create")]
    policy = Policy(agents={"cds": AgentPolicy(agent_class="cds", fhir=FhirPolicy(server=sink.address, allow=allow),
                                               egress=["lab"], response="deny")})
    cleanup("pbt-adversary")
    ke = KernelEnforcer(policy, reg, start=dt.datetime(2025, 3, 3, tzinfo=dt.timezone.utc), clock="real",
                        name="pbt-adversary", event_log=tmp / "events.jsonl")
    ke.add_replica("cds", 0)
    ping = Path("/proc/sys/net/ipv4/ping_group_range")
    ping_was = ping.read_text()
    ping.write_text("0 2147483647")  # as on many distributions: ICMP sockets open to every group
    yield {"ke": ke, "sink": sink, "udp": udp, "lab": lab, "lab4": lab4, "script": script, "tmp": tmp}
    ping.write_text(ping_was)
    ke.close()
    sink.close()
    udp.close()
    lab.close()
    shutil.rmtree(tmp, ignore_errors=True)


def run(env: dict[str, Any], name: str, *, paused: bool = False, interact: Any = None, confine: bool = True,
        **cfg: Any) -> dict[str, Any]:
    """One attack as nobody inside the replica; returns its report once every byte it could send
    had time to arrive (the sink is resumed first when it was paused).  confine=False runs it
    without the seccomp filter: the kernel programs alone."""
    sink = env["sink"]
    cfg = {"fhir": sink.address, "outside": "127.0.0.2", "lab4": env["lab4"], **cfg}
    if paused:
        sink.pause()
    p = env["ke"].spawn("cds", 0, [PYTHON, str(env["script"]), name, json.dumps(cfg)], user=NOBODY, group=NOBODY,
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, confine=confine)
    try:
        if interact is not None:
            interact(p)
        line = p.stdout.readline()
    finally:
        sink.resume()
    p.wait(timeout=30)
    assert line, f"attack {name} printed nothing (exit {p.returncode})"
    res = json.loads(line)
    assert res.get("uid") == NOBODY and "crash" not in res, res
    time.sleep(0.3)
    return res


def kernel_events(env: dict[str, Any]) -> list[dict[str, Any]]:
    time.sleep(0.1)
    return [e for e in env["ke"].drain() if "kind" in e]


@pytest.fixture
def clean(env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Per test: events and server bytes from here on; afterwards, nothing forbidden arrived."""
    kernel_events(env)
    before = len(env["sink"].data())
    yield env
    got = env["sink"].data()[before:]
    assert SECRET not in got, "a forbidden request reached the FHIR server"
    assert not any(SECRET in d for d in env["udp"].got), "bytes reached the FHIR server's address over UDP"


# ---------------------------------------------------------------- class 1: short sends

def test_short_send_of_a_head_then_another_request(clean: dict[str, Any]) -> None:
    res = run(clean, "short_head", paused=True)
    assert res["short"], "precondition: the send buffer filled and a head went out in part"
    assert res["forbidden"] == errno.EACCES
    [ev] = [e for e in kernel_events(clean) if e["event"] == "deny"]
    assert (ev["hook"], ev["shape"], ev.get("desync")) == ("sk_msg", "split", True)


def test_short_send_with_urgent_data(clean: dict[str, Any]) -> None:
    """MSG_OOB: the server takes the urgent byte out of the stream, so the bytes it parses are not
    the bytes approved: urgent data never leaves."""
    run(clean, "short_oob", paused=True)
    evs = [e for e in kernel_events(clean) if e["event"] == "deny"]
    assert ("unseen", "malformed") in [(e["hook"], e["shape"]) for e in evs]


@pytest.mark.parametrize("attack", ["short_sndtimeo", "short_signal", "short_other_thread"])
def test_short_send_then_forbidden(clean: dict[str, Any], attack: str) -> None:
    res = run(clean, attack, paused=True)
    if res["short"]:
        assert res["forbidden"] == errno.EACCES
    assert any(e["event"] == "deny" for e in kernel_events(clean)) or not res["short"]


def test_short_sends_of_a_body_continue_and_nothing_after_it(clean: dict[str, Any]) -> None:
    """What an ordinary client with a timeout does: a large create sent in several short sends by
    the same thread arrives whole and is answered; a forbidden request after it is denied."""
    body = 400_000
    res = run(clean, "short_body_then_forbidden", body=body)
    assert res["shorts"] >= 1, "precondition: the body went out in short sends"
    assert res["sent"] > body and res["reply"] == "HTTP/1.1 200"
    assert res["forbidden"] == errno.EACCES


# ---------------------------------------------------------------- class 2 and 3: one socket, several connections

def test_reconnect_starts_from_nothing(clean: dict[str, Any]) -> None:
    res = run(clean, "reconnect_after_approvals", paused=True)
    assert res["disconnect"] == 0 and res["reconnect"] is None
    assert res["forbidden"] in (errno.EACCES, "timeout")


@pytest.mark.parametrize("attack", ["reconnect_body_left", "shutdown_reconnect"])
def test_an_announced_body_does_not_survive_a_reconnect(clean: dict[str, Any], attack: str) -> None:
    res = run(clean, attack)
    assert res["disconnect"] == 0 and res["reconnect"] is None
    assert res["forbidden"] == errno.EACCES
    [ev] = [e for e in kernel_events(clean) if e["event"] == "deny"]
    assert (ev["resource_type"], ev["reason"]) == ("Patient", "type-not-in-envelope")


def test_a_held_search_head_hides_nothing(clean: dict[str, Any]) -> None:
    """A POST _search head is held until its form body is written (requests writes a str body
    apart): what completes it is judged with it, as one write, and nothing of it leaves before."""
    before = len(clean["sink"].data())
    res = run(clean, "held_head_smuggle")
    assert isinstance(res["head"], int) and res["head"] > 0  # held: the write is accepted
    assert res["rest"] == errno.EACCES
    res = run(clean, "held_head_body_is_a_request")
    assert isinstance(res["head"], int) and res["rest"] == errno.EACCES
    denies = [(e["shape"], e["reason"]) for e in kernel_events(clean) if e["event"] == "deny"]
    assert denies == [("pipelined", "unclassifiable"), ("malformed", "unclassifiable")], denies
    assert b"_search" not in clean["sink"].data()[before:]  # neither head left


def test_a_held_head_does_not_survive_a_reconnect(clean: dict[str, Any]) -> None:
    res = run(clean, "held_head_reconnect")
    assert res["disconnect"] == 0 and res["reconnect"] is None
    assert res["forbidden"] == errno.EACCES


def test_fast_open_on_a_reconnect(clean: dict[str, Any]) -> None:
    """Fast Open data on a disconnected socket: refused by sk_msg (not established) when the socket
    is still in the socket hash, by the connect hook otherwise."""
    res = run(clean, "reconnect_fast_open")
    assert res["first"] in (errno.ECONNRESET, errno.EACCES)
    assert res["forbidden"] in (errno.EACCES, errno.EPERM, errno.EINVAL)  # never a byte count


def test_a_forked_child_sharing_the_socket(clean: dict[str, Any]) -> None:
    res = run(clean, "fork_shared_socket")
    assert res["child"] == errno.EACCES and res["parent_after"] == errno.EACCES


def test_a_socket_handed_outside_stays_the_replicas(clean: dict[str, Any]) -> None:
    """SCM_RIGHTS to a process outside every replica: its forbidden request on that socket is
    still judged as the replica's (the connection belongs to the cgroup whose SYN opened it)."""
    path = str(clean["tmp"] / "handoff.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    os.chmod(path, 0o777)
    srv.listen(1)
    outcome: dict[str, Any] = {}

    def accomplice(_p: Any) -> None:
        conn, _ = srv.accept()
        _msg, anc, _f, _a = conn.recvmsg(16, socket.CMSG_SPACE(4))
        fd = array.array("i", anc[0][2])[0]
        s = socket.socket(fileno=fd)
        try:
            s.send(b"GET /fhir/Patient/secret HTTP/1.1\r\nHost: fhir\r\n\r\n")
            outcome["send"] = "sent"
        except OSError as e:
            outcome["send"] = e.errno
        conn.send(b"done")

    try:
        run(clean, "pass_socket_outside", interact=accomplice, unix=path)
    finally:
        srv.close()
    assert outcome["send"] == errno.EACCES


# ---------------------------------------------------------------- every way to send

def test_iovec_splits(clean: dict[str, Any]) -> None:
    assert run(clean, "iovec_splits")["results"] == [str(errno.EACCES)]


def test_other_syscalls(clean: dict[str, Any]) -> None:
    res = run(clean, "syscalls")
    for k in ("writev", "write", "sendto", "zerocopy"):
        assert res[k] == errno.EACCES, k
    assert res["more"][0] == errno.EACCES  # a head in pieces (MSG_MORE) is a split head
    assert res["sendmmsg"] in (1, errno.EACCES)  # the allowed first message only


def test_io_uring(clean: dict[str, Any]) -> None:
    """Without the seccomp filter (which refuses io_uring outright): sk_msg alone holds."""
    res = run(clean, "io_uring", confine=False)
    assert set(res) - {"uid"} == {"send", "write", "sendmsg", "send-sqpoll", "write-sqpoll", "sendmsg-sqpoll"}
    for op, r in res.items():
        if op != "uid":
            assert r == errno.EACCES or str(r).startswith("setup:"), (op, r)
    assert res["send"] == errno.EACCES


# ---------------------------------------------------------------- other protocols, options, inbound

def test_udp_to_the_fhir_servers_address(clean: dict[str, Any]) -> None:
    res = run(clean, "udp_to_fhir_server")
    assert res["sendto"] == errno.EPERM and res["connect"] == errno.EPERM
    assert clean["udp"].got == []


def test_socket_kinds_are_refused(clean: dict[str, Any]) -> None:
    res = run(clean, "socket_kinds")
    for kind in ("icmp", "icmp6", "raw", "mptcp"):
        assert res[kind] == errno.EPERM, (kind, res[kind])
    assert res["udplite"] in (errno.EPERM, errno.EPROTONOSUPPORT)
    refused = {e["refused"] for e in kernel_events(clean) if e.get("reason") == "refused"}
    assert "socket AF_INET SOCK_DGRAM icmp" in refused and "socket AF_INET SOCK_STREAM mptcp" in refused


def test_socket_options_are_refused(clean: dict[str, Any]) -> None:
    res = run(clean, "socket_options")
    assert res == {"uid": NOBODY, "fastopen_connect": errno.EPERM, "repair": errno.EPERM, "ulp": errno.EPERM}


def test_fast_open_data_is_refused(clean: dict[str, Any]) -> None:
    before = len(clean["sink"].data())
    res = run(clean, "fast_open")
    assert res["one_byte"] == errno.EPERM and res["request"] == errno.EPERM
    assert clean["sink"].data()[before:] == b""


def test_a_listener_inside_the_replica_accepts_nothing(clean: dict[str, Any]) -> None:
    outcome: dict[str, Any] = {}

    def outsider(p: Any) -> None:
        port = json.loads(p.stdout.readline())["port"]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(2)
                outcome["got"] = s.recv(100)
        except OSError as e:
            outcome["error"] = type(e).__name__

    res = run(clean, "listen_inbound", interact=outsider)
    assert res["accepted"] is False and "got" not in outcome
    [ev] = [e for e in kernel_events(clean) if e.get("hook") == "inbound"]
    assert (ev["event"], ev["reason"]) == ("deny", "egress-not-in-envelope")


def test_a_listener_with_syn_cookies_accepts_nothing(clean: dict[str, Any]) -> None:
    """Backlog 0: the kernel answers further SYNs with cookies, whose SYN-ACK has no owning socket
    (no egress hook sees it).  The SYN itself is dropped at the listener (ingress hook)."""
    outcome: dict[str, Any] = {"connected": 0, "got": b""}

    def outsiders(p: Any) -> None:
        port = json.loads(p.stdout.readline())["port"]

        def one() -> None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.5) as s:
                    outcome["connected"] += 1
                    s.settimeout(1.5)
                    outcome["got"] += s.recv(100)
            except OSError:
                pass
        ts = [threading.Thread(target=one) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    res = run(clean, "listen_backlog0", interact=outsiders)
    assert res["accepted"] == 0 and outcome["connected"] == 0 and SECRET not in outcome["got"]
    inbound = [e for e in kernel_events(clean) if e.get("hook") == "inbound"]
    assert inbound and all(e["event"] == "deny" for e in inbound)


def test_routing_headers_and_ip_options_are_refused(clean: dict[str, Any]) -> None:
    before = len(clean["lab"].got)
    res = run(clean, "routing_headers")
    assert {k: res[k] for k in ("rthdr", "hopopts", "dstopts", "ip_options")} == dict.fromkeys(
        ("rthdr", "hopopts", "dstopts", "ip_options"), errno.EPERM)
    assert res["lsrr_cmsg"] == errno.EPERM and res["nop_cmsg"] == errno.EPERM and res["plain_datagram"] == len(b"plain")
    got = clean["lab"].got[before:]
    assert got == [b"plain"], "only the datagram without a source route arrived"
    evs = kernel_events(clean)
    refused = {e["refused"] for e in evs if e.get("reason") == "refused"}
    assert {"setsockopt IPV6_RTHDR", "setsockopt IP_OPTIONS", "setsockopt IPV6_HOPOPTS"} <= refused
    assert "packet with IPv4 options (first option 1)" in refused


def test_socket_families_no_hook_sees_and_io_uring_are_refused(clean: dict[str, Any]) -> None:
    res = run(clean, "socket_families")
    for fam in ("vsock", "tipc", "rds", "kcm", "smc", "alg", "packet", "socketpair_vsock"):
        assert res[fam] == errno.EAFNOSUPPORT, (fam, res[fam])
    assert res["unix"] == "created" and res["netlink"] == "created"
    assert res["io_uring"] == errno.EPERM


def test_a_conditional_create_is_a_hidden_search(clean: dict[str, Any]) -> None:
    res = run(clean, "if_none_exist")
    assert res["conditional_create"] == errno.EACCES
    [ev] = [e for e in kernel_events(clean) if e["event"] == "deny"]
    assert (ev["shape"], ev["reason"]) == ("method-override", "unclassifiable")
    assert b"If-None-Exist" not in clean["sink"].data()[-4096:]


def test_a_flood_of_denials_does_not_hide_a_forbidden_request(clean: dict[str, Any]) -> None:
    """Egress denials and FHIR decisions have rings of their own, and what a full ring drops is
    counted by replica, kind and reason: the kernel's counters equal what was recorded plus what
    was counted as lost."""
    ke = clean["ke"]
    c0 = ke.counters()["egress"].get("egress-not-in-BAA", 0)
    lost0 = sum(d["count"] for d in ke.lost_by() if d["reason"] == "egress-not-in-BAA")
    res = run(clean, "flood_then_forbidden", seconds=2.0)
    assert res["forbidden"] == errno.EACCES
    evs = kernel_events(clean)
    fhir = [e for e in evs if e.get("kind") == "fhir" and e["event"] == "deny"]
    assert [e["resource_type"] for e in fhir] == ["Patient"], "the FHIR denial is recorded in detail"
    recorded = sum(1 for e in evs if e["event"] == "deny" and e.get("reason") == "egress-not-in-BAA")
    counted = ke.counters()["egress"].get("egress-not-in-BAA", 0) - c0
    lost = sum(d["count"] for d in ke.lost_by() if d["reason"] == "egress-not-in-BAA") - lost0
    assert counted > 1000 and recorded + lost == counted


def test_the_pin_folder_is_root_only(clean: dict[str, Any]) -> None:
    """/sys/fs/bpf is world-writable: the pins live in a root-only folder below it, so an agent
    cannot plant a pin folder (or symlinks to maps of its own) for a control plane that starts
    later; a folder that is not root's is refused, not adopted."""
    from paritybed.core.errors import EnvironmentProblem
    from paritybed.enforcer import rootdir
    from paritybed.enforcer.kernel_load import PIN_ROOT, pin_dir

    st = PIN_ROOT.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) & 0o077 == 0
    assert pin_dir("pbt-adversary").parent == PIN_ROOT
    p = subprocess.run(["/usr/bin/mkdir", str(PIN_ROOT / "planted")], user=NOBODY, group=NOBODY, capture_output=True)
    assert p.returncode != 0 and not (PIN_ROOT / "planted").exists()
    planted = Path(tempfile.mkdtemp(prefix="pbt-planted-"))
    try:
        os.chown(planted, NOBODY, NOBODY)
        with pytest.raises(EnvironmentProblem, match="owned by uid 65534"):
            rootdir.check_root_only(planted)
        os.chown(planted, 0, 0)
        planted.chmod(0o777)
        with pytest.raises(EnvironmentProblem, match="writable by group or others"):
            rootdir.check_root_only(planted)
        link = planted.parent / (planted.name + "-link")
        link.symlink_to(planted)
        with pytest.raises(EnvironmentProblem, match="symbolic link"):
            rootdir.check_root_only(link)
        link.unlink()
    finally:
        shutil.rmtree(planted, ignore_errors=True)


def test_the_agent_still_works_after_all_this(clean: dict[str, Any]) -> None:
    """The enforcer is not stuck closed: an ordinary allowed request from the replica is answered."""
    from paritybed.enforcer.probe import ProbeProcess, probe_argv

    p = ProbeProcess(clean["ke"].spawn("cds", 0, probe_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        raw = "GET /fhir/Observation?patient=p1 HTTP/1.1\r\nHost: fhir\r\n\r\n"
        assert p(op="http", addr=clean["sink"].address, writes=[raw], fresh=True) == {"ok": True, "status": 200}
    finally:
        p.close()
