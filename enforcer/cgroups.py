"""cgroup v2 handling for the kernel enforcer: one cgroup per agent replica under one root.

``/sys/fs/cgroup/unified/paritybed/<agent>-<replica>`` on this machine kind (hybrid hierarchy),
``/sys/fs/cgroup/paritybed/...`` on a pure v2 system.  The BPF programs are attached at the
root so every replica cgroup inherits them; a replica is identified in the kernel by its cgroup
id, which is the inode number of its directory.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.enforcer import seccomp


def cgroup2_mount() -> Path:
    """Where the cgroup v2 hierarchy is mounted (the unified one in a hybrid set-up)."""
    found = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                found.append(Path(parts[1]))
    if not found:
        raise EnvironmentProblem("no cgroup v2 hierarchy is mounted", hint="mount -t cgroup2 none /sys/fs/cgroup/unified")
    return sorted(found, key=lambda p: (p != Path("/sys/fs/cgroup/unified"), str(p)))[0]


def replica_name(agent: str, replica: int) -> str:
    if not agent or "/" in agent or agent.startswith(".") or any(c.isspace() for c in agent):
        raise InputError(f"agent name {agent!r} cannot name a cgroup (no slashes, spaces or leading dot)")
    return f"{agent}-{int(replica)}"


def parse_replica_name(name: str) -> tuple[str, int] | None:
    agent, sep, rep = name.rpartition("-")
    return (agent, int(rep)) if sep and agent and rep.isdigit() else None


def cgroup_id(path: Path) -> int:
    return os.stat(path).st_ino


class CgroupTree:
    """The paritybed root cgroup and its replica children."""

    def __init__(self, name: str = "paritybed") -> None:
        self.root = cgroup2_mount() / name

    def ensure(self) -> Path:
        self.root.mkdir(exist_ok=True)
        return self.root

    def replica_dir(self, agent: str, replica: int) -> Path:
        return self.root / replica_name(agent, replica)

    def create(self, agent: str, replica: int) -> Path:
        d = self.replica_dir(agent, replica)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def children(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    @staticmethod
    def pids(path: Path) -> list[int]:
        try:
            return [int(x) for x in (path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    @staticmethod
    def kill(path: Path) -> None:
        """Kill every process in the cgroup (cgroup.kill; SIGKILL each pid where it is missing)."""
        ck = path / "cgroup.kill"
        if ck.exists():
            ck.write_text("1")
            return
        for pid in CgroupTree.pids(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self, path: Path, timeout: float = 5.0) -> None:
        """Kill what runs in a cgroup, wait until it is empty, and remove it."""
        if not path.exists():
            return
        for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
            self.remove(child, timeout)
        deadline = time.monotonic() + timeout
        while True:
            self.kill(path)
            try:
                path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(f"cgroup {path} still has processes after {timeout:.0f} s: {self.pids(path)}")
                time.sleep(0.02)


PR_SET_NO_NEW_PRIVS = 38


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def processes_of(uid: int) -> list[tuple[int, str, str]]:
    """(pid, command name, cgroup v2 path) of every process whose real or effective uid is uid."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
            cgroup = (d / "cgroup").read_text()
        except OSError:
            continue  # gone meanwhile
        uids = next((line.split()[1:3] for line in status.splitlines() if line.startswith("Uid:")), [])
        if str(uid) in uids:
            comm = next((line.split(None, 1)[1] for line in status.splitlines() if line.startswith("Name:")), "?")
            v2 = next((line[3:] for line in cgroup.splitlines() if line.startswith("0::")), "?")
            found.append((int(d.name), comm.strip(), v2))
    return found


def spawn_in(cgroup: Path, argv: list[str], *, confine: bool = True, **popen_kw: Any) -> subprocess.Popen:
    """Start a process inside a cgroup: it moves itself there between fork and exec, so every
    socket it (or a child) ever opens belongs to the cgroup.

    ``user=``/``group=`` drop privileges *after* the move (Popen would drop them before its
    ``preexec_fn``, and an unprivileged process may not write ``cgroup.procs``); supplementary
    groups are cleared then, so the agent keeps none of root's.  Every agent process runs with
    ``no_new_privs``: a set-user-ID or file-capability binary (``ping`` with CAP_NET_RAW, ``sudo``)
    gives it nothing, and (``confine``, the default) under the seccomp filter of
    enforcer/seccomp.py: no socket family the kernel programs cannot see, no io_uring."""
    procs = str(cgroup / "cgroup.procs")
    filt = seccomp.program() if confine else None
    user_fn: Callable[[], Any] | None = popen_kw.pop("preexec_fn", None)
    user, group = popen_kw.pop("user", None), popen_kw.pop("group", None)
    uid = user if user is None or isinstance(user, int) else pwd.getpwnam(user).pw_uid
    gid = group if group is None or isinstance(group, int) else grp.getgrnam(group).gr_gid

    def enter() -> None:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
        if gid is not None or uid is not None:
            os.setgroups([])
        if gid is not None:
            os.setresgid(gid, gid, gid)
        if uid is not None:
            os.setresuid(uid, uid, uid)
        if _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if filt is not None:
            seccomp.install(filt)
        if user_fn is not None:
            user_fn()

    return subprocess.Popen(argv, preexec_fn=enter, **popen_kw)
