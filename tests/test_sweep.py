"""`paritybed sweep`: the spec (cells, errors naming the spec's lines), and a tiny sweep end to end
on Dask both ways: a LocalCluster of processes, and a `dask scheduler` + `dask worker` started
here as separate processes on loopback (--scheduler).  The same spec gives the same table
whatever runs it; a rerun resumes; a failed cell is recorded and the sweep goes on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from paritybed.scenarios.sweep import load_sweep

BIN = Path(sys.executable).parent
SPEC = """\
name: tiny
scenarios: [tiny-shared.yaml]
seeds: 2
overrides:
  duration.hours: 3
variants:
  - arms.staging.volume_factor: [0.5]
noise: true
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory, shared_synthea) -> Path:
    d = tmp_path_factory.mktemp("spec")
    (d / "tiny-shared.yaml").write_text(f"extends: tiny\npopulation:\n  synthea: null\n  folder: {shared_synthea}\n")
    (d / "tiny.yaml").write_text(SPEC)
    return d / "tiny.yaml"


def measured(path: Path) -> list[dict]:
    """The table without its timing columns (the only ones allowed to differ between runs)."""
    t = pq.read_table(str(path))
    return t.select([c for c in t.column_names if not c.startswith("timing/")]).to_pylist()


# ------------------------------------------------------------------------------------ the spec
def test_a_spec_expands_into_runs_per_variant_and_seed_and_noise_cells(spec):
    sw = load_sweep(spec)
    runs = [c for c in sw.cells if c.kind == "run"]
    assert [(c.label, c.seed) for c in runs] == [("base", 100), ("base", 200),
                                                 ("arms.staging.volume_factor=0.5", 100),
                                                 ("arms.staging.volume_factor=0.5", 200)]
    assert [(c.kind, c.seed) for c in sw.cells[4:]] == [("noise", 100), ("noise", 200)]
    assert len({c.id for c in sw.cells}) == 6 and [c.index for c in sw.cells] == list(range(6))
    text = runs[2].scenario_yaml()
    assert "seed: 100" in text and 'duration: {"hours": 3}' in text and '"volume_factor": 0.5' in text
    assert load_sweep(spec).cells[2].id == runs[2].id  # stable: a rerun finds its cells


