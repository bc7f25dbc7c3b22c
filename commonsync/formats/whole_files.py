"""Files written whole: a reader finds the old content or the new, never a part of either.

The content goes to a temporary file of its own beside the target, is flushed to disk, and
is renamed over the target; then the directory is flushed, so that the rename survives a
crash. Each writer gets a temporary name of its own: two writers of the same file at once
(a folder key handed over by a session while the device writes it too) each rename a
complete file, and the last rename wins, instead of one renaming the other's half-written
file or finding it gone. A writer killed mid-write leaves its temporary file: the next write
of the same file removes it, once it is old enough to be no running writer's.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

#: A temporary file untouched for this long (seconds) is an interrupted writer's.
STALE_TEMP_SECONDS = 3600.0


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
    remove_stale_temps(path)


def remove_stale_temps(path: Path, *, older_than: float = STALE_TEMP_SECONDS) -> int:
    """Remove the temporary files that interrupted writes of ``path`` left beside it (their
    names are ``mkstemp``'s: ``.NAME.XXXXXXXX.tmp``), untouched for ``older_than`` seconds;
    returns how many. Best effort: one that cannot be removed stays."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    removed = 0
    deadline = time.time() - older_than
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                if (
                    entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < deadline
                ):
                    os.unlink(entry.path)
                    removed += 1
    return removed


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
