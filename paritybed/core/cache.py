"""Where paritybed keeps what it builds or downloads once (Synthea, populations, the HAPI FHIR
launcher): ``$PARITYBED_CACHE``, else ``$XDG_CACHE_HOME/paritybed`` (``~/.cache/paritybed``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """paritybed's cache (``$PARITYBED_CACHE``, else ``$XDG_CACHE_HOME/paritybed``)."""
    env = os.environ.get("PARITYBED_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paritybed"
