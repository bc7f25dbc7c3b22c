"""A synced folder: the high-level object a tool uses.

:class:`Folder` ties the parts together: the scanner publishes local changes into the index,
:class:`~commonsync.exchange.PeerExchange` trades records and chunks with peers,
:func:`~commonsync.decide.decide` rules on every remote record, and the puller makes the
chosen versions real on disk through :mod:`commonsync.apply`. Progress and outcomes come out
of :meth:`Folder.events` as an async iterator.

    async with open_folder(root, key, identity, store) as folder:
        await folder.scan()
        await folder.sync(session)        # until the peer closes
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from . import apply, scanner
from .chunks import chunk_id
from .decide import Action, decide
from .device_id import DeviceId
from .errors import (
    CommonsyncError,
    ConflictCopyExistsError,
    DirectoryNotEmptyError,
    LocalChangedError,
    MissingChunkError,
)
from .exchange import PeerExchange, RemoteRecord
from .identity import DeviceIdentity
from .ignore import IgnoreRules
from .keys import FolderKey, FolderKeyring
from .layout import conflict_name
from .messages import MAX_BATCH_BYTES
from .records import ChunkEntry, Kind, Record
from .session import Session
from .store import ChunkLocation, IndexEntry, IndexStore, LocalFile, PeerProgress, SignedRow

log = logging.getLogger(__name__)

#: Events kept for a slow reader of :meth:`Folder.events`; older ones are dropped.
EVENT_BUFFER = 1024


class EventKind(enum.Enum):
    SCANNED = "scanned"
    REMOTE_CHANGE = "remote change"
    APPLIED = "applied"
    DELETED = "deleted"
    CONFLICT = "conflict"
    ERROR = "error"
    IDLE = "idle"
    PEER_CONNECTED = "peer connected"
    PEER_DISCONNECTED = "peer disconnected"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    path: str = ""
    detail: str = ""
    peer: str = ""


@dataclass
class Stats:
    """Counters a tool or a benchmark can read."""

    chunk_bytes_received: int = 0
    chunk_bytes_local: int = 0
    files_applied: int = 0
    conflicts: int = 0


@dataclass(frozen=True)
class Progress:
    """What is left to bring this device up to date with what its peers announced."""

    files: int
    bytes: int

    @property
    def idle(self) -> bool:
        return self.files == 0


class Folder:
    """One synced folder on this device. Create it with :func:`open_folder`."""

    def __init__(
        self,
        root: Path,
        key: FolderKey,
        identity: DeviceIdentity,
        store: IndexStore,
        *,
        device_name: str = "",
    ) -> None:
        self.root = Path(root)
        self._key = key
        self._keyring = FolderKeyring([key])
        self.identity = identity
        self.store = store
        self.device_name = device_name or identity.device_id.short_str
        self.stats = Stats()
        #: The mass-deletion guard of :meth:`scan` (None: off, as for a library user who
        #: deletes on purpose; the daemon sets it from its configuration).
        self.max_deleted_share: float | None = None
        self._peers: list[PeerExchange] = []
        self._changed = anyio.Event()
        self._pending: dict[str, RemoteRecord] = {}
        self._conflict_copies: dict[str, str | None] = {}
        self._pending_changed = anyio.Event()
        self._publish_copies = False
        #: During a round: the chunks some local file holds (None: ask).
        self._local_sources: dict[bytes, list[ChunkLocation]] | None = None
        self._scan_lock = anyio.Lock()
        self._racy_scanned = anyio.Event()
        self._events_in, self._events_out = anyio.create_memory_object_stream[Event](EVENT_BUFFER)

    @property
    def key(self) -> FolderKey:
        return self._key

    @property
    def keyring(self) -> FolderKeyring:
        return self._keyring

    @property
    def folder_id(self) -> bytes:
        return self._key.folder_id

    # -- events ----------------------------------------------------------------------------

    def events(self) -> MemoryObjectReceiveStream[Event]:
        """What happens in this folder, as it happens (one reader)."""
        return self._events_out

    def _emit(self, kind: EventKind, path: str = "", detail: str = "", peer: str = "") -> None:
        # Nobody is reading fast enough: an event stream must never stall syncing.
        with contextlib.suppress(anyio.WouldBlock):
            self._events_in.send_nowait(Event(kind, path, detail, peer))

    @property
    def busy(self) -> bool:
        """Whether remote versions wait to be written (cheap, unlike :meth:`progress`)."""
        return bool(self._pending)

    def progress(self) -> Progress:
        """Remote versions decided on but not yet on disk (sizes of files still to write)."""
        pending = [remote.record for remote in self._pending.values()]
        return Progress(
            files=len(pending),
            bytes=sum(r.size for r in pending if r.kind is Kind.FILE and not r.deleted),
        )

    # -- scanning --------------------------------------------------------------------------

    async def scan(self, *, confirm_deletions: bool = False) -> scanner.ScanReport:
        """Publish local changes: new, changed and deleted files become records.

        If more than :attr:`max_deleted_share` of the folder vanished, the deletions are not
        published (:class:`~commonsync.errors.MassDeletionError`) unless ``confirm_deletions``.
        """
        async with self._scan_lock:
            report = await scanner.scan(
                self.root,
                self.store,
                self._key,
                self.identity,
                ignore=IgnoreRules.load(self.root),
                skip=set(self._pending),
                max_deleted_share=None if confirm_deletions else self.max_deleted_share,
                published=self._notify_change,
            )
        self._notify_change()
        self._emit(EventKind.SCANNED, detail=str(report))
        if report.racy:
            self._racy_scanned.set()
        return report

    async def _rescan_racy(self) -> None:
        """Scan again once the racy window of the files a scan hashed just after they were
        written has passed, so that their local state is recorded (run it in a task).

        Without it such a file has no local state until some later scan, and the applier
        would take it for a local change when a remote version of it arrives."""
        while True:
            await self._racy_scanned.wait()
            self._racy_scanned = anyio.Event()
            await anyio.sleep(scanner.RACY_WINDOW_NS / 1e9 + RACY_RESCAN_MARGIN)
            try:
                await self.scan()
            except CommonsyncError as exc:
                # The owner's next scan reports it (the folder may be gone, or held back).
                log.debug("rescan after the racy window failed: %s", exc)

    def _notify_change(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- what the exchange needs -------------------------------------------------------------

    async def index_state(self) -> tuple[bytes, int]:
        state = await self.store.folder(self.folder_id)
        return state.index_id, state.sequence

    async def records_since(self, after: int, limit: int) -> list[SignedRow]:
        return await self.store.signed_since(self.folder_id, after, limit)

    async def wait_for_change(self, after: int) -> None:
        while (await self.index_state())[1] <= after:
            await self._changed.wait()

    async def peer_progress(self, peer: DeviceId) -> tuple[bytes, int] | None:
        progress = await self.store.peer_progress(self.folder_id, peer)
        return None if progress is None else (progress.index_id, progress.sequence)

    async def set_peer_progress(self, peer: DeviceId, index_id: bytes, sequence: int) -> None:
        await self.store.set_peer_progress(self.folder_id, peer, PeerProgress(index_id, sequence))

    def attach(self, peer: PeerExchange) -> None:
        self._peers.append(peer)
        self._emit(EventKind.PEER_CONNECTED, peer=peer.peer.short_str)

    def detach(self, peer: PeerExchange) -> None:
        if peer in self._peers:
            self._peers.remove(peer)
            self._emit(EventKind.PEER_DISCONNECTED, peer=peer.peer.short_str)

    async def receive_records(self, source: PeerExchange, records: Sequence[RemoteRecord]) -> None:
        """Rule on each remote record; those we take are stored (not yet on disk) and queued
        for the puller."""
        taken: list[IndexEntry] = []
        stored = await self.store.get_many(
            self.folder_id, [r.record.path for r in records if r.record.path not in self._pending]
        )
        for remote in records:
            current = self._pending.get(remote.record.path)
            local = current.record if current is not None else None
            if local is None:
                entry = stored.get(remote.record.path)
                local = entry.record if entry is not None else None
            decision = decide(local, remote.record, me=self.identity.public_key)
            if decision.action is Action.KEEP:
                continue
            if decision.conflict:
                self.stats.conflicts += 1
                self._emit(EventKind.CONFLICT, remote.record.path, decision.reason)
            self._pending[remote.record.path] = remote
            self._conflict_copies[remote.record.path] = decision.conflict_copy
            taken.append(IndexEntry(remote.record, remote.signed, on_disk=False))
            self._emit(EventKind.REMOTE_CHANGE, remote.record.path, decision.reason,
                       source.peer.short_str)  # fmt: skip
        if taken:
            await self.store.put(self.folder_id, taken)
            self._notify_change()
            self._pending_changed.set()

    async def read_local_chunks(
        self, chunks: Sequence[ChunkEntry], *, verify: bool = True
    ) -> list[bytes | None]:
        return await self.store.read_with_sources(
            self.folder_id, [c.id for c in chunks], partial(self._read_each, chunks, verify)
        )

    def _read_each(
        self, chunks: Sequence[ChunkEntry], verify: bool, sources: list[list[ChunkLocation]]
    ) -> list[bytes | None]:
        return [
            self._read_first(chunk, verify, places)
            for chunk, places in zip(chunks, sources, strict=True)
        ]

    def _read_first(
        self, chunk: ChunkEntry, verify: bool, locations: Sequence[ChunkLocation]
    ) -> bytes | None:
        """The chunk's bytes from the first location that still holds them (in a thread)."""
        for location in locations:
            data = _read_at(self.root / location.path, location.offset, chunk.size)
            if data is not None and (
                not verify or chunk_id(self._key.chunk_id_key, data) == chunk.id
            ):
                return data
        return None

    # -- syncing -------------------------------------------------------------------------------

    async def sync(self, session: Session) -> None:
        """Sync with the peer at the other end of ``session`` until it closes."""
        exchange = PeerExchange(session, [self], device_name=self.device_name)
        await exchange.run()

    async def _resume_pending(self) -> None:
        """Queue the remote versions this folder took before it last stopped and did not
        write: the peers that sent them will not send them again. (What was decided about a
        conflict copy is not kept: if the file changed meanwhile, applying makes one.)"""
        for entry in await self.store.not_on_disk(self.folder_id):
            self._pending[entry.record.path] = RemoteRecord(entry.record, entry.signed)
        if self._pending:
            self._pending_changed.set()

    async def run_puller(self) -> None:
        """Apply the remote versions we decided to take, forever (run it in a task)."""
        while True:
            if not self._pending:
                self._emit(EventKind.IDLE)
                self._pending_changed = anyio.Event()
                await self._pending_changed.wait()
                continue
            if not await self._pull_round():
                # Waiting for a peer that has the chunks, or for a local change to settle.
                with anyio.move_on_after(1):
                    self._pending_changed = anyio.Event()
                    await self._pending_changed.wait()

    async def _pull_round(self) -> bool:
        """One pass over what is pending; True if anything was applied.

        Directories and links are made first (parents before children), then small files, up
        to :data:`APPLY_CONCURRENCY` at once (their round trips and fsyncs overlap), then large
        files one at a time (each fetches a window of chunks at once: memory stays bounded), then
        deletions (children before parents, after every new file has read the chunks it
        needed from the old ones). What was applied is recorded in the index in batches:
        one transaction, and one fsync of the index, per batch instead of per file.
        """
        order = sorted(self._pending, key=_apply_order(self._pending))
        records = {path: self._pending[path] for path in order}
        files = [p for p in order if _is_file_creation(records[p].record)]
        first = [
            p for p in order
            if not records[p].record.deleted and not _is_file_creation(records[p].record)
        ]  # fmt: skip
        last = [p for p in order if records[p].record.deleted]
        batch = _AppliedBatch()
        for path in first:
            await self._apply_one(records[path], batch)
        small = [p for p in files if records[p].record.size <= SMALL_FILE]
        # Which of their chunks a local file holds, asked once rather than once per chunk.
        self._local_sources = await self.store.chunk_sources_many(
            self.folder_id, (c.id for p in files for c in records[p].record.chunks)
        )
        try:
            await self._apply_small([records[p] for p in small], batch)
            for path in files:
                if records[path].record.size > SMALL_FILE:
                    await self._apply_one(records[path], batch)
        finally:
            self._local_sources = None
        for path in last:
            await self._apply_one(records[path], batch)
        await self._record(batch)
        return batch.progress

    async def _apply_small(self, remotes: list[RemoteRecord], batch: _AppliedBatch) -> None:
        """Apply small files: those of one chunk in groups (one chunk request and one trip to
        a worker thread per group), a few groups at once so that fetching the next group
        overlaps writing this one; the others (a conflict copy to make first, or two chunks)
        one by one, several at once."""

        def groupable(remote: RemoteRecord) -> bool:
            path = remote.record.path
            return len(remote.record.chunks) <= 1 and self._conflict_copies.get(path) is None

        grouped = [r for r in remotes if groupable(r)]
        alone = [r for r in remotes if not groupable(r)]
        slots = anyio.Semaphore(APPLY_CONCURRENCY)

        async def in_slot(work: Callable[[], Awaitable[None]]) -> None:
            try:
                await work()
            finally:
                slots.release()

        async with anyio.create_task_group() as tasks:
            for group in _groups(grouped):
                await slots.acquire()
                tasks.start_soon(in_slot, partial(self._apply_group, group, batch))
            for remote in alone:
                await slots.acquire()
                tasks.start_soon(in_slot, partial(self._apply_one, remote, batch))

    async def _apply_group(self, group: list[RemoteRecord], batch: _AppliedBatch) -> None:
        """Apply files of at most one chunk each, together (see :meth:`_apply_small`)."""
        expected = await self.store.local_files_of(self.folder_id, (r.record.path for r in group))
        holding = await self._holding_content([r.record for r in group], expected)
        for remote in [r for r in group if r.record.path in holding]:
            await self._apply_one(remote, batch)  # metadata only: nothing to fetch
        group = [r for r in group if r.record.path not in holding]
        chunks = {c.id: c for r in group for c in r.record.chunks}
        found = await self._fetch_chunks(list(chunks.values()))
        ready = [r for r in group if all(c.id in found for c in r.record.chunks)]
        for remote in ready:
            self._conflict_copies.pop(remote.record.path, None)  # None: that is why it is here
        files = [
            (r.record, b"".join(found[c.id] for c in r.record.chunks), expected.get(r.record.path))
            for r in ready
        ]
        # Every chunk was checked against its ID as it was read or received.
        results = await apply.apply_small_files(
            self.root, files, chunk_id_key=self._key.chunk_id_key, checked=True
        )
        for remote, result in zip(ready, results, strict=True):
            if isinstance(result, LocalChangedError):
                await self._apply_one(remote, batch)  # the careful way: it keeps their change
            elif isinstance(result, CommonsyncError):
                self._failed(remote.record.path, result)
            else:
                await self._applied(remote, result, batch)

    async def _apply_one(self, remote: RemoteRecord, batch: _AppliedBatch) -> None:
        try:
            applied = await self._apply(remote)
        except CommonsyncError as exc:
            self._failed(remote.record.path, exc)
            return
        if applied is not _WAIT:
            await self._applied(remote, applied, batch)

    def _failed(self, path: str, error: CommonsyncError) -> None:
        self._emit(EventKind.ERROR, path, str(error))
        log.warning("cannot apply %s: %s", path, error)

    async def _applied(
        self, remote: RemoteRecord, state: LocalFile | _Marker | None, batch: _AppliedBatch
    ) -> None:
        batch.progress = True
        batch.items.append((remote, state))
        if len(batch.items) >= APPLY_BATCH:
            await self._record(batch)

    async def _record(self, batch: _AppliedBatch) -> None:
        """Store a batch of applied versions as on disk, then announce them."""
        items, batch.items = batch.items, []
        stored = [(remote, state) for remote, state in items if state is not _DONE]
        if stored:
            await self.store.put(
                self.folder_id,
                [IndexEntry(remote.record, remote.signed, on_disk=True) for remote, _ in stored],
                local_files=[
                    (remote.record.path, state if isinstance(state, LocalFile) else None)
                    for remote, state in stored
                ],
            )
            self._notify_change()
        for remote, state in items:
            path = remote.record.path
            if self._pending.get(path) is remote:
                del self._pending[path]
            if state is _DONE:
                continue
            self.stats.files_applied += 1
            self._emit(EventKind.DELETED if remote.record.deleted else EventKind.APPLIED, path)
        if self._publish_copies:
            self._publish_copies = False
            await self.scan()

    async def _apply(self, remote: RemoteRecord) -> LocalFile | _Marker | None:
        """Make ``remote`` real on disk; its new local state (None: nothing there), or
        :data:`_WAIT` (chunks missing: later), :data:`_DONE` (nothing to record)."""
        record = remote.record
        expected = await self.store.local_file(self.folder_id, record.path)
        if expected is None:
            expected = await self._scanned_state(record.path)
        copy = self._conflict_copies.pop(record.path, None)
        published_copy = False
        if (
            copy is not None
            and expected is not None
            and not record.deleted
            and await self._keep_conflict_copy(record.path, copy, expected)
        ):
            expected, published_copy = None, True
        state: LocalFile | None
        try:
            if expected is not None and await self._holds_content(record, expected):
                state = await apply.apply_metadata(self.root, record, expected)
            else:
                state = await self._write(record, expected)
        except LocalChangedError as exc:
            now = await anyio.to_thread.run_sync(_local_state, self.root / record.path)
            if now is not None and await anyio.to_thread.run_sync(
                _holds_version, self.root / record.path, record, now, self._key.chunk_id_key
            ):
                return now  # already this version (written before a stop, not recorded)
            # Someone changed the path after it was scanned. Their change must survive: a
            # changed file becomes a conflict copy (ours, published by the next scan); for a
            # deletion or a directory, whatever is there now is what we replace (a replaced
            # file still goes to the versions folder).
            self._emit(EventKind.CONFLICT, record.path, str(exc))
            if now is not None and stat.S_ISREG(now.mode) and not record.deleted:
                copy = conflict_name(record.path, now.mtime_ns, self.identity.device_id.short_str)
                if await self._keep_conflict_copy(record.path, copy, now):
                    now, published_copy = None, True
            state = await self._write(record, now)
        except MissingChunkError:
            return _WAIT
        except DirectoryNotEmptyError as exc:
            # Its remaining entries are unknown to the index yet: they will be scanned and
            # published, and the directory stays.
            self._emit(EventKind.ERROR, record.path, str(exc))
            return _DONE
        if published_copy:
            self._publish_copies = True  # by a scan once the batch is recorded
        return state

    async def _keep_conflict_copy(self, path: str, copy: str, expected: LocalFile) -> bool:
        """Move our losing version at ``path`` to its conflict copy ``copy``; False if that
        name is taken (by the very file, for a conflict on a conflict copy whose name would
        not change, or by another one): then the version that replaces ours keeps ours in the
        versions folder instead, so that nothing is lost and nothing is retried for ever."""
        if copy != path:
            try:
                await apply.conflict_copy(self.root, path, copy, expected)
            except ConflictCopyExistsError:
                pass
            else:
                self._emit(EventKind.CONFLICT, copy, "kept the local version as a conflict copy")
                return True
        self._emit(
            EventKind.CONFLICT,
            path,
            f"the conflict copy's name {copy!r} is taken: the local version was kept in "
            "the versions folder instead",
        )
        return False

    async def _holds_content(self, record: Record, expected: LocalFile) -> bool:
        """Whether the file the scanner last saw at the record's path (``expected``) holds
        the record's content already: a permission or mtime change, or the same content
        under another version. Such a version changes metadata only: nothing is fetched,
        and the versions folder gets no copy of what is still there."""
        return bool(await self._holding_content([record], {record.path: expected}))

    async def _holding_content(
        self, records: Sequence[Record], expected: dict[str, LocalFile]
    ) -> set[str]:
        """The paths among ``records`` whose file already holds the record's content (see
        :meth:`_holds_content`), looked up in one trip."""
        candidates = [
            r for r in records
            if r.kind is Kind.FILE and not r.deleted and (state := expected.get(r.path))
            and stat.S_ISREG(state.mode) and state.size == r.size
        ]  # fmt: skip
        if not candidates:
            return set()
        on_disk = await self.store.chunks_at_many(self.folder_id, (r.path for r in candidates))
        return {r.path for r in candidates if tuple(on_disk[r.path]) == r.chunks}

    async def _scanned_state(self, path: str) -> LocalFile | None:
        """The state of the file at ``path`` if it holds exactly the chunks of the version
        last recorded as on disk there, else None.

        For a file the scanner hashed within its racy window, and so kept no local state
        for: unchanged since, it is the version the index holds, not a local change (and if
        that version loses a conflict, it still gets its conflict copy)."""
        now = await anyio.to_thread.run_sync(_local_state, self.root / path)
        if now is None or not stat.S_ISREG(now.mode):
            return None
        chunks = await self.store.chunks_at(self.folder_id, path)
        if not chunks:
            return None  # nothing recorded (or an empty file): cannot tell
        holds = await anyio.to_thread.run_sync(
            _holds_chunks, self.root / path, chunks, now, self._key.chunk_id_key
        )
        return now if holds else None

    async def _write(self, record: Record, expected: LocalFile | None) -> LocalFile | None:
        if record.deleted:
            await apply.apply_deletion(self.root, record, expected)
            return None
        if record.kind is Kind.DIRECTORY:
            return await apply.apply_directory(self.root, record, expected)
        if record.kind is Kind.SYMLINK:
            return await apply.apply_symlink(self.root, record, expected)
        return await apply.apply_file(
            self.root,
            record,
            expected=expected,
            read_chunk=self._fetch_chunk,
            chunk_id_key=self._key.chunk_id_key,
            reader_checks=True,  # each chunk it returns matched its ID
        )

    async def _fetch_chunk(self, chunk: ChunkEntry) -> bytes:
        known = self._local_sources
        if known is None or chunk.id in known:
            data = (await self.read_local_chunks([chunk]))[0]
        else:
            data = None  # looked up for the whole round: no local file has it
        if data is not None:
            self.stats.chunk_bytes_local += len(data)
            return data
        # Start at a different peer for each chunk, so that the chunks of one file, fetched
        # several at a time, come from every connected peer that has them.
        for peer in self._peers_from(chunk.id[0]):
            data = await peer.request_chunk(self.folder_id, chunk)
            if data is None:
                continue
            # In a thread: hashing a MiB takes a millisecond or two, too long for the loop.
            if not await anyio.to_thread.run_sync(self._matching, [chunk], [data]):
                self._tampered(peer)
                continue
            self.stats.chunk_bytes_received += len(data)
            return data
        raise MissingChunkError("no connected peer has this chunk yet")

    async def _fetch_chunks(self, chunks: list[ChunkEntry]) -> dict[bytes, bytes]:
        """The bytes of as many of ``chunks`` as a local file or a connected peer holds, by
        chunk ID, each checked against its ID; at most :data:`MAX_BATCH_BYTES` in all."""
        found: dict[bytes, bytes] = {}
        known = self._local_sources
        local = [c for c in chunks if known is None or c.id in known]
        for chunk, data in zip(local, await self.read_local_chunks(local), strict=True):
            if data is not None:
                found[chunk.id] = data
                self.stats.chunk_bytes_local += len(data)
        missing = [c for c in chunks if c.id not in found]
        for peer in self._peers_from(chunks[0].id[0] if chunks else 0):
            if not missing:
                break
            answers = await peer.request_chunks(self.folder_id, missing)
            got = [(c, d) for c, d in zip(missing, answers, strict=True) if d is not None]
            matching = await anyio.to_thread.run_sync(
                self._matching, [c for c, _ in got], [d for _, d in got]
            )
            if len(matching) < len(got):
                self._tampered(peer)
            for chunk, data in got:
                if chunk.id in matching:
                    found[chunk.id] = data
                    self.stats.chunk_bytes_received += len(data)
            missing = [c for c in missing if c.id not in found]
        return found

    def _peers_from(self, start: int) -> list[PeerExchange]:
        """The connected peers, beginning at a different one depending on ``start``."""
        peers = list(self._peers)
        first = start % len(peers) if peers else 0
        return peers[first:] + peers[:first]

    def _matching(self, chunks: Sequence[ChunkEntry], data: Sequence[bytes]) -> set[bytes]:
        """The IDs of the chunks whose bytes match them (in a worker thread)."""
        key = self._key.chunk_id_key
        return {c.id for c, d in zip(chunks, data, strict=True) if chunk_id(key, d) == c.id}

    def _tampered(self, peer: PeerExchange) -> None:
        log.warning("%s sent a chunk that does not match its ID", peer.peer.short_str)
        self._emit(EventKind.ERROR, detail="a peer sent a chunk that does not match its ID",
                   peer=peer.peer.short_str)  # fmt: skip


