"""Member offsets of kernel structures, read from the running kernel's BTF.

The kernel programs read two fields of ``struct tcp_sock`` (``write_seq``, where the next byte
queued on a connection goes, and ``fastopen_req``, set while a connect carries Fast Open data).
BCC compiles against the packaged kernel headers (Debian's 6.1 here), whose layout of
``tcp_sock`` is not the running kernel's (6.8 reordered it), and BCC does no CO-RE relocation; so
the loader reads the offsets from ``/sys/kernel/btf/vmlinux`` (the BTF format of
Documentation/bpf/btf.rst: a header, the type section, the string section) and passes them to
the compiler.  The verifier then checks every such load against the same BTF: a wrong offset is
a load error, never a silent misread.
"""

from __future__ import annotations

import struct
from pathlib import Path

from paritybed.core.errors import EnvironmentProblem

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
_STRUCT, _UNION = 4, 5
#: bytes that follow the 12-byte common part of a type, by kind (those with vlen entries below)
_FIXED = {1: 4, 2: 0, 3: 12, 7: 0, 8: 0, 9: 0, 10: 0, 11: 0, 12: 0, 14: 4, 16: 0, 17: 4, 18: 0}
_PER_VLEN = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


def member_offsets(struct_name: str, members: set[str], path: Path = VMLINUX) -> dict[str, int]:
    """Byte offsets of ``members`` (direct members) of ``struct struct_name`` in the BTF at path."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EnvironmentProblem(f"cannot read the kernel's BTF at {path}: {e.strerror}",
                                 hint="the kernel needs CONFIG_DEBUG_INFO_BTF") from None
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", data, 0)
    if magic != _MAGIC:
        raise EnvironmentProblem(f"{path} is not BTF (magic {magic:#x})")
    strings = hdr_len + str_off

    def name(off: int) -> str:
        start = strings + off
        return data[start:data.index(b"\0", start)].decode()

    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        pos += 12
        if kind == _STRUCT and name(name_off) == struct_name:
            found = {}
            for i in range(vlen):
                m_name, _m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                n = name(m_name)
                if n in members:
                    found[n] = (m_off & 0xFFFFFF if kflag else m_off) // 8
            missing = members - found.keys()
            if missing:
                raise EnvironmentProblem(f"struct {struct_name} in {path} has no member {', '.join(sorted(missing))}")
            return found
        if kind in _PER_VLEN:
            pos += _PER_VLEN[kind] * vlen
        elif kind in _FIXED:
            pos += _FIXED[kind]
        else:
            raise EnvironmentProblem(f"unknown BTF kind {kind} in {path}")
    raise EnvironmentProblem(f"no struct {struct_name} in {path}")


def tcp_sock_cflags() -> list[str]:
    """The -D flags bpf/paritybed.c needs for the tcp_sock fields it reads."""
    off = member_offsets("tcp_sock", {"write_seq", "fastopen_req"})
    return [f"-DPB_OFF_WRITE_SEQ={off['write_seq']}", f"-DPB_OFF_FASTOPEN_REQ={off['fastopen_req']}"]
