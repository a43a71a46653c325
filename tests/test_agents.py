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
from paritybed.agents.live import FhirConnection, command_for, request_bytes, start_worker
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


def test_live_worker_replays_rows_over_one_connection(rows, server):
    fhir = [r for r in rows if r["kind"] == "fhir"]
    sample = [v[0] for v in shapes(fhir).values()]
    sample += [r for r in fhir if r["claim_id"]][:5]  # presents X-Break-Glass-Claim
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=lambda: [listener.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
    w = start_worker(hostport(server))
    try:
        for i, r in enumerate(sample):
            a = w.ask(command_for(r, i, START))
            assert a["row"] == i and a["ok"] and 200 <= a["status"] < 300 and a["errno"] is None and a["ns"] > 0, (r["path"], a)
        egress = next(r for r in rows if r["kind"] == "egress")
        cmd = command_for(egress, 99) | {"address": f"127.0.0.1:{listener.getsockname()[1]}"}
        a = w.ask(cmd)
        assert a == a | {"row": 99, "ok": True, "status": None, "errno": None, "calls": egress["egress_calls"]}
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()
        a = w.ask({"row": 100, "kind": "egress", "address": f"127.0.0.1:{port}", "calls": 3})
        assert (a["ok"], a["errno"]) == (False, errno.ECONNREFUSED)
        a = w.ask({"row": 101, "kind": "lane_open"})
        assert a["ok"] is False and "control plane" in a["error"]
        assert w.proc.stdin is not None
        w.proc.stdin.write("not json\n")
        w.proc.stdin.flush()
        assert "not JSON" in json.loads(w.proc.stdout.readline())["error"]
        assert w.ask(command_for(sample[0], 102, START))["ok"]  # still serving
    finally:
        assert w.close() == 0
        listener.close()


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
