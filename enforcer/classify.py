"""What a request touches: the classifier of docs/enforcement.md, in Python (the kernel's twin).

The kernel program (bpf/paritybed.c, sk_msg) parses every HTTP request an agent writes to its
FHIR server with a state machine over its bytes; this module is the same grammar written for
people, and the property test (tests/test_kernel_classify.py) feeds generated requests through
both and requires the same answer for every one: the shape, the (type, interaction) pairs the
request touches, and the patients and encounters it names.  The tables the kernel needs
(character classes, names, target sets) are built from the same sources (here and
enforcer/grammar.py) and loaded into its maps.

``classify(raw, base)`` takes the bytes of one write on a fresh connection; ``Stream`` keeps the
per-connection state (a body that follows its header section in later writes).

Precedence when a request has several problems (the first that applies is its shape):
split / too-large (no complete head), malformed (syntax), method-override, chunked, length,
pipelined, then, reading the target and its parameters left to right, the first deviation
from the grammar.  Framing comes first so that allowing a target shape (say ``operation``)
never also admits a request whose framing could hide a second one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paritybed.core.vocabulary import INTERACTIONS
from paritybed.enforcer import grammar as G

#: a hop of a chain through several targets is narrowed to those that have the next parameter
#: when there are at most this many (docs/enforcement.md)
NARROW = 4
HDR_MAX = 16384  # a request head (request line, headers, CRLF CRLF) is at most this
BODY_MAX = 4096  # the form body of POST _search (it must arrive with its head)
TYPE_MAX, ID_MAX, CLAIM_MAX, BASE_MAX, NAME_MAX = 40, 64, 64, 24, 40
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD")  # codes 1.. (MT_* in bpf/paritybed.h)

R4_TYPES: tuple[str, ...] = G.TYPES
TYPE_ID = G.TYPE_ID  # 0 = no type

CLAIM_HEADER = "x-break-glass-claim"
CONTEXT_HEADER = "x-launch-context"
OVERRIDE_HEADERS = ("x-http-method-override", "x-method-override", "x-http-method")
FORM = b"application/x-www-form-urlencoded"
#: Shapes of framing: never allowed by a policy (docs/enforcement.md, decision step 5).
FRAMING = frozenset(("malformed", "split", "too-large", "pipelined", "chunked", "length", "method-override"))

_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
ID_CHARS = _ALNUM | frozenset(b"-.")
NAME_CHARS = _ALNUM | frozenset(b"_-")  # a parameter name (decoded), between ':' and '.'
CLAIM_CHARS = _ALNUM | frozenset(b"._:-")
OP_CHARS = _ALNUM | frozenset(b"_-")
TCHARS = _ALNUM | frozenset(b"!#$%&'*+-.^_`|~")
VCHARS = frozenset(range(0x21, 0x7F))
HVAL_CHARS = frozenset(range(0x20, 0x7F)) | {0x09} | frozenset(range(0x80, 0x100))
HEX = frozenset(b"0123456789abcdefABCDEF")
OWS = b" \t"

INTERACTION_CODE = {"": 0, **{s: i + 1 for i, s in enumerate(INTERACTIONS)}}
# forms of a target, and the interaction each method makes of them
_TYPE, _SEARCH, _ID, _HIST, _VREAD, _COMP = "type", "search", "id", "history", "vread", "compartment"
_GET_FORM = {_TYPE: "search", _SEARCH: "search", _ID: "read", _HIST: "history", _VREAD: "vread", _COMP: "search"}
_WRITE = {"POST": "create", "PUT": "update", "DELETE": "delete"}
_PLAIN = {("GET", _TYPE), ("GET", _SEARCH), ("GET", _ID), ("GET", _HIST), ("GET", _VREAD), ("GET", _COMP),
          ("HEAD", _TYPE), ("HEAD", _SEARCH), ("HEAD", _ID), ("HEAD", _HIST), ("HEAD", _VREAD), ("HEAD", _COMP),
          ("POST", _TYPE), ("POST", _SEARCH), ("PUT", _ID), ("DELETE", _ID)}
#: what may follow '?' in each form (None: any search parameter of the type)
_QUERY_OK = {_ID: G.READ_PARAMS, _VREAD: G.READ_PARAMS, _HIST: G.HISTORY_PARAMS}


@dataclass(frozen=True)
class Classification:
    """What one write is.

    ``shape``: ``plain`` or the unclassifiable family.  ``touches``: the (type, interaction)
    pairs the request touches, its primary pair (``resource_type``, ``interaction``) first, then
    the others by interaction and type; for a non-plain shape, those known before the deviation
    (``split``, ``too-large`` and ``malformed`` carry none).  ``patients``/``encounters``: the
    distinct ids it names, in order; ``unknown_patient``: it names a patient without an id (a
    search of Patient by name, a chain through a patient reference, an absolute reference...).
    ``body_left``: body bytes announced by Content-Length that will follow in later writes."""

    shape: str
    resource_type: str = ""
    interaction: str = ""
    method: str = ""
    claim: str | None = None
    context: str | None = None
    body_left: int = 0
    touches: tuple[tuple[str, str], ...] = ()
    patients: tuple[str, ...] = ()
    encounters: tuple[str, ...] = ()
    unknown_patient: bool = False

    @property
    def plain(self) -> bool:
        return self.shape == "plain"

    @property
    def names_any(self) -> bool:
        return bool(self.patients or self.encounters or self.unknown_patient)


def fnv1a64(data: bytes | str) -> int:
    """FNV-1a 64: claim, context, patient and encounter ids, agent and endpoint names are keyed
    by it in the kernel's maps."""
    if isinstance(data, str):
        data = data.encode()
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def pack_words(data: bytes, n: int) -> list[int]:
    """The kernel's shift register: the bytes as one big-endian number, cut into n u64 words
    (word 0 holds the last 8 bytes).  Used for exact name lookups without hashing."""
    v = int.from_bytes(data[-8 * n:], "big") if data else 0
    return [(v >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in range(n)]


def char_classes() -> list[int]:
    """The 256-entry class table the kernel parser reads (flags C_* of bpf/paritybed.h)."""
    sets = [frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), frozenset(b"abcdefghijklmnopqrstuvwxyz"),
            frozenset(b"0123456789"), ID_CHARS, HEX, NAME_CHARS, CLAIM_CHARS, OP_CHARS, TCHARS,
            VCHARS, HVAL_CHARS, frozenset(OWS), LETTERS]
    return [sum(1 << bit for bit, s in enumerate(sets) if c in s) for c in range(256)]


