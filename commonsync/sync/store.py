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
  copies are assembled from local data instead of being downloaded again;
- ``local_files``: what the scanner (or the applier) saw on disk at each path when it last
  confirmed what the file holds (inode, size, mtime, mode), so that a rescan hashes only the
  files whose metadata moved;
- in ``folders``, ``own_sequence``: the last sequence number this device gave a record it
  authored, so that its records carry strictly increasing sequences;
- ``membership_entries``: the entries of the folder's membership log this device took, in the
  order it took them (parents first), as they were signed.

A record and the local state that goes with it are written by one :meth:`IndexStore.put`, in
one transaction: a crash never leaves a new version without its local state or the reverse.
Writers that read before they write (the scanner) pass the local sequences they read as
``expected``, and the write is refused whole if the index moved meanwhile
(:class:`~commonsync.errors.IndexChangedError`): nobody overwrites a version unseen.

Databases of an older schema are migrated in place, in one transaction, when opened.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import anyio
import anyio.to_thread

from ..errors import IndexChangedError, IndexFullError, StoreError
from ..formats.device_id import DeviceId
from ..formats.records import ChunkEntry, Kind, Record, decode_verified

T = TypeVar("T")

SCHEMA_VERSION = 6
#: Records returned by one :meth:`IndexStore.records_since` call at most.
MAX_BATCH = 10_000
#: Free space below which the index's disk counts as full (:meth:`IndexStore.check_writable`):
#: room for a few transactions' worth of write-ahead log.
MIN_FREE_BYTES = 1024 * 1024

_LOCAL_FILES = """CREATE TABLE IF NOT EXISTS local_files (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    path      TEXT NOT NULL,
    inode     INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    mode      INTEGER NOT NULL,
    PRIMARY KEY (folder_id, path)
) WITHOUT ROWID"""

#: What the puller knows of a remote version not yet on disk, beyond its record: how often it
#: was tried and when to try again, why it was refused for good, the conflict copy to make
#: first. A row speaks for the version whose ``local_seq`` it names, and for no later one.
_PULL_STATE = """CREATE TABLE IF NOT EXISTS pull_state (
    folder_id     BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    path          TEXT NOT NULL,
    local_seq     INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    retry_at      REAL NOT NULL DEFAULT 0,
    refused       TEXT,
    conflict_copy TEXT,
    PRIMARY KEY (folder_id, path)
) WITHOUT ROWID"""
#: The versions not on disk, in path order, with what the puller pages and counts by.
_NOT_ON_DISK = """CREATE INDEX IF NOT EXISTS records_not_on_disk
    ON records (folder_id, path, local_seq, kind, deleted, size, on_disk) WHERE on_disk = 0"""
_MEMBERSHIP = """CREATE TABLE IF NOT EXISTS membership_entries (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    hash      BLOB NOT NULL,
    entry     BLOB NOT NULL,
    PRIMARY KEY (folder_id, position)
) WITHOUT ROWID"""
#: Per peer device, the entries of this log it showed it holds (SPEC.md §15.8), 32 bytes
#: each: kept across restarts, so that a log rolled back meanwhile is still seen to be one.
_MEMBERSHIP_SHOWN = """CREATE TABLE IF NOT EXISTS membership_shown (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    peer      BLOB NOT NULL,
    hashes    BLOB NOT NULL,
    PRIMARY KEY (folder_id, peer)
) WITHOUT ROWID"""

#: The paths whose record this device set aside (its author may not write it, the log says
#: now: SPEC.md §15.5) and whose file is still to be moved to the versions folder; until it
#: is, the scanner leaves the path alone, so that the file is never published as this
#: device's own (an addition) nor its absence as a deletion.
_SET_ASIDE = """CREATE TABLE IF NOT EXISTS set_aside (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    path      TEXT NOT NULL,
    PRIMARY KEY (folder_id, path)
) WITHOUT ROWID"""

