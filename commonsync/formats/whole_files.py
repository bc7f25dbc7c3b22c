"""Files written whole: a reader finds the old content or the new, never a part of either.

The content goes to a temporary file of its own beside the target, is flushed to disk, and
is renamed over the target; then the directory is flushed, so that the rename survives a
crash. Each writer gets a temporary name of its own: two writers of the same file at once
(a folder key handed over by a session while the device writes it too) each rename a
complete file, and the last rename wins, instead of one renaming the other's half-written
file or finding it gone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_whole(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``, created with permissions ``mode`` (owner-only by
    default: key files and state are written this way). Raises :class:`OSError`."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename into it), where the system allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
