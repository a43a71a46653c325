"""Where a sk_msg decision's time goes, by line of bpf/ source: ``perf`` samples in the JIT-compiled
programs, mapped to source lines through the programs' BTF line info.

The kernel's statistics (bench_enforcement.py) give one figure per decision, with the tail-called
programs folded into the entry program's; this gives the split between the entry program (the
request line and the header section are parsed there), ``pb_decide`` and the helpers they call,
and the lines inside each.  It drives one head of bench_enforcement.BOUND_HEADS (a context-bound
agent, the live driver's head) from a client on one CPU (bench_enforcement._OneCpu) and samples
that CPU only.  A line's share counts the samples whose address falls in the machine code the
JIT emitted for it (inlined code is attributed to the line it came from; code without a line,
such as the prologue or what the verifier inserts, is line 0).  Lines are shown as file:line with
the line's text: parser.h's are the file's own; ``main.c`` is bpf/paritybed.c as BCC rewrote it
(its map macros expanded), so its numbers run ahead of the file's and the text is what to search.

Needs root, BPF and ``perf`` (Debian: linux-perf).  A developer's tool, not part of `make bench`:

    python benchmarks/profile_sk_msg.py [--head 1] [--requests 300000] [--top 30]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import ctypes as ct
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_enforcement as be  # noqa: E402 - the benchmark's own enforcer, heads and client

BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_GET_FD_BY_ID = 19
PROGS = ("pb_sk_msg", "pb_parse_line", "pb_parse_head", "pb_decide")


class _IdAttr(ct.Structure):
    _fields_ = [("id", ct.c_uint32), ("next_id", ct.c_uint32), ("open_flags", ct.c_uint32), ("pad", ct.c_uint32 * 5)]


class _BtfInfo(ct.Structure):
    _fields_ = [("btf", ct.c_uint64), ("btf_size", ct.c_uint32), ("id", ct.c_uint32), ("name", ct.c_uint64),
                ("name_len", ct.c_uint32), ("kernel_btf", ct.c_uint32)]


def _info(fd: int, info: ct.Structure) -> None:
    from paritybed.enforcer import bpfsys

    bpfsys._bpf(BPF_OBJ_GET_INFO_BY_FD, bpfsys._InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)))


def line_map(fd: int) -> list[tuple[int, str, str]]:
    """(kernel address of the JIT code, source file:line, source text) of a loaded program, by address."""
    from paritybed.enforcer import bpfsys

    a = bpfsys.ProgInfo()
    _info(fd, a)
    nl, njl, lrs, jrs = a.nr_line_info, a.nr_jited_line_info, a.line_info_rec_size, a.jited_line_info_rec_size
    lbuf, jbuf = ct.create_string_buffer(nl * lrs), ct.create_string_buffer(njl * jrs)
    b = bpfsys.ProgInfo(nr_line_info=nl, line_info_rec_size=lrs, line_info=ct.addressof(lbuf),
                        nr_jited_line_info=njl, jited_line_info_rec_size=jrs, jited_line_info=ct.addressof(jbuf))
    _info(fd, b)
    btf_fd = bpfsys._bpf(BPF_BTF_GET_FD_BY_ID, _IdAttr(id=a.btf_id))
    try:
        size = _BtfInfo()
        _info(btf_fd, size)
        data = ct.create_string_buffer(size.btf_size)
        _info(btf_fd, _BtfInfo(btf=ct.addressof(data), btf_size=size.btf_size))
    finally:
        os.close(btf_fd)
    raw = data.raw
    hdr_len, _toff, _tlen, soff, slen = struct.unpack_from("<IIIII", raw, 4)
    strings = raw[hdr_len + soff:hdr_len + soff + slen]

    def text(off: int) -> str:
        return strings[off:strings.find(b"\0", off)].decode(errors="replace").strip()

    out = []
    for i in range(min(nl, njl)):
        _insn, file_off, line_off, line_col = struct.unpack_from("<IIII", lbuf.raw, i * lrs)
        (addr,) = struct.unpack_from("<Q", jbuf.raw, i * jrs)
        out.append((addr, f"{Path(text(file_off)).name}:{line_col >> 10}", text(line_off)))
    return sorted(out)


def profile(head_index: int, requests: int) -> tuple[float, collections.Counter, dict[str, collections.Counter]]:
    """ns per decision (kernel statistics, under perf), samples by symbol, samples by line per program."""
    from paritybed.enforcer import bpfsys
    from paritybed.enforcer.kernel import cleanup

    tmp = Path(tempfile.mkdtemp(prefix="pb-profile-"))
    data = tmp / "perf.data"
    t = be._Trivial()
    cleanup(be.NAME)
    try:
        ke = be._enforcer(tmp, t.port, bound=True)
        stats_before = bpfsys.set_stats(True)
        try:
            with be._OneCpu() as cpu:
                stdin = json.dumps([be.bound_head(be.BOUND_HEADS[head_index][1], t.port)]) + "\n"
                be._batches(ke, "pb_sk_msg", "count", t.port, "1000", stdin, 2)  # warm
                perf = subprocess.Popen(["perf", "record", "-q", "-C", str(cpu.cpu), "-e", "cycles", "-F", "10000",
                                         "-o", str(data)], stderr=subprocess.DEVNULL)
                ns = statistics.median(be._batches(ke, "pb_sk_msg", "count", t.port, str(requests), stdin, 1))
                perf.send_signal(2)
                perf.wait()
            maps = {p: line_map(ke._loaded.progs[p]) for p in PROGS}
        finally:
            bpfsys.set_stats(stats_before)
            ke.close()
    finally:
        t.sink.close()
        cleanup(be.NAME)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"], capture_output=True, text=True,
                            check=True).stdout
    shutil.rmtree(tmp, ignore_errors=True)
    addrs = {p: [a for a, _, _ in maps[p]] for p in PROGS}
    by_sym: collections.Counter = collections.Counter()
    by_line: dict[str, collections.Counter] = {p: collections.Counter() for p in PROGS}
    for ln in script.splitlines():
        parts = ln.split()
        if len(parts) < 2:
            continue
        ip, sym = int(parts[0], 16), parts[1]
        prog = next((p for p in PROGS if sym.startswith("bpf_prog_") and sym.endswith("_" + p)), None)
        by_sym[prog or sym] += 1
        if prog:
            i = bisect.bisect_right(addrs[prog], ip) - 1
            by_line[prog][maps[prog][i][1:] if i >= 0 else ("-", "")] += 1
    return ns, by_sym, by_line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", type=int, default=1, help="index in bench_enforcement.BOUND_HEADS (default 1: the "
                                                       "bound agent's 4-parameter search)")
    ap.add_argument("--requests", type=int, default=300_000)
    ap.add_argument("--top", type=int, default=30, help="lines shown per program")
    a = ap.parse_args()
    if shutil.which("perf") is None:
        print("perf is needed (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 3
    if not 0 <= a.head < len(be.BOUND_HEADS):
        print(f"--head: 0..{len(be.BOUND_HEADS) - 1} ({', '.join(label for label, _ in be.BOUND_HEADS)})", file=sys.stderr)
        return 2
    ns, by_sym, by_line = profile(a.head, a.requests)
    print(f"{be.BOUND_HEADS[a.head][0]}: {ns:.0f} ns per decision under perf (kernel statistics)")
    bpf = {s: n for s, n in by_sym.items() if s in PROGS or "bpf" in s or s in ("ktime_get", "read_tsc")}
    total = sum(by_line[p].total() for p in PROGS) or 1
    print("\nsamples, share of the programs' own samples:")
    for s, n in sorted(bpf.items(), key=lambda kv: -kv[1])[:12]:
        print(f"{n:8d}  {100 * n / total:5.1f}%  {s}")
    for p in PROGS:
        c = by_line[p]
        if not c:
            continue
        print(f"\n== {p}: {c.total()} samples")
        for (line, src), n in c.most_common(a.top):
            print(f"{100 * n / c.total():5.1f}%  {line:>16}  {src[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
