"""A compromised agent: every way it can try to get a forbidden FHIR request, or any byte, past
the kernel enforcer.  tests/test_kernel_adversary.py runs each attack as its own process, as an
unprivileged user (uid 65534, no capabilities) inside an enforced replica cgroup, with the
system Python (standard library only: the attacker has nothing of paritybed), and then looks at
what the servers received.

    python3 adversary.py ATTACK '{"fhir": "127.0.0.1:PORT", ...}'

prints one JSON line with what the attack saw (errno values, short counts); attacks that need
the test to act (connect to a listener, use a passed socket) print a line and wait for one on
stdin.  The forbidden request always names ``Patient/secret``: the tests assert that these bytes
never reach the server, whatever the attack's own report says.
"""

from __future__ import annotations

import array
import ctypes
import errno
import json
import mmap
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

FORBIDDEN = b"GET /fhir/Patient/secret HTTP/1.1\r\nHost: fhir\r\n\r\n"
ALLOWED = b"GET /fhir/Observation?patient=p1 HTTP/1.1\r\nHost: fhir\r\n\r\n"
IPPROTO_MPTCP = 262
TCP_REPAIR, TCP_FASTOPEN_CONNECT, TCP_ULP = 19, 30, 31
libc = ctypes.CDLL(None, use_errno=True)
ATTACKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def attack(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    ATTACKS[fn.__name__] = fn
    return fn


def addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def padded(n: int) -> bytes:
    """An allowed request whose head is about n bytes (a long header value)."""
    return b"GET /fhir/Observation?patient=p1 HTTP/1.1\r\nHost: fhir\r\nX-Pad: " + b"a" * n + b"\r\n\r\n"


def post(body_len: int) -> bytes:
    return (b"POST /fhir/Observation HTTP/1.1\r\nHost: fhir\r\nContent-Type: application/fhir+json\r\n"
            b"Content-Length: " + str(body_len).encode() + b"\r\n\r\n")


def err(f: Callable[[], Any]) -> Any:
    """f's result, or the errno (or 'timeout') of what it raised."""
    try:
        return f()
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return e.errno


def disconnect(s: socket.socket) -> int:
    """connect(AF_UNSPEC): drops the TCP connection, keeps the socket (and whatever state is tied to it)."""
    sa = (ctypes.c_ubyte * 16)()
    return 0 if libc.connect(s.fileno(), sa, 16) == 0 else ctypes.get_errno()


def fill_until_short(s: socket.socket, tries: int = 600, flags: int = 0) -> tuple[int, int] | None:
    """Allowed requests on a non-blocking socket until one is sent only in part (the server is
    not reading, the buffers fill up): (sent, length) of that one."""
    s.setblocking(False)
    for i in range(tries):
        req = padded(1500 + (i * 37) % 400)
        try:
            n = s.send(req, flags)
        except BlockingIOError:
            time.sleep(0.002)
            continue
        if n < len(req):
            return n, len(req)
    return None


def small_socket(a: tuple[str, int], sndbuf: int = 65536, mss: int = 88) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in a[0] else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    s.connect(a)
    return s


# ---------------------------------------------------------------- class 1: short sends

@attack
def short_head(c: dict[str, Any]) -> dict[str, Any]:
    """A request head sent in part, then the rest of the stream replaced by a forbidden request."""
    s = small_socket(addr(c["fhir"]))
    short = fill_until_short(s)
    s.settimeout(2)
    return {"short": short, "forbidden": err(lambda: s.send(b"\r\n\r\n" + FORBIDDEN))}


@attack
def short_oob(c: dict[str, Any]) -> dict[str, Any]:
    """The same with MSG_OOB (urgent data also takes a byte out of the server's stream)."""
    s = small_socket(addr(c["fhir"]), 4096)
    short = fill_until_short(s, flags=socket.MSG_OOB)
    s.settimeout(2)
    return {"short": short, "forbidden": err(lambda: s.send(b"\r\n\r\n" + FORBIDDEN))}


@attack
def short_sndtimeo(c: dict[str, Any]) -> dict[str, Any]:
    """A blocking socket with a send timeout: the timeout makes the send short."""
    s = small_socket(addr(c["fhir"]))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 20000))
    short = None
    for i in range(600):
        req = padded(1500 + (i * 37) % 400)
        try:
            n = s.send(req)
        except OSError:
            continue
        if n < len(req):
            short = (n, len(req))
            break
    s.settimeout(2)
    return {"short": short, "forbidden": err(lambda: s.send(b"\r\n\r\n" + FORBIDDEN))}


@attack
def short_signal(c: dict[str, Any]) -> dict[str, Any]:
    """A blocking send cut short by a signal (SA_RESTART off), then the forbidden request."""
    s = small_socket(addr(c["fhir"]))
    signal.signal(signal.SIGALRM, lambda *_: None)
    signal.siginterrupt(signal.SIGALRM, True)
    short = None
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    try:
        for i in range(600):
            req = padded(1500 + (i * 37) % 400)
            n = err(lambda r=req: s.send(r))
            if isinstance(n, int) and 0 < n < len(req):
                short = (n, len(req))
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
    s.settimeout(2)
    return {"short": short, "forbidden": err(lambda: s.send(b"\r\n\r\n" + FORBIDDEN))}


@attack
def short_other_thread(c: dict[str, Any]) -> dict[str, Any]:
    """After a short send in one thread, another thread sends on the same socket."""
    s = small_socket(addr(c["fhir"]))
    short = fill_until_short(s)
    out: dict[str, Any] = {}
    s.settimeout(2)
    t = threading.Thread(target=lambda: out.update(forbidden=err(lambda: s.send(b"\r\n\r\n" + FORBIDDEN))))
    t.start()
    t.join()
    return {"short": short, **out}


@attack
def short_body_then_forbidden(c: dict[str, Any]) -> dict[str, Any]:
    """A large create whose body goes out in short sends (the same thread continuing each time:
    what an ordinary client does with a timeout set), then a forbidden request after the body.
    The body must arrive whole; the forbidden request must not."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # a small buffer: the sends go out short
    s.connect(addr(c["fhir"]))
    body = b"{" + b" " * (c.get("body", 400000) - 2) + b"}"
    data = post(len(body)) + body
    s.setblocking(False)
    sent, shorts = 0, 0
    while sent < len(data):
        try:
            n = s.send(data[sent:sent + 200000])
        except BlockingIOError:
            select.select([], [s], [], 1)
            continue
        except OSError as e:
            return {"error": e.errno, "sent": sent, "shorts": shorts}
        shorts += n < min(200000, len(data) - sent)
        sent += n
    s.setblocking(True)
    s.settimeout(3)
    reply = err(lambda: s.recv(4096))
    return {"sent": sent, "shorts": shorts, "reply": reply[:12].decode() if isinstance(reply, bytes) else reply,
            "forbidden": err(lambda: s.send(FORBIDDEN))}


# ---------------------------------------------------------------- class 2/3: one socket, several connections

@attack
def reconnect_after_approvals(c: dict[str, Any]) -> dict[str, Any]:
    """Many large approved requests, a disconnect and reconnect of the same socket, a short send,
    then forbidden requests (whatever was counted as approved on the first connection must not
    count on the second)."""
    a = addr(c["fhir"])
    s = small_socket(a)
    s.settimeout(2)
    for _ in range(40):
        s.sendall(padded(1900))
    d = disconnect(s)
    time.sleep(0.1)
    rc = err(lambda: s.connect(a))
    short = fill_until_short(s, tries=200)
    s.settimeout(2)
    return {"disconnect": d, "reconnect": rc, "short": short,
            "forbidden": err(lambda: s.send(b"\r\n\r\n" + FORBIDDEN * 40))}


@attack
def reconnect_body_left(c: dict[str, Any]) -> dict[str, Any]:
    """A create head announcing a body, a disconnect and reconnect: the forbidden request must
    not pass as the rest of that body."""
    a = addr(c["fhir"])
    s = socket.create_connection(a, timeout=2)
    s.send(post(1000))
    time.sleep(0.1)
    d = disconnect(s)
    time.sleep(0.1)
    return {"disconnect": d, "reconnect": err(lambda: s.connect(a)), "forbidden": err(lambda: s.send(FORBIDDEN))}


@attack
def shutdown_reconnect(c: dict[str, Any]) -> dict[str, Any]:
    """A create head, shutdown(SHUT_WR), disconnect, reconnect, forbidden request."""
    a = addr(c["fhir"])
    s = socket.create_connection(a, timeout=2)
    s.send(post(500))
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.1)
    d = disconnect(s)
    time.sleep(0.1)
    return {"disconnect": d, "reconnect": err(lambda: s.connect(a)), "forbidden": err(lambda: s.send(FORBIDDEN))}


def search_head(body_len: int) -> bytes:
    """A POST _search head alone: the kernel holds it until its form body is written."""
    return (b"POST /fhir/Observation/_search HTTP/1.1\r\nHost: fhir\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: " + str(body_len).encode() + b"\r\n\r\n")


@attack
def held_head_smuggle(c: dict[str, Any]) -> dict[str, Any]:
    """A held POST _search head, then its form body with the forbidden request after it in one write."""
    s = socket.create_connection(addr(c["fhir"]), timeout=2)
    body = b"patient=p1"
    return {"head": err(lambda: s.send(search_head(len(body)))), "rest": err(lambda: s.send(body + FORBIDDEN))}


@attack
def held_head_body_is_a_request(c: dict[str, Any]) -> dict[str, Any]:
    """A held head whose announced form body is the forbidden request, to the byte."""
    s = socket.create_connection(addr(c["fhir"]), timeout=2)
    return {"head": err(lambda: s.send(search_head(len(FORBIDDEN)))), "rest": err(lambda: s.send(FORBIDDEN))}


@attack
def held_head_reconnect(c: dict[str, Any]) -> dict[str, Any]:
    """A held head, a disconnect and reconnect of the same socket, then the forbidden request,
    exactly as long as the body the held head still waits for."""
    a = addr(c["fhir"])
    s = socket.create_connection(a, timeout=2)
    head = err(lambda: s.send(search_head(len(FORBIDDEN))))
    time.sleep(0.1)
    d = disconnect(s)
    time.sleep(0.1)
    return {"head": head, "disconnect": d, "reconnect": err(lambda: s.connect(a)),
            "forbidden": err(lambda: s.send(FORBIDDEN))}


@attack
def reconnect_fast_open(c: dict[str, Any]) -> dict[str, Any]:
    """Disconnect, then reconnect the same socket with the forbidden request as Fast Open data."""
    a = addr(c["fhir"])
    s = socket.create_connection(a, timeout=2)
    s.sendall(ALLOWED)
    time.sleep(0.1)
    d = disconnect(s)
    first = err(lambda: s.sendto(FORBIDDEN, socket.MSG_FASTOPEN, a))  # the disconnect left ECONNRESET pending
    s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # reading it clears it
    return {"disconnect": d, "first": first, "forbidden": err(lambda: s.sendto(FORBIDDEN, socket.MSG_FASTOPEN, a))}


@attack
def fork_shared_socket(c: dict[str, Any]) -> dict[str, Any]:
    """A child shares the parent's socket while the parent's create announces a body; the child
    sends a forbidden request as 'body'... that is body for the server too, so it then sends one
    after the body's end."""
    s = socket.create_connection(addr(c["fhir"]), timeout=2)
    s.send(post(20))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        res = err(lambda: s.send(b"x" * 20 + FORBIDDEN))
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = json.loads(os.read(r, 100))
    return {"child": child, "parent_after": err(lambda: s.send(FORBIDDEN))}


