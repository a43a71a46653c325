"""The 37 real Synthea patients the tests and benchmarks use.

A byte-for-byte copy of ``../shared/data/synthea-r4`` (real Synthea output from the Blaze
repository, Apache-2.0; provenance in tests/data/synthea-r4.SOURCE.md) is vendored as
``tests/data/synthea-r4.tar.xz`` (1.5 MB instead of 58 MB), so a clean clone tests the same data
wherever it is checked out.  It is unpacked once into the paritybed cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHIVE = REPO / "tests" / "data" / "synthea-r4.tar.xz"
SHARED = REPO.parent / "shared" / "data" / "synthea-r4"


def cache_root() -> Path:
    return Path(os.environ.get("PARITYBED_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paritybed")


def synthea_r4() -> Path:
    """The folder of the 37-patient data set (unpacked from the vendored archive on first use)."""
    if not ARCHIVE.exists():
        if SHARED.is_dir():
            return SHARED
        raise FileNotFoundError(f"neither {ARCHIVE} nor {SHARED} exists")
    digest = hashlib.sha256(ARCHIVE.read_bytes()).hexdigest()[:16]
    dest = cache_root() / "testdata" / digest
    folder = dest / "synthea-r4"
    if (dest / ".complete").exists():
        return folder
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="unpack-", dir=dest.parent))
    try:
        with tarfile.open(ARCHIVE, "r:xz") as tar:
            try:
                tar.extractall(tmp, filter="data")
            except TypeError:  # Python < 3.11.4 has no extraction filters; the archive is ours
                tar.extractall(tmp)
        (tmp / ".complete").write_text(digest + "\n")
        try:
            tmp.rename(dest)
        except OSError:  # another process unpacked it first
            if not (dest / ".complete").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
