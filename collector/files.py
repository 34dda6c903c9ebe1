"""Writing small state files so that a crash leaves the old version or the new, never a mix."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` through a temporary file, readable by the owner only
    (these files hold keys, passwords, site lists). ``durable``: fsync the file and its
    directory, for state that must survive a power loss (the spool's)."""
    raw = data.encode() if isinstance(data, str) else data
    # A temporary file of this call's own (created 0600): writers of one file at once (the
    # sites' reload and an admin's change) each replace it whole; with one shared name the
    # first replace took the other's file away.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
