"""A synced folder: the high-level object a tool uses.

:class:`Folder` ties the parts together: the scanner publishes local changes into the index,
:class:`~commonsync.sync.exchange.PeerExchange` trades records and chunks with peers,
:func:`~commonsync.sync.decide.decide` rules on every remote record, and the puller makes the
chosen versions real on disk through :mod:`commonsync.sync.apply`, with the chunks that no local
file holds fetched from the connected peers (:mod:`commonsync.sync.peer_chunks`). Progress and
outcomes come out of :meth:`Folder.events` as an async iterator.

    async with open_folder(root, key, identity, store) as folder:
        await folder.scan()
        await folder.sync(session)        # until the peer closes
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import (
    CommonsyncError,
    ConflictCopyExistsError,
    DirectoryNotEmptyError,
    IndexChangedError,
    InsufficientSpaceError,
    InternalPathError,
    LocalChangedError,
    MembershipError,
    MissingChunkError,
    RecordError,
    RecordKindError,
    UnrepresentableNameError,
    VersionVectorError,
)
from ..formats.chunks import chunk_id
from ..formats.device_id import DeviceId
from ..formats.identity import DeviceIdentity
from ..formats.keys import FolderKey, FolderKeyring
from ..formats.messages import MAX_BATCH_BYTES, CloseReason
from ..formats.records import ChunkEntry, Kind, Record, sign_record
from ..formats.versionvector import VersionVector
from ..membership.entries import Action as Action_
from ..membership.entries import Entry, NewEpoch
from ..membership.epochs import open_secret, secret_hash
from ..wire.session import Session
from . import apply, layout, scanner
from .beneath import DirectoryChain
from .decide import REFUSED_INTERNAL, Action, decide, merged, refusal
from .exchange import PeerExchange, RemoteRecord
from .ignore import IGNORE_FILE, FolderRules, IgnoreRules
from .layout import conflict_name
from .marker import init_folder
from .members import FolderMembers
from .peer_chunks import Ask, from_peers
from .progress import InFlight, PeerView, RateMeter, eta
from .refusals import Refusal, Refusals
from .space import DiskReserve
from .store import (
    ChunkLocation,
    IndexEntry,
    IndexStore,
    LocalFile,
    PeerProgress,
    PendingVersion,
    PullPhase,
    SetAside,
    SignedRow,
)

log = logging.getLogger(__name__)

#: Events kept for a slow reader of :meth:`Folder.events`; older ones are dropped.
EVENT_BUFFER = 1024
#: Seconds a temporary file must be left unchanged before it may be taken for a left-over.
TEMP_GRACE = 60.0
#: Why a remote version is not written: a rule of this device ignores its path. It stays in
#: the index, and is pending again when this device's rules change.
IGNORED_HERE = "ignored on this device"


@dataclass
class _Taken:
    """What a batch of remote versions leaves us holding of one path (:meth:`Folder._take`)."""

    record: Record
    signed: bytes
    #: The file on disk is this version's (an outcome that kept our version).
    on_disk: bool
    #: Where our losing file goes before the new version is written.
    copy: str | None
    reason: str
    #: The disk is to change: a version for the puller to write.
    fetch: bool


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
    #: Remote versions wait for disk space (see :attr:`Folder.waiting_for_space`).
    WAITING = "waiting"
    #: A version taken before its author's removal or demotion, beyond its credits, moved
    #: to the versions folder (:meth:`Folder.take_log_entries`).
    SET_ASIDE = "set aside"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    path: str = ""
    detail: str = ""
    peer: str = ""
    #: The bytes of a file version written (``APPLIED``).
    size: int = 0


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

    #: A temporary file that changed this recently (seconds) is never taken for a left-over.
    temp_grace: float = TEMP_GRACE

    def __init__(
        self,
        root: Path,
        key: FolderKey,
        identity: DeviceIdentity,
        store: IndexStore,
        *,
        device_name: str = "",
        epoch_keys: Sequence[FolderKey] = (),
        save_key: Callable[[FolderKey], None] | None = None,
    ) -> None:
        self.root = Path(root)
        #: The key the folder was made or shared with: its chunk IDs and the proofs that
        #: this device holds it are made with it in every epoch (SPEC.md §15.7); records
        #: travel sealed with the newest epoch's key (:attr:`keyring`).
        self._key = key
        self._keyring = FolderKeyring([key, *epoch_keys])
        #: Keeps a later epoch's key (in the node's home) before the folder uses it.
        self._save_key = save_key
        self.identity = identity
        self.store = store
        self.device_name = device_name or identity.device_id.short_str
        self.stats = Stats()
        #: The mass-deletion guard of :meth:`scan` (None: off, as for a library user who
        #: deletes on purpose; the daemon sets it from its configuration).
        self.max_deleted_share: float | None = None
        self._peers: list[PeerExchange] = []
        self._changed = anyio.Event()
        #: What is left to write, kept up to date as versions are taken and written, and
        #: counted again from the store after each round of the puller.
        self._left = Progress(0, 0)
        #: The chunk bytes already obtained for large files being written (they are not
        #: "left" any more, before their file is complete), and how fast chunks come.
        self._in_flight = InFlight()
        self.meter = RateMeter()
        #: Per connected peer that reports its progress: how far it is behind us, and we
        #: behind it (:mod:`commonsync.sync.progress`); set by the exchange.
        self.peer_views: dict[DeviceId, PeerView] = {}
        #: The pending versions the puller holds right now (one window of them, read from
        #: the store: what waits is on disk, not in memory), and their conflict copies.
        self._window: dict[str, PendingVersion] = {}
        self._conflict_copies: dict[str, str | None] = {}
        #: The temporary files of pending versions replaced by newer ones before they were
        #: written (an attempt at one, stopped mid-write, left it): the puller removes them
        #: between windows, when nothing is being written.
        self._superseded: list[str] = []
        #: The paths whose versions the log set aside and whose files the puller is still
        #: to move to the versions folder: the scan leaves them alone meanwhile.
        self._set_aside: set[str] = set()
        #: Versions set aside left files holding this device's own edits: a scan is due.
        self._scan_set_aside = False
        #: The peers whose sessions began before versions were set aside: what they send
        #: until their next session moves their progress no more (it was forgotten, so
        #: that they send their whole index again).
        self._asking_again: set[DeviceId] = set()
        self._pending_changed = anyio.Event()
        #: When to make every waiting version due again (a peer connected), if pending.
        self._retry_all_at: float | None = None
        self._retried_all_at = -RETRY_ALL_INTERVAL
        self._last_applied = -WRITING_QUIET
        self._refusals = Refusals()
        self._log_refusals = Refusals(noun=("membership entry", "membership entries"))
        #: The versions refused because the log lets their author write no more (or never
        #: did), per author device (public key): what status words per member.
        self.refused_authors: dict[bytes, int] = {}
        #: Who may write (None until the folder has a membership log: then anyone holding
        #: its key); :func:`open_folder` loads it.
        self.members = FolderMembers(key.folder_id, identity, store)
        #: This device's own versions that no member takes (see :meth:`_count_unshared`).
        self.unshared_changes = 0
        self._publish_copies = False
        #: During a round: the chunks some local file holds (None: ask).
        self._local_sources: dict[bytes, list[ChunkLocation]] | None = None
        self._scan_lock = anyio.Lock()
        #: One epoch key taken at a time: a key a session hands over and the one this device
        #: opens from its own new entry may come together (both were written to one file).
        self._key_lock = anyio.Lock()
        #: The free space kept on the folder's disk (the daemon sets it from ``min_free``).
        self.disk_reserve = DiskReserve()
        #: Why remote versions wait for disk space, for a person ("" if they do not).
        self.waiting_for_space = ""
        self._space_waiters: set[str] = set()  # the paths whose versions wait for space
        self._space_needed = 0  # the least a waiting version needs
        self._space_wanted = anyio.Event()
        self._space_poll = SPACE_POLL  # longer each time space looked back but was not
        self._room: tuple[float, int] | None = None  # (when measured, bytes) for a second
        self._rules = FolderRules(self.root)
        #: This device's own ignore rules, as the last scan read them (None: not read yet).
        self._local_rules: IgnoreRules | None = None
        #: What is wrong with the folder's ``.csignore``, for a person ("" if nothing): the
        #: last scan used the last good rules instead (see :class:`FolderRules`).
        self.ignore_problem = ""
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

    def _emit(
        self, kind: EventKind, path: str = "", detail: str = "", peer: str = "", size: int = 0
    ) -> None:
        # Nobody is reading fast enough: an event stream must never stall syncing.
        with contextlib.suppress(anyio.WouldBlock):
            self._events_in.send_nowait(Event(kind, path, detail, peer, size))

    @property
    def busy(self) -> bool:
        """Whether remote versions wait to be written (also those waiting for a peer that
        has their chunks)."""
        return self._left.files > 0

    @property
    def writing(self) -> bool:
        """Whether remote versions are being written right now: one was written in the last
        :data:`WRITING_QUIET` seconds. (Versions that only wait for chunks do not count.)"""
        return time.monotonic() - self._last_applied < WRITING_QUIET

    def progress(self) -> Progress:
        """Remote versions decided on but not yet on disk (sizes of files still to write,
        less the chunks already obtained for those being written: the bytes move as chunks
        arrive, also within one large file); refused versions are not counted (see
        :meth:`refusals`)."""
        left = self._left
        return Progress(left.files, max(0, left.bytes - self._in_flight.bytes))

    def rate(self) -> float:
        """Bytes per second of chunks obtained for remote versions, over the last seconds."""
        return self.meter.rate()

    def eta(self) -> float | None:
        """Seconds until the remote versions are written at the current rate (None: no
        estimate, nothing moves)."""
        return eta(self.progress().bytes, self.rate())

    def refusals(self) -> list[Refusal]:
        """The remote versions refused since the folder was opened, per device and reason."""
        return self._refusals.all()

    # -- scanning --------------------------------------------------------------------------

    async def scan(self, *, confirm_deletions: bool = False) -> scanner.ScanReport:
        """Publish local changes: new, changed and deleted files become records.

        If more than :attr:`max_deleted_share` of the folder vanished, the deletions are not
        published (:class:`~commonsync.errors.MassDeletionError`) unless ``confirm_deletions``.
        A ``.csignore`` that cannot be used does not stop the scan: the last good rules apply,
        and :attr:`ignore_problem` says what is wrong (an ``ERROR`` event too, once).
        """
        async with self._scan_lock:
            rules = await anyio.to_thread.run_sync(self._rules.load)
            if rules.problem != self.ignore_problem and rules.problem:
                log.warning("%s: %s", self.root, rules.problem)
                self._emit(EventKind.ERROR, IGNORE_FILE, rules.problem)
            self.ignore_problem = rules.problem
            await self._take_local_rules(rules.local)
            report = await scanner.scan(
                self.root,
                self.store,
                self._key,
                self.identity,
                ignore=rules.rules,
                skip=set(self._window) | self._set_aside,
                max_deleted_share=None if confirm_deletions else self.max_deleted_share,
                published=self._notify_change,
            )
        self._notify_change()
        await self._count_unshared()
        self._emit(EventKind.SCANNED, detail=str(report))
        if report.racy:
            self._racy_scanned.set()
        if report.temp_files:
            await self._remove_stale_temps(report.temp_files)
        return report

    @property
    def ignores_here(self) -> bool:
        """Whether this device has ignore rules of its own for the folder (as last read)."""
        return self._local_rules is not None and bool(self._local_rules.patterns)

    async def _take_local_rules(self, rules: IgnoreRules) -> None:
        """Use this device's own ignore rules (``.commonsync/ignore-local``) from now on. When
        they changed, the versions refused because a rule of theirs ignored the path are
        pending again: those no rule ignores now are fetched and written (removing a rule
        brings the files back), the others are refused again by the puller."""
        if self._local_rules is not None and rules.patterns == self._local_rules.patterns:
            return
        self._local_rules = rules
        if await self.store.unrefuse(self.folder_id, IGNORED_HERE):
            self._pending_changed.set()

    async def _ignored_here(self, remotes: list[RemoteRecord]) -> list[RemoteRecord]:
        """Those of ``remotes`` whose paths this device's own rules ignore: not written here,
        and left in the index (the index keeps what the peers announced)."""
        if self._local_rules is None:  # the puller runs before the first scan: read them
            loaded = await anyio.to_thread.run_sync(self._rules.load)
            # As a scan takes them: a rule removed while the folder was closed lets go of
            # the versions it held back.
            await self._take_local_rules(loaded.local)
        assert self._local_rules is not None
        rules = self._local_rules
        if not rules.patterns:
            return []
        return [r for r in remotes if rules.ignores(r.record.path, r.record.kind is Kind.DIRECTORY)]

    async def _remove_stale_temps(self, temps: Sequence[tuple[str, int]]) -> None:
        """Remove the temporary files a scan found that belong to no version still to be
        written: left by a crash, or by a version superseded or already in place. One that
        changed in the last :attr:`temp_grace` seconds is left alone (it may be one being
        written right now, for a version that has just arrived)."""
        now = time.time_ns()
        by_target = {
            _temp_target(path): path
            for path, ctime in temps
            if now - ctime >= self.temp_grace * 1e9
        }
        # A path with a version still to be written keeps its temporary files: the puller
        # resumes them, and removes those of versions superseded meanwhile itself. Asked
        # without decoding any record: a pending one may hold 200,000 chunks, and a scan
        # runs often.
        pending = await self.store.not_on_disk(self.folder_id, by_target)
        removed = 0
        for target, path in by_target.items():
            if target in pending:
                continue
            with contextlib.suppress(CommonsyncError):
                removed += await apply.discard_temp(self.root, path)
        if removed:
            log.info("%s: removed %d left-over temporary files", self.root, removed)

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
        """At most ``limit`` records, and not many more than :data:`RECORDS_BYTES` of them."""
        return await self.store.signed_since(self.folder_id, after, limit, max_bytes=RECORDS_BYTES)

    async def wait_for_change(self, after: int) -> None:
        while (await self.index_state())[1] <= after:
            await self._changed.wait()

    async def peer_progress(self, peer: DeviceId) -> tuple[bytes, int] | None:
        progress = await self.store.peer_progress(self.folder_id, peer)
        return None if progress is None else (progress.index_id, progress.sequence)

    async def set_peer_progress(self, peer: DeviceId, index_id: bytes, sequence: int) -> None:
        if peer in self._asking_again:
            return  # its next session asks for its whole index (see _took_set_aside)
        await self.store.set_peer_progress(self.folder_id, peer, PeerProgress(index_id, sequence))

    def attach(self, peer: PeerExchange) -> None:
        self._asking_again.discard(peer.peer)
        self._peers.append(peer)
        self._emit(EventKind.PEER_CONNECTED, peer=peer.peer.short_str)
        # It may hold the chunks that versions wait for: try them all again soon (at most
        # once per RETRY_ALL_INTERVAL, so that reconnecting cannot keep the puller busy).
        if self._retry_all_at is None:
            self._retry_all_at = max(time.monotonic(), self._retried_all_at + RETRY_ALL_INTERVAL)
            self._pending_changed.set()

    def attached_peers(self) -> list[PeerExchange]:
        """The sessions that carry this folder now."""
        return list(self._peers)

    def detach(self, peer: PeerExchange) -> None:
        if peer in self._peers:
            self._peers.remove(peer)
            self.peer_views.pop(peer.peer, None)
            self._emit(EventKind.PEER_DISCONNECTED, peer=peer.peer.short_str)

    async def progress_report(self, peer: DeviceId) -> tuple[bytes, int, int, int, int]:
        """What this device tells ``peer`` of its progress (SPEC.md §13): the index of the
        peer it has taken and how far, its own highest sequence, the files and bytes it has
        left to write."""
        seen = await self.store.peer_progress(self.folder_id, peer)
        _, highest = await self.index_state()
        index_id, sequence = (seen.index_id, seen.sequence) if seen else (bytes(16), 0)
        left = self.progress()
        return index_id, sequence, highest, left.files, left.bytes

    async def peer_reported(
        self, peer: DeviceId, peer_key: bytes, report: tuple[bytes, int, int, int, int]
    ) -> None:
        """Take a peer's progress report ``(index_id, seen, highest, files, bytes)`` (again,
        when our index may have grown since), and work out what of our index it has not
        been told of yet: :attr:`peer_views`. The sums over our index are worked out again
        only when the peer's ``seen`` or our highest sequence moved (each is a walk of part
        or all of the index)."""
        index_id, seen, highest, files, size = report
        ours, our_highest = await self.index_state()
        seen = seen if index_id == ours else 0
        taken = await self.store.peer_progress(self.folder_id, peer)
        before = self.peer_views.get(peer)
        if before is not None and (before.seen, before.our_highest) == (seen, our_highest):
            untold_files, untold_bytes, total = (
                before.untold_files, before.untold_bytes, before.total_bytes
            )  # fmt: skip
        else:
            untold_files, untold_bytes, total = await self.store.files_after(
                self.folder_id, seen, peer_key
            )
        same_report = before is not None and (
            before.need_files,
            before.need_bytes,
            before.seen,
            before.highest,
        ) == (files, size, seen, highest)
        self.peer_views[peer] = PeerView(
            need_files=files,
            need_bytes=size,
            seen=seen,
            highest=highest,
            untold_files=untold_files,
            untold_bytes=untold_bytes,
            total_bytes=total,
            our_highest=our_highest,
            we_seen=taken.sequence if taken is not None else 0,
            reported_at=before.reported_at if same_report and before else time.time(),
        )

    async def receive_records(self, source: PeerExchange, records: Sequence[RemoteRecord]) -> None:
        """Rule on each remote record; those we take are stored (not yet on disk), where the
        puller finds them. Records this device must refuse outright (:func:`refusal`) are
        counted and reported once per peer, and never stored, so never retried: the peer's
        progress moves past them."""
        peer = source.peer.short_str
        now = int(time.time())
        me = self.identity.device_id.short
        accepted = []
        for remote in records:
            record = remote.record
            reason = refusal(record, me=me, now_seconds=now)
            if reason is None and not self.members.may_author(record.author, record.sequence):
                author = DeviceId.from_public_key(record.author).short_str
                reason = (
                    f"its author {author} is not a writer of this folder (a reader, or not a "
                    "member), or was not any more when it made this version"
                )
                if record.author in self.refused_authors or len(self.refused_authors) < 64:
                    self.refused_authors[record.author] = (
                        self.refused_authors.get(record.author, 0) + 1
                    )
            if reason is None:
                accepted.append(remote)
            else:
                self._refused(peer, reason, remote.record.path)
        if not accepted:
            return
        # Deciding needs the stored versions, decoded: a bounded amount of them at a time.
        sizes = await self.store.signed_sizes(self.folder_id, (r.record.path for r in accepted))
        group: list[RemoteRecord] = []
        size = 0
        for remote in accepted:
            stored = sizes.get(remote.record.path, 0)
            if group and size + stored > DECODE_BYTES:
                await self._take(peer, group)
                group, size = [], 0
            group.append(remote)
            size += stored
        await self._take(peer, group)

    async def _take(self, peer: str, remotes: Sequence[RemoteRecord]) -> None:
        """Decide on ``remotes`` against the stored versions and store those we take, in one
        transaction that is refused if the index moved since it was read (then decide again:
        a local change scanned meanwhile must not be overwritten unseen).

        Two concurrent versions resolved (rules 3-6) are recorded, on a device that may
        write, as a merged version of its own that dominates both (:func:`merged`), and a
        remote edit that lost a conflict is kept as a conflict copy here too (SPEC.md §13,
        "Decisions")."""
        me = self.identity.public_key
        writer = self.members.may_author(me, 2**63 - 1)
        paths = list(dict.fromkeys(r.record.path for r in remotes))
        while True:
            stored = await self.store.get_many(self.folder_id, paths)
            # Path → what we now hold: its record and signed bytes, whether its file is the
            # one on disk, the conflict copy to make of our file, why, and whether the disk
            # is to change (a remote version to write).
            taken: dict[str, _Taken] = {}
            again: list[str] = []
            conflicts: list[tuple[str, str]] = []
            remote_copies: dict[str, Record] = {}
            for remote in remotes:
                path = remote.record.path
                entry = stored.get(path)
                held = taken.get(path)
                local = held.record if held is not None else (entry.record if entry else None)
                decision = decide(local, remote.record, me=me, writer=writer)
                if decision.conflict:
                    conflicts.append((path, decision.reason))
                if decision.remote_copy is not None:
                    remote_copies.setdefault(decision.remote_copy, remote.record)
                if decision.action is Action.KEEP:
                    if decision.resolved and local is not None:
                        outcome = await self._merged(local, remote.record, local)
                        on_disk = held.on_disk if held else entry is not None and entry.on_disk
                        copy = held.copy if held else None
                        fetch = held.fetch if held else False
                        taken[path] = _Taken(*outcome, on_disk, copy, decision.reason, fetch)
                    elif entry is not None and not entry.on_disk and entry.record == remote.record:
                        again.append(path)  # announced again: its chunks may be there now
                    continue
                record, signed = remote.record, remote.signed
                if decision.resolved and local is not None:
                    record, signed = await self._merged(local, remote.record, remote.record)
                # A second version of the path in the batch keeps the copy the first decided.
                copy = decision.conflict_copy or (held.copy if held else None)
                on_disk = held.on_disk if held else entry is not None and entry.on_disk
                if on_disk and local is not None and _same_file(local, record):
                    # Another outcome of the same versions: our file is that one already.
                    taken[path] = _Taken(record, signed, True, None, decision.reason, False)
                    continue
                taken[path] = _Taken(record, signed, False, copy, decision.reason, True)
            copies = await self._remote_copies(remote_copies, taken)
            if not taken and not copies:
                break
            expected = {p: stored[p].local_sequence if p in stored else 0 for p in taken}
            expected.update({p: sequence for p, (_, sequence) in copies.items()})
            kept = [p for p, t in taken.items() if t.on_disk]
            local_files = await self.store.local_files_of(self.folder_id, kept)
            entries = [IndexEntry(t.record, t.signed, on_disk=t.on_disk) for t in taken.values()]
            entries += [entry for entry, _ in copies.values()]
            try:
                sequences = await self.store.put(
                    self.folder_id,
                    entries,
                    local_files=[(p, local_files.get(p)) for p in kept],
                    expected=expected,
                )
            except IndexChangedError:
                continue
            made = [
                (path, sequence, t.copy)
                for (path, t), sequence in zip(taken.items(), sequences, strict=False)
                if t.copy is not None
            ]
            if made:
                await self.store.set_conflict_copies(self.folder_id, made)
            written = [(p, t.record) for p, t in taken.items() if t.fetch]
            written += [(entry.record.path, entry.record) for entry, _ in copies.values()]
            for path, record in written:
                entry = stored.get(path)
                replaced = entry is not None and not entry.on_disk
                if entry is not None and replaced and _may_leave_temp(entry.record, record):
                    self._superseded.append(apply.temp_path(entry.record))
                self._left = Progress(
                    self._left.files + (0 if replaced else 1),
                    max(0, self._left.bytes + _bytes(record)
                        - (_bytes(entry.record) if entry is not None and replaced else 0)),
                )  # fmt: skip
                reason = taken[path].reason if path in taken else "a conflict copy"
                self._emit(EventKind.REMOTE_CHANGE, path, reason, peer)
            self.stats.conflicts += len(conflicts)
            for path, reason in conflicts:
                self._emit(EventKind.CONFLICT, path, reason)
            self._notify_change()
            self._pending_changed.set()
            break
        if again:
            await self.store.retry_now(self.folder_id, again)
            self._pending_changed.set()

    async def _merged(self, local: Record, remote: Record, winner: Record) -> tuple[Record, bytes]:
        """The outcome of two concurrent versions resolved, made and signed by this device."""
        (sequence,) = await self.store.next_own_sequences(self.folder_id, 1)
        record = merged(local, remote, winner, author=self.identity.public_key, sequence=sequence)
        return record, sign_record(self.identity, self.folder_id, record)

    async def _remote_copies(
        self, losers: dict[str, Record], taken: dict[str, _Taken]
    ) -> dict[str, tuple[IndexEntry, int]]:
        """New versions, by this device, of the conflict copies of remote edits that lost a
        conflict here (path → the entry, and the local sequence its path must still have):
        not written yet, so that the puller fetches their content. None where the copy is
        there already, or was deleted (knowingly: the deletion replaced that content)."""
        wanted = {p: r for p, r in losers.items() if p not in taken}
        if not wanted:
            return {}
        stored = await self.store.get_many(self.folder_id, wanted)
        me = self.identity.public_key
        now = int(time.time())
        copies: dict[str, tuple[IndexEntry, int]] = {}
        for path, loser in wanted.items():
            entry = stored.get(path)
            base = entry.record if entry is not None else None
            if base is not None and (not base.deleted or base.previous == loser.content_digest()):
                continue
            try:
                version = (base.version if base else VersionVector()).bump(
                    self.identity.device_id.short, now
                )
                (sequence,) = await self.store.next_own_sequences(self.folder_id, 1)
                record = dataclasses.replace(
                    loser,
                    path=path,
                    version=version,
                    author=me,
                    sequence=sequence,
                    previous=b"",
                )
            except (RecordError, VersionVectorError) as exc:
                log.warning("%s: no conflict copy %r: %s", self.root, path, exc)
                continue
            signed = sign_record(self.identity, self.folder_id, record)
            copies[path] = (
                IndexEntry(record, signed, on_disk=False),
                entry.local_sequence if entry is not None else 0,
            )
        return copies

    def _refused(self, device: str, reason: str, path: str) -> None:
        """Count a refused version; say so when it is the first of its kind from ``device``,
        and then at most once a minute while more come (never once per record)."""
        report = self._refusals.add(device, reason)
        if report is not None:
            text = f"{report} (for example {path!r})"
            log.warning("%s", text)
            self._emit(EventKind.ERROR, path, text, device)

    async def _count_unshared(self) -> None:
        """Count this device's versions no member takes from it (it is a reader, or was
        removed): kept here, published to nobody (:attr:`unshared_changes`)."""
        me = self.identity.public_key
        state = self.members.state
        if state is None or self.members.may_author(me, 2**63 - 1):
            self.unshared_changes = 0
            return
        credited = state.credited.get(me, 0)
        self.unshared_changes = await self.store.count_authored(self.folder_id, me, credited)

    async def take_log_entries(self, entries: Sequence[Entry]) -> list[tuple[Entry, str]]:
        """Add membership entries from a peer (those refused are returned, with why), then
        take any new epoch's key they seal to this device."""
        added, refused = await self.members.take(entries)
        await self._open_epochs()
        if added:
            await self._role_changed()
        await self._took_set_aside()
        return refused

    async def append_log_entry(self, action: Action_, time_: int) -> Entry:
        """Write a membership entry by this device (:meth:`FolderMembers.append`)."""
        entry = await self.members.append(action, time_)
        await self._open_epochs()
        await self._role_changed()
        await self._took_set_aside()
        return entry

    async def _took_set_aside(self) -> None:
        """After the log changed: versions taken before this device heard of their
        author's removal or demotion, beyond what the log credits it with, were set aside
        with the entries (SPEC.md §15.5): every other member refuses them. The puller moves
        their files to the versions folder, and the sessions start again, asking every peer
        for its whole index (their progress was forgotten), so that a version of those paths
        that the log takes comes back."""
        taken, self.members.set_aside = self.members.set_aside, SetAside([], [])
        paths = taken.moved + taken.published_again
        if not paths:
            return
        self._set_aside.update(taken.moved)
        log.warning(
            "%s: set aside %d %s taken before the membership log refused %s author (for "
            "example %r); asking the peers for their indexes again",
            self.root, len(paths), "version" if len(paths) == 1 else "versions",
            "its" if len(paths) == 1 else "their", paths[0],
        )  # fmt: skip
        for path in taken.published_again:
            # Its file holds this device's own last edit there: published again as such.
            self._emit(EventKind.SET_ASIDE, path, "this device's own edit: published again")
        self._scan_set_aside |= bool(taken.published_again)  # by the puller, next
        self._pending_changed.set()
        self._notify_change()
        sessions = list(self._peers)
        self._asking_again.update(peer.peer for peer in sessions)
        for peer in sessions:
            await peer.close(CloseReason.NORMAL, "asking for the index again")

    async def _finish_setting_aside(self) -> None:
        """Move the files of the versions set aside to the versions folder (a restart
        finishes it before any scan); one that cannot be moved now is tried again at the
        puller's next window, and the scan leaves it alone meanwhile. Then the files left
        in place (this device's own edits) are published again, by a scan."""
        if self._scan_set_aside:
            self._scan_set_aside = False
            try:
                await self.scan()
            except CommonsyncError as exc:  # the folder's own scans say it again
                log.warning("%s: cannot publish the edits set aside yet: %s", self.root, exc)
        if not self._set_aside:
            return
        moved = []
        for path in sorted(self._set_aside):
            try:
                kept = await apply.set_aside(self.root, path)
            except (CommonsyncError, OSError) as exc:
                log.warning("%s: cannot set %r aside yet: %s", self.root, path, exc)
                continue
            moved.append(path)
            detail = f"kept as {layout.VERSIONS_DIR}/{kept}" if kept else "nothing was there"
            self._emit(EventKind.SET_ASIDE, path, detail)
        await self.store.done_setting_aside(self.folder_id, moved)
        self._set_aside.difference_update(moved)

    async def _role_changed(self) -> None:
        """After the log changed: the changes no member takes from this device, counted
        again; those it may share now were given new local sequences with the entries
        (:func:`~commonsync.sync.members.newly_allowed`), and go to the peers as any new
        change."""
        await self._count_unshared()
        self._notify_change()

    async def _open_epochs(self) -> None:
        """Take the key of each epoch that took effect and is sealed to this device, unless
        it holds that very key (SPEC.md §15.7)."""
        log_ = self.members.log
        if log_ is None:
            return
        me = self.identity.public_key
        effective = log_.epochs()
        for held in self._keyring.oldest_first():
            if held.epoch and effective.get(held.epoch) != secret_hash(held.secret):
                log.warning(
                    "%s: key epoch %d was voided by a merge of the membership log; "
                    "not sealing with it",
                    self.root,
                    held.epoch,
                )
                self._keyring.discard(held.epoch)
        for entry in log_.entries():
            action = entry.action
            if (
                not isinstance(action, NewEpoch)
                or effective.get(action.epoch) != action.secret_hash
            ):
                continue
            if self._holds_epoch(action.epoch, action.secret_hash):
                continue
            sealed = dict(action.wrapped).get(me)
            if sealed is None:
                continue  # not sealed to this device: a member hands it over (EpochKeys)
            try:
                key = open_secret(
                    self.identity, self.folder_id, action.epoch, action.secret_hash, sealed
                )
            except MembershipError as exc:
                self.log_refused("", entry, str(exc))
                continue
            await self.add_epoch_key(key)

    def _holds_epoch(self, epoch: int, digest: bytes) -> bool:
        return (
            self._keyring.holds(epoch) and secret_hash(self._keyring.epoch(epoch).secret) == digest
        )

    async def add_epoch_key(self, key: FolderKey) -> bool:
        """Hold the key of a later epoch, if the log names it (its secret's hash is in a
        new-epoch entry that took effect); kept in the node's home first. It replaces a key
        of the same number that a merge voided (this device wrote that epoch while apart
        from a removal: its secret may be a removed device's). False if it is not taken."""
        if key.folder_id != self.folder_id or not self.members.names_epoch(key.epoch, key.secret):
            return False
        async with self._key_lock:
            if self._holds_epoch(key.epoch, secret_hash(key.secret)):
                return True
            if self._save_key is not None:
                await anyio.to_thread.run_sync(self._save_key, key)
            self._keyring.add(key)
        log.info("%s: now at key epoch %d", self.root, self._keyring.current.epoch)
        return True

    def log_refused(self, device: str, entry: Entry | None, reason: str) -> None:
        """Count a refused membership entry; say so as for versions (:meth:`_refused`)."""
        if entry is not None:
            author = DeviceId.from_public_key(entry.author).short_str
            reason = f"{reason} (an entry by {author})"
        report = self._log_refusals.add(device, reason)
        if report is not None:
            log.warning("%s", report)
            self._emit(EventKind.ERROR, "", str(report), device)

    @property
    def log_refusals(self) -> list[Refusal]:
        return self._log_refusals.all()

    async def read_local_chunks(
        self, chunks: Sequence[ChunkEntry], *, verify: bool = True
    ) -> list[bytes | None]:
        return await self.store.read_with_sources(
            self.folder_id, [c.id for c in chunks], partial(self._read_each, chunks, verify)
        )

    def _read_each(
        self, chunks: Sequence[ChunkEntry], verify: bool, sources: list[list[ChunkLocation]]
    ) -> list[bytes | None]:
        try:
            chain = DirectoryChain.at(self.root)
        except OSError:
            return [None] * len(chunks)
        with chain:
            return [
                self._read_first(chain, chunk, verify, places)
                for chunk, places in zip(chunks, sources, strict=True)
            ]

    def _read_first(
        self,
        chain: DirectoryChain,
        chunk: ChunkEntry,
        verify: bool,
        locations: Sequence[ChunkLocation],
    ) -> bytes | None:
        """The chunk's bytes from the first location that still holds them (in a thread).

        Each file is reached below the root without following a symlink at any component,
        so a directory swapped for a link to somewhere else is never read through. What is
        read must be what was hashed: the open file's ``fstat`` must equal the local state
        stored when it was hashed (one ``fstat``, where hashing the chunk would halve how
        fast chunks are served); a file with no stored state (modified just before its scan)
        is checked against the chunk ID instead, as every chunk is when ``verify``."""
        for location in locations:
            data = _read_at(chain, location, chunk.size)
            if data is None:
                continue
            if (verify or location.local is None) and chunk_id(
                self._key.chunk_id_key, data
            ) != chunk.id:
                continue
            return data
        return None

    # -- syncing -------------------------------------------------------------------------------

    async def sync(self, session: Session) -> None:
        """Sync with the peer at the other end of ``session`` until it closes."""
        exchange = PeerExchange(session, [self], device_name=self.device_name)
        await exchange.run()

    async def _resume_pending(self) -> None:
        """Make the remote versions this folder took before it last stopped, and did not
        write, due now (the peers that sent them will not send them again), and count what
        is left. They wait in the store; nothing of them is loaded here."""
        await self.store.forget_stale_pull_state(self.folder_id)
        await self.store.retry_now(self.folder_id)
        summary = await self.store.pending_summary(self.folder_id)
        self._left = Progress(summary.files, summary.bytes)
        if summary.files:
            self._pending_changed.set()

    async def run_puller(self) -> None:
        """Apply the remote versions we decided to take, forever (run it in a task).

        Each round pages through the pending versions in the store that are due; a version
        whose chunks no connected peer has is tried again later, after a wait that doubles
        with each failure (:data:`~commonsync.sync.store.RETRY_MAX` at most), or as soon as a peer
        announces it again; when a peer connects, every waiting version is tried again (at
        most once per :data:`RETRY_ALL_INTERVAL`). So a version nobody serves costs a few
        tries an hour, whatever the size of its chunk list."""
        while True:
            self._pending_changed = anyio.Event()
            if self._retry_all_at is not None and time.monotonic() >= self._retry_all_at:
                self._retry_all_at, self._retried_all_at = None, time.monotonic()
                await self.store.retry_now(self.folder_id)
            progressed = await self._pull_round()
            summary = await self.store.pending_summary(self.folder_id)
            self._left = Progress(summary.files, summary.bytes)
            if progressed:
                # What the puller kept about the versions it wrote is of no use any more.
                await self.store.forget_stale_pull_state(self.folder_id)
                continue
            if not summary.files:
                self._emit(EventKind.IDLE)
            waits = [PULL_IDLE_WAIT]
            if summary.next_try is not None:
                waits.append(summary.next_try - time.time())
            if self._retry_all_at is not None:
                waits.append(self._retry_all_at - time.monotonic())
            with anyio.move_on_after(max(min(waits), PULL_MIN_WAIT)):
                await self._pending_changed.wait()

    async def _pull_round(self) -> bool:
        """One pass over the pending versions that are due; True if anything was applied.

        Directories and links are made first (parents before children), then files, then
        deletions (children before parents, after every new file has read the chunks it
        needed from the old ones): :class:`~commonsync.sync.store.PullPhase`. Each phase is read
        from the store a page at a time and decoded a window at a time
        (:data:`WINDOW_BYTES` of records at most, or one larger record), so that memory
        stays bounded however many versions wait and however large their chunk lists.

        In each phase the versions never tried come first, then those tried before (their
        chunks were missing: a retry). A retry may cost seconds (a record of 200,000 chunks
        nobody serves, decoded again), so once other versions are due the round ends
        between two windows of retries, and the next one starts with those: no version
        waits behind retries of versions that may never come.
        """
        batch = _AppliedBatch()
        due = time.time()
        await self._discard_superseded()
        await self._finish_setting_aside()
        for phase in PullPhase:
            for tried in (False, True):
                after: str | None = None
                while True:
                    page = await self.store.pending(
                        self.folder_id, phase, after=after, due=due, tried=tried, limit=PULL_PAGE
                    )
                    for window in _windows(page):
                        if tried and self._pending_changed.is_set():
                            return batch.progress
                        await self._pull_window(phase, window, batch)
                    if len(page) < PULL_PAGE:
                        break
                    after = page[-1].path
        return batch.progress

    async def _pull_window(
        self, phase: PullPhase, versions: list[PendingVersion], batch: _AppliedBatch
    ) -> None:
        """Apply one window of pending versions: files of a chunk or two, up to
        :data:`APPLY_CONCURRENCY` at once (their round trips and fsyncs overlap), larger ones
        one at a time (each fetches a window of chunks at once). Then record what was
        applied (one transaction, and one fsync of the index, per batch instead of per
        file), and when to try again what was not."""
        await self._discard_superseded()
        await self._finish_setting_aside()
        entries = await self.store.get_many(self.folder_id, [v.path for v in versions])
        self._window = {v.path: v for v in versions}
        self._conflict_copies = {v.path: v.conflict_copy for v in versions if v.conflict_copy}
        try:
            remotes = [
                RemoteRecord(entry.record, entry.signed)
                for v in versions
                if (entry := entries.get(v.path)) is not None
                and not entry.on_disk
                and entry.local_sequence == v.local_sequence  # else: changed since paged
                and v.path not in self._set_aside  # its file is to be moved first
            ]
            del entries
            if ignored := await self._ignored_here(remotes):
                batch.refused += [(r, IGNORED_HERE, False) for r in ignored]
                skipped = {id(r) for r in ignored}
                remotes = [r for r in remotes if id(r) not in skipped]
            if phase is PullPhase.FILES:
                small = [r for r in remotes if r.record.size <= SMALL_FILE]
                await self._with_sources(small, partial(self._apply_small, small, batch))
                for remote in remotes:
                    if remote.record.size > SMALL_FILE:
                        await self._with_sources([remote], partial(self._apply_one, remote, batch))
            else:
                for remote in remotes:
                    await self._apply_one(remote, batch)
            await self._record(batch)
            await self._settle(batch)
        finally:
            self._window, self._conflict_copies = {}, {}

    async def _discard_superseded(self) -> None:
        """Remove the temporary files that attempts at superseded versions left: no attempt
        will finish them, and the scan would only clear them after :data:`TEMP_GRACE`."""
        superseded, self._superseded = self._superseded, []
        for temp in superseded:
            if not os.path.lexists(self.root / temp):  # the usual case: no attempt was made
                continue
            with contextlib.suppress(CommonsyncError, OSError):
                await apply.discard_temp(self.root, temp)

    async def _with_sources(
        self, remotes: list[RemoteRecord], work: Callable[[], Awaitable[None]]
    ) -> None:
        """Do ``work`` knowing which chunks of ``remotes`` some local file holds, asked once
        rather than once per chunk (not for a chunk list too long to look up at once: its
        chunks are looked up as they are fetched)."""
        if sum(len(r.record.chunks) for r in remotes) <= SOURCES_AT_ONCE:
            wanted = [c.id for r in remotes for c in r.record.chunks]
            self._local_sources = await self.store.chunk_sources_many(self.folder_id, wanted)
        try:
            await work()
        finally:
            self._local_sources = None

    async def _settle(self, batch: _AppliedBatch) -> None:
        """After a window: versions refused for good leave the pending versions; every other
        one of the window still pending (waiting for chunks, or failed for now) is tried
        again later, each a little later than the time before."""
        refused, batch.refused = batch.refused, []
        if refused:
            await self.store.refuse(
                self.folder_id,
                [(r.record.path, self._window[r.record.path].local_sequence, reason)
                 for r, reason, _report in refused if r.record.path in self._window],
            )  # fmt: skip
            for remote, reason, report in refused:
                self._left = Progress(
                    max(0, self._left.files - 1), max(0, self._left.bytes - _bytes(remote.record))
                )
                if report:
                    author = DeviceId.from_public_key(remote.record.author).short_str
                    self._refused(author, reason, remote.record.path)
        refused_paths = {r.record.path for r, _, _ in refused}
        waiting = [
            (v.path, v.local_sequence) for v in self._window.values() if v.path not in refused_paths
        ]
        # The store leaves out those written meanwhile (on disk now) or superseded.
        await self.store.retry_later(self.folder_id, waiting, now=time.time())

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
        if not group:
            return
        try:  # before fetching anything: a disk without room would only throw it away
            await self._ensure_room(sum(r.record.size for r in group), group[0].record.path)
        except InsufficientSpaceError as exc:
            self._wait_for_space(exc, [r.record.path for r in group])
            return
        chunks = {c.id: c for r in group for c in r.record.chunks}
        found = await self._fetch_chunks(list(chunks.values()))
        ready = [r for r in group if all(c.id in found for c in r.record.chunks)]
        # The others wait for their chunks: tried again later (see :meth:`_settle`).
        for remote in ready:
            self._conflict_copies.pop(remote.record.path, None)  # None: that is why it is here
        files = [
            (r.record, b"".join(found[c.id] for c in r.record.chunks), expected.get(r.record.path))
            for r in ready
        ]
        # Every chunk was checked against its ID as it was read or received.
        results = await apply.apply_small_files(
            self.root,
            files,
            chunk_id_key=self._key.chunk_id_key,
            checked=True,
            reserve=self.disk_reserve,
        )
        for remote, result in zip(ready, results, strict=True):
            if isinstance(result, LocalChangedError):
                await self._apply_one(remote, batch)  # the careful way: it keeps their change
            elif isinstance(result, InsufficientSpaceError):
                self._wait_for_space(result, [remote.record.path])
            elif isinstance(result, CommonsyncError):
                self._failed(remote, result, batch)
            else:
                await self._applied(remote, result, batch)

    async def _apply_one(self, remote: RemoteRecord, batch: _AppliedBatch) -> None:
        try:
            applied = await self._apply(remote)
        except InsufficientSpaceError as exc:
            # Pending still: tried again, at once when space returns.
            self._in_flight.done(remote.record.path)
            self._wait_for_space(exc, [remote.record.path])
            return
        except CommonsyncError as exc:
            self._in_flight.done(remote.record.path)
            self._failed(remote, exc, batch)
            return
        except BaseException:
            self._in_flight.done(remote.record.path)
            raise
        if applied is _WAIT or applied is _DONE:
            self._in_flight.done(remote.record.path)  # else: counted until it is recorded
        if applied is _DONE:
            batch.refused.append((remote, DONE_REASON, False))
        elif applied is not _WAIT:
            await self._applied(remote, applied, batch)

    def _failed(self, remote: RemoteRecord, error: CommonsyncError, batch: _AppliedBatch) -> None:
        """A version that cannot be applied: refused for good if it never can be here (then
        reported once per author and reason), else tried again later (reported on its first
        failure only)."""
        path = remote.record.path
        reason = _permanent_reason(error)
        if reason is not None:
            batch.refused.append((remote, reason, True))
            return
        version = self._window.get(path)
        if version is None or version.attempts == 0:
            self._emit(EventKind.ERROR, path, str(error))
            log.warning("cannot apply %r: %s (trying again later)", path, error)

    async def _applied(
        self, remote: RemoteRecord, state: LocalFile | _Marker | None, batch: _AppliedBatch
    ) -> None:
        batch.progress = True
        self._last_applied = time.monotonic()
        batch.items.append((remote, state))
        if len(batch.items) >= APPLY_BATCH:
            await self._record(batch)

    async def _record(self, batch: _AppliedBatch) -> None:
        """Store a batch of applied versions as on disk, then announce them. A path that got
        a newer version while this one was written keeps the newer one (still to write);
        what was written becomes the local state the newer one replaces."""
        items, batch.items = batch.items, []
        written = list(items)
        while written:
            try:
                await self.store.put(
                    self.folder_id,
                    [IndexEntry(remote.record, remote.signed, on_disk=True)
                     for remote, _ in written],
                    local_files=[(r.record.path, _state(state)) for r, state in written],
                    expected={
                        r.record.path: self._window[r.record.path].local_sequence
                        for r, _ in written if r.record.path in self._window
                    },
                )  # fmt: skip
                break
            except IndexChangedError as exc:
                moved = set(exc.paths)
                await self.store.set_local_files(
                    self.folder_id,
                    [(r.record.path, _state(state)) for r, state in written
                     if r.record.path in moved],
                )  # fmt: skip
                written = [(r, state) for r, state in written if r.record.path not in moved]
        if written:
            self._notify_change()
            self._left = Progress(
                max(0, self._left.files - len(written)),
                max(0, self._left.bytes - sum(_bytes(r.record) for r, _ in written)),
            )
        for remote, _ in items:
            self._in_flight.done(remote.record.path)
        if self._space_waiters:
            self._space_waiters.difference_update(r.record.path for r, _ in items)
            if not self._space_waiters:
                # Written by an ordinary retry before the space watcher looked: no version
                # waits for space any more, whatever the disk has left.
                self.waiting_for_space = ""
        for remote, _ in items:
            self.stats.files_applied += 1
            self._emit(
                EventKind.DELETED if remote.record.deleted else EventKind.APPLIED,
                remote.record.path,
                size=_bytes(remote.record),
            )
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
        if copy is not None and (version := self._window.get(record.path)) is not None:
            # Decided once: not again if this version has to wait for its chunks.
            await self.store.set_conflict_copies(
                self.folder_id, [(record.path, version.local_sequence, None)]
            )
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
                # Already this version (written before a stop, not recorded): a temporary
                # file of it left by an attempt since is of no use any more.
                with contextlib.suppress(CommonsyncError):
                    await apply.discard_partial(self.root, record)
                return now
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
        # Before fetching: a record may list one chunk thousands of times (a file far larger
        # than what crosses the wire); apply_file checks again before every write.
        await self._ensure_room(record.size, record.path)
        path, size = record.path, record.size

        async def read_chunk(chunk: ChunkEntry) -> bytes:
            data = await self._fetch_chunk(chunk)
            self._in_flight.add(path, len(data), size)
            return data

        state = await apply.apply_file(
            self.root,
            record,
            expected=expected,
            read_chunk=read_chunk,
            held=lambda chunk: self._in_flight.add(path, chunk, size),  # an earlier attempt's
            chunk_id_key=self._key.chunk_id_key,
            reader_checks=True,  # each chunk it returns matched its ID
            reserve=self.disk_reserve,
        )
        self._space_poll = SPACE_POLL
        return state

    # -- disk space ----------------------------------------------------------------------------

    async def _ensure_room(self, size: int, path: str) -> None:
        """Raise :class:`InsufficientSpaceError` if the folder's disk, keeping its reserve,
        has no room for ``size`` more bytes (measured at most once a second: this is to
        avoid fetching in vain; the writes themselves check precisely)."""
        if size <= 0:
            return
        now = time.monotonic()
        if self._room is None or now - self._room[0] > ROOM_FRESH:
            room = await anyio.to_thread.run_sync(self.disk_reserve.room_at, self.root)
            self._room = (now, room)
        self.disk_reserve.check_room(self._room[1], size, path)

    def _wait_for_space(self, error: InsufficientSpaceError, paths: Sequence[str]) -> None:
        """Versions of ``paths`` wait for disk space: say so once, and have
        :meth:`_watch_space` make the waiting versions due again as soon as there is room."""
        self._space_waiters.update(paths)
        self._room = None
        needed = max(error.needed, SPACE_SLACK)
        first = not self.waiting_for_space
        self._space_needed = needed if first else min(self._space_needed, needed)
        self.waiting_for_space = str(error)
        if first:
            log.warning("%s: waiting for disk space: %s", self.root, error)
            self._emit(EventKind.WAITING, detail=f"waiting for disk space: {error}")
            self._space_wanted.set()

    async def _watch_space(self) -> None:
        """While versions wait for disk space, look every :data:`SPACE_POLL` seconds; once
        the least of them fits (or none waits any more), make every waiting version due now
        (run it in a task). If the disk turns out full again at once (a quota, which the file
        system's figures do not show), the next look comes later, up to a minute."""
        while True:
            await self._space_wanted.wait()
            await anyio.sleep(self._space_poll)
            try:
                room = await anyio.to_thread.run_sync(self.disk_reserve.room_at, self.root)
            except OSError:
                continue  # the root is away: the folder reports that itself
            if room < self._space_needed and self.busy:
                continue
            self._space_wanted = anyio.Event()
            self.waiting_for_space, self._room = "", None
            self._space_waiters.clear()
            self._space_poll = min(self._space_poll * 2, SPACE_POLL_MAX)
            if self.busy:
                log.info("%s: disk space is back; writing what waited for it", self.root)
                await self.store.retry_now(self.folder_id)
                self._pending_changed.set()

    # -- fetching chunks -----------------------------------------------------------------------

    async def _fetch_chunk(self, chunk: ChunkEntry) -> bytes:
        known = self._local_sources
        if known is None or chunk.id in known:
            data = (await self.read_local_chunks([chunk]))[0]
        else:
            data = None  # looked up for the whole round: no local file has it
        if data is not None:
            self.stats.chunk_bytes_local += len(data)
            self.meter.add(len(data))
            return data

        async def ask(peer: PeerExchange, wanted: list[ChunkEntry]) -> list[bytes | None]:
            return [await peer.request_chunk(self.folder_id, wanted[0])]

        # Start at a different peer for each chunk, so that the chunks of one file, fetched
        # several at a time, come from every connected peer that has them.
        found = await self._from_peers([chunk], ask, chunk.id[0])
        if chunk.id not in found:
            raise MissingChunkError("no connected peer has this chunk yet")
        return found[chunk.id]

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
                self.meter.add(len(data))
        missing = [c for c in chunks if c.id not in found]
        if missing:

            async def ask(peer: PeerExchange, wanted: list[ChunkEntry]) -> list[bytes | None]:
                return await peer.request_chunks(self.folder_id, wanted)

            found.update(await self._from_peers(missing, ask, missing[0].id[0]))
        return found

    async def _from_peers(
        self, chunks: list[ChunkEntry], ask: Ask, start: int
    ) -> dict[bytes, bytes]:
        """``chunks`` from the connected peers, each checked against its ID
        (:func:`~commonsync.sync.peer_chunks.from_peers`)."""
        return await from_peers(
            self._peers,
            chunks,
            ask,
            start,
            chunk_id_key=self._key.chunk_id_key,
            received=self._received,
            tampered=self._tampered,
        )

    def _received(self, data: bytes) -> None:
        self.stats.chunk_bytes_received += len(data)
        self.meter.add(len(data))

    def _tampered(self, peer: PeerExchange) -> None:
        log.warning("%s sent a chunk that does not match its ID", peer.peer.short_str)
        self._emit(EventKind.ERROR, detail="a peer sent a chunk that does not match its ID",
                   peer=peer.peer.short_str)  # fmt: skip