class Deviation(Exception):
    """The first place the request leaves the grammar: its shape."""

    def __init__(self, shape: str) -> None:
        super().__init__(shape)
        self.shape = shape


def _decode(raw: bytes, *, plus: bool) -> bytes:
    """Percent-decode exactly once (docs/enforcement.md): ``%25`` + two hex digits is a double
    encoding (``encoded``), ``%`` without two hex digits ``malformed``; ``+`` is a space in values."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            if i + 2 >= n or raw[i + 1] not in HEX or raw[i + 2] not in HEX:
                raise Deviation("malformed")
            b = int(raw[i + 1:i + 3], 16)
            if b == 0x25 and i + 4 < n and raw[i + 3] in HEX and raw[i + 4] in HEX:
                raise Deviation("encoded")
            out.append(b)
            i += 3
            continue
        if c == 0x23:  # '#': no fragment in a request target
            raise Deviation("malformed")
        out.append(0x20 if (c == 0x2B and plus) else c)
        i += 1
    return bytes(out)


def _valid_id(b: bytes) -> bool:
    return 1 <= len(b) <= ID_MAX and all(c in ID_CHARS for c in b) and b not in (b".", b"..")


@dataclass
class _Walk:
    """Left to right through the target and its parameters, collecting what the request touches
    and names; ``Deviation`` at the first place it leaves the grammar."""

    method: str
    rtype: str = ""
    form: str | None = None
    touched: set = field(default_factory=set)
    patients: list = field(default_factory=list)
    encounters: list = field(default_factory=list)
    unknown: bool = False

    def touch(self, t: str, inter: str) -> None:
        self.touched.add((t, inter))

    def name_patient(self, pid: bytes) -> None:
        s = pid.decode("latin-1")
        if s not in self.patients:
            self.patients.append(s)

    def name_encounter(self, eid: bytes) -> None:
        s = eid.decode("latin-1")
        if s not in self.encounters:
            self.encounters.append(s)

    # ------------------------------------------------------------------ the target
    def target(self, t: bytes, base: bytes) -> bytes | None:
        """Walk the path; the query (after '?') or None."""
        if not t.startswith(base):
            raise Deviation("not-fhir")
        rest = t[len(base):]
        path, q, query = rest.partition(b"?")
        query = query if q else None
        if path in (b"", b"/"):
            return self._system(query)
        if path[:1] != b"/":
            raise Deviation("not-fhir")
        segs = path[1:].split(b"/")
        s0 = segs[0]
        if s0[:1] == b"$":
            raise Deviation(_op(s0[1:]))
        if b"%" in s0:
            raise Deviation("encoded")
        if s0 in (b"_history", b"_search"):
            raise Deviation("bundle" if self.method == "POST" and s0 == b"_search" else "type-param")
        if not s0 or s0[0] not in LETTERS:
            raise Deviation("malformed")
        name = s0.decode("latin-1")
        if any(c not in LETTERS for c in s0) or len(s0) > TYPE_MAX or name not in TYPE_ID:
            raise Deviation("unknown-type")
        self.rtype, self.form = name, _TYPE
        if len(segs) == 1:
            return query
        s1 = segs[1]
        if s1[:1] == b"$":
            raise Deviation(_op(s1[1:]))
        if b"%" in s1:
            raise Deviation("encoded")
        if s1 in (b"_search", b"_history"):
            self.form = _SEARCH if s1 == b"_search" else _HIST
            if len(segs) > 2:
                raise Deviation("malformed")
            return query
        if not _valid_id(s1):
            raise Deviation("malformed")
        self.form = _ID
        self._name_target(self.rtype, s1)
        if len(segs) == 2:
            return query
        s2 = segs[2]
        if s2[:1] == b"$":
            raise Deviation(_op(s2[1:]))
        if b"%" in s2:
            raise Deviation("encoded")
        if s2 == b"_history":
            self.form = _HIST
            if len(segs) == 3:
                return query
            if b"%" in segs[3]:
                raise Deviation("encoded")
            if len(segs) > 4 or not _valid_id(segs[3]):
                raise Deviation("malformed")
            self.form = _VREAD
            return query
        if s2 == b"*":
            raise Deviation("compartment")
        if not s2 or s2[0] not in LETTERS:
            raise Deviation("malformed")
        member = s2.decode("latin-1")
        if any(c not in LETTERS for c in s2) or member not in TYPE_ID or not G.compartment_member(self.rtype, member):
            raise Deviation("compartment")
        if len(segs) > 3:
            raise Deviation("compartment")
        self.rtype, self.form = member, _COMP  # a search of the member type in the compartment
        return query

    def _system(self, query: bytes | None) -> None:
        """The base itself: a bundle (POST), HAPI's page links (paging), or a system search."""
        if self.method == "POST":
            raise Deviation("bundle")
        if query is None:
            raise Deviation("type-param")
        names = []
        for pair in query.split(b"&"):
            name, eq, value = pair.partition(b"=")
            if not eq or not name:
                raise Deviation("malformed")
            names.append(_check_name(_decode(name, plus=False)))
            _decode(value, plus=True)
        if self.method in ("GET", "HEAD") and "_getpages" in names and all(n in G.PAGING_PARAMS for n in names):
            raise Deviation("paging")
        raise Deviation("type-param")

    def _name_target(self, rtype: str, rid: bytes) -> None:
        if rtype == "Patient":
            self.name_patient(rid)
        elif rtype == "Encounter":
            self.name_encounter(rid)

    # ------------------------------------------------------------------ parameters
    def params(self, query: bytes) -> None:
        """The query (or form body) of a search, or the query a read/history may carry."""
        allowed = _QUERY_OK.get(self.form or "")
        for pair in query.split(b"&"):
            raw_name, eq, raw_value = pair.partition(b"=")
            if not eq or not raw_name:
                raise Deviation("malformed")
            name = _check_name(_decode(raw_name, plus=False))
            value = _decode(raw_value, plus=True)
            if allowed is not None:
                if name not in allowed:
                    raise Deviation("param")
                continue
            self._param(name, value)

    def _param(self, name: str, value: bytes) -> None:
        if name == "_has" or name.startswith("_has:") or name.startswith("_has."):
            return self._has(name)
        hops = _hops(name)  # [(name, modifier or None)], one per hop of a chain
        first, mod = hops[0]
        p = G.param(self.rtype, first)
        if p is None:
            raise Deviation("param")
        if p.kind in ("include", "revinclude"):
            if len(hops) > 1 or mod not in (None, "iterate", "recurse"):
                raise Deviation("include")
            return self._include(p.kind, value)
        if p.kind == "type":
            raise Deviation("type-param")
        if p.kind in ("opaque", "contained", "result"):
            if mod is not None or len(hops) > 1:
                raise Deviation("param")
            if p.kind == "opaque" or (p.kind == "contained" and value != b"false"):
                raise Deviation("special")
            return
        if len(hops) > 1:
            return self._chain(hops)
        narrowed = self._modifier(p, mod)
        self._names(first, p, mod or "", narrowed, value)

    def _modifier(self, p: G.Param, mod: str | None) -> tuple[str, ...]:
        """A modifier of an ordinary parameter (checked); the targets a reference is narrowed to."""
        if mod is None:
            return p.targets
        if mod in TYPE_ID:
            if p.kind != "reference" or mod not in p.targets:
                raise Deviation("param")
            return (mod,)
        if mod not in G.MODIFIER_ID or mod in ("iterate", "recurse") or not G.modifier_ok(p, mod):
            raise Deviation("param")
        if mod in ("in", "not-in"):
            self.touch("ValueSet", "read")
        return p.targets

    def _chain(self, hops: list[tuple[str, str | None]]) -> None:
        """p1[:X1].p2[:X2]...pn[:mod] (docs/enforcement.md): each hop a reference parameter of the
        current type; its targets (X, or those of the parameter; of up to NARROW of them, those
        that have the next hop's parameter, as a server searches) are touched (search); one
        target is the next hop's type; several end the chain at the last hop, else ``chained``."""
        cur = self.rtype
        for i, (name, mod) in enumerate(hops[:-1]):
            p = G.param(cur, name)
            if p is None or p.kind != "reference":
                raise Deviation("param")
            if mod is not None:
                targets = self._modifier(p, mod)
                if len(targets) != 1:
                    raise Deviation("param")  # a modifier on a hop names its type
            else:
                targets = p.targets
            last = i == len(hops) - 2
            if len(targets) > 1 and len(targets) <= NARROW:
                nxt = hops[i + 1][0]
                kinds = _ORDINARY if last else ("reference",)
                targets = tuple(t for t in targets if (q := G.param(t, nxt)) is not None and q.kind in kinds)
                if not targets:
                    raise Deviation("param")
            for t in targets:
                self.touch(t, "search")
            if "Patient" in targets or "Encounter" in targets:
                self.unknown = True  # patients named by their data, not by id
            if len(targets) != 1:
                if not last:
                    raise Deviation("chained")  # a further hop through several types
                return  # the last parameter is not resolved across several types
            cur = targets[0]
        name, mod = hops[-1]
        p = G.param(cur, name)
        if p is None or p.kind not in _ORDINARY:
            raise Deviation("param")
        self._modifier(p, mod)

    def _has(self, name: str) -> None:
        """_has:T1:r1:(_has:T2:r2:)*p[:mod]: each Ti touched (search)."""
        if "." in name:
            raise Deviation("has")
        segs = name.split(":")
        if any(not x or len(x) > NAME_MAX for x in segs):
            raise Deviation("malformed")
        i, cur = 0, self.rtype
        while i < len(segs) and segs[i] == "_has":
            if i + 3 >= len(segs):
                raise Deviation("malformed")  # _has:T:r needs a parameter after it
            t = segs[i + 1]
            if t not in TYPE_ID:
                raise Deviation("has")
            self.touch(t, "search")
            rp = G.param(t, segs[i + 2])
            if rp is None or rp.kind != "reference":
                raise Deviation("param")
            cur, i = t, i + 3
        if len(segs) - i > 2:
            raise Deviation("malformed")
        final = G.param(cur, segs[i])
        if final is None or final.kind not in _ORDINARY:
            raise Deviation("param")
        self._modifier(final, segs[i + 1] if i + 1 < len(segs) else None)

    def _include(self, kind: str, value: bytes) -> None:
        """_include=S:p[:X] -> (X or each target of S.p, read); _revinclude -> (S, search)."""
        segs = value.split(b":")
        if len(segs) not in (2, 3) or b"*" in segs:
            raise Deviation("include")
        s = segs[0].decode("latin-1")
        if s not in TYPE_ID:
            raise Deviation("include")
        p = G.param(s, segs[1].decode("latin-1"))
        if p is None or p.kind != "reference":
            raise Deviation("include")
        targets = p.targets
        if len(segs) == 3:
            x = segs[2].decode("latin-1")
            if x not in targets:
                raise Deviation("include")
            targets = (x,)
        if kind == "revinclude":
            self.touch(s, "search")
        else:
            for t in targets:
                self.touch(t, "read")

    def _names(self, name: str, p: G.Param, mod: str, targets: tuple[str, ...], value: bytes) -> None:
        """Patients and encounters an ordinary parameter names (docs/enforcement.md)."""
        if name == "_id" and self.rtype in ("Patient", "Encounter"):
            for item in value.split(b","):
                if item:
                    if _valid_id(item):
                        self._name_target(self.rtype, item)
                    else:
                        self.unknown = True
            return
        if p.kind != "reference" or not (p.names_patient or p.names_encounter):
            return
        if mod == "missing":
            return
        if mod in ("identifier", "above", "below"):
            self.unknown = self.unknown or p.names_patient
            return
        if mod and mod not in ("Patient", "Encounter"):
            return  # narrowed to another type: names neither
        implied = mod or ("Patient" if p.names_patient else "Encounter")
        for item in value.split(b","):
            if not item:
                continue
            if b":" in item or item.count(b"/") > 1:
                self.unknown = True
                continue
            kind, slash, rid = item.rpartition(b"/")
            t = kind.decode("latin-1") if slash else implied
            if slash and mod and t != mod:
                self.unknown = True
                continue
            if t not in ("Patient", "Encounter"):
                continue
            if not _valid_id(rid):
                self.unknown = True
            elif t == "Patient":
                self.name_patient(rid)
            else:
                self.name_encounter(rid)


