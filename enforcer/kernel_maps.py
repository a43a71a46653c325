"""What the control plane writes into the kernel's maps: tables, the policy, the BAA registry.

Every writer computes the full wanted content of its maps, upserts it and deletes what is no
longer wanted, entry by entry: the programs keep running throughout and see either the old or
the new entry for any key (a BAA change takes effect at the next connect, no reload).
"""

from __future__ import annotations

import ctypes as ct
import datetime as dt
import functools
import os
from typing import Any

from paritybed.core.clock import Clock
from paritybed.core.errors import InputError
from paritybed.core.units import I64_MAX, NS_PER_S
from paritybed.enforcer import classify, kernel_abi as abi
from paritybed.enforcer.policy import AgentPolicy, Pair, Policy
from paritybed.enforcer.registry import Registry


class Maps:
    """Typed access to map fds (BCC's Python Table does not know every map type we use)."""

    def __init__(self, fds: dict[str, int]) -> None:
        from bcc import lib

        self.fds, self._lib = fds, lib

    def put(self, name: str, key: Any, value: Any) -> None:
        if self._lib.bpf_update_elem(self.fds[name], ct.byref(key), ct.byref(value), 0) != 0:
            raise OSError(ct.get_errno(), f"map {name}: update failed: {os.strerror(ct.get_errno())}")

    def get(self, name: str, key: Any, vtype: type) -> Any | None:
        v = vtype()
        return v if self._lib.bpf_lookup_elem(self.fds[name], ct.byref(key), ct.byref(v)) == 0 else None

    def delete(self, name: str, key: Any) -> None:
        self._lib.bpf_delete_elem(self.fds[name], ct.byref(key))

    def keys(self, name: str, ktype: type) -> list[Any]:
        out, cur, nxt = [], None, ktype()
        while self._lib.bpf_get_next_key(self.fds[name], ct.byref(cur) if cur is not None else None, ct.byref(nxt)) == 0:
            out.append(nxt)
            cur, nxt = nxt, ktype()
        return out

    def sync(self, name: str, ktype: type, wanted: dict[bytes, tuple[Any, Any]],
             owned: Any = lambda k: True) -> None:
        """Make the map hold exactly ``wanted`` (key bytes -> (key, value)) among the keys ``owned``."""
        for k, v in wanted.values():
            self.put(name, k, v)
        for k in self.keys(name, ktype):
            if bytes(k) not in wanted and owned(k):
                self.delete(name, k)


def load_tables(m: Maps) -> None:
    """The parser's fixed tables: character classes, names, the grammar's target sets and compartments."""
    m.put("ctab", ct.c_uint32(0), abi.CTab((ct.c_uint32 * 256)(*classify.char_classes())))
    m.put("ntab", ct.c_uint32(0), _name_table())
    m.put("tabs", ct.c_uint32(0), _tables())


@functools.lru_cache(maxsize=1)
def _name_table() -> abi.NTab:
    return abi.name_table()


@functools.lru_cache(maxsize=1)
def _tables() -> abi.Tables:
    return abi.tables()


def pairs_bits(pairs: list[Pair]) -> abi.Pairs:
    """(type, interaction) pairs as the kernel's bitmaps (a pair whose type is not an R4 type
    cannot match a request: the parser reports such a request as unknown-type)."""
    b = abi.Pairs()
    for pair in pairs:
        if pair.type in classify.TYPE_ID:
            tid = classify.TYPE_ID[pair.type]
            b.b[abi.INTERACTION_NAMES.index(pair.interaction)][tid >> 6] |= 1 << (tid & 63)
    return b


def agent_key(name: str) -> int:
    return classify.fnv1a64(name)


def lane_classes(p: AgentPolicy) -> dict[str, int]:
    """Lane class -> bit index (sorted names; at most 31 classes per agent)."""
    names = sorted(p.lanes)
    if len(names) > 31:
        raise InputError(f"an agent policy may name at most 31 break-glass lane classes, got {len(names)}")
    return {n: i for i, n in enumerate(names)}


