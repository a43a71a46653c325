"""Run the real Synthea (Java, main class ``App``) as a subprocess and cache what it writes.

Why a subprocess and not stand-in data: the parity question is whether *synthetic* patients are
realistic enough to build an enforcement envelope on, so the patients must come from the real
generator.  Synthea is resolved by scripts/setup.sh from Maven Central into
``<cache>/synthea/<version>/lib/`` (or the user points ``SYNTHEA_JAR`` at a with-dependencies jar).

Determinism: Synthea 3 simulates up to *today* unless given a reference date, so we always pass
``-r`` (default 2026-01-01); with the same seeds, version and options every patient bundle is
byte-identical.  The hospital/practitioner bundles carry the wall-clock time in their *file name*
only, so they are renamed to ``hospitalInformation.json`` / ``practitionerInformation.json``.

Results are cached in ``<cache>/populations/<key>/`` (key: version + every option) and copied into
``--out``; an identical second call returns at once with ``cached=True``.  Generation holds a
lock per entry (``<cache>/populations/.<key>.lock``), so concurrent processes (a sweep's workers)
generate each population once and never see a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from paritybed.core.cache import entry_lock
from paritybed.core.errors import EnvironmentProblem, InputError
from paritybed.fhir.population import cache_dir

#: The Synthea version scripts/setup.sh resolves (keep the two in step).
SYNTHEA_VERSION = os.environ.get("SYNTHEA_VERSION", "3.3.0")
DEFAULT_REFERENCE_DATE = "20260101"
DEFAULT_YEARS_OF_HISTORY = 3
MANIFEST = "paritybed-synthea.json"
#: JVM options for Synthea's single generator thread: the client compiler only and the serial
#: collector.  A run of a minute spends much of its CPU compiling and collecting with the
#: defaults (tiered C2 compilation, a parallel collector): 50 patients with ten years of history
#: took 48.7 s of CPU (9.5 s of it system time) with the defaults and 33.3 s with these, with
#: byte-identical bundles (docs/population.md).
JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
SETUP_HINT = "run `bash scripts/setup.sh` (resolves Synthea from Maven Central) or set SYNTHEA_JAR to a synthea-with-dependencies.jar"

#: Exporter settings: FHIR R4 with hospital + practitioner bundles, everything else off.
EXPORTER_SETTINGS: dict[str, str] = {
    # One generator thread: with Synthea's default thread pool, patients generated in parallel
    # share provider state (utilization, assignment), so the same seed gave different bundles
    # from run to run (seen: 7 of 61 files differed).  Determinism is worth the slower run.
    "generate.thread_pool_size": "1",
    "exporter.fhir.export": "true",
    "exporter.fhir.transaction_bundle": "true",
    "exporter.fhir.bulk_data": "false",
    "exporter.hospital.fhir.export": "true",
    "exporter.practitioner.fhir.export": "true",
    "exporter.use_uuid_filenames": "false",
    "exporter.subfolders_by_id_substring": "false",
    "exporter.pretty_print": "false",
    "exporter.metadata.export": "false",
    "exporter.ccda.export": "false",
    "exporter.csv.export": "false",
    "exporter.text.export": "false",
    "exporter.json.export": "false",
    "exporter.cpcds.export": "false",
    "exporter.bfd.export": "false",
    "exporter.cdw.export": "false",
    "exporter.clinical_note.export": "false",
    "exporter.symptoms.csv.export": "false",
    "exporter.symptoms.text.export": "false",
    "exporter.groups.fhir.export": "false",
    "exporter.fhir_stu3.export": "false",
    "exporter.fhir_dstu2.export": "false",
    "exporter.hospital.fhir_stu3.export": "false",
    "exporter.hospital.fhir_dstu2.export": "false",
    "exporter.practitioner.fhir_stu3.export": "false",
    "exporter.practitioner.fhir_dstu2.export": "false",
    "generate.log_patients.detail": "simple",
}

# "2 -- Jessie665 Glover433 (16 y/o M) Whitman, Massachusetts  (22620)"; DECEASED before the seed.
_PATIENT_LINE = re.compile(r"^\s*(\d+) -- .+\(\d+ y/o \w+\).*?(DECEASED)?\s*\(\d+\)\s*$")


@dataclass(frozen=True)
class SyntheaOptions:
    """Everything that changes Synthea's output: the cache key is built from these + the version."""

    patients: int
    seed: int
    clinician_seed: int | None = None  # None: the population seed
    state: str | None = None  # None: Synthea's default (Massachusetts)
    city: str | None = None
    years_of_history: int = DEFAULT_YEARS_OF_HISTORY
    reference_date: str = DEFAULT_REFERENCE_DATE  # YYYYMMDD
    extra: tuple[tuple[str, str], ...] = ()  # further --config=value settings

    def check(self) -> None:
        """Reject options Synthea would misread, before starting a 10-second JVM."""
        if self.patients < 1:
            raise InputError(f"--patients must be at least 1 (got {self.patients})")
        if self.years_of_history < 0:
            raise InputError(f"--years-of-history must be >= 0 (got {self.years_of_history})")
        if not re.fullmatch(r"\d{8}", self.reference_date):
            raise InputError(f"--reference-date must be YYYYMMDD (got {self.reference_date!r})")
        if self.city and not self.state:
            raise InputError("--city needs --state (Synthea takes `state [city]`)")