#: Seconds a measure of free disk space is used for, and between looks while versions wait
#: for space; the least room that ends a wait for space (for a full disk with no figure).
ROOM_FRESH = 1.0
SPACE_POLL = 2.0
SPACE_POLL_MAX = 60.0
SPACE_SLACK = 1024 * 1024
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
#: Pending versions read from the store per page, and decoded at once: at most
#: WINDOW_VERSIONS of them and WINDOW_BYTES of signed records (or one larger record alone).
PULL_PAGE = 1000
WINDOW_VERSIONS = 1000
WINDOW_BYTES = 4 * 1024 * 1024
#: Signed records read at once to push to a peer (one larger record alone).
RECORDS_BYTES = 8 * 1024 * 1024
#: Stored records decoded at once to decide on a batch of remote ones.
DECODE_BYTES = 4 * 1024 * 1024
#: Chunk sources looked up at once before applying files (more: one lookup per chunk).
SOURCES_AT_ONCE = 50_000
#: After a peer connects, every waiting version is tried again, at most this often (s).
RETRY_ALL_INTERVAL = 60.0
#: Remote versions are "being written" for this long after one was written (s).
WRITING_QUIET = 1.0
#: The puller looks at the store at least this often when idle, and waits at least this
#: long between two rounds that applied nothing (s).
PULL_IDLE_WAIT = 600.0
PULL_MIN_WAIT = 0.05
#: Why a version is set aside when applying it left nothing to record (a directory to
#: delete that holds entries the index does not know yet; they will be scanned and synced).
DONE_REASON = "set aside: the local entries it would remove are not in the index yet"


