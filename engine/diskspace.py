"""Free space on the filesystem of a path, and the words for a full disk.
Stdlib only (the workloads use it; the supervisor keeps its own copy of
`mount_point`, as it imports nothing from the package).

- `free_bytes(path)`: bytes an unprivileged writer may still use on the
  filesystem holding `path` (its nearest existing parent), None if unknown.
- `mount_point(path)`: the mount that holds it (walks up while the device
  stays the same).
- `where_free(path)`: "12 KiB free on /mnt/x", for one-line messages.
- `is_no_space(exc)`: an OSError that means the disk (or its quota) is full.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path | str) -> int | None:
    try:
        st = os.statvfs(_existing(Path(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def mount_point(path: Path | str) -> Path:
    """The mount point of the filesystem holding `path`."""
    here = _existing(Path(path))
    try:
        dev = here.stat().st_dev
        while here != here.parent and here.parent.stat().st_dev == dev:
            here = here.parent
    except OSError:
        pass
    return here


def human(size: int | None) -> str:
    if size is None:
        return "unknown space"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{size} bytes"


def where_free(path: Path | str) -> str:
    """"<N> free on <mount>" for `path`'s filesystem."""
    return f"{human(free_bytes(path))} free on {mount_point(path)}"
