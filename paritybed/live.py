"""Live mode: the production schedule as real processes, real HTTP and real connects, decided by
the kernel.

`paritybed run SCENARIO --mode live` simulates both arms (as in model mode), learns the policy
from the staging trace, and then replays the production trace for real:

* the embedded FHIR server (or `--fhir-url`) holds the production patients;
* every agent replica is a worker process (agents/live.py) in its own cgroup under the kernel
  enforcer (enforcer/kernel.py), sending the row's HTTP request over a keep-alive connection or
  connecting to the row's external endpoint; stand-in listeners answer on the 127.0.0.x
  addresses the BAA registry (and the attacks) name;
* the kernel's decision for a row is what the caller saw: EACCES from send (sk_msg drop) or
  EPERM from connect (cgroup connect4) is a deny, anything else went through;
* break-glass activations go to the control plane (`open_lane`).

Two clocks.  On the **virtual** clock the driver writes each row's simulated time into the
kernel's clock map before sending it and waits for the answer: deterministic, and the kernel must
agree with the reference engine on every row (the differential invariant; a disagreement fails
the run).  On the **real** clock rows are dispatched at their simulated time divided by the
compression factor and the kernel uses `bpf_ktime_get_ns()`; agreement is reported, not required,
since wall-clock jitter moves rate-limit and expiry edges.
"""

from __future__ import annotations

import errno as errno_mod
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet.write_table

from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.scenarios import Scenario

Clock = Literal["virtual", "real"]