class _Marker(enum.Enum):
    WAIT = "wait"  # its chunks are not available yet
    DONE = "done"  # handled, nothing to record


_WAIT, _DONE = _Marker.WAIT, _Marker.DONE


@dataclass
class _AppliedBatch:
    items: list[tuple[RemoteRecord, LocalFile | _Marker | None]] = field(default_factory=list)
    progress: bool = False
    #: Versions that can never be applied here, why, and whether to report them.
    refused: list[tuple[RemoteRecord, str, bool]] = field(default_factory=list)


def _windows(versions: list[PendingVersion]) -> Iterator[list[PendingVersion]]:
    """``versions`` in windows of at most :data:`WINDOW_VERSIONS` and :data:`WINDOW_BYTES`
    of signed records (a larger record in a window of its own)."""
    window: list[PendingVersion] = []
    size = 0
    for version in versions:
        if window and (len(window) == WINDOW_VERSIONS or size + version.signed_size > WINDOW_BYTES):
            yield window
            window, size = [], 0
        window.append(version)
        size += version.signed_size
    if window:
        yield window


def _same_file(a: Record, b: Record) -> bool:
    """Whether the file of version ``a`` is the file of version ``b``: same content, mode and
    mtime (the same winner, recorded by two devices)."""
    return (a.content_digest(), a.mode, a.mtime_ns) == (b.content_digest(), b.mode, b.mtime_ns)


