"""Loading Synthea folders into a FHIR server over HTTP (`load_folder`, `paritybed fhir load`)
and in-process (`load_into_store`), and the `paritybed fhir serve` command.

Uses a small real subset of the shared data (the two infrastructure bundles and the three
smallest patients) to keep the suite fast; the full 37 patients load in test_fhir_synthea.py.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn

from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.fhir.loader import keep_ids, load_folder, load_into_store
from paritybed.fhir.server import UVICORN_OPTIONS, bind, create_app, running_server
from paritybed.fhir.store import Store

FHIR = {"Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def subset(shared_synthea: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synthea-subset")
    patients = sorted((p for p in shared_synthea.glob("*.json") if not p.name.startswith("0-")), key=lambda p: p.stat().st_size)
    for p in [*shared_synthea.glob("0-*.json"), *patients[:3]]:
        shutil.copy(p, folder / p.name)
    return folder


def _expected(folder: Path) -> dict[str, int]:
    """Resources per type the folder should load: every entry, plus the extracted Coverage."""
    from paritybed.fhir.bundles import prepare_for_load, read_bundle, synthea_files

    counts: dict[str, int] = {}
    for path in synthea_files(folder):
        for e in prepare_for_load(read_bundle(path))["entry"]:
            t = e["resource"]["resourceType"]
            counts[t] = counts.get(t, 0) + 1
    return dict(sorted(counts.items()))


def test_keep_ids_turns_posts_into_puts() -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:a1", "resource": {"resourceType": "Patient", "id": "a1"}, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Organization"},
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=x|1"}},
    ]}
    out = keep_ids(bundle)
    assert out["entry"][0]["request"] == {"method": "PUT", "url": "Patient/a1"}
    assert out["entry"][1]["request"]["method"] == "POST"  # conditional creates stay
    assert bundle["entry"][0]["request"]["method"] == "POST"  # input untouched


def test_http_load_keeps_ids_and_is_idempotent(subset: Path) -> None:
    expected = _expected(subset)
    with running_server() as url:
        counts = load_folder(url, subset, progress=False)
        assert counts == expected
        patient_ids = sorted(p.stem for p in subset.glob("*.json") if not p.name.startswith("0-"))
        served = httpx.get(f"{url}/Patient", params={"_count": "10"}, headers=FHIR).json()
        assert sorted(e["resource"]["id"] for e in served["entry"]) == patient_ids
        assert load_folder(url, subset, progress=False) == expected  # again: updates in place
        history = httpx.get(f"{url}/Patient/{patient_ids[0]}/_history", headers=FHIR).json()
        assert history["total"] == 1  # unchanged content: no new version
        assert httpx.get(f"{url}/Coverage", params={"beneficiary": patient_ids[0]}, headers=FHIR).json()["total"] > 0


def test_server_ids_mode_and_its_reload_error(subset: Path) -> None:
    with running_server() as url:
        counts = load_folder(url, subset, progress=False, server_ids=True)
        assert counts == _expected(subset)
        with pytest.raises(InputError, match="409.*already exists"):
            load_folder(url, subset, progress=False, server_ids=True)


def test_in_process_load_stores_what_http_stores(subset: Path) -> None:
    """`load_into_store` (serve --load, tests) and HTTP loading give the same resources."""
    def snapshot(store: Store) -> dict[tuple[str, str], dict]:
        out = {}
        for t, i, body in store.query("SELECT type, id, body FROM resources ORDER BY type, id", ()):
            r = orjson.loads(body)
            r["meta"].pop("lastUpdated")
            out[(t, i)] = r
        return out

    direct = Store()
    load_into_store(direct, subset)
    app = create_app()
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **UVICORN_OPTIONS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        load_folder(f"http://127.0.0.1:{sock.getsockname()[1]}/fhir", subset, progress=False)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert snapshot(app.state.store) == snapshot(direct)


class _Flaky:
    """An ASGI wrapper answering 503 to the first `failures` POSTs (a restarting server)."""

    def __init__(self, app, failures: int) -> None:
        self.app, self.left, self.seen = app, failures, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.seen += 1
            if self.left > 0:
                self.left -= 1
                await send({"type": "http.response.start", "status": 503, "headers": [(b"retry-after", b"0")]})
                await send({"type": "http.response.body", "body": b"busy"})
                return
        await self.app(scope, receive, send)


def test_retries_on_503(subset: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    for p in subset.glob("0-*.json"):
        shutil.copy(p, one / p.name)
    flaky = _Flaky(create_app(), failures=2)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(flaky, log_level="warning", **UVICORN_OPTIONS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        counts = load_folder(f"http://127.0.0.1:{sock.getsockname()[1]}/fhir", one, progress=False)
        assert counts["Organization"] == 194 and counts["Practitioner"] == 195
        assert flaky.seen == 4  # 2 refused + 2 bundles
        flaky.left = 10
        with pytest.raises(EnvironmentProblem, match="kept failing"):
            load_folder(f"http://127.0.0.1:{sock.getsockname()[1]}/fhir", one, progress=False, retries=1)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_refused_bundle_names_the_file(subset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-practitioners"
    folder.mkdir()
    patient = next(p for p in subset.glob("*.json") if not p.name.startswith("0-"))
    shutil.copy(patient, folder / patient.name)
    with running_server() as url:
        with pytest.raises(InputError, match=rf"{patient.name}.*412.*(Practitioner|Organization|Location)\?identifier"):
            load_folder(url, folder, progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.json").write_text(json.dumps({"resourceType": "Patient"}))
    with running_server() as url, pytest.raises(InputError, match="x.json"):
        load_folder(url, bad, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_an_environment_problem(subset: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="cannot reach"):
        load_folder(f"http://127.0.0.1:{_free_port()}/fhir", subset, progress=False)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "paritybed.cli", "fhir", *args]


def test_cli_serve_and_load(subset: Path, tmp_path: Path) -> None:
    port = _free_port()
    db = tmp_path / "served.sqlite"
    proc = subprocess.Popen(_cli("serve", "--port", str(port), "--db", str(db)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/fhir"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/metadata").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        r = subprocess.run(_cli("load", "--url", url, str(subset)), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "Observation" in r.stdout and "total" in r.stdout
        assert httpx.get(f"{url}/Patient", params={"_summary": "count"}).json()["total"] == 3
        busy = subprocess.run(_cli("serve", "--port", str(port)), capture_output=True, text=True, timeout=60)
        assert busy.returncode == 3 and "cannot listen" in busy.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert db.exists()  # the data outlives the server
    assert Store(db).counts()["Patient"] == 3
    r = subprocess.run(_cli("load", "--url", f"http://127.0.0.1:{_free_port()}/fhir", str(subset)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "cannot reach" in r.stderr


def test_running_server_loads_folders_first(subset: Path, tmp_path: Path) -> None:
    with running_server(load=[subset]) as url:
        assert httpx.get(f"{url}/Patient", params={"_summary": "count"}, headers=FHIR).json()["total"] == 3
    bad = tmp_path / "empty"
    bad.mkdir()
    with pytest.raises(InputError, match="no FHIR bundles"):
        with running_server(load=[bad]):
            pass


def test_cached_db_loads_once_and_copies_after(subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Live mode's server database: the first load goes into paritybed's cache, later ones are
    copies of it (the same resources), and a copy written to leaves the cache as it was."""
    from paritybed.fhir.loader import cached_db

    monkeypatch.setenv("PARITYBED_CACHE", str(tmp_path / "cache"))
    cached_db([subset], tmp_path / "a.sqlite")
    (kept,) = (tmp_path / "cache" / "fhir-db").glob("*.sqlite")
    content = kept.read_bytes()
    t0 = time.perf_counter()
    cached_db([subset], tmp_path / "b.sqlite")
    copy_s = time.perf_counter() - t0
    a, b = Store(tmp_path / "a.sqlite"), Store(tmp_path / "b.sqlite")
    try:
        assert a.counts() == b.counts() and a.counts()["Patient"] == 3
        b.write("Patient", "written-to-the-copy", {"active": True}, method="PUT")
    finally:
        a.close()
        b.close()
    assert kept.read_bytes() == content and copy_s < 5
    assert list((tmp_path / "cache" / "fhir-db").glob("*")) == [kept]  # no stray parts
