"""The real Synthea (Java subprocess): files, index, cache, determinism and the error paths.

One real run of 3 patients per session (module fixture) plus one uncached re-run for
determinism; the error paths use PATH/SYNTHEA_JAR/--out manipulations and a jar without Synthea.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.fhir.population import cache_dir, load_population
from paritybed.sim.synthea import MANIFEST, SyntheaResult, generate, synthea_version

pytestmark = pytest.mark.synthea
PARITYBED = Path(sys.executable).with_name("paritybed")
ARGS = dict(patients=3, seed=11)


def _real_synthea() -> Path | None:
    lib = cache_dir() / "synthea" / "3.3.0"
    return lib if (lib / "lib" / "synthea-3.3.0.jar").is_file() else None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, require) -> dict[str, str]:
    """A private cache that sees the Synthea resolved by scripts/setup.sh (or SYNTHEA_JAR); the
    tests skip without it, and fail under PARITYBED_REQUIRE_SYNTHEA=1 (CI)."""
    if not os.environ.get("SYNTHEA_JAR") and _real_synthea() is None:
        require("synthea", "Synthea is not resolved (run `bash scripts/setup.sh`; Maven Central unreachable?)")
    if shutil.which("java") is None:
        require("synthea", "java is not on PATH (run `bash scripts/setup.sh` as root)")
    cache = tmp_path_factory.mktemp("cache")
    if not os.environ.get("SYNTHEA_JAR"):
        (cache / "synthea").mkdir()
        (cache / "synthea" / "3.3.0").symlink_to(_real_synthea())
    return {"PARITYBED_CACHE": str(cache)}


@pytest.fixture(scope="module")
def run(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> SyntheaResult:
    seen: list[tuple[int, int, int]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARITYBED_CACHE", env["PARITYBED_CACHE"])
        result = generate(**ARGS, out=tmp_path_factory.mktemp("out") / "pop", progress=lambda *a: seen.append(a))
    assert seen and seen[-1][:2] == (3, 3), seen  # progress reached 3 living patients of 3
    return result


@pytest.fixture
def cache(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PARITYBED_CACHE", env["PARITYBED_CACHE"])
    return Path(env["PARITYBED_CACHE"])


def test_writes_fhir_r4_bundles_for_living_and_deceased_patients(run: SyntheaResult) -> None:
    assert not run.cached and run.patients >= 3 and run.files == run.patients + 2
    names = sorted(p.name for p in (run.path / "fhir").iterdir())
    assert "hospitalInformation.json" in names and "practitionerInformation.json" in names
    patients = [n for n in names if not n.endswith("Information.json")]
    assert len(patients) == run.patients
    assert all(n.count("_") >= 2 for n in patients)  # Synthea 3 names: Given_Family_<uuid>.json
    manifest = json.loads((run.path / MANIFEST).read_text())
    assert manifest["synthea"] == synthea_version() == "3.3.0"
    assert manifest["options"]["reference_date"] == "20260101" and manifest["options"]["years_of_history"] == 3
    assert not any(p.suffix == ".csv" for p in run.path.rglob("*"))  # other exporters are off


def test_the_index_reads_synthea_3_output(run: SyntheaResult, cache: Path) -> None:
    pop = load_population(run.path, strict=True, use_cache=False)  # also valid FHIR R4
    assert len(pop.patients) == run.patients
    assert sum(not p.deceased for p in pop.patients) == 3
    assert sum(p.deceased for p in pop.patients) == run.deceased
    assert pop.encounters and {e.class_code for e in pop.encounters} <= {"AMB", "EMER", "IMP", "HH", "VR", "OBSENC", "SS", "ACUTE", "NONAC", "PRENC", "FLD"}
    assert all(e.practitioner_id in set(pop.practitioners) for e in pop.encounters)
    insured = [p.id for p in pop.patients if pop.coverage_of(p.id)]
    assert insured and pop.type_counts()["Coverage"] == sum(len(pop.coverage_of(p)) for p in insured)


def test_second_identical_call_is_a_cache_hit(run: SyntheaResult, cache: Path, tmp_path: Path) -> None:
    again = generate(**ARGS, out=tmp_path / "again")
    assert again.cached and again.patients == run.patients
    for f in (run.path / "fhir").iterdir():
        assert (again.path / "fhir" / f.name).read_bytes() == f.read_bytes()
    cli = subprocess.run([str(PARITYBED), "synthea", "--patients", "3", "--seed", "11"],
                         capture_output=True, text=True, env={**os.environ, "PARITYBED_CACHE": str(cache)}, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "cached" in cli.stdout


def test_same_arguments_give_the_same_bytes(run: SyntheaResult, cache: Path, tmp_path: Path) -> None:
    fresh = generate(**ARGS, out=tmp_path / "fresh", use_cache=False)  # a second real Synthea run
    assert not fresh.cached
    a = sorted((run.path / "fhir").iterdir())
    b = sorted((fresh.path / "fhir").iterdir())
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_no_java_is_an_environment_problem(cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    with pytest.raises(EnvironmentProblem, match="Java not found"):
        generate(patients=2, seed=99)
    cli = subprocess.run([str(PARITYBED), "synthea", "--patients", "2", "--seed", "99"], capture_output=True, text=True,
                         env={**os.environ, "PATH": str(tmp_path)}, timeout=120)
    assert cli.returncode == 3 and "Java not found" in cli.stderr and "Traceback" not in cli.stderr


def test_unresolved_synthea_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PARITYBED_CACHE", str(tmp_path))
    monkeypatch.delenv("SYNTHEA_JAR", raising=False)
    with pytest.raises(EnvironmentProblem, match="not resolved") as e:
        generate(patients=2, seed=99)
    assert "scripts/setup.sh" in (e.value.hint or "") and "SYNTHEA_JAR" in (e.value.hint or "")
    monkeypatch.setenv("SYNTHEA_JAR", str(tmp_path / "missing.jar"))
    with pytest.raises(EnvironmentProblem, match="SYNTHEA_JAR=.*missing.jar is not a file"):
        generate(patients=2, seed=99)


def test_synthea_exiting_non_zero_shows_the_tail_of_its_output(cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    jar = tmp_path / "not-synthea.jar"  # a real jar without Synthea's App class: java exits 1
    with zipfile.ZipFile(jar, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    monkeypatch.setenv("SYNTHEA_JAR", str(jar))
    with pytest.raises(EnvironmentProblem, match=r"(?s)Synthea exited with status 1.*App"):
        generate(patients=2, seed=99)
    assert not list((cache / "populations").glob(".tmp-*")), "a failed run leaves no scratch folder"


def test_out_folder_must_be_writable_and_ours(run: SyntheaResult, cache: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="not writable"):
        generate(**ARGS, out=blocker / "pop")
    cli = subprocess.run([str(PARITYBED), "synthea", "--patients", "3", "--seed", "11", "--out", str(blocker / "pop")],
                         capture_output=True, text=True, env={**os.environ, "PARITYBED_CACHE": str(cache)}, timeout=120)
    assert cli.returncode == 2 and "not writable" in cli.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        generate(**ARGS, out=busy)
    assert generate(**ARGS, out=run.path).cached  # re-publishing into our own folder is fine


def test_bad_options_are_input_errors(cache: Path) -> None:
    with pytest.raises(InputError, match="--patients"):
        generate(patients=0, seed=1)
    with pytest.raises(InputError, match="YYYYMMDD"):
        generate(patients=1, seed=1, reference_date="2026-01-01")
    with pytest.raises(InputError, match="--city needs --state"):
        generate(patients=1, seed=1, city="Boston")
