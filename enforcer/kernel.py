"""The kernel enforcer's control plane: BCC loader, policy and registry into maps, replicas as
cgroups, break-glass lanes, events into the hash-chained log.

The kernel decides on its own (bpf/paritybed.c); this process only configures it and reads
what it reports.  Kill it and enforcement goes on from the pinned maps (fail-closed: lanes
still expire, quarantines still hold); start another with the same ``name`` and it adopts the
pinned state, replacing the programs in place (enforcer/kernel_load.py).

Usage (live mode driver, ``paritybed enforce``)::

    ke = KernelEnforcer(policy, Path("baa-registry.json"), start=start, clock="virtual")
    ke.add_replica("cds", 0)
    proc = ke.spawn("cds", 0, [sys.executable, "agent.py"])
    ke.set_clock(t_ns)                 # before each request of the schedule (virtual clock)
    events = ke.poll_events(100)
    ke.close()
"""

from __future__ import annotations

import ctypes as ct
import datetime as dt
import fcntl
import json
import os
import queue
import select
import subprocess
import threading
from pathlib import Path
from typing import Any, Literal

from paritybed.core.clock import Clock
from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.core.hashlog import HashLog
from paritybed.enforcer import classify, kernel_abi as abi, kernel_load, kernel_maps as km, rootdir
from paritybed.enforcer.cgroups import CgroupTree, cgroup_id, parse_replica_name, spawn_in
from paritybed.enforcer.events import RingReader, expand
from paritybed.enforcer.policy import Policy
from paritybed.enforcer.registry import Registry, load_registry

RUN_DIR = Path("/run/paritybed")