def test_spec_errors_name_the_spec_line(spec, tmp_path, paritybed_cli):
    bad = tmp_path / "typo.yaml"
    bad.write_text(SPEC.replace("seeds: 2", "seedz: 2"))
    code, text = paritybed_cli("sweep", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and f"{bad}:3:1" in text and "seeds" in text and "Traceback" not in text
    bad.write_text(SPEC.replace("[0.5]", "[-1]").replace("tiny-shared.yaml", str(spec.parent / "tiny-shared.yaml")))
    code, text = paritybed_cli("sweep", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and f"{bad}:7:5 (arms.staging.volume_factor)" in text
    assert "arms.staging.volume_factor: expected a number greater than 0; found -1" in text
    bad.write_text(SPEC.replace("arms.staging.volume_factor: [0.5]", "seed: [3]"))
    code, text = paritybed_cli("sweep", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and "the sweep sets those" in text
    bad.write_text(SPEC.replace("tiny-shared.yaml", "nowhere.yaml"))
    code, text = paritybed_cli("sweep", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and f"{bad}:2:" in text and "nowhere.yaml" in text


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def local(spec, tmp_path_factory):
    """The tiny sweep on a LocalCluster of two worker processes (the CLI, as a user runs it)."""
    out = tmp_path_factory.mktemp("local")
    proc = subprocess.run([str(BIN / "paritybed"), "sweep", str(spec), "--out", str(out), "--workers", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout + proc.stderr


def test_local_cluster_runs_every_cell_into_one_table(local):
    out, text = local
    assert "6 cells (6 run now, 0 found done, 0 failed)" in text
    rows = pq.read_table(str(out / "runs.parquet")).to_pylist()
    assert [r["kind"] for r in rows] == ["run"] * 4 + ["noise"] * 2
    assert all(r["error"] is None for r in rows)
    run = rows[0]
    for col in ("verdict", "criteria_verdict", "staging_safe", "replay/over_block_share", "replay/clinical_impact_minutes",
                "oracle/under_blocks", "fidelity/cds/interarrival_ks/value", "fidelity/cds/interarrival_ks/threshold",
                "fidelity/cds/interarrival_ks/lo", "fidelity/cds/interarrival_ks/pass", "coverage/cds/missing_pairs/pass",
                "timing/seconds", "timing/worker_peak_rss_mb"):
        assert col in run, col
    assert {r["timing/worker_pid"] for r in rows} - {os.getpid()}  # the cells ran in worker processes
    assert rows[4]["fidelity/cds/interarrival_ks/value"] is not None and rows[4]["verdict"] is None


def test_same_spec_same_table_with_one_worker_and_a_rerun_resumes(spec, local, tmp_path, paritybed_cli):
    out, _ = local
    code, text = paritybed_cli("sweep", str(spec), "--out", str(tmp_path / "one"), "--workers", "1")
    assert code == 0, text
    assert measured(tmp_path / "one" / "runs.parquet") == measured(out / "runs.parquet")
    code, text = paritybed_cli("sweep", str(spec), "--out", str(tmp_path / "one"), "--workers", "1")
    assert code == 0 and "(0 run now, 6 found done, 0 failed)" in text


def test_calibrate_reads_a_sweep_and_writes_thresholds_plots_and_the_holdout_score(local, tmp_path, paritybed_cli):
    import json

    from paritybed.parity.calibration import CALIBRATED

    out, _ = local
    code, text = paritybed_cli("calibrate", str(out), "--holdout", str(out), "--out", str(tmp_path / "c.json"),
                               "--plots", str(tmp_path / "plots"))
    assert code == 0, text
    assert "calibrated thresholds" in text and "held-out set" in text
    doc = json.loads((tmp_path / "c.json").read_text())
    assert set(doc["gate"]) == {t.key for t in CALIBRATED}
    assert doc["sweep"]["runs"] == 4 and doc["sweep"]["noise_rows"] == 2 and doc["sweep"]["name"] == "tiny"
    assert doc["holdout"]["calibrated"]["runs"] == 4
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(f"{t.field}.png" for t in CALIBRATED)
    code, text = paritybed_cli("calibrate", str(tmp_path), "--out", str(tmp_path / "x.json"))
    assert code == 2 and "not a `paritybed sweep` output folder" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert proc.poll() is None, "the dask scheduler exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"no Dask scheduler on port {port} after {seconds} s")


def test_an_existing_cluster_started_separately_gives_the_same_table(spec, local, tmp_path, paritybed_cli):
    """`dask scheduler` and `dask worker` as processes of their own on loopback, then --scheduler."""
    out, _ = local
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = []
    try:
        procs.append(subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_port(port, procs[0])
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", addr, "--nthreads", "1", "--no-nanny",
                                       "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        code, text = paritybed_cli("sweep", str(spec), "--out", str(tmp_path / "remote"), "--scheduler", addr)
        assert code == 0, text
        rows = pq.read_table(str(tmp_path / "remote" / "runs.parquet")).to_pylist()
        assert {r["timing/worker_pid"] for r in rows} == {procs[1].pid}  # every cell ran on that worker
        assert measured(tmp_path / "remote" / "runs.parquet") == measured(out / "runs.parquet")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_no_scheduler_at_the_address_is_an_environment_error(spec, tmp_path, paritybed_cli):
    code, text = paritybed_cli("sweep", str(spec), "--out", str(tmp_path / "o"), "--scheduler",
                               f"tcp://127.0.0.1:{_free_port()}")
    assert code == 3 and "no Dask scheduler answers" in text


def test_a_failed_cell_is_recorded_and_the_sweep_goes_on(spec, tmp_path, paritybed_cli):
    bad = spec.parent / "with-a-bad-cell.yaml"
    bad.write_text(SPEC.replace("seeds: 2", "seeds: [100]").replace(
        "arms.staging.volume_factor: [0.5]", 'population: [{folder: "/nonexistent/patients"}]'))
    code, text = paritybed_cli("sweep", str(bad), "--out", str(tmp_path / "o"), "--workers", "1")
    assert code == 1 and "failed" in text
    rows = pq.read_table(str(tmp_path / "o" / "runs.parquet")).to_pylist()
    assert [r["error"] is None for r in rows] == [True, False, True]
    assert "/nonexistent/patients" in rows[1]["error"]


# ------------------------------------------------------------------------------------ shared cache
def test_concurrent_generation_of_one_population_is_serialised(tmp_path):
    """Two workers asking for the same Synthea population: one generates, the other waits and
    then finds it (the cache entry's lock)."""
    from paritybed.core.cache import entry_lock

    target = tmp_path / "populations" / "abc"
    inside, overlaps = [], []

    def worker() -> None:
        with entry_lock(target):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.2)
            inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps
