"""A damaged index at start: kept aside, never deleted, and replaced by a fresh one.

The index (``state.db``) only records what the folders and the peers say, so a new one is
rebuilt from them: each folder's first scan finds its files on disk and indexes them again,
and the peers, seeing a new index ID, send their indexes again. The files are where they were,
so nothing is downloaded again (peers hold the same content: no conflict either). The damaged
file is kept beside it as ``state.db.broken-YYYYMMDD-HHMMSS`` (with its ``-wal`` file, if any,
under the matching name, so that SQLite can still open it), for a person or a tool to look at.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .control import daemon_lock

log = logging.getLogger(__name__)

#: What SQLite says of a file that is not (or no longer) a sound database.
_DAMAGE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


@dataclass(frozen=True)
class IndexRebuild:
    """A damaged index set aside at start: why, where it is now, and when."""

    reason: str
    kept: Path
    at: float

    def notice(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return (
            f"the index was damaged ({self.reason}); at {when} a new one was started, "
            f"rebuilt from the folders, and the damaged one kept as {self.kept}"
        )


def recover_index(path: Path, socket_path: Path) -> IndexRebuild | None:
    """If the index at ``path`` is damaged, move it aside (under the daemon's lock, so never
    from under a running daemon) and say so; None when it is sound or does not exist yet."""
    with daemon_lock(socket_path):
        reason = damage(path)
        if reason is None:
            return None
        kept = set_aside(path)
    rebuild = IndexRebuild(reason, kept, time.time())
    log.warning("%s", rebuild.notice())
    return rebuild


def damage(path: Path) -> str | None:
    """SQLite's words for what is wrong with the database at ``path``, or None when it is
    sound, absent, or cannot be read for another reason (that is :func:`open_store`'s to
    report: a busy or unreadable file is not a damaged one). ``quick_check`` reads every page:
    about 0.2 s for an index of 300,000 files."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _DAMAGE:
            return str(exc)
        return None
    finally:
        conn.close()
    if rows == [("ok",)]:
        return None
    # quick_check says e.g. "*** in database main ***\nPage 8: btreeInitPage() returns …".
    lines = str(rows[0][0]).splitlines() if rows else []
    return "; ".join(line for line in lines if not line.startswith("***")) or "quick_check failed"


def set_aside(path: Path) -> Path:
    """Rename the database and its write-ahead log out of the way; the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    os.replace(path, kept)
    for suffix in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            os.replace(sidecar, kept.with_name(kept.name + suffix))
    return kept