def _may_leave_temp(old: Record, new: Record) -> bool:
    """Whether replacing pending ``old`` by ``new`` can strand a temporary file of ``old``
    (one of the same content has the same name, and ``new``'s attempt goes on with it)."""
    return (
        old.kind is Kind.FILE and not old.deleted and old.content_digest() != new.content_digest()
    )


def _bytes(record: Record) -> int:
    """What a version adds to the bytes left to write."""
    return record.size if record.kind is Kind.FILE and not record.deleted else 0


def _state(state: LocalFile | _Marker | None) -> LocalFile | None:
    return state if isinstance(state, LocalFile) else None


def _permanent_reason(error: CommonsyncError) -> str | None:
    """Why ``error`` means the version can never be applied on this device (None: it may
    work later, e.g. once the disk has room or the parent directory is there)."""
    if isinstance(error, InternalPathError):
        return REFUSED_INTERNAL
    if isinstance(error, UnrepresentableNameError):
        return "the local file system cannot hold its name"
    if isinstance(error, RecordKindError | RecordError):
        return f"it is not a version this device can apply ({type(error).__name__})"
    return None


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


def _temp_target(temp: str) -> str:
    """The path whose version a temporary file (``dir/.NAME.cs-tmp-HEX``) was assembling."""
    parent, _, name = temp.rpartition("/")
    name = name[1:].rpartition(layout.TEMP_MARK)[0]
    return f"{parent}/{name}" if parent else name


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


