"""`paritybed enforce`: run any command (and its children) under the kernel enforcer.

The command runs in the agent's cgroup under the policy, on the real clock: a denied FHIR request
fails in the caller with EACCES, a denied connect with EPERM.  The event stream is summarised at
the end and kept as a hash-chained log; in observe mode everything is allowed and recorded, and
the observed envelope is written as a policy.  Heavy imports happen inside the command.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from paritybed.core.errors import InputError

out = Console()
err = Console(stderr=True)
#: Where the checkpoint key lives by default: root's, outside any run folder the agent may write.
DEFAULT_KEY = Path("/var/lib/paritybed/checkpoint.key")

HELP = (
    "Run COMMAND (and its children) in an agent's cgroup under real eBPF enforcement of its policy; "
    "print a summary of the kernel's decisions; keep the hash-chained event log in --out.  With "
    "--mode observe everything is allowed and recorded, and the observed envelope is written as "
    "--out/policy.observed.json.  The exit code is the command's.  Needs root.\n\n"
    "Example: paritybed enforce --policy runs/week/policy.json --agent cds --registry baa-registry.json "
    "-- python my_agent.py\n\n"
    "Example: paritybed enforce --mode observe --agent cds --fhir-server 127.0.0.1:8080 -- python my_agent.py\n\n"
    "Example: paritybed enforce --cleanup"
)


def register(app: typer.Typer) -> None:
    app.command("enforce", help=HELP, context_settings={"allow_interspersed_args": False})(enforce_command)


def enforce_command(
    command: Optional[List[str]] = typer.Argument(None, help="the command to run, after --", show_default=False),
    policy: Optional[Path] = typer.Option(None, "--policy", help="policy.json (optional in observe mode with --fhir-server)"),
    agent: Optional[str] = typer.Option(None, "--agent", help="the policy's agent the command runs as"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="BAA registry (watched; default: empty: no external endpoint)"),
    mode: str = typer.Option("enforce", "--mode", help="enforce (the policy's response mode) or observe"),
    out_dir: Path = typer.Option(Path("runs/enforce"), "--out", help="folder for events.jsonl, summary.json, observed policy"),
    fhir_server: Optional[str] = typer.Option(None, "--fhir-server", help="observe mode without a policy: the agent's FHIR server host:port"),
    fhir_base: str = typer.Option("/fhir", "--fhir-base", help="observe mode without a policy: the FHIR base path"),
    lane: Optional[List[str]] = typer.Option(None, "--lane", help="open a break-glass lane for the run: CLASS:CLAIM[:SECONDS] (repeatable)"),
    context: Optional[str] = typer.Option(None, "--context", help="bind the run to one patient: PATIENT[:ENCOUNTER] opens a "
                                          "launch context for it (id in $PARITYBED_LAUNCH_CONTEXT, to present as "
                                          "X-Launch-Context), for the policy's max_duration_s at most"),
    name: str = typer.Option("paritybed", "--name", help="name of the pinned state and root cgroup"),
    user: str = typer.Option("nobody", "--user", help="the user COMMAND runs as (name or uid): an account of its own, "
                             "unprivileged; root only if the command is trusted (it could detach the enforcer)"),
    group: Optional[str] = typer.Option(None, "--group", help="its group (default: the user's primary group)"),
    allow_shared_uid: bool = typer.Option(False, "--allow-shared-uid", help="run even if other processes outside the "
                                          "agent's cgroup have its uid (it could ptrace them and send through them)"),
    cleanup: bool = typer.Option(False, "--cleanup", help="remove everything a control plane left (programs, pins, cgroups) and exit"),
    checkpoint_key: Path = typer.Option(DEFAULT_KEY, "--checkpoint-key", help="key (mode 0600, created if missing) that "
                                        "signs the event log's checkpoints; keep it where the agent cannot read it"),
    checkpoint_every: float = typer.Option(5.0, "--checkpoint-every", help="seconds between signed checkpoints of the event log"),
) -> None:
    from paritybed.enforcer.kernel import cleanup as kernel_cleanup

    if cleanup:
        done = kernel_cleanup(name)
        out.print("\n".join(done) if done else f"nothing to clean up for {name!r}")
        return
    if not command:
        raise InputError("no command to run: give it after --, e.g. paritybed enforce --policy p.json --agent cds -- python agent.py")
    if mode not in ("enforce", "observe"):
        raise InputError(f"--mode must be enforce or observe, not {mode!r}")
    if not agent:
        raise InputError("--agent is required (the policy's agent the command runs as)")
    lanes = [_parse_lane(x) for x in lane or []]
    binding = _parse_context(context) if context else None
    if checkpoint_every <= 0:
        raise InputError(f"--checkpoint-every must be > 0 seconds, not {checkpoint_every}")
    pol, reg_path = _inputs(policy, agent, registry, mode, fhir_server, fhir_base, out_dir)
    who = agent_identity(user, group, allow_shared_uid)
    from paritybed.core.hashlog import read_checkpoint_key

    key = read_checkpoint_key(checkpoint_key, create=True)
    code = _run(pol, reg_path, agent, command, mode == "observe", out_dir, lanes, name, who, (key, checkpoint_every),
                binding)
    raise typer.Exit(code)


def _inputs(policy: Path | None, agent: str, registry: Path | None, mode: str, fhir_server: str | None,
            fhir_base: str, out_dir: Path) -> tuple[Any, Path]:
    from paritybed.enforcer.policy import AgentPolicy, FhirPolicy, Policy, load_policy
    from paritybed.enforcer.registry import Registry, load_registry, save_registry

    if policy is not None:
        pol = load_policy(policy)
        if agent not in pol.agents:
            if mode != "observe" or not fhir_server:
                raise InputError(f"{policy}: no agent {agent!r} in the policy (it has: {', '.join(sorted(pol.agents))})")
    elif mode != "observe" or not fhir_server:
        raise InputError("--policy is required (or, in observe mode, --fhir-server)")
    else:
        pol = Policy(agents={})
    if agent not in pol.agents:
        try:
            fp = FhirPolicy(server=fhir_server, base=fhir_base)
        except ValueError as e:
            raise InputError(f"--fhir-base: {e}") from None
        pol = Policy(agents={**pol.agents, agent: AgentPolicy(agent_class=agent, fhir=fp, response="observe")})
    out_dir.mkdir(parents=True, exist_ok=True)
    if registry is None:
        registry = out_dir / "baa-registry.json"
        save_registry(Registry(version=1), registry)
    else:
        load_registry(registry)  # a bad file is an input error before anything is loaded
    return pol, registry


def agent_identity(user: str, group: str | None, allow_shared_uid: bool) -> tuple[int, int]:
    """(uid, gid) the command runs as.  An agent is enforced as its cgroup, but a process of the same
    uid outside the cgroup is not: without Yama, the agent can ptrace it and make it send.  So the
    uid must be the agent's alone; any process already running with it is a refusal (exit 3)."""
    import grp
    import pwd

    from paritybed.core.errors import EnvironmentProblem
    from paritybed.enforcer.cgroups import processes_of

    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = pw.pw_uid, pw.pw_gid
    except KeyError:
        if not user.isdigit():
            raise InputError(f"--user {user!r}: no such user") from None
        uid = gid = int(user)  # a uid without an account is fine: nothing else runs with it
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise InputError(f"--group {group!r}: no such group") from None
    if uid == 0:
        err.print("[yellow]the command runs as root (--user root): a compromised agent could detach the enforcer, "
                  "read the checkpoint key and rewrite the event log; use --user with an account of the agent's own "
                  "unless the command is trusted (docs/attestation.md)[/]", soft_wrap=True)
        return uid, gid
    others = processes_of(uid)
    if others and not allow_shared_uid:
        listed = ", ".join(f"{pid} {comm} ({cg})" for pid, comm, cg in others[:5])
        raise EnvironmentProblem(
            f"uid {uid} ({user}) is not the agent's alone: {len(others)} other process(es) run with it ({listed}); "
            "the agent could ptrace them and send through them, unenforced",
            hint="run the agent as an account of its own (--user), or accept the risk with --allow-shared-uid")
    if others:
        err.print(f"[yellow]uid {uid} is shared with {len(others)} process(es) outside the agent's cgroup "
                  "(--allow-shared-uid): they are not enforced[/]")
    return uid, gid


