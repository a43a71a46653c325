"""Compile, load, attach and pin the kernel programs (BCC), and remove them again.

Loading is also adoption: the maps are declared pinned, so BCC reuses the ones a previous
control plane left under the pin directory (with all their state: replicas, token buckets,
quarantines, lanes, the ring buffer and its unread events).  New programs then *replace* the
running ones in place: tail-call slots first (a message being parsed by an old entry program
continues in the new parser), then the cgroup attachments (a non-multi attach replaces
atomically) and the sk_msg verdict on the socket hash.  There is no moment without a program.
"""

from __future__ import annotations

import ctypes as ct
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paritybed.core.errors import EnvironmentProblem
from paritybed.enforcer import bpfsys, btf, kernel_abi as abi, rootdir

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
SOURCE = BPF_DIR / "paritybed.c"
# BPF_ATTACH_TYPE values (uapi/linux/bpf.h)
INET_INGRESS, INET_EGRESS, INET_SOCK_CREATE, INET4_CONNECT, INET6_CONNECT, UDP4_SENDMSG, UDP6_SENDMSG = 0, 1, 2, 10, 11, 14, 15
SOCK_OPS, SK_MSG_VERDICT, SETSOCKOPT = 3, 7, 22
# BPF_PROG_TYPE values for the programs that are not cgroup/sock_addr ones
PROG_CGROUP_SKB, PROG_CGROUP_SOCK, PROG_SOCK_OPS, PROG_CGROUP_SOCKOPT = 8, 9, 13, 25
#: cgroup programs: name -> attach type
CGROUP_PROGS = {"pb_connect4": INET4_CONNECT, "pb_connect6": INET6_CONNECT, "pb_sendmsg4": UDP4_SENDMSG,
                "pb_sendmsg6": UDP6_SENDMSG, "pb_sockops": SOCK_OPS, "pb_unseen": INET_EGRESS, "pb_ingress": INET_INGRESS,
                "pb_sock_create": INET_SOCK_CREATE, "pb_setsockopt": SETSOCKOPT}
#: program type by attach type (the rest are cgroup/sock_addr programs)
PROG_TYPES = {SOCK_OPS: PROG_SOCK_OPS, INET_EGRESS: PROG_CGROUP_SKB, INET_INGRESS: PROG_CGROUP_SKB, INET_SOCK_CREATE: PROG_CGROUP_SOCK,
              SETSOCKOPT: PROG_CGROUP_SOCKOPT}
MSG_PROGS = ("pb_sk_msg", "pb_parse_line", "pb_parse_head", "pb_decide")  # entry, then tail calls 0, 1, 2
#: pinned maps whose key/value sizes must match this version's structures (else: --cleanup)
MAP_SIZES = {"knobs": (4, ct.sizeof(abi.Knobs)), "agents": (4, ct.sizeof(abi.Agent)), "agent_live": (4, 4),
             "replicas": (4, ct.sizeof(abi.Replica)), "replica_ids": (8, 4), "releases": (4, 8), "lanebits": (ct.sizeof(abi.ClassKey), ct.sizeof(abi.Pairs)),
             "contexts": (ct.sizeof(abi.CtxKey), ct.sizeof(abi.Ctx)), "tabs": (4, ct.sizeof(abi.Tables)),
             "lanes": (ct.sizeof(abi.LaneKey), ct.sizeof(abi.Lane)),
             "registry": (ct.sizeof(abi.AddrKey), ct.sizeof(abi.Endpoint)),
             "ctab": (4, ct.sizeof(abi.CTab)), "ntab": (4, ct.sizeof(abi.NTab)),
             "sockstate": (4, ct.sizeof(abi.Sock)), "lost_by": (ct.sizeof(abi.LostKey), 8)}
MAP_NAMES = ("knobs", "ctab", "agents", "agent_live", "replicas", "replica_ids", "releases", "lanebits", "lanes", "contexts", "seenpat", "registry", "envelope", "seen",
             "servers", "vclock", "tabs",
             "ntab", "counters", "lost", "lost_by", "fhir_socks", "sockstate", "events", "egress_events", "jmp")


@dataclass
class Loaded:
    """A loaded program set: the BCC module (keeps program fds open) and the map fds."""

    bpf: Any
    maps: dict[str, int]
    progs: dict[str, int]
    adopted: bool
    keep: list[Any] = field(default_factory=list)


#: the root-only folder for every control plane's pins (/sys/fs/bpf itself is world-writable)
PIN_ROOT = Path("/sys/fs/bpf/paritybed")


def pin_dir(name: str) -> Path:
    return PIN_ROOT / name


def pinned_state_exists(name: str) -> bool:
    return (pin_dir(name) / "replicas").exists()