def _read_at(chain: DirectoryChain, location: ChunkLocation, size: int) -> bytes | None:
    """``size`` bytes at the location, if its file is a regular file below the root and, when
    a local state is stored for it, still exactly that file (see :meth:`Folder._read_first`)."""
    try:
        fd = chain.open(location.path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if location.local is not None and LocalFile.from_stat(st) != location.local:
            return None  # changed since it was hashed: not the bytes the index names
        data = os.pread(fd, size, location.offset)
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
    epoch_keys: Sequence[FolderKey] = (),
    save_key: Callable[[FolderKey], None] | None = None,
) -> AsyncIterator[Folder]:
    """Open a folder for syncing (creating its metadata on first use) and run its puller.
    ``epoch_keys`` are the keys of later epochs the node keeps, ``save_key`` keeps one more."""
    root = Path(root)
    await anyio.to_thread.run_sync(init_folder, root)
    await store.add_folder(key.folder_id, label or root.name)
    folder = Folder(
        root,
        key,
        identity,
        store,
        device_name=device_name,
        epoch_keys=epoch_keys,
        save_key=save_key,
    )
    await folder.members.load()
    await folder._open_epochs()
    # Before anything scans: a file whose version was set aside before a stop is moved now.
    folder._set_aside.update(await store.set_aside_paths(key.folder_id))
    await folder._finish_setting_aside()
    await folder._resume_pending()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(folder.run_puller)
        tasks.start_soon(folder._watch_space)
        tasks.start_soon(folder._rescan_racy)
        try:
            yield folder
        finally:
            tasks.cancel_scope.cancel()