@attack
def pass_socket_outside(c: dict[str, Any]) -> dict[str, Any]:
    """Hand a connected socket to a process outside the replica (SCM_RIGHTS over a Unix socket
    the test listens on): the outside process's forbidden request must still be judged as ours."""
    s = socket.create_connection(addr(c["fhir"]), timeout=2)
    s.sendall(ALLOWED)
    u = socket.socket(socket.AF_UNIX)
    u.connect(c["unix"])
    u.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [s.fileno()]))])
    return {"passed": u.recv(100).decode()}


# ---------------------------------------------------------------- other ways to send

@attack
def iovec_splits(c: dict[str, Any]) -> dict[str, Any]:
    """sendmsg with the forbidden request split into iovecs at every offset (a fresh connection each time)."""
    out = []
    for k in range(1, len(FORBIDDEN)):
        s = socket.create_connection(addr(c["fhir"]), timeout=2)
        out.append(err(lambda: s.sendmsg([FORBIDDEN[:k], FORBIDDEN[k:]])))
        s.close()
    return {"results": sorted(set(map(str, out)))}


@attack
def syscalls(c: dict[str, Any]) -> dict[str, Any]:
    """writev, sendto, sendfile, splice from a pipe, sendmmsg (libc), MSG_ZEROCOPY, MSG_MORE pieces."""
    a = addr(c["fhir"])
    out: dict[str, Any] = {}

    keep: list[socket.socket] = []

    def conn() -> socket.socket:
        keep.append(socket.create_connection(a, timeout=2))
        return keep[-1]

    out["writev"] = err(lambda: os.writev(conn().fileno(), [FORBIDDEN[:10], FORBIDDEN[10:]]))
    out["write"] = err(lambda: os.write(conn().fileno(), FORBIDDEN))
    out["sendto"] = err(lambda: conn().sendto(FORBIDDEN, a))
    fd = os.open("/tmp", os.O_TMPFILE | os.O_RDWR)
    os.write(fd, FORBIDDEN)
    out["sendfile"] = err(lambda: os.sendfile(conn().fileno(), fd, 0, len(FORBIDDEN)))
    pr, pw = os.pipe()
    os.write(pw, FORBIDDEN)
    out["splice"] = err(lambda: os.splice(pr, conn().fileno(), len(FORBIDDEN)))
    s = conn()
    s.setsockopt(socket.SOL_SOCKET, 60, 1)  # SO_ZEROCOPY
    out["zerocopy"] = err(lambda: s.send(FORBIDDEN, 0x4000000))  # MSG_ZEROCOPY
    s = conn()
    out["more"] = [err(lambda: s.send(FORBIDDEN[:20], socket.MSG_MORE)), err(lambda: s.send(FORBIDDEN[20:]))]
    out["sendmmsg"] = _sendmmsg(conn())
    return out


