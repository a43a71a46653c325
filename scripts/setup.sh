#!/usr/bin/env bash
# All set-up for paritybed on Debian/Ubuntu, idempotent: `make demo` and `make test` call it.
#
#  1. (root) Debian packages: Python venv support, Java 17 + Maven (Synthea), BCC and kernel
#     headers (eBPF enforcement), iproute2.  A non-root user is told what needs root.
#  2. (root) the kernel-header link BCC needs at /lib/modules/$(uname -r)/build.
#  3. the Python venv at .venv with paritybed and its pinned dependencies (editable).
#  4. BCC's Python module exposed to the venv (the PyPI package named `bcc` is unrelated).
#  5. Synthea resolved from Maven Central into the paritybed cache (or SYNTHEA_JAR used).
#  6. the HAPI FHIR server (fhir/hapi, a Maven module) built into the paritybed cache, keyed by
#     a hash of its sources (`paritybed fhir hapi`).  Under CI a failed build fails set-up.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
warn() { printf '\033[33m[setup] %s\033[0m\n' "$*" >&2; }

# Under PARITYBED_REQUIRE_SYNTHEA=1 (what .ci/run sets) a Synthea that cannot be resolved or run
# fails the set-up (exit 3) instead of a warning, so CI cannot pass without one real Synthea run.
synthea_missing() {
  if [ "${PARITYBED_REQUIRE_SYNTHEA:-}" = 1 ]; then
    warn "PARITYBED_REQUIRE_SYNTHEA=1: $*"; exit 3
  fi
  warn "$*; Synthea commands will say so"
}

SYNTHEA_VERSION="${SYNTHEA_VERSION:-3.3.0}"
CACHE="${PARITYBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/paritybed}"
PY="${PYTHON:-python3}"
is_root=0; [ "$(id -u)" = 0 ] && is_root=1

# ---------------------------------------------------------------- 1. Debian packages
# wrk: load generator for `make bench`; docker-compose: `docker compose config` checks of the
# HAPI FHIR compose file where the docker CLI has no compose plugin (no engine is needed).
apt_pkgs=(python3-venv python3-pip openjdk-17-jre-headless maven iproute2
          bpfcc-tools python3-bpfcc linux-headers-amd64 ca-certificates wrk)
missing=()
if command -v dpkg >/dev/null 2>&1; then
  for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
fi
# Java may come from elsewhere (a JDK tarball, SDKMAN): do not insist on the Debian package then.
if command -v java >/dev/null 2>&1; then
  missing=("${missing[@]/openjdk-17-jre-headless/}")
