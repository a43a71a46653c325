"""Build paritybed's HAPI FHIR server (the Maven module in fhir/hapi/) into the cache, once.

    python -P -m paritybed.fhir.hapi_build          # what scripts/setup.sh runs

The build is keyed by a hash of the module's sources (pom.xml and everything under src/), so
it lands in ``<cache>/hapi/<HAPI version>/<hash>/``: the application jar, ``lib/`` with every
runtime dependency Maven resolved from Maven Central, and a ``BUILT`` stamp written last.  A
second call with the same sources does nothing; editing a source builds anew and removes the
older builds of that version.  The launcher (fhir/hapi_launcher.py) finds the build the same
way, so an out-of-date build is never started.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from paritybed.core.cache import cache_dir
from paritybed.core.errors import EnvironmentProblem

MODULE = Path(__file__).resolve().parent / "hapi"
JAR = "paritybed-hapi.jar"
STAMP = "BUILT"
MAIN_CLASS = "org.paritybed.hapi.HapiServer"
SETUP_HINT = "run `make setup` (it builds the HAPI FHIR server with Maven; Java 17 and Maven are needed)"


def hapi_version(module: Path = MODULE) -> str:
    """The HAPI FHIR version the module pins (``<hapi.version>`` in its pom.xml)."""
    m = re.search(r"<hapi\.version>([^<]+)</hapi\.version>", (module / "pom.xml").read_text(encoding="utf-8"))
    if not m:
        raise EnvironmentProblem(f"{module / 'pom.xml'}: no <hapi.version> property")
    return m.group(1).strip()


def sources(module: Path = MODULE) -> list[Path]:
    """The files the build depends on: pom.xml and every file under src/, in a stable order."""
    return [module / "pom.xml", *sorted(p for p in (module / "src").rglob("*") if p.is_file())]


def source_hash(module: Path = MODULE) -> str:
    """16 hex digits of SHA-256 over the sources' relative paths and contents."""
    h = hashlib.sha256()
    for p in sources(module):
        h.update(p.relative_to(module).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_dir(module: Path = MODULE) -> Path:
    """Where the build of the current sources lives (whether or not it exists yet)."""
    return cache_dir() / "hapi" / hapi_version(module) / source_hash(module)


def installed_build(module: Path = MODULE) -> Path:
    """The finished build of the current sources, or EnvironmentProblem saying how to make it."""
    if not module.is_dir():
        raise EnvironmentProblem(f"the HAPI FHIR module is not in this installation ({module})",
                                 hint="install paritybed from its git checkout (pip install -e .)")
    target = build_dir(module)
    if not (target / STAMP).is_file():
        raise EnvironmentProblem(f"the HAPI FHIR server is not built for these sources (no {target / STAMP})",
                                 hint=SETUP_HINT)
    return target


def classpath(target: Path) -> str:
    return f"{target / JAR}:{target / 'lib'}/*"


def build(module: Path = MODULE, *, quiet: bool = False) -> Path:
    """Build (or find) the current sources' build; returns its folder.  Maven's output goes to
    ``build.log`` beside it; a failure is EnvironmentProblem naming that log."""
    target = build_dir(module)
    if (target / STAMP).is_file():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EnvironmentProblem("Maven not found: the HAPI FHIR server cannot be built (`mvn` is not on PATH)",
                                 hint="install maven (scripts/setup.sh does as root)")
    if shutil.which("java") is None:
        raise EnvironmentProblem("Java not found: the HAPI FHIR server needs Java 17", hint=SETUP_HINT)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = partial / "build.log"
    cmd = [mvn, "-B", "-f", str(module / "pom.xml"), "package", "dependency:copy-dependencies",
           "-DincludeScope=runtime", f"-DoutputDirectory={partial / 'lib'}", f"-Dparitybed.build={partial / 'maven'}"]
    started = time.monotonic()
    if not quiet:
        print(f"building HAPI FHIR {hapi_version(module)} server into {target} (Maven; a first build resolves "
              "~300 MB of jars from Maven Central)", file=sys.stderr, flush=True)
    with log.open("wb") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    jar = partial / "maven" / JAR
    if code != 0 or not jar.is_file():
        kept = target.with_name(target.name + ".failed")
        shutil.rmtree(kept, ignore_errors=True)
        partial.rename(kept)
        raise EnvironmentProblem(f"the Maven build of the HAPI FHIR server failed (exit {code}); see {kept / 'build.log'}")
    jar.rename(partial / JAR)
    shutil.rmtree(partial / "maven")
    (partial / STAMP).write_text(f"{time.monotonic() - started:.1f} s\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    for old in target.parent.iterdir():  # older builds of this version
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    if not quiet:
        print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paritybed.fhir.hapi_build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--print-dir", action="store_true", help="print the build folder of the current sources and exit")
    args = ap.parse_args(argv)
    if args.print_dir:
        print(build_dir())
        return 0
    try:
        print(build())
    except EnvironmentProblem as e:
        print(f"error: {e.message}" + (f"\n  hint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
