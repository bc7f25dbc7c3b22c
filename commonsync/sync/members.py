"""A folder's membership as this device keeps it: the log, stored, and who may write.

:class:`FolderMembers` wraps a :class:`~commonsync.membership.log.MembershipLog` for the
engine. Entries taken from peers are checked by the log and stored in the index before anyone
hears of them, so a restart keeps every entry (and head) this device has seen, and no peer can
roll it back to an older log; those waiting for a change (the exchanges, which send new
entries on to their peers) are woken.

A folder made before membership existed has no log (:attr:`FolderMembers.log` is None): every
device holding its key may write, as before. A folder without a log takes the first log a
peer sends that names this device as a member: that is how a device that accepted an offer
learns who the folder's members are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import anyio

from ..errors import EntryMalformedError, MembershipError
from ..formats.identity import DeviceIdentity
from ..membership.entries import (
    Action,
    AddDevice,
    AddMember,
    Entry,
    Genesis,
    RemoveDevice,
    RemoveMember,
    Role,
    decode_entry,
)
from ..membership.epochs import secret_hash
from ..membership.log import MembershipLog, State, decode_log
from .store import IndexStore, SetAside

log = logging.getLogger(__name__)

#: The highest sequence a record may carry: "any" for :meth:`State.may_author`.
LAST_SEQUENCE = 2**63 - 1

#: What a folder without a log keeps of the entries peers send until they make a log that
#: names this device (an association's log is some tens of KiB).
MAX_CANDIDATE_BYTES = 4 * 1024 * 1024


def newly_allowed(before: State, after: State, device: bytes) -> tuple[int, int] | None:
    """The sequences of ``device``'s records that ``before`` refused and ``after`` takes
    (:meth:`State.may_author`), as ``(above, up_to)``; None if there are none. A device
    sends no record that its log says no member may take (SPEC.md §15.8), and its peers'
    progress moves past it: when a change of the log lets such records be taken (a reader
    made a writer, or a device admitted again), the device publishes its own again
    (:meth:`FolderMembers.take`), or nobody would ever ask for them."""
    if before.may_author(device, LAST_SEQUENCE):
        return None  # it could write: nothing of it was held back
    above = before.credited.get(device, 0)
    up_to = (
        LAST_SEQUENCE if after.may_author(device, LAST_SEQUENCE) else after.credited.get(device, 0)
    )
    return (above, up_to) if up_to > above else None


def _limit(state: State, device: bytes) -> int:
    """The highest sequence of ``device``'s records that ``state`` takes."""
    return (
        LAST_SEQUENCE if state.may_author(device, LAST_SEQUENCE) else state.credited.get(device, 0)
    )