def agent_entry(p: AgentPolicy, clock: Clock, where: str) -> abi.Agent:
    base = p.fhir.base.encode()
    if len(base) > classify.BASE_MAX:
        raise InputError(f"{where}.fhir.base: at most {classify.BASE_MAX} bytes for the kernel parser, got {p.fhir.base!r}")
    try:
        server = abi.parse_address(p.fhir.server)[0]
    except (ValueError, OSError) as e:
        raise InputError(f"{where}.fhir.server: {e}") from None
    a = abi.Agent()
    ct.memmove(a.server_addr, server[0], 16)
    a.server_port = abi.addr_key(*server).port
    a.mode = abi.MODES[p.response]
    a.base_len = len(base)
    a.allow_shapes = sum(1 << abi.SHAPE_NAMES.index(s) for s in p.fhir.allow_shapes)
    a.base_w[:] = classify.pack_words(base, 3)
    if p.rate is not None:
        a.interval = clock.duration(p.rate.interval_ns)
        a.tau = (p.rate.burst - 1) * a.interval
    a.hold = I64_MAX if p.quarantine_hold_s is None else clock.duration(p.quarantine_hold_s * NS_PER_S)
    a.allow = pairs_bits(p.fhir.allow)
    c = p.context
    if c is not None:  # clinical-context binding (docs/enforcement.md): the kernel's share of it
        a.bound = int(c.bound)
        a.unscoped = pairs_bits(c.unscoped)
        b = c.new_patient_budget
        if b is not None:
            a.np_interval = clock.duration(b.interval_ns)
            a.np_tau = (b.burst - 1) * a.np_interval
            a.np_window = clock.duration(b.window_ns)
    return a


def free_replica_entry(held: set[int]) -> int:
    """An entry of the replicas array no registered replica holds."""
    for i in range(abi.REPLICAS):
        if i not in held:
            return i
    raise InputError(f"at most {abi.REPLICAS} replicas for the kernel enforcer")


def agent_slots(m: Maps) -> dict[int, int]:
    """Agent key -> its slot in the agents array, as the maps hold them (the entries in force)."""
    out = {}
    for i in range(abi.AGENTS):
        live = m.get("agent_live", ct.c_uint32(i), ct.c_uint32)
        a = m.get("agents", ct.c_uint32(2 * i + (live.value & 1 if live else 0)), abi.Agent)
        if a is not None and a.key:
            out[a.key] = i
    return out


def _write_agent(m: Maps, slot: int, entry: abi.Agent) -> None:
    """A slot's new entry: written into the entry not in force, then put in force (one 4-byte
    store), so the kernel never reads a half-written policy (pb_agent_of)."""
    live = m.get("agent_live", ct.c_uint32(slot), ct.c_uint32)
    nxt = 1 - (live.value & 1 if live else 0)
    m.put("agents", ct.c_uint32(2 * slot + nxt), entry)
    m.put("agent_live", ct.c_uint32(slot), ct.c_uint32(nxt))


