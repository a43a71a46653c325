"""ctypes mirror of bpf/paritybed.h: map keys and values, the event record, and the codes.

The control plane writes maps and decodes ring-buffer records with these structures, and the
tests use them, so a layout change in the header fails tests/test_kernel_abi.py (which compiles
the header with offsetof/sizeof checks through BCC) instead of corrupting maps silently.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket

from paritybed.core.vocabulary import INTERACTIONS
from paritybed.enforcer import classify, grammar
from paritybed.enforcer.policy import SHAPES

#: Decisions (PB_ALLOW, PB_DENY, PB_ALERT): the value of a decision in events and in the engine.
ALLOW, DENY, ALERT = 0, 1, 2
DECISIONS = ("allow", "deny", "alert")

#: Reasons (R_* in bpf/paritybed.h): why a request or connect was decided so.  The names after
#: R_UNCLASSIFIABLE are the control plane's own (it decides lane activations; an agent without
#: a policy never reaches the kernel).  tests/test_kernel_abi.py holds the header to these values.
R_OK = 0  # allowed by the envelope
R_OBSERVE = 1  # observe mode: allowed and recorded
R_LANE = 2  # allowed under an open break-glass lane
R_TYPE = 3  # (type, interaction) not in the envelope
R_RATE = 4  # over the learned rate limit
R_NOT_BAA = 5  # egress to an endpoint no active BAA covers
R_NOT_ENVELOPE = 6  # egress to an endpoint outside the agent's envelope
R_QUARANTINED = 7  # the replica is quarantined (or killed)
R_LANE_EXPIRED = 8  # a lane's pair after the lane's expiry
R_UNCLASSIFIABLE = 9  # a request shape the policy does not allow
R_LANE_NOT_IN_ENVELOPE = 10  # lane activation refused: the policy has no lane of that class
R_LANE_OPENED = 11  # lane activation accepted
R_UNENFORCED = 12  # the agent has no policy
R_OUT_OF_CONTEXT = 13  # names a patient outside the replica's launch contexts (or unscoped, not learned)
R_NEW_PATIENT = 14  # an unbound agent over its new-patient budget
R_CONTEXT_OPENED = 15  # launch context activation accepted (control plane)
R_CONTEXT_NOT_IN_ENVELOPE = 16  # launch context refused: no context section, or max_open reached
REASONS = ("", "observe", "lane", "type-not-in-envelope", "rate-exceeded", "egress-not-in-BAA",
           "egress-not-in-envelope", "quarantined", "lane-expired", "unclassifiable", "lane-not-in-envelope",
           "lane-opened", "unenforced", "out-of-context", "new-patient-budget", "context-opened",
           "context-not-in-envelope")

#: C constants that the control plane needs (the rest are derived from Python tuples below)
MODES = {"observe": 0, "alert": 1, "deny": 2, "quarantine": 3, "kill": 4}  # M_*: response modes
K_FHIR, K_EGRESS = 0, 1
F_FIRST_CONTACT, F_QUARANTINE, F_KILL, F_CLAIM, F_CONTINUATION, F_DESYNC, F_REFUSED, F_CONTEXT = 1, 2, 4, 8, 16, 32, 64, 128
NM_PATIENT, NM_ENCOUNTER, NM_UNKNOWN = 1, 2, 4
HOOKS = ("connect4", "connect6", "sendmsg4", "sendmsg6", "sk_msg", "unseen", "socket", "sockopt", "inbound",
         "packet")
H_CONTENT_LENGTH, H_TRANSFER_ENCODING, H_OVERRIDE, H_CLAIM, H_CONTEXT, H_CONTENT_TYPE = 1, 2, 3, 4, 5, 6
PB_COUNTERS = 32
SHAPE_NAMES = ("plain",) + SHAPES
INTERACTION_NAMES = ("",) + INTERACTIONS
METHOD_NAMES = ("",) + classify.METHODS
TYPE_NAMES = ("",) + classify.R4_TYPES

u8, u16, u32, u64, s64 = ct.c_uint8, ct.c_uint16, ct.c_uint32, ct.c_uint64, ct.c_int64
Addr = u8 * 16


class Knobs(ct.Structure):
    _fields_ = [("real_clock", u64), ("vnow", s64), ("record_all", u64), ("registry_version", u64)]


class CTab(ct.Structure):
    _fields_ = [("c", u32 * 256)]


ALLOW_WORDS = 19  # PB_ALLOW_WORDS: bit type_id * 8 + interaction code


TW, NINTER, NTYPES = 3, 8, 147  # PB_TW, PB_INTER, PB_TYPES


class Pairs(ct.Structure):
    """A set of (type, interaction) pairs: per interaction code, a bitmap of type ids."""

    _fields_ = [("b", (u64 * TW) * NINTER)]


AGENTS = 256  # agent slots (PB_AGENTS); the agents array holds two entries per slot


class Agent(ct.Structure):
    _fields_ = [("key", u64), ("server_addr", Addr), ("server_port", u16), ("mode", u8), ("base_len", u8),
                ("allow_shapes", u32), ("bound", u8), ("pad", u8 * 7), ("base_w", u64 * 3), ("interval", s64),
                ("tau", s64), ("hold", s64), ("np_interval", s64), ("np_tau", s64), ("np_window", s64), ("allow", Pairs),
                ("unscoped", Pairs)]


REPLICAS = 4096  # entries of the replicas array (PB_REPLICAS)


class Replica(ct.Structure):
    _fields_ = [("agent", u64), ("tat", s64), ("q_until", s64), ("np_tat", s64), ("replica", u32), ("seen_n", u32),
                ("slot", u32), ("entry", u32), ("cgid", u64), ("rel_seen", u64)]


class ClassKey(ct.Structure):
    _fields_ = [("agent", u64), ("cls", u32), ("pad", u32)]


class CtxKey(ct.Structure):
    _fields_ = [("cgid", u64), ("ctx", u64)]


class Ctx(ct.Structure):
    _fields_ = [("patient", u64), ("encounter", u64), ("expiry", s64)]


class PatKey(ct.Structure):
    _fields_ = [("cgid", u64), ("patient", u64)]


class LaneKey(ct.Structure):
    _fields_ = [("cgid", u64), ("claim", u64)]


class Lane(ct.Structure):
    _fields_ = [("expiry", s64), ("cls", u32), ("pad", u32)]


class AddrKey(ct.Structure):
    _fields_ = [("addr", Addr), ("port", u16), ("pad", u16 * 3)]


class Endpoint(ct.Structure):
    _fields_ = [("name", u64), ("lo", s64), ("hi", s64), ("active", u32), ("pad", u32)]


class EnvelopeKey(ct.Structure):
    _fields_ = [("agent", u64), ("name", u64)]


NT_BITS, NT_PROBES = 13, 4  # PB_NT_BITS, PB_NT_PROBES
NT_TYPE, NT_PARAM, NT_HEADER, NT_MOD = 1, 2, 3, 4
PV_ABSENT = 31  # a type's entry for a parameter of every type it does not have (bpf/parser.h)
#: name-table contexts besides type ids: the base's query (HAPI's page links), a read's, a history's
CTX_SYSTEM, CTX_READ, CTX_HISTORY = 0xFFFF, 0xFFFE, 0xFFFD
NT_P = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD)


class Name(ct.Structure):
    _fields_ = [("w", u64 * 5), ("tab", u8), ("len", u8), ("val", u16), ("ctx", u16), ("pad", u16)]


class NTab(ct.Structure):
    _fields_ = [("mult", u64), ("e", Name * (1 << NT_BITS))]


TSETS = 128  # PB_TSETS
NARROW = 4  # PB_NARROW
NPAT = 4  # PB_NPAT: distinct patients an event names


class TSet(ct.Structure):
    _fields_ = [("bits", u64 * TW), ("n", u16), ("m", u16 * NARROW), ("pad", u16 * 3)]


class Tables(ct.Structure):
    _fields_ = [("tset", TSet * TSETS), ("comp", (u64 * TW) * NTYPES), ("modok", u16 * 32), ("patient", u16),
                ("encounter", u16), ("valueset", u16), ("pad", u16), ("debruijn", u8 * 64), ("hnames", u64)]


class Event(ct.Structure):
    _fields_ = [("t", s64), ("cgid", u64), ("claim", u64), ("until", s64), ("registry_version", u64),
                ("endpoint", u64), ("tr", u64 * TW), ("ts", u64 * TW), ("ctx", u64), ("pat", u64 * NPAT), ("enc", u64),
                ("addr", Addr), ("size", u32), ("port", u16), ("type_id", u16),
                ("kind", u8), ("hook", u8), ("decision", u8), ("reason", u8), ("shape", u8),
                ("interaction", u8), ("method", u8), ("flags", u8), ("out_type", u16), ("out_inter", u8),
                ("named", u8), ("sock_family", u16), ("sock_type", u16), ("sock_protocol", u32), ("npat", u8),
                ("nenc", u8), ("pad", u16)]


class PState(ct.Structure):
    """The parser's state while a message is parsed (bpf/parser.h; kernel-internal: mirrored for
    its size, which tests/test_kernel_abi.py checks)."""

    _fields_ = [("raw", u64 * 61)]


class LostKey(ct.Structure):
    """lost_by key: what a record the ring buffer had no room for would have said."""

    _fields_ = [("cgid", u64), ("kind", u8), ("decision", u8), ("reason", u8), ("hook", u8), ("pad", u32)]


class Sock(ct.Structure):
    """Per-socket storage: the connection's accounting by sequence number, and the parser state."""

    _fields_ = [("cookie", u64), ("cgid", u64), ("writer", u64), ("isn", u32), ("next_seq", u32),
                ("msg_start", u32), ("head_end", u32), ("body_end", u32), ("approved_end", u32), ("conn", u8),
                ("reported", u8), ("refused", u8), ("pad", u8), ("rslot", u32), ("ps", PState)]