class FolderMembers:
    """One folder's membership log on this device (None until it has one)."""

    def __init__(self, folder_id: bytes, identity: DeviceIdentity, store: IndexStore) -> None:
        self.folder_id = folder_id
        self.identity = identity
        self.store = store
        self.log: MembershipLog | None = None
        #: Grows with every change, for :meth:`wait_for_change`.
        self.version = 0
        self._changed = anyio.Event()
        self._lock = anyio.Lock()
        #: Without a log: the entries peers sent so far, until they make one (bounded).
        self._candidates: dict[bytes, Entry] = {}
        self._candidate_bytes = 0
        #: Per peer device (public key): the entries of this log it showed it holds, by
        #: naming them as its log's heads or sending them (:meth:`peer_heads`).
        self._shown: dict[bytes, set[bytes]] = {}
        #: The peer devices whose last log lacked entries they showed they held before (an
        #: older log: a rollback), with how many; their entries are not taken meanwhile.
        self.rollbacks: dict[bytes, int] = {}
        #: What the last changes of the log set aside (the store's
        #: :meth:`~IndexStore.add_membership_entries`), until the folder takes it.
        self.set_aside = SetAside([], [])

    async def load(self) -> None:
        """Read the log the store holds, if any, and what peers showed they hold of it."""
        encoded = await self.store.membership_entries(self.folder_id)
        if not encoded:
            return
        self._shown = await self.store.membership_shown(self.folder_id)
        try:
            entries = [decode_entry(e) for e in encoded]
            self.log = decode_log(self.folder_id, entries)
        except MembershipError as exc:
            raise MembershipError(
                f"the membership log stored in {self.store.path} is damaged ({exc}); move the "
                "index away to receive the log again from the folder's members"
            ) from None
        if len(self.log) != len(entries):
            raise MembershipError(
                f"the membership log stored in {self.store.path} holds entries its own rules "
                "refuse; move the index away to receive the log again from the members"
            )

    # -- what it says ------------------------------------------------------------------------

    @property
    def state(self) -> State | None:
        return None if self.log is None else self.log.state

    def may_author(self, device: bytes, sequence: int) -> bool:
        """Whether a record by ``device`` with ``sequence`` is to be taken (any, without a
        log)."""
        return self.log is None or self.log.state.may_author(device, sequence)

    def is_member(self, device: bytes) -> bool:
        """Whether ``device`` (a public key) is a device of a member (any, without a log)."""
        return self.log is None or self.log.state.member_of(device) is not None

    def role(self, device: bytes) -> Role | None:
        """The role of ``device``'s member, None if it is none (or there is no log)."""
        if self.log is None:
            return None
        member = self.log.state.member_of(device)
        return None if member is None else member.role

    @property
    def my_role(self) -> Role | None:
        return self.role(self.identity.public_key)

    @property
    def heads(self) -> list[bytes]:
        return [] if self.log is None else self.log.heads

    def __len__(self) -> int:
        return 0 if self.log is None else len(self.log)

    def __contains__(self, entry_hash: bytes) -> bool:
        return self.log is not None and entry_hash in self.log

    def entries_beyond(self, heads: Iterable[bytes]) -> list[Entry]:
        """What a holder of ``heads`` lacks, parents first."""
        return [] if self.log is None else self.log.entries_beyond(heads)

    async def peer_heads(self, peer: bytes, heads: Sequence[bytes]) -> int:
        """Note the heads a peer names for its log (SPEC.md §15.8), and how many entries it
        showed it held before (named as heads, or sent) its log now lacks: a device's log
        only grows, so such a log is an older one (restored from a backup, or held back on
        purpose to write as if it had not seen them). 0 if none, or if the peer names heads
        this log does not hold yet (they may descend from the others: not judged then).
        The peer stays in :attr:`rollbacks` until a log of it lacks none. What each peer
        showed is kept with the index, so a restart of this device forgets none of it."""
        if self.log is None:
            return 0
        shown = self._shown.setdefault(peer, set())
        lacking = 0
        if all(h in self.log for h in heads):
            beyond = {e.hash for e in self.log.entries_beyond(heads)}
            lacking = len(shown & beyond)
            if lacking:
                self.rollbacks[peer] = lacking
            else:
                self.rollbacks.pop(peer, None)
        await self.peer_sent(peer, heads)
        return lacking

    async def peer_sent(self, peer: bytes, hashes: Iterable[bytes]) -> None:
        """Note entries a peer showed it holds (it named or sent them); those this log
        holds are kept with the index."""
        if self.log is None:
            return
        shown = self._shown.setdefault(peer, set())
        held = {h for h in hashes if h in self.log} - shown
        if not held:
            return
        shown.update(held)
        await self.store.set_membership_shown(self.folder_id, peer, shown)

    def was_removed(self, device: bytes) -> bool:
        """Whether the log removed ``device`` (with its member, or alone) at some point: such a
        device is admitted again only when a person asks for it."""
        return device in self.removed_devices()

    def removed_devices(self) -> set[bytes]:
        """Every device some entry of the log removed, with its member or alone."""
        if self.log is None:
            return set()
        devices_of: dict[bytes, set[bytes]] = {}
        removed: set[bytes] = set()
        for entry in self.log.entries():
            action = entry.action
            if isinstance(action, Genesis):
                devices_of[entry.hash] = {entry.author}
            elif isinstance(action, AddMember):
                devices_of[entry.hash] = set(action.devices)
            elif isinstance(action, AddDevice):
                devices_of.setdefault(action.member, set()).add(action.device)
            elif isinstance(action, RemoveDevice):
                removed.add(action.device)
            elif isinstance(action, RemoveMember):
                removed |= devices_of.get(action.member, set())
        return removed

    def names_epoch(self, epoch: int, secret: bytes) -> bool:
        """Whether a new-epoch entry of the log that took effect names ``epoch`` with this
        secret's hash: how a key a peer hands over is known to be the folder's (a voided
        entry's is not: it may have been sealed to a removed device, SPEC.md §15.7)."""
        if self.log is None:
            return False
        return self.log.epochs().get(epoch) == secret_hash(secret)

    # -- changing it -------------------------------------------------------------------------

    async def create(self, name: str, time: int) -> Entry:
        """Start the folder's log with this device as its first owner, named ``name``."""
        async with self._lock:
            if self.log is not None:
                raise MembershipError("the folder has a membership log already")
            log_ = MembershipLog.create(self.identity, self.folder_id, name, time)
            genesis = log_.entries()[0]
            await self.store.add_membership_entries(
                self.folder_id, [(genesis.hash, genesis.encoded)]
            )
            self.log = log_
            self._notify()
            return genesis

    async def append(self, action: Action, time: int) -> Entry:
        """Write an entry of ``action`` by this device (refused as others would refuse it:
        :class:`~commonsync.errors.EntryRefusedError`)."""
        async with self._lock:
            if self.log is None:
                raise MembershipError(
                    "the folder has no membership log: it was made before members existed"
                )
            before = self.log.state
            entry = self.log.append(self.identity, action, time)
            try:
                self._took(
                    await self.store.add_membership_entries(
                        self.folder_id,
                        [(entry.hash, entry.encoded)],
                        publish_again=self._publish_again(before),
                        highest_taken=self._highest_taken(self.log.state, before),
                    )
                )
            except BaseException:
                await self._reload()
                raise
            self._notify()
            return entry

    async def take(self, entries: Sequence[Entry]) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """Add entries from a peer: those the log took (stored, in order), and those it
        refused with why. This device's own records that the log held back and takes now
        get new local sequences with them (:func:`newly_allowed`), as :meth:`append`'s."""
        async with self._lock:
            if self.log is None:
                return await self._adopt(entries)
            before, state = len(self.log), self.log.state
            refused = self.log.add(entries)
            added = self.log.entries()[before:]
            if added:
                try:
                    self._took(
                        await self.store.add_membership_entries(
                            self.folder_id,
                            [(e.hash, e.encoded) for e in added],
                            publish_again=self._publish_again(state),
                            highest_taken=self._highest_taken(self.log.state, state),
                        )
                    )
                except BaseException:
                    await self._reload()
                    raise
                self._notify()
            return added, refused

    def _publish_again(self, before: State) -> tuple[bytes, int, int] | None:
        """What of this device's own records to publish again, stored with the entries that
        changed the log from ``before`` (:func:`newly_allowed`): a crash stores both or
        neither. (A first log, taken without one, holds nothing back: until then, every
        device holding the key wrote.)"""
        assert self.log is not None
        me = self.identity.public_key
        span = newly_allowed(before, self.log.state, me)
        return None if span is None else (me, *span)

    def _took(self, set_aside: SetAside) -> None:
        self.set_aside.moved.extend(set_aside.moved)
        self.set_aside.published_again.extend(set_aside.published_again)

    def _highest_taken(
        self, state: State, before: State | None = None
    ) -> Callable[[bytes], int | None] | None:
        """Per author, the highest sequence the log takes from it now (None: any), for the
        store to set aside the versions taken beyond it before this device knew (SPEC.md
        §15.5); None if the change from ``before`` lets no device write less (most entries:
        nothing to look for in the index). This device's own versions are never set aside:
        those no member takes are its unshared changes (:meth:`Folder._count_unshared`)."""
        me = self.identity.public_key

        def highest_taken(author: bytes) -> int | None:
            if author == me or state.may_author(author, LAST_SEQUENCE):
                return None
            return state.credited.get(author, 0)

        if before is not None:
            could_write = set(before.credited) | {
                device for member in before.members.values() for device in member.devices
            }
            if all(_limit(before, d) <= _limit(state, d) for d in could_write):
                return None
        return highest_taken

    async def _adopt(self, entries: Sequence[Entry]) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """Without a log: gather what peers send (it may come in several batches) until it
        makes a log that names this device, then take it whole."""
        for entry in entries:
            if entry.hash not in self._candidates:
                if self._candidate_bytes + len(entry.encoded) > MAX_CANDIDATE_BYTES:
                    break
                self._candidates[entry.hash] = entry
                self._candidate_bytes += len(entry.encoded)
        candidates = list(self._candidates.values())
        if not any(isinstance(e.action, Genesis) for e in candidates):
            return [], []  # the genesis comes with the rest of the log, in a later batch
        try:
            candidate = decode_log(self.folder_id, candidates)
        except EntryMalformedError as exc:
            self._candidates, self._candidate_bytes = {}, 0
            return [], [(e, str(exc)) for e in entries]
        if candidate.state.member_of(self.identity.public_key) is None:
            return [], []  # not yet: the entry that admits this device may come next
        taken = candidate.entries()
        # Versions taken before the log came (every device holding the key wrote until
        # then) that it refuses are set aside too.
        self._took(
            await self.store.add_membership_entries(
                self.folder_id,
                [(e.hash, e.encoded) for e in taken],
                highest_taken=self._highest_taken(candidate.state),
            )
        )
        self.log = candidate
        self._candidates, self._candidate_bytes = {}, 0
        self._notify()
        held = {e.hash for e in taken}
        return taken, [(e, "refused by the log") for e in entries if e.hash not in held]

    async def _reload(self) -> None:
        """After a failed write: the log as stored (the entries not stored are not taken)."""
        with anyio.CancelScope(shield=True):
            self.log = None
            await self.load()

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for_change(self, version: int) -> None:
        """Return once the log changed after :attr:`version` was ``version``."""
        while self.version <= version:
            await self._changed.wait()