def _sendmmsg(s: socket.socket) -> Any:
    class IOVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class MsgHdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(IOVec)),
                    ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]

    class MMsgHdr(ctypes.Structure):
        _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]

    bufs = [ctypes.create_string_buffer(ALLOWED, len(ALLOWED)), ctypes.create_string_buffer(FORBIDDEN, len(FORBIDDEN))]
    iovs = [IOVec(ctypes.cast(b, ctypes.c_void_p), len(b)) for b in bufs]
    msgs = (MMsgHdr * 2)(*[MMsgHdr(MsgHdr(None, 0, ctypes.pointer(v), 1, None, 0, 0), 0) for v in iovs])
    n = libc.sendmmsg(s.fileno(), msgs, 2, 0)
    return n if n >= 0 else ctypes.get_errno()


@attack
def io_uring(c: dict[str, Any]) -> dict[str, Any]:
    """The forbidden request submitted through io_uring: SEND, WRITE, SENDMSG, with and without SQPOLL."""
    out = {}
    for sqpoll in (False, True):
        for op in ("send", "write", "sendmsg"):
            s = socket.create_connection(addr(c["fhir"]), timeout=2)
            try:
                out[f"{op}{'-sqpoll' if sqpoll else ''}"] = Ring(sqpoll).submit(op, s.fileno(), FORBIDDEN)
            except OSError as e:
                out[f"{op}{'-sqpoll' if sqpoll else ''}"] = f"setup:{e.errno}"
            s.close()
    return out


