"""Membership logs travel between library Nodes, and every Node enforces the roles they give.

Real Nodes on loopback, driven through their API; where a test needs a member that breaks the
rules, it is a Node whose own checks are switched off (a modified client built on the library),
talking the real protocol over the real session.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from commonsync import Node, NodeConfig
from commonsync.errors import InvalidRequestError, RequestConflictError, UnknownEpochError
from commonsync.formats.device_id import DeviceId
from commonsync.formats.messages import LogEntries
from commonsync.formats.records import open_record, seal_record
from commonsync.membership.entries import AddMember, Invite, RemoveMember, Role, make_entry
from commonsync.membership.invitations import invitation_key, new_secret
from commonsync.membership.links import JoinLink
from commonsync.sync.folder import Folder

from .test_node import loopback, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def know(a: Node, b: Node, name: str = "") -> None:
    await a.add_device(b.device_id, name=name, addresses=[f"127.0.0.1:{b.port}"])


@asynccontextmanager
async def nodes(
    tmp_path: Path, *names: str, config: Callable[[], NodeConfig] = loopback
) -> AsyncIterator[list[Node]]:
    """Nodes whose homes are in ``tmp_path/homes/`` (never inside a folder a test syncs)."""
    async with anyio.create_task_group() as tasks:
        opened: list[Node] = []

        async def run(name: str, ready: anyio.Event) -> None:
            async with Node.open(tmp_path / "homes" / name, config()) as node:
                opened.append(node)
                ready.set()
                await anyio.sleep_forever()

        for name in names:
            ready = anyio.Event()
            tasks.start_soon(run, name, ready)
            await ready.wait()
        try:
            yield opened
        finally:
            tasks.cancel_scope.cancel()


def folder_of(node: Node, label: str) -> Folder:
    folder = node.folder(label).folder
    assert folder is not None
    return folder


async def share_and_accept(
    owner: Node, other: Node, label: str, path: Path, role: Role = Role.WRITER
) -> Folder:
    await owner.share(label, other.device_id, role=role)
    await until(lambda: bool(other.offers), f"{label} is offered")
    await other.accept_folder(label, path)
    folder = folder_of(other, label)
    await until(lambda: folder.members.log is not None, "the membership log arrives")
    return folder


async def test_a_new_folder_has_a_log_and_sharing_admits_the_device(tmp_path: Path) -> None:
    (tmp_path / "scores").mkdir()
    async with nodes(tmp_path, "alice", "bob") as (alice, bob):
        await know(alice, bob, "bob")
        await know(bob, alice)
        await alice.add_folder(tmp_path / "scores", "scores")
        ours = folder_of(alice, "scores")
        assert ours.members.my_role is Role.OWNER
        assert len(ours.members) == 1

        theirs = await share_and_accept(alice, bob, "scores", tmp_path / "bob-scores")
        await until(lambda: theirs.members.heads == ours.members.heads, "the same log head")
        assert theirs.members.my_role is Role.WRITER
        assert ours.members.role(bob.identity.public_key) is Role.WRITER
        # Stored: a restart keeps it (read back from the index, checked again).
        stored = await alice.store.membership_entries(ours.folder_id)
        assert len(stored) == 2

        (tmp_path / "bob-scores" / "alto.pdf").write_bytes(b"alto part")
        await until(lambda: (tmp_path / "scores" / "alto.pdf").exists(), "a writer's file")


@asynccontextmanager
async def a_reader(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, Folder]]:
    """Alice's folder ``scores`` (holding soprano.pdf) and Bob, its reader, who received it;
    yields both nodes and Bob's folder."""
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "soprano.pdf").write_bytes(b"soprano part")
    async with nodes(tmp_path, "alice", "bob") as (alice, bob):
        await know(alice, bob, "bob")
        await know(bob, alice)
        await alice.add_folder(scores, "scores")
        reader = await share_and_accept(alice, bob, "scores", tmp_path / "bob", Role.READER)
        await until(lambda: (tmp_path / "bob" / "soprano.pdf").exists(), "a reader receives")
        yield alice, bob, reader


