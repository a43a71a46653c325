"""The few bpf(2) commands BCC 0.26's Python module does not expose: pin, get a pinned object,
object info (map sizes, program run-time statistics), detach and query cgroup attachments; and
`ReplicaClock`, one map update without importing BCC.

Used by the control plane (pinning, adoption, cleanup without compiling anything), by the
benchmark (per-program run_time_ns / run_cnt with kernel.bpf_stats_enabled=1) and by live mode's
replica worker (its own virtual clock).
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from pathlib import Path

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long
SYS_BPF = 321  # x86_64
BPF_MAP_UPDATE_ELEM = 2
BPF_OBJ_PIN, BPF_OBJ_GET, BPF_PROG_ATTACH, BPF_PROG_DETACH = 6, 7, 8, 9
BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_QUERY = 13, 15, 16

u32, u64 = ct.c_uint32, ct.c_uint64


class _ObjAttr(ct.Structure):
    _fields_ = [("pathname", u64), ("bpf_fd", u32), ("file_flags", u32), ("path_fd", ct.c_int32), ("pad", u32)]


class _AttachAttr(ct.Structure):
    _fields_ = [("target_fd", u32), ("attach_bpf_fd", u32), ("attach_type", u32), ("attach_flags", u32),
                ("replace_bpf_fd", u32), ("pad", u32 * 3)]


class _ElemAttr(ct.Structure):
    _fields_ = [("map_fd", u32), ("pad", u32), ("key", u64), ("value", u64), ("flags", u64)]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", u32), ("info_len", u32), ("info", u64)]


class _QueryAttr(ct.Structure):
    _fields_ = [("target_fd", u32), ("attach_type", u32), ("query_flags", u32), ("attach_flags", u32),
                ("prog_ids", u64), ("prog_cnt", u32), ("pad", u32 * 9)]


class ProgInfo(ct.Structure):
    """struct bpf_prog_info (uapi/linux/bpf.h), up to recursion_misses."""

    _fields_ = [("type", u32), ("id", u32), ("tag", ct.c_uint8 * 8), ("jited_prog_len", u32),
                ("xlated_prog_len", u32), ("jited_prog_insns", u64), ("xlated_prog_insns", u64),
                ("load_time", u64), ("created_by_uid", u32), ("nr_map_ids", u32), ("map_ids", u64),
                ("name", ct.c_char * 16), ("ifindex", u32), ("gpl_compatible", u32), ("netns_dev", u64),
                ("netns_ino", u64), ("nr_jited_ksyms", u32), ("nr_jited_func_lens", u32), ("jited_ksyms", u64),
                ("jited_func_lens", u64), ("btf_id", u32), ("func_info_rec_size", u32), ("func_info", u64),
                ("nr_func_info", u32), ("nr_line_info", u32), ("line_info", u64), ("jited_line_info", u64),
                ("nr_jited_line_info", u32), ("line_info_rec_size", u32), ("jited_line_info_rec_size", u32),
                ("nr_prog_tags", u32), ("prog_tags", u64), ("run_time_ns", u64), ("run_cnt", u64),
                ("recursion_misses", u64), ("verified_insns", u32), ("pad", u32)]


class MapInfo(ct.Structure):
    _fields_ = [("type", u32), ("id", u32), ("key_size", u32), ("value_size", u32), ("max_entries", u32),
                ("map_flags", u32), ("name", ct.c_char * 16), ("pad", u64 * 8)]


def _bpf(cmd: int, attr: ct.Structure) -> int:
    r = _libc.syscall(SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if r < 0:
        e = ct.get_errno()
        raise OSError(e, f"bpf({cmd}): {os.strerror(e)}")
    return r


def obj_pin(fd: int, path: str | Path) -> None:
    p = ct.create_string_buffer(str(path).encode())
    _bpf(BPF_OBJ_PIN, _ObjAttr(pathname=ct.addressof(p), bpf_fd=fd))


def obj_get(path: str | Path) -> int:
    """An fd for a pinned map or program (the caller closes it)."""
    p = ct.create_string_buffer(str(path).encode())
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=ct.addressof(p)))


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    return info


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    return info


def prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> bool:
    """Detach one program from a cgroup (or a sockmap); False if it was not attached."""
    try:
        _bpf(BPF_PROG_DETACH, _AttachAttr(target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type))
        return True
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINVAL, errno.EBADF):
            return False
        raise


def prog_query(target_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to a cgroup for one attach type."""
    ids = (u32 * 64)()
    a = _QueryAttr(target_fd=target_fd, attach_type=attach_type, prog_ids=ct.addressof(ids), prog_cnt=64)
    _bpf(BPF_PROG_QUERY, a)
    return list(ids[: a.prog_cnt])


def ensure_bpffs(path: str = "/sys/fs/bpf") -> None:
    """Mount the BPF filesystem where pins live if nothing is mounted there yet."""
    with open("/proc/self/mounts", encoding="utf-8") as f:
        if any(line.split()[1] == path and line.split()[2] == "bpf" for line in f):
            return
    os.makedirs(path, exist_ok=True)
    if _libc.mount(b"bpf", path.encode(), b"bpf", 0, None) != 0:
        e = ct.get_errno()
        raise OSError(e, f"mount -t bpf bpf {path}: {os.strerror(e)}")


def set_stats(enabled: bool) -> bool:
    """Turn kernel.bpf_stats_enabled on/off (run_time_ns accounting); returns the old value."""
    p = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = p.read_text().strip() == "1"
    p.write_text("1\n" if enabled else "0\n")
    return old


class _IdAttr(ct.Structure):
    _fields_ = [("id", u32), ("next_id", u32), ("open_flags", u32)]


def prog_fd_by_id(prog_id: int) -> int:
    """An fd for a loaded program by its id (BPF_PROG_GET_FD_BY_ID)."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _IdAttr(id=prog_id))


class ReplicaClock:
    """One replica's entry in the kernel's ``vclock`` map, set through an inherited map fd.

    The control plane hands the fd (`KernelEnforcer.replica_clock`) to the process that replays
    the replica's schedule on the virtual clock (live mode's worker), which sets the replica's
    simulated time itself right before each row's send or connect: the kernel then decides the
    row at that time, with no round trip to the control plane per row.  A map update through an
    fd needs no capability (checked on this kernel with ``unprivileged_bpf_disabled=2``)."""

    def __init__(self, fd: int, cgroup_id: int) -> None:
        self._key, self._value = ct.c_uint64(cgroup_id), ct.c_int64(0)
        self._attr = _ElemAttr(map_fd=fd, key=ct.addressof(self._key), value=ct.addressof(self._value))
        self._ref, self._size = ct.byref(self._attr), ct.sizeof(self._attr)

    def set(self, t_ns: int) -> None:
        self._value.value = t_ns
        if _libc.syscall(SYS_BPF, BPF_MAP_UPDATE_ELEM, self._ref, self._size) < 0:
            e = ct.get_errno()
            raise OSError(e, f"setting the replica's virtual clock: {os.strerror(e)}")
