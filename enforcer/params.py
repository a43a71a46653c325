"""Search parameters, read byte by byte: what a query (or a POST _search form) touches and names.

A state machine over the raw bytes, left to right, written the way the kernel parser
(bpf/parser.h) runs it, so that the two agree on every input by construction and the
property test (tests/test_kernel_classify.py) can hold them to it.  The grammar is
docs/enforcement.md, "Search parameters"; its tables come from enforcer/grammar.py.

Two kinds of problems, and their order:

* **syntax** (an escape that is not ``%`` + two hex digits, a raw ``#``, a byte that cannot be
  in a name, an empty or over-long name segment, two modifiers on one hop, a ``_has`` that does
  not have its parts, a ``.`` inside ``_has``, a double encoding): the first one met ends the
  walk; its shape is the request's.
* **meaning** (a name the type does not have, a modifier that does not apply, an include that
  cannot be bounded...): the first one in a parameter is kept *pending* while the rest of that
  parameter is read, because a syntax problem later in the same parameter comes first; at the
  parameter's end a pending problem ends the walk.

So the request's shape is its first problem reading left to right, a parameter's syntax before
its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paritybed.enforcer import grammar as G

NAME_MAX = 40
ID_MAX = 64
NARROW = 4
HEX = frozenset(b"0123456789abcdefABCDEF")
NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")
ORDINARY = frozenset(("number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special-type"))

# what the parameters are read for
SEARCH, READ, HISTORY, SYSTEM = "search", "read", "history", "system"
# segment states of a name
FIRST, HNAME, HMOD, HAS_T, HAS_R, HAS_NEXT, HAS_MOD = range(7)


class Stop(Exception):
    """The walk ends here with this shape."""

    def __init__(self, shape: str) -> None:
        super().__init__(shape)
        self.shape = shape


def valid_id(b: bytes) -> bool:
    return 1 <= len(b) <= ID_MAX and all(c in ID_CHARS for c in b) and b not in (b".", b"..")


@dataclass
class Found:
    """What the parameters touch and name (added to the target's own)."""

    touched: set = field(default_factory=set)
    patients: list = field(default_factory=list)
    encounters: list = field(default_factory=list)
    unknown: bool = False
    paging: bool = True  # SYSTEM: every name is one of HAPI's page-link parameters...
    getpages: bool = False  # ...and _getpages is there

    def patient(self, pid: bytes) -> None:
        s = pid.decode("latin-1")
        if s not in self.patients:
            self.patients.append(s)

    def encounter(self, eid: bytes) -> None:
        s = eid.decode("latin-1")
        if s not in self.encounters:
            self.encounters.append(s)


class Params:
    """One query or form, for a search of ``rtype`` (or a read, a history, the base)."""

    def __init__(self, rtype: str, mode: str, found: Found) -> None:
        self.rtype, self.mode, self.f = rtype, mode, found

    # ------------------------------------------------------------------ bytes
    def read(self, raw: bytes) -> None:
        """Every pair of the query; Stop at the first problem."""
        self._new_pair()
        i, n = 0, len(raw)
        while i < n:
            c = raw[i]
            if c == 0x25:  # '%': an escape, two hex digits follow
                if i + 2 >= n or raw[i + 1] not in HEX or raw[i + 2] not in HEX:
                    raise Stop("malformed")
                self._raw_seen(c)
                self._decoded(int(raw[i + 1:i + 3], 16), escaped=True)
                i += 3
                continue
            self._raw_seen(c)
            if c == 0x23:  # '#'
                raise Stop("malformed")
            if self.in_name:
                if c == 0x3D:  # '='
                    self._segment_end(ord("="))
                    self.in_name = False
                elif c == 0x26:  # '&' before '='
                    raise Stop("malformed")
                else:
                    self._decoded(c, escaped=False)
            elif c == 0x26:  # '&': the pair ends
                self._pair_end()
                self._new_pair()
            else:
                self._decoded(0x20 if c == 0x2B else c, escaped=False)
            i += 1
        self._pair_end()

    def _raw_seen(self, c: int) -> None:
        """A double encoding: an escape decoding to '%' followed by two raw hex digits."""
        if self.p25 == 1:
            self.p25 = 2 if c in HEX else 0
        elif self.p25 == 2:
            if c in HEX:
                raise Stop("encoded")
            self.p25 = 0

    def _decoded(self, d: int, *, escaped: bool) -> None:
        if self.in_name:
            if d == 0x25:
                raise Stop("encoded")  # a name never holds '%': an encoded escape
            if d in (0x3A, 0x2E):  # ':' '.'
                self._segment_end(d)
            elif d in NAME_CHARS:
                if len(self.seg) >= NAME_MAX:
                    raise Stop("malformed")
                self.seg.append(d)
            else:
                raise Stop("malformed")
        else:
            if escaped and d == 0x25:
                self.p25 = 1
            self._value_byte(d)

    # ------------------------------------------------------------------ a pair
    def _new_pair(self) -> None:
        self.in_name = True
        self.seg = bytearray()
        self.state = FIRST
        self.pend: str | None = None
        self.p25 = 0
        self.first = ""  # the first segment
        self.p: G.Param | None = None  # the current hop's parameter
        self.hop = 0
        self.cur = self.rtype  # the type names are resolved on
        self.cands: tuple[str, ...] = ()  # a hop through 2..NARROW targets, not yet narrowed
        self.masks: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (any, reference) of the next hop
        self.hname = ""  # the current hop's name
        self.multi = False  # a hop through several targets: the next hop is the last
        self.vmode = "skip"
        self.vtype = ""  # NAMES: the type a bare id names
        self.vexplicit = False  # ...given by a modifier (subject:Patient=), which a Type/ prefix must match
        self.item = bytearray()  # NAMES: the current item; INCLUDE/CONTAINED: the value so far
        self.segs: list[bytes] = []  # INCLUDE: segments before the current one

    def _pending(self, shape: str) -> None:
        if self.pend is None:
            self.pend = shape

    def _pair_end(self) -> None:
        if self.in_name:
            raise Stop("malformed")  # a name without '='
        self._value_end()
        if self.pend is not None:
            raise Stop(self.pend)

    # ------------------------------------------------------------------ name segments
    def _segment_end(self, sep: int) -> None:
        seg = bytes(self.seg)
        self.seg = bytearray()
        if not seg:
            raise Stop("malformed")
        t = seg.decode("latin-1")
        s = chr(sep)
        st = self.state
        if st == FIRST:
            self.first = t
            if t == "_has":
                self._structure_has(s)
                self.state = HAS_T
                return
            self._first(t, s)
        elif st == HNAME:
            self._hop_name(t, s)
        elif st == HMOD:
            if s == ":":
                raise Stop("malformed")  # a second modifier on one hop
            self._hop_mod(t, s)
        elif st == HAS_T:
            self._structure_has(s)
            if self.pend is None:
                if t not in G.TYPE_ID:
                    self._pending("has")
                else:
                    self.f.touched.add((t, "search"))
                    self.cur = t
            self.state = HAS_R
        elif st == HAS_R:
            self._structure_has(s)
            if self.pend is None:
                rp = G.param(self.cur, t)
                if rp is None or rp.kind != "reference":
                    self._pending("param")
            self.state = HAS_NEXT
        elif st == HAS_NEXT:
            if t == "_has":
                self._structure_has(s)
                self.state = HAS_T
                return
            if s == ".":
                raise Stop("has")
            if self.pend is None:
                self.p = G.param(self.cur, t)
                if self.p is None or self.p.kind not in ORDINARY:
                    self._pending("param")
            self.state = HAS_MOD
            if s == "=":
                self.vmode = "skip"
        elif st == HAS_MOD:
            if s == ".":
                raise Stop("has")
            if s == ":":
                raise Stop("malformed")
            if self.pend is None:
                self._modifier(self.p, t)  # type: ignore[arg-type]
            self.vmode = "skip"
        if s != "=" and st in (FIRST, HNAME, HMOD):
            self.state = HMOD if s == ":" else HNAME

    def _structure_has(self, s: str) -> None:
        if s == ".":
            raise Stop("has")
        if s == "=":
            raise Stop("malformed")  # _has needs T, r and a parameter

    def _first(self, t: str, s: str) -> None:
        """The first segment of a hop-mode name: what parameter it is."""
        mode = self.mode
        if mode != SEARCH:
            if mode == SYSTEM:
                if s != "=" or t not in G.PAGING_PARAMS:
                    self.f.paging = False
                self.f.getpages |= t == "_getpages" and s == "="
            elif s != "=" or t not in (G.READ_PARAMS if mode == READ else G.HISTORY_PARAMS):
                self._pending("param")
            return
        p = G.param(self.rtype, t)
        self.p, self.hname = p, t
        if p is None:
            self._pending("param")
        elif p.kind in ("include", "revinclude"):
            if s == ".":
                self._pending("include")
            elif s == "=":
                self.vmode = p.kind
        elif p.kind == "type":
            self._pending("type-param")
        elif p.kind in ("opaque", "contained", "result"):
            if s != "=":
                self._pending("param")
            elif p.kind == "opaque":
                self._pending("special")
            elif p.kind == "contained":
                self.vmode = "contained"
        elif s == ".":
            self._chain_from(p, None)
        elif s == "=":
            self._names_mode(t, p, "")

    def _hop_mod(self, m: str, s: str) -> None:
        """A modifier segment (after ':'), ended by '.' or '='."""
        if self.pend is not None:
            return
        if self.hop == 0:
            p = self.p
            if self.mode != SEARCH or p is None:
                return
            if p.kind in ("include", "revinclude"):
                if s == ".":
                    self._pending("include")
                elif m not in ("iterate", "recurse"):
                    self._pending("include")
                else:
                    self.vmode = p.kind
                return
            if p.kind not in ORDINARY:
                return
            if s == ".":
                self._chain_from(p, m)
            else:
                self._modifier(p, m)
                self._names_mode(self.hname, p, m)
            return
        # a later hop of a chain
        if self.multi:
            if s == ".":
                self._pending("chained")
            return
        if self.masks is not None:
            any_k, ref_k = self.masks
            self.masks = None
            self._narrowed(ref_k if s == "." else any_k, s == ".", m)
            return
        p = self.p
        if s == ".":
            self._chain_from(p, m)  # type: ignore[arg-type]
        elif p is not None:
            self._modifier(p, m)

    def _hop_name(self, t: str, s: str) -> None:
        """The name of a hop after the first (after '.')."""
        self.hname = t
        if self.pend is not None or self.mode != SEARCH:
            return
        if self.multi:
            if s == ".":
                self._pending("chained")
            return
        if self.cands:
            any_k = tuple(c for c in self.cands if (q := G.param(c, t)) is not None and q.kind in ORDINARY)
            ref_k = tuple(c for c in self.cands if (q := G.param(c, t)) is not None and q.kind == "reference")
            self.cands = ()
            if s == ":":
                self.masks = (any_k, ref_k)  # intermediate or last: the modifier's end tells
                return
            self._narrowed(ref_k if s == "." else any_k, s == ".", None)
            return
        p = G.param(self.cur, t)
        self.p = p
        if s == ".":
            self._chain_from(p, None)
        elif s == "=":
            if p is None or p.kind not in ORDINARY:
                self._pending("param")
        elif p is None or p.kind not in ORDINARY:
            self._pending("param")

    def _narrowed(self, targets: tuple[str, ...], intermediate: bool, mod: str | None) -> None:
        """The targets of the previous hop that have this hop's parameter (as a server searches)."""
        for t in targets:
            self.f.touched.add((t, "search"))
        if "Patient" in targets or "Encounter" in targets:
            self.f.unknown = True
        if not targets:
            self._pending("param")
            return
        if len(targets) > 1:
            if intermediate:
                self._pending("chained")
            return
        self.cur = targets[0]
        p = G.param(self.cur, self.hname)
        self.p = p
        if intermediate:
            self._chain_from(p, mod)
        elif mod is not None:
            self._modifier(p, mod)  # type: ignore[arg-type]

    def _chain_from(self, p: G.Param | None, mod: str | None) -> None:
        """A hop through reference parameter p (with a type modifier narrowing it)."""
        if p is None or p.kind != "reference":
            self._pending("param")
            return
        targets = p.targets
        if mod is not None:
            if mod not in targets:
                self._pending("param")
                return
            targets = (mod,)
        self.hop += 1
        self.p = None
        if len(targets) == 1 or len(targets) == 0 or len(targets) > NARROW:
            for t in targets:
                self.f.touched.add((t, "search"))
            if "Patient" in targets or "Encounter" in targets:
                self.f.unknown = True
            if len(targets) == 1:
                self.cur = targets[0]
            else:
                self.multi = True
        else:
            self.cands = targets

    def _modifier(self, p: G.Param, m: str) -> None:
        """A modifier of an ordinary parameter at its last hop."""
        if m in G.TYPE_ID:
            if p.kind != "reference" or m not in p.targets:
                self._pending("param")
            return
        if m not in G.MODIFIER_ID or m in ("iterate", "recurse") or not G.modifier_ok(p, m):
            self._pending("param")
            return
        if m in ("in", "not-in"):
            self.f.touched.add(("ValueSet", "read"))

    # ------------------------------------------------------------------ values
    def _names_mode(self, name: str, p: G.Param, mod: str) -> None:
        """The value of the first hop's parameter may name patients or encounters."""
        if name == "_id" and self.rtype in ("Patient", "Encounter"):
            if mod:
                self.f.unknown = True  # _id:not=... names every other one
            else:
                self.vmode, self.vtype = "ids", self.rtype
            return
        if p.kind != "reference" or not (p.names_patient or p.names_encounter) or mod == "missing":
            return
        if mod in ("identifier", "above", "below"):
            self.f.unknown = True  # named by their data, not by id
            return
        if mod and mod not in ("Patient", "Encounter"):
            return  # narrowed to another type: names neither
        self.vmode = "refs"
        self.vtype = mod or ("Patient" if p.names_patient else "Encounter")
        self.vexplicit = bool(mod)

    def _value_byte(self, d: int) -> None:
        vm = self.vmode
        if vm in ("refs", "ids"):
            if d == 0x2C:  # ','
                self._item_end()
            else:
                self.item.append(d)
        elif vm in ("include", "revinclude"):
            if d == 0x3A:  # ':'
                self.segs.append(bytes(self.item))
                self.item = bytearray()
            else:
                self.item.append(d)
        elif vm == "contained":
            self.item.append(d)

    def _value_end(self) -> None:
        vm = self.vmode
        if vm in ("refs", "ids"):
            self._item_end()
        elif vm in ("include", "revinclude"):
            self.segs.append(bytes(self.item))
            if self.pend is None:
                self._include(vm, self.segs)
        elif vm == "contained" and bytes(self.item) != b"false":
            self._pending("special")

    def _item_end(self) -> None:
        item = bytes(self.item)
        self.item = bytearray()
        if not item:
            return
        f = self.f
        if self.vmode == "ids":
            if not valid_id(item):
                f.unknown = True
            elif self.vtype == "Patient":
                f.patient(item)
            else:
                f.encounter(item)
            return
        if b":" in item or item.count(b"/") > 1:
            f.unknown = True
            return
        prefix, slash, rid = item.rpartition(b"/")
        t = prefix.decode("latin-1") if slash else self.vtype
        if slash and self.vexplicit and t != self.vtype:
            f.unknown = True
            return
        if t not in ("Patient", "Encounter"):
            return
        if not valid_id(rid):
            f.unknown = True
        elif t == "Patient":
            f.patient(rid)
        else:
            f.encounter(rid)

    def _include(self, kind: str, segs: list[bytes]) -> None:
        """_include=S:p[:X] -> (X or each target of S.p, read); _revinclude -> (S, search)."""
        if len(segs) not in (2, 3):
            self._pending("include")
            return
        s = segs[0].decode("latin-1")
        if s not in G.TYPE_ID:
            self._pending("include")
            return
        p = G.param(s, segs[1].decode("latin-1"))
        if p is None or p.kind != "reference":
            self._pending("include")
            return
        targets = p.targets
        if len(segs) == 3:
            x = segs[2].decode("latin-1")
            if x not in targets:
                self._pending("include")
                return
            targets = (x,)
        if kind == "revinclude":
            self.f.touched.add((s, "search"))
        else:
            for t in targets:
                self.f.touched.add((t, "read"))
