"""The agents' requests against the real embedded FHIR server, their bodies, and the live worker
(without the kernel)."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import threading
from collections import defaultdict

import pytest
from fhir.resources.R4B import get_fhir_model_class

from paritybed.agents.bodies import BUILDERS, body_for
from paritybed.agents.live import POOL, FhirConnection, command_for, request_bytes, start_worker, write_commands
from paritybed.fhir.population import load_population

START = "2026-01-05T06:00:00+00:00"


@pytest.fixture(scope="module")
def server(shared_synthea):
    from paritybed.fhir.server import running_server

    with running_server(load=[shared_synthea]) as base:
        yield base


def hostport(base: str) -> str:
    return base.split("//", 1)[1].split("/", 1)[0]


def shapes(rows) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["kind"] == "fhir":
            out[(r["agent"], r["method"], r["resource_type"], r["interaction"], r["params"])].append(r)
    return out


def test_every_write_body_is_valid_r4_and_deterministic(rows):
    writes = [r for r in rows if r["method"] in ("POST", "PUT")]
    kinds = {(r["method"], r["resource_type"]) for r in writes}
    assert kinds == set(BUILDERS)  # every builder is used by some agent
    for r in writes[:300]:
        body = body_for({**r, "start": START})
        assert body == body_for({**r, "start": START})
        data = json.loads(body)
        model = get_fhir_model_class(data["resourceType"]).model_validate(data)
        assert data["resourceType"] == r["resource_type"]
        assert data.get("subject", data.get("patient"))["reference"] == f"Patient/{r['patient_id']}"
        if r["method"] == "PUT":
            assert model.id == r["resource_id"]
        if r["resource_type"] in ("MedicationRequest", "ServiceRequest"):
            assert (data["status"], data["intent"]) == ("draft", "proposal")
        if r["resource_type"] == "ClaimResponse":
            assert data["use"] == "preauthorization" and data["request"]["reference"] == f"Claim/{r['context_id']}"
        if r["resource_type"] == "DocumentReference":
            assert data["context"]["encounter"][0]["reference"] == f"Encounter/{r['context_id']}"


def test_bodies_of_reads_are_empty_and_unknown_writes_are_refused():
    assert body_for({"method": "GET", "resource_type": "Observation"}) == b""
    with pytest.raises(ValueError, match="no body builder for POST Immunization"):
        body_for({"method": "POST", "resource_type": "Immunization", "patient_id": "x"})


def test_every_request_shape_of_every_agent_gets_a_2xx(rows, server):
    import httpx

    found = shapes(rows)
    agents = {k[0] for k in found}
    assert agents == {"scribe", "cds", "prior-auth"}
    assert len(found) >= 25
    root = server.rsplit("/fhir", 1)[0]
    failures = []
    with httpx.Client(base_url=root, timeout=30) as c:
        for key, sample in sorted(found.items()):
            for r in sample[:2]:
                body = body_for({**r, "start": START})
                headers = {"Content-Type": "application/fhir+json"} if body else {}
                resp = c.request(r["method"], r["path"], content=body or None, headers=headers)
                if not 200 <= resp.status_code < 300:
                    failures.append((key, r["path"], resp.status_code, resp.text[:200]))
    assert not failures, failures


def test_search_results_match_the_population_counts_the_pages_were_built_from(rows, server, shared_synthea):
    """A page the agent asks for exists: page k of a search has results on the server."""
    import httpx

    pop = load_population(shared_synthea)
    lab = next(r for r in rows if "category=laboratory" in r["path"] and "_offset=50" in r["path"])
    root = server.rsplit("/fhir", 1)[0]
    with httpx.Client(base_url=root, timeout=30) as c:
        bundle = c.get(lab["path"]).json()
    assert bundle["resourceType"] == "Bundle" and len(bundle.get("entry", [])) > 0
    assert pop.count(lab["patient_id"], "Observation", "laboratory") > 50


def _run_worker(hostport_: str, commands: list[dict], tmp_path: Path, replies: bytes = b"") -> dict[str, dict[int, list[int | str]]]:
    """Give a worker its commands (and the driver's replies to its sync lines, in advance), let it
    run them all, and read what it said, by line kind."""
    path = tmp_path / "rows.jsonl"
    write_commands(path, commands)
    w = start_worker(hostport_, path)
    out, _ = w.communicate(replies, timeout=120)
    assert w.returncode == 0
    said: dict[str, dict[int, list[int | str]]] = defaultdict(dict)
    for line in out.decode().splitlines():
        what, k, *rest = line.split(" ", 2)
        said[what][int(k)] = rest[0] if what == "x" else [int(v) for v in rest[0].split()] if rest else []
    return said


def test_live_worker_replays_rows_and_says_when_each_was_sent_and_answered(rows, server, tmp_path):
    fhir = [r for r in rows if r["kind"] == "fhir"]
    sample = [v[0] for v in shapes(fhir).values()]
    sample += [r for r in fhir if r["claim_id"]][:5]  # presents X-Break-Glass-Claim
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=lambda: [listener.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    egress = next(r for r in rows if r["kind"] == "egress")
    commands = [command_for(r, i, START) for i, r in enumerate(sample)]
    n = len(commands)
    lane = next(r for r in rows if r["kind"] == "lane_open")
    commands += [command_for(egress, n) | {"address": f"127.0.0.1:{listener.getsockname()[1]}"},
                 {"row": n + 1, "kind": "egress", "address": f"127.0.0.1:{closed_port}", "calls": 3, "t_ns": 0},
                 command_for(lane, n + 2) | {"sync": "control"},  # the driver opens the lane, then says n+2
                 command_for(sample[0], n + 3, START) | {"sync": "wait"},  # same time as the row before
                 command_for(lane, n + 4)]  # a lane activation without the driver: not the worker's
    try:
        said = _run_worker(hostport(server), commands, tmp_path, replies=b"%d\n%d\n" % (n + 2, n + 3))
    finally:
        listener.close()
    for k, r in enumerate(sample):  # sent (the kernel decided here), then answered 2xx
        assert said["s"][k][0] == 0 and 200 <= said["r"][k][0] < 300 and said["r"][k][1] > 0, (r["path"], said["r"].get(k))
        lo, hi = said["s"][k][1:]
        assert 0 < lo <= hi  # CLOCK_MONOTONIC around the send: where the real clock's records fall
    assert said["s"][n][0] == 0 and said["s"][n + 1][0] == errno.ECONNREFUSED  # egress: the connect's outcome
    assert n + 2 in said["l"] and n + 2 not in said["s"]  # the lane is the control plane's
    assert n + 3 in said["w"] and said["s"][n + 3][0] == 0 and 200 <= said["r"][n + 3][0] < 300
    assert "control plane" in said["x"][n + 4]


def test_worker_sends_the_next_row_before_the_answer_on_a_pool_of_connections(tmp_path):
    """The kernel decides at the send, so the worker says "sent" at once and sends the next row on
    another keep-alive connection while answers are outstanding: at most POOL connections, each
    request whole in one message; a connection the server closes without answering is replaced,
    and its row's answer is status 0."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    hp = f"127.0.0.1:{srv.getsockname()[1]}"
    received: list[bytes] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    def serve() -> None:
        conns = [srv.accept()[0] for _ in range(POOL)]  # POOL rows sent before any answer
        received.extend(c.recv(65536) for c in conns)
        conns[0].close()  # closed without an answer
        extra = srv.accept()[0]  # the next row: a fresh connection in the closed one's place
        received.append(extra.recv(65536))
        for c in (extra, *conns[1:]):
            c.sendall(answer)
        for c in (extra, *conns[1:]):
            c.recv(1)  # until the worker closes it
            c.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    commands = [{"row": k, "kind": "fhir", "method": "GET", "path": f"/fhir/Observation/o{k}", "t_ns": k}
                for k in range(POOL + 1)]
    said = _run_worker(hp, commands, tmp_path)
    th.join(10)
    srv.close()
    assert received == [request_bytes("GET", f"/fhir/Observation/o{k}", hp, b"", None) for k in range(POOL + 1)]
    assert all(said["s"][k][0] == 0 for k in range(POOL + 1))
    assert said["r"][0][0] == 0  # no answer came: the send (and the kernel's decision there) stands
    assert [said["r"][k][0] for k in range(1, POOL + 1)] == [200] * POOL


def test_worker_sends_each_request_in_one_message_and_reconnects_when_the_server_closes():
    """A raw server that answers one request per connection and closes it: the worker must
    reconnect, and each request must arrive whole in one read (one send of headers + body)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    received: list[bytes] = []

    def serve() -> None:
        for _ in range(3):
            c, _ = srv.accept()
            received.append(c.recv(65536))
            c.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            c.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    conn = FhirConnection(f"127.0.0.1:{srv.getsockname()[1]}")
    row = {"method": "POST", "resource_type": "ServiceRequest", "patient_id": "p1", "context_id": "cds-q1", "agent": "cds"}
    body = body_for(row)
    for _ in range(3):
        assert conn.request("POST", "/fhir/ServiceRequest", body, claim="bg-1") == (201, None)
    th.join(5)
    conn.close()
    srv.close()
    want = request_bytes("POST", "/fhir/ServiceRequest", conn.hostport, body, "bg-1")
    assert received == [want] * 3
    assert b"X-Break-Glass-Claim: bg-1\r\n" in want and f"Content-Length: {len(body)}".encode() in want


def test_worker_reports_an_unreachable_fhir_server_as_errno():
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    assert FhirConnection(f"127.0.0.1:{port}").request("GET", "/fhir/Patient/x") == (None, errno.ECONNREFUSED)


def test_worker_help_runs():
    r = subprocess.run([sys.executable, "-P", "-m", "paritybed.agents.live", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--fhir" in r.stdout
