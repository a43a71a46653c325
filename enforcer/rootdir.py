"""Root-only directories for the control plane's state (bpffs pins, name locks, manifests).

An enforced agent is a local, unprivileged process on the same machine.  /sys/fs/bpf is
world-writable (mode 1777) on most distributions, so a pin folder at a predictable name there can
be created by the agent before the control plane starts and filled with symlinks to maps the agent
pinned itself: the control plane would then adopt the attacker's maps.  Everything the control
plane reads back is therefore kept under a directory that only root can write, and that directory
is checked (not a symlink, owned by root, no group/other access) every time it is used, not
only when created.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from paritybed.core.errors import EnvironmentProblem


def secure_dir(path: Path, *, parents: tuple[Path, ...] = ()) -> Path:
    """Create ``path`` (mode 0700, root) or verify that the existing one is safe to trust.

    ``parents`` are the directories between a world-writable mount point and ``path`` that are
    ours too (created and checked the same way, outermost first)."""
    for d in (*parents, path):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        check_root_only(d)
    return path


def check_root_only(d: Path) -> None:
    """Refuse a directory an unprivileged user could have made or can still change."""
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{d} vanished while the control plane was using it") from None
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != 0:
        problem = f"is owned by uid {st.st_uid}, not root"
    elif st.st_mode & 0o022:
        problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        raise EnvironmentProblem(
            f"refusing control-plane state under {d}: it {problem}; a local user may have planted it",
            hint=f"inspect it, remove it as root (rm -r {d}) and start again")


def check_entries(d: Path) -> None:
    """Refuse symlinks among a state directory's entries (a pin must be the object itself)."""
    for p in d.iterdir():
        if p.is_symlink():
            raise EnvironmentProblem(f"refusing control-plane state: {p} is a symbolic link",
                                     hint=f"inspect {d}, remove it as root and start again")