@dataclass
class SyntheaResult:
    path: Path  # the folder holding fhir/*.json (pass it to load_population / fhir load)
    cached: bool
    patients: int  # patient bundles written (living and deceased)
    files: int  # all bundle files, including the hospital and practitioner bundles
    seconds: float
    deceased: int = 0
    cache_path: Path | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------- resolution
def java_executable() -> str:
    """`java` on PATH, or EnvironmentProblem."""
    java = shutil.which("java")
    if not java:
        raise EnvironmentProblem(
            "Java not found: Synthea needs Java 17 (`java` is not on PATH)",
            hint="run `bash scripts/setup.sh` as root (installs openjdk-17-jre-headless) or install a JDK 17",
        )
    return java


def synthea_classpath() -> str:
    """The class path to run Synthea with: ``$SYNTHEA_JAR`` if set, else the setup cache."""
    jar = os.environ.get("SYNTHEA_JAR")
    if jar:
        if not Path(jar).is_file():
            raise EnvironmentProblem(f"SYNTHEA_JAR={jar} is not a file", hint=SETUP_HINT)
        if not zipfile.is_zipfile(jar):
            raise EnvironmentProblem(f"SYNTHEA_JAR={jar} is not a jar (zip) file", hint=SETUP_HINT)
        return str(Path(jar).resolve())
    lib = cache_dir() / "synthea" / SYNTHEA_VERSION / "lib"
    if not (lib / f"synthea-{SYNTHEA_VERSION}.jar").is_file():
        raise EnvironmentProblem(f"Synthea {SYNTHEA_VERSION} is not resolved (no {lib}/synthea-{SYNTHEA_VERSION}.jar)", hint=SETUP_HINT)
    return f"{lib}/*"


def synthea_version() -> str:
    """The version of the Synthea that `generate` runs (from the jar's Maven metadata)."""
    jar = os.environ.get("SYNTHEA_JAR")
    if not jar:
        return SYNTHEA_VERSION
    synthea_classpath()  # validates the jar
    try:
        with zipfile.ZipFile(jar) as z:
            props = z.read("META-INF/maven/org.mitre.synthea/synthea/pom.properties").decode()
        match = re.search(r"^version=(.+)$", props, re.M)
        if match:
            return match.group(1).strip()
    except KeyError:
        pass
    st = Path(jar).stat()  # no Maven metadata: identify the jar by name and size
    return f"{Path(jar).name}-{st.st_size}"


# ----------------------------------------------------------------------------------- commands
def synthea_args(opts: SyntheaOptions, out_dir: Path) -> list[str]:
    """Synthea's command-line arguments (after ``App``) for `opts`, writing under `out_dir`."""
    args = [
        "-s", str(opts.seed),
        "-cs", str(opts.seed if opts.clinician_seed is None else opts.clinician_seed),
        "-r", opts.reference_date,
        "-p", str(opts.patients),
        f"--exporter.baseDirectory={out_dir}",
        f"--exporter.years_of_history={opts.years_of_history}",
    ]
    settings = {**EXPORTER_SETTINGS, **dict(opts.extra)}
    args += [f"--{k}={v}" for k, v in settings.items()]
    if opts.state:
        args.append(opts.state)
        if opts.city:
            args.append(opts.city)
    return args