class Ring:
    """The smallest io_uring: one submission, one completion (raw syscalls, no liburing)."""

    OPS = {"sendmsg": 9, "write": 23, "send": 26}

    def __init__(self, sqpoll: bool) -> None:
        params = bytearray(120)
        if sqpoll:
            struct.pack_into("<I", params, 8, 2)  # IORING_SETUP_SQPOLL
            struct.pack_into("<I", params, 16, 1000)  # sq_thread_idle ms
        buf = ctypes.create_string_buffer(bytes(params), 120)
        fd = libc.syscall(425, 4, buf)  # io_uring_setup
        if fd < 0:
            raise OSError(ctypes.get_errno(), "io_uring_setup")
        self.fd, p = fd, buf.raw
        self.sq_entries, self.cq_entries = struct.unpack_from("<II", p, 0)
        sq = struct.unpack_from("<IIIIIIII", p, 40)  # head tail mask entries flags dropped array resv
        cq = struct.unpack_from("<IIIIIIII", p, 80)  # head tail mask entries overflow cqes flags resv
        self.sq_off, self.cq_off = sq, cq
        self.sq = mmap.mmap(fd, sq[6] + self.sq_entries * 4, offset=0)
        self.cq = mmap.mmap(fd, cq[5] + self.cq_entries * 16, offset=0x8000000)
        self.sqes = mmap.mmap(fd, self.sq_entries * 64, offset=0x10000000)

    def submit(self, op: str, sfd: int, data: bytes) -> Any:
        keep = ctypes.create_string_buffer(data, len(data))
        addr = ctypes.addressof(keep)
        length = len(data)
        if op == "sendmsg":
            iov = (ctypes.c_uint64 * 2)(addr, len(data))
            hdr = ctypes.create_string_buffer(struct.pack("<QIxxxxQQQQi4x", 0, 0, ctypes.addressof(iov), 1, 0, 0, 0), 56)
            addr, length = ctypes.addressof(hdr), 1
        sqe = struct.pack("<BBHiQQIIQHHiQQ", self.OPS[op], 0, 0, sfd, 0, addr, length, 0, 7, 0, 0, 0, 0, 0)
        tail = struct.unpack_from("<I", self.sq, self.sq_off[1])[0]
        idx = tail & struct.unpack_from("<I", self.sq, self.sq_off[2])[0]
        self.sqes[idx * 64:(idx + 1) * 64] = sqe
        struct.pack_into("<I", self.sq, self.sq_off[6] + 4 * idx, idx)
        struct.pack_into("<I", self.sq, self.sq_off[1], tail + 1)
        flags = 1 | (2 if struct.unpack_from("<I", self.sq, self.sq_off[4])[0] & 1 else 0)  # GETEVENTS | SQ_WAKEUP
        if libc.syscall(426, self.fd, 1, 1, flags, None, 0) < 0:
            return f"enter:{ctypes.get_errno()}"
        head = struct.unpack_from("<I", self.cq, self.cq_off[0])[0]
        for _ in range(200):
            if struct.unpack_from("<I", self.cq, self.cq_off[1])[0] != head:
                break
            time.sleep(0.01)
        i = head & struct.unpack_from("<I", self.cq, self.cq_off[2])[0]
        _ud, res, _fl = struct.unpack_from("<QiI", self.cq, self.cq_off[5] + 16 * i)
        struct.pack_into("<I", self.cq, self.cq_off[0], head + 1)
        del keep
        return -res if res < 0 else res


# ---------------------------------------------------------------- other protocols, options, inbound

@attack
def udp_to_fhir_server(c: dict[str, Any]) -> dict[str, Any]:
    """UDP to the FHIR server's own address and port: unconnected and connected."""
    a = addr(c["fhir"])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return {"sendto": err(lambda: u.sendto(FORBIDDEN, a)), "connect": err(lambda: v.connect(a)),
            "send": err(lambda: v.send(FORBIDDEN))}


