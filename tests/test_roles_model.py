"""The model of the sync engine (tests/test_decide.py) with members and roles (issue 15).

Six devices each hold a replica of the folder's membership log, an index and a disk: an owner,
an admin, two writers and two readers at first; roles change, members are removed and
re-admitted as the model goes. Two of them run a *modified* client that publishes every
record it holds to every peer, whatever its log says (a reader or a removed device trying its
luck); the others behave as the engine does.

What travels, and who takes what, is decided by the functions the engine calls, not by
copies of them (the steps around them follow the engine's, which runs them in sessions):

- A session from ``source`` to ``destination`` sends the log entries the destination lacks
  (:meth:`MembershipLog.entries_beyond` its heads) and then, in the order of the source's
  index, the records after the destination's progress; entries first, as
  :meth:`PeerExchange._push_index` does (``_send_log_news`` before each ``Index`` batch). Only
  to a member (:meth:`FolderMembers.is_member`), only records some member may take
  (:meth:`FolderMembers.may_author`), and not the destination's own (unless it has no
  progress: a push from the start); its progress moves past the records not sent, as the
  ``Index`` with no records tells it to.
- The destination takes entries with :meth:`MembershipLog.add`, and a record only if
  :func:`commonsync.sync.decide.refusal` finds nothing and :meth:`FolderMembers.may_author`
  allows it in its log's state at that moment (``Folder.receive_records``); then
  :func:`decide` and the disk, as in test_decide (:func:`take_remote`).
- A removal or a demotion to reader credits each device of the member with the highest
  sequence of its versions in the remover's index (``Node._credits``, ``last_authored``).
- When a device's log changes so that it takes records of that device it refused before (a
  reader made a writer), the device gives them new places at the end of its index
  (:func:`newly_allowed`, as ``FolderMembers`` does with the entries' store), so that its
  peers' progress reaches them again; when it changes so that the device refuses a record
  of another device it holds, the device sets it aside (``IndexStore.add_membership_entries``
  with ``highest_taken``, then ``Folder._took_set_aside``).
- A member leaves, or makes itself a reader, only once a writer of another member took its
  changes (``Node.remove_member``, ``Node.set_role``).

Invariants: at every step, every record on a device that another device made was allowed by
that device's log when it took it (recomputed from the log as it stood then), and a record
taken on its author's credits only was made or taken somewhere while its author could write
(a reader's records are refused by every member). After a final exchange between all devices:
the members' logs are one log; members agree on every record a member may take (a reader
keeps its own changes, unshared); and no edit that the final log allows is lost (it is a
file on every device that may write, unless a person replaced it knowingly, its last versions
were set aside, or it reached only devices that may write no more).

The model found that a reader leaving the folder credited itself with its own records
(``Node._credits`` on its own index), so that every member took the changes it had kept
unshared: credits now take no effect for a reader (SPEC.md §15.4, ``log._credits_taken``;
:func:`test_a_reader_is_credited_nothing_by_leaving_or_being_removed`).

It also found five gaps that the engine's rules left open, each a design question rather
than a slip, all settled now and checked strictly; a test at the end shows each on a few
steps:

- STRANDED: a writer's record that a device took before the removal or demotion of its author
  reached it, beyond the credits the remover could see, stayed on that device alone (every
  other member refuses it). The device now sets it aside when its log changes (SPEC.md
  §15.5, "Versions set aside"; :meth:`RolesModel.set_aside`): the file to the versions
  folder, and every peer asked for its whole index again, so that a version the log takes
  comes back; the file stays, published again, where it holds the device's own last edit of
  the path. What a version set aside had replaced comes back only if some device holds it;
  an edit whose last versions were set aside is in a versions folder
  (:attr:`RolesModel.set_aside_contents`), and is no loss.
- HELD_BACK: a record held back or refused while its author could not write was never sent
  again once it could (a reader made a writer: its earlier changes stayed unshared). Its
  author now publishes it again (:func:`newly_allowed`).
- LOST_CONFLICT: a credited edit of a device that may write no more, losing a conflict, was
  kept by no member: a member leaving before any member took its edits. A member no longer
  leaves while its changes reached no other member (``Node.remove_member`` without
  ``--force``, mirrored by :meth:`RolesModel.remove`); a writer that resolves such a conflict
  keeps the losing edit as a copy (SPEC.md §13, "Conflict copies"). What no command can
  prevent is checked exactly: an edit that reached only devices that may write no more
  (:attr:`RolesModel.holders`) stays theirs, as what a removed member had does.
- A reader (or a removed device) kept its own unshared edit against a concurrent deletion,
  passed the deletion over, and later took an edit the deletion had replaced: it ended on an
  older version than everyone's. Where its own version wins, it now records the outcome too,
  unshared, and keeps the losing edit as a copy (SPEC.md §13, "Recording the outcome"), or
  that edit would vanish once the reader may publish the outcome.
- CYCLE, the conflict rules going round three versions of a path (a deletion beats the edit
  it replaced, which beats an older concurrent edit by its mtime, which beats the deletion
  as an edit), so that where each version is delivered once devices ended on different ones;
  and ECHO, a device never sent its own records back, so that its first edit, replaced by
  its deletion and then by a concurrent edit, never returned to it though it won elsewhere.
  A device that may write now records the outcome of two concurrent versions it resolved as
  a merged version of its own, which dominates both (SPEC.md §13, "Recording the outcome").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import cast

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from commonsync import DeviceIdentity
from commonsync.errors import EntryRefusedError
from commonsync.formats.hashing import blake2b
from commonsync.formats.records import Record
from commonsync.membership.entries import (
    Action,
    AddMember,
    Entry,
    RemoveMember,
    Role,
    SetRole,
)
from commonsync.membership.log import Member, MembershipLog, State, decode_log
from commonsync.sync.decide import refusal
from commonsync.sync.members import FolderMembers, newly_allowed
from commonsync.sync.store import IndexStore
from tests.test_decide import Device, take_remote

FOLDER_ID = blake2b(b"the roles model's folder")
IDENTITIES = [DeviceIdentity.from_seed(bytes([0x40 + n]) * 32) for n in range(6)]
#: The roles the owner (device 0) gives the others when it makes the folder.
FIRST_ROLES = [Role.OWNER, Role.ADMIN, Role.WRITER, Role.WRITER, Role.READER, Role.READER]
#: Devices whose client publishes whatever it holds, to anyone (a writer, later perhaps
#: demoted or removed, and a reader).
MODIFIED = frozenset({3, 5})
PATHS = ["a.txt", "b.txt", "dir/c.txt"]
DEVICE = st.integers(0, len(IDENTITIES) - 1)
NUMBERS = {identity.public_key: n for n, identity in enumerate(IDENTITIES)}


@dataclass
class Replica(Device):
    """One device of the model: test_decide's index and disk, plus a membership log, where
    each index row sits in the index's own order, and how far it read each peer's index."""

    number: int = 0
    members: FolderMembers = field(default=cast(FolderMembers, None))
    modified: bool = False
    #: Source device → the last local sequence of its index this device has seen.
    progress: dict[int, int] = field(default_factory=dict)
    #: Path → how many entries the log held when this device took the path's record.
    taken_at: dict[str, int] = field(default_factory=dict)
    #: Path → the content its user last wrote there (what the scanner last published).
    own: dict[str, bytes] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    @property
    def log(self) -> MembershipLog:
        assert self.members.log is not None
        return self.members.log


def replica(number: int, entries: list[Entry]) -> Replica:
    """A device holding the folder's first log (its own copy of it)."""
    identity = IDENTITIES[number]
    # FolderMembers reads no store for what the model asks of it (may_author, is_member,
    # heads, entries_beyond): the log is set directly, as ``load`` would have read it.
    members = FolderMembers(FOLDER_ID, identity, cast(IndexStore, None))
    members.log = decode_log(FOLDER_ID, entries)
    return Replica(identity, number=number, members=members, modified=number in MODIFIED)


