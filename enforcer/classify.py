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
from paritybed.enforcer import params as P

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
#: headers that change what the request does, whatever its request line says: a method override;
#: If-None-Exist (a conditional create: its value is a search the server runs, so a create-only
#: envelope would answer searches, 200 for one match and 201 for none); X-Cascade (HAPI: a delete
#: that deletes whatever references its target).  Framing shape `method-override`, never allowed.
OVERRIDE_HEADERS = ("x-http-method-override", "x-method-override", "x-http-method", "if-none-exist", "x-cascade")
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
    the others by interaction and type; for a non-plain shape its primary pair only (what the
    shape hides is what a policy allowing it admits; ``split``, ``too-large`` and ``malformed``
    carry none, and a non-plain request names an unknown patient).  ``patients``/``encounters``: the
    distinct ids it names, in order; ``unknown_patient``: it names a patient without an id (a
    search of Patient by name, a chain through a patient reference, an absolute reference...).
    ``body_left``: body bytes announced by Content-Length that will follow in later writes.
    ``hold``: a ``POST _search`` head whose form body (at most ``BODY_MAX`` bytes) is not all in
    this write: the bytes head and body take; the head is held until they are all written, and
    the request is classified whole (``Stream``; the kernel corks the message)."""

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
    hold: int = 0

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


Deviation = P.Stop  # the first place the request leaves the grammar: its shape

_valid_id = P.valid_id


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
        _segment(s0)
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
        _segment(s1)
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
        _segment(s2)
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
        found = P.Found()
        P.Params("", P.SYSTEM, found).read(query)
        if self.method in ("GET", "HEAD") and found.paging and found.getpages:
            raise Deviation("paging")
        raise Deviation("type-param")

    def _name_target(self, rtype: str, rid: bytes) -> None:
        if rtype == "Patient":
            self.name_patient(rid)
        elif rtype == "Encounter":
            self.name_encounter(rid)

    # ------------------------------------------------------------------ parameters
    def params(self, query: bytes) -> None:
        """The query (or form body) of a search, or the query a read or a history may carry."""
        mode = {_ID: P.READ, _VREAD: P.READ, _HIST: P.HISTORY}.get(self.form or "", P.SEARCH)
        found = P.Found()
        try:
            P.Params(self.rtype, mode, found).read(query)
        finally:  # what was found before a problem is kept (the labels of a non-plain request)
            self.touched |= found.touched
            for pid in found.patients:
                self.name_patient(pid.encode("latin-1"))
            for eid in found.encounters:
                self.name_encounter(eid.encode("latin-1"))
            self.unknown |= found.unknown


def _segment(seg: bytes) -> None:
    """A path segment is an operation (the rest of the target is not looked at) or, encoded, not
    read at all (docs/enforcement.md: `%` in the path is `encoded`)."""
    if seg[:1] == b"$":
        raise Deviation(_op(seg[1:]))
    if b"%" in seg:
        raise Deviation("encoded")


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
    hold = 0
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
                hold = head_end + cl if cl <= BODY_MAX else 0  # its form body follows: held until it is here
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
    if not plain:  # what a non-plain request hides is what a policy that allows its shape admits
        return Classification(shape, rtype, inter, method, claim, context, body_left,
                              (primary,) if primary else (), unknown_patient=True, hold=hold)
    return Classification(shape, rtype, inter, method, claim, context, body_left,
                          _sorted_touches(primary, w.touched), tuple(w.patients), tuple(w.encounters), w.unknown)


class Stream:
    """Per-socket classification: a body announced by Content-Length may follow in later writes.

    ``feed`` returns the classification of a write, or None for a write that only carries body
    bytes still expected (passed without a decision) or that is held (a ``POST _search`` head
    waiting for its form body, ``Classification.hold``: the write that completes it is classified
    with the held bytes, as one request).  ``commit(c)`` records that the request
    was allowed (only then are its remaining body bytes expected).  A write that brings more
    than the expected body is ``pipelined``; if it is denied the expectation stays, so the
    kernel and the server never disagree on where the next request starts."""

    def __init__(self, base: str = "/fhir") -> None:
        self.base = base
        self.body_left = 0
        self._pending: int | None = None  # body bytes to expect if the last decision allows
        self._held = b""  # a head waiting for its form body, and the bytes they take together
        self._need = 0

    def feed(self, write: bytes) -> Classification | None:
        if self._held:
            write, self._held = self._held + write, b""
            if len(write) < self._need:
                self._held = write
                return None
            return self._decide(classify(write, self.base))
        if self.body_left:
            if len(write) <= self.body_left:
                self.body_left -= len(write)
                self._pending = None
                return None
            self._pending = 0  # allowed anyway (alert/observe): the kernel stops tracking the body
            return Classification("pipelined")
        c = classify(write, self.base)
        if c.hold:
            self._held, self._need, self._pending = write, c.hold, None
            return None
        return self._decide(c)

    def _decide(self, c: Classification) -> Classification:
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