#: sizes the C header must produce (checked by tests/test_kernel_abi.py)
STRUCTS = {"pb_knobs": Knobs, "pb_ctab": CTab, "pb_pairs": Pairs, "pb_agent": Agent, "pb_replica": Replica,
           "pb_class_key": ClassKey, "pb_lane_key": LaneKey, "pb_lane": Lane, "pb_ctx_key": CtxKey, "pb_ctx": Ctx,
           "pb_pat_key": PatKey, "pb_addr_key": AddrKey, "pb_endpoint": Endpoint, "pb_envelope_key": EnvelopeKey,
           "pb_name": Name, "pb_ntab": NTab, "pb_tset": TSet, "pb_tables": Tables, "pb_event": Event,
           "pb_sock": Sock}


def parse_address(text: str, *, resolve: bool = True) -> list[tuple[bytes, int]]:
    """'ip:port', '[ip6]:port' or 'host:port' -> [(16-byte address, port)], IPv4 mapped to ::ffff:.

    A host name resolves to every address it has (a connect to any of them is that endpoint)."""
    host, sep, port_s = text.rpartition(":")
    if not sep or not port_s.isdigit() or not (0 < int(port_s) < 65536):
        raise ValueError(f"expected host:port, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    port = int(port_s)
    try:
        return [(ipaddress.ip_address(host).packed if ":" in host else _v4(host), port)]
    except ValueError:
        if not resolve:
            raise
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out = []
    for fam, _, _, _, sa in infos:
        packed = _v4(sa[0]) if fam == socket.AF_INET else ipaddress.IPv6Address(sa[0].split("%")[0]).packed
        if (packed, port) not in out:
            out.append((packed, port))
    return out


def _v4(host: str) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(host).packed


def addr_key(packed: bytes, port: int) -> AddrKey:
    k = AddrKey()
    ct.memmove(k.addr, packed, 16)
    k.port = socket.htons(port)
    return k


def format_address(addr: bytes, port_n: int) -> str:
    """16-byte address + network-order port -> '127.0.0.21:9443' or '[::1]:443' (trace format)."""
    port = socket.ntohs(port_n)
    ip = ipaddress.IPv6Address(bytes(addr))
    return f"{ip.ipv4_mapped}:{port}" if ip.ipv4_mapped else f"[{ip}]:{port}"


def _name_hash(words: list[int], tab: int, length: int, ctx: int = 0) -> int:
    """The slot hash of bpf/paritybed.h (struct pb_ntab), before the multiplier."""
    m = 0xFFFFFFFFFFFFFFFF
    h = words[0]
    for w, p in zip(words[1:], NT_P):
        h ^= (w * p) & m
    return h ^ ((((ctx << 16) | (tab << 8) | length) * NT_P[4]) & m)


def table_names() -> list[tuple[int, int, str, int]]:
    """Every name the kernel parser looks up, as (table, context, name, value): resource types,
    the search parameters of each type (context: its type id) and of every type (context 0), the
    parameters of the base's, a read's and a history's query, modifiers, header names."""
    names = [(NT_TYPE, 0, n, tid) for n, tid in grammar.TYPE_ID.items()]
    common: dict[str, int] = {}
    for rtype, params in grammar.all_names().items():
        for code, p in params.items():
            val = grammar.KIND[p.kind] | (grammar.target_set_id(p.targets) << 5 if p.kind == "reference" else 0)
            if code.startswith("_") and code not in {c for c, q in r4spec_type_params(rtype).items()}:
                common[code] = val  # a parameter of every type: once, in context 0
            else:
                names.append((NT_PARAM, grammar.TYPE_ID[rtype], code, val))
    names += [(NT_PARAM, 0, code, val) for code, val in sorted(common.items())]
    for rtype, params in grammar.all_names().items():  # a type without one of them says so
        names += [(NT_PARAM, grammar.TYPE_ID[rtype], code, PV_ABSENT) for code in sorted(common) if code not in params]
    names += [(NT_PARAM, CTX_SYSTEM, n, 2 if n == "_getpages" else 1) for n in sorted(grammar.PAGING_PARAMS)]
    names += [(NT_PARAM, CTX_READ, n, 1) for n in sorted(grammar.READ_PARAMS)]
    names += [(NT_PARAM, CTX_HISTORY, n, 1) for n in sorted(grammar.HISTORY_PARAMS)]
    names += [(NT_MOD, 0, m, i) for m, i in grammar.MODIFIER_ID.items()]
    names += [(NT_HEADER, 0, n, k) for n, k in header_kinds().items()]
    return names


def r4spec_type_params(rtype: str) -> dict:
    from paritybed.core import r4spec

    return dict(r4spec.type_params(rtype))


def name_table() -> NTab:
    """The kernel's name table: an open table where every name is within NT_PROBES slots of the
    slot its hash picks (linear probing, inserted in a fixed order).  The multiplier is the first
    of a fixed sequence that achieves it, so the table is the same bytes on every load."""
    keyed = [(classify.pack_words(n.encode(), 5), tab, len(n), val, ctx) for tab, ctx, n, val in table_names()]
    hashes = [_name_hash(w, tab, ln, ctx) for w, tab, ln, _, ctx in keyed]
    size, shift, m = 1 << NT_BITS, 64 - NT_BITS, 0xFFFFFFFFFFFFFFFF
    for k in range(1, 1 << 12):
        mult = ((NT_P[0] * k) & m) | 1
        used: dict[int, int] = {}
        ok = True
        for i, h in enumerate(hashes):
            home = ((h * mult) & m) >> shift
            for p in range(NT_PROBES):
                if (home + p) % size not in used:
                    used[(home + p) % size] = i
                    break
            else:
                ok = False
                break
        if ok:
            break
    else:  # pragma: no cover - 8192 slots for ~2,000 names: a multiplier turns up within a few tries
        raise RuntimeError("no multiplier places every name within the kernel's probe limit")
    t = NTab()
    t.mult = mult
    for slot, i in used.items():
        w, tab, ln, val, ctx = keyed[i]
        t.e[slot] = Name((u64 * 5)(*w), tab, ln, val, ctx, 0)
    return t


def tables() -> Tables:
    """The grammar's other tables: target sets, compartments, modifiers by kind (enforcer/grammar.py)."""
    t = Tables()
    for i, targets in enumerate(grammar.target_sets()):
        if i >= TSETS:
            raise RuntimeError(f"more than {TSETS} target sets")
        ts = t.tset[i]
        for name in targets:
            tid = grammar.TYPE_ID[name]
            ts.bits[tid >> 6] |= 1 << (tid & 63)
        ts.n = len(targets)
        for j, name in enumerate(targets[:NARROW] if len(targets) <= NARROW else ()):
            ts.m[j] = grammar.TYPE_ID[name]
    for owner in grammar.TYPES:
        for member in grammar.TYPES:
            if grammar.compartment_member(owner, member):
                tid = grammar.TYPE_ID[member]
                t.comp[grammar.TYPE_ID[owner]][tid >> 6] |= 1 << (tid & 63)
    for kind, k in grammar.KIND.items():
        if k:
            probe = grammar.Param(kind)
            t.modok[k] = sum(1 << i for m, i in grammar.MODIFIER_ID.items() if grammar.modifier_ok(probe, m))
    t.patient, t.encounter, t.valueset = (grammar.TYPE_ID[x] for x in ("Patient", "Encounter", "ValueSet"))
    for i in range(64):  # de Bruijn: (1 << i) * B >> 58 is distinct for every i
        t.debruijn[(((1 << i) * 0x03F79D71B4CB0A89) & 0xFFFFFFFFFFFFFFFF) >> 58] = i
    for name in header_kinds():
        t.hnames |= 1 << header_filter_bit(name)
    return t


def header_filter_bit(name: str) -> int:
    """The bit of a (lower-case) header name in Tables.hnames, as pb_hname_maybe computes it from
    the parser's shift register (the name's last 8 bytes, first one most significant)."""
    raw = name.encode()
    return (((int.from_bytes(raw[-8:], "big") ^ len(raw)) * NT_P[0]) & 0xFFFFFFFFFFFFFFFF) >> 58


def header_kinds() -> dict[str, int]:
    kinds = {"content-length": H_CONTENT_LENGTH, "transfer-encoding": H_TRANSFER_ENCODING,
             classify.CLAIM_HEADER: H_CLAIM, classify.CONTEXT_HEADER: H_CONTEXT, "content-type": H_CONTENT_TYPE}
    kinds.update({h: H_OVERRIDE for h in classify.OVERRIDE_HEADERS})
    return kinds


#: what a refusal (F_REFUSED) refused, by hook; socket kinds and options by their names
_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 255: "raw", 262: "mptcp"}
#: refused socket options by (level, name)
_SOCKOPTS = {(6, 19): "TCP_REPAIR", (6, 30): "TCP_FASTOPEN_CONNECT", (6, 31): "TCP_ULP", (0, 4): "IP_OPTIONS",
             (0, 7): "IP_RETOPTS", (41, 3): "IPV6_2292HOPOPTS", (41, 4): "IPV6_2292DSTOPTS",
             (41, 5): "IPV6_2292RTHDR", (41, 6): "IPV6_2292PKTOPTIONS", (41, 54): "IPV6_HOPOPTS",
             (41, 55): "IPV6_RTHDRDSTOPTS", (41, 57): "IPV6_RTHDR", (41, 59): "IPV6_DSTOPTS"}
