"""The seccomp filter every agent process runs under: the socket kinds the kernel programs cannot
see are refused before they exist.

The cgroup hooks (bpf/paritybed.c) see inet sockets only.  An agent could otherwise open a socket
of another family that leaves the host without meeting any of them: AF_VSOCK (to the hypervisor
and other guests), AF_TIPC, AF_RDS, AF_SMC, AF_KCM, AF_BLUETOOTH...  The filter allows the
families an agent needs (AF_UNIX for local IPC, AF_INET/AF_INET6 which the kernel programs
enforce, AF_NETLINK which the C library's resolver uses to list addresses) and refuses every
other with EAFNOSUPPORT, the error a kernel without that family gives.  It also refuses io_uring
(EPERM, as Docker's default profile does): io_uring operations are not system calls, so no
seccomp filter could check the family of a socket created by IORING_OP_SOCKET.  The kernel
programs hold for io_uring sends on their own (tests/test_kernel_adversary.py runs that attack
without this filter too); the filter is a second layer, not the enforcement.

A classic BPF program, installed after no_new_privs in the forked child before exec; it is
inherited by every descendant and cannot be removed.  Native x86_64 and aarch64; on x86_64 the
x32 ABI is refused and the i386 compat ABI has its socket calls (socketcall included, whose
arguments a filter cannot read) refused.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64 = 0xC000003E, 0x40000003, 0xC00000B7
#: address families an agent keeps: AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
FAMILIES = (1, 2, 10, 16)
#: (socket, socketpair, other socket-creating calls refused outright, io_uring setup/enter/register)
_SYSCALLS = {
    "x86_64": (41, 53, (), (425, 426, 427)),
    "aarch64": (198, 199, (), (425, 426, 427)),
    "i386": (359, 360, (102,), (425, 426, 427)),  # socketcall(2) multiplexes with arguments in memory
}
_NATIVE = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}

# classic BPF opcodes
LD_W_ABS, JEQ_K, JGE_K, RET_K = 0x20, 0x15, 0x35, 0x06


def _ins(code: int, jt: int = 0, jf: int = 0, k: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _arch_block(calls: tuple[int, int, tuple[int, ...], tuple[int, ...]], x32: bool) -> list[tuple]:
    """Instructions for one ABI, as (code, jt, jf, k) with symbolic jumps resolved by _assemble."""
    sock, pair, banned, uring = calls
    out: list[tuple] = [(LD_W_ABS, 0, 0, 0)]  # seccomp_data.nr
    if x32:
        out.append((JGE_K, "deny_enosys", None, 0x40000000))
    out += [(JEQ_K, "family", None, sock), (JEQ_K, "family", None, pair)]
    out += [(JEQ_K, "deny_eperm", None, n) for n in (*banned, *uring)]
    out.append((RET_K, 0, 0, RET_ALLOW))
    return out


def _assemble(blocks: list[tuple[str, list[tuple]]]) -> bytes:
    """Lay the labelled blocks out and turn symbolic jump targets into offsets."""
    tail = {"family": [(LD_W_ABS, 0, 0, 16)]  # args[0], its low 32 bits (little-endian)
            + [(JEQ_K, "allow", None, f) for f in FAMILIES]
            + [(RET_K, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT)],
            "allow": [(RET_K, 0, 0, RET_ALLOW)],
            "deny_eperm": [(RET_K, 0, 0, RET_ERRNO | errno.EPERM)],
            "deny_enosys": [(RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)]}
    layout = [*blocks, *tail.items()]
    where, n = {}, 0
    for label, ins in layout:
        where[label] = n
        n += len(ins)
    prog, pc = b"", 0
    for _label, ins in layout:
        for code, jt, jf, k in ins:
            rel = lambda t: 0 if t is None else t if isinstance(t, int) else where[t] - pc - 1  # noqa: E731
            prog += _ins(code, rel(jt), rel(jf), k)
            pc += 1
    return prog


def program(machine: str | None = None) -> bytes:
    """The filter for this machine's architecture (raises OSError on one it does not know)."""
    machine = machine or platform.machine()
    if machine not in _NATIVE:
        raise OSError(errno.ENOSYS, f"no seccomp filter for architecture {machine}")
    head = [(LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
            (JEQ_K, "native", None, _NATIVE[machine])]
    if machine == "x86_64":
        head.append((JEQ_K, "i386", None, AUDIT_ARCH_I386))
    head.append((RET_K, 0, 0, RET_ERRNO | errno.ENOSYS))  # an ABI we have no table for
    blocks = [("head", head), ("native", _arch_block(_SYSCALLS[machine], x32=machine == "x86_64"))]
    if machine == "x86_64":
        blocks.append(("i386", _arch_block(_SYSCALLS["i386"], x32=False)))
    return _assemble(blocks)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(prog: bytes) -> None:
    """Install the filter on the calling thread (no_new_privs must be set already)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_SECCOMP): {errno.errorcode.get(e, e)}")
