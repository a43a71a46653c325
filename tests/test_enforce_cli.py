"""`paritybed enforce` on a plain Python script against the embedded FHIR server: allowed and
forbidden requests, an egress connect, the summary, the hash-chained log, observe mode's policy,
--lane, --context, --cleanup, and clear input errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from paritybed.enforcer.policy import (AgentPolicy, ContextPolicy, FhirPolicy, LanePolicy, Pair, Policy, load_policy,
                                       save_policy)

AGENT = r'''
"""A plain agent: two requests in its envelope's reach, two beyond it, one external connect."""
import http.client, json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
res = {}
def get(label, path, headers={}):
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", path, headers=headers)
        res[label] = c.getresponse().status
    except OSError as e:
        res[label] = e.errno
    finally:
        c.close()
get("search", "/fhir/Observation?patient=p1")
get("read", "/fhir/Patient/p1")
get("everything", "/fhir/Patient/p1/$everything")
get("lane", "/fhir/Patient/p1", {"X-Break-Glass-Claim": "cb-7"})
try:
    socket.create_connection(("127.0.0.23", 9999), timeout=1).close()
    res["egress"] = 0
except OSError as e:
    res["egress"] = e.errno
print(json.dumps(res))
'''


def paritybed(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paritybed.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fhir() -> Iterator[str]:
    from paritybed.fhir.server import running_server

    with running_server() as url:
        yield url.split("//", 1)[1].split("/", 1)[0]


#: the agent runs unprivileged (a uid of its own, with no account) under the system Python: it
#: cannot reach the venv's interpreter under /root, nor a script in pytest's private tmp_path
AGENT_UID = "64123"
PYTHON = "/usr/bin/python3"


@pytest.fixture
def files(tmp_path: Path, fhir: str) -> dict[str, Path]:
    scripts = Path(tempfile.mkdtemp(prefix="pbt-cli-"))
    scripts.chmod(0o755)
    (scripts / "agent.py").write_text(AGENT)
    (scripts / "agent.py").chmod(0o644)
    lanes = {"code_blue": LanePolicy(allow=[Pair(type="Patient", interaction="read")], max_duration_s=600)}
    save_policy(Policy(agents={"cds": AgentPolicy(agent_class="cds", lanes=lanes, fhir=FhirPolicy(
        server=fhir, allow=[Pair(type="Observation", interaction="search")]))}), tmp_path / "policy.json")
    return {"dir": tmp_path, "scripts": scripts, "agent": scripts / "agent.py", "policy": tmp_path / "policy.json"}


@pytest.mark.bpf
def test_enforce_a_plain_script(files: dict[str, Path], fhir: str) -> None:
    from paritybed.core.hashlog import verify

    out = files["dir"] / "out"
    r = paritybed("enforce", "--policy", str(files["policy"]), "--agent", "cds", "--out", str(out), "--name", "pbt-cli",
                  "--lane", "code_blue:cb-7:60", "--user", AGENT_UID, "--", PYTHON, str(files["agent"]), fhir)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.splitlines()[0])
    # search allowed (the embedded server answers), Patient read denied with EACCES unless under the lane,
    # $everything denied (unclassifiable), the external connect denied with EPERM
    assert res == {"search": 200, "read": 13, "everything": 13, "lane": 404, "egress": 1}
    assert "kernel decisions" in r.stdout and "type-not-in-envelope" in r.stdout
    assert "deny egress-not-in-BAA: connect 127.0.0.23:9999" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    counts = {(d["kind"], d["event"], d["reason"]): d["count"] for d in summary["decisions"]}
    assert counts == {("fhir", "deny", "type-not-in-envelope"): 1, ("fhir", "deny", "unclassifiable"): 1,
                      ("egress", "deny", "egress-not-in-BAA"): 1, ("fhir", "request", "lane"): 1}
    assert summary["lost_events"] == 0 and summary["exit_code"] == 0
    v = verify(out / "events.jsonl")
    assert v.ok, v.problem
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "lane-open" and e["claim"] == "cb-7" for e in events)
    assert not Path("/sys/fs/cgroup/unified/pbt-cli").exists()  # everything removed at the end


SCRIBE = r'''
"""A bound agent: it presents the run's launch context; its own patient, then another one."""
import http.client, json, os, sys
host, port = sys.argv[1].rsplit(":", 1)
ctx = os.environ["PARITYBED_LAUNCH_CONTEXT"]
res = {}
for pid in ("p1", "p2"):
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", f"/fhir/Patient/{pid}", headers={"X-Launch-Context": ctx})
        res[pid] = c.getresponse().status
    except OSError as e:
        res[pid] = e.errno
    finally:
        c.close()