fi
if command -v mvn >/dev/null 2>&1; then missing=("${missing[@]/maven/}"); fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
read -r -a missing <<<"${missing[*]:-}"
if [ ${#missing[@]} -gt 0 ]; then
  if [ $is_root = 1 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/paritybed-apt.log 2>&1 || {
      apt-get update >>/tmp/paritybed-apt.log 2>&1
      apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/paritybed-apt.log 2>&1 || {
        warn "apt-get failed (see /tmp/paritybed-apt.log)"; exit 3; }
    }
  else
    warn "not root: these Debian packages need root to install: ${missing[*]}"
    warn "  run: sudo apt-get install ${missing[*]}"
    warn "  without them: no BCC/eBPF (live mode and kernel tests skip), and no Synthea without Java/Maven."
  fi
fi

# ---------------------------------------------------------------- 2. kernel headers for BCC
kbuild="/lib/modules/$(uname -r)/build"
if [ ! -e "$kbuild" ]; then
  hdr="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$hdr" ] && [ $is_root = 1 ]; then
    common="${hdr%-amd64}-common"
    mkdir -p "/lib/modules/$(uname -r)"
    ln -sfn "$hdr" "$kbuild"
    [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$(uname -r)/source"
    say "linked kernel headers: $kbuild -> $hdr"
  elif [ $is_root = 0 ]; then
    warn "not root: BCC needs kernel headers at $kbuild (link it to /usr/src/linux-headers-*-amd64 as root)"
  else
    warn "no kernel headers under /usr/src: BCC cannot compile the eBPF programs"
  fi
fi

# ---------------------------------------------------------------- 3. the venv
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  warn "paritybed needs Python >= 3.11 (found: $("$PY" --version 2>&1))"; exit 3
fi
stamp=".venv/.paritybed-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/paritybed ]; then
  say "installing paritybed and its pinned dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" >"$stamp"
fi

# the linter on the package as installed (the editable install's import hook hides the mapped
# folders from grimp): .venv/bin/lint-imports runs scripts/lint_imports.py
printf '#!/bin/sh\nexec "%s/.venv/bin/python" "%s/scripts/lint_imports.py" "$@"\n' "$PWD" "$PWD" >.venv/bin/lint-imports
chmod +x .venv/bin/lint-imports

# ---------------------------------------------------------------- 4. BCC into the venv
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ -d /usr/lib/python3/dist-packages/bcc ] && [ ! -e "$site/bcc" ]; then
  ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
  say "exposed BCC's Python module to the venv"
fi

# ---------------------------------------------------------------- 5. Synthea
if [ -n "${SYNTHEA_JAR:-}" ]; then
  [ -f "$SYNTHEA_JAR" ] || { warn "SYNTHEA_JAR=$SYNTHEA_JAR does not exist"; exit 3; }
  say "using SYNTHEA_JAR=$SYNTHEA_JAR"
else
  sdir="$CACHE/synthea/$SYNTHEA_VERSION"
  if [ ! -f "$sdir/lib/synthea-$SYNTHEA_VERSION.jar" ]; then
    if command -v mvn >/dev/null 2>&1; then
      say "resolving Synthea $SYNTHEA_VERSION from Maven Central into $sdir"
      mkdir -p "$sdir"
      sed "s/@SYNTHEA_VERSION@/$SYNTHEA_VERSION/" scripts/synthea-pom.xml >"$sdir/pom.xml"
      if ! mvn -q -B -f "$sdir/pom.xml" dependency:copy-dependencies -DoutputDirectory="$sdir/lib" \
             >"$sdir/mvn.log" 2>&1; then
        synthea_missing "could not resolve Synthea from Maven Central (see $sdir/mvn.log)"
      fi
    else
      synthea_missing "Maven not found: Synthea cannot be resolved (install maven, or set SYNTHEA_JAR)"
    fi
  fi
fi
if [ "${PARITYBED_REQUIRE_SYNTHEA:-}" = 1 ] && ! command -v java >/dev/null 2>&1; then
  synthea_missing "java not found: Synthea cannot run (install openjdk-17-jre-headless)"
fi

# ---------------------------------------------------------------- 6. HAPI FHIR (fhir/hapi)
# Idempotent: python -m paritybed.fhir.hapi_build returns at once when the build of the current
# sources exists (~/.cache/paritybed/hapi/<version>/<hash>/), else runs Maven (~10 s with the
# jars in ~/.m2, a few minutes on a fresh machine).  `make demo` skips it (PARITYBED_SETUP_HAPI=0):
# the demo never starts HAPI, and on an empty Maven cache the build downloads ~300 MB.
if [ "${PARITYBED_SETUP_HAPI:-1}" = 0 ]; then
  say "HAPI FHIR server: not built for the demo (\`make test\` and \`make setup\` build it)"
elif command -v mvn >/dev/null 2>&1 && command -v java >/dev/null 2>&1; then
  if ! hapi_dir="$(.venv/bin/python -P -m paritybed.fhir.hapi_build)"; then
    if [ "${PARITYBED_REQUIRE_HAPI:-}" = 1 ]; then
      warn "PARITYBED_REQUIRE_HAPI=1: the HAPI FHIR server did not build (see the message above)"; exit 3
    fi
    warn "the HAPI FHIR server did not build: \`paritybed fhir hapi\` and the HAPI tests will say so"
  fi
elif [ "${PARITYBED_REQUIRE_HAPI:-}" = 1 ]; then
  warn "PARITYBED_REQUIRE_HAPI=1: Java and Maven are needed to build the HAPI FHIR server"; exit 3
else
  warn "Java/Maven not found: the HAPI FHIR server is not built (\`paritybed fhir hapi\` will say so)"
fi
say "ready: .venv/bin/paritybed"