#: Per path, the content digest of the last version this device's scanner published there
#: (a person's edit here): a version set aside that holds exactly that is this device's own
#: edit, kept by an outcome another device recorded, and is published again.
_OWN_EDITS = """CREATE TABLE IF NOT EXISTS own_edits (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    path      TEXT NOT NULL,
    digest    BLOB NOT NULL,
    PRIMARY KEY (folder_id, path)
) WITHOUT ROWID"""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS folders (
        folder_id    BLOB PRIMARY KEY,
        label        TEXT NOT NULL,
        index_id     BLOB NOT NULL,
        sequence     INTEGER NOT NULL DEFAULT 0,
        own_sequence INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS records (
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
    ) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX IF NOT EXISTS records_by_sequence ON records (folder_id, local_seq)",
    """CREATE TABLE IF NOT EXISTS peer_progress (
        folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
        device_id BLOB NOT NULL,
        index_id  BLOB NOT NULL,
        sequence  INTEGER NOT NULL,
        PRIMARY KEY (folder_id, device_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chunk_locations (
        folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
        chunk_id  BLOB NOT NULL,
        path      TEXT NOT NULL,
        offset    INTEGER NOT NULL,
        size      INTEGER NOT NULL,
        PRIMARY KEY (folder_id, chunk_id, path, offset)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS chunk_locations_by_path ON chunk_locations (folder_id, path)",
    _LOCAL_FILES,
    _PULL_STATE,
    _NOT_ON_DISK,
    _MEMBERSHIP,
    _MEMBERSHIP_SHOWN,
    _SET_ASIDE,
    _OWN_EDITS,
)

#: From schema version N to N + 1: statements run in the same transaction as the version bump.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE folders ADD COLUMN own_sequence INTEGER NOT NULL DEFAULT 0",
        # Version 1 did not count our own sequences. The highest author sequence in the
        # folder, whoever the author, is at least ours: continuing above it keeps ours
        # strictly increasing (a gap is harmless).
        "UPDATE folders SET own_sequence = (SELECT coalesce(max(author_seq), 0) FROM records"
        " WHERE records.folder_id = folders.folder_id)",
        _LOCAL_FILES.replace("IF NOT EXISTS ", ""),
    ),
    2: (_PULL_STATE.replace("IF NOT EXISTS ", ""), _NOT_ON_DISK.replace("IF NOT EXISTS ", "")),
    3: (_MEMBERSHIP.replace("IF NOT EXISTS ", ""),),
    4: (_MEMBERSHIP_SHOWN.replace("IF NOT EXISTS ", ""),),
    5: (_SET_ASIDE.replace("IF NOT EXISTS ", ""), _OWN_EDITS.replace("IF NOT EXISTS ", "")),
}
_I64 = 2**63
_FOLDER_COLUMNS = "folder_id, label, index_id, sequence, own_sequence"
#: A pending version's pull state, if it has one (a row about an older version is ignored).
_PULL_JOIN = (
    "LEFT JOIN pull_state p ON p.folder_id = r.folder_id AND p.path = r.path"
    " AND p.local_seq = r.local_seq"
)
#: Seconds before a version waiting for its chunks is tried again, after its first failure;
#: the wait doubles with each further failure, up to :data:`RETRY_MAX`.
RETRY_FIRST = 1.0
RETRY_MAX = 300.0
#: ... and for a record larger than this many signed bytes, as many times longer as it is
#: larger (a record of 400,000 chunks, 16 MB, waits a minute before its second try).
RETRY_SCALE_BYTES = 256 * 1024


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
    #: A version this device's scanner made of a person's edit here (kept as the path's
    #: last own edit: see :meth:`IndexStore.add_membership_entries`).
    edited_here: bool = False


class SetAside(NamedTuple):
    """The versions a change of the membership log set aside, by path (see
    :meth:`IndexStore.add_membership_entries`)."""

    #: Their files are to be moved to the versions folder.
    moved: list[str]
    #: Their files hold this device's own last edit: the next scan publishes them again.
    published_again: list[str]


@dataclass(frozen=True, slots=True)
class FolderState:
    """A folder's row: ``sequence`` is the last local sequence number given to a change,
    ``own_sequence`` the last author sequence this device gave a record it made."""

    folder_id: bytes
    label: str
    index_id: bytes
    sequence: int
    own_sequence: int = 0


@dataclass(frozen=True, slots=True)
class LocalFile:
    """What a path looked like on disk when its content was last confirmed.

    For a record that is on disk, the scanner compares this with a fresh ``lstat``: equal
    means the file still holds the indexed version, and it is not read again. For a remote
    version not yet on disk, it describes the file that the applier is about to replace, so
    that the applier sees whether someone changed that file in the meantime. ``mode`` is the
    whole ``st_mode`` (type and permission bits).
    """

    inode: int
    size: int
    mtime_ns: int
    mode: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> LocalFile:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


@dataclass(frozen=True, slots=True)
class PathState:
    """What the scanner needs to know of an indexed path, without decoding its record."""

    path: str
    kind: Kind
    deleted: bool
    on_disk: bool
    local_sequence: int
    local: LocalFile | None


class PullPhase(enum.Enum):
    """The puller's passes over pending versions, in this order: directories and symlinks
    (parents first), then files, then deletions (children first, in reverse path order, after
    every new file has read the chunks it needed from the old ones)."""

    DIRECTORIES_AND_LINKS = "r.deleted = 0 AND r.kind != 0"
    FILES = "r.deleted = 0 AND r.kind = 0"
    DELETIONS = "r.deleted = 1"


@dataclass(frozen=True, slots=True)
class PendingVersion:
    """A remote version taken but not on disk, as the puller pages through them: what it
    needs to plan (no decoded record: a record of 400,000 chunks costs no more here than an
    empty one). ``signed_size`` is the length of its signed bytes, what decoding it costs."""

    path: str
    local_sequence: int
    kind: Kind
    deleted: bool
    size: int
    signed_size: int
    attempts: int
    conflict_copy: str | None


@dataclass(frozen=True, slots=True)
class PendingSummary:
    """What is left to write: versions not on disk and not refused, the bytes of the live
    files among them, and when the first of them is due to be tried (None: nothing waits)."""

    files: int
    bytes: int
    next_try: float | None


@dataclass(frozen=True, slots=True)
class PeerProgress:
    """How much of a remote device's index we have: its index ID and last sequence seen."""

    index_id: bytes
    sequence: int


class SignedRow(NamedTuple):
    """A stored record as it is sent: its local sequence, its author's key, the signed
    bytes, and its author's sequence number (whether the author may still write it)."""

    local_sequence: int
    author: bytes
    signed: bytes
    author_sequence: int


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where a local file holds a chunk. ``local`` is the file's local state when it was
    last hashed (None: not stored, e.g. a file modified just before): a reader that finds
    the file still as ``local`` reads what was hashed, else it must check the bytes."""

    path: str
    offset: int
    size: int
    local: LocalFile | None = None


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
        #: Why the last write was refused for lack of space, until a write succeeds: what a
        #: daemon shows and waits on (:meth:`check_writable`) instead of failing again.
        self.full: IndexFullError | None = None

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
                changes = self._conn.total_changes
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
                if self._conn.total_changes != changes:
                    self.full = None
                return result
            except sqlite3.Error as exc:
                if _is_full(exc, self.path):
                    self.full = IndexFullError(_full_message(self.path))
                    raise self.full from exc
                raise StoreError(f"index database {self.path}: {exc}") from exc
            finally:
                with self._state_lock:
                    self._running = None

    async def check_writable(self) -> None:
        """Raise :class:`~commonsync.errors.IndexFullError` unless the index can take a write
        now: its disk has :data:`MIN_FREE_BYTES` free and a small write commits. A caller
        refused for lack of space polls this before it tries again."""
        free = await anyio.to_thread.run_sync(_free_bytes, self.path.parent)
        if free is not None and free < MIN_FREE_BYTES:
            self.full = IndexFullError(_full_message(self.path))
            raise self.full

        def probe(conn: sqlite3.Connection) -> None:
            # Rewrites the header page: a real write, which a full disk refuses.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version = {int(version)}")

        await self._run(probe)
        self.full = None

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
            rows = conn.execute(f"SELECT {_FOLDER_COLUMNS} FROM folders")
            return [FolderState(*row) for row in rows]

        return await self._run(folders)

    async def remove_folder(self, folder_id: bytes) -> None:
        """Forget a folder: its records, local states, pull state, peers' progress, chunk
        locations and membership log (every table cascades from ``folders``)."""
        await self._run(
            lambda conn: conn.execute("DELETE FROM folders WHERE folder_id = ?", (folder_id,))
        )

    # -- records ----------------------------------------------------------------------------

    async def put(
        self,
        folder_id: bytes,
        entries: Sequence[IndexEntry],
        *,
        local_files: Sequence[tuple[str, LocalFile | None]] = (),
        expected: Mapping[str, int] | None = None,
    ) -> list[int]:
        """Store new versions and local states, all in one transaction; returns the local
        sequence numbers given to ``entries``.

        ``local_files`` sets (or, with None, removes) the local state of paths, committed
        together with the records: a version and what the disk holds of it never part. An
        entry stored with ``on_disk=True`` and no local state here loses its previous one
        (which described another version); an entry with ``on_disk=False`` keeps it, since
        the file it describes is still the one on disk.

        ``expected`` maps paths to the local sequence their record must still have (0: no
        record). If any has moved, nothing is written and :class:`IndexChangedError` names
        them: a writer that decided from what it read must not overwrite what it has not
        seen.
        """

        def put(conn: sqlite3.Connection) -> list[int]:
            sequence = _folder(conn, folder_id).sequence
            if expected:
                _check_expected(conn, folder_id, expected)
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
                    _set_local(conn, folder_id, record.path, None)
                if entry.edited_here:
                    _note_own_edit(conn, folder_id, record)
                assigned.append(sequence)
            for path, local in local_files:
                _set_local(conn, folder_id, path, local)
            conn.execute(
                "UPDATE folders SET sequence = ? WHERE folder_id = ?", (sequence, folder_id)
            )
            return assigned

        return await self._run(put)

    async def next_own_sequences(self, folder_id: bytes, n: int) -> list[int]:
        """Reserve the next ``n`` author sequence numbers for records this device makes.

        The reservation commits before any record uses its numbers, so they only ever grow,
        even across a crash or a concurrent writer; numbers reserved and then not used (a
        crash, a refused write) leave a gap, which is harmless.
        """
        if n < 0:
            raise ValueError("cannot reserve a negative number of sequences")

        def reserve(conn: sqlite3.Connection) -> list[int]:
            last = _folder(conn, folder_id).own_sequence
            conn.execute(
                "UPDATE folders SET own_sequence = ? WHERE folder_id = ?", (last + n, folder_id)
            )
            return list(range(last + 1, last + n + 1))

        return await self._run(reserve)

    async def get(self, folder_id: bytes, path: str) -> IndexEntry | None:
        def get(conn: sqlite3.Connection) -> IndexEntry | None:
            row = conn.execute(
                "SELECT signed, on_disk, local_seq FROM records WHERE folder_id = ? AND path = ?",
                (folder_id, path),
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._run(get)

    async def get_many(self, folder_id: bytes, paths: Iterable[str]) -> dict[str, IndexEntry]:
        """The current entries of ``paths`` (those that have one), read in one transaction.

        They are decoded in another worker thread, after the transaction: decoding a record
        of 400,000 chunks takes a second or more, and the store must not stall every other
        operation meanwhile."""
        wanted = list(paths)

        def get_many(conn: sqlite3.Connection) -> dict[str, tuple[bytes, int, int]]:
            found = {}
            for path in wanted:
                row = conn.execute(
                    "SELECT signed, on_disk, local_seq FROM records"
                    " WHERE folder_id = ? AND path = ?",
                    (folder_id, path),
                ).fetchone()
                if row is not None:
                    found[path] = row
            return found

        rows = await self._run(get_many)
        if not rows:
            return {}
        return await anyio.to_thread.run_sync(
            lambda: {path: _entry(row) for path, row in rows.items()}
        )

    async def entries(
        self, folder_id: bytes, *, batch: int = 500
    ) -> AsyncGenerator[list[IndexEntry], None]:
        """Every entry of the folder in path order (code point order, as Python sorts
        strings), in lists of at most ``batch``: one short transaction per list, so that a
        huge folder is never held in memory nor in one transaction."""
        batch = max(1, min(batch, MAX_BATCH))
        after = ""
        while True:

            def page(conn: sqlite3.Connection, after: str = after) -> list[IndexEntry]:
                rows = conn.execute(
                    "SELECT signed, on_disk, local_seq FROM records"
                    " WHERE folder_id = ? AND path > ? ORDER BY path LIMIT ?",
                    (folder_id, after, batch),
                )
                return [_entry(row) for row in rows]

            entries = await self._run(page)
            if entries:
                yield entries
            if len(entries) < batch:
                return
            after = entries[-1].record.path

    async def path_states(
        self, folder_id: bytes, *, batch: int = 1000
    ) -> AsyncGenerator[list[PathState], None]:
        """Every indexed path's :class:`PathState` in path order, in lists of at most
        ``batch``. Records are not decoded: a scan of an unchanged folder reads no record
        bytes, and a file of 100,000 chunks costs no more than an empty one."""
        batch = max(1, min(batch, MAX_BATCH))
        after = ""
        while True:

            def page(conn: sqlite3.Connection, after: str = after) -> list[PathState]:
                rows = conn.execute(
                    "SELECT r.path, r.kind, r.deleted, r.on_disk, r.local_seq,"
                    " l.inode, l.size, l.mtime_ns, l.mode"
                    " FROM records r LEFT JOIN local_files l"
                    " ON l.folder_id = r.folder_id AND l.path = r.path"
                    " WHERE r.folder_id = ? AND r.path > ? ORDER BY r.path LIMIT ?",
                    (folder_id, after, batch),
                )
                return [
                    PathState(
                        path,
                        Kind(kind),
                        bool(deleted),
                        bool(on_disk),
                        local_seq,
                        None if inode is None else _local(inode, size, mtime_ns, mode),
                    )
                    for path, kind, deleted, on_disk, local_seq, inode, size, mtime_ns, mode in rows
                ]

            states = await self._run(page)
            if states:
                yield states
            if len(states) < batch:
                return
            after = states[-1].path

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

    # -- pending remote versions (the puller's queue, on disk) -------------------------------

    async def pending(
        self,
        folder_id: bytes,
        phase: PullPhase,
        *,
        after: str | None = None,
        due: float | None = None,
        tried: bool | None = None,
        limit: int = 1000,
    ) -> list[PendingVersion]:
        """A page of the remote versions taken but not written yet (``on_disk=False``) and
        not refused, in ``phase``'s order, starting after path ``after``; with ``due``, only
        those whose next try is at or before it (a time in seconds, as given to
        :meth:`retry_later`); with ``tried``, only those tried before (True) or never
        (False). Versions taken before a stop are here too: their peers will not send them
        again."""
        limit = max(1, min(limit, MAX_BATCH))
        descending = phase is PullPhase.DELETIONS
        cursor = "" if after is None else ("AND r.path < ?" if descending else "AND r.path > ?")
        filters = "" if due is None else "AND coalesce(p.retry_at, 0) <= ?"
        if tried is not None:
            filters += f" AND coalesce(p.attempts, 0) {'>' if tried else '='} 0"
        query = (
            "SELECT r.path, r.local_seq, r.kind, r.deleted, r.size, length(r.signed),"
            " coalesce(p.attempts, 0), p.conflict_copy"
            f" FROM records r INDEXED BY records_not_on_disk {_PULL_JOIN}"
            f" WHERE r.folder_id = ? AND r.on_disk = 0 AND p.refused IS NULL AND {phase.value}"
            f" {cursor} {filters}"
            f" ORDER BY r.path {'DESC' if descending else 'ASC'} LIMIT ?"
        )
        parameters: list[object] = [folder_id]
        parameters += [] if after is None else [after]
        parameters += [] if due is None else [due]
        parameters.append(limit)

        def page(conn: sqlite3.Connection) -> list[PendingVersion]:
            return [
                PendingVersion(path, seq, Kind(kind), bool(deleted), size, signed, tries, copy)
                for path, seq, kind, deleted, size, signed, tries, copy in conn.execute(
                    query, parameters
                )
            ]

        return await self._run(page)

    async def pending_summary(self, folder_id: bytes) -> PendingSummary:
        """How much is left to write (one pass over an index of the pending versions only)."""

        def summary(conn: sqlite3.Connection) -> PendingSummary:
            files, size, next_try = conn.execute(
                "SELECT count(*),"
                " coalesce(sum(CASE WHEN r.kind = 0 AND r.deleted = 0 THEN r.size END), 0),"
                " min(coalesce(p.retry_at, 0))"
                f" FROM records r INDEXED BY records_not_on_disk {_PULL_JOIN}"
                " WHERE r.folder_id = ? AND r.on_disk = 0 AND p.refused IS NULL",
                (folder_id,),
            ).fetchone()
            return PendingSummary(files, size, next_try)

        return await self._run(summary)

    async def retry_later(
        self, folder_id: bytes, versions: Sequence[tuple[str, int]], *, now: float
    ) -> None:
        """Count a failed try of each pending version ``(path, local_seq)``, and set its next
        try :data:`RETRY_FIRST` seconds after ``now`` (longer for a large record, see
        :data:`RETRY_SCALE_BYTES`), doubling with each failure up to :data:`RETRY_MAX`. A
        path whose version changed meanwhile is left alone."""

        def retry(conn: sqlite3.Connection) -> None:
            for path, local_seq in versions:
                row = _pull_row(conn, folder_id, path, local_seq)
                if row is None:
                    continue
                attempts = row[0] + 1
                # A larger record costs more to decode and plan at each try: waited on longer.
                (signed,) = conn.execute(
                    "SELECT length(signed) FROM records WHERE folder_id = ? AND path = ?",
                    (folder_id, path),
                ).fetchone()
                scale = max(1.0, signed / RETRY_SCALE_BYTES)
                delay = min(RETRY_FIRST * scale * 2 ** min(attempts - 1, 32), RETRY_MAX)
                _set_pull_row(conn, folder_id, path, local_seq, attempts, now + delay, *row[2:])

        await self._run(retry)

    async def refuse(self, folder_id: bytes, versions: Sequence[tuple[str, int, str]]) -> None:
        """Mark pending versions ``(path, local_seq, reason)`` as refused for good: they leave
        the pending versions (and the puller's work) until a newer version of the path
        arrives. A path whose version changed meanwhile is left alone."""

        def refuse(conn: sqlite3.Connection) -> None:
            for path, local_seq, reason in versions:
                row = _pull_row(conn, folder_id, path, local_seq)
                if row is not None:
                    _set_pull_row(conn, folder_id, path, local_seq, row[0], 0.0, reason, None)

        await self._run(refuse)

    async def set_conflict_copies(
        self, folder_id: bytes, copies: Sequence[tuple[str, int, str | None]]
    ) -> None:
        """Record (or, with None, clear) the conflict copy to make of the local file before
        the pending version ``(path, local_seq)`` is written (see
        :func:`commonsync.sync.decide.decide`)."""

        def store(conn: sqlite3.Connection) -> None:
            for path, local_seq, copy in copies:
                row = _pull_row(conn, folder_id, path, local_seq)
                if row is not None:
                    _set_pull_row(conn, folder_id, path, local_seq, *row[:3], copy)

        await self._run(store)

    async def retry_now(self, folder_id: bytes, paths: Iterable[str] | None = None) -> None:
        """Make the waiting versions of ``paths`` (None: all of them) due now: a peer that may
        hold their chunks connected, or announced them again. Refused versions stay refused."""
        wanted = None if paths is None else list(paths)

        def retry(conn: sqlite3.Connection) -> None:
            update = "UPDATE pull_state SET retry_at = 0 WHERE folder_id = ? AND refused IS NULL"
            if wanted is None:
                conn.execute(update, (folder_id,))
            else:
                conn.executemany(update + " AND path = ?", [(folder_id, p) for p in wanted])

        await self._run(retry)

    async def unrefuse(self, folder_id: bytes, reason: str) -> int:
        """Make the versions refused for ``reason`` pending again, due now (what refused
        them may have changed: a rule of this device that ignored their paths was removed);
        how many."""

        def unrefuse(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE pull_state SET refused = NULL, retry_at = 0, attempts = 0"
                " WHERE folder_id = ? AND refused = ?",
                (folder_id, reason),
            ).rowcount

        return await self._run(unrefuse)

    async def forget_stale_pull_state(self, folder_id: bytes) -> None:
        """Drop what the puller kept about versions that are on disk or superseded now."""

        def forget(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM pull_state WHERE folder_id = ? AND NOT EXISTS (SELECT 1 FROM"
                " records r WHERE r.folder_id = pull_state.folder_id AND r.path = pull_state.path"
                " AND r.local_seq = pull_state.local_seq AND r.on_disk = 0)",
                (folder_id,),
            )

        await self._run(forget)

    async def refused(self, folder_id: bytes, path: str) -> str | None:
        """Why the current version of ``path`` was refused for good, or None."""

        def refused(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                f"SELECT p.refused FROM records r {_PULL_JOIN}"
                " WHERE r.folder_id = ? AND r.path = ? AND r.on_disk = 0",
                (folder_id, path),
            ).fetchone()
            return None if row is None else row[0]

        return await self._run(refused)

    async def not_on_disk(self, folder_id: bytes, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` have a version still to be written (no record is decoded)."""
        wanted = list(paths)

        def pending(conn: sqlite3.Connection) -> set[str]:
            found = set()
            for path in wanted:
                row = conn.execute(
                    "SELECT on_disk FROM records WHERE folder_id = ? AND path = ?",
                    (folder_id, path),
                ).fetchone()
                if row is not None and not row[0]:
                    found.add(path)
            return found

        return await self._run(pending)

    async def signed_sizes(self, folder_id: bytes, paths: Iterable[str]) -> dict[str, int]:
        """The length of the stored signed record of each of ``paths`` that has one: what
        decoding it would cost, so that callers decode a bounded amount at a time."""
        wanted = list(paths)

        def sizes(conn: sqlite3.Connection) -> dict[str, int]:
            found = {}
            for path in wanted:
                row = conn.execute(
                    "SELECT length(signed) FROM records WHERE folder_id = ? AND path = ?",
                    (folder_id, path),
                ).fetchone()
                if row is not None:
                    found[path] = int(row[0])
            return found

        return await self._run(sizes)

    async def signed_since(
        self, folder_id: bytes, after: int, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[SignedRow]:
        """:meth:`records_since` as stored, not decoded: what a device sends its peers (they
        decode and verify them anyway). With ``max_bytes``, the rows stop once their signed
        bytes reach it (at least one row): records of 16 MB each must not be read by the
        hundred."""
        limit = max(1, min(limit, MAX_BATCH))

        def since(conn: sqlite3.Connection) -> list[SignedRow]:
            rows = conn.execute(
                "SELECT local_seq, author, signed, author_seq FROM records"
                " WHERE folder_id = ? AND local_seq > ? ORDER BY local_seq LIMIT ?",
                (folder_id, after, limit),
            )
            found: list[SignedRow] = []
            size = 0
            for row in rows:
                found.append(SignedRow(*row))
                size += len(row[2])
                if max_bytes is not None and size >= max_bytes:
                    break
            return found

        return await self._run(since)

    async def last_authored(self, folder_id: bytes, author: bytes) -> int:
        """The highest sequence number of the current versions ``author`` made (0: none)."""

        def last(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT coalesce(max(author_seq), 0) FROM records WHERE folder_id = ?"
                " AND author = ?",
                (folder_id, author),
            ).fetchone()
            return int(row[0])

        return await self._run(last)

    async def authored_after(self, folder_id: bytes, author: bytes, after: int) -> int:
        """How many current versions ``author`` made sit after local sequence ``after``."""

        def count(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT count(*) FROM records WHERE folder_id = ? AND author = ? AND local_seq > ?",
                (folder_id, author, after),
            ).fetchone()
            return int(row[0])

        return await self._run(count)

    async def files_after(
        self, folder_id: bytes, after: int, not_author: bytes
    ) -> tuple[int, int, int]:
        """Of the current file versions (not deleted) after local sequence ``after`` and not
        made by ``not_author``: how many, and their bytes; and the bytes of every current
        file version. What a peer that has taken our index up to ``after`` has not been told
        of yet (see :mod:`commonsync.sync.progress`)."""

        def sizes(conn: sqlite3.Connection) -> tuple[int, int, int]:
            files, size = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM records"
                " WHERE folder_id = ? AND local_seq > ? AND kind = 0 AND deleted = 0"
                " AND author != ?",
                (folder_id, after, not_author),
            ).fetchone()
            (total,) = conn.execute(
                "SELECT coalesce(sum(size), 0) FROM records"
                " WHERE folder_id = ? AND kind = 0 AND deleted = 0",
                (folder_id,),
            ).fetchone()
            return int(files), int(size), int(total)

        return await self._run(sizes)

    async def count_authored(self, folder_id: bytes, author: bytes, after: int = 0) -> int:
        """How many current versions ``author`` made with a sequence above ``after``."""

        def count(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT count(*) FROM records WHERE folder_id = ? AND author = ?"
                " AND author_seq > ?",
                (folder_id, author, after),
            ).fetchone()
            return int(row[0])

        return await self._run(count)

    async def count(self, folder_id: bytes) -> int:
        def count(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT count(*) FROM records WHERE folder_id = ?", (folder_id,)
            ).fetchone()
            return int(row[0])

        return await self._run(count)

    # -- membership -------------------------------------------------------------------------

    async def membership_entries(self, folder_id: bytes) -> list[bytes]:
        """The folder's membership entries, encoded, in the order they were added."""

        def entries(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(
                "SELECT entry FROM membership_entries WHERE folder_id = ? ORDER BY position",
                (folder_id,),
            )
            return [bytes(row[0]) for row in rows]

        return await self._run(entries)

    async def add_membership_entries(
        self,
        folder_id: bytes,
        entries: Sequence[tuple[bytes, bytes]],
        *,
        publish_again: tuple[bytes, int, int] | None = None,
        highest_taken: Callable[[bytes], int | None] | None = None,
    ) -> SetAside:
        """Append ``(hash, encoded)`` entries, parents before children (the log checked
        them: the store keeps what it is given), and what follows from them for the
        records, all in one transaction. Returns what was set aside.

        ``publish_again`` is ``(author, above, up_to)``: the current versions ``author`` made
        with a sequence in ``above < sequence ≤ up_to`` get new local sequences (the next
        ones, in their order). They are versions that the log held back until these entries
        (a reader's own changes, made a writer: SPEC.md §15.5): the peers whose progress
        moved past them are sent them as any new change.

        ``highest_taken`` tells, per author (public key), the highest sequence the log now
        takes from it (None: any). The current versions beyond it were taken before this
        device heard of their author's removal or demotion: they are *set aside*. Their
        rows, local and pull state go, their paths are noted (:meth:`set_aside_paths`: the
        files are still to be moved to the versions folder) and every peer's progress is
        forgotten, so that each sends its whole index again and a version the log takes
        comes back. A version set aside whose file holds exactly this device's own last
        edit of the path (an outcome of a conflict that kept it, recorded by the author
        set aside) is not moved: its local state goes, and the next scan publishes it again
        as this device's (:attr:`SetAside.published_again`)."""

        def add(conn: sqlite3.Connection) -> SetAside:
            row = conn.execute(
                "SELECT coalesce(max(position), 0) FROM membership_entries WHERE folder_id = ?",
                (folder_id,),
            ).fetchone()
            conn.executemany(
                "INSERT INTO membership_entries (folder_id, position, hash, entry)"
                " VALUES (?, ?, ?, ?)",
                [(folder_id, row[0] + i, h, e) for i, (h, e) in enumerate(entries, 1)],
            )
            if publish_again is not None:
                _publish_again(conn, folder_id, *publish_again)
            if highest_taken is None:
                return SetAside([], [])
            return _set_aside(conn, folder_id, highest_taken)

        return await self._run(add)

    async def set_aside_paths(self, folder_id: bytes) -> list[str]:
        """The paths set aside whose files are still to be moved (see
        :meth:`add_membership_entries`)."""

        def paths(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT path FROM set_aside WHERE folder_id = ? ORDER BY path", (folder_id,)
            )
            return [row[0] for row in rows]

        return await self._run(paths)

    async def done_setting_aside(self, folder_id: bytes, paths: Sequence[str]) -> None:
        """The files of ``paths`` were moved away: forget the notes, and any local state
        written for them meanwhile (by a write of the version that was under way)."""

        def done(conn: sqlite3.Connection) -> None:
            for path in paths:
                conn.execute(
                    "DELETE FROM set_aside WHERE folder_id = ? AND path = ?", (folder_id, path)
                )
                held = conn.execute(
                    "SELECT 1 FROM records WHERE folder_id = ? AND path = ?", (folder_id, path)
                ).fetchone()
                if held is None:
                    _set_local(conn, folder_id, path, None)
                    _replace_locations(conn, folder_id, path, ())

        await self._run(done)

    async def membership_shown(self, folder_id: bytes) -> dict[bytes, set[bytes]]:
        """Per peer device (public key): the entry hashes it showed it holds."""

        def shown(conn: sqlite3.Connection) -> dict[bytes, set[bytes]]:
            rows = conn.execute(
                "SELECT peer, hashes FROM membership_shown WHERE folder_id = ?", (folder_id,)
            )
            return {bytes(peer): _hashes(bytes(hashes)) for peer, hashes in rows}

        return await self._run(shown)

    async def set_membership_shown(
        self, folder_id: bytes, peer: bytes, hashes: Iterable[bytes]
    ) -> None:
        """Keep what ``peer`` showed it holds of the folder's log (replacing what was kept)."""
        joined = b"".join(sorted(hashes))

        def keep(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO membership_shown (folder_id, peer, hashes)"
                " VALUES (?, ?, ?)",
                (folder_id, peer, joined),
            )

        await self._run(keep)

    # -- local files ------------------------------------------------------------------------

    async def local_file(self, folder_id: bytes, path: str) -> LocalFile | None:
        """The local state of ``path`` (see :class:`LocalFile`), or None if none is known."""
        return await self._run(lambda conn: _local_file(conn, folder_id, path))

    async def local_files_of(self, folder_id: bytes, paths: Iterable[str]) -> dict[str, LocalFile]:
        """:meth:`local_file` for many paths in one trip (unknown paths are left out)."""
        wanted = list(paths)

        def local(conn: sqlite3.Connection) -> dict[str, LocalFile]:
            found = {path: _local_file(conn, folder_id, path) for path in wanted}
            return {path: state for path, state in found.items() if state is not None}

        return await self._run(local)

    async def local_files(
        self, folder_id: bytes, *, batch: int = 1000
    ) -> AsyncGenerator[list[tuple[str, LocalFile]], None]:
        """Every known local state of the folder, in path order, in lists of at most
        ``batch`` (one short transaction each)."""
        batch = max(1, min(batch, MAX_BATCH))
        after = ""
        while True:

            def page(conn: sqlite3.Connection, after: str = after) -> list[tuple[str, LocalFile]]:
                rows = conn.execute(
                    "SELECT path, inode, size, mtime_ns, mode FROM local_files"
                    " WHERE folder_id = ? AND path > ? ORDER BY path LIMIT ?",
                    (folder_id, after, batch),
                )
                return [(path, _local(*rest)) for path, *rest in rows]

            found = await self._run(page)
            if found:
                yield found
            if len(found) < batch:
                return
            after = found[-1][0]

    async def set_local_files(
        self, folder_id: bytes, states: Sequence[tuple[str, LocalFile | None]]
    ) -> None:
        """Set (or, with None, remove) local states, in one transaction. To change a record
        together with its local state, pass both to :meth:`put` instead."""

        def store(conn: sqlite3.Connection) -> None:
            _folder(conn, folder_id)
            for path, local in states:
                _set_local(conn, folder_id, path, local)

        await self._run(store)

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
        return await self._run(lambda conn: _sources(conn, folder_id, chunk_id))

    async def chunk_sources_many(
        self, folder_id: bytes, chunk_ids: Iterable[bytes]
    ) -> dict[bytes, list[ChunkLocation]]:
        """:meth:`chunk_sources` for many chunks in one trip (IDs with no source are left
        out): the applier asks once per round instead of once per file."""
        wanted = list(dict.fromkeys(chunk_ids))

        def sources(conn: sqlite3.Connection) -> dict[bytes, list[ChunkLocation]]:
            found = {chunk_id: _sources(conn, folder_id, chunk_id) for chunk_id in wanted}
            return {chunk_id: places for chunk_id, places in found.items() if places}

        return await self._run(sources)

    async def chunks_at(self, folder_id: bytes, path: str) -> list[ChunkEntry]:
        """The chunks of the version last recorded as on disk at ``path``, in file order (a
        remote version stored but not yet written leaves them as they were): what the file
        holds if nobody changed it since."""

        return (await self.chunks_at_many(folder_id, [path]))[path]

    async def chunks_at_many(
        self, folder_id: bytes, paths: Iterable[str]
    ) -> dict[str, list[ChunkEntry]]:
        """:meth:`chunks_at` for many paths in one trip."""
        wanted = list(dict.fromkeys(paths))

        def chunks_at(conn: sqlite3.Connection) -> dict[str, list[ChunkEntry]]:
            return {path: _chunks_at(conn, folder_id, path) for path in wanted}

        return await self._run(chunks_at)

    async def read_with_sources(
        self,
        folder_id: bytes,
        chunk_ids: Sequence[bytes],
        read: Callable[[list[list[ChunkLocation]]], T],
    ) -> T:
        """Look up the sources of each chunk and call ``read`` with them (one list per ID, in
        order), in the same worker thread: serving a batch of chunks costs one trip to a
        thread, not two per chunk."""
        return await self._run(lambda conn: read([_sources(conn, folder_id, c) for c in chunk_ids]))

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
        # The index names every file of the folder: owner-only, whatever the umask and the
        # directory. SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create the index database {path}: {exc.strerror}") from exc
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
        _prepare_schema(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open the index database {path}: {exc}") from exc
    except StoreError:
        conn.close()
        raise
    return IndexStore(conn, path)


def _is_full(exc: sqlite3.Error, path: Path) -> bool:
    """Whether SQLite refused a write for lack of space (``SQLITE_FULL``, or an I/O error on
    a disk with no space left)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return True
    if code != sqlite3.SQLITE_IOERR:
        return False
    free = _free_bytes(path.parent)
    return free is not None and free < MIN_FREE_BYTES


def _full_message(path: Path) -> str:
    return f"the index {path} cannot be written: its disk is full; free some space there"


def _free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer can still use on the file system of ``directory``."""
    try:
        info = os.statvfs(directory)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def _prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new database, or migrate an older one, in one transaction.

    The version is read inside the write transaction: of two processes opening the same
    database at once, the second finds the work done. A failing migration rolls back whole
    and leaves the database at its old version.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
        elif version in _MIGRATIONS:
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"the index database {path} has schema version {version}, but this commonsync "
                f"understands {SCHEMA_VERSION}; upgrade commonsync or move the database away"
            )
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _hashes(joined: bytes) -> set[bytes]:
    return {joined[n : n + 32] for n in range(0, len(joined) - len(joined) % 32, 32)}


def _folder(conn: sqlite3.Connection, folder_id: bytes) -> FolderState:
    row = conn.execute(
        f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE folder_id = ?", (folder_id,)
    ).fetchone()
    if row is None:
        raise StoreError(f"folder {folder_id.hex()[:16]}… is not in the index")
    return FolderState(*row)


def _publish_again(
    conn: sqlite3.Connection, folder_id: bytes, author: bytes, above: int, up_to: int
) -> int:
    """Give the current versions ``author`` made with a sequence in ``above < sequence ≤
    up_to`` the next local sequences, in their order: the records themselves, and their
    local and pull state, stay as they are."""
    rows = conn.execute(
        "SELECT path, local_seq FROM records WHERE folder_id = ? AND author = ?"
        " AND author_seq > ? AND author_seq <= ? ORDER BY local_seq",
        (folder_id, author, above, up_to),
    ).fetchall()
    if not rows:
        return 0
    sequence = _folder(conn, folder_id).sequence
    for path, old in rows:
        sequence += 1
        conn.execute(
            "UPDATE records SET local_seq = ? WHERE folder_id = ? AND path = ?",
            (sequence, folder_id, path),
        )
        conn.execute(
            "UPDATE pull_state SET local_seq = ? WHERE folder_id = ? AND path = ?"
            " AND local_seq = ?",
            (sequence, folder_id, path, old),
        )
    conn.execute("UPDATE folders SET sequence = ? WHERE folder_id = ?", (sequence, folder_id))
    return len(rows)


def _note_own_edit(conn: sqlite3.Connection, folder_id: bytes, record: Record) -> None:
    if record.deleted:
        conn.execute(
            "DELETE FROM own_edits WHERE folder_id = ? AND path = ?", (folder_id, record.path)
        )
    else:
        conn.execute(
            "INSERT OR REPLACE INTO own_edits (folder_id, path, digest) VALUES (?, ?, ?)",
            (folder_id, record.path, record.content_digest()),
        )


def _set_aside(
    conn: sqlite3.Connection, folder_id: bytes, highest_taken: Callable[[bytes], int | None]
) -> SetAside:
    """Set aside the current versions beyond what ``highest_taken`` says each author may
    have made (see :meth:`IndexStore.add_membership_entries`)."""
    authors = conn.execute(
        "SELECT author, max(author_seq) FROM records WHERE folder_id = ? GROUP BY author",
        (folder_id,),
    ).fetchall()
    paths: list[str] = []
    for author, highest in authors:
        limit = highest_taken(bytes(author))
        if limit is None or highest <= limit:
            continue
        rows = conn.execute(
            "SELECT path FROM records WHERE folder_id = ? AND author = ? AND author_seq > ?",
            (folder_id, author, limit),
        ).fetchall()
        paths += [row[0] for row in rows]
    result = SetAside([], [])
    for path in sorted(paths):
        signed, on_disk = conn.execute(
            "SELECT signed, on_disk FROM records WHERE folder_id = ? AND path = ?",
            (folder_id, path),
        ).fetchone()
        own = conn.execute(
            "SELECT digest FROM own_edits WHERE folder_id = ? AND path = ?", (folder_id, path)
        ).fetchone()
        for table in ("records", "pull_state", "local_files"):
            conn.execute(f"DELETE FROM {table} WHERE folder_id = ? AND path = ?", (folder_id, path))
        _replace_locations(conn, folder_id, path, ())
        if on_disk and own is not None and decode_verified(signed).content_digest() == own[0]:
            result.published_again.append(path)
            continue
        conn.execute(
            "INSERT OR IGNORE INTO set_aside (folder_id, path) VALUES (?, ?)", (folder_id, path)
        )
        result.moved.append(path)
    if paths:
        conn.execute("DELETE FROM peer_progress WHERE folder_id = ?", (folder_id,))
    return result


def _entry(row: tuple[bytes, int, int]) -> IndexEntry:
    signed, on_disk, local_seq = row
    return IndexEntry(decode_verified(signed), signed, bool(on_disk), local_seq)


def _pull_row(
    conn: sqlite3.Connection, folder_id: bytes, path: str, local_seq: int
) -> tuple[int, float, str | None, str | None] | None:
    """The pull state of ``path`` if its current version is ``local_seq`` and not on disk
    (zeros if it has none yet); None if the path has another version now, or none."""
    if (
        conn.execute(
            "SELECT 1 FROM records WHERE folder_id = ? AND path = ? AND local_seq = ?"
            " AND on_disk = 0",
            (folder_id, path, local_seq),
        ).fetchone()
        is None
    ):
        return None
    row = conn.execute(
        "SELECT attempts, retry_at, refused, conflict_copy FROM pull_state"
        " WHERE folder_id = ? AND path = ? AND local_seq = ?",
        (folder_id, path, local_seq),
    ).fetchone()
    return (0, 0.0, None, None) if row is None else (row[0], row[1], row[2], row[3])


def _set_pull_row(
    conn: sqlite3.Connection,
    folder_id: bytes,
    path: str,
    local_seq: int,
    attempts: int,
    retry_at: float,
    refused: str | None,
    conflict_copy: str | None,
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO pull_state"
        " (folder_id, path, local_seq, attempts, retry_at, refused, conflict_copy)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (folder_id, path, local_seq, attempts, retry_at, refused, conflict_copy),
    )


def _file_chunks(record: Record) -> Iterable[tuple[ChunkEntry, int]]:
    if record.deleted or record.kind is not Kind.FILE:
        return ()
    offset = 0
    located = []
    for chunk in record.chunks:
        located.append((chunk, offset))
        offset += chunk.size
    return located


def _sources(conn: sqlite3.Connection, folder_id: bytes, chunk_id: bytes) -> list[ChunkLocation]:
    rows = conn.execute(
        "SELECT c.path, c.offset, c.size, l.inode, l.size, l.mtime_ns, l.mode"
        " FROM chunk_locations c LEFT JOIN local_files l"
        " ON l.folder_id = c.folder_id AND l.path = c.path"
        " WHERE c.folder_id = ? AND c.chunk_id = ? ORDER BY c.path, c.offset",
        (folder_id, chunk_id),
    )
    return [
        ChunkLocation(path, offset, size, None if inode is None else _local(inode, *state))
        for path, offset, size, inode, *state in rows
    ]


def _chunks_at(conn: sqlite3.Connection, folder_id: bytes, path: str) -> list[ChunkEntry]:
    rows = conn.execute(
        "SELECT chunk_id, size FROM chunk_locations"
        " WHERE folder_id = ? AND path = ? ORDER BY offset",
        (folder_id, path),
    )
    return [ChunkEntry(chunk_id, size) for chunk_id, size in rows]


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


def _check_expected(
    conn: sqlite3.Connection, folder_id: bytes, expected: Mapping[str, int]
) -> None:
    moved = []
    for path, local_seq in expected.items():
        row = conn.execute(
            "SELECT local_seq FROM records WHERE folder_id = ? AND path = ?", (folder_id, path)
        ).fetchone()
        if (0 if row is None else row[0]) != local_seq:
            moved.append(path)
    if moved:
        raise IndexChangedError(
            f"{len(moved)} path(s) changed in the index since they were read, e.g. {moved[0]!r}",
            tuple(moved),
        )


def _set_local(
    conn: sqlite3.Connection, folder_id: bytes, path: str, local: LocalFile | None
) -> None:
    if local is None:
        conn.execute("DELETE FROM local_files WHERE folder_id = ? AND path = ?", (folder_id, path))
        return
    # SQLite integers are signed 64-bit; inode numbers are unsigned and may use the top bit.
    inode = local.inode - 2 * _I64 if local.inode >= _I64 else local.inode
    conn.execute(
        "INSERT OR REPLACE INTO local_files (folder_id, path, inode, size, mtime_ns, mode)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (folder_id, path, inode, local.size, local.mtime_ns, local.mode),
    )


def _local_file(conn: sqlite3.Connection, folder_id: bytes, path: str) -> LocalFile | None:
    row = conn.execute(
        "SELECT inode, size, mtime_ns, mode FROM local_files WHERE folder_id = ? AND path = ?",
        (folder_id, path),
    ).fetchone()
    return None if row is None else _local(*row)


def _local(inode: int, size: int, mtime_ns: int, mode: int) -> LocalFile:
    return LocalFile(inode + 2 * _I64 if inode < 0 else inode, size, mtime_ns, mode)