print(json.dumps(res))
'''


@pytest.mark.bpf
def test_context_binds_the_run_to_its_patient(files: dict[str, Path], fhir: str) -> None:
    (files["scripts"] / "scribe.py").write_text(SCRIBE)
    (files["scripts"] / "scribe.py").chmod(0o644)
    save_policy(Policy(agents={"scribe": AgentPolicy(
        agent_class="ambient_scribe", context=ContextPolicy(bound=True, max_duration_s=600, max_open=1),
        fhir=FhirPolicy(server=fhir, allow=[Pair(type="Patient", interaction="read")]))}), files["dir"] / "bound.json")
    out = files["dir"] / "out-ctx"
    r = paritybed("enforce", "--policy", str(files["dir"] / "bound.json"), "--agent", "scribe", "--out", str(out),
                  "--name", "pbt-cli", "--context", "p1:e1", "--user", AGENT_UID, "--", PYTHON,
                  str(files["scripts"] / "scribe.py"), fhir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0]) == {"p1": 404, "p2": 13}  # its patient (none stored: 404), not another
    assert "launch context 'paritybed-run' open for patient 'p1'" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    counts = {(d["kind"], d["event"], d["reason"]): d["count"] for d in summary["decisions"]}
    assert counts == {("fhir", "deny", "out-of-context"): 1}
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    opened = [e for e in events if e.get("event") == "context-open"]
    assert len(opened) == 1 and "p1" not in json.dumps(opened)  # the log names the patient by hash only


@pytest.mark.bpf
def test_observe_writes_the_observed_envelope_as_a_policy(files: dict[str, Path], fhir: str) -> None:
    out = files["dir"] / "obs"
    r = paritybed("enforce", "--mode", "observe", "--agent", "scribe", "--fhir-server", fhir, "--out", str(out),
                  "--name", "pbt-cli", "--user", AGENT_UID, "--", PYTHON, str(files["agent"]), fhir)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.splitlines()[0])
    assert res["read"] == 404 and res["egress"] == 111  # nothing denied: the server answers, the port is closed
    pol = load_policy(out / "policy.observed.json")
    ap = pol.agents["scribe"]
    assert {p.key() for p in ap.fhir.allow} == {("Observation", "search"), ("Patient", "read")}
    assert ap.fhir.allow_shapes == ["operation"] and ap.fhir.server == fhir
    assert ap.egress == []  # 127.0.0.23:9999 has no BAA: no policy could allow it


SLOW_AGENT = r'''
"""Denied reads spread over ~1.5 s, so the control plane writes periodic checkpoints between them."""
import http.client, sys, time
host, port = sys.argv[1].rsplit(":", 1)
for i in range(5):
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", f"/fhir/Patient/p{i}")
        c.getresponse()
    except OSError:
        pass
    finally:
        c.close()
    time.sleep(0.3)