@attack
def socket_kinds(c: dict[str, Any]) -> dict[str, Any]:
    """Socket kinds an agent has no business with, and what sending through them does."""
    out = {}
    for name, fam, kind, proto in [("icmp", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
                                   ("icmp6", socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6),
                                   ("raw", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
                                   ("mptcp", socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP),
                                   ("udplite", socket.AF_INET, socket.SOCK_DGRAM, 136)]:
        try:
            s = socket.socket(fam, kind, proto)
        except OSError as e:
            out[name] = e.errno
            continue
        out[name] = ("created", err(lambda s=s: s.sendto(FORBIDDEN, (c["outside"], 0 if proto in (1, 58) else 9))))
    return out


@attack
def socket_options(c: dict[str, Any]) -> dict[str, Any]:
    """Options that would hide bytes from the parser."""
    def opt(level: int, name: int, value: Any) -> Any:
        s = socket.socket()
        return err(lambda: s.setsockopt(level, name, value) or "set")
    return {"fastopen_connect": opt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1),
            "repair": opt(socket.IPPROTO_TCP, TCP_REPAIR, 1),
            "ulp": opt(socket.IPPROTO_TCP, TCP_ULP, b"tls")}


@attack
def fast_open(c: dict[str, Any]) -> dict[str, Any]:
    """Fast Open data to the FHIR server: one byte, and a whole forbidden request."""
    a = addr(c["fhir"])
    out = {}
    for name, data in (("one_byte", b"G"), ("request", FORBIDDEN)):
        s = socket.socket()
        out[name] = err(lambda s=s, d=data: s.sendto(d, socket.MSG_FASTOPEN, a))
    return out


@attack
def listen_inbound(c: dict[str, Any]) -> dict[str, Any]:
    """A listener inside the replica: whoever connects from outside gets the secret."""
    srv = socket.create_server(("0.0.0.0", 0))
    print(json.dumps({"port": srv.getsockname()[1]}), flush=True)
    srv.settimeout(4)
    try:
        conn, peer = srv.accept()
    except socket.timeout:
        return {"accepted": False}
    return {"accepted": True, "sent": err(lambda: conn.send(FORBIDDEN))}


@attack
def listen_backlog0(c: dict[str, Any]) -> dict[str, Any]:
    """A listener with backlog 0: after the first SYN the kernel answers with SYN cookies, whose
    SYN-ACK leaves without an owning socket.  Whoever completes a handshake gets the secret."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    print(json.dumps({"port": srv.getsockname()[1]}), flush=True)
    srv.settimeout(3)
    sent = []
    try:
        while True:
            conn, _peer = srv.accept()
            sent.append(err(lambda: conn.send(FORBIDDEN)))
    except (socket.timeout, OSError):
        pass
    return {"accepted": len(sent), "sent": sent}


@attack
def routing_headers(c: dict[str, Any]) -> dict[str, Any]:
    """Options that send packets elsewhere than the connect hook saw: an IPv6 segment routing
    header, hop-by-hop and destination options, an IPv4 loose source route; then the same route
    as ancillary data of one UDP datagram to an allowed endpoint (no sticky option needed)."""
    out = {}
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    # SRH (type 4) with one segment, ::1
    srh = bytes([0, 2, 4, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, "::1")
    out["rthdr"] = err(lambda: v6.setsockopt(socket.IPPROTO_IPV6, 57, srh) or "set")
    pad = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # an options header with a PadN
    out["hopopts"] = err(lambda: v6.setsockopt(socket.IPPROTO_IPV6, 54, pad) or "set")
    out["dstopts"] = err(lambda: v6.setsockopt(socket.IPPROTO_IPV6, 59, pad) or "set")
    v4 = socket.socket()
    lsrr = bytes([1, 131, 7, 4]) + socket.inet_aton("127.0.0.2")  # NOP, LSRR via 127.0.0.2
    out["ip_options"] = err(lambda: v4.setsockopt(socket.IPPROTO_IP, 4, lsrr) or "set")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # per-datagram options: a source route, and harmless no-ops (which the network would deliver:
    # the packet-level check cannot tell options apart, and needs not)
    out["lsrr_cmsg"] = err(lambda: u.sendmsg([SECRET_DATAGRAM], [(socket.IPPROTO_IP, 7, lsrr)], 0, addr(c["lab4"])))
    out["nop_cmsg"] = err(lambda: u.sendmsg([SECRET_DATAGRAM], [(socket.IPPROTO_IP, 7, bytes([1, 1, 1, 1]))], 0,
                                           addr(c["lab4"])))
    out["plain_datagram"] = err(lambda: u.sendto(b"plain", addr(c["lab4"])))
    return out


SECRET_DATAGRAM = b"Patient/secret over a source route"


@attack
def socket_families(c: dict[str, Any]) -> dict[str, Any]:
    """Socket families no cgroup hook sees (vsock leaves the host), and io_uring."""
    out = {}
    for name, fam, kind in [("vsock", 40, socket.SOCK_STREAM), ("tipc", 30, socket.SOCK_RDM), ("rds", 21, socket.SOCK_SEQPACKET),
                            ("kcm", 41, socket.SOCK_DGRAM), ("smc", 43, socket.SOCK_STREAM), ("alg", 38, socket.SOCK_SEQPACKET),
                            ("packet", 17, socket.SOCK_DGRAM), ("unix", socket.AF_UNIX, socket.SOCK_STREAM),
                            ("netlink", 16, socket.SOCK_RAW)]:
        fd = libc.socket(fam, kind, 0)
        out[name] = "created" if fd >= 0 else ctypes.get_errno()
        if fd >= 0:
            os.close(fd)
    pair = (ctypes.c_int * 2)()
    out["socketpair_vsock"] = "created" if libc.socketpair(40, socket.SOCK_STREAM, 0, pair) == 0 else ctypes.get_errno()
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 4, params)
    out["io_uring"] = "created" if fd >= 0 else ctypes.get_errno()
    return out


@attack
def if_none_exist(c: dict[str, Any]) -> dict[str, Any]:
    """A conditional create: its If-None-Exist value is a search the server runs (200 for a
    match, 201 for none), with only create in the envelope."""
    body = b'{"resourceType":"Observation","status":"final","code":{"text":"probe"}}'
    s = socket.create_connection(addr(c["fhir"]), timeout=2)
    req = (b"POST /fhir/Observation HTTP/1.1\r\nHost: fhir\r\nContent-Type: application/fhir+json\r\n"
           b"If-None-Exist: subject:Patient.family=Secret\r\nContent-Length: " + str(len(body)).encode() +
           b"\r\n\r\n" + body)
    return {"conditional_create": err(lambda: s.send(req))}


@attack
def flood_then_forbidden(c: dict[str, Any]) -> dict[str, Any]:
    """Four processes flood the enforcer with cheap egress denials (UDP to new ports) while one
    forbidden FHIR request is sent in the middle: is it recorded, or only counted as lost?"""
    secs = float(c.get("seconds", 2.0))
    kids = []
    for _k in range(4):
        pid = os.fork()
        if pid == 0:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            n, t0 = 0, time.time()
            while time.time() - t0 < secs:
                try:
                    u.sendto(b"x", ("127.0.0.3", 20000 + n % 20000))
                except OSError:
                    pass
                n += 1
            os._exit(0)
        kids.append(pid)
    time.sleep(secs / 2)
    s = socket.create_connection(addr(c["fhir"]), timeout=2)
    res = err(lambda: s.send(FORBIDDEN))
    for p in kids:
        os.waitpid(p, 0)
    return {"forbidden": res}


def main() -> None:
    name, cfg = sys.argv[1], json.loads(sys.argv[2])
    try:
        res = ATTACKS[name](cfg)
    except Exception as e:  # noqa: BLE001 - the test wants to see what broke
        res = {"crash": f"{type(e).__name__}: {e}"}
    print(json.dumps({"uid": os.getuid(), **res}, default=str), flush=True)
    time.sleep(float(cfg.get("linger", 0.5)))  # buffered bytes go on leaving after this


if __name__ == "__main__":
    main()