async def test_a_reader_publishes_nothing_and_forced_records_are_refused(tmp_path: Path) -> None:
    scores = tmp_path / "scores"
    async with a_reader(tmp_path) as (alice, bob, reader):
        assert reader.members.my_role is Role.READER

        # An honest reader keeps its edit to itself.
        (tmp_path / "bob" / "mine.txt").write_text("not for the choir")
        await bob.rescan("scores")
        await anyio.sleep(1)
        assert not (scores / "mine.txt").exists()
        status = bob.folder("scores").status()
        assert "1 local change not shared (you are a reader of scores)" in status["summary"]
        assert (status["role"], status["members"], status["unshared_changes"]) == ("reader", 2, 1)

        # A modified reader, whose own checks are off, pushes its records anyway.
        reader.members.may_author = lambda device, sequence: True  # type: ignore[method-assign]
        (tmp_path / "bob" / "soprano.pdf").write_bytes(b"vandalised")
        (tmp_path / "bob" / "forged.txt").write_text("forged")
        await bob.rescan("scores")
        owner = folder_of(alice, "scores")
        await until(lambda: bool(owner.refusals()), "the owner refuses the reader's records")
        assert "is not a writer of this folder" in str(owner.refusals()[0])
        assert (scores / "soprano.pdf").read_bytes() == b"soprano part"
        assert not (scores / "forged.txt").exists()
        assert not (scores / "mine.txt").exists()
        assert await alice.store.get(owner.folder_id, "forged.txt") is None


async def test_a_reader_made_a_writer_shares_the_changes_it_kept(tmp_path: Path) -> None:
    """A reader's edit stays on its device (the owner's progress through its index moves past
    it); made a writer, the reader publishes that edit again, and nothing else: the owner
    takes it (SPEC.md §15.5). Found by the model of roles (tests/test_roles_model.py)."""
    scores = tmp_path / "scores"
    async with a_reader(tmp_path) as (alice, bob, reader):
        (tmp_path / "bob" / "mine.txt").write_text("kept while a reader")
        await bob.rescan("scores")
        # Alice has seen all of Bob's index: the edit was passed over, not sent.
        _, highest = await reader.index_state()
        owner = folder_of(alice, "scores")
        with anyio.fail_after(10):
            while (seen := await owner.peer_progress(bob.device_id)) is None or seen[1] < highest:
                await anyio.sleep(0.05)
        assert not (scores / "mine.txt").exists()
        assert reader.unshared_changes == 1

        await alice.set_role("scores", bob.device_id.short_str, Role.WRITER)
        await until(lambda: (scores / "mine.txt").exists(), "the reader's earlier edit")
        assert (scores / "mine.txt").read_text() == "kept while a reader"
        await until(lambda: reader.unshared_changes == 0, "nothing left unshared")
        # Published again alone: the one version given a new local sequence.
        again = await bob.store.records_since(reader.folder_id, highest)
        assert [e.record.path for e in again] == ["mine.txt"]
        assert not owner.refusals()