#: Small files (or groups of them) applied at the same time, and applied versions recorded
#: per transaction.
APPLY_CONCURRENCY = 8
APPLY_BATCH = 200
#: Files of one chunk applied as a group: one chunk request, one trip to a worker thread.
GROUP_FILES = 128
#: A file this size or smaller is "small": a chunk or two.
SMALL_FILE = 2 * 1024 * 1024
#: Seconds past the racy window before the rescan that records local states.
RACY_RESCAN_MARGIN = 0.2


class _Marker(enum.Enum):
    WAIT = "wait"  # its chunks are not available yet
    DONE = "done"  # handled, nothing to record


_WAIT, _DONE = _Marker.WAIT, _Marker.DONE


@dataclass
class _AppliedBatch:
    items: list[tuple[RemoteRecord, LocalFile | _Marker | None]] = field(default_factory=list)
    progress: bool = False


def _groups(remotes: list[RemoteRecord]) -> Iterator[list[RemoteRecord]]:
    """``remotes`` in groups of at most :data:`GROUP_FILES` files and
    :data:`MAX_BATCH_BYTES` bytes (one chunk request each)."""
    group: list[RemoteRecord] = []
    size = 0
    for remote in remotes:
        if group and (len(group) == GROUP_FILES or size + remote.record.size > MAX_BATCH_BYTES):
            yield group
            group, size = [], 0
        group.append(remote)
        size += remote.record.size
    if group:
        yield group


