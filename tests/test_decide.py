"""The decision rules: unit cases, and a model of three devices that must always converge.

The model keeps, for each simulated device, its index (path → record), its disk (path →
content) and its versions folder, and plays random edits, deletions, renames and partial
index exchanges, applying :func:`commonsync.sync.decide.decide` as the engine does. After a final
full exchange, every device must hold the same records and the same files, and no edit may be
lost: each is a live file (at its path or as a conflict copy), or a user knowingly replaced it.
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
from commonsync.sync.decide import Action, conflict_copy_path, decide, wins
from commonsync.sync.layout import is_conflict_copy

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


def test_a_conflict_keeps_the_losers_copy_on_its_authors_device() -> None:
    base = make(ALICE, "notes.txt", b"base", base=None, mtime=10**9, sequence=1)
    mine = make(ALICE, "notes.txt", b"alice", base=base, mtime=5 * 10**9, sequence=2)
    theirs = make(BOB, "notes.txt", b"bob", base=base, mtime=6 * 10**9, sequence=1)
    on_alice = decide(mine, theirs, me=ALICE.public_key)
    on_bob = decide(theirs, mine, me=BOB.public_key)
    assert on_alice.action is Action.TAKE  # bob's is later
    assert on_alice.conflict
    assert on_alice.conflict_copy is not None
    assert on_alice.conflict_copy.startswith("notes.sync-conflict-19700101-000005-")
    assert on_alice.conflict_copy.endswith(f"-{ALICE.device_id.short_str}.txt")
    assert on_bob.action is Action.KEEP
    assert on_bob.conflict
    assert on_bob.conflict_copy is None
    # A third device holding alice's version replaces it, and makes no copy of its own.
    on_carol = decide(mine, theirs, me=DEVICES[2].public_key)
    assert on_carol.action is Action.TAKE
    assert on_carol.conflict_copy is None


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

    def author(self, path: str, content: bytes | None, mtime: int) -> Record:
        self.sequence += 1
        record = make(
            self.identity, path, content, base=self.index.get(path), mtime=mtime,
            sequence=self.sequence,
        )  # fmt: skip
        self.index[path] = record
        if content is None:
            self.disk.pop(path, None)
        else:
            self.disk[path] = content
        return record


def take_remote(
    device: Device, remote: Record, contents: dict[bytes, bytes], now: Callable[[], int]
) -> bool:
    """What the engine does with one remote record it accepted: :func:`decide`, then the
    disk made to match (a losing local edit to its conflict copy, authored at ``now()``,
    anything else replaced to the versions folder). True if anything changed. Shared with
    the model of roles (tests/test_roles_model.py), which adds the membership checks before
    it."""
    local = device.index.get(remote.path)
    decision = decide(local, remote, me=device.identity.public_key)
    if decision.action is Action.KEEP:
        return False
    current = device.disk.pop(remote.path, None)
    if decision.conflict_copy is not None and current is not None:
        # Our losing edit moves to its conflict copy, a new file we publish.
        device.author(decision.conflict_copy, current, now())
    elif current is not None:
        device.versions.append(current)
    device.index[remote.path] = remote
    if not remote.deleted:
        device.disk[remote.path] = contents[remote.chunks[0].id]
    return True


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
        paths=st.sets(st.sampled_from([*PATHS, "conflicts"])),
    )
    def exchange(self, source: int, destination: int, paths: set[str]) -> None:
        """A partial exchange: some of the source's records reach the destination."""
        if source != destination:
            self.send(self.devices[source], self.devices[destination], paths)

    def send(self, source: Device, destination: Device, paths: set[str] | None) -> bool:
        changed = False
        for path, record in sorted(source.index.items()):
            wanted = (
                paths is None or path in paths or ("conflicts" in paths and is_conflict_copy(path))
            )
            if wanted and self.receive(destination, record):
                changed = True
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
