"""The decision rules: unit cases, and a model of three devices that must always converge.

The model keeps, for each simulated device, its index (path → record, in the index's order),
its disk (path → content) and its versions folder, and plays random edits, deletions, renames
and sessions, perhaps cut short, that send each record once, as the engine does (the rows of
the source's index after the destination's progress, never the destination's own records),
applying :func:`commonsync.sync.decide.decide` and recording merged versions as the engine
does. After final sessions until nothing changes, every device must hold the same records
and the same files, and no edit may be lost: each is a live file (at its path or as a
conflict copy), or a user knowingly replaced it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from commonsync import DeviceIdentity
from commonsync.formats.hashing import blake2b
from commonsync.formats.records import ChunkEntry, Kind, Record
from commonsync.formats.versionvector import VersionVector
from commonsync.sync.decide import Action, conflict_copy_path, decide, merged, wins

DEVICES = [DeviceIdentity.from_seed(bytes([n]) * 32) for n in (1, 2, 3)]
PATHS = ["a.txt", "b.txt", "dir/c.txt"]


def make(
    author: DeviceIdentity,
    path: str,
    content: bytes | None,
    *,
    base: Record | None,
    mtime: int,
    sequence: int,
) -> Record:
    """A new version of ``path`` by ``author`` over ``base``; ``None`` content deletes."""
    version = base.version if base is not None else VersionVector()
    previous = b"" if base is None or base.deleted else base.content_digest()
    chunks = () if content is None else (ChunkEntry(blake2b(content), len(content)),)
    return Record(
        path=path,
        kind=Kind.FILE,
        size=0 if content is None else len(content),
        mtime_ns=mtime,
        mode=0o644,
        deleted=content is None,
        version=version.bump(author.device_id.short, mtime // 10**9),
        chunks=chunks,
        symlink_target="",
        author=author.public_key,
        sequence=sequence,
        previous=previous,
    )


ALICE, BOB = DEVICES[0], DEVICES[1]


def test_new_paths_and_newer_versions_are_taken() -> None:
    one = make(ALICE, "a", b"1", base=None, mtime=10**9, sequence=1)
    two = make(BOB, "a", b"2", base=one, mtime=2 * 10**9, sequence=1)
    assert decide(None, one, me=BOB.public_key).action is Action.TAKE
    assert decide(one, two, me=ALICE.public_key).action is Action.TAKE
    assert decide(two, one, me=BOB.public_key).action is Action.KEEP
    assert decide(two, two, me=BOB.public_key).action is Action.KEEP


def test_a_conflict_keeps_the_losers_copy_on_every_writer_that_resolves_it() -> None:
    base = make(ALICE, "notes.txt", b"base", base=None, mtime=10**9, sequence=1)
    mine = make(ALICE, "notes.txt", b"alice", base=base, mtime=5 * 10**9, sequence=2)
    theirs = make(BOB, "notes.txt", b"bob", base=base, mtime=6 * 10**9, sequence=1)
    on_alice = decide(mine, theirs, me=ALICE.public_key)
    on_bob = decide(theirs, mine, me=BOB.public_key)
    assert on_alice.action is Action.TAKE  # bob's is later
    assert on_alice.conflict
    assert on_alice.resolved
    assert on_alice.conflict_copy is not None
    assert on_alice.conflict_copy.startswith("notes.sync-conflict-19700101-000005-")
    assert on_alice.conflict_copy == conflict_copy_path(mine)
    assert on_bob.action is Action.KEEP
    assert on_bob.conflict
    assert on_bob.resolved
    assert on_bob.conflict_copy is None
    # Bob's merged version will dominate alice's, which alice may never see lose: bob keeps
    # it as a copy too, under the same name.
    assert on_bob.remote_copy == on_alice.conflict_copy
    # A third device that may write, holding alice's version, keeps it as well.
    on_carol = decide(mine, theirs, me=DEVICES[2].public_key)
    assert on_carol.action is Action.TAKE
    assert on_carol.conflict_copy == on_alice.conflict_copy
    # A reader keeps its own losing edits only, and records no outcome where another
    # device's version wins (it cannot publish) ...
    as_reader = decide(mine, theirs, me=DEVICES[2].public_key, writer=False)
    assert as_reader.action is Action.TAKE
    assert as_reader.conflict_copy is None
    assert not as_reader.resolved
    assert decide(mine, theirs, me=ALICE.public_key, writer=False).conflict_copy is not None
    # ... except where its own version wins: that outcome, unshared like its edit, keeps it
    # from taking later a version older than the one it kept its edit against (the roles
    # model found a reader ending on such a one); and it keeps the losing edit as a copy,
    # which the outcome dominates, for when it may publish both.
    as_bob_reader = decide(theirs, mine, me=BOB.public_key, writer=False)
    assert as_bob_reader.action is Action.KEEP
    assert as_bob_reader.resolved
    assert as_bob_reader.remote_copy == on_bob.remote_copy
    assert decide(theirs, mine, me=DEVICES[2].public_key, writer=False).remote_copy is None


def test_a_conflict_copy_is_named_for_the_losing_content() -> None:
    """Several devices keep the same losing version under one name, whoever recorded it."""
    one = make(ALICE, "a.txt", b"same", base=None, mtime=5 * 10**9, sequence=1)
    other = make(BOB, "a.txt", b"same", base=None, mtime=5 * 10**9, sequence=7)
    third = make(BOB, "a.txt", b"different", base=None, mtime=5 * 10**9, sequence=8)
    assert conflict_copy_path(one) == conflict_copy_path(other)
    assert conflict_copy_path(one) != conflict_copy_path(third)


def test_resolving_concurrent_versions_records_an_outcome_that_dominates_both() -> None:
    base = make(ALICE, "a", b"base", base=None, mtime=10**9, sequence=1)
    mine = make(ALICE, "a", b"alice", base=base, mtime=5 * 10**9, sequence=2)
    theirs = make(BOB, "a", b"bob", base=base, mtime=6 * 10**9, sequence=1)
    carol = DEVICES[2].public_key
    outcome = merged(mine, theirs, theirs, author=carol, sequence=9)
    assert outcome.content_digest() == theirs.content_digest()
    assert (outcome.author, outcome.sequence, outcome.mtime_ns) == (carol, 9, theirs.mtime_ns)
    for record in (mine, theirs):
        assert decide(record, outcome, me=ALICE.public_key).action is Action.TAKE
        assert decide(outcome, record, me=ALICE.public_key).action is Action.KEEP
    # Bob, the winner, records the same vector: the two outcomes are EQUAL, and settled by a
    # total order with nothing new to record (no ping-pong).
    at_bob = merged(theirs, mine, theirs, author=BOB.public_key, sequence=2)
    assert at_bob.version == outcome.version
    one, two = decide(outcome, at_bob, me=carol), decide(at_bob, outcome, me=BOB.public_key)
    assert {one.action, two.action} == {Action.TAKE, Action.KEEP}
    assert not one.resolved
    assert not two.resolved
    assert not one.conflict


def test_three_versions_that_went_round_the_rules_converge_once_resolved() -> None:
    """A deletion beats the edit it replaced, which beats an older concurrent edit by its
    mtime, which beats the deletion: the rules alone go round. The outcome a device records
    when it resolves a pair dominates both, so that neither of them beats it any more."""
    old = make(ALICE, "a", b"old", base=None, mtime=2 * 10**9, sequence=1)
    later = make(BOB, "a", b"later", base=None, mtime=3 * 10**9, sequence=1)
    deletion = make(BOB, "a", None, base=later, mtime=4 * 10**9, sequence=2)
    me = DEVICES[2].public_key
    assert decide(later, deletion, me=me).action is Action.TAKE
    assert decide(old, later, me=me).action is Action.TAKE
    assert decide(deletion, old, me=me).action is Action.TAKE
    outcome = merged(deletion, old, old, author=me, sequence=1)
    for record in (old, later, deletion):
        assert decide(outcome, record, me=me).action is Action.KEEP


def test_a_conflict_lost_by_a_conflict_copy_as_made_makes_no_copy_of_itself() -> None:
    """Alice's conflict copy, as she made it, loses a concurrent edit of that copy: its
    conflict name would be its own name, so it goes to the versions folder instead."""
    copy_path = conflict_copy_path(make(ALICE, "f.txt", b"a", base=None, mtime=5 * 10**9,
                                        sequence=1))  # fmt: skip
    copy = make(ALICE, copy_path, b"a", base=None, mtime=5 * 10**9, sequence=2)
    theirs = make(BOB, copy_path, b"bob edited it", base=None, mtime=9 * 10**9, sequence=1)
    on_alice = decide(copy, theirs, me=ALICE.public_key)
    assert on_alice.action is Action.TAKE
    assert on_alice.conflict
    assert on_alice.conflict_copy is None


def test_an_edit_wins_over_a_concurrent_deletion() -> None:
    base = make(ALICE, "a", b"base", base=None, mtime=10**9, sequence=1)
    deleted = make(ALICE, "a", None, base=base, mtime=9 * 10**9, sequence=2)
    edited = make(BOB, "a", b"edit", base=base, mtime=2 * 10**9, sequence=1)
    assert decide(deleted, edited, me=ALICE.public_key).action is Action.TAKE
    assert decide(edited, deleted, me=BOB.public_key).action is Action.KEEP


def test_a_version_that_replaced_exactly_our_content_is_not_a_conflict() -> None:
    """After a lost index, vectors restart and look concurrent; ``previous`` settles it."""
    ours = make(ALICE, "a", b"old", base=None, mtime=5 * 10**9, sequence=1)
    wiped_base = make(BOB, "a", b"old", base=None, mtime=1 * 10**9, sequence=1)
    theirs = make(BOB, "a", b"new", base=wiped_base, mtime=2 * 10**9, sequence=2)
    assert theirs.version.compare(ours.version).value == "concurrent"
    decision = decide(ours, theirs, me=ALICE.public_key)
    assert decision.action is Action.TAKE
    assert not decision.conflict
    assert decide(theirs, ours, me=BOB.public_key).action is Action.KEEP


def test_the_conflict_rule_is_a_total_order() -> None:
    a = make(ALICE, "a", b"x", base=None, mtime=10**9, sequence=1)
    b = make(BOB, "a", b"y", base=None, mtime=10**9, sequence=1)
    assert wins(a, b) != wins(b, a)
    assert not wins(a, a)


# -- the model -----------------------------------------------------------------------------------


@dataclass
class Device:
    identity: DeviceIdentity
    index: dict[str, Record] = field(default_factory=dict)
    disk: dict[str, bytes] = field(default_factory=dict)
    versions: list[bytes] = field(default_factory=list)
    sequence: int = 0
    #: Path → the index's local sequence of its row (what ``records_since`` orders by).
    positions: dict[str, int] = field(default_factory=dict)
    local: int = 0
    #: Source device (its key) → the last local sequence of its index this device has seen.
    seen: dict[bytes, int] = field(default_factory=dict)

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    def record(self, record: Record) -> None:
        """Store ``record``: its row moves to the end of the index's order."""
        self.index[record.path] = record
        self.local += 1
        self.positions[record.path] = self.local

    def author(self, path: str, content: bytes | None, mtime: int) -> Record:
        record = make(
            self.identity, path, content, base=self.index.get(path), mtime=mtime,
            sequence=self.next_sequence(),
        )  # fmt: skip
        self.record(record)
        if content is None:
            self.disk.pop(path, None)
        else:
            self.disk[path] = content
        return record


