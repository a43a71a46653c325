"""The kernel parser and the Python classifier agree: every family example, generated requests
(valid ones, near-misses and garbage), and sequences of writes on one connection.

The requests go through real sockets from a process in a replica cgroup; the agent is in
observe mode with record_all, so the kernel reports its classification of every message and
never drops (a drop would make the connection unusable).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from paritybed.enforcer import classify as C, grammar as G
from paritybed.enforcer.policy import AgentPolicy, FhirPolicy, Policy
from paritybed.enforcer.registry import Registry, save_registry
from test_classify import EVASIONS, FAMILY_EXAMPLES, NAME_EXAMPLES, TOUCH_EXAMPLES

#: ordinary parameters of Observation (and every type's), the result parameters: names the generator
#: starts from (the grammar's tables, enforcer/grammar.py, are the whole list)
PARAM_SAMPLE = ("_id", "_lastUpdated", "code", "subject", "patient", "date", "status", "category", "encounter",
                "value-quantity", *G.RESULT)

pytestmark = pytest.mark.bpf


class Kernel:
    """Send writes from inside the cgroup and return the kernel's classification of each."""

    def __init__(self, ke: Any, probe: Any, sink: Any) -> None:
        self.ke, self.probe, self.sink = ke, probe, sink

    def classify(self, writes: list[bytes]) -> list[tuple | None]:
        self.ke.drain()
        r = self.probe(op="http", addr=self.sink.address, writes=[w.decode("latin-1") for w in writes], fresh=True,
                       wait=False)
        assert r["ok"], r
        evs = [e for e in self.ke.drain() if e.get("kind") == "fhir"]
        return [(e["shape"], e["resource_type"], e["interaction"], e.get("claim_hash"), tuple(e.get("touches", ())),
                 tuple(e.get("named_patients", ())), bool(e.get("more_patients")), tuple(e.get("named_encounters", ())),
                 bool(e.get("more_encounters")), bool(e.get("unknown_patient")), e.get("context")) for e in evs]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    from paritybed.enforcer.kernel import KernelEnforcer, cleanup
    from paritybed.enforcer.probe import ProbeProcess, Sink, probe_argv

    tmp = tmp_path_factory.mktemp("classify")
    sink = Sink()
    save_registry(Registry(version=1), tmp / "baa.json")
    policy = Policy(agents={"obs": AgentPolicy(agent_class="cds", fhir=FhirPolicy(server=sink.address), response="observe")})
    cleanup("pbt-classify")
    ke = KernelEnforcer(policy, tmp / "baa.json", start=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc),
                        name="pbt-classify", record_all=True)
    probe = ProbeProcess(ke.spawn("obs", 0, probe_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    yield Kernel(ke, probe, sink)
    probe.close()
    ke.close()
    sink.close()


def python_view(writes: list[bytes]) -> list[tuple | None]:
    """The classifier's answer for each write that the kernel decides (observe: all allowed)."""
    s = C.Stream()
    out = []
    for w in writes:
        c = s.feed(w)
        s.commit(True)
        if c is not None:
            claim = f"{C.fnv1a64(c.claim):016x}" if c.claim is not None else None
            ctx = f"{C.fnv1a64(c.context):016x}" if c.context is not None else None
            pats = tuple(f"{C.fnv1a64(p):016x}" for p in c.patients[:4])  # a kernel record names up to 4
            encs = (f"{C.fnv1a64(c.encounters[0]):016x}",) if c.encounters else ()  # and the first encounter
            touches = tuple(f"{t}:{i}" for t, i in c.touches)
            out.append((c.shape, c.resource_type, c.interaction, claim, touches, pats, len(c.patients) > 4, encs,
                        len(c.encounters) > 1, c.unknown_patient, ctx))
    return out


@pytest.mark.parametrize("raw,shape,rtype,inter", FAMILY_EXAMPLES, ids=[f"{i}-{e[1]}" for i, e in enumerate(FAMILY_EXAMPLES)])
def test_family_examples_in_the_kernel(kernel: Kernel, raw: str, shape: str, rtype: str, inter: str) -> None:
    [k] = kernel.classify([raw.encode("latin-1")])
    assert k[:3] == (shape, rtype, inter)


@pytest.mark.parametrize("raw", [e[0] for e in EVASIONS + TOUCH_EXAMPLES + NAME_EXAMPLES])
def test_touches_names_and_evasions_in_the_kernel(kernel: Kernel, raw: str) -> None:
    """The examples of what a request touches and names, and the evasions of those forms (an
    include through an encoded colon, a double-encoded chain, a compartment with a dot
    segment, ...): the kernel reads each as classify.py does, touches and names included."""
    assert kernel.classify([raw.encode("latin-1")]) == python_view([raw.encode("latin-1")])


def test_header_lines_read_a_step_at_a_time(kernel: Kernel) -> None:
    """A header's name, its ':' and a skipped value end in one step when they lie in 32 bytes
    (pb_hname_run): a byte no header value may hold, a lone CR or LF, or a line longer than the
    window must leave the request as classify.py reads it, wherever it falls."""
    names = ["Host", "X-Request-ID", "X-Paritybed-Agent-Class", "X-A", "x-" + "y" * 26, "X-Launch-Context", "Content-Length"]
    values = ["abc", "a\x00b", "ab\rc", "a\nb", "a\x7fb", "a\x80b", "\tab\t", "", "x" * 24, "x" * 40, "1"]
    raws = [f"GET /fhir/Observation?patient=p1 HTTP/1.1\r\n{n}:{pre}{v}\r\nAccept: */*\r\n\r\n"
            for n in names for v in values for pre in ("", " ", " " * (30 - len(n)))]
    for raw in raws:
        assert kernel.classify([raw.encode("latin-1")]) == python_view([raw.encode("latin-1")]), raw


def test_a_record_names_every_patient_and_the_encounter(kernel: Kernel) -> None:
    """A kernel record carries up to 4 patients (a fifth is `more_patients`) and the first
    encounter (a second is `more_encounters`), as the classifier names them."""
    for q in ("patient=p1,p2,p3&encounter=e1", "patient=p1,p2,p3,p4,p5&encounter=e1,e2", "subject=Patient/p9&_count=5"):
        raw = f"GET /fhir/Observation?{q} HTTP/1.1\r\nHost: fhir\r\n\r\n".encode()
        [k] = kernel.classify([raw])
        assert [k] == python_view([raw]), q
    assert k[5] == (f"{C.fnv1a64('p9'):016x}",)


def test_every_name_the_kernel_looks_up(kernel: Kernel) -> None:
    """Every entry of the kernel's name table (all R4 type names, the parameter names with a
    meaning, the headers the parser knows, in two cases) is found where classify.py finds it."""
    raws = [f"GET /fhir/{t} HTTP/1.1\r\n\r\n" for t in C.R4_TYPES]
    raws += [f"GET /fhir/Observation?{p}=1 HTTP/1.1\r\n\r\n" for p in (*PARAM_SAMPLE, *G.SPECIAL)]
    headers = ("Content-Length", "Transfer-Encoding", C.CLAIM_HEADER, C.CONTEXT_HEADER, "Content-Type", *C.OVERRIDE_HEADERS)
    raws += [f"GET /fhir/Observation HTTP/1.1\r\n{h}: 1\r\n\r\n" for h in headers]
    raws += [f"GET /fhir/Observation HTTP/1.1\r\n{h.upper()}: 1\r\n\r\n" for h in headers]
    for raw in raws:
        assert kernel.classify([raw.encode()]) == python_view([raw.encode()]), raw


# ---------------------------------------------------------------- generated requests

SPECIAL = b" \r\n\t%/.$?&=:+#,|\x00\x7f\x80\xff-_aZ09"
TYPES = st.sampled_from(list(C.R4_TYPES[::7]) + ["Patient", "Observation", "Foo", "patient", "Observation1",
                                                  "MedicinalProductUndesirableEffect", "A" * 41])
ID_ALPHABET = "abcXYZ019-"
IDS = st.one_of(st.text(ID_ALPHABET, min_size=1, max_size=8), st.text(ID_ALPHABET + "._%/$+", max_size=70))
SEGMENT = st.one_of(IDS, st.sampled_from(["_history", "$everything", "$graphql", "$GRAPHQL", "$export", "Observation",
                                          "_search", "..", ".", "", "_histor", "_historyx", "$ever%74hing"]))
PNAMES = st.one_of(st.sampled_from(list(PARAM_SAMPLE) + ["_include", "_revinclude:iterate", "_type", "_has:Observation:patient:code",
                                                           "name", "code:text", "subject.name", "subject:Patient.name",
                                                           "_elements", "", "_count%3A", "a+b"]),
                   st.text("abcdefghijklmnopqrstuvwxyz_:.-", max_size=20))
VALUES = st.one_of(st.text("abc019._|:/,-", max_size=20), st.text("abc019._|:/,-%+ =&?#", max_size=140))
HEADERS = st.one_of(
    st.tuples(st.just("Host"), st.just("fhir")),
    st.tuples(st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH"]),
              st.one_of(st.integers(0, 40).map(str), st.sampled_from(["", " 3 ", "1,2", "-1", "0x10", "1234567890", "3 4"]))),
    st.tuples(st.just("Transfer-Encoding"), st.sampled_from(["chunked", "identity"])),
    st.tuples(st.sampled_from(["X-HTTP-Method-Override", "X-Method-Override", "x-http-method"]), st.just("DELETE")),
    # claim and launch-context ids: read in runs of up to 8 bytes, up to 64 bytes (a 65th, a space
    # inside, a byte outside the class or a value split by a near-miss must end up as classify says)
    st.tuples(st.sampled_from(["X-Break-Glass-Claim", "x-break-glass-claim", "X-Launch-Context", "x-launch-context"]),
              st.one_of(st.text("abcXYZ09._:-", min_size=1, max_size=10), st.text("abcXYZ09._:-", min_size=7, max_size=70),
                        st.text("abcXYZ09._:- \t/;", min_size=1, max_size=30),
                        st.sampled_from(["", "a b", "x" * 64, "x" * 65, " cb-1 ", "scribe-lc0000042", "lc-1\t"]))),
    # other names, of every length around the 24 bytes looked up and the 32 read in one step
    st.tuples(st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=30), st.text("abc 019;=,", max_size=30)),
    st.tuples(st.text("abcxyzABCXYZ0189-_", min_size=20, max_size=36), st.text("abc 019;=,", max_size=40)),
    st.tuples(st.sampled_from(["cOnTeNt-LeNgTh", "X-LAUNCH-context", "Content-Length1", "X-Launch-Contex", "x-launch-contextx",
                               "X-Paritybed-Agent-Class", "X-Request-ID"]), st.sampled_from(["1", "lc-1", "", " 7"])),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET"] * 6 + ["POST", "PUT", "DELETE", "PATCH", "get", "HEAD", "GETX"]))
    base = draw(st.sampled_from(["/fhir"] * 8 + ["/fhirx", "/", "/other", "/fhir/", "http://x/fhir"]))
    segs = [draw(TYPES)] if draw(st.integers(0, 9)) else []
    segs += draw(st.lists(SEGMENT, max_size=3))
    target = base + ("/" + "/".join(segs) if segs and not base.endswith("/") else "/".join(segs))
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(PNAMES, VALUES), min_size=1, max_size=4))
        target += "?" + "&".join(f"{n}={v}" if draw(st.integers(0, 9)) else n for n, v in pairs)
    version = draw(st.sampled_from(["HTTP/1.1"] * 9 + ["HTTP/1.0", "HTTP/2", "http/1.1"]))
    headers = draw(st.lists(HEADERS, max_size=4))
    body = draw(st.binary(max_size=30))
    if method in ("POST", "PUT") and draw(st.integers(0, 3)):
        headers.append(("Content-Length", str(len(body) + (draw(st.sampled_from([0, 0, 0, 5, -1])) if body else 0))))
    raw = f"{method} {target} {version}\r\n".encode("latin-1", "replace")
    raw += b"".join(f"{k}: {v}\r\n".encode("latin-1", "replace") for k, v in headers) + b"\r\n" + body
    if draw(st.integers(0, 9)) == 0:
        raw += b"GET /fhir/Patient/1 HTTP/1.1\r\n\r\n"
    for _ in range(draw(st.integers(0, 3)) if draw(st.integers(0, 2)) == 0 else 0):  # near-misses
        i = draw(st.integers(0, len(raw)))
        b = bytes([draw(st.sampled_from(SPECIAL))])
        raw = raw[:i] + b + raw[i + draw(st.integers(0, 1)):]
    if draw(st.integers(0, 14)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    if draw(st.integers(0, 19)) == 0:
        raw = raw.replace(b"\r\n", b"\r\nX-Pad: " + b"p" * draw(st.integers(1900, 2100)) + b"\r\n", 1)
    return raw or b"x"


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(raw=requests())
def test_kernel_and_python_classify_alike(kernel: Kernel, raw: bytes) -> None:
    assert kernel.classify([raw]) == python_view([raw]), raw


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=st.binary(min_size=1, max_size=40), cuts=st.lists(st.integers(0, 60), max_size=3),
       extra=st.sampled_from([b"", b"", b"GET /fhir/Patient/1 HTTP/1.1\r\n\r\n", b"x"]))