#: IPv6 next-header values a refused packet may carry
_EXT_HEADERS = {0: "hop-by-hop options", 43: "routing header", 44: "fragment header", 60: "destination options"}


def _refused(raw: Event, hook: str) -> str:
    if hook == "socket":
        try:
            fam, kind = socket.AddressFamily(raw.sock_family).name, socket.SocketKind(raw.sock_type & 0xF).name
        except ValueError:
            fam, kind = str(raw.sock_family), str(raw.sock_type)
        return f"socket {fam} {kind} {_PROTOCOLS.get(raw.sock_protocol, raw.sock_protocol)}"
    if hook == "sockopt":
        return f"setsockopt {_SOCKOPTS.get((raw.sock_type, raw.sock_protocol), f'{raw.sock_type}/{raw.sock_protocol}')}"
    if hook == "packet":
        if raw.sock_family == socket.AF_INET:
            return f"packet with IPv4 options (first option {raw.sock_protocol & 0xff})"
        nh = raw.sock_protocol
        return f"packet with an IPv6 {_EXT_HEADERS.get(nh, f'next header {nh}')}"
    return "fast-open" if hook in ("connect4", "connect6") else "not-connected"


def touches_of(raw: Event) -> list[str]:
    """Every (type, interaction) a FHIR record's request touches, as ``Type:interaction``: its
    primary pair first, then the other reads and searches of a plain request (the bitmaps), in
    the classifier's order (interaction code, then type id: classify._sorted_touches)."""
    if not raw.type_id:
        return []
    primary = f"{TYPE_NAMES[raw.type_id]}:{INTERACTION_NAMES[raw.interaction]}"
    out = [primary]
    for code, bits in ((INTERACTION_NAMES.index("read"), raw.tr), (INTERACTION_NAMES.index("search"), raw.ts)):
        for w in range(TW):
            x = bits[w]
            while x:
                low = x & -x
                t = w * 64 + low.bit_length() - 1
                x ^= low
                pair = f"{TYPE_NAMES[t]}:{INTERACTION_NAMES[code]}"
                if pair != primary:
                    out.append(pair)
    return out