_ORDINARY = frozenset(("number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special-type"))


def _check_name(b: bytes) -> str:
    """A decoded parameter name: [A-Za-z0-9_-] segments joined by ':' and '.'."""
    if not b or any(c not in NAME_CHARS and c not in b":." for c in b):
        raise Deviation("malformed")
    return b.decode("latin-1")


def _hops(name: str) -> list[tuple[str, str | None]]:
    """'a:X.b.c:mod' -> [('a', 'X'), ('b', None), ('c', 'mod')]: the hops of a chain, each a
    parameter name and its modifier (None: no ':'); empty or over-long parts are malformed."""
    out = []
    for hop in name.split("."):
        base, colon, mod = hop.partition(":")
        if not base or len(base) > NAME_MAX or (colon and (not mod or ":" in mod or len(mod) > NAME_MAX)):
            raise Deviation("malformed")
        out.append((base, mod if colon else None))
    return out


def _op(name: bytes) -> str:
    """An operation segment ($name): graphql gets its own family."""
    if b"%" in name:
        return "encoded"
    if not name or any(c not in OP_CHARS for c in name):
        return "malformed"
    return "graphql" if name.lower() == b"graphql" else "operation"


def _headers(lines: list[bytes]) -> tuple[bool, dict]:
    """Header lines -> (syntax ok, facts)."""
    f = {"n_cl": 0, "cl_bad": False, "cl": 0, "te": False, "override": False, "claims": [], "claim_bad": False,
         "contexts": [], "context_bad": False, "n_ct": 0, "form": False}
    for line in lines:
        k = line.find(b":")
        if k <= 0 or any(c not in TCHARS for c in line[:k]) or any(c not in HVAL_CHARS for c in line[k + 1:]):
            return False, f
        name, value = line[:k].lower().decode(), line[k + 1:].strip(OWS)
        if name == "content-length":
            f["n_cl"] += 1
            if 1 <= len(value) <= 9 and value.isdigit():
                f["cl"] = int(value)
            else:
                f["cl_bad"] = True
        elif name == "transfer-encoding":
            f["te"] = True
        elif name in OVERRIDE_HEADERS:
            f["override"] = True
        elif name in (CLAIM_HEADER, CONTEXT_HEADER):
            key = "claims" if name == CLAIM_HEADER else "contexts"
            f[key].append(value.decode("latin-1"))
            bad = not (1 <= len(value) <= CLAIM_MAX and all(c in CLAIM_CHARS for c in value))
            f["claim_bad" if name == CLAIM_HEADER else "context_bad"] |= bad
        elif name == "content-type":
            f["n_ct"] += 1
            low = value.lower()
            f["form"] = low == FORM or (low.startswith(FORM) and low[len(FORM)] in b"; \t")
    return True, f