def credits(index: dict[str, Record], member: Member) -> tuple[tuple[bytes, int], ...]:
    """``Node._credits``: per device of ``member``, the highest sequence of the versions it
    made that the remover's index holds (``IndexStore.last_authored``; 0 for none)."""
    return tuple(
        (device, max((r.sequence for r in index.values() if r.author == device), default=0))
        for device in sorted(member.devices)
    )


class RolesModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = 10**9
        owner = IDENTITIES[0]
        first = MembershipLog.create(owner, FOLDER_ID, "device 0", self.seconds)
        for number, role in enumerate(FIRST_ROLES[1:], start=1):
            device = IDENTITIES[number].public_key
            first.append(owner, AddMember(f"device {number}", role, (device,)), self.seconds)
        self.devices = [replica(n, first.entries()) for n in range(len(IDENTITIES))]
        self.contents: dict[bytes, bytes] = {}  # chunk ID → content: what fetching finds
        #: Each content a user wrote → (its author's key, the record's sequence).
        self.edits: dict[bytes, tuple[bytes, int]] = {}
        #: Each content a user knowingly replaced or deleted → the changes that did.
        self.superseded: dict[bytes, list[tuple[bytes, int]]] = {}
        self.serial = 0
        #: Per device: the records it had made (its sequence) when some device's log last
        #: said it could write. Credits may keep those, and no other (a reader's never).
        self.writable: dict[bytes, int] = {}
        #: (device, record): a record another device made, found allowed when it was taken.
        self.checked: set[tuple[int, Record]] = set()
        #: The contents of the versions set aside and moved to a versions folder.
        self.set_aside_contents: set[bytes] = set()
        #: Each content → the devices that ever had it as a file.
        self.holders: dict[bytes, set[int]] = {}

    @property
    def seconds(self) -> int:
        return self.clock // 10**9

    def tick(self, same_second: bool) -> int:
        if not same_second:
            self.clock += 10**9
        return self.clock

    # -- users ---------------------------------------------------------------------------------

    def user_changes(self, device: Replica, path: str, content: bytes | None, mtime: int) -> None:
        current = device.disk.get(path)
        record = device.author(path, content, mtime)
        self.note_holders(device)
        if content is None:
            device.own.pop(path, None)
        else:
            device.own[path] = content
        self.note_writers()
        if current is not None:
            self.superseded.setdefault(current, []).append((device.key, record.sequence))
        if content is not None:
            self.contents[blake2b(content)] = content
            self.edits[content] = (device.key, record.sequence)

    @rule(device=DEVICE, path=st.sampled_from(PATHS), same_second=st.booleans())
    def edit(self, device: int, path: str, same_second: bool) -> None:
        """Any device's user edits, whatever its role: a reader's edit stays on its device."""
        self.serial += 1
        content = f"edit {self.serial} on {device}".encode()
        self.user_changes(self.devices[device], path, content, self.tick(same_second))

    @rule(device=DEVICE, path=st.sampled_from(PATHS))
    def delete(self, device: int, path: str) -> None:
        target = self.devices[device]
        if path in target.disk:
            self.user_changes(target, path, None, self.tick(False))

    # -- members ---------------------------------------------------------------------------------

    def write(self, actor: Replica, action: Action) -> None:
        """``actor`` writes an entry, as ``Node`` does: refused (the CLI says why) when its
        own log would not take it."""
        before = actor.log.state
        with contextlib.suppress(EntryRefusedError):
            actor.log.append(actor.identity, action, self.seconds)
        self.publish_again(actor, before)
        self.set_aside(actor)

    def publish_again(self, device: Replica, before: State) -> None:
        """After ``device``'s log changed from ``before``: its own records that the log held
        back and takes now (:func:`newly_allowed`) move to the end of its index's order, in
        their order (``FolderMembers`` stores them so with the entries), for its peers'
        progress to reach them again."""
        span = newly_allowed(before, device.log.state, device.key)
        if span is None:
            return
        above, up_to = span
        again = sorted(
            (device.positions[path], path)
            for path, record in device.index.items()
            if record.author == device.key and above < record.sequence <= up_to
        )
        for _position, path in again:
            device.local += 1  # its row is written again: to the end of the index's order
            device.positions[path] = device.local

    def set_aside(self, device: Replica) -> None:
        """After ``device``'s log changed: the records of other devices it holds and its log
        refuses now (taken before it heard of their author's removal or demotion, beyond the
        credits) are set aside, as ``FolderMembers`` does in one transaction with the
        entries: the row goes, the file moves to the versions folder, and every peer is
        asked for its whole index again (its progress forgotten: the sessions start again),
        so that a version the log takes comes back (SPEC.md §15.5, "Set aside")."""
        refused = [
            path
            for path, record in device.index.items()
            if record.author != device.key
            and not device.members.may_author(record.author, record.sequence)
        ]
        for path in refused:
            del device.index[path]
            del device.positions[path]
            device.taken_at.pop(path, None)
            content = device.disk.pop(path, None)
            if content is not None and content == device.own.get(path):
                # What its own user wrote there last (an outcome that kept it, or the same
                # edit made twice): published again as its own.
                device.author(path, content, self.tick(False))
            elif content is not None:
                device.versions.append(content)
                self.set_aside_contents.add(content)
        if refused:
            device.progress.clear()

    @rule(actor=DEVICE, subject=DEVICE, role=st.sampled_from(Role))
    def set_role(self, actor: int, subject: int, role: Role) -> None:
        """``Node.set_role``: a writer (or more) made a reader is credited with the versions
        the actor's index holds of it (an admin making itself a reader meets the guard a
        member leaving meets)."""
        me = self.devices[actor]
        member = me.log.state.member_of(IDENTITIES[subject].public_key)
        if member is None:
            return
        credited: tuple[tuple[bytes, int], ...] = ()
        if role is Role.READER and member.role >= Role.WRITER:
            if actor == subject and self.unshared(me):
                return  # refused, as leaving is (unless --force)
            credited = credits(me.index, member)
        self.write(me, SetRole(member.id, role, credited))

    @rule(actor=DEVICE, subject=DEVICE)
    def remove(self, actor: int, subject: int) -> None:
        """``Node.remove_member`` (a member may remove itself: it leaves, unless some of its
        own changes reached no other member yet: ``_refuse_leaving_with_unshared``)."""
        me = self.devices[actor]
        member = me.log.state.member_of(IDENTITIES[subject].public_key)
        if member is None or (actor == subject and self.unshared(me)):
            return
        self.write(me, RemoveMember(member.id, credits(me.index, member)))

    def unshared(self, device: Replica) -> bool:
        """Whether ``device``, a writer, holds versions of its own that no device of another
        member that may write took yet, as their progress tells (the progress reports of
        SPEC.md §13)."""
        state = device.log.state
        member = state.member_of(device.key)
        if member is None or member.role < Role.WRITER:
            return False
        others = [
            d
            for d in self.devices
            if (other := state.member_of(d.key)) not in (None, member)
            and other.role >= Role.WRITER  # a reader keeps no copy of an edit that lost
        ]
        seen = max((d.progress.get(device.number, 0) for d in others), default=0)
        return any(
            record.author == device.key and device.positions[path] > seen
            for path, record in device.index.items()
        )

    @rule(actor=DEVICE, subject=DEVICE, role=st.sampled_from([Role.READER, Role.WRITER]))
    def readmit(self, actor: int, subject: int, role: Role) -> None:
        """A person shares the folder again with a removed device (``Node.share``)."""
        me = self.devices[actor]
        device = IDENTITIES[subject].public_key
        if me.log.state.member_of(device) is None:
            self.write(me, AddMember(f"device {subject} again", role, (device,)))

    # -- travel ----------------------------------------------------------------------------------

    def session(self, source: Replica, destination: Replica, limit: int | None) -> bool:
        """What ``source`` sends ``destination`` in one session (cut after ``limit`` index
        rows, None: none): its log news, then its index after the destination's progress.
        True if the destination's log or index changed."""
        if not (source.modified or source.members.is_member(destination.key)):
            return False  # not a member (any more): it is sent nothing of the folder
        before, state = len(destination.log), destination.log.state
        destination.log.add(source.members.entries_beyond(destination.members.heads))
        self.publish_again(destination, state)
        self.set_aside(destination)
        changed = len(destination.log) != before
        after = destination.progress.get(source.number, 0)
        # A push from the start (the peer has no progress) sends the peer its own records too.
        send_all_until = source.local if after == 0 else 0
        rows = sorted((position, path) for path, position in source.positions.items())
        pending = [(position, path) for position, path in rows if position > after]
        for position, path in pending if limit is None else pending[:limit]:
            destination.progress[source.number] = position
            record = source.index[path]
            # The destination's progress moves past the others without taking them.
            if record.author == destination.key and position > send_all_until:
                continue  # the peer's own: it holds it or a newer one
            if not (source.modified or source.members.may_author(record.author, record.sequence)):
                continue  # no member takes it: kept here, unshared
            if self.accepts(destination, record):  # else: its author sends it again if it may
                changed |= self.take(destination, record)
        return changed

    def accepts(self, device: Replica, record: Record) -> bool:
        """``Folder.receive_records``: whether ``device`` takes ``record`` at all, now."""
        reason = refusal(record, me=device.identity.device_id.short, now_seconds=self.seconds)
        return reason is None and device.members.may_author(record.author, record.sequence)

    def note_writers(self) -> None:
        """Note, per device that some log says may write, how many records it has made."""
        for device in self.devices:
            for member in device.log.state.members.values():
                if member.role >= Role.WRITER:
                    for key in member.devices:
                        made = self.devices[NUMBERS[key]].sequence
                        self.writable[key] = max(self.writable.get(key, 0), made)

    def take(self, device: Replica, record: Record) -> bool:
        """Decide on an accepted record and make the disk match; True if anything changed.
        Taken on its author's credits alone, it must be one its author made while some log
        said it could write (SPEC.md §15.5: a reader's records are refused by every member;
        credits keep what a writer made before it stopped)."""
        self.note_writers()
        member = device.log.state.member_of(record.author)
        if member is None or member.role < Role.WRITER:
            assert record.sequence <= self.writable.get(record.author, 0), (
                f"device {device.number} took {record.path} on the credits of a device that "
                "never made it as a writer"
            )
        writer = device.members.may_author(device.key, 2**63 - 1)
        changed = take_remote(
            device, record, self.contents, lambda: self.tick(False), writer=writer
        )
        self.note_writers()  # it may have made a merged version, or a conflict copy
        if not changed:
            return False
        device.taken_at[record.path] = len(device.log)
        self.note_holders(device)
        return True

    def note_holders(self, device: Replica) -> None:
        for content in device.disk.values():
            self.holders.setdefault(content, set()).add(device.number)

    @rule(source=DEVICE, destination=DEVICE, limit=st.none() | st.integers(0, 3))
    def exchange(self, source: int, destination: int, limit: int | None) -> None:
        """One session, perhaps cut short after a few index rows."""
        if source != destination:
            self.session(self.devices[source], self.devices[destination], limit)

    @rule(group=st.sets(DEVICE, min_size=2, max_size=4))
    def partition(self, group: set[int]) -> None:
        """The devices of ``group`` meet, apart from the others, until they have nothing
        more to tell each other."""
        self.sync([self.devices[n] for n in sorted(group)])

    def sync(self, group: list[Replica]) -> None:
        """Sessions between every two devices of ``group``, until nothing changes (bounded:
        a livelock is a failure)."""
        for _ in range(20):
            changed = False
            for source in group:
                for destination in group:
                    if source is not destination:
                        changed |= self.session(source, destination, None)
            if not changed:
                return
        raise AssertionError("the devices did not settle in 20 rounds")

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def no_refused_record_on_disk(self) -> None:
        """The disk matches the index, and a record another device made is there only if
        this device's log allowed it when it took it: the log as it stood then, recomputed
        from its first entries (it may refuse it now, until it sets it aside)."""
        for device in self.devices:
            live = {p: r for p, r in device.index.items() if not r.deleted}
            assert set(device.disk) == set(live)
            for path, record in live.items():
                assert blake2b(device.disk[path]) == record.chunks[0].id
            for path, record in device.index.items():
                if record.author == device.key or (device.number, record) in self.checked:
                    continue
                # The log as it stood when the device took the record: its first entries.
                then = decode_log(FOLDER_ID, device.log.entries()[: device.taken_at[path]])
                assert then.state.may_author(record.author, record.sequence), (
                    f"device {device.number} took {path} from a device its log refused"
                )
                self.checked.add((device.number, record))

    def teardown(self) -> None:
        self.sync(self.devices)
        self.check_converged()

    def check_converged(self) -> None:
        """After a full exchange: the members' logs are one, they agree on every record a
        member may take, and no edit the log allows is lost."""
        believers = [d for d in self.devices if d.members.is_member(d.key)]
        reference = max(believers, key=lambda d: len(d.log))
        state = reference.log.state
        members = [d for d in self.devices if state.member_of(d.key) is not None]
        for device in members:
            assert device.log.heads == reference.log.heads, f"device {device.number}'s log"
            assert device.log.state.as_json() == state.as_json()
        paths = sorted({p for d in members for p in d.index})
        for path in paths:
            held: dict[int, Record | None] = {}
            for device in members:
                record = device.index.get(path)
                if record is not None and not state.may_author(record.author, record.sequence):
                    # Its own change, that no member takes (a reader's, unshared); another
                    # device's, taken before a removal or demotion crediting less, was set
                    # aside when the log said so (STRANDED, settled).
                    assert record.author == device.key, f"device {device.number} holds {path}"
                    continue
                held[device.number] = record
            for x, mine in held.items():
                for y, theirs in held.items():
                    assert mine == theirs, f"{path}: device {x} has {mine}, {y} {theirs}"
                assert self.devices[x].disk.get(path) == (
                    None if mine is None or mine.deleted else self.contents[mine.chunks[0].id]
                )
        # No edit lost that the log allows: each is a live file on a device that publishes
        # (on every such device, then), unless a user
        # replaced it knowingly: on its own device before sharing it, or by a change made
        # while its author could write (a reader's change elsewhere does not excuse it).
        live = set().union(*(
            set(d.disk.values()) for d in members if state.may_author(d.key, 2**63 - 1)
        ))  # fmt: skip
        lost = [
            content
            for content, (author, sequence) in self.edits.items()
            if state.may_author(author, sequence)
            and content not in live
            and not any(
                a == author or s <= self.writable.get(a, 0)
                for a, s in self.superseded.get(content, ())
            )
        ]
        for content in lost:
            if content in self.set_aside_contents:
                # Its last versions were set aside (a conflict copy or an outcome recorded
                # by a device the log refuses now, credited with none of it): it is in the
                # versions folders of the devices that set them aside.
                assert any(content in d.versions for d in self.devices), content
                continue
            if not any(state.may_author(IDENTITIES[n].public_key, 2**63 - 1)
                       for n in self.holders[content]):  # fmt: skip
                # It never reached a device that may write now: it reached only devices that
                # were removed or made readers since (with what they had, it stays theirs),
                # and lost a conflict on one of those, which keeps no copy of another's
                # edit (a credited edit of a removed writer that reached only an admin
                # demoted before it passed it on).
                continue
            author = NUMBERS[self.edits[content][0]]
            raise AssertionError(f"edit lost: {content!r} (on device {author}'s disk: "
                                 f"{content in self.devices[author].disk.values()})")  # fmt: skip