def test_bodies_across_writes(kernel: Kernel, body: bytes, cuts: list[int], extra: bytes) -> None:
    """A head with part of its body, the rest in later writes (with or without bytes too many)."""
    head = f"POST /fhir/Observation HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    writes = cut_after(head, body + extra, cuts)
    assert kernel.classify(writes) == python_view(writes), writes


def cut_after(head: bytes, rest: bytes, cuts: list[int]) -> list[bytes]:
    """head + rest as writes: the head whole (with what comes before the first cut), the rest cut
    at the given offsets into it."""
    stream = head + rest
    points = sorted({len(head) + min(c, len(rest)) for c in cuts} | {len(stream)})
    writes, start = [], 0
    for p in points:
        if p > start:
            writes.append(stream[start:p])
            start = p
    return writes


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(params=st.sampled_from(["patient=p1&code=http%3A%2F%2Floinc.org%7C8867-4&_count=5", "subject:Patient.name=x",
                               "_include=Observation:patient", "patient=p1&_include=*", "a", "code=%2", "_count=1" * 600]),
       cuts=st.lists(st.integers(0, 60), min_size=1, max_size=3),
       extra=st.sampled_from([b"", b"", b"GET /fhir/Patient/1 HTTP/1.1\r\n\r\n", b"x"]))
def test_form_bodies_across_writes(kernel: Kernel, params: str, cuts: list[int], extra: bytes) -> None:
    """A POST _search head alone, its form body in later writes (as requests' http.client writes a
    str body): the kernel holds the head and reads head and body as one request, as Stream does;
    a body over BODY_MAX, or bytes after the body, are denied as in one write."""
    body = params.encode()
    head = f"POST /fhir/Observation/_search HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n" \
           f"Content-Length: {len(body)}\r\n\r\n".encode()
    writes = cut_after(head, body + extra, cuts)
    assert kernel.classify(writes) == python_view(writes), writes