def load_policy(m: Maps, policy: Policy, clock: Clock, *, observe: bool = False) -> dict[str, int]:
    """Agents (with their fhir.allow pairs), the pairs of their lane classes, their egress
    envelopes, and the FHIR servers whose sockets sockops puts into the socket hash.  An agent
    keeps the slot it had in pinned maps (a control plane adopting them); a new one takes a slot
    no agent held, so a replica of a removed agent never reads another agent's policy.  Returns
    agent name -> slot (what its replicas' entries carry)."""
    agents, lanebits, env, servers = {}, {}, {}, {}
    for name, p in sorted(policy.agents.items()):
        if observe:
            p = p.model_copy(update={"response": "observe"})
        key = agent_key(name)
        a = agent_entry(p, clock, f"policy.agents.{name}")
        a.key = key
        agents[name] = a
        for cls, i in lane_classes(p).items():
            k = abi.ClassKey(key, i, 0)
            lanebits[bytes(k)] = (k, pairs_bits(p.lanes[cls].allow))
        for ep in p.egress:
            k = abi.EnvelopeKey(key, classify.fnv1a64(ep))
            env[bytes(k)] = (k, ct.c_uint8(1))
        for addr in abi.parse_address(p.fhir.server):
            k = abi.addr_key(*addr)
            servers[bytes(k)] = (k, ct.c_uint8(1))
    held = agent_slots(m)
    keys = {name: agent_key(name) for name in agents}
    for key, slot in held.items():
        if key not in keys.values():
            _write_agent(m, slot, abi.Agent())  # a removed agent: its slot is freed
    free = [i for i in range(abi.AGENTS) if i not in held.values()]
    if len([n for n in agents if keys[n] not in held]) > len(free):
        raise InputError(f"policy: at most {abi.AGENTS} agents for the kernel enforcer, got {len(agents)}")
    slots = {}
    for name, a in agents.items():
        slots[name] = held[keys[name]] if keys[name] in held else free.pop(0)
        _write_agent(m, slots[name], a)
    m.sync("lanebits", abi.ClassKey, lanebits)
    m.sync("envelope", abi.EnvelopeKey, env)
    m.sync("servers", abi.AddrKey, servers)
    return slots


def load_registry(m: Maps, reg: Registry, start: dt.datetime, clock: Clock) -> int:
    """The BAA registry by address (a host name: every address it resolves to).  Returns the
    number of addresses written."""
    wanted = {}
    for e in reg.endpoints:
        lo, hi = e.window_ns(start)
        try:
            addrs = abi.parse_address(e.address)
        except (ValueError, OSError) as err:
            raise InputError(f"BAA registry endpoint {e.name!r}: address {e.address!r}: {err}") from None
        for addr in addrs:
            k = abi.addr_key(*addr)
            wanted[bytes(k)] = (k, abi.Endpoint(classify.fnv1a64(e.name), clock.at(lo), clock.at(hi),
                                                int(e.status == "active"), 0))
    m.sync("registry", abi.AddrKey, wanted)
    return len(wanted)


def set_knobs(m: Maps, *, real_clock: bool | None = None, vnow: int | None = None, record_all: bool | None = None,
              registry_version: int | None = None) -> abi.Knobs:
    k = m.get("knobs", ct.c_uint32(0), abi.Knobs) or abi.Knobs()
    if real_clock is not None:
        k.real_clock = int(real_clock)
    if vnow is not None:
        k.vnow = vnow
    if record_all is not None:
        k.record_all = int(record_all)
    if registry_version is not None:
        k.registry_version = registry_version
    m.put("knobs", ct.c_uint32(0), k)
    return k


def counters(m: Maps) -> dict[str, dict[str, int]]:
    """Decisions counted in the kernel since the maps were created: {'fhir'|'egress': {reason: n}}."""
    out: dict[str, dict[str, int]] = {"fhir": {}, "egress": {}}
    arr = (ct.c_uint64 * _possible_cpus())()
    for kind, label in ((abi.K_FHIR, "fhir"), (abi.K_EGRESS, "egress")):
        for r, reason in enumerate(abi.REASONS[:16]):  # 16 slots per kind; codes 15+ are the control plane's
            if m._lib.bpf_lookup_elem(m.fds["counters"], ct.byref(ct.c_uint32(kind * 16 + r)), ct.byref(arr)) == 0:
                n = sum(arr)
                if n:
                    out[label][reason or "allowed"] = n
    return out


def _possible_cpus() -> int:
    """Per-CPU map values are sized by *possible* CPUs (e.g. '0-3')."""
    text = open("/sys/devices/system/cpu/possible", encoding="utf-8").read().strip()
    hi = max(int(part.split("-")[-1]) for part in text.split(","))
    return hi + 1