def _parse_lane(text: str) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]) or (len(parts) == 3 and not parts[2].isdigit()):
        raise InputError(f"--lane {text!r}: expected CLASS:CLAIM or CLASS:CLAIM:SECONDS")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 3600


#: the launch context `--context` opens for the run, as the command presents it
RUN_CONTEXT = "paritybed-run"
#: how long it is asked for (the policy's context.max_duration_s caps it)
RUN_CONTEXT_S = 24 * 3600


def _parse_context(text: str) -> tuple[str, str]:
    parts = text.split(":")
    if len(parts) not in (1, 2) or not all(parts):
        raise InputError(f"--context {text!r}: expected PATIENT or PATIENT:ENCOUNTER (ids)")
    return parts[0], parts[1] if len(parts) == 2 else ""


def _run(pol: Any, reg_path: Path, agent: str, command: list[str], observe: bool, out_dir: Path,
         lanes: list[tuple[str, str, int]], name: str, who: tuple[int, int],
         checkpoints: tuple[bytes, float], binding: tuple[str, str] | None = None) -> int:
    from paritybed.enforcer.kernel import KernelEnforcer

    log = out_dir / "events.jsonl"
    log.unlink(missing_ok=True)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    ke = KernelEnforcer(pol, reg_path, start=start, clock="real", event_log=log, record_all=observe, observe=observe,
                        name=name, checkpoint_key=checkpoints[0], checkpoint_every_s=checkpoints[1])
    events: list[dict[str, Any]] = []
    code = 0
    try:
        ke.add_replica(agent, 0)
        for cls, claim, secs in lanes:
            if not ke.open_lane(agent, 0, claim, cls, secs * 1_000_000_000, ke.now_ns()):
                err.print(f"[yellow]lane {cls!r} refused: the policy of {agent!r} has no such lane class[/]")
        env = None
        if binding is not None:
            if not ke.open_context(agent, 0, RUN_CONTEXT, binding[0], binding[1], RUN_CONTEXT_S * 1_000_000_000,
                                   ke.now_ns()):
                err.print(f"[yellow]launch context refused: the policy of {agent!r} has no context section[/]")
            env = {**os.environ, "PARITYBED_LAUNCH_CONTEXT": RUN_CONTEXT}
            err.print(f"[dim]launch context {RUN_CONTEXT!r} open for patient {binding[0]!r}"
                      f"{f' (encounter {binding[1]!r})' if binding[1] else ''}: present it as X-Launch-Context[/]")
        err.print(f"[dim]{'observing' if observe else 'enforcing'} {agent!r}: {' '.join(command)}[/]")
        try:
            proc = ke.spawn(agent, 0, command, user=who[0], group=who[1], env=env)
        except OSError as e:
            raise InputError(f"cannot run {command[0]!r}: {e.strerror}") from None
        try:
            while proc.poll() is None:
                events += _show(ke.poll_events(200), observe)
        except KeyboardInterrupt:
            proc.wait()
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        time.sleep(0.05)
        events += _show(ke.drain(), observe)
    finally:
        lost = {"total": ke.lost_events(), "by": ke.lost_by(), "kernel_counters": ke.counters()}
        ke.close()
    summary = _summary(events, lost, code, observe)
    from paritybed.parity.anchors import log_anchor

    summary["logs"] = {log.name: log_anchor(log)}  # the anchor `paritybed verify-log` finds beside the log
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if observe:
        _write_observed(events, pol, agent, reg_path, out_dir)
    out.print(f"[dim]event log: {log} (hash-chained, signed checkpoints; check it with paritybed verify-log {log} "
              f"--key KEY), summary: {out_dir / 'summary.json'}[/]", highlight=False)
    return code


