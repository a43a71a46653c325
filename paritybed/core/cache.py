"""Where paritybed keeps what it builds or downloads once (Synthea, populations, the HAPI FHIR
launcher): ``$PARITYBED_CACHE``, else ``$XDG_CACHE_HOME/paritybed`` (``~/.cache/paritybed``)."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from paritybed.core.errors import EnvironmentProblem


def cache_dir() -> Path:
    """paritybed's cache (``$PARITYBED_CACHE``, else ``$XDG_CACHE_HOME/paritybed``)."""
    env = os.environ.get("PARITYBED_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paritybed"


@contextmanager
def entry_lock(target: Path) -> Iterator[None]:
    """Hold the lock of the cache entry `target` (``.<name>.lock`` beside it): of several
    processes (a sweep's workers) asking for the same entry at once, one makes it and the others
    wait for it, then find it made; an entry is never replaced under a process reading it."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write the paritybed cache {target.parent}: {e.strerror}",
                                 hint="set PARITYBED_CACHE to a writable folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