class KernelEnforcer:
    """Real eBPF enforcement of one policy for the replicas registered with ``add_replica``."""

    def __init__(self, policy: Policy, registry_path: Path, *, start: dt.datetime,
                 clock: Literal["virtual", "real"] = "virtual", compression: float = 1.0,
                 event_log: Path | None = None, record_all: bool = False, name: str = "paritybed",
                 rb_pages: int = 256, observe: bool = False, poll_interval_ms: int = 50,
                 checkpoint_key: bytes | None = None, checkpoint_every_s: float = 5.0) -> None:
        if os.geteuid() != 0:
            raise EnvironmentProblem("kernel enforcement needs root (BPF programs, cgroups)",
                                     hint="run as root, or use model mode (the reference engine)")
        if clock not in ("virtual", "real") or compression <= 0:
            raise InputError(f"clock must be 'virtual' or 'real' and compression > 0 (got {clock!r}, {compression})")
        self.policy, self.registry_path, self.start, self.name = policy, Path(registry_path), start, name
        self._name_lock = hold_name(name)  # before anything is loaded: one control plane per name
        try:  # everything after the lock: on failure the name is free again
            self.record_all, self.observe = record_all, observe
            self.tree = CgroupTree(self.name)
            self.tree.ensure()
            manifest = self._read_manifest()
            k0 = Clock.ktime()
            if manifest and manifest.get("clock") == clock and manifest.get("compression") == compression:
                k0 = int(manifest["k0"])  # adoption: keep simulated time where it was
            self.clock = Clock(real=clock == "real", k0=k0, compression=compression)
            self._lock = threading.RLock()
            self._rb_lock = threading.Lock()  # one ring-buffer consumer at a time
            self._reg_lock = threading.Lock()  # one registry refresh at a time (pump thread, callers)
            self._closed = False
            self._registry = load_registry(self.registry_path)  # bad input fails before touching the kernel
            self._registries: dict[int, Registry] = {self._registry.version: self._registry}
            self._reg_sig = self._registry_signature()
            self._loaded = kernel_load.load(self.name, self.tree.root, rb_pages=manifest.get("rb_pages", rb_pages) if manifest else rb_pages)
            self.adopted = self._loaded.adopted
            self.maps = km.Maps(self._loaded.maps)
            km.load_tables(self.maps)
            self._slots = km.load_policy(self.maps, policy, self.clock, observe=observe)
            km.load_registry(self.maps, self._registry, start, self.clock)
            km.set_knobs(self.maps, real_clock=self.clock.real, record_all=record_all,
                         registry_version=self._registry.version)
            self._replicas: dict[tuple[str, int], tuple[int, Path]] = {}
            self._by_cgid: dict[int, tuple[str, int, Path]] = {}
            self._contexts: dict[tuple[str, int], dict[str, int]] = {}  # contexts in force: id -> expiry (sim ns)
            self._rslots: set[int] = set()  # entries of the replicas array in use
            self._adopt_replicas()
            self._write_manifest(rb_pages if not manifest else manifest.get("rb_pages", rb_pages))
            # With a key the log carries signed checkpoints (every checkpoint_every_s, and a final one at
            # close), so a removed tail is detectable (paritybed verify-log --key).
            self._log = HashLog(event_log, checkpoint_key=checkpoint_key) if event_log else None
            self._checkpoint_every_s = checkpoint_every_s
            self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
            self._reader = RingReader([self.maps.fds["events"], self.maps.fds["egress_events"]], self._on_event)
            self._stop = threading.Event()
            self._poll_ms = poll_interval_ms
            self._log_event({"event": "control-plane-start", "adopted": self.adopted, "policy": policy.computed_hash(),
                             "registry_version": self._registry.version, "clock": clock, "compression": compression})
            self._thread = threading.Thread(target=self._pump, name="paritybed-events", daemon=True)
            self._thread.start()
        except BaseException:
            os.close(self._name_lock)
            raise

    # ------------------------------------------------------------------ replicas

    def add_replica(self, agent: str, replica: int) -> Path:
        """Create the replica's cgroup and register it (an agent without a policy stays unenforced)."""
        with self._lock:
            d = self.tree.create(agent, replica)
            cgid = cgroup_id(d)
            self._replicas[(agent, replica)] = (cgid, d)
            self._by_cgid[cgid] = (agent, replica, d)
            if agent in self.policy.agents and self._replica_entry(cgid) is None:
                slot = km.free_replica_entry(self._rslots)
                self._rslots.add(slot)
                self.maps.put("replicas", ct.c_uint32(slot), abi.Replica(  # an earlier holder's releases are not this one's
                    agent=km.agent_key(agent), tat=0, q_until=-1, np_tat=0, replica=replica, seen_n=0,
                    slot=self._slots[agent], entry=slot, cgid=cgid, rel_seen=self._releases_asked(slot)))
                self.maps.put("replica_ids", ct.c_uint64(cgid), ct.c_uint32(slot))  # registered: enforced from here
            return d

    def _releases_asked(self, slot: int) -> int:
        """How many releases the replicas entry ``slot`` has been asked for (pb_release_pending)."""
        asked = self.maps.get("releases", ct.c_uint32(slot), ct.c_uint64)
        return asked.value if asked else 0

    def _replica_entry(self, cgid: int) -> tuple[int, abi.Replica] | None:
        """The replica's entry in the replicas array, and where it is (None: not registered)."""
        slot = self.maps.get("replica_ids", ct.c_uint64(cgid), ct.c_uint32)
        r = self.maps.get("replicas", ct.c_uint32(slot.value), abi.Replica) if slot is not None else None
        return (slot.value, r) if r is not None and r.cgid == cgid else None

    def _cgid(self, agent: str, replica: int) -> int:
        """The replica's cgroup id (registering the replica on first use)."""
        if (agent, replica) not in self._replicas:
            self.add_replica(agent, replica)
        return self._replicas[(agent, replica)][0]

    def spawn(self, agent: str, replica: int, argv: list[str], **popen_kw: Any) -> subprocess.Popen:
        """Start a process inside the replica's cgroup, before it opens any socket."""
        if (agent, replica) not in self._replicas:
            self.add_replica(agent, replica)
        return spawn_in(self._replicas[(agent, replica)][1], argv, **popen_kw)

    def replica_dir(self, agent: str, replica: int) -> Path:
        return self._replicas[(agent, replica)][1]

    def _adopt_replicas(self) -> None:
        """Match registered cgroup ids (a previous control plane's) to the replica directories,
        keeping the replicas array's entries they hold."""
        dirs = {cgroup_id(p): p for p in self.tree.children()}
        for key in self.maps.keys("replica_ids", ct.c_uint64):
            cgid = key.value
            d = dirs.get(cgid)
            parsed = parse_replica_name(d.name) if d else None
            found = self._replica_entry(cgid)
            if parsed is None or found is None:  # its cgroup is gone: the entry is free again
                self.maps.delete("replica_ids", key)
                if found is not None:
                    self.maps.put("replicas", ct.c_uint32(found[0]), abi.Replica())
                continue
            slot, r = found
            self._rslots.add(slot)
            if parsed[0] not in self.policy.agents:  # an agent this policy dropped: its processes fail closed
                if r.slot != abi.AGENTS:
                    r.slot = abi.AGENTS  # no agent slot: pb_agent_of finds no policy (an unregistered cgroup would pass)
                    self.maps.put("replicas", ct.c_uint32(slot), r)
                continue
            self._replicas[parsed] = (cgid, d)
            self._by_cgid[cgid] = (parsed[0], parsed[1], d)
            if r.slot != self._slots[parsed[0]]:  # its agent's slot (pinned maps keep it)
                r.slot = self._slots[parsed[0]]
                self.maps.put("replicas", ct.c_uint32(slot), r)

    # ------------------------------------------------------------------ clock, lanes, quarantine

    def set_clock(self, t_ns: int, replica: tuple[str, int] | None = None) -> None:
        """Virtual clock: the simulated time the next decisions use; with ``replica=(agent, n)``
        only that replica's (a replica whose clock was set this way keeps its own from then on, so
        a driver can have rows of different replicas in flight at once, each at its own time)."""
        if self.clock.real:
            raise InputError("set_clock is for the virtual clock; this enforcer runs on the real clock")
        if replica is None:
            with self._lock:
                km.set_knobs(self.maps, vnow=int(t_ns))
            return
        cgid = self._replicas[replica][0]
        self.maps.put("vclock", ct.c_uint64(cgid), ct.c_int64(int(t_ns)))

    def replica_clock(self, agent: str, replica: int) -> tuple[int, int]:
        """(fd of the ``vclock`` map, the replica's key in it) for a process that replays the
        replica's schedule and sets its clock itself before each row (`bpfsys.ReplicaClock`; live
        mode's worker): the same entry ``set_clock(t, replica=...)`` writes, without a round trip
        to the control plane per row.  The fd is the control plane's: pass it to the child
        (``pass_fds``), do not close it."""
        if self.clock.real:
            raise InputError("replica clocks are for the virtual clock; this enforcer runs on the real clock")
        if (agent, replica) not in self._replicas:
            self.add_replica(agent, replica)
        return self.maps.fds["vclock"], self._replicas[(agent, replica)][0]

    def now_ns(self) -> int:
        """Simulated time now (the virtual clock's value, or the real clock mapped back)."""
        if self.clock.real:
            return self.clock.sim(Clock.ktime())
        k = self.maps.get("knobs", ct.c_uint32(0), abi.Knobs)
        return k.vnow if k else 0

    def open_lane(self, agent: str, replica: int, claim_id: str, lane_class: str, duration_ns: int, t_ns: int) -> bool:
        """A break-glass activation: the rule of the engine (docs/enforcement.md).  The kernel then
        allows the lane's pairs for requests presenting this claim until the expiry, which it
        checks itself."""
        p = self.policy.agents.get(agent)
        if p is None:
            return True  # unenforced agent: nothing to open
        expiry = p.lane_expiry(lane_class, t_ns, duration_ns, observe=self.observe)
        if expiry is None:
            self._log_event({"event": "lane-refused", "t_ns": t_ns, "agent": agent, "replica": replica,
                             "lane": lane_class, "claim": claim_id})
            return False
        cgid = self._cgid(agent, replica)
        cls = km.lane_classes(p).get(lane_class, 31)
        with self._lock:
            self.maps.put("lanes", abi.LaneKey(cgid, classify.fnv1a64(claim_id)), abi.Lane(self.clock.at(expiry), cls, 0))
        self._log_event({"event": "lane-open", "t_ns": t_ns, "agent": agent, "replica": replica, "lane": lane_class,
                         "claim": claim_id, "expires_ns": expiry})
        return True

    def open_context(self, agent: str, replica: int, context_id: str, patient_id: str, encounter_id: str,
                     duration_ns: int, t_ns: int) -> bool:
        """A launch context opened by the EHR side for the replica (docs/enforcement.md,
        "Clinical context binding"): the engine's rule (AgentPolicy.context_expiry, with the
        contexts of the replica still in force at t), then the kernel holds (context, patient,
        encounter, expiry) as 64-bit hashes and checks the expiry itself, so a context closes on
        time with the control plane gone.  The event log names the patient and encounter by hash
        only, as the kernel's records do (no identifier leaves in the log)."""
        p = self.policy.agents.get(agent)
        if p is None:
            return True  # unenforced agent: nothing to open
        held = self._contexts.setdefault((agent, replica), {})
        for c in [c for c, exp in held.items() if exp <= t_ns]:
            del held[c]
        others = len(held) - (context_id in held)
        expiry = p.context_expiry(t_ns, duration_ns, others, observe=self.observe)
        pat, enc = classify.fnv1a64(patient_id), classify.fnv1a64(encounter_id) if encounter_id else 0
        key = classify.fnv1a64(context_id)
        ev = {"t_ns": t_ns, "agent": agent, "replica": replica, "context": f"{key:016x}",
              "patient": f"{pat:016x}", "encounter": f"{enc:016x}" if enc else "", "duration_ns": int(duration_ns)}
        if expiry is None:
            self._log_event({"event": "context-refused", **ev})
            return False
        cgid = self._cgid(agent, replica)
        with self._lock:
            self.maps.put("contexts", abi.CtxKey(cgid, key), abi.Ctx(pat, enc, self.clock.at(expiry)))
        held[context_id] = expiry
        self._log_event({"event": "context-open", **ev, "expires_ns": expiry})
        return True

    def close_context(self, agent: str, replica: int, context_id: str, t_ns: int) -> None:
        """The clinical work of the context ended (note signed, recommendation filed, claim
        decided): the kernel no longer holds it."""
        if agent not in self.policy.agents:
            return
        self._contexts.get((agent, replica), {}).pop(context_id, None)
        key = classify.fnv1a64(context_id)
        entry = self._replicas.get((agent, replica))
        if entry is not None:
            with self._lock:
                self.maps.delete("contexts", abi.CtxKey(entry[0], key))
        self._log_event({"event": "context-close", "t_ns": t_ns, "agent": agent, "replica": replica,
                         "context": f"{key:016x}"})

    def release(self, agent: str, replica: int) -> None:
        """Lift a quarantine (or a kill's block on respawns).  Asked, not written: the release count
        of the replica's entry moves on and the kernel lifts the quarantine at the replica's next
        check (pb_release_pending); writing the entry would overwrite what the kernel wrote since
        it was read (its GCRA state, a new quarantine)."""
        cgid = self._replicas[(agent, replica)][0]
        with self._lock:
            found = self._replica_entry(cgid)
            if found is not None:
                self.maps.put("releases", ct.c_uint32(found[0]), ct.c_uint64(self._releases_asked(found[0]) + 1))
        self._log_event({"event": "release", "agent": agent, "replica": replica, "t_ns": self.now_ns()})

    # ------------------------------------------------------------------ registry

    @property
    def registry_version(self) -> int:
        return self._registry.version

    def _registry_signature(self) -> tuple[int, int, int]:
        st = self.registry_path.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh_registry(self) -> bool:
        """Apply the registry file if it changed; True if a new version went in.  The event thread
        calls this every poll interval, so a change takes effect at the next connect."""
        with self._reg_lock:
            return self._refresh_registry()

    def _refresh_registry(self) -> bool:
        try:
            sig = self._registry_signature()
        except FileNotFoundError:
            return False
        if sig == self._reg_sig:
            return False
        try:
            reg = load_registry(self.registry_path)
            with self._lock:
                km.load_registry(self.maps, reg, self.start, self.clock)
                km.set_knobs(self.maps, registry_version=reg.version)
        except InputError as e:
            self._reg_sig = sig
            self._log_event({"event": "registry-error", "error": e.message})
            return False
        self._reg_sig = sig
        old, self._registry = self._registry, reg
        self._registries[reg.version] = reg
        self._log_event({"event": "registry-change", "registry_version": reg.version, "previous_version": old.version,
                         "registry_hash": reg.content_hash()})
        return True

    # ------------------------------------------------------------------ events

    def _log_event(self, rec: dict[str, Any]) -> None:
        with self._lock:
            if self._log is not None:
                self._log.append(rec)
        self._queue.put(rec)

    def _on_event(self, ev: abi.Event) -> None:
        d = abi.decode_event(ev)
        who = self._by_cgid.get(ev.cgid)
        if who:
            d["agent"], d["replica"] = who[0], who[1]
        if self.clock.real:
            d["ktime_ns"] = d["t_ns"]
            d["t_ns"] = self.clock.sim(d["t_ns"])
            if "until_ns" in d:
                d["until_sim_ns"] = self.clock.sim(d["until_ns"])
        if d["kind"] == "egress" and "registry_version" in d:
            reg = self._registries.get(d["registry_version"], self._registry)
            ep = next((e for e in reg.endpoints if classify.fnv1a64(e.name) == d.get("endpoint_hash")), None)
            if ep is not None:
                d.update(endpoint=ep.name, baa_id=ep.baa_id, vendor=ep.vendor)
        if ev.flags & abi.F_KILL and who is not None:
            CgroupTree.kill(who[2])
        for rec in expand(d, record_all=self.record_all):
            self._log_event(rec)

    def _pump(self) -> None:
        waiter = select.poll()
        waiter.register(self.maps.fds["events"], select.POLLIN)  # a ring buffer fd is pollable
        while not self._stop.is_set():
            waiter.poll(self._poll_ms)  # wait without holding the lock, so drain() never waits long
            with self._rb_lock:
                self._reader.poll(0)
            self.refresh_registry()
            if self._log is not None:
                with self._lock:
                    self._log.checkpoint_if_due(self._checkpoint_every_s)
                    self._log.flush()

    def poll_events(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
        """Events since the last call (waiting up to timeout_ms for the first one), as written to
        the event log."""
        out = []
        try:
            out.append(self._queue.get(timeout=timeout_ms / 1000) if timeout_ms > 0 else self._queue.get_nowait())
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def drain(self) -> list[dict[str, Any]]:
        """Read everything the kernel has produced so far (synchronously) and return it."""
        with self._rb_lock:
            self._reader.poll(0)
        return self.poll_events(0)

    def lost_events(self) -> int:
        """Events the kernel could not put into the full ring buffer (counted, never silent)."""
        v = self.maps.get("lost", ct.c_uint32(0), ct.c_uint64)
        return int(v.value) if v is not None else 0

    def lost_by(self) -> list[dict[str, Any]]:
        """What the lost events would have said: replica, kind, decision, reason, hook and how many
        (an attacker who floods a ring buffer hides which request, never that it happened)."""
        out = []
        for key in self.maps.keys("lost_by", abi.LostKey):
            n = self.maps.get("lost_by", key, ct.c_uint64)
            who = self._by_cgid.get(key.cgid)
            out.append({"agent": who[0] if who else None, "replica": who[1] if who else None, "cgid": key.cgid,
                        "kind": "fhir" if key.kind == abi.K_FHIR else "egress", "hook": abi.HOOKS[key.hook],
                        "decision": abi.DECISIONS[key.decision], "reason": abi.REASONS[key.reason],
                        "count": int(n.value) if n is not None else 0})
        return sorted(out, key=lambda d: (str(d["agent"]), d["replica"] or 0, d["kind"], d["reason"], d["hook"]))

    def counters(self) -> dict[str, dict[str, int]]:
        return km.counters(self.maps)

    # ------------------------------------------------------------------ lifecycle

    def _manifest_path(self) -> Path:
        return RUN_DIR / f"{self.name}.json"

    def _read_manifest(self) -> dict[str, Any] | None:
        if not kernel_load.pinned_state_exists(self.name):
            return None
        try:
            return json.loads(self._manifest_path().read_text())
        except (OSError, ValueError):
            return None

    def _write_manifest(self, rb_pages: int) -> None:
        rootdir.secure_dir(RUN_DIR)
        m = {"name": self.name, "clock": "real" if self.clock.real else "virtual", "k0": self.clock.k0,
             "compression": self.clock.compression, "start": self.start.isoformat(), "rb_pages": rb_pages,
             "policy": self.policy.computed_hash(), "pid": os.getpid()}
        self._manifest_path().write_text(json.dumps(m, indent=1) + "\n")

    def close(self, *, cleanup: bool = True) -> None:
        """Stop reading events.  cleanup=True removes everything (programs, pins, cgroups);
        cleanup=False leaves the kernel enforcing on its own (adopt it later with the same name)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=5)
        with self._rb_lock:
            self._reader.poll(0)
            self._reader.close()
        self._log_event({"event": "control-plane-stop", "cleanup": cleanup, "lost_events": self.lost_events()})
        if self._log is not None:
            if self._log.signed:
                self._log.checkpoint(final=True)
            self._log.flush(durable=True)
            self._log.close()
            self._log = None
        if cleanup:
            kernel_load.cleanup(self.name, self.tree.root)
            self._manifest_path().unlink(missing_ok=True)
        os.close(self._name_lock)  # the lock goes with it

    def __enter__(self) -> "KernelEnforcer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hold_name(name: str) -> int:
    """One control plane per name: an exclusive lock on /run/paritybed/<name>.lock, held while the
    control plane lives.  The kernel releases it when the holder dies, so a dead holder's pinned
    state is adopted by the next one; a live holder is named in the error (its pid and command),
    instead of the loader failing on pins that exist."""
    rootdir.secure_dir(RUN_DIR)
    fd = os.open(RUN_DIR / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            cmd = "?"
        raise EnvironmentProblem(f"another paritybed control plane holds the name {name!r}: pid {pid} ({cmd[:120]})",
                                 hint="give this one another name (--name), or stop that one; the state of a "
                                      "control plane that died is adopted by the next one of the same name") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def cleanup(name: str = "paritybed") -> list[str]:
    """Remove everything a (possibly dead) control plane left: programs, pins, cgroups."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("cleanup needs root")
    lock = hold_name(name)  # never under a control plane that is alive: it names itself instead
    try:
        root = CgroupTree(name).root
        done = kernel_load.cleanup(name, root)
        (RUN_DIR / f"{name}.json").unlink(missing_ok=True)
    finally:
        os.close(lock)
    return done