def _is_file_creation(record: Record) -> bool:
    return record.kind is Kind.FILE and not record.deleted


def _apply_order(pending: dict[str, RemoteRecord]) -> Callable[[str], tuple[int, int, str]]:
    """Creations first, parents before children; then deletions, children before parents (a
    directory empties before it goes, and a renamed file's chunks are read from its old name
    before that is deleted)."""

    def order(path: str) -> tuple[int, int, str]:
        if pending[path].record.deleted:
            return (1, -path.count("/"), path)
        return (0, 0, path)

    return order


def _local_state(path: Path) -> LocalFile | None:
    try:
        return LocalFile.from_stat(path.lstat())
    except FileNotFoundError:
        return None


def _holds_version(path: Path, record: Record, state: LocalFile, key: bytes) -> bool:
    """Whether the regular file at ``path``, still as ``state`` says, holds exactly the
    version ``record``: its size, then every chunk against its ID (in a worker thread)."""
    if record.kind is not Kind.FILE or record.deleted:
        return False
    return _holds_chunks(path, record.chunks, state, key)


def _holds_chunks(path: Path, chunks: Sequence[ChunkEntry], state: LocalFile, key: bytes) -> bool:
    """Whether the regular file at ``path``, still as ``state`` says, holds exactly
    ``chunks``: its size, then every chunk against its ID (in a worker thread)."""
    if not stat.S_ISREG(state.mode) or state.size != sum(c.size for c in chunks):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if LocalFile.from_stat(os.fstat(fd)) != state:
            return False
        offset = 0
        for chunk in chunks:
            data = os.pread(fd, chunk.size, offset)
            if len(data) != chunk.size or chunk_id(key, data) != chunk.id:
                return False
            offset += chunk.size
        return LocalFile.from_stat(os.fstat(fd)) == state
    except OSError:
        return False
    finally:
        os.close(fd)


def _read_at(path: Path, offset: int, size: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, offset)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None


@asynccontextmanager
async def open_folder(
    root: Path,
    key: FolderKey,
    identity: DeviceIdentity,
    store: IndexStore,
    *,
    label: str = "",
    device_name: str = "",
) -> AsyncIterator[Folder]:
    """Open a folder for syncing (creating its metadata on first use) and run its puller."""
    root = Path(root)
    await anyio.to_thread.run_sync(scanner.init_folder, root)
    await store.add_folder(key.folder_id, label or root.name)
    folder = Folder(root, key, identity, store, device_name=device_name)
    await folder._resume_pending()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(folder.run_puller)
        tasks.start_soon(folder._rescan_racy)
        try:
            yield folder
        finally:
            tasks.cancel_scope.cancel()