async def test_entries_and_records_reach_a_member_through_another(tmp_path: Path) -> None:
    """Carol is admitted by Bob (an admin) and knows only Bob: Alice gets the entry that
    admits Carol before Carol's records, so she takes them."""
    (tmp_path / "scores").mkdir()
    async with nodes(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await know(alice, bob, "bob")
        await know(bob, alice)
        await know(bob, carol, "carol")
        await know(carol, bob)
        await alice.add_folder(tmp_path / "scores", "scores")
        await share_and_accept(alice, bob, "scores", tmp_path / "bob", Role.ADMIN)
        joined = await share_and_accept(bob, carol, "scores", tmp_path / "carol")
        assert joined.members.my_role is Role.WRITER

        (tmp_path / "carol" / "tenor.pdf").write_bytes(b"tenor part")
        await until(lambda: (tmp_path / "scores" / "tenor.pdf").exists(), "carol's file")
        owner = folder_of(alice, "scores")
        assert owner.members.role(carol.identity.public_key) is Role.WRITER
        assert not owner.refusals()


async def test_only_admins_share_a_folder_with_a_log(tmp_path: Path) -> None:
    (tmp_path / "scores").mkdir()
    async with nodes(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await know(alice, bob, "bob")
        await know(bob, alice)
        await know(bob, carol, "carol")
        await alice.add_folder(tmp_path / "scores", "scores")
        await share_and_accept(alice, bob, "scores", tmp_path / "bob")
        with pytest.raises(RequestConflictError, match=r"only admins and owners.*a writer"):
            await bob.share("scores", "carol")
        with pytest.raises(RequestConflictError, match=r"only owners .* as owner"):
            await bob.share("scores", "carol", role=Role.OWNER)
        shared = bob.config.folder(folder_of(bob, "scores").folder_id)
        assert shared is not None
        assert shared.devices == [alice.device_id]


async def test_a_forged_entry_is_refused_and_the_log_keeps_working(tmp_path: Path) -> None:
    (tmp_path / "scores").mkdir()
    async with nodes(tmp_path, "alice", "bob") as (alice, bob):
        await know(alice, bob, "bob")
        await know(bob, alice)
        await alice.add_folder(tmp_path / "scores", "scores")
        theirs = await share_and_accept(alice, bob, "scores", tmp_path / "bob")
        ours = folder_of(alice, "scores")
        await until(lambda: theirs.members.heads == ours.members.heads, "the same log head")

        # Bob, a writer, signs an entry admitting a device of his own as an admin, and a
        # tampered copy of it: Alice refuses both, and her log does not change.
        mallory = os.urandom(32)
        forged = make_entry(
            bob.identity,
            ours.folder_id,
            ours.members.heads,
            int(time.time()),
            AddMember("mallory", Role.ADMIN, (mallory,)),
        )
        tampered = bytearray(forged.encoded)
        tampered[-1] ^= 1
        link = bob.peers.links[alice.device_id]
        await link.exchange.session.send(
            LogEntries(ours.folder_id, [forged.encoded, bytes(tampered)])
        )
        await until(lambda: len(ours.log_refusals) == 2, "both entries are refused")
        reasons = " ".join(str(r) for r in ours.log_refusals)
        assert "only admins and owners add members" in reasons
        assert "signature does not verify" in reasons
        assert len(ours.members) == 2
        assert ours.members.role(mallory) is None

        # The session goes on: Bob's next file still arrives.
        (tmp_path / "bob" / "bass.pdf").write_bytes(b"bass part")
        await until(lambda: (tmp_path / "scores" / "bass.pdf").exists(), "bob's file")


async def test_a_removed_writer_reads_nothing_new_and_its_new_versions_are_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "scores").mkdir()
    async with nodes(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        for a, b in ((alice, bob), (alice, carol), (bob, carol)):
            await know(a, b, "bob" if b is bob else "carol")
            await know(b, a, "alice" if a is alice else "bob")
        await alice.add_folder(tmp_path / "scores", "scores")
        removed = await share_and_accept(alice, bob, "scores", tmp_path / "bob")
        remaining = await share_and_accept(alice, carol, "scores", tmp_path / "carol", Role.ADMIN)
        # The log is the address book: Bob and Carol, who know each other's address, sync
        # directly too, without sharing anything with each other.
        await until(lambda: bob.device_id in carol.peers.links, "bob and carol connect")
        await until(lambda: len(remaining.members) == len(removed.members) == 3, "one log")

        (tmp_path / "bob" / "before.txt").write_text("written while a member")
        await until(lambda: (tmp_path / "carol" / "before.txt").exists(), "bob's file")
        owner = folder_of(alice, "scores")
        answer = await alice.remove_member("scores", "bob")
        assert answer == {"folder": "scores", "removed": "bob", "left": False, "epoch": 1}
        await until(lambda: remaining.keyring.current.epoch == 1, "carol gets the new key")
        await until(lambda: remaining.members.role(bob.identity.public_key) is None, "removal")
        assert owner.members.state is not None
        assert owner.members.state.credited[bob.identity.public_key] >= 1

        # Carol's next version reaches Alice, not Bob; sealed as Carol sends it, Bob's keys
        # open nothing (he holds no key of epoch 1).
        (tmp_path / "carol" / "after.txt").write_text("for members only")
        await until(lambda: (tmp_path / "scores" / "after.txt").exists(), "carol's file")
        await anyio.sleep(1)
        assert not (tmp_path / "bob" / "after.txt").exists()
        assert not removed.keyring.holds(1)
        entry = await carol.store.get(remaining.folder_id, "after.txt")
        assert entry is not None
        sealed = seal_record(remaining.keyring.current, entry.signed)
        with pytest.raises(UnknownEpochError):
            open_record(removed.keyring, sealed)

        # Bob, modified to publish anyway, writes on: every member refuses his new version,
        # and keeps the one he made while a member.
        removed.members.may_author = lambda device, sequence: True  # type: ignore[method-assign]
        removed.members.is_member = lambda device: True  # type: ignore[method-assign]
        (tmp_path / "bob" / "before.txt").write_text("vandalised after removal")
        await bob.rescan("scores")
        await anyio.sleep(2)
        assert (tmp_path / "carol" / "before.txt").read_text() == "written while a member"
        assert (tmp_path / "scores" / "before.txt").read_text() == "written while a member"
        members = alice.members("scores")
        assert [m["name"] for m in members["members"]] == [alice.device_name, "carol"]
        assert members["epoch"] == 1
        assert members["role"] == "owner"
        # Carol, an admin whose configuration still shares the folder with Bob, does not
        # admit him again when he reconnects.
        assert remaining.members.role(bob.identity.public_key) is None
        assert len(remaining.members) == len(owner.members)


async def test_joining_by_link_needs_nothing_pasted_back(tmp_path: Path) -> None:
    """Bob knows nobody: the link alone gets him admitted, the key and the files; a used,
    expired, revoked or mistyped invitation gets one clear sentence, and a good one later
    still works."""
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "requiem.pdf").write_bytes(b"Faure")
    async with nodes(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await alice.add_folder(scores, "scores")
        invited = await alice.invite("scores", role=Role.WRITER, name="Bob")
        link = invited["link"]
        assert link.startswith("commonsync://join/")
        runner = await bob.join(link, tmp_path / "bob")
        assert runner.label == "scores"
        await until(lambda: (tmp_path / "bob" / "requiem.pdf").exists(), "the files arrive")
        joined = folder_of(bob, "scores")
        await until(lambda: joined.members.my_role is Role.WRITER, "bob is a writer")
        assert [m["name"] for m in alice.members("scores")["members"]][-1] == "Bob"
        (tmp_path / "bob" / "bob.txt").write_text("from bob")
        await until(lambda: (scores / "bob.txt").exists(), "bob's file reaches alice")

        # Used up (1 use), then mistyped, expired and revoked: refused, each saying why.
        with pytest.raises(RequestConflictError, match="already used"):
            await carol.join(link, tmp_path / "carol")
        good = await alice.invite("scores", role=Role.READER)
        payload, secret = good["link"].split("#")
        typo = payload + "#" + ("b" if secret[0] != "b" else "c") + secret[1:]
        with pytest.raises(RequestConflictError, match="secret does not match"):
            await carol.join(typo, tmp_path / "carol")
        with pytest.raises(InvalidRequestError, match="lacks its secret"):
            await carol.join(payload, tmp_path / "carol")
        revoked = await alice.invite("scores")
        await alice.revoke_invitation("scores", revoked["invitation"])
        with pytest.raises(RequestConflictError, match="revoked"):
            await carol.join(revoked["link"], tmp_path / "carol")
        owner = folder_of(alice, "scores")
        secret_ = new_secret()
        expired = await owner.append_log_entry(
            Invite(invitation_key(secret_), Role.WRITER, int(time.time()) - 1, 1), int(time.time())
        )
        stale = JoinLink(owner.folder_id, expired.hash, "scores", secret_, "", parse(invited))
        with pytest.raises(RequestConflictError, match="expired"):
            await carol.join(str(stale), tmp_path / "carol")
        assert not (tmp_path / "carol").exists() or not any((tmp_path / "carol").iterdir())

        await carol.join(good["link"], tmp_path / "carol")  # the good one still works
        await until(lambda: (tmp_path / "carol" / "bob.txt").exists(), "carol gets the files")
        assert folder_of(carol, "scores").members.my_role is Role.READER


def parse(invited: dict[str, object]) -> tuple[tuple[DeviceId, tuple[str, ...]], ...]:
    return JoinLink.parse(str(invited["link"])).devices


async def test_admins_apart_converge_and_the_removal_wins(tmp_path: Path) -> None:
    """Alice (owner) removes Carol while Bob (admin), cut off from her, makes Carol a
    reader: once they meet, both hold the same log heads and Carol is removed."""
    (tmp_path / "scores").mkdir()
    async with nodes(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await alice.add_folder(tmp_path / "scores", "scores")
        await bob.join((await alice.invite("scores", role=Role.ADMIN))["link"], tmp_path / "b")
        await carol.join((await alice.invite("scores"))["link"], tmp_path / "c")
        ours, theirs = folder_of(alice, "scores"), folder_of(bob, "scores")
        await until(lambda: len(theirs.members) == len(ours.members) == 5, "one log")
        await until(lambda: theirs.members.heads == ours.members.heads, "the same heads")

        # Apart: Bob forgets where Alice is, and their session ends.
        known = bob.config.device(alice.device_id)
        assert known is not None
        addresses, known.addresses = known.addresses, []
        bob.peers.restart(alice.device_id)
        await until(lambda: alice.device_id not in bob.peers.links, "bob and alice are apart")
        await alice.remove_member("scores", carol.device_id.short_str)
        await bob.set_role("scores", carol.device_id.short_str, Role.READER)
        assert theirs.members.role(carol.identity.public_key) is Role.READER
        assert ours.members.heads != theirs.members.heads

        # They meet again: one log, the same on both, without Carol.
        known.addresses = addresses
        bob.peers.dial(alice.device_id)
        await until(lambda: theirs.members.heads == ours.members.heads, "the logs merge")
        assert len(ours.members.heads) == 2  # the fork, until someone writes after both
        # Bob opens the new epoch's secret right after taking the entries (the heads match a
        # moment before).
        await until(lambda: theirs.keyring.current.epoch == 1, "bob holds the new epoch")
        for folder in (ours, theirs):
            assert folder.members.role(carol.identity.public_key) is None
            assert folder.keyring.current.epoch == 1


@pytest.mark.slow
async def test_members_join_and_sync_while_the_inviting_owner_is_away(tmp_path: Path) -> None:
    """No `device add` anywhere: Anna invites three people and goes offline; the last two
    are admitted by Ben (an admin, whose address Anna's links carry), and all three sync
    with each other, found on the LAN through the folder's log."""
    (tmp_path / "anna").mkdir()
    (tmp_path / "anna" / "agenda.txt").write_text("rehearsal on Tuesday")
    async with anyio.create_task_group() as tasks:
        running: dict[str, tuple[Node, anyio.CancelScope]] = {}

        async def run(name: str, ready: anyio.Event) -> None:
            with anyio.CancelScope() as scope:
                lan = NodeConfig(listen="127.0.0.1:0", discovery_interfaces=["127.0.0.1"])
                async with Node.open(tmp_path / "homes" / name, lan) as node:
                    running[name] = (node, scope)
                    ready.set()
                    await anyio.sleep_forever()

        for name in ("anna", "ben", "chloe", "dan"):
            ready = anyio.Event()
            tasks.start_soon(run, name, ready)
            await ready.wait()
        anna, ben, chloe, dan = (running[n][0] for n in ("anna", "ben", "chloe", "dan"))
        await anna.add_folder(tmp_path / "anna", "choir")
        await ben.join((await anna.invite("choir", role=Role.ADMIN))["link"], tmp_path / "ben")
        await until(lambda: (tmp_path / "ben" / "agenda.txt").exists(), "ben gets the agenda")
        await until(lambda: bool(anna.peers.discovered_addresses(ben.device_id)), "ben seen")
        links = [(await anna.invite("choir", name=n))["link"] for n in ("chloe", "dan")]
        running["anna"][1].cancel()  # Anna goes offline
        await until(lambda: anna.device_id not in ben.peers.links, "anna is gone")

        await chloe.join(links[0], tmp_path / "chloe")
        await dan.join(links[1], tmp_path / "dan")
        for name in ("chloe", "dan"):
            await until(lambda n=name: (tmp_path / n / "agenda.txt").exists(), f"{name} syncs")
        (tmp_path / "chloe" / "alto.txt").write_text("alto part")
        await until(lambda: (tmp_path / "dan" / "alto.txt").exists(), "chloe's file reaches dan")
        for node in (ben, chloe, dan):
            names = [m["name"] for m in node.members("choir")["members"]]
            assert len(names) == 4
            assert {"chloe", "dan"} <= set(names)
        tasks.cancel_scope.cancel()


async def test_an_admin_starts_the_epoch_a_removal_left_missing(tmp_path: Path) -> None:
    """A removal written without its new epoch (its author stopped between the two entries,
    or a merge voided the epoch): the remaining admin starts one by itself, the remaining
    member takes its key, the removed one gets none."""
    (tmp_path / "scores").mkdir()
    async with nodes(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await alice.add_folder(tmp_path / "scores", "scores")
        await bob.join((await alice.invite("scores"))["link"], tmp_path / "bob")
        await carol.join((await alice.invite("scores"))["link"], tmp_path / "carol")
        owner, removed, remaining = (folder_of(n, "scores") for n in (alice, bob, carol))
        await until(lambda: len(remaining.members) == len(owner.members), "one log")

        gone = owner.members.role(bob.identity.public_key)
        assert gone is Role.WRITER
        member = next(
            m
            for m in owner.members.state.members.values()  # type: ignore[union-attr]
            if bob.identity.public_key in m.devices
        )
        await owner.append_log_entry(RemoveMember(member.id, ()), int(time.time()))
        await until(lambda: owner.keyring.current.epoch == 1, "alice starts epoch 1")
        assert owner.members.log is not None
        assert not owner.members.log.needs_new_epoch()
        await until(lambda: remaining.keyring.current.epoch == 1, "carol takes its key")
        assert not removed.keyring.holds(1)


async def test_members_say_when_a_device_was_last_seen(tmp_path: Path) -> None:
    """A member's device that went away is listed with the time its last session ended
    (and the command line says how long ago), not only as "not connected"."""
    from commonsyncd.members_cli import _device_state

    (tmp_path / "scores").mkdir()
    async with Node.open(tmp_path / "homes" / "alice", loopback()) as alice:
        async with Node.open(tmp_path / "homes" / "bob", loopback()) as bob:
            await alice.add_folder(tmp_path / "scores", "scores")
            await bob.join((await alice.invite("scores", name="Bob"))["link"], tmp_path / "b")
            await until(lambda: bob.device_id in alice.peers.links, "bob is connected")
            listed = alice.members("scores")["members"]
            online = next(m for m in listed if m["name"] == "Bob")["devices"][0]
            assert online["connected"]
            assert _device_state(online) == "connected"
        await until(lambda: bob.device_id not in alice.peers.links, "bob is gone")
        listed = alice.members("scores")["members"]
        gone = next(m for m in listed if m["name"] == "Bob")["devices"][0]
        assert not gone["connected"]
        assert gone["last_seen"] == pytest.approx(time.time(), abs=60)
        assert _device_state(gone, now=gone["last_seen"] + 3 * 3600 + 5) == "last seen 3 h ago"
        mine = next(m for m in listed if m["name"] != "Bob")["devices"][0]
        assert (mine["last_seen"], _device_state(mine)) == (None, "this device")
