"""The index store: a device's view of its folders, in SQLite, behind an async API.

One :class:`IndexStore` owns one SQLite connection in WAL mode with ``synchronous=FULL``, so
that a committed transaction survives a crash or power loss and an interrupted one leaves the
last committed state. aiosqlite does not run under trio, so each operation is one whole
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) run in a worker thread through anyio; a thread
lock keeps operations strictly one after another, and cancelling an operation interrupts its
query (``sqlite3_interrupt``) and rolls the transaction back.

What it holds, per folder:

- ``records``: the current version of every path (signed bytes plus the columns queries need),
  each stamped with a *local sequence* number that grows with every change; peers ask for
  "everything after N" (delta index exchange);
- ``peer_progress``: how far each remote device's index has been received, and that index's ID,
  which changes when the remote device resets its database;
- ``chunk_locations``: which local files hold which chunk at which offset, so that renames and
  copies are assembled from local data instead of being downloaded again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from .device_id import DeviceId
from .errors import StoreError
from .records import ChunkEntry, Kind, Record, decode_verified

T = TypeVar("T")

SCHEMA_VERSION = 1
#: Records returned by one :meth:`IndexStore.records_since` call at most.
MAX_BATCH = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (
    folder_id BLOB PRIMARY KEY,
    label     TEXT NOT NULL,
    index_id  BLOB NOT NULL,
    sequence  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    folder_id  BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    path       TEXT NOT NULL,
    local_seq  INTEGER NOT NULL,
    author     BLOB NOT NULL,
    author_seq INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    deleted    INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    on_disk    INTEGER NOT NULL,
    signed     BLOB NOT NULL,
    PRIMARY KEY (folder_id, path)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS records_by_sequence ON records (folder_id, local_seq);
CREATE TABLE IF NOT EXISTS peer_progress (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    device_id BLOB NOT NULL,
    index_id  BLOB NOT NULL,
    sequence  INTEGER NOT NULL,
    PRIMARY KEY (folder_id, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunk_locations (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    chunk_id  BLOB NOT NULL,
    path      TEXT NOT NULL,
    offset    INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    PRIMARY KEY (folder_id, chunk_id, path, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunk_locations_by_path ON chunk_locations (folder_id, path);
"""


@dataclass(frozen=True)
class IndexEntry:
    """A record as the store keeps it.

    ``signed`` are the verified signed-record bytes, forwarded as they are to other peers.
    ``on_disk`` says that the local file holds exactly this version, which makes its chunks
    sources for other files; a remote version not yet fetched is stored with ``on_disk=False``.
    """

    record: Record
    signed: bytes
    on_disk: bool
    local_sequence: int = 0


@dataclass(frozen=True, slots=True)
class FolderState:
    folder_id: bytes
    label: str
    index_id: bytes
    sequence: int


@dataclass(frozen=True, slots=True)
class PeerProgress:
    """How much of a remote device's index we have: its index ID and last sequence seen."""

    index_id: bytes
    sequence: int


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    path: str
    offset: int
    size: int


class _Abandoned(Exception):
    """An operation whose caller was cancelled before it could commit; it is rolled back."""