'''


@pytest.mark.bpf
def test_event_log_ends_with_a_signed_final_checkpoint_and_a_cut_tail_is_detected(files: dict[str, Path], fhir: str) -> None:
    key = files["dir"] / "keys" / "checkpoint.key"
    out = files["dir"] / "cp"
    (files["scripts"] / "slow.py").write_text(SLOW_AGENT)
    (files["scripts"] / "slow.py").chmod(0o644)
    r = paritybed("enforce", "--policy", str(files["policy"]), "--agent", "cds", "--out", str(out), "--name", "pbt-cli",
                  "--checkpoint-key", str(key), "--checkpoint-every", "0.2", "--user", AGENT_UID, "--",
                  PYTHON, str(files["scripts"] / "slow.py"), fhir)
    assert r.returncode == 0, r.stderr
    assert key.stat().st_mode & 0o777 == 0o600  # created private
    log = out / "events.jsonl"
    events = [json.loads(x) for x in log.read_text().splitlines()]
    cps = [e for e in events if "checkpoint" in e]
    assert len(cps) >= 3 and events[-1] == cps[-1] and cps[-1]["checkpoint"]["final"] is True
    assert any(e.get("event") == "deny" for e in events)
    v = paritybed("verify-log", str(log), "--key", str(key))
    assert v.returncode == 0 and "final checkpoint" in v.stdout and "summary.json" in v.stdout, v.stdout + v.stderr
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-2]))  # the last denial's tail and the final checkpoint
    v = paritybed("verify-log", str(log), "--key", str(key))
    assert v.returncode == 1 and "without a final checkpoint" in v.stderr
    v = paritybed("verify-log", str(log))  # no key: the summary.json anchor still sees it
    assert v.returncode == 1 and "the last 2 record(s) are missing" in v.stderr


@pytest.mark.bpf
def test_exit_code_and_cleanup(files: dict[str, Path]) -> None:
    r = paritybed("enforce", "--policy", str(files["policy"]), "--agent", "cds", "--out", str(files["dir"] / "x"),
                  "--name", "pbt-cli", "--user", AGENT_UID, "--", PYTHON, "-c", "raise SystemExit(7)")
    assert r.returncode == 7
    r = paritybed("enforce", "--cleanup", "--name", "pbt-cli")
    assert r.returncode == 0 and "nothing to clean up" in r.stdout


@pytest.mark.bpf
def test_the_agent_runs_unprivileged_as_its_own_uid(files: dict[str, Path]) -> None:
    """--user: the command's uid and gid, no supplementary groups, no_new_privs (a set-user-ID
    binary gives it nothing); root only when asked for, with a warning."""
    probe = "import os; s = open('/proc/self/status').read(); print(os.getuid(), os.getgid(), os.getgroups(), 'NoNewPrivs:\t1' in s)"
    r = paritybed("enforce", "--policy", str(files["policy"]), "--agent", "cds", "--out", str(files["dir"] / "u"),
                  "--name", "pbt-cli", "--user", AGENT_UID, "--", PYTHON, "-c", probe)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"{AGENT_UID} {AGENT_UID} [] True"
    r = paritybed("enforce", "--policy", str(files["policy"]), "--agent", "cds", "--out", str(files["dir"] / "u"),
                  "--name", "pbt-cli", "--user", "root", "--", PYTHON, "-c", "import os; print(os.getuid())")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "0" and "could detach the enforcer" in r.stderr


@pytest.mark.bpf
def test_a_uid_shared_with_processes_outside_is_refused(files: dict[str, Path]) -> None:
    """An agent can ptrace a process of its own uid outside its cgroup (no Yama here) and send
    through it: such a uid is refused at start (exit 3, naming the process) unless accepted."""
    other = subprocess.Popen(["sleep", "30"], user=64124, group=64124)
    try:
        args = ["enforce", "--policy", str(files["policy"]), "--agent", "cds", "--out", str(files["dir"] / "s"),
                "--name", "pbt-cli", "--user", "64124"]
        r = paritybed(*args, "--", PYTHON, "-c", "print('ran')")
        assert r.returncode == 3 and f"{other.pid} sleep" in r.stderr and "ptrace" in r.stderr, r.stderr
        assert "ran" not in r.stdout and "Traceback" not in r.stderr
        r = paritybed(*args, "--allow-shared-uid", "--", PYTHON, "-c", "print('ran')")
        assert r.returncode == 0 and "ran" in r.stdout and "not enforced" in r.stderr
    finally:
        other.kill()
        other.wait()


@pytest.mark.bpf
def test_a_second_control_plane_under_a_name_in_use_says_who_holds_it(files: dict[str, Path]) -> None:
    """Two control planes cannot share a name: the second says which process holds it and what to do."""
    (files["scripts"] / "wait.py").write_text("import time; time.sleep(8)\n")
    (files["scripts"] / "wait.py").chmod(0o644)
    base = ["enforce", "--policy", str(files["policy"]), "--agent", "cds", "--name", "pbt-cli", "--user", AGENT_UID]
    first = subprocess.Popen([sys.executable, "-m", "paritybed.cli", *base, "--out", str(files["dir"] / "a"), "--",
                              PYTHON, str(files["scripts"] / "wait.py")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not Path("/sys/fs/cgroup/unified/pbt-cli/cds-0").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        # another uid: the second one would be refused for sharing the first one's uid anyway
        r = paritybed(*base[:-1], "64125", "--out", str(files["dir"] / "b"), "--", PYTHON, "-c", "print('ran')")
        assert r.returncode == 3 and f"pid {first.pid}" in r.stderr and "--name" in r.stderr, r.stderr
        r = paritybed("enforce", "--cleanup", "--name", "pbt-cli")
        assert r.returncode == 3 and f"pid {first.pid}" in r.stderr  # nor can it be cleaned up under it
    finally:
        first.wait(timeout=60)
    assert first.returncode == 0


@pytest.mark.parametrize("args,message", [
    (["--agent", "cds", "--", "true"], "--policy is required"),
    (["--policy", "{policy}", "--agent", "nope", "--", "true"], "no agent 'nope'"),
    (["--policy", "{policy}", "--agent", "cds"], "no command to run"),
    (["--policy", "{policy}", "--agent", "cds", "--mode", "watch", "--", "true"], "--mode must be"),
    (["--policy", "{policy}", "--agent", "cds", "--lane", "code_blue", "--", "true"], "expected CLASS:CLAIM"),
    (["--policy", "{policy}", "--agent", "cds", "--context", "p1:e1:x", "--", "true"], "expected PATIENT or PATIENT:ENCOUNTER"),
    (["--policy", "{dir}/missing.json", "--agent", "cds", "--", "true"], "no such policy file"),
])
def test_input_errors(files: dict[str, Path], args: list[str], message: str) -> None:
    args = [a.replace("{policy}", str(files["policy"])).replace("{dir}", str(files["dir"])) for a in args]
    r = paritybed("enforce", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