def take_remote(
    device: Device,
    remote: Record,
    contents: dict[bytes, bytes],
    now: Callable[[], int],
    *,
    writer: bool = True,
) -> bool:
    """What the engine does with one remote record it accepted: :func:`decide`, then the
    disk made to match (a losing local edit to its conflict copy, authored at ``now()``,
    anything else replaced to the versions folder), and on a device that may write
    (``writer``), two concurrent versions resolved are recorded as a merged version of its
    own (:func:`merged`), and a remote edit that lost a conflict is kept as a copy too.
    True if anything changed. Shared with the model of roles (tests/test_roles_model.py),
    which adds the membership checks before it."""
    local = device.index.get(remote.path)
    decision = decide(local, remote, me=device.identity.public_key, writer=writer)
    if decision.action is Action.KEEP:
        if decision.remote_copy is not None:
            keep_copy(device, decision.remote_copy, remote, contents, now)
        if not decision.resolved:
            return False
        assert local is not None
        device.record(merged(local, remote, local, author=device.identity.public_key,
                             sequence=device.next_sequence()))  # fmt: skip
        return True
    current = device.disk.pop(remote.path, None)
    if decision.conflict_copy is not None and current is not None:
        # Our losing edit moves to its conflict copy, a new file we publish.
        device.author(decision.conflict_copy, current, now())
    elif current is not None:
        device.versions.append(current)
    taken = remote
    if decision.resolved:
        assert local is not None
        taken = merged(local, remote, remote, author=device.identity.public_key,
                       sequence=device.next_sequence())  # fmt: skip
    device.record(taken)
    if not remote.deleted:
        device.disk[remote.path] = contents[remote.chunks[0].id]
    return True