def cache_key(opts: SyntheaOptions, version: str) -> str:
    """Stable key of (version, options): names the cache folder."""
    blob = json.dumps({"synthea": version, **asdict(opts), "exporter": EXPORTER_SETTINGS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------------- generate
def generate(
    patients: int,
    seed: int,
    *,
    clinician_seed: int | None = None,
    state: str | None = None,
    city: str | None = None,
    years_of_history: int = DEFAULT_YEARS_OF_HISTORY,
    reference_date: str = DEFAULT_REFERENCE_DATE,
    extra: dict[str, str] | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    use_cache: bool = True,
) -> SyntheaResult:
    """Generate `patients` living Synthea patients (plus the deceased ones Synthea also writes).

    `progress(alive_done, patients, deceased)` is called for each patient line Synthea prints.
    Without `out` the result points into the cache; with `out` the bundles are copied to ``out/fhir/`` (out must be empty, or a folder paritybed wrote before).
    """
    opts = SyntheaOptions(
        patients=patients, seed=seed, clinician_seed=clinician_seed, state=state, city=city,
        years_of_history=years_of_history, reference_date=reference_date,
        extra=tuple(sorted((extra or {}).items())),
    )
    opts.check()
    out_path = _check_out(Path(out)) if out is not None else None
    version = synthea_version()
    target = cache_dir() / "populations" / cache_key(opts, version)
    started = time.monotonic()
    cached = use_cache and (target / MANIFEST).is_file()
    if not cached:
        with entry_lock(target):
            cached = use_cache and (target / MANIFEST).is_file()  # another process made it while we waited
            if not cached:
                _run(opts, version, target, progress)
    manifest = json.loads((target / MANIFEST).read_text())
    if cached and progress:
        progress(opts.patients, opts.patients, manifest["deceased"])
    path = target
    if out_path is not None:
        _publish(target, out_path)
        path = out_path
    return SyntheaResult(
        path=path, cached=cached, patients=manifest["patients"], files=manifest["files"],
        seconds=time.monotonic() - started, deceased=manifest["deceased"], cache_path=target,
    )


def _run(opts: SyntheaOptions, version: str, target: Path, progress: Callable[[int, int, int], None] | None) -> None:
    """Run Synthea into a scratch folder next to `target`, then move it into place."""
    java, classpath = java_executable(), synthea_classpath()
    scratch = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        scratch.mkdir(parents=True)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write the paritybed cache {target.parent}: {e.strerror}", hint="set PARITYBED_CACHE to a writable folder") from None
    cmd = [java, *JVM_OPTIONS, "-cp", classpath, "App", *synthea_args(opts, scratch / "output")]
    tail: deque[str] = deque(maxlen=400)
    alive = deceased = 0
    started = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            m = _PATIENT_LINE.match(line)
            if m:
                if m.group(2):
                    deceased += 1
                else:
                    alive += 1
                if progress:
                    progress(alive, opts.patients, deceased)
        rc = proc.wait()
    except BaseException:
        if "proc" in locals() and proc.poll() is None:
            proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if rc != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        log = _keep_log(target.parent, tail)
        raise EnvironmentProblem(
            f"Synthea exited with status {rc}; the end of its output:\n{_tail(tail)}",
            hint=f"full output: {log}" if log else None,
        )
    fhir = scratch / "output" / "fhir"
    files = _normalise_names(fhir)
    n_patients = sum(1 for f in files if not f.name.startswith(("hospitalInformation", "practitionerInformation")))
    if n_patients == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise EnvironmentProblem(f"Synthea wrote no patient bundle; the end of its output:\n{_tail(tail)}")
    (scratch / "output" / "synthea.log").write_text("\n".join(tail) + "\n")
    manifest = {
        "synthea": version,
        "options": asdict(opts),
        "command": ["java", *JVM_OPTIONS, "-cp", "<synthea>", "App", *synthea_args(opts, Path("<out>"))],
        "patients": n_patients,
        "deceased": deceased,
        "files": len(files),
        "seconds": round(time.monotonic() - started, 1),
    }
    (scratch / "output" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)  # a half-written entry without a manifest
    try:
        (scratch / "output").rename(target)
    except OSError:  # another process finished the same key first: keep theirs
        if not (target / MANIFEST).is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _normalise_names(fhir: Path) -> list[Path]:
    """Drop the wall-clock timestamp from the hospital/practitioner file names (determinism)."""
    if not fhir.is_dir():
        return []
    for f in sorted(fhir.glob("*.json")):
        for stem in ("hospitalInformation", "practitionerInformation"):
            if f.name.startswith(stem) and f.name != f"{stem}.json":
                f.rename(fhir / f"{stem}.json")
    return sorted(fhir.glob("*.json"))


def _keep_log(folder: Path, lines: deque[str]) -> Path | None:
    """Keep a failed run's output (its last 400 lines) where the error message can point."""
    path = folder / "synthea-failed.log"
    try:
        path.write_text("\n".join(lines) + "\n")
    except OSError:
        return None
    return path


def _tail(lines: deque[str], n: int = 25) -> str:
    """The last `n` lines worth reading: Java stack frames are left out."""
    useful = [ln for ln in lines if not ln.lstrip().startswith("at ") and not ln.startswith("Loading ")]
    return "\n".join(useful[-n:]) or "(no output)"


# ------------------------------------------------------------------------------------- --out
def _check_out(out: Path) -> Path:
    """`out` must be creatable and writable, and empty or written by paritybed before."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".paritybed-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(f"output folder {out} is not writable: {e.strerror or e}") from None
    entries = [p for p in out.iterdir()]
    if entries and not (out / MANIFEST).is_file():
        raise InputError(f"output folder {out} is not empty and was not written by `paritybed synthea`", hint="choose an empty or new folder")
    return out


def _publish(source: Path, out: Path) -> None:
    """Make `out` an exact copy of the cache entry `source`."""
    for name in ("fhir", MANIFEST, "synthea.log"):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (out / "fhir").mkdir()
    for f in sorted((source / "fhir").glob("*.json")):
        _copy(f, out / "fhir" / f.name)
    for name in ("synthea.log", MANIFEST):  # the manifest last: it marks a complete folder
        if (source / name).is_file():
            _copy(source / name, out / name)


def _copy(src: Path, dst: Path) -> None:
    """Copy, not hard-link: editing a file under --out must never alter the cache."""
    shutil.copy2(src, dst)