class IndexStore:
    """Async access to one SQLite index database. Open with :func:`open_store`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.path = path
        self._conn = connection
        self._lock = threading.Lock()  # one operation at a time, whatever the event loop does
        self._state_lock = threading.Lock()  # guards _running, for interrupt()
        self._running: threading.Event | None = None
        self._limiter = anyio.CapacityLimiter(1)

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` as one transaction in a worker thread."""
        abandoned = threading.Event()
        try:
            return await anyio.to_thread.run_sync(
                self._transaction,
                operation,
                abandoned,
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
        except anyio.get_cancelled_exc_class():
            with self._state_lock:
                abandoned.set()
                if self._running is abandoned:
                    self._conn.interrupt()
            raise

    def _transaction(
        self, operation: Callable[[sqlite3.Connection], T], abandoned: threading.Event
    ) -> T:
        with self._lock:
            with self._state_lock:
                if abandoned.is_set():
                    raise _Abandoned
                self._running = abandoned
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = operation(self._conn)
                    # interrupt() only stops a running statement: a cancellation that came
                    # between two statements is caught here. One that comes during COMMIT
                    # cannot be undone; the caller sees a cancellation of committed work.
                    if abandoned.is_set():
                        raise _Abandoned
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.Error as exc:
                raise StoreError(f"index database {self.path}: {exc}") from exc
            finally:
                with self._state_lock:
                    self._running = None

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                self._conn.close()

        await anyio.to_thread.run_sync(close)

    # -- folders ----------------------------------------------------------------------------

    async def add_folder(self, folder_id: bytes, label: str) -> FolderState:
        """Register a folder (idempotent: an existing folder keeps its index)."""

        def add(conn: sqlite3.Connection) -> FolderState:
            conn.execute(
                "INSERT OR IGNORE INTO folders (folder_id, label, index_id) VALUES (?, ?, ?)",
                (folder_id, label, os.urandom(16)),
            )
            return _folder(conn, folder_id)

        return await self._run(add)

    async def folder(self, folder_id: bytes) -> FolderState:
        return await self._run(lambda conn: _folder(conn, folder_id))

    async def folders(self) -> list[FolderState]:
        def folders(conn: sqlite3.Connection) -> list[FolderState]:
            rows = conn.execute("SELECT folder_id, label, index_id, sequence FROM folders")
            return [FolderState(*row) for row in rows]

        return await self._run(folders)

    # -- records ----------------------------------------------------------------------------

    async def put(self, folder_id: bytes, entries: Sequence[IndexEntry]) -> list[int]:
        """Store new versions, all in one transaction; returns their local sequence numbers."""

        def put(conn: sqlite3.Connection) -> list[int]:
            sequence = _folder(conn, folder_id).sequence
            assigned = []
            for entry in entries:
                sequence += 1
                record = entry.record
                conn.execute(
                    "INSERT OR REPLACE INTO records (folder_id, path, local_seq, author,"
                    " author_seq, kind, deleted, size, on_disk, signed)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        folder_id,
                        record.path,
                        sequence,
                        record.author,
                        record.sequence,
                        int(record.kind),
                        record.deleted,
                        record.size,
                        entry.on_disk,
                        entry.signed,
                    ),
                )
                if entry.on_disk:
                    _replace_locations(conn, folder_id, record.path, _file_chunks(record))
                assigned.append(sequence)
            conn.execute(
                "UPDATE folders SET sequence = ? WHERE folder_id = ?", (sequence, folder_id)
            )
            return assigned

        return await self._run(put)

    async def get(self, folder_id: bytes, path: str) -> IndexEntry | None:
        def get(conn: sqlite3.Connection) -> IndexEntry | None:
            row = conn.execute(
                "SELECT signed, on_disk, local_seq FROM records WHERE folder_id = ? AND path = ?",
                (folder_id, path),
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._run(get)

    async def records_since(
        self, folder_id: bytes, after: int, limit: int = 1000
    ) -> list[IndexEntry]:
        """Records changed after local sequence ``after``, oldest first, at most ``limit``."""
        limit = max(1, min(limit, MAX_BATCH))

        def since(conn: sqlite3.Connection) -> list[IndexEntry]:
            rows = conn.execute(
                "SELECT signed, on_disk, local_seq FROM records"
                " WHERE folder_id = ? AND local_seq > ? ORDER BY local_seq LIMIT ?",
                (folder_id, after, limit),
            )
            return [_entry(row) for row in rows]

        return await self._run(since)

    async def count(self, folder_id: bytes) -> int:
        def count(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT count(*) FROM records WHERE folder_id = ?", (folder_id,)
            ).fetchone()
            return int(row[0])

        return await self._run(count)

    # -- peers ------------------------------------------------------------------------------

    async def peer_progress(self, folder_id: bytes, device: DeviceId) -> PeerProgress | None:
        def progress(conn: sqlite3.Connection) -> PeerProgress | None:
            row = conn.execute(
                "SELECT index_id, sequence FROM peer_progress"
                " WHERE folder_id = ? AND device_id = ?",
                (folder_id, device.digest),
            ).fetchone()
            return None if row is None else PeerProgress(*row)

        return await self._run(progress)

    async def set_peer_progress(
        self, folder_id: bytes, device: DeviceId, progress: PeerProgress
    ) -> None:
        def store(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO peer_progress (folder_id, device_id, index_id, sequence)"
                " VALUES (?, ?, ?, ?)",
                (folder_id, device.digest, progress.index_id, progress.sequence),
            )

        await self._run(store)

    # -- chunk locations --------------------------------------------------------------------

    async def chunk_sources(self, folder_id: bytes, chunk_id: bytes) -> list[ChunkLocation]:
        """Local files that hold chunk ``chunk_id``, and where."""

        def sources(conn: sqlite3.Connection) -> list[ChunkLocation]:
            rows = conn.execute(
                "SELECT path, offset, size FROM chunk_locations"
                " WHERE folder_id = ? AND chunk_id = ? ORDER BY path, offset",
                (folder_id, chunk_id),
            )
            return [ChunkLocation(*row) for row in rows]

        return await self._run(sources)

    async def forget_locations(self, folder_id: bytes, path: str) -> None:
        """The file at ``path`` no longer holds what the index says (changed or gone)."""
        await self._run(lambda conn: _replace_locations(conn, folder_id, path, ()))


@asynccontextmanager
async def open_store(path: Path) -> AsyncIterator[IndexStore]:
    """Open (creating if needed) the index database at ``path``, and close it afterwards."""
    store = await anyio.to_thread.run_sync(_connect, Path(path))
    try:
        yield store
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


def _connect(path: Path) -> IndexStore:
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the index database {path}: {exc}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(
                f"the index database {path} cannot use write-ahead logging (journal mode "
                f"stays {mode!r}); put it on a local file system"
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            # IF NOT EXISTS: two processes opening a new database at once both get here.
            conn.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"the index database {path} has schema version {version}, but this commonsync "
                f"understands {SCHEMA_VERSION}; upgrade commonsync or move the database away"
            )
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open the index database {path}: {exc}") from exc
    except StoreError:
        conn.close()
        raise
    return IndexStore(conn, path)


def _folder(conn: sqlite3.Connection, folder_id: bytes) -> FolderState:
    row = conn.execute(
        "SELECT folder_id, label, index_id, sequence FROM folders WHERE folder_id = ?",
        (folder_id,),
    ).fetchone()
    if row is None:
        raise StoreError(f"folder {folder_id.hex()[:16]}… is not in the index")
    return FolderState(*row)


def _entry(row: tuple[bytes, int, int]) -> IndexEntry:
    signed, on_disk, local_seq = row
    return IndexEntry(decode_verified(signed), signed, bool(on_disk), local_seq)


def _file_chunks(record: Record) -> Iterable[tuple[ChunkEntry, int]]:
    if record.deleted or record.kind is not Kind.FILE:
        return ()
    offset = 0
    located = []
    for chunk in record.chunks:
        located.append((chunk, offset))
        offset += chunk.size
    return located


def _replace_locations(
    conn: sqlite3.Connection,
    folder_id: bytes,
    path: str,
    chunks: Iterable[tuple[ChunkEntry, int]],
) -> None:
    conn.execute("DELETE FROM chunk_locations WHERE folder_id = ? AND path = ?", (folder_id, path))
    conn.executemany(
        "INSERT OR IGNORE INTO chunk_locations (folder_id, chunk_id, path, offset, size)"
        " VALUES (?, ?, ?, ?, ?)",
        [(folder_id, chunk.id, path, offset, chunk.size) for chunk, offset in chunks],
    )
