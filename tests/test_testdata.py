"""The vendored test data is the shared Synthea data, byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from paritybed.testdata import SHARED, synthea_r4


def _digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir() if f.is_file()}


def test_vendored_archive_unpacks_to_the_37_patients():
    folder = synthea_r4()
    bundles = [p for p in folder.glob("*.json") if not p.name.startswith("0-")]
    assert len(bundles) == 37 and (folder / "SOURCE.md").exists()
    assert synthea_r4() == folder  # unpacked once, then reused


def test_vendored_copy_equals_the_shared_data_when_present():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not beside this checkout")
    assert _digests(synthea_r4()) == _digests(SHARED)