def _check_pins(pins: Path) -> None:
    for m, (ks, vs) in MAP_SIZES.items():
        p = pins / m
        if not p.exists():
            continue
        fd = bpfsys.obj_get(p)
        try:
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        if (info.key_size, info.value_size) != (ks, vs):
            raise EnvironmentProblem(
                f"pinned map {p} has key/value sizes {info.key_size}/{info.value_size}, this version expects {ks}/{vs}",
                hint="state left by another paritybed version: run `paritybed enforce --cleanup`")


def load(name: str, cgroup_root: Path, *, rb_pages: int = 256) -> Loaded:
    """Compile and load the programs, reuse or create the pinned maps, attach at cgroup_root."""
    from bcc import BPF, lib  # imported here: BCC is only needed on the kernel path

    bpfsys.ensure_bpffs()
    pins = rootdir.secure_dir(pin_dir(name), parents=(PIN_ROOT,))
    rootdir.check_entries(pins)
    adopted = pinned_state_exists(name)
    _check_pins(pins)
    tcp_sock = btf.tcp_sock_cflags()
    cflags = [f"-I{BPF_DIR}", f'-DPB_PIN_DIR="{pins}"', f"-DPB_RB_PAGES={int(rb_pages)}", "-Wno-unused-function",
              *tcp_sock]
    try:
        b = BPF(src_file=str(SOURCE).encode(), cflags=cflags)
        # sock_addr and sockopt programs need their expected attach type at load time
        fns = {n: b.load_func(n.encode(), PROG_TYPES.get(t, BPF.CGROUP_SOCK_ADDR), None,
                              t if t not in (SOCK_OPS, INET_EGRESS, INET_INGRESS, INET_SOCK_CREATE) else -1)
               for n, t in CGROUP_PROGS.items()}
        fns.update({n: b.load_func(n.encode(), BPF.SK_MSG) for n in MSG_PROGS})
    except Exception as e:  # noqa: BLE001 - BCC raises bare Exception for compile/verifier errors
        raise EnvironmentProblem(f"could not load the BPF programs: {e}") from None
    maps = {m: lib.bpf_table_fd(b.module, m.encode()) for m in MAP_NAMES}
    # 1. tail-call slots (an old entry program already jumps into the new parser)
    for slot, prog in enumerate(MSG_PROGS[1:]):
        k, v = ct.c_uint32(slot), ct.c_uint32(fns[prog].fd)
        if lib.bpf_update_elem(maps["jmp"], ct.byref(k), ct.byref(v), 0) != 0:
            raise EnvironmentProblem(f"could not install tail call {prog}: {os.strerror(ct.get_errno())}")
    # 2. attachments: replacing the running programs in place
    cg = os.open(cgroup_root, os.O_RDONLY)
    try:
        for n, t in CGROUP_PROGS.items():
            BPF.attach_func(fns[n], cg, t)
    finally:
        os.close(cg)
    BPF.attach_func(fns["pb_sk_msg"], maps["fhir_socks"], SK_MSG_VERDICT)
    # 3. pins for the programs (cleanup from another process detaches through them)
    for n, fn in fns.items():
        p = pins / f"prog_{n}"
        if p.exists():
            p.unlink()
        bpfsys.obj_pin(fn.fd, p)
    return Loaded(b, maps, {n: fn.fd for n, fn in fns.items()}, adopted)


def cleanup(name: str, cgroup_root: Path, *, kill_timeout: float = 5.0) -> list[str]:
    """Detach everything, kill and remove the replica cgroups, remove the pins.  Idempotent.

    Works from any process (no compilation): pinned programs give the fds to detach; programs
    attached at the root whose pins are gone are found by querying the cgroup."""
    from paritybed.enforcer.cgroups import CgroupTree

    done: list[str] = []
    pins = pin_dir(name)
    if cgroup_root.is_dir():
        cg = os.open(cgroup_root, os.O_RDONLY)
        try:
            for t in CGROUP_PROGS.values():
                for pid in bpfsys.prog_query(cg, t):
                    fd = bpfsys.prog_fd_by_id(pid)
                    try:
                        if bpfsys.prog_detach(cg, fd, t):
                            done.append(f"detached program {pid}")
                    finally:
                        os.close(fd)
        finally:
            os.close(cg)
        tree = CgroupTree.__new__(CgroupTree)
        tree.root = cgroup_root
        for child in tree.children():
            tree.remove(child, kill_timeout)
            done.append(f"removed cgroup {child}")
        tree.remove(cgroup_root, kill_timeout)
        done.append(f"removed cgroup {cgroup_root}")
    if pins.exists():
        rootdir.check_root_only(PIN_ROOT)  # never follow a planted folder into someone else's pins
        rootdir.check_root_only(pins)
        shutil.rmtree(pins)
        done.append(f"removed pins {pins}")
    return done