# ------------------------------------------------------------------------------------ stand-ins
class StandIns:
    """TCP listeners on the external endpoints' loopback addresses: accept and close.

    They stand in for the embedding service, the LLM, the payer gateway and the attackers'
    endpoints, so a connect the kernel lets through really completes."""

    def __init__(self, addresses: list[str]) -> None:
        self.socks: list[socket.socket] = []
        for addr in sorted(set(addresses)):
            host, _, port = addr.rpartition(":")
            host = host.strip("[]")
            if not host.startswith("127.") and host != "::1":
                raise InputError(f"live mode connects only to loopback stand-ins; {addr} is not on 127.0.0.0/8",
                                 hint="give external endpoints 127.0.0.x addresses in the scenario's BAA registry")
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, int(port)))
            except OSError as e:
                s.close()
                self.close()
                raise EnvironmentProblem(f"cannot listen on {addr} for the stand-in endpoint: {e.strerror}") from None
            s.listen(1024)
            s.setblocking(False)
            self.socks.append(s)
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._loop, name="stand-ins", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.socks:
                time.sleep(0.1)
                continue
            ready, _, _ = select.select(self.socks, [], [], 0.1)
            for s in ready:
                try:
                    conn, _ = s.accept()
                    conn.close()
                    self.accepted += 1
                except BlockingIOError:
                    pass

    def close(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()
            self._thread.join(timeout=2)
        for s in self.socks:
            s.close()


# ------------------------------------------------------------------------------------ replicas
class Replica:
    """One agent replica's worker process inside its cgroup (respawned after a kill)."""

    def __init__(self, enforcer: Any, agent: str, replica: int, fhir_hostport: str) -> None:
        self.enforcer, self.agent, self.replica, self.fhir = enforcer, agent, replica, fhir_hostport
        self.spawns = 0
        self.kills = 0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        self.spawns += 1
        argv = [sys.executable, "-P", "-m", "paritybed.agents.live", "--fhir", self.fhir]
        return self.enforcer.spawn(self.agent, self.replica, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, bufsize=1)

    def send(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        """The worker's answer, or None when the worker was killed (the control plane's `kill`
        response) while handling it; the next command goes to a fresh worker in the same cgroup."""
        if self.proc.poll() is not None:
            self._reap()
            self.proc = self._spawn()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(cmd, separators=(",", ":")) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if line:
            return json.loads(line)
        self._reap()
        self.proc = self._spawn()
        return None

    def _reap(self) -> None:
        code = self.proc.wait(timeout=10)
        if code != -signal.SIGKILL:
            raise EnvironmentProblem(f"the live worker of {self.agent}-{self.replica} exited with code {code} "
                                     "(not killed by the enforcer)")
        self.kills += 1

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op":"quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------------ the driver
@dataclass
class LiveResult:
    production: pa.Table  # the production trace + the kernel's `decision` column
    lost_events: int
    summary: dict[str, Any] = field(default_factory=dict)


def _decision(kind: str, answer: dict[str, Any] | None) -> str:
    """What the caller saw, as a decision: a kernel refusal is a deny, anything else went through."""
    if answer is None:
        return "deny"  # killed while handling it: the kill follows a denied request
    err = answer.get("errno")
    if kind == "fhir" and err in (errno_mod.EACCES, errno_mod.EPERM):
        return "deny"  # EACCES: sk_msg drop; EPERM: the (re)connect to the FHIR server was refused
    if kind == "egress" and err == errno_mod.EPERM:
        return "deny"
    if answer.get("error"):
        raise EnvironmentProblem(f"the live worker could not run row {answer.get('row')}: {answer['error']}")
    return "allow"


def drive(scenario: Scenario, production: pa.Table, policy: Any, registry_path: Path, out: Path, fhir_hostport: str,
          *, clock: Clock = "virtual", compression: float = 60.0, name: str = "paritybed",
          progress: Callable[[int, int], None] | None = None) -> LiveResult:
    """Send every production row through the kernel enforcer; return the trace with decisions."""
    from paritybed.agents.live import command_for
    from paritybed.enforcer.kernel import KernelEnforcer

    start = scenario.start.datetime()
    start_iso = start.isoformat()
    rows = production.to_pylist()
    egress_addrs = [r["address"] for r in rows if r["kind"] == "egress"]
    stand_ins = StandIns(egress_addrs)
    ke = KernelEnforcer(policy, registry_path, start=start, clock=clock, compression=compression,
                        event_log=out / "kernel-events.jsonl", name=name)
    replicas: dict[tuple[str, int], Replica] = {}
    decisions: list[str] = []
    seen_errno: list[int] = []  # what the caller saw: 0 or the errno of the refused send/connect
    seen_status: list[int] = []  # HTTP status of a FHIR request that went through (0 otherwise)
    latency: list[int] = []
    t_wall0 = time.monotonic()
    behind = 0
    try:
        for agent, rep in sorted({(r["agent"], int(r["replica"])) for r in rows}):
            replicas[(agent, rep)] = Replica(ke, agent, rep, fhir_hostport)
        for i, r in enumerate(rows):
            t = int(r["t_ns"])
            if clock == "virtual":
                ke.set_clock(t)
            else:
                due = t_wall0 + t / 1e9 / compression
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -0.05:
                    behind += 1
            if r["kind"] == "lane_open":
                ok = ke.open_lane(r["agent"], int(r["replica"]), r["claim_id"], r["lane"], int(r["duration_ns"]), t)
                decisions.append("allow" if ok else "deny")
                seen_errno.append(0)
                seen_status.append(0)
            else:
                answer = replicas[(r["agent"], int(r["replica"]))].send(command_for(r, i, start_iso))
                decisions.append(_decision(r["kind"], answer))
                seen_errno.append(int((answer or {}).get("errno") or (0 if answer is not None else -1)))
                seen_status.append(int((answer or {}).get("status") or 0))
                if answer is not None:
                    latency.append(int(answer.get("ns") or 0))
            if progress is not None and (i % 64 == 0 or i == len(rows) - 1):
                progress(i + 1, len(rows))
        time.sleep(0.2)  # let the last events reach the ring buffer consumer
        ke.drain()
        lost = ke.lost_events()
        counters = ke.counters()
    finally:
        for w in replicas.values():
            w.close()
        ke.close(cleanup=True)
        stand_ins.close()
    dec = pa.array(decisions, type=pa.string()).dictionary_encode()
    lat = np.asarray(latency or [0], dtype=np.int64)
    summary = {
        "clock": clock, "compression": compression if clock == "real" else None,
        "rows": len(rows), "wall_seconds": round(time.monotonic() - t_wall0, 2),
        "kernel_allowed": decisions.count("allow"), "kernel_denied": decisions.count("deny"),
        "worker_kills": sum(w.kills for w in replicas.values()),
        "rows_dispatched_late": behind if clock == "real" else None,
        "request_latency_us": {"p50": round(float(np.percentile(lat, 50)) / 1e3, 1),
                               "p99": round(float(np.percentile(lat, 99)) / 1e3, 1)},
        "lost_events": lost, "kernel_counters": counters, "stand_in_connections": stand_ins.accepted,
    }
    seen = production.append_column("decision", dec).append_column("errno", pa.array(seen_errno, pa.int32()))
    pa.parquet.write_table(seen.append_column("http_status", pa.array(seen_status, pa.int16())), out / "live.parquet",
                           compression="zstd")
    return LiveResult(production.append_column("decision", dec), lost, summary)


def agreement(production_with_kernel: pa.Table, policy: Any, registry: Any, start: Any) -> dict[str, Any]:
    """Row-by-row comparison of the kernel's decisions with the reference engine's (alert counts
    as allowed: the kernel lets an alerted request through and records it)."""
    from paritybed.enforcer.engine import DECISIONS, REASONS, decide

    plain = production_with_kernel.drop_columns(["decision"])
    d = decide(plain, policy, registry, start)
    ref = np.array(["deny" if x == 1 else "allow" for x in d.decision.tolist()], dtype=object)
    kern = np.array(production_with_kernel["decision"].cast(pa.string()).to_pylist(), dtype=object)
    bad = np.nonzero(ref != kern)[0]
    first = []
    for i in bad[:20].tolist():
        r = plain.slice(i, 1).to_pylist()[0]
        first.append({"row": i, "t_ns": r["t_ns"], "agent": f"{r['agent']}-{r['replica']}", "kind": r["kind"],
                      "request": r["path"] or r["address"] or r["lane"], "engine": DECISIONS[d.decision[i]],
                      "engine_reason": REASONS[d.reason[i]], "kernel": kern[i]})
    reasons: dict[str, int] = {}
    for code in d.reason[d.decision == 1].tolist():
        reasons[REASONS[code]] = reasons.get(REASONS[code], 0) + 1
    return {"rows": int(len(kern)), "disagreements": int(len(bad)), "first_disagreements": first,
            "engine_denied": int((ref == "deny").sum()), "kernel_denied": int((kern == "deny").sum()),
            "denied_by_reason": dict(sorted(reasons.items()))}


def run_live(scenario_path: Path, out: Path, *, clock: Clock = "virtual", compression: float = 60.0,
             fhir_url: str | None = None, days: float | None = None, hours: float | None = None,
             name: str = "paritybed", progress: Callable[[str, str, float, float], None] | None = None,
             stage: Callable[[str], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """`paritybed run --mode live`: simulate, learn the policy, drive production through the kernel,
    then score with the kernel's decisions.  Returns (Verdict, live summary)."""
    import os
    from urllib.parse import urlsplit

    from paritybed.enforcer.registry import save_registry
    from paritybed.parity.evaluate import build_policy, evaluate, registry_of
    from paritybed.run import prepare_out, prepare_populations, simulate_arms, summarize, with_duration, write_summary, write_traces
    from paritybed.scenarios import load_scenario, scenario_hash

    if os.geteuid() != 0:
        raise EnvironmentProblem("live mode needs root (eBPF programs and cgroups)",
                                 hint="run as root, or use the default model mode (same decisions, reference engine)")
    scenario = with_duration(load_scenario(scenario_path), days, hours)
    outp = prepare_out(Path(out))
    pops = prepare_populations(scenario, progress)
    arms = simulate_arms(scenario, pops, progress=progress)
    if stage:
        stage("write")
    write_traces(outp, arms)
    write_summary(outp, summarize(scenario, arms, pops, scenario_hash(scenario_path)))
    production, staging = arms["production"].table, arms["staging"].table

    from contextlib import ExitStack

    from paritybed.fhir.server import running_server

    with ExitStack() as stack:
        if fhir_url:
            u = urlsplit(fhir_url)
            if not u.hostname or not u.port:
                raise InputError(f"--fhir-url {fhir_url}: expected http://host:port/base")
            hostport, base = f"{u.hostname}:{u.port}", u.path.rstrip("/") or "/fhir"
        else:
            if stage:
                stage("fhir")
            url = stack.enter_context(running_server(load=[pops["production"].folder]))
            u = urlsplit(url)
            hostport, base = f"{u.hostname}:{u.port}", u.path
        if base != scenario.policy.fhir_base:
            raise InputError(f"the FHIR base {base} differs from the scenario's policy.fhir_base {scenario.policy.fhir_base}")
        # The policy names the server the agents really talk to (and evaluate() rebuilds the same one).
        scenario = scenario.model_copy(update={"policy": scenario.policy.model_copy(update={"fhir_server": hostport})})
        registry = registry_of(scenario)
        registry_path = outp / "baa-registry.json"
        save_registry(registry, registry_path)
        policy = build_policy(scenario, Path(scenario_path), staging, registry)
        if stage:
            stage("live")
        live = drive(scenario, production, policy, registry_path, outp, hostport, clock=clock, compression=compression,
                     name=name, progress=(lambda d, t: progress("production", "live", d, t)) if progress else None)
    agree = agreement(live.production, policy, registry, scenario.start.datetime())
    live.summary["agreement"] = agree
    live.summary["required_agreement"] = clock == "virtual"
    (outp / "live.json").write_text(json.dumps(live.summary, indent=2, sort_keys=True, default=str) + "\n")
    verdict = evaluate(scenario, Path(scenario_path), live.production, staging, outp, mode="live",
                       lost_events=live.lost_events,
                       progress=(lambda name, done, total: stage(name) if stage and done < total else None))
    return verdict, live.summary