def keep_copy(
    device: Device, copy: str, loser: Record, contents: dict[bytes, bytes], now: Callable[[], int]
) -> None:
    """Keep a remote edit that lost a conflict as a conflict copy, unless that copy is there
    already, or was deleted (knowingly: the deletion replaced that very content)."""
    there = device.index.get(copy)
    content = loser.content_digest()
    if there is not None and (not there.deleted or there.previous == content):
        return
    device.author(copy, contents[loser.chunks[0].id], now())


class ThreeDevices(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.devices = [Device(identity) for identity in DEVICES]
        self.clock = 10**9
        self.contents: dict[bytes, bytes] = {}  # chunk ID → content: what fetching finds
        self.edits: set[bytes] = set()
        self.superseded: set[bytes] = set()  # contents a user knowingly replaced or deleted
        self.serial = 0

    def tick(self, same_second: bool) -> int:
        if not same_second:
            self.clock += 10**9
        return self.clock

    def user_changes(self, device: Device, path: str, content: bytes | None, mtime: int) -> None:
        current = device.disk.get(path)
        if current is not None:
            self.superseded.add(current)
        device.author(path, content, mtime)
        if content is not None:
            self.contents[blake2b(content)] = content
            self.edits.add(content)

    @rule(
        device=st.integers(0, 2),
        path=st.sampled_from(PATHS),
        same_second=st.booleans(),
    )
    def edit(self, device: int, path: str, same_second: bool) -> None:
        self.serial += 1
        content = f"edit {self.serial} on {device}".encode()
        self.user_changes(self.devices[device], path, content, self.tick(same_second))

    @rule(device=st.integers(0, 2), path=st.sampled_from(PATHS))
    def delete(self, device: int, path: str) -> None:
        target = self.devices[device]
        if path in target.disk:
            self.user_changes(target, path, None, self.tick(False))

    @rule(device=st.integers(0, 2), old=st.sampled_from(PATHS), new=st.sampled_from(PATHS))
    def rename(self, device: int, old: str, new: str) -> None:
        target = self.devices[device]
        if old == new or old not in target.disk:
            return
        content = target.disk[old]
        mtime = self.tick(False)
        # Moving a file supersedes nothing at its old path (its content lives on at the new
        # one), but does not revive a content that a user elsewhere already replaced.
        self.user_changes(target, new, content, mtime)
        target.author(old, None, mtime)

    @rule(
        source=st.integers(0, 2),
        destination=st.integers(0, 2),
        limit=st.none() | st.integers(0, 3),
    )
    def exchange(self, source: int, destination: int, limit: int | None) -> None:
        """A session, perhaps cut short: some of the source's records reach the destination."""
        if source != destination:
            self.send(self.devices[source], self.devices[destination], limit)

    def send(self, source: Device, destination: Device, limit: int | None) -> bool:
        """What the engine sends (:meth:`PeerExchange._push_index`): the source's index rows
        after the destination's progress, in the index's order, each once, and not the
        destination's own records (it holds those or newer ones). True if anything changed."""
        after = destination.seen.get(source.identity.public_key, 0)
        rows = sorted((position, path) for path, position in source.positions.items())
        pending = [(position, path) for position, path in rows if position > after]
        changed = False
        for position, path in pending if limit is None else pending[:limit]:
            destination.seen[source.identity.public_key] = position
            record = source.index[path]
            if record.author != destination.identity.public_key:
                changed |= self.receive(destination, record)
        return changed

    def receive(self, device: Device, remote: Record) -> bool:
        """What the engine does with one remote record; True if anything changed."""
        return take_remote(device, remote, self.contents, lambda: self.tick(False))

    @invariant()
    def disk_matches_index(self) -> None:
        for device in self.devices:
            live = {p: r for p, r in device.index.items() if not r.deleted}
            assert set(device.disk) == set(live)
            for path, record in live.items():
                assert blake2b(device.disk[path]) == record.chunks[0].id

    def teardown(self) -> None:
        # Full exchanges until nothing changes (bounded: a livelock is a failure).
        for _ in range(20):
            changed = False
            for source in self.devices:
                for destination in self.devices:
                    if source is not destination:
                        changed |= self.send(source, destination, None)
            if not changed:
                break
        else:
            raise AssertionError("the devices did not converge in 20 rounds")
        first = self.devices[0]
        for other in self.devices[1:]:
            assert other.index == first.index
            assert other.disk == first.disk
        # Stronger than "current or in a versions folder": every edit a user did not replace
        # knowingly is a live file on every device, at its path or as a conflict copy.
        current = set(first.disk.values())
        lost = self.edits - current - self.superseded
        assert not lost, f"edits lost: {sorted(lost)}"


TestThreeDevices = ThreeDevices.TestCase
TestThreeDevices.settings = settings(max_examples=600, stateful_step_count=40, deadline=None)


def test_the_model_converges_where_the_rules_go_round() -> None:
    """Device 1's edit beats device 0's (later); device 1 then deletes it and takes 0's
    edit over its deletion; device 2 keeps 1's edit over 0's. Each record is delivered once
    and device 1 is never sent its own edit back: only the merged versions the devices
    record when they resolve a pair make them converge."""
    model = ThreeDevices()
    model.edit(device=0, path="b.txt", same_second=False)
    model.edit(device=1, path="b.txt", same_second=False)
    model.exchange(source=1, destination=2, limit=None)
    model.delete(device=1, path="b.txt")
    model.exchange(source=0, destination=1, limit=None)
    model.teardown()
