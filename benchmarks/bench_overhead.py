"""Where an enforced FHIR request's added cost goes, and what it is against a slower server.

bench_enforcement.py measures the whole: all programs vs none.  This splits it, with long-lived
clients from four arms taking alternating 0.25 s slices against the embedded FHIR server (the
order rotates every round; the median per-round difference to "none" is reported):

* none: a client outside the paritybed cgroups, no program runs;
* socket hash only: sockops puts the socket in the socket hash and an sk_msg program that only
  returns SK_PASS is attached (every send and recv then goes through the kernel's tcp_bpf path;
  no egress byte check attached);
* + egress byte check: the same stub, counting the bytes it passes, and pb_unseen attached;
* full: the real programs (parse, decide, count, egress check).

The stubs are bpf/paritybed.c with an early return in pb_sk_msg, loaded under their own names
(the product code is unchanged).  Then the full programs against a server that takes 1 ms per
request (a plain sleep: the kind of latency of a real FHIR server, stated in the row), to show
what the same absolute cost is next to it.  Needs root and BPF.

    python benchmarks/bench_overhead.py
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve()
ROUNDS = int(os.environ.get("PARITYBED_BENCH_ROUNDS", "40"))
SECONDS = float(os.environ.get("PARITYBED_BENCH_SECONDS", "0.25"))
DELAY_MS = 1.0
ENTRY = "int pb_sk_msg(struct sk_msg_md *msg)\n{\n"
STUBS = {  # arm -> (early return inserted in pb_sk_msg, attach pb_unseen)
    "socket hash only": ("    return SK_PASS;\n", False),
    "+ egress byte check": ("    struct pb_sock *ss0 = sockstate.sk_storage_get(msg->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);\n"
                            "    if (ss0)\n        ss0->approved += msg->size;\n    return SK_PASS;\n", True),
}


def _sibling():
    """bench_enforcement.py: the client, the FHIR server, the enforcer set-up."""
    spec = importlib.util.spec_from_file_location("paritybed_bench_enforcement_shared", HERE.parent / "bench_enforcement.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def _variant(tmp: Path, arm: str) -> Iterator[None]:
    """Load the next enforcer from a stub of the source (and without pb_unseen if the arm says so)."""
    from paritybed.enforcer import kernel_load

    if arm not in STUBS:
        yield
        return
    body, unseen = STUBS[arm]
    text = kernel_load.SOURCE.read_text()
    if ENTRY not in text:
        raise RuntimeError(f"{kernel_load.SOURCE}: no '{ENTRY.strip()}' to put the benchmark stub in")
    src = tmp / f"stub-{len(list(tmp.glob('stub-*')))}.c"
    src.write_text(text.replace(ENTRY, ENTRY + body))
    saved = kernel_load.SOURCE, kernel_load.CGROUP_PROGS
    kernel_load.SOURCE = src
    kernel_load.CGROUP_PROGS = {k: v for k, v in saved[1].items() if unseen or k != "pb_unseen"}
    try:
        yield
    finally:
        kernel_load.SOURCE, kernel_load.CGROUP_PROGS = saved


class _Delayed:
    """A fixed ``200 {}`` after `delay` seconds for every request head, one thread per connection."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 2\r\n\r\n{}"

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while data := conn.recv(65536):
                buf += data
                while b"\r\n\r\n" in buf:
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    time.sleep(self.delay)
                    conn.sendall(self.RESPONSE)

    def close(self) -> None:
        self.server.close()


def _warm(clients: dict, paths: list[str]) -> None:
    for c in clients.values():
        c.stdin.write(json.dumps(paths) + "\n0.2\n")
        c.stdin.flush()
        c.stdout.readline()


def _rounds(clients: dict, rounds: int, seconds: float) -> dict[str, list[dict]]:
    """Alternating slices, the order rotating (and reversed every other round); per slice req/s and CPU."""
    out: dict[str, list[dict]] = {k: [] for k in clients}
    arms = list(clients)
    for r in range(rounds):
        order = arms[r % len(arms):] + arms[:r % len(arms)]
        for arm in (order if r % 2 == 0 else order[::-1]):
            clients[arm].stdin.write(f"{seconds}\n")
            clients[arm].stdin.flush()
            o = json.loads(clients[arm].stdout.readline())
            out[arm].append({"rate": o["n"] / o["seconds"], "cpu_us": 1e6 * o["cpu"] / o["n"]})
    return out


