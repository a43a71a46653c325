"""The real HAPI FHIR JPA server (fhir/hapi, started by the launcher): the loader, every request
shape of the three agents, and HAPI's BALP audit trail feeding `paritybed profile`.

One server for the module (start-up ~20-40 s, loading the 37 test patients ~1.5 min on this
2-core machine); the figures measured on the way (start-up, memory, load time) are printed at
the end.  Tests marked ``hapi`` skip without Java or the set-up's build (and fail under
``PARITYBED_REQUIRE_HAPI=1``, as `.ci/run` sets).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from paritybed.agents.live import FhirConnection, command_for, handle
from paritybed.fhir import hapi_build
from paritybed.parity import balp

REPO = Path(__file__).resolve().parent.parent
START = "2026-01-05T06:00:00+00:00"
FIGURES: dict[str, str] = {}


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "paritybed.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


# ------------------------------------------------------------------------ without a running server
def test_build_is_keyed_by_the_module_sources(tmp_path):
    module = tmp_path / "hapi"
    (module / "src" / "main" / "java").mkdir(parents=True)
    (module / "pom.xml").write_text((hapi_build.MODULE / "pom.xml").read_text())
    src = module / "src" / "main" / "java" / "A.java"
    src.write_text("class A {}")
    first = hapi_build.source_hash(module)
    assert hapi_build.source_hash(module) == first
    src.write_text("class A { }")
    assert hapi_build.source_hash(module) != first
    assert hapi_build.hapi_version(module) == "8.8.0"
    env_cache = os.environ.get("PARITYBED_CACHE")
    try:
        os.environ["PARITYBED_CACHE"] = str(tmp_path / "cache")
        assert hapi_build.build_dir(module).parent == tmp_path / "cache" / "hapi" / "8.8.0"
        with pytest.raises(Exception, match="not built for these sources"):
            hapi_build.installed_build(module)
    finally:
        if env_cache is None:
            os.environ.pop("PARITYBED_CACHE")
        else:
            os.environ["PARITYBED_CACHE"] = env_cache


def test_cli_without_java_or_build_or_with_the_port_taken_exits_3(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = _cli("fhir", "hapi", "--port", "0", env={"PATH": str(empty)}, timeout=60)
    assert r.returncode == 3 and "Java not found" in r.stderr and "Traceback" not in r.stderr
    r = _cli("fhir", "hapi", "--port", "0", env={"PARITYBED_CACHE": str(tmp_path / "empty-cache")}, timeout=60)
    if "Java not found" not in r.stderr:
        assert r.returncode == 3 and "not built" in r.stderr and "make setup" in r.stderr, r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        r = _cli("fhir", "hapi", "--port", str(s.getsockname()[1]), timeout=60)
    assert r.returncode == 3 and "already answers there" in r.stderr, r.stderr


def test_balp_helpers_read_what_hapi_writes():
    query = base64.b64encode(b"http://127.0.0.1:9/fhir/Observation?patient=p1&_count=50").decode()
    assert balp.resource_type([{"role": {"system": balp.OBJECT_ROLE, "code": "24"}, "query": query}]) == "Observation"
    assert balp.resource_type([{"role": {"system": balp.OBJECT_ROLE, "code": "1"}, "what": {"reference": "Patient/p"}},
                               {"role": {"system": balp.OBJECT_ROLE, "code": "4"},
                                "what": {"reference": "http://h:1/fhir/Encounter/e1"}}]) == "Encounter"
    ev = {"entity": [{"type": {"system": balp.REQUEST_ID_TYPE[0], "code": "XrequestId"},
                      "what": {"identifier": {"value": "pb-1767592800000000005-7"}}}]}
    assert balp.request_time(ev) == 1767592800000000005


# ------------------------------------------------------------------------------ against HAPI
@pytest.fixture(scope="module")
def hapi(tmp_path_factory):
    from paritybed.fhir.hapi_launcher import running_hapi

    t0 = time.monotonic()
    with running_hapi(db="mem", log=tmp_path_factory.mktemp("hapi") / "hapi.log") as h:
        FIGURES["start-up to healthy"] = f"{time.monotonic() - t0:.1f} s"
        FIGURES["RSS after start"] = f"{h.rss_bytes() / 2**20:.0f} MiB"
        yield h


@pytest.fixture(scope="module")
def loaded(hapi, shared_synthea):
    """The 37 test patients loaded with `paritybed fhir load --url` (the CLI, as a user runs it)."""
    t0 = time.monotonic()
    r = _cli("fhir", "load", "--url", hapi.base, str(shared_synthea))
    assert r.returncode == 0, r.stderr[-3000:]
    FIGURES["load of the 37 patients"] = f"{time.monotonic() - t0:.1f} s"
    FIGURES["RSS after the load"] = f"{hapi.rss_bytes() / 2**20:.0f} MiB"
    return r.stdout


@pytest.fixture(scope="module")
def sent(hapi, loaded, rows):
    """Two rows of every request shape of every agent, sent by the live worker's own code (one
    keep-alive connection, the identity headers and request id): (since, until, [(row, answer)])."""
    shapes: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kind"] == "fhir":
            shapes.setdefault((r["agent"], r["method"], r["resource_type"], r["interaction"], r["params"]), []).append(r)
    since = dt.datetime.now(dt.timezone.utc)
    conn = FhirConnection(hapi.base.split("//", 1)[1].split("/", 1)[0])
    out = []
    try:
        for i, (key, sample) in enumerate(sorted(shapes.items())):
            for j, r in enumerate(sample[:2]):
                out.append((r, handle(conn, command_for(r, 2 * i + j, START))))
    finally:
        conn.close()
    return since, dt.datetime.now(dt.timezone.utc), out


@pytest.mark.hapi
def test_load_of_the_test_population_keeps_synthea_ids(hapi, loaded):
    import httpx

    assert "27194" in loaded.replace(",", "")
    bundle = httpx.get(f"{hapi.base}/Patient", params={"_summary": "count"}, timeout=60).json()
    assert bundle["total"] == 37
    assert httpx.get(f"{hapi.base}/Patient/9478e08e-4573-88e1-7ea2-1b757771da8b", timeout=30).status_code == 200


@pytest.mark.hapi
def test_every_request_shape_of_the_three_agents_gets_a_2xx_from_hapi(sent):
    *_, answers = sent
    assert {r["agent"] for r, _ in answers} == {"scribe", "cds", "prior-auth"}
    assert len(answers) >= 50
    bad = [(r["method"], r["path"], a) for r, a in answers if not a["ok"]]
    assert not bad, bad


@pytest.mark.hapi
def test_offset_paging_and_hapi_paging_links(hapi, loaded):
    import httpx

    patient = "72376f6f-a404-ee42-7c9a-45a6b0bdc9f2"
    q = f"{hapi.base}/Observation?patient={patient}&_count=50&_sort=-date"
    first = httpx.get(q, timeout=60).json()
    second = httpx.get(q + "&_offset=50", timeout=60).json()
    ids1 = [e["resource"]["id"] for e in first["entry"]]
    assert len(ids1) == 50 and len(second["entry"]) == 50
    # HAPI's own next link (a _getpages cursor over the stored search) pages without overlap.  The
    # agents' _offset pages re-run the query, and H2 orders equal dates arbitrarily, so _offset
    # pages sorted by date can overlap (docs/fhir.md, "Differences").
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert nxt.startswith(hapi.base) and "_getpages=" in nxt
    followed = httpx.get(nxt, timeout=60).json()
    ids2 = [e["resource"]["id"] for e in followed["entry"]]
    assert len(ids2) == 50 and not set(ids1) & set(ids2)


@pytest.mark.hapi
def test_balp_auditevents_of_the_agents_feed_paritybed_profile(hapi, sent, tmp_path):
    import httpx

    from paritybed.parity.auditevent import profile_from_auditevents

    since, until, answers = sent
    export = tmp_path / "hapi-audit.ndjson"
    r = _cli("fhir", "export-audit", "--url", hapi.base, "--since", since.isoformat(), "--until", until.isoformat(),
             "--out", str(export))
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in export.read_text().splitlines()]
    status = hapi.audit_status()
    assert status["failed"] == 0 and status["pending"] == 0
    # Every request that showed or wrote data has its BALP event(s), found by the request id the
    # worker sent.  BALP hooks the resources a request shows, so a search that found nothing has
    # no event, and a search has one event per patient-compartment owner it showed.
    request_ids = Counter(e2["what"]["identifier"]["value"] for e in events for e2 in e["entity"]
                          if e2.get("type", {}).get("code") == "XrequestId")
    rows_with_events = {int(k.rsplit("-", 1)[1]) for k in request_ids}
    audited = [(r, a) for r, a in answers if a["row"] in rows_with_events]
    for r, a in answers:
        if a["row"] not in rows_with_events:
            assert r["interaction"] == "search", r["path"]
            bundle = httpx.get(f"{hapi.root}{r['path']}", headers={"Accept": "application/fhir+json"}, timeout=60).json()
            assert not bundle.get("entry"), r["path"]
    assert len(audited) >= 0.8 * len(answers) and sum(request_ids.values()) == len(events)
    FIGURES["BALP events / agent requests"] = f"{len(events)} / {len(answers)} ({len(answers) - len(audited)} empty searches)"
    profiles = Counter(p.rsplit("/", 1)[-1] for e in events for p in e["meta"]["profile"])
    assert {"IHE.BasicAudit.PatientRead", "IHE.BasicAudit.PatientQuery", "IHE.BasicAudit.PatientCreate",
            "IHE.BasicAudit.PatientUpdate"} <= set(profiles)
    clients = {e["agent"][0]["who"]["identifier"]["value"] for e in events}
    assert clients == {f"{r['agent']}/{r['replica']}" for r, _ in audited}
    profile = profile_from_auditevents(export, time="request-id")
    r2 = _cli("profile", str(export), "--time", "request-id", "--out", str(tmp_path / "profile.json"))
    assert r2.returncode == 0, r2.stderr
    assert json.loads((tmp_path / "profile.json").read_text())["classes"].keys() == profile.classes.keys()
    assert set(profile.classes) == {"ambient_scribe", "cds", "prior_auth"}
    assert profile.first_day == START[:10]  # timed by the simulated instants, not HAPI's clock
    want: dict[str, Counter] = {}
    for row, _ in audited:
        want.setdefault(row["agent_class"], Counter())[f"{row['resource_type']}.{row['interaction']}"] += 1
    for cls, prof in profile.classes.items():  # a request counts once, however many patients' events it has
        assert prof.pairs == dict(want[cls]), cls
    assert sum(p.requests for p in profile.classes.values()) == len(request_ids) == len(audited)
    text = (tmp_path / "profile.json").read_text()
    assert not any(row["patient_id"] and row["patient_id"] in text for row, _ in answers)  # de-identified


@pytest.mark.hapi
def test_hapi_figures(hapi, loaded, sent, capsys):
    """Prints what was measured (start-up, memory, load time) into the test log."""
    FIGURES["RSS after the agents' requests"] = f"{hapi.rss_bytes() / 2**20:.0f} MiB"
    with capsys.disabled():
        print("\nHAPI FHIR figures: " + "; ".join(f"{k}: {v}" for k, v in FIGURES.items()))
    assert len(FIGURES) >= 5


# ------------------------------------------------------------- with the kernel (the lead runs it)
@pytest.mark.bpf
@pytest.mark.hapi
def test_live_run_against_hapi_agrees_with_the_engine_and_its_audit_gates_the_same(hapi, loaded, tmp_path,
                                                                                  shared_synthea):
    """live-smoke with --fhir-url at HAPI: the kernel agrees with the engine on every row, and the
    production profile built from HAPI's BALP trail (+ the run's break-glass log, the EHR's side)
    gates staging to the run's own verdict."""
    from test_live import _scenario_on

    scenario = _scenario_on(shared_synthea, tmp_path, derive=False)  # HAPI holds the 37 patients
    # An audit trail cannot tell an attack that got through from clinical work (the sweep's allowed
    # reads would count as production's busiest minutes): the equality is for a production without
    # attacks (docs/parity.md, "HAPI's BALP trail").
    text = scenario.read_text()
    a = text.index("\nattacks:\n")
    b = text.index("\n\n", a + 1) if "\n\n" in text[a + 1:] else len(text)
    rest = text[b:]
    scenario.write_text(text[:a] + "\nattacks: []\n" + rest)
    out = tmp_path / "live"
    since = dt.datetime.now(dt.timezone.utc)
    r = _cli("run", str(scenario), "--mode", "live", "--fhir-url", hapi.base, "--out", str(out))
    assert r.returncode in (0, 1, 4), r.stderr[-3000:]  # pass, fail, marginal
    live = json.loads((out / "live.json").read_text())
    assert live["agreement"]["rows"] > 1000 and live["agreement"]["disagreements"] == 0, live["agreement"]
    export = tmp_path / "hapi-audit.ndjson"
    assert _cli("fhir", "export-audit", "--url", hapi.base, "--since", since.isoformat(), "--out", str(export)).returncode == 0
    prof = tmp_path / "hapi-profile.json"
    r = _cli("profile", str(export), str(out / "attestation" / "break_glass_log.auditevents.ndjson"),
             "--time", "request-id", "--out", str(prof))
    assert r.returncode == 0, r.stderr
    gate = _cli("gate", "--policy", str(out / "policy.json"), "--staging-trace", str(out / "traces" / "staging.parquet"),
                "--production-profile", str(prof), "--scenario", str(scenario), "--json", str(tmp_path / "gate.json"))
    assert gate.returncode in (0, 1, 4), gate.stderr
    run_doc = json.loads((out / "parity.json").read_text())
    gate_doc = json.loads((tmp_path / "gate.json").read_text())

    #: what a BALP trail cannot carry (docs/parity.md): launch contexts, so their durations
    NOT_IN_BALP = {"context_duration_ks"}

    def failing(doc: dict) -> list[tuple[str, str]]:
        """The metrics whose value misses its threshold (a three-hour run's intervals are wide, so
        marginal statuses depend on the sample; the values and thresholds must agree)."""
        return sorted((x["agent_class"], x["name"]) for c in doc["criteria"].values() for x in c["metrics"]
                      if not x["pass"] and x["name"] not in NOT_IN_BALP)

    assert failing(gate_doc) == failing(run_doc), (run_doc["verdict"], gate.stdout[-3000:])
    assert run_doc["replay"]["pass"], "a production without attacks: its replay passes, so the criteria decide"