def decode_event(raw: Event) -> dict:
    """A ring-buffer record -> the fields the control plane turns into event-log entries."""
    fhir = raw.kind == K_FHIR
    hook = HOOKS[raw.hook]
    d = {"t_ns": raw.t, "cgid": raw.cgid, "kind": "fhir" if fhir else "egress", "hook": hook,
         "decision": DECISIONS[raw.decision], "reason": REASONS[raw.reason], "flags": raw.flags}
    if fhir:
        d.update(method=METHOD_NAMES[raw.method], resource_type=TYPE_NAMES[raw.type_id],
                 interaction=INTERACTION_NAMES[raw.interaction], shape=SHAPE_NAMES[raw.shape], size=raw.size)
        if raw.flags & F_CLAIM:
            d["claim_hash"] = f"{raw.claim:016x}"
        d["touches"] = touches_of(raw)
        if raw.named & NM_PATIENT:  # the patients it names, by hash (the kernel keeps no ids; up to NPAT)
            d["named_patients"] = [f"{raw.pat[i]:016x}" for i in range(min(raw.npat, NPAT))]
            if raw.npat > NPAT:
                d["more_patients"] = True
        if raw.named & NM_ENCOUNTER:  # the first encounter it names (several: its hash, and a flag)
            d["named_encounters"] = [f"{raw.enc:016x}"]
            if raw.nenc > 1:
                d["more_encounters"] = True
        if raw.named & NM_UNKNOWN:
            d["unknown_patient"] = True
        if raw.flags & F_CONTEXT:
            d["context"] = f"{raw.ctx:016x}"
        if raw.reason == R_TYPE and raw.out_type:
            d["touch"] = f"{TYPE_NAMES[raw.out_type]}:{INTERACTION_NAMES[raw.out_inter]}"
    elif hook not in ("socket", "sockopt", "packet"):
        d.update(address=format_address(bytes(raw.addr), raw.port), registry_version=raw.registry_version,
                 endpoint_hash=raw.endpoint)
    if raw.flags & F_REFUSED:
        d["reason"] = "refused"
        d["refused"] = _refused(raw, hook)
    if raw.flags & F_DESYNC:
        d["desync"] = True
    if raw.flags & (F_QUARANTINE | F_KILL):
        d["until_ns"] = raw.until
    return d
