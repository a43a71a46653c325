"""Live mode end to end: the production schedule as real processes, real HTTP and real connects
under the eBPF enforcer, scored with the kernel's decisions (needs root and BPF)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from paritybed.hashlog import verify

REPO = Path(__file__).resolve().parent.parent
LIVE = REPO / "scenarios" / "live-smoke.yaml"


def _scenario_on(shared: Path, tmp: Path) -> Path:
    """live-smoke on the shared Synthea folder (no Java run in the test)."""
    text = LIVE.read_text()
    start = text.index("population:")
    end = text.index("\n", text.index("synthea:", start))
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
    parity = json.loads((out / "parity.json").read_text())
    assert parity["mode"] == "live"
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