TestRolesModel = RolesModel.TestCase
TestRolesModel.settings = settings(
    max_examples=250,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the rule the model found broken -------------------------------------------------------------


def test_a_reader_is_credited_nothing_by_leaving_or_being_removed() -> None:
    """A reader that leaves the folder may write its own removal (SPEC.md §15.3), with any
    credits: they take no effect, or every member would take the changes it kept unshared, or
    any it backdated. (The model found it: a reader's device left with ``Node._credits``,
    its own highest sequence, and its local edits reached every member.)"""
    owner, reader, writer = IDENTITIES[0], IDENTITIES[4], IDENTITIES[2]
    log = MembershipLog.create(owner, FOLDER_ID, "owner", 1)
    as_reader = log.append(owner, AddMember("reader", Role.READER, (reader.public_key,)), 2)
    as_writer = log.append(owner, AddMember("writer", Role.WRITER, (writer.public_key,)), 3)
    log.append(reader, RemoveMember(as_reader.hash, ((reader.public_key, 7),)), 4)
    assert log.state.member_of(reader.public_key) is None
    assert not log.state.may_author(reader.public_key, 1)
    # A writer made a reader keeps what it was credited then: a removal (or another demotion)
    # credits it no more, whatever it says.
    log.append(owner, SetRole(as_writer.hash, Role.READER, ((writer.public_key, 5),)), 5)
    log.append(owner, SetRole(as_writer.hash, Role.READER, ((writer.public_key, 9),)), 6)
    log.append(writer, RemoveMember(as_writer.hash, ((writer.public_key, 2**40),)), 7)
    assert log.state.may_author(writer.public_key, 5)
    assert not log.state.may_author(writer.public_key, 6)


# -- the gaps the model found, each on a few steps ------------------------------------------------


def converged(model: RolesModel) -> None:
    """The final exchange, then the check."""
    model.sync(model.devices)
    model.check_converged()


def test_a_record_taken_before_its_authors_demotion_is_set_aside() -> None:
    """Device 0 took writer 2's edit of its file; the admin, who never saw that edit, made 2
    a reader crediting none, so every other member refuses it. When device 0 hears of the
    demotion it sets the edit aside (into its versions folder, published as nothing), asks
    its peers for their whole indexes again, and takes back its own first version, which
    they hold: all converge on it. (Before, device 0 kept the edit: the gap STRANDED.)"""
    model = RolesModel()
    model.edit(device=0, path="a.txt", same_second=False)
    model.sync(model.devices)
    first = model.devices[0].index["a.txt"]
    model.edit(device=2, path="a.txt", same_second=False)
    edited = model.devices[2].disk["a.txt"]
    model.exchange(source=2, destination=0, limit=None)
    assert model.devices[0].disk["a.txt"] == edited
    model.set_role(actor=1, subject=2, role=Role.READER)
    model.exchange(source=1, destination=0, limit=None)
    assert model.devices[0].index["a.txt"] == first
    assert edited in model.devices[0].versions
    converged(model)
    assert all(d.index["a.txt"] == first for d in model.devices if d.number != 2)


def test_a_reader_made_a_writer_shares_its_earlier_changes() -> None:
    """A reader's edit is held back (its peers' progress moves past it); made a writer, it
    publishes that edit again (:func:`newly_allowed`), and every member takes it. (The model
    found it never sent again: the gap HELD_BACK.)"""
    model = RolesModel()
    model.edit(device=4, path="a.txt", same_second=False)
    model.sync(model.devices)
    model.set_role(actor=0, subject=4, role=Role.WRITER)
    converged(model)
    assert all(d.index["a.txt"].author == IDENTITIES[4].public_key for d in model.devices)


def test_a_reader_demoted_again_before_sharing_keeps_its_changes() -> None:
    """Made a writer, the reader publishes its edit again, but is made a reader again (with
    no credits: the owner never had the edit) before any peer takes it: the edit stays
    unshared, and is published again when the reader is made a writer once more."""
    model = RolesModel()
    model.edit(device=4, path="a.txt", same_second=False)
    model.sync(model.devices)
    model.set_role(actor=0, subject=4, role=Role.WRITER)
    model.exchange(source=0, destination=4, limit=0)  # it hears of it, and publishes again
    model.set_role(actor=0, subject=4, role=Role.READER)
    model.sync(model.devices)
    model.check_converged()
    mine = model.devices[4].index["a.txt"]
    assert all(d.index.get("a.txt") != mine for d in model.devices[:4])
    model.set_role(actor=0, subject=4, role=Role.WRITER)
    converged(model)
    assert all(d.index["a.txt"] == mine for d in model.devices)


def test_a_devices_own_version_comes_back_when_it_wins() -> None:
    """Device 2's edit beats device 0's (later); device 2 then deletes it, and takes device
    0's edit over its deletion (an edit wins over a concurrent deletion). Device 3 takes 2's
    edit over 0's. The three versions make a cycle of the conflict rules, and device 2 is
    never sent its own edit back (ECHO, CYCLE): each device that resolves a pair records a
    merged version that dominates both, and all converge."""
    model = RolesModel()
    model.edit(device=3, path="dir/c.txt", same_second=False)
    model.sync(model.devices)  # every device has pushed to every other: no push from the start
    model.edit(device=0, path="b.txt", same_second=False)
    model.edit(device=2, path="b.txt", same_second=False)
    model.exchange(source=2, destination=3, limit=None)
    model.delete(device=2, path="b.txt")
    model.exchange(source=0, destination=2, limit=None)
    converged(model)
    assert len({d.disk.get("b.txt") for d in model.devices}) == 1


def test_a_member_with_changes_nobody_took_does_not_leave() -> None:
    """The admin edits, then tries to leave: refused, since its edit reached no other member
    (``Node.remove_member`` without ``--force``), which would keep it alone once its
    sessions end. Once a member took it, the admin leaves, credited with it, and the owner's
    later concurrent edit wins the conflict: a writer kept the admin's edit as a copy. (The
    model found the edit kept by its author alone: the gap LOST_CONFLICT.)"""
    model = RolesModel()
    model.edit(device=1, path="a.txt", same_second=False)
    admin = IDENTITIES[1].public_key
    model.remove(actor=1, subject=1)
    assert model.devices[1].log.state.member_of(admin) is not None
    model.exchange(source=1, destination=2, limit=None)
    model.remove(actor=1, subject=1)
    assert model.devices[1].log.state.member_of(admin) is None
    model.edit(device=0, path="a.txt", same_second=False)
    converged(model)


def test_a_reader_keeping_its_edit_against_a_deletion_takes_nothing_older() -> None:
    """Reader 4's own edit beats admin 1's deletion (an edit wins over a concurrent deletion);
    the deletion replaced writer 2's later edit, which reaches 4 after it and beats 4's edit
    by its mtime. Without an outcome of its own the reader took that edit, which every other
    device had seen deleted."""
    model = RolesModel()
    model.edit(device=4, path="a.txt", same_second=False)
    model.edit(device=2, path="a.txt", same_second=False)
    model.exchange(source=2, destination=1, limit=None)
    model.delete(device=1, path="a.txt")
    model.exchange(source=1, destination=4, limit=None)
    model.exchange(source=2, destination=4, limit=None)
    converged(model)
    reader = model.devices[4]
    assert reader.index["a.txt"].author == reader.key
    assert reader.disk["a.txt"] == reader.own["a.txt"]


def test_a_reader_made_a_writer_publishes_the_edit_its_own_beat() -> None:
    """Reader 4's edit beats owner 0's concurrent edit on 4 (the later one wins); 4 records
    the outcome and keeps 0's edit as a copy. Made a writer, it publishes both: the outcome
    dominates 0's edit everywhere, and the copy keeps it."""
    model = RolesModel()
    model.edit(device=0, path="a.txt", same_second=False)
    model.edit(device=4, path="a.txt", same_second=False)
    lost = model.devices[0].disk["a.txt"]
    model.exchange(source=0, destination=4, limit=None)
    model.set_role(actor=0, subject=4, role=Role.WRITER)
    converged(model)
    assert all(lost in d.disk.values() for d in model.devices)


def test_an_edit_that_reached_only_devices_that_may_write_no_more_stays_theirs() -> None:
    """Admin 1 took writer 2's edit and removed 2, crediting it; the owner, who never saw
    that edit, made a concurrent one, and made 1 a reader. On 1, a reader now, the owner's
    edit wins and 1 keeps no copy of another device's edit: the credited edit stays with the
    devices that had it, none of which may write any more. No command could have kept it:
    the owner could not know that 1 held its only other copy."""
    model = RolesModel()
    model.edit(device=2, path="a.txt", same_second=False)
    edit = model.devices[2].disk["a.txt"]
    model.exchange(source=2, destination=1, limit=None)
    model.remove(actor=1, subject=2)
    model.edit(device=0, path="a.txt", same_second=False)
    model.set_role(actor=0, subject=1, role=Role.READER)
    converged(model)
    assert model.holders[edit] == {1, 2}
    assert edit in model.devices[1].versions
    assert not any(edit in d.disk.values() for d in model.devices[:2] + model.devices[3:])
