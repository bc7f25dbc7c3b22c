"""The sync protocol with one peer: shared folders, index exchange, chunk requests.

A :class:`PeerExchange` runs one :class:`~commonsync.wire.session.Session` for as long as it
lasts. It proves which folders we hold, learns which the peer holds (SPEC.md §12), asks for
the records it has not seen yet, pushes ours as they change, answers chunk requests from the
folder's local files, and lets the folder's puller request chunks from this peer.

What a record *means* is not decided here: records go to the :class:`FolderEndpoint` (in
practice :class:`commonsync.sync.folder.Folder`), which decides and applies them.

With a peer that speaks it (the ``membership`` feature of its ``Hello``), the folders'
membership logs travel here too (SPEC.md §15.8): each side names its log's heads, the other
sends the entries it lacks, and every entry either side takes later is sent on before any
record that may depend on it. A folder whose log does not name the peer's device gets no
records from us and serves it no chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import anyio
import anyio.abc

from ..errors import (
    ChannelError,
    CommonsyncError,
    EntryMalformedError,
    FolderKeyError,
    PeerStalledError,
    ProtocolError,
    RecordError,
)
from ..formats.device_id import DeviceId
from ..formats.keys import FolderKey, FolderKeyring
from ..formats.messages import (
    MAX_EPOCH_KEYS,
    MAX_LOG_BATCH,
    MAX_LOG_HEADS,
    PROTOCOL_VERSION,
    ChunkBatchRequest,
    ChunkBatchResponse,
    ChunkRequest,
    ChunkResponse,
    Close,
    CloseReason,
    EpochKeys,
    Folders,
    Hello,
    Index,
    IndexRequest,
    LogEntries,
    LogHeads,
    Message,
    Offer,
    Ping,
    Pong,
    Progress,
)
from ..formats.records import ChunkEntry, Record, open_record, seal_record, verify_record
from ..membership.entries import Entry, decode_entry
from ..wire.session import Session, folder_proof
from .members import FolderMembers
from .store import SignedRow

log = logging.getLogger(__name__)

#: Refused records logged one by one per session; beyond, one line per
#: :data:`REFUSALS_PER_SUMMARY`.
LOGGED_REFUSALS = 10
REFUSALS_PER_SUMMARY = 1000
CLIENT = "commonsync 0.1.0"
#: The Hello feature of a device that exchanges membership logs (SPEC.md §15.8).
MEMBERSHIP_FEATURE = "membership"
#: The Hello feature of a device that takes ``Progress`` reports (SPEC.md §13).
PROGRESS_FEATURE = "progress"
FEATURES = [MEMBERSHIP_FEATURE, PROGRESS_FEATURE]
#: A progress report goes out at most this often per folder (s), and at least this often
#: while something changed; and its wait between two looks (s).
REPORT_INTERVAL = 1.0
REPORT_MIN_GAP = 0.2
#: Encoded entries per LogEntries message at most (a log of a few hundred entries is one).
LOG_BATCH_BYTES = 1024 * 1024
#: A peer that names log heads and has not sent them this many seconds later is reported.
LOG_HEADS_WAIT = 30.0
#: Records per Index message, and the sealed bytes one message may carry.
INDEX_BATCH = 500
INDEX_BATCH_BYTES = 8 * 1024 * 1024
#: Chunk requests from the peer that we serve at once.
SERVING_CONCURRENCY = 8
#: A request this peer has not answered after this many seconds (or a few times what its
#: measured rate predicts, if more) is also sent to another peer that may hold the chunks.
HEDGE_AFTER = 1.0
HEDGE_FACTOR = 3.0
#: A peer that owes us data and sends nothing for this many seconds is asked after the others.
SUSPECT_AFTER = 2.0


@dataclass(frozen=True)
class RemoteRecord:
    """A verified record from a peer, with its signed bytes (kept and forwarded as they are)."""

    record: Record
    signed: bytes


class FolderEndpoint(Protocol):
    """What the exchange needs from a folder (see :class:`commonsync.sync.folder.Folder`)."""

    @property
    def key(self) -> FolderKey: ...

    @property
    def keyring(self) -> FolderKeyring: ...

    @property
    def members(self) -> FolderMembers: ...

    async def index_state(self) -> tuple[bytes, int]:
        """Our index ID and highest local sequence."""
        ...

    async def records_since(self, after: int, limit: int) -> list[SignedRow]:
        """Our records after local sequence ``after``, oldest first, as stored."""
        ...

    async def wait_for_change(self, after: int) -> None:
        """Return once our highest local sequence is above ``after``."""
        ...

    async def peer_progress(self, peer: DeviceId) -> tuple[bytes, int] | None: ...

    async def set_peer_progress(self, peer: DeviceId, index_id: bytes, sequence: int) -> None: ...

    async def receive_records(self, source: PeerExchange, records: Sequence[RemoteRecord]) -> None:
        """Decide on and schedule a batch of records from ``source``; must not wait for
        chunk transfers (the exchange's reader is blocked meanwhile)."""
        ...

    async def read_local_chunks(
        self, chunks: Sequence[ChunkEntry], *, verify: bool = True
    ) -> list[bytes | None]:
        """For each chunk, its bytes if a local file holds it, else None; checked against the
        chunk's ID unless ``verify`` is false (when the reader checks them anyway)."""
        ...

    def log_refused(self, device: str, entry: Entry | None, reason: str) -> None:
        """A membership entry from ``device`` was refused (None: it did not even decode)."""
        ...

    async def take_log_entries(self, entries: Sequence[Entry]) -> list[tuple[Entry, str]]:
        """Offer a peer's membership entries to the log; those refused, with why."""
        ...

    async def add_epoch_key(self, key: FolderKey) -> bool:
        """Take a later epoch's key from a peer, if the log names it."""
        ...

    def attach(self, peer: PeerExchange) -> None: ...

    async def progress_report(self, peer: DeviceId) -> tuple[bytes, int, int, int, int]:
        """The peer's index ID and how far we took it, our highest sequence, and the files
        and bytes we have left to write (SPEC.md §13)."""
        ...

    async def peer_reported(
        self, peer: DeviceId, peer_key: bytes, report: tuple[bytes, int, int, int, int]
    ) -> None:
        """Take the peer's progress report ``(index_id, seen, highest, files, bytes)``."""
        ...

    def detach(self, peer: PeerExchange) -> None: ...


def _session_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error to report for a session whose tasks failed: its first library error,
    when every failure is the session's (the peer broke the protocol or the connection);
    otherwise the group itself, since something else went wrong."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    session_errors = (CommonsyncError, anyio.BrokenResourceError, anyio.ClosedResourceError)
    if all(isinstance(e, session_errors) for e in leaves):
        for error in leaves:
            if isinstance(error, CommonsyncError):
                return error
        return ChannelError(f"the connection broke: {leaves[0]!r}")
    return group


#: What receives the peer's folder offers (the device that sent it, and the offer).
OfferHandler = Callable[[DeviceId, Offer], Awaitable[None]]
#: What admits the peer to a folder chosen for it, once its public key is known (the node
#: writes the membership entry); False if it may not be admitted (then it is not offered it).
AdmitHandler = Callable[["PeerExchange", bytes], Awaitable[bool]]


class PeerExchange:
    """The protocol with one connected peer, for every folder both hold.

    ``offers`` are folders we invite this peer to (sent after ``Folders`` for each one the
    peer does not prove it holds); ``on_offer`` receives the peer's invitations (without it,
    they are ignored). ``admit`` is asked first, for each of ``folders``, to make the peer
    a member of it (a folder it may not be admitted to is not offered).
    """

    def __init__(
        self,
        session: Session,
        folders: Sequence[FolderEndpoint],
        *,
        device_name: str,
        offers: Sequence[Offer] = (),
        on_offer: OfferHandler | None = None,
        admit: AdmitHandler | None = None,
        on_hello: Callable[[Hello], None] | None = None,
    ) -> None:
        self.session = session
        #: Told the peer's Hello when it comes (a node learns the peer's name from it).
        self._on_hello = on_hello
        self._offers = list(offers)
        self._on_offer = on_offer
        self._admit = admit
        self.peer: DeviceId = session.channel.peer
        self._folders = {f.key.folder_id: f for f in folders}
        self._device_name = device_name
        self.shared: dict[bytes, FolderEndpoint] = {}
        self.peer_hello: Hello | None = None
        self._waiters: dict[int, _Waiter] = {}
        #: Our requests that went out, were given up on (another peer answered first, or
        #: this one stalled), and are still unanswered: a peer that lets them pile up is
        #: asked last (see :attr:`unanswered`).
        self._abandoned: set[int] = set()
        self._stall_reported = False
        self._serving = anyio.Semaphore(SERVING_CONCURRENCY)
        #: The folders whose index we push to this peer (one push each per session).
        self._pushing: set[bytes] = set()
        self._tasks: anyio.abc.TaskGroup | None = None
        self._shared_ready = anyio.Event()
        self._records_refused = 0
        #: Per shared folder, with a peer that speaks the membership feature: the entries
        #: it is known to hold (from its heads, and what went either way), set once its
        #: LogHeads came; and a lock so that one sender at a time sends it news.
        self._log_known: dict[bytes, set[bytes]] = {}
        #: Per shared folder: the newest key epoch the peer holds (from its LogHeads).
        self._peer_epoch: dict[bytes, int] = {}
        self._log_heard: dict[bytes, anyio.Event] = {}
        self._log_sending: dict[bytes, anyio.Lock] = {}
        #: Per shared folder: the peer's last progress report (SPEC.md §13).
        self._reports: dict[bytes, tuple[bytes, int, int, int, int]] = {}

    def __repr__(self) -> str:
        return f"<PeerExchange with {self.peer.short_str}>"

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Speak the protocol until the peer closes (returns) or breaks it (raises the
        :class:`CommonsyncError` that ended it, not an exception group)."""
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                try:
                    hello = Hello(PROTOCOL_VERSION, FEATURES, self._device_name[:64], CLIENT)
                    await self.session.send(hello)
                    await self.session.send(Folders(self._proofs()))
                    await self._read()
                finally:
                    tasks.cancel_scope.cancel()
                    # Before waiting for the tasks: one may be in the middle of a frame, which
                    # a cancellation lets finish; closing the channel cuts it short.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                        await self.session.channel.aclose()
        except BaseExceptionGroup as group:
            raise _session_error(group) from None
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await self.session.channel.aclose()
            for folder in self.shared.values():
                folder.detach(self)
            for waiter in self._waiters.values():
                waiter.close()

    async def offer(self, offer: Offer) -> None:
        """Invite the peer to a folder now (it is sent on later sessions too if it is in
        the ``offers`` those start with)."""
        await self._shared_ready.wait()
        if offer.folder_id not in self.shared:
            await self.session.send(offer)

    async def close(self, reason: CloseReason = CloseReason.NORMAL, detail: str = "") -> None:
        await self.session.close(reason, detail)

    def _proofs(self) -> list[list[object]]:
        channel = self.session.channel
        return [
            [folder_proof(f.key, channel.handshake_hash, sender_is_initiator=channel.initiator),
             bytes(16), 0]
            for f in self._folders.values()
        ]  # fmt: skip

    async def _read(self) -> None:
        async for message in self.session:
            try:
                await self._dispatch(message)
            except ProtocolError as exc:
                # The peer broke the sync protocol (a second Folders, a request for a folder
                # it did not prove): tell it why before the end of stream (SPEC.md §12).
                await self.session.close(CloseReason.PROTOCOL_ERROR, str(exc))
                raise

    async def _dispatch(self, message: Message) -> None:
        assert self._tasks is not None
        if isinstance(message, Hello):
            if self.peer_hello is not None:
                raise ProtocolError("a second Hello")
            self.peer_hello = message
            if self._on_hello is not None:
                self._on_hello(message)
        elif isinstance(message, Folders):
            await self._on_folders(message)
        elif isinstance(message, IndexRequest):
            folder = self._shared(message.folder_id)
            if message.folder_id in self._pushing:
                # One push per folder per session, which lasts as long as the session: a
                # peer sends one IndexRequest per shared folder (SPEC.md §13).
                raise ProtocolError("a second IndexRequest for the same folder")
            self._pushing.add(message.folder_id)
            index_id, _ = await folder.index_state()
            # A peer that knew another incarnation of our index gets all of this one.
            after = message.after if message.index_id == index_id else 0
            self._tasks.start_soon(self._push_index, folder, after)
        elif isinstance(message, Index):
            await self._on_index(message)
        elif isinstance(message, ChunkRequest | ChunkBatchRequest):
            self._shared(message.folder_id)
            await self._serving.acquire()
            self._tasks.start_soon(self._serve_chunks, message)
        elif isinstance(message, ChunkResponse | ChunkBatchResponse):
            waiter = self._waiters.pop(message.request_id, None)
            if waiter is not None:  # None: we gave up on it already
                waiter.deliver(message)
            self._abandoned.discard(message.request_id)
            self._stall_reported = False
        elif isinstance(message, Ping):
            await self.session.send(Pong(message.nonce))
        elif isinstance(message, Offer):
            if self._on_offer is not None:
                await self._on_offer(self.peer, message)
        elif isinstance(message, LogHeads):
            await self._on_log_heads(message)
        elif isinstance(message, LogEntries):
            await self._on_log_entries(message)
        elif isinstance(message, EpochKeys):
            await self._on_epoch_keys(message)
        elif isinstance(message, Progress):
            await self._on_progress(message)
        elif isinstance(message, Pong | Close):
            pass

    def _shared(self, folder_id: bytes) -> FolderEndpoint:
        folder = self.shared.get(folder_id)
        if folder is None:
            raise ProtocolError("a request for a folder the peer did not prove it shares")
        return folder

    # -- folders and indexes -------------------------------------------------------------------

    async def _on_folders(self, message: Folders) -> None:
        if self._shared_ready.is_set():
            raise ProtocolError("a second Folders message")
        channel = self.session.channel
        theirs = {entry[0] for entry in message.folders}
        for folder_id, folder in self._folders.items():
            proof = folder_proof(
                folder.key, channel.handshake_hash, sender_is_initiator=not channel.initiator
            )
            if proof in theirs:
                self.shared[folder_id] = folder
        self._shared_ready.set()
        admitted = {}
        if self._admit is not None:
            for folder_id in self._folders:
                admitted[folder_id] = await self._admit(self, folder_id)
        for offer in self._offers:
            if offer.folder_id not in self.shared and admitted.get(offer.folder_id, True):
                await self.session.send(offer)
        for folder_id, folder in self.shared.items():
            folder.attach(self)
            if self.speaks_membership:
                self._log_heard[folder_id] = anyio.Event()
                self._log_sending[folder_id] = anyio.Lock()
                members = folder.members
                heads = members.heads[:MAX_LOG_HEADS]
                epoch = folder.keyring.current.epoch
                await self.session.send(LogHeads(folder_id, len(members), heads, epoch))
            progress = await folder.peer_progress(self.peer)
            index_id, after = progress if progress is not None else (bytes(16), 0)
            await self.session.send(IndexRequest(folder_id, index_id, after))
            if self.speaks_progress:
                assert self._tasks is not None
                self._tasks.start_soon(self._report_progress, folder)

    async def _push_index(self, folder: FolderEndpoint, after: int) -> None:
        """Send our records after ``after``, then every change as it happens.

        The peer's own records are not sent back to it: it holds those versions or newer
        ones (echoing them cost it a decryption, a decoding and a signature check each).
        Except in a push from the start (``after`` is 0, the peer may have lost its index):
        up to where our index was then, it gets everything, its own records included.
        """
        key = folder.key
        members = folder.members
        peer_key = self.session.channel.peer_public_key
        send_all_until = (await folder.index_state())[1] if after == 0 else 0
        while True:
            version = members.version
            if not members.is_member(peer_key):
                # Not (or no longer, or not yet: its admission may be on its way) a member:
                # it gets nothing of the folder's content.
                await members.wait_for_change(version)
                continue
            index_id, highest = await folder.index_state()
            batch = await folder.records_since(after, INDEX_BATCH)
            if not batch:
                await _first(
                    partial(folder.wait_for_change, after),
                    partial(members.wait_for_change, version),
                )
                continue
            # The entries that make these records' authors writers go first, and the key of
            # the epoch they are sealed in.
            await self._send_log_news(folder)
            key = folder.keyring.current
            records: list[list[object]] = []
            size = 0
            for sequence, author, signed, author_sequence in batch:
                if (author == peer_key and sequence > send_all_until) or not members.may_author(
                    author, author_sequence
                ):
                    # Not sent: the peer's own, or a record no member takes (a reader's
                    # local change, kept here unshared; one its author may no longer make).
                    after = sequence
                    continue
                sealed = seal_record(key, signed)
                if records and size + len(sealed) > INDEX_BATCH_BYTES:
                    break
                records.append([sequence, sealed])
                size += len(sealed)
                after = sequence
            if records:
                await self.session.send(Index(key.folder_id, index_id, records, highest))
            if not records or records[-1][0] != after:
                # Only records not sent, at the end: tell it how far it has seen.
                await self.session.send(Index(key.folder_id, index_id, [], after))

    async def _on_index(self, message: Index) -> None:
        folder = self._shared(message.folder_id)
        if not folder.members.is_member(self.session.channel.peer_public_key):
            # A device the log does not name (removed, or its admission still on its way)
            # proves the folder with epoch 0's key but hands over no records: a removed
            # device would otherwise sign new ones under the sequences it was credited
            # with (SPEC.md §15.5, §15.8). The session ends; the peer comes back later,
            # a member then or refused again, and is sent its records from where we were.
            log.warning(
                "%s sent records of a folder whose members do not include it: ending the session",
                self.peer.short_str,
            )
            await self.session.close(CloseReason.NORMAL, "not a member of the folder")
            return
        # In a worker thread: libsodium releases the GIL, so a batch's decryptions and
        # signature checks run beside the event loop instead of stalling it.
        verified, refused = await anyio.to_thread.run_sync(
            _open_records, folder, [sealed for _sequence, sealed in message.records]
        )
        for error in refused:
            # A forged or tampered record is refused; its neighbours still count. Logged
            # one by one up to a bound, then counted: a peer must not flood the log.
            self._records_refused += 1
            if self._records_refused <= LOGGED_REFUSALS:
                log.warning("refused a record from %s: %s", self.peer.short_str, error)
            elif self._records_refused % REFUSALS_PER_SUMMARY == 0:
                log.warning(
                    "refused %d records from %s in this session so far (the last: %s)",
                    self._records_refused, self.peer.short_str, error,
                )  # fmt: skip
        if verified:
            await folder.receive_records(self, verified)
        last = message.records[-1][0] if message.records else message.max_sequence
        await folder.set_peer_progress(self.peer, message.index_id, last)

    # -- progress ------------------------------------------------------------------------------

    @property
    def speaks_progress(self) -> bool:
        """Whether the peer takes ``Progress`` reports (it said so in its Hello)."""
        hello = self.peer_hello
        return hello is not None and PROGRESS_FEATURE in hello.features

    async def _report_progress(self, folder: FolderEndpoint) -> None:
        """Tell the peer how far we are with ``folder`` whenever that changed (at most every
        :data:`REPORT_MIN_GAP`, looked at every :data:`REPORT_INTERVAL`), and keep our view
        of the peer current with our index (which grows as files are scanned here)."""
        folder_id = folder.key.folder_id
        peer_key = self.session.channel.peer_public_key
        sent: Progress | None = None
        while True:
            index_id, seen, highest, files, size = await folder.progress_report(self.peer)
            report = Progress(folder_id, index_id, seen, highest, files, size)
            if report != sent:
                await self.session.send(report)
                sent = report
            heard = self._reports.get(folder_id)
            if heard is not None:
                await folder.peer_reported(self.peer, peer_key, heard)
            await anyio.sleep(REPORT_MIN_GAP)
            with anyio.move_on_after(REPORT_INTERVAL):
                await folder.wait_for_change(highest)

    async def _on_progress(self, message: Progress) -> None:
        folder = self._shared(message.folder_id)  # this device names the feature: taken
        report = (message.index_id, message.seen, message.highest, message.need_files,
                  message.need_bytes)  # fmt: skip
        self._reports[message.folder_id] = report
        await folder.peer_reported(self.peer, self.session.channel.peer_public_key, report)

    # -- membership logs -----------------------------------------------------------------------

    @property
    def speaks_membership(self) -> bool:
        """Whether the peer exchanges membership logs (it said so in its Hello)."""
        hello = self.peer_hello
        return hello is not None and MEMBERSHIP_FEATURE in hello.features

    def _log_folder(self, folder_id: bytes) -> FolderEndpoint:
        folder = self._shared(folder_id)
        if folder_id not in self._log_heard:
            raise ProtocolError("a membership log message from a peer without the feature")
        return folder

    async def _on_log_heads(self, message: LogHeads) -> None:
        folder = self._log_folder(message.folder_id)
        heard = self._log_heard[message.folder_id]
        if heard.is_set():
            raise ProtocolError("a second LogHeads for the same folder")
        members = folder.members
        known = {e.hash for e in members.entries_beyond([])} - {
            e.hash for e in members.entries_beyond(message.heads)
        }
        self._log_known[message.folder_id] = known | set(message.heads)
        self._peer_epoch[message.folder_id] = message.epoch
        # (A log with more heads than a LogHeads names is not judged: its other heads may be
        # what covers the entries it showed before.)
        lacking = 0
        if len(message.heads) < MAX_LOG_HEADS:
            lacking = await members.peer_heads(self.session.channel.peer_public_key, message.heads)
        if lacking:
            log.warning(
                "%s serves an older membership log: it lacks %d entries it held before; its "
                "entries are not taken until it holds them again",
                self.peer.short_str,
                lacking,
            )
        heard.set()
        await self._send_log_news(folder)
        assert self._tasks is not None
        self._tasks.start_soon(self._push_log, folder)
        unknown = [h for h in message.heads if h not in members]
        if unknown:
            self._tasks.start_soon(self._expect_heads, folder, unknown)

    async def _on_log_entries(self, message: LogEntries) -> None:
        folder = self._log_folder(message.folder_id)
        entries, malformed = await anyio.to_thread.run_sync(_decode_entries, message.entries)
        peer = self.peer.short_str
        for error in malformed:
            folder.log_refused(peer, None, str(error))
        known = self._log_known.setdefault(message.folder_id, set())
        known.update(e.hash for e in entries)
        peer_key = self.session.channel.peer_public_key
        if peer_key in folder.members.rollbacks:
            return  # its log is an older one (a rollback): none of it is taken meanwhile
        for entry, reason in await folder.take_log_entries(entries):
            folder.log_refused(peer, entry, reason)
        await folder.members.peer_sent(peer_key, [e.hash for e in entries])

    async def _on_epoch_keys(self, message: EpochKeys) -> None:
        folder = self._log_folder(message.folder_id)
        for encoded in message.keys:
            try:
                key = FolderKey.from_bytes(encoded)
            except (FolderKeyError, CommonsyncError) as exc:
                folder.log_refused(self.peer.short_str, None, f"a malformed epoch key: {exc}")
                continue
            if not await folder.add_epoch_key(key):
                folder.log_refused(
                    self.peer.short_str,
                    None,
                    f"a key for epoch {key.epoch} that the membership log does not name",
                )

    async def _send_log_news(self, folder: FolderEndpoint) -> None:
        """Send the peer the entries of our log it is not known to hold, parents first
        (only once it named its heads: before, we cannot tell what it lacks)."""
        folder_id = folder.key.folder_id
        heard = self._log_heard.get(folder_id)
        if heard is None:
            return  # the peer does not speak of membership
        await heard.wait()
        members = folder.members
        if members.log is None or not members.is_member(self.session.channel.peer_public_key):
            return  # nothing to send, or nothing for it: it is not (or no longer) a member
        async with self._log_sending[folder_id]:
            known = self._log_known[folder_id]
            news = [e for e in folder.members.entries_beyond([]) if e.hash not in known]
            batch: list[bytes] = []
            size = 0
            for entry in news:
                if batch and (size + len(entry.encoded) > LOG_BATCH_BYTES
                              or len(batch) == MAX_LOG_BATCH):  # fmt: skip
                    await self.session.send(LogEntries(folder_id, batch))
                    batch, size = [], 0
                batch.append(entry.encoded)
                size += len(entry.encoded)
                known.add(entry.hash)
            if batch:
                await self.session.send(LogEntries(folder_id, batch))
            # The keys of the epochs it lacks (it joined after they began: their secrets
            # were not sealed to it), after the entries that name them.
            peer_epoch = self._peer_epoch.get(folder_id, 0)
            newer = [k.to_bytes() for k in folder.keyring.oldest_first() if k.epoch > peer_epoch]
            for start in range(0, len(newer), MAX_EPOCH_KEYS):
                await self.session.send(EpochKeys(folder_id, newer[start : start + MAX_EPOCH_KEYS]))
            self._peer_epoch[folder_id] = max(peer_epoch, folder.keyring.current.epoch)

    async def _push_log(self, folder: FolderEndpoint) -> None:
        """Send every entry our log takes from now on; end the session once the log no
        longer names the peer as a member (a removal: it must hear of nothing new)."""
        members = folder.members
        peer_key = self.session.channel.peer_public_key
        was_member = members.log is not None and members.is_member(peer_key)
        while True:
            version = members.version
            await self._send_log_news(folder)
            if was_member and not members.is_member(peer_key):
                log.info(
                    "%s is no longer a member of a folder shared with it: ending the session",
                    self.peer.short_str,
                )
                await self.session.close(CloseReason.NORMAL, "no longer a member")
                return
            was_member = members.log is not None and members.is_member(peer_key)
            await members.wait_for_change(version)

    async def _expect_heads(self, folder: FolderEndpoint, heads: list[bytes]) -> None:
        await anyio.sleep(LOG_HEADS_WAIT)
        missing = [h for h in heads if h not in folder.members]
        if missing:
            folder.log_refused(
                self.peer.short_str,
                None,
                f"it named {len(missing)} membership "
                f"{'entry' if len(missing) == 1 else 'entries'} as its log's heads and did not "
                f"send them within {LOG_HEADS_WAIT:g} s (it may hold back the log, or they "
                "were refused)",
            )

    # -- chunks --------------------------------------------------------------------------------

    async def _serve_chunks(self, request: ChunkRequest | ChunkBatchRequest) -> None:
        try:
            folder = self._shared(request.folder_id)
            if isinstance(request, ChunkRequest):
                wanted = [ChunkEntry(request.chunk_id, request.size)]
            else:
                wanted = [ChunkEntry(chunk_id, size) for chunk_id, size in request.chunks]
            # The requester checks every chunk against its ID: hashing it here too would only
            # halve how fast we serve (a file changed since it was scanned is caught there).
            if folder.members.is_member(self.session.channel.peer_public_key):
                found = await folder.read_local_chunks(wanted, verify=False)
            else:
                found = [None] * len(wanted)  # not a member (any more): it gets nothing
            response: Message
            if isinstance(request, ChunkRequest):
                data = found[0]
                response = ChunkResponse(request.request_id, 1 if data is None else 0, data or b"")
            else:
                answers: list[list[object]] = [[1, b""] if d is None else [0, d] for d in found]
                response = ChunkBatchResponse(request.request_id, answers)
            await self.session.send(response)
        except (ChannelError, anyio.ClosedResourceError):
            pass  # the session is ending; the reader will see why
        finally:
            self._serving.release()

    @property
    def unanswered(self) -> int:
        """How many of our requests this peer left unanswered after we gave up on them: 0
        for a peer that answers (even late), growing for one that is silent."""
        return len(self._abandoned)

    @property
    def stalled(self) -> bool:
        """Whether it owes us data and sent not a byte for :data:`SUSPECT_AFTER` seconds."""
        return self.session.stalled_for() >= SUSPECT_AFTER

    def hedge_delay(self, size: int) -> float:
        """How long to wait for this peer's answer to a request of ``size`` bytes before
        asking another peer too: a few times what its measured rate predicts, at least
        :data:`HEDGE_AFTER` seconds (also before anything is measured)."""
        expected = self.session.expected_wait(size)
        return HEDGE_AFTER if expected is None else max(HEDGE_AFTER, HEDGE_FACTOR * expected)

    async def request_chunk(self, folder_id: bytes, chunk: ChunkEntry) -> bytes | None:
        """Ask the peer for a chunk; its bytes (unverified: the caller checks the ID), or None
        if the peer does not have it, is gone, or stalls (sends nothing for the session's
        stall timeout; a slow peer that keeps sending is waited for)."""
        request_id = self.session.new_request_id()
        response = await self._request(ChunkRequest(request_id, folder_id, chunk.id, chunk.size))
        if not isinstance(response, ChunkResponse) or response.status != 0:
            return None
        return response.data

    async def request_chunks(
        self, folder_id: bytes, chunks: Sequence[ChunkEntry]
    ) -> list[bytes | None]:
        """Ask the peer for many chunks at once (at most :data:`MAX_BATCH_CHUNKS`, of
        :data:`MAX_BATCH_BYTES` in all): each one's bytes (unverified), or None for those the
        peer does not have (all None if it is gone or stalls)."""
        request_id = self.session.new_request_id()
        wanted: list[list[object]] = [[chunk.id, chunk.size] for chunk in chunks]
        response = await self._request(ChunkBatchRequest(request_id, folder_id, wanted))
        if not isinstance(response, ChunkBatchResponse):
            return [None] * len(chunks)
        return [data if status == 0 else None for status, data in response.chunks]

    async def _request(self, request: ChunkRequest | ChunkBatchRequest) -> _Response | None:
        """Send ``request`` and wait for its answer while the peer makes progress.

        Cancelling the caller only abandons the wait: the request, once its frame started,
        still goes out whole, and its answer is dropped when it comes (the session's send
        and the waiter here are built for that)."""
        session = self.session
        if session.stalled_for() >= session.stall_timeout:
            return None  # it owes us data already and sends nothing: do not queue behind that
        waiter = _Waiter()
        request_id = request.request_id
        self._waiters[request_id] = waiter
        try:
            await session.send(request)
            if await session.wait_progressing(waiter.event):
                return waiter.response
            self._report_stall()
            return None
        except PeerStalledError:
            self._report_stall()
            return None
        except (CommonsyncError, anyio.EndOfStream, anyio.ClosedResourceError):
            return None
        finally:
            self._waiters.pop(request_id, None)
            if waiter.response is None and session.awaiting(request_id):
                self._abandoned.add(request_id)

    def _report_stall(self) -> None:
        if not self._stall_reported:
            self._stall_reported = True
            log.warning(
                "%s sent nothing for %g s while it owed us %d bytes of chunks; asking other "
                "peers instead",
                self.peer.short_str,
                self.session.stall_timeout,
                self.session.outstanding_bytes,
            )


class _Waiter:
    """Where the reader puts the answer to one request: delivering never blocks nor fails,
    whether or not the requester still waits (it may have been cancelled meanwhile)."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.response: _Response | None = None

    def deliver(self, response: _Response) -> None:
        self.response = response
        self.event.set()

    def close(self) -> None:
        """The session ended: no answer will come."""
        self.event.set()


_Response = ChunkResponse | ChunkBatchResponse


async def _first(*waits: Callable[[], Awaitable[None]]) -> None:
    """Return once any of ``waits`` returns."""
    async with anyio.create_task_group() as tasks:

        async def wait(one: Callable[[], Awaitable[None]]) -> None:
            await one()
            tasks.cancel_scope.cancel()

        for one in waits:
            tasks.start_soon(wait, one)


def _decode_entries(encoded: list[bytes]) -> tuple[list[Entry], list[EntryMalformedError]]:
    entries: list[Entry] = []
    malformed: list[EntryMalformedError] = []
    for data in encoded:
        try:
            entries.append(decode_entry(data))
        except EntryMalformedError as exc:
            malformed.append(exc)
    return entries, malformed


def _open_records(
    folder: FolderEndpoint, sealed_records: list[bytes]
) -> tuple[list[RemoteRecord], list[RecordError]]:
    """Open and verify sealed records: those that pass, and why the others did not."""
    verified: list[RemoteRecord] = []
    refused: list[RecordError] = []
    for sealed in sealed_records:
        try:
            signed = open_record(folder.keyring, sealed)
            verified.append(RemoteRecord(verify_record(folder.key.folder_id, signed), signed))
        except RecordError as exc:
            refused.append(exc)
    return verified, refused