def _rows(server: str, res: dict[str, list[dict]], seconds: float, goal: str | None) -> list[dict]:
    none = res["none"]
    us = 1e6 / statistics.median(s["rate"] for s in none)
    rows = []
    for arm, slices in res.items():
        if arm == "none":
            continue
        over = sorted(1 - e["rate"] / n["rate"] for n, e in zip(none, slices))
        wall = statistics.median(1e6 / e["rate"] - 1e6 / n["rate"] for n, e in zip(none, slices))
        cpu = statistics.median(e["cpu_us"] - n["cpu_us"] for n, e in zip(none, slices))
        q = len(over) // 4
        row = {"name": f"throughput vs none, {arm} ({server})", "value": round(100 * statistics.median(over), 2),
               "unit": "% overhead", "baseline": round(us),
               "note": f"median of {len(over)} rounds of {seconds:g} s, IQR "
                       f"{100 * over[q]:+.2f}..{100 * over[-1 - q]:+.2f} %; added per request: {wall:+.2f} us wall, "
                       f"{cpu:+.2f} us client CPU; baseline: us per request without enforcement"}
        if goal and arm == "full":
            row["goal"], row["passed"] = goal, statistics.median(over) <= 0.01
        rows.append(row)
    return rows


def _measure(B, tmp: Path, port: int, paths: list[str], arms: list[str], server: str, rounds: int, seconds: float,
             goal: str | None) -> list[dict]:
    from paritybed.enforcer import bpfsys
    from paritybed.enforcer.kernel import cleanup

    argv = [sys.executable, "-c", B.CLIENT, "loop", "127.0.0.1", str(port), "-"]
    kw = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    kes, clients = {}, {}
    try:
        for i, arm in enumerate(arms):
            B.NAME = f"pb-bench-parts{i}"
            cleanup(B.NAME)
            with _variant(tmp, arm):
                kes[arm] = B._enforcer(tmp, port)
        clients["none"] = subprocess.Popen(argv, **kw)  # started after the loads: no idle keep-alive
        for arm, ke in kes.items():
            clients[arm] = ke.spawn("bench", 0, argv, **kw)
        _warm(clients, paths)
        rows = _rows(server, _rounds(clients, rounds, seconds), seconds, goal)
        fd = kes["full"]._loaded.progs["pb_sk_msg"]
        old = bpfsys.set_stats(True)
        try:  # the decision's cost in this traffic (caches shared with the server), from the kernel's stats
            a = bpfsys.prog_info(fd)
            _rounds({"full": clients["full"]}, 10, seconds)
            b = bpfsys.prog_info(fd)
        finally:
            bpfsys.set_stats(old)
        rows.append({"name": f"sk_msg decision amid the traffic ({server})", "unit": "ns",
                     "value": round((b.run_time_ns - a.run_time_ns) / max(1, b.run_cnt - a.run_cnt)),
                     "note": f"run_time_ns/run_cnt over {b.run_cnt - a.run_cnt:,} requests (agent reads and searches "
                             "alternating) with the caches the server and idle gaps leave; bench_enforcement measures "
                             "it back to back against a trivial server"})
        return rows
    finally:
        for c in clients.values():
            c.stdin.close()
            c.wait(timeout=10)
        for ke in kes.values():
            ke.close()


def run() -> list[dict]:
    if os.geteuid() != 0:
        return [{"name": "enforcement overhead parts", "value": None, "unit": "", "note": "skipped: needs root and BPF"}]
    B = _sibling()
    tmp = Path(tempfile.mkdtemp(prefix="pb-bench-parts-"))
    server, port, paths = B._fhir_server(tmp)
    delayed = _Delayed(DELAY_MS / 1000)
    try:
        rows = _measure(B, tmp, port, paths, ["socket hash only", "+ egress byte check", "full"],
                        "embedded server", ROUNDS, SECONDS, "<= 1%")
        rows += _measure(B, tmp, delayed.port, paths, ["full"], f"server taking {DELAY_MS:g} ms",
                         ROUNDS // 2, 2 * SECONDS, "<= 1%")
        return rows
    finally:
        delayed.close()
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    for r in run():
        print(r)
