"""The seccomp filter of agent processes (enforcer/seccomp.py): socket families no cgroup hook
sees are refused, the ones an agent needs are not, io_uring is refused.  Needs no root: a process
may install a filter on itself once it has no_new_privs."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from paritybed.enforcer import seccomp

CHILD = r"""
import ctypes, json, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def sock(fam, kind):
    fd = libc.socket(fam, kind, 0)
    if fd < 0:
        return ctypes.get_errno()
    libc.close(fd)
    return "ok"
out = {"vsock": sock(40, 1), "tipc": sock(30, 4), "rds": sock(21, 5), "alg": sock(38, 5),
       "unix": sock(1, 1), "inet": sock(2, 1), "inet6": sock(10, 2), "netlink": sock(16, 3)}
pair = (ctypes.c_int * 2)()
out["socketpair_unix"] = "ok" if libc.socketpair(1, 1, 0, pair) == 0 else ctypes.get_errno()
out["socketpair_vsock"] = "ok" if libc.socketpair(40, 1, 0, pair) == 0 else ctypes.get_errno()
buf = ctypes.create_string_buffer(120)
out["io_uring"] = "ok" if libc.syscall(425, 4, buf) >= 0 else ctypes.get_errno()
print(json.dumps(out))
"""


def _confined() -> None:
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "no_new_privs")
    seccomp.install(seccomp.program())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="filter tables for x86_64/aarch64")
def test_the_filter_refuses_unseen_families_and_io_uring() -> None:
    free = json.loads(subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout)
    p = subprocess.run([sys.executable, "-c", CHILD], preexec_fn=_confined, capture_output=True, text=True, check=True)
    got = json.loads(p.stdout)
    # the filter is what refuses: unconfined, some of these exist on this kernel (here vsock, io_uring)
    assert any(free[k] == "ok" for k in ("vsock", "tipc", "rds", "alg", "io_uring")), free
    for fam in ("vsock", "tipc", "rds", "alg", "socketpair_vsock"):
        assert got[fam] == 97, (fam, got[fam])  # EAFNOSUPPORT, as from a kernel without the family
    for fam in ("unix", "inet", "inet6", "netlink", "socketpair_unix"):
        assert got[fam] == "ok", (fam, got[fam])
    assert got["io_uring"] == 1  # EPERM


def test_an_unknown_architecture_is_an_error_not_an_open_door() -> None:
    with pytest.raises(OSError, match="no seccomp filter for architecture"):
        seccomp.program("riscv64")
