"""Live mode end to end: the production schedule as real processes, real HTTP and real connects
under the eBPF enforcer, scored with the kernel's decisions (needs root and BPF)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from paritybed.core.hashlog import verify

REPO = Path(__file__).resolve().parent.parent
LIVE = REPO / "scenarios" / "live-smoke.yaml"


def _scenario_on(shared: Path, tmp: Path, *, derive: bool = True) -> Path:
    """live-smoke on the shared Synthea folder (no Java run in the test); its patients derived
    from that folder as the scenario says, or (`derive=False`) the folder's own patients, for a
    server loaded with that folder only (test_hapi)."""
    text = LIVE.read_text()
    start = text.index("population:")
    end = text.index("\n", text.index("synthea:", start))
    if not derive:
        end = text.index("\n", text.index("derive:", end))
    p = tmp / "live-smoke.yaml"
    p.write_text(text[:start] + f"population:\n  folder: {shared}" + text[end:])
    return p


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "paritybed.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.bpf
def test_live_virtual_clock_agrees_with_the_reference_engine_on_every_request(tmp_path, shared_synthea):
    scenario = _scenario_on(shared_synthea, tmp_path)
    out = tmp_path / "live"
    r = _run(["run", str(scenario), "--mode", "live", "--out", str(out)], tmp_path)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    live = json.loads((out / "live.json").read_text())
    agree = live["agreement"]
    # The invariant: the kernel decided every row as the reference engine did.
    assert agree["rows"] > 1000 and agree["disagreements"] == 0, agree["first_disagreements"]
    # Not vacuous: the production arm's attacks and quarantines made the kernel refuse requests,
    # and the kernel really let traffic through to the stand-in endpoints.
    assert live["kernel_denied"] == agree["engine_denied"] > 0
    assert live["kernel_allowed"] > 1000 and live["stand_in_connections"] > 0
    assert live["lost_events"] == 0
    # The kernel's own records decided every row: none left over, none contradicting the caller.
    assert agree["compared"] == "decision and reason"
    assert live["caller_saw_otherwise"] == 0 and live["unattributed_events"] == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["mode"] == "live" and parity["replay"]["decided_by"] == "kernel"
    assert parity["replay"]["kernel"]["disagreements"] == 0
    assert parity["replay"]["lost_events"] == 0
    assert "kernel and the reference engine disagree" not in r.stderr
    # The kernel's own event log is hash-chained and intact, and names its denials.
    log = out / "kernel-events.jsonl"
    assert verify(log).ok
    events = [json.loads(x) for x in log.read_text().splitlines()]
    assert any(e.get("event") == "deny" and e.get("hook") in ("sk_msg", "connect4") for e in events)
    assert any(e.get("event") == "first-contact" and e.get("endpoint") for e in events)
    assert (out / "report.html").exists() and (out / "live.parquet").exists()
    import pyarrow.parquet as pq

    seen = pq.read_table(out / "live.parquet", columns=["decision", "reason", "errno"])
    replayed = pq.read_table(out / "replay.parquet", columns=["decision", "reason"])
    # The replay's decisions are the kernel's, row for row.
    assert seen.select(["decision", "reason"]).cast(replayed.schema).equals(replayed)
    # the kernel's event log is anchored in parity.json like every other chained log
    from paritybed.parity.anchors import verify_anchored

    v, _ = verify_anchored(log)
    assert v.ok and v.anchor.endswith("parity.json") and "kernel-events.jsonl" in parity["logs"]


def test_live_disagreement_on_the_virtual_clock_exits_1(tmp_path, monkeypatch, paritybed_cli):
    """README exit codes: in live mode on the virtual clock a disagreement between the kernel and
    the reference engine is exit 1 even when parity passes; on the real clock it is reported only.
    (The kernel cannot be made to disagree on purpose: the live driver's result stands in.)"""
    from paritybed import cmd_run
    from paritybed.parity.evaluate import Verdict
    from paritybed.run import RunOutput

    def fake_live(clock: str):
        live = {"clock": clock, "rows": 10, "wall_seconds": 1.0, "kernel_allowed": 9, "kernel_denied": 1,
                "worker_kills": 0, "lost_events": 0,
                "agreement": {"rows": 10, "disagreements": 2, "first_disagreements": [{"row": 3}]}}
        doc = {"verdict": "pass", "criteria": {c: {"pass": True, "status": "pass", "metrics": []} for c in ("fidelity", "coverage", "break_glass")},
               "replay": {"over_blocks": {"total": 0}, "under_blocks": {"total": 0}, "attacks_caught": 0, "gates": [],
                          "attacks_injected": 0, "clinical_impact_minutes": 0}}
        return lambda *a, **kw: RunOutput(out=tmp_path, traces={}, summary={}, live=live,
                                          verdict=Verdict(verdict="pass", parity=doc, out_dir=tmp_path))

    for clock, expected in (("virtual", 1), ("real", 0)):
        monkeypatch.setattr(cmd_run, "run_with_progress", fake_live(clock))
        monkeypatch.setattr(cmd_run, "print_run", lambda *a: None)
        monkeypatch.setattr(cmd_run, "print_live", lambda *a: None)
        code, err = paritybed_cli("run", "x.yaml", "--mode", "live", "--clock", clock, "--out", str(tmp_path))
        assert code == expected, (clock, err)
        assert ("disagree on 2 of 10 requests" in err) == (clock == "virtual")


@pytest.mark.bpf
def test_live_real_clock_runs_compressed_and_reports_agreement(tmp_path, shared_synthea):
    scenario = _scenario_on(shared_synthea, tmp_path)
    out = tmp_path / "live-real"
    r = _run(["run", str(scenario), "--mode", "live", "--clock", "real", "--compression", "900", "--hours", "1",
              "--out", str(out)], tmp_path)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    live = json.loads((out / "live.json").read_text())
    assert live["clock"] == "real" and live["compression"] == 900
    # One simulated hour at 900x is 4 s of wall time: the driver paced the rows, not ran them flat out.
    assert live["wall_seconds"] >= 3.5
    assert live["required_agreement"] is False and "disagreements" in live["agreement"]
    assert live["kernel_allowed"] > 0
    # On the real clock too the figures are the kernel's, whatever the engine would have said.
    parity = json.loads((out / "parity.json").read_text())
    assert parity["replay"]["decided_by"] == "kernel"
    assert parity["replay"]["requests"] == live["rows"]


def test_live_mode_without_root_is_a_clear_environment_error(tmp_path, shared_synthea, require):
    """A non-root user asking for live mode gets exit 3 and what needs root, not a traceback
    (run as the nobody user when the tests run as root)."""
    import os
    import shutil

    scenario = _scenario_on(shared_synthea, tmp_path)
    tmp_path.chmod(0o777)
    scenario.chmod(0o644)
    cmd = [sys.executable, "-P", "-m", "paritybed.cli", "run", str(scenario), "--mode", "live", "--out", str(tmp_path / "x")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            require("setpriv", "root without setpriv: cannot run the command as an unprivileged user")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {**os.environ, "HOME": str(tmp_path), "PARITYBED_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "needs root" in r.stderr and "Traceback" not in r.stderr


def test_the_kernels_records_decide_each_row():
    """The live driver's decisions come from the kernel's records for each row (no kernel needed:
    the records are written here as the control plane expands them)."""
    from paritybed.enforcer.kernel_abi import ALERT, ALLOW, DENY, REASONS
    from paritybed.live import RowDecisions

    k = RowDecisions(7)
    me = ("cds", 0)
    rec = {"agent": "cds", "replica": 0, "kind": "fhir", "t_ns": 5, "hook": "sk_msg"}
    k.row(0, 1, me, "fhir", True, False, [])  # nothing recorded: a plain allow
    k.row(1, 2, me, "fhir", True, False, [{**rec, "event": "alert", "reason": "rate-exceeded"}])
    k.row(2, 3, me, "fhir", True, False, [{**rec, "event": "request", "reason": "lane"}])
    k.row(3, 4, me, "fhir", True, True, [{**rec, "event": "quarantine", "reason": "type-not-in-envelope", "until_ns": 99},
                                         {**rec, "event": "deny", "reason": "type-not-in-envelope"}])
    k.row(4, 5, me, "egress", True, False, [{**rec, "kind": "egress", "event": "first-contact", "reason": "",
                                             "registry_version": 1}, {"event": "registry-change"}])
    k.lane(5, 6, True, False, [{"event": "lane-refused", "lane": "code_blue", "agent": "cds", "replica": 0}])
    k.row(6, 7, me, "fhir", False, False, [])
    d = k.result([1, 2, 3, 4, 5, 6, 7])
    assert d.decided_by == "kernel"
    assert d.decision.tolist() == [ALLOW, ALERT, ALLOW, DENY, ALLOW, DENY, ALLOW]
    assert [REASONS[r] for r in d.reason] == ["", "rate-exceeded", "lane", "type-not-in-envelope", "", "lane-not-in-envelope",
                                              "unenforced"]
    # The replay reads quarantines from the events, in the engine's vocabulary, with the row.
    q = [e for e in d.events if e["event"] == "quarantine"]
    assert q == [{"row": 3, "t_ns": 4, "event": "quarantine", "reason": "type-not-in-envelope", "until_ns": 99, "hook": "sk_msg"}]
    assert {(e["row"], e["event"]) for e in d.events} >= {(1, "alert"), (3, "deny"), (4, "first-contact"), (5, "lane-refused")}
    assert k.caller_mismatch == 0 and k.unattributed == 0


@pytest.mark.bpf
def test_demo_runs_live_where_the_kernel_can(tmp_path, shared_synthea):
    """`paritybed demo` as root on a kernel with BPF: the kernel decides production, and the
    first line says so (a three-hour live-smoke stands in for the default week)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from paritybed import cmd_run\n"
        f"cmd_run.DEFAULT_SCENARIO = Path({str(_scenario_on(shared_synthea, tmp_path))!r})\n"
        "from paritybed.cli import main\n"
        f"sys.argv = ['paritybed', 'demo', '--out', {str(tmp_path / 'demo')!r}]\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    assert "the kernel decides production (live mode" in " ".join(r.stderr.split())
    parity = json.loads((tmp_path / "demo" / "parity.json").read_text())
    assert parity["mode"] == "live" and parity["replay"]["decided_by"] == "kernel"
    assert json.loads((tmp_path / "demo" / "live.json").read_text())["agreement"]["disagreements"] == 0