def _sorted_touches(primary: tuple[str, str] | None, touched: set) -> tuple[tuple[str, str], ...]:
    rest = sorted(touched - {primary}, key=lambda p: (INTERACTION_CODE[p[1]], TYPE_ID[p[0]]))
    return ((primary,) if primary else ()) + tuple(rest)


def classify(raw: bytes, base: str = "/fhir") -> Classification:
    """Classify one write (the first on its connection, or one after a complete request)."""
    end = raw.find(b"\r\n\r\n", 0, HDR_MAX)
    if end < 0:
        return Classification("too-large" if len(raw) >= HDR_MAX else "split")
    head_end = end + 4
    lines = raw[:end].split(b"\r\n")
    bad = any(b"\r" in x or b"\n" in x for x in lines)
    parts = lines[0].split(b" ")
    if bad or len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1] or any(c not in VCHARS for c in parts[1]):
        return Classification("malformed")
    method = parts[0].decode("latin-1")
    ok, h = _headers(lines[1:])
    if (method not in METHODS or not ok or h["claim_bad"] or len(h["claims"]) > 1 or h["context_bad"]
            or len(h["contexts"]) > 1):
        return Classification("malformed")
    claim = h["claims"][0] if h["claims"] else None
    context = h["contexts"][0] if h["contexts"] else None
    cl = h["cl"] if h["n_cl"] == 1 and not h["cl_bad"] else 0
    rest = len(raw) - head_end
    framing = ("method-override" if h["override"] else "chunked" if h["te"] else
               "length" if (h["n_cl"] > 1 or h["cl_bad"] or (method in ("POST", "PUT") and h["n_cl"] == 0)
                            or (method in ("GET", "HEAD", "DELETE") and cl != 0)) else
               "pipelined" if rest > cl else "")
    w = _Walk(method)
    shape = framing or "plain"
    try:
        query = w.target(parts[1], base.encode())
        if (method, w.form) not in _PLAIN:
            raise Deviation("malformed")
        if query is not None and (method in ("PUT", "DELETE") or (method == "POST" and w.form == _TYPE)):
            raise Deviation("param")
        if query is not None:
            w.params(query)
        if framing:
            raise Deviation(framing)  # the target was walked for its labels only
        if method == "POST" and w.form == _SEARCH:
            if h["n_ct"] != 1 or not h["form"]:
                raise Deviation("malformed")
            if rest < cl:
                raise Deviation("split")
            if cl > BODY_MAX:
                raise Deviation("too-large")
            if cl:
                w.params(raw[head_end:head_end + cl])
        if w.form in (_TYPE, _SEARCH, _COMP) and method != "POST" or (method == "POST" and w.form == _SEARCH):
            if w.rtype in ("Patient", "Encounter") and not w.patients and not w.encounters:
                w.unknown = True  # a search of patients or encounters that names none: a sweep
    except Deviation as d:
        shape = framing or d.shape
    if shape == "malformed" or (shape in ("split", "too-large") and w.form is None):
        return Classification(shape, method=method, claim=claim, context=context)
    rtype = w.rtype
    inter = "" if not rtype else _GET_FORM[w.form] if method in ("GET", "HEAD") else \
        ("search" if w.form == _SEARCH else _WRITE[method])
    primary = (rtype, inter) if rtype and inter else None
    plain = shape == "plain"
    body_left = max(cl - rest, 0) if not (method == "POST" and w.form == _SEARCH) else 0
    return Classification(shape, rtype, inter, method, claim, context, body_left,
                          _sorted_touches(primary, w.touched),
                          tuple(w.patients), tuple(w.encounters), w.unknown or not plain)