def _show(events: list[dict[str, Any]], observe: bool) -> list[dict[str, Any]]:
    """Print denials and alerts as they happen (stderr); return the events."""
    for e in events:
        if e.get("event") in ("deny", "alert", "kill", "quarantine") and not observe:
            if e["event"] in ("kill", "quarantine"):  # the response that follows a denial
                err.print(f"[red]{e['event']}[/] after {e.get('reason', '')}: every further request and connect of "
                          "the agent is denied until released or the policy's quarantine hold ends", highlight=False)
                continue
            if e.get("refused"):
                err.print(f"[red]refused[/] {e['refused']} (hook {e.get('hook', '')}): the caller got an error, "
                          "the agent is not quarantined for it", highlight=False)
                continue
            if e.get("kind") == "fhir":
                shape = e.get("shape") or ""
                what = " ".join(x for x in (e.get("method"), e.get("resource_type"), e.get("interaction")) if x)
                what += f" [{shape}]" if shape and shape != "plain" else ""
            else:
                what = f"connect {e.get('address', '')}"
            err.print(f"[red]{e['event']}[/] {e.get('reason', '')}: {what}", highlight=False)
    return events


def _summary(events: list[dict[str, Any]], lost: dict[str, Any], code: int, observe: bool) -> dict[str, Any]:
    from paritybed.enforcer.events import summarize

    s = summarize(events)
    t = Table(title="kernel decisions" + (" (observe: all allowed)" if observe else ""))
    for col in ("kind", "decision", "reason", "shape", "count"):
        t.add_column(col, justify="right" if col == "count" else "left")
    for (kind, ev, reason, shape), n in sorted(s["decisions"].items()):
        t.add_row(kind, ev, reason, shape, str(n))
    out.print(t)
    if s["first_contacts"]:
        fc = Table(title="first contacts (AI-BOM)")
        for col in ("address", "endpoint", "BAA", "registry version", "decision"):
            fc.add_column(col)
        for addr, e in sorted(s["first_contacts"].items()):
            fc.add_row(addr, str(e.get("endpoint") or "-"), str(e.get("baa_id") or "-"), str(e.get("registry_version")),
                       e.get("reason") or "allowed")
        out.print(fc)
    out.print(f"lost events: {lost['total']}" + ("" if not lost["total"] else
                                                 "  [red](a ring buffer overflowed: counted, not silent)[/]"))
    if lost["by"]:
        lt = Table(title="decisions the kernel made but could not record in detail (ring buffer full)")
        for col in ("replica", "kind", "decision", "reason", "hook", "count"):
            lt.add_column(col, justify="right" if col == "count" else "left")
        for d in lost["by"]:
            lt.add_row(f"{d['agent']}-{d['replica']}", d["kind"], d["decision"], d["reason"] or "allowed", d["hook"],
                       str(d["count"]))
        out.print(lt)
    return {"decisions": [{"kind": k, "event": ev, "reason": r, "shape": sh, "count": n}
                          for (k, ev, r, sh), n in sorted(s["decisions"].items())],
            "first_contacts": sorted(s["first_contacts"]), "lost_events": lost["total"], "lost_by": lost["by"],
            "kernel_counters": lost["kernel_counters"], "exit_code": code}


def _write_observed(events: list[dict[str, Any]], pol: Any, agent: str, reg_path: Path, out_dir: Path) -> None:
    from paritybed.agents.trace import write_trace
    from paritybed.enforcer import kernel_abi as abi
    from paritybed.enforcer.policy import save_policy
    from paritybed.enforcer.registry import load_registry
    from paritybed.parity.observed import observed_policy, trace_from_events

    ap = pol.agents[agent]
    servers = {abi.format_address(a, abi.addr_key(a, p).port) for a, p in abi.parse_address(ap.fhir.server)}
    trace = trace_from_events(events, agent_class=ap.agent_class, fhir_server_addresses=servers)
    write_trace(trace, out_dir / "observed-trace.parquet")
    observed = observed_policy(trace, fhir_server=ap.fhir.server, fhir_base=ap.fhir.base,
                               registry=load_registry(reg_path), agent=agent)
    path = out_dir / "policy.observed.json"
    save_policy(observed, path)
    out.print(f"observed envelope of {agent!r} ({trace.num_rows} decisions) written as {path}")