class Stream:
    """Per-socket classification: a body announced by Content-Length may follow in later writes.

    ``feed`` returns the classification of a write, or None for a write that only carries body
    bytes still expected (passed without a decision).  ``commit(c)`` records that the request
    was allowed (only then are its remaining body bytes expected).  A write that brings more
    than the expected body is ``pipelined``; if it is denied the expectation stays, so the
    kernel and the server never disagree on where the next request starts."""

    def __init__(self, base: str = "/fhir") -> None:
        self.base = base
        self.body_left = 0
        self._pending: int | None = None  # body bytes to expect if the last decision allows

    def feed(self, write: bytes) -> Classification | None:
        if self.body_left:
            if len(write) <= self.body_left:
                self.body_left -= len(write)
                self._pending = None
                return None
            self._pending = 0  # allowed anyway (alert/observe): the kernel stops tracking the body
            return Classification("pipelined")
        c = classify(write, self.base)
        self._pending = c.body_left
        return c

    def commit(self, allowed: bool) -> None:
        if allowed and self._pending is not None:
            self.body_left = self._pending
        self._pending = None


def request_bytes(method: str, target: str, *, host: str = "fhir", claim: str | None = None,
                  body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """A plain HTTP/1.1 request as the mock agents send it (one write)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if claim:
        lines.append(f"X-Break-Glass-Claim: {claim}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
