"""A member's devices between library Nodes: a second device of a member, and one of them
lost (SPEC.md §15.2 add device / remove device, §15.5 credits, §15.7 epochs).

Real Nodes on loopback, driven through their API, as in ``test_members_sync``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from commonsync import Node
from commonsync.errors import NotFoundError, RequestConflictError
from commonsync.membership.entries import Role
from commonsync.membership.log import decode_log
from commonsync.sync.folder import Folder

from .test_members_sync import folder_of, know, nodes, share_and_accept
from .test_node import loopback, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def apart(node: Node, other: Node) -> list[list[str]]:
    """``node`` and ``other`` forget where the other is and their session ends; the
    addresses, to give back with :func:`together`."""
    kept = []
    for a, b in ((node, other), (other, node)):
        known = a.config.device(b.device_id)
        assert known is not None
        kept.append(known.addresses)
        known.addresses = []
        a.peers.restart(b.device_id)
    await until(lambda: other.device_id not in node.peers.links, "the session ends")
    await until(lambda: node.device_id not in other.peers.links, "on both sides")
    return kept


def together(node: Node, other: Node, addresses: list[list[str]]) -> None:
    for (a, b), kept in zip(((node, other), (other, node)), addresses, strict=True):
        known = a.config.device(b.device_id)
        assert known is not None
        known.addresses = kept
    node.peers.dial(other.device_id)


async def test_a_lost_device_is_removed_and_its_member_keeps_syncing(tmp_path: Path) -> None:
    """Bob shares the folder with his phone as a device of his own. While Alice is cut off,
    the phone's next version reaches Bob's laptop only, and Alice declares the phone lost:
    its versions up to the sequence credited in the removal (what Alice held of it) stay
    valid (Carol, admitted later, takes them), the one Alice never saw and those after are
    refused, it holds no key of the new epoch, and Bob's laptop goes on syncing."""
    scores = tmp_path / "scores"
    scores.mkdir()
    async with nodes(tmp_path, "alice", "bob", "phone", "carol") as (alice, bob, phone, carol):
        await know(alice, bob, "bob")
        await know(bob, alice)
        await know(bob, phone, "phone")
        await know(phone, bob)
        await alice.add_folder(scores, "scores")
        laptop = await share_and_accept(alice, bob, "scores", tmp_path / "bob")
        with pytest.raises(RequestConflictError, match="already shared"):
            await bob.add_member_device("scores", "bob", str(alice.device_id))
        answer = await bob.add_member_device("scores", "bob", "phone")
        assert answer == {"folder": "scores", "member": "bob", "device": str(phone.device_id)}
        await until(lambda: bool(phone.offers), "the folder is offered to the phone")
        await phone.accept_folder("scores", tmp_path / "phone")
        theirs = folder_of(phone, "scores")
        await until(lambda: theirs.members.log is not None, "the log reaches the phone")
        owner = folder_of(alice, "scores")
        await until(lambda: len(owner.members) == 3, "the phone's entry reaches alice")
        assert theirs.members.my_role is Role.WRITER
        listed = alice.member_devices("scores", "bob")["members"]
        assert [len(m["devices"]) for m in listed] == [2]
        assert owner.members.state is not None
        assert len(owner.members.state.members) == 2  # bob is one member with two devices

        (tmp_path / "phone" / "early.txt").write_text("from the phone, while it was Bob's")
        await until(lambda: (scores / "early.txt").exists(), "the phone's file reaches alice")
        # Alice is cut off; the phone's next version reaches Bob's laptop only.
        addresses = await apart(alice, bob)
        (tmp_path / "phone" / "late.txt").write_text("made before the removal, unseen by alice")
        await until(lambda: (tmp_path / "bob" / "late.txt").exists(), "it reaches the laptop")

        # Refused with a sentence a person can act on.
        short = phone.device_id.short_str
        with pytest.raises(NotFoundError, match="no device 'nobody'"):
            await alice.device_lost("scores", "nobody")
        with pytest.raises(RequestConflictError, match="is this device"):
            await alice.device_lost("scores", alice.device_id.short_str)
        with pytest.raises(RequestConflictError, match=r"may remove a device of .* a writer"):
            await bob.device_lost("scores", alice.device_id.short_str)
        lost = await alice.device_lost("scores", short)
        assert (lost["member"], lost["epoch"], lost["epoch_pending"]) == ("bob", 1, False)
        credited = lost["credited"]
        assert credited >= 1  # the last version of the phone that alice holds: early.txt's
        assert owner.members.state.credited[phone.identity.public_key] == credited
        assert [m["devices"][0]["id"] for m in alice.member_devices("scores", "bob")["members"]] \
            == [str(bob.device_id)]  # fmt: skip
        with pytest.raises(RequestConflictError, match="only device of bob"):
            await alice.device_lost("scores", bob.device_id.short_str)

        # They meet again. Bob's laptop, modified to forward what the log no longer lets the
        # phone write (and so not to set it aside, as an honest device does once the removal
        # reaches it), sends the late version on: Alice refuses it (its sequence is above the
        # credit), and Bob's laptop goes on syncing with the new key.
        laptop.members.may_author = lambda device, sequence: True  # type: ignore[method-assign]
        laptop.members._highest_taken = lambda *states: None  # type: ignore[method-assign]
        together(alice, bob, addresses)
        await until(lambda: laptop.keyring.current.epoch == 1, "bob's laptop gets epoch 1")
        await until(lambda: bool(owner.refusals()), "alice refuses the phone's late version")
        assert "is not a writer" in str(owner.refusals()[0])
        problems = [p["problem"] for p in alice.folder("scores").status()["problems"]]
        assert problems == [
            f"refused 1 change from bob (device {short}), which was removed from scores: what "
            f"it made after version {credited} (the last credited at its removal) is not taken"
        ]
        (tmp_path / "phone" / "after.txt").write_text("after the removal")
        await phone.rescan("scores")
        (tmp_path / "bob" / "laptop.txt").write_text("bob goes on")
        await until(lambda: (scores / "laptop.txt").exists(), "bob's laptop still syncs")
        await anyio.sleep(1)
        assert not (scores / "late.txt").exists()
        assert not (scores / "after.txt").exists()
        assert not (tmp_path / "bob" / "after.txt").exists()
        assert not (tmp_path / "phone" / "laptop.txt").exists()
        assert not theirs.keyring.holds(1)
        assert (scores / "early.txt").exists()

        # Carol, admitted after the removal, takes the phone's version credited to it.
        await carol.join((await alice.invite("scores"))["link"], tmp_path / "carol")
        await until(lambda: (tmp_path / "carol" / "laptop.txt").exists(), "carol syncs")
        await until(lambda: (tmp_path / "carol" / "early.txt").exists(), "a credited version")
        assert not (tmp_path / "carol" / "late.txt").exists()


@asynccontextmanager
async def alice_shares_with_bob(
    tmp_path: Path, role: Role = Role.WRITER
) -> AsyncIterator[tuple[Node, Node, Folder]]:
    """Alice's folder ``scores`` (at ``tmp_path/scores``) shared with Bob in ``role``; his
    copy at ``tmp_path/bob``, and his Folder."""
    scores = tmp_path / "scores"
    scores.mkdir()
    async with nodes(tmp_path, "alice", "bob") as (alice, bob):
        await know(alice, bob, "bob")
        await know(bob, alice)
        await alice.add_folder(scores, "scores")
        yield alice, bob, await share_and_accept(alice, bob, "scores", tmp_path / "bob", role)


async def test_an_older_log_served_by_a_member_is_refused_and_reported(tmp_path: Path) -> None:
    """Bob, an admin, writes an invitation, then serves the log he had before it (a modified
    client, or a restored backup): Alice refuses his log and takes none of his entries while
    his log lacks what he showed her, says so in her folder's problems, and keeps syncing;
    once his log holds it again (he takes what she sends him), the problem is gone."""
    scores = tmp_path / "scores"
    async with alice_shares_with_bob(tmp_path, Role.ADMIN) as (alice, bob, theirs):
        ours = folder_of(alice, "scores")
        assert theirs.members.log is not None
        before = theirs.members.log.entries()
        invited = await bob.invite("scores", code=False)
        assert ours.members.log is not None
        entries = ours.members.log.entries
        wanted = invited["invitation"]
        await until(
            lambda: any(e.hash.hex().startswith(wanted) for e in entries()),
            "bob's invitation reaches alice",
        )
        assert not alice.folder("scores").status()["problems"]

        # Bob's log goes back to what it was before his invitation.
        theirs.members.log = decode_log(ours.folder_id, before)
        bob.peers.restart(alice.device_id)
        await until(lambda: bool(ours.members.rollbacks), "alice sees an older log")
        problems = alice.folder("scores").status()["problems"]
        assert len(problems) == 1
        assert (
            "serves an older membership log of scores: it lacks 1 entry" in problems[0]["problem"]
        )
        assert problems[0]["problem"].startswith("bob (device ")
        assert "commonsync device lost scores" in problems[0]["hint"]
        (tmp_path / "bob" / "bass.txt").write_text("still syncing")
        await until(lambda: (scores / "bass.txt").exists(), "bob's file still reaches alice")

        # Alice sent him what he lacks; at his next session his log holds it: no problem.
        await until(lambda: theirs.members.heads == ours.members.heads, "bob takes it again")
        bob.peers.restart(alice.device_id)
        await until(lambda: not ours.members.rollbacks, "the problem is gone")
        assert not alice.folder("scores").status()["problems"]


async def test_a_member_leaving_with_changes_nobody_took_is_told_so(tmp_path: Path) -> None:
    """Bob writes while cut off from Alice, then leaves the folder: refused, since nobody
    would ever take that change (once he has left, no member syncs with him). Together again,
    once Alice's progress says she took it, he leaves; with --force he could have at once."""
    scores = tmp_path / "scores"
    async with alice_shares_with_bob(tmp_path) as (alice, bob, _theirs):
        kept = await apart(bob, alice)
        (tmp_path / "bob" / "late.txt").write_text("written while apart")
        await bob.rescan("scores")
        with pytest.raises(RequestConflictError, match="1 change of yours in folder scores has"):
            await bob.remove_member("scores", "bob")
        assert "bob" in {m["name"] for m in bob.members("scores")["members"]}

        together(bob, alice, kept)
        await until(lambda: (scores / "late.txt").exists(), "bob's change reaches alice")
        with anyio.fail_after(30):
            while True:
                try:
                    await bob.remove_member("scores", "bob")
                    break
                except RequestConflictError:
                    await anyio.sleep(0.2)  # until alice's progress report says she has it
        ours = folder_of(alice, "scores")
        await until(
            lambda: (
                "bob" not in {m.name for m in ours.members.state.members.values()}
                if ours.members.state is not None
                else False
            ),
            "bob's leaving reaches alice",
        )
        assert (scores / "late.txt").read_text() == "written while apart"


async def test_an_admin_making_itself_a_reader_with_changes_nobody_took_is_told_so(
    tmp_path: Path,
) -> None:
    """As for leaving: Bob, an admin, writes while cut off from Alice, then makes himself a
    reader: refused, since once a reader he keeps no copy of that change if it loses a
    conflict. With --force he is a reader, credited with the change, which Alice takes when
    they meet again (had it lost a conflict meanwhile, it would stay on his device alone)."""
    async with alice_shares_with_bob(tmp_path, Role.ADMIN) as (alice, bob, theirs):
        kept = await apart(bob, alice)
        (tmp_path / "bob" / "late.txt").write_text("written while apart")
        await bob.rescan("scores")
        with pytest.raises(RequestConflictError, match="once you are a reader, one that loses"):
            await bob.set_role("scores", "bob", Role.READER)
        assert theirs.members.my_role is Role.ADMIN
        await bob.set_role("scores", "bob", Role.READER, force=True)
        assert theirs.members.my_role is Role.READER
        together(bob, alice, kept)
        await until(lambda: (tmp_path / "scores" / "late.txt").exists(), "alice takes it")


async def test_an_older_log_is_recognised_after_this_device_restarts(tmp_path: Path) -> None:
    """What a peer showed of its log is kept with the index: Bob's invitation reaches Alice,
    Alice's node stops and starts again, and Bob comes back serving the log he had before
    his invitation. Alice still sees it for an older log (it lacks 1 entry he showed her)."""
    scores = tmp_path / "scores"
    scores.mkdir()
    async with nodes(tmp_path, "bob") as (bob,):
        async with Node.open(tmp_path / "homes" / "alice", loopback()) as alice:
            await know(alice, bob, "bob")
            await know(bob, alice)
            await alice.add_folder(scores, "scores")
            theirs = await share_and_accept(alice, bob, "scores", tmp_path / "bob", Role.ADMIN)
            assert theirs.members.log is not None
            before = theirs.members.log.entries()
            wanted = (await bob.invite("scores", code=False))["invitation"]
            ours = folder_of(alice, "scores")
            assert ours.members.log is not None
            entries = ours.members.log.entries
            await until(
                lambda: any(e.hash.hex().startswith(wanted) for e in entries()),
                "bob's invitation reaches alice",
            )
            config = alice.config
        await until(lambda: not bob.peers.links, "alice is gone")
        theirs.members.log = decode_log(theirs.folder_id, before)
        async with Node.open(tmp_path / "homes" / "alice", config) as alice:
            await until(lambda: alice.folder("scores").folder is not None, "the folder runs")
            ours = folder_of(alice, "scores")
            await until(lambda: bool(ours.members.rollbacks), "alice sees an older log")
            problems = alice.folder("scores").status()["problems"]
            assert len(problems) == 1
            assert (
                "serves an older membership log of scores: it lacks 1 entry"
                in (problems[0]["problem"])
            )


async def test_a_writer_removes_its_own_lost_device_and_an_admin_starts_the_epoch(
    tmp_path: Path,
) -> None:
    """Bob, a writer, may remove his own phone but not start a key epoch: the first admin
    device that sees the removal does (SPEC.md §15.7), sealed to Alice and Bob's laptop."""
    scores = tmp_path / "scores"
    scores.mkdir()
    async with nodes(tmp_path, "alice", "bob", "phone") as (alice, bob, phone):
        await know(alice, bob, "bob")
        await know(bob, alice)
        await know(bob, phone, "phone")
        await know(phone, bob)
        await alice.add_folder(scores, "scores")
        laptop = await share_and_accept(alice, bob, "scores", tmp_path / "bob")
        await bob.add_member_device("scores", "bob", "phone")
        await until(lambda: bool(phone.offers), "the folder is offered to the phone")
        await phone.accept_folder("scores", tmp_path / "phone")
        lost_one = folder_of(phone, "scores")
        await until(lambda: lost_one.members.my_role is Role.WRITER, "the phone is bob's")

        answer = await bob.device_lost("scores", "phone")
        assert (answer["epoch"], answer["epoch_pending"]) == (0, True)
        owner = folder_of(alice, "scores")
        await until(lambda: owner.keyring.current.epoch == 1, "alice starts epoch 1")
        await until(lambda: laptop.keyring.current.epoch == 1, "bob's laptop gets it")
        assert owner.members.state is not None
        assert owner.members.state.epoch is not None
        assert set(owner.members.state.epoch.wrapped) == {
            alice.identity.public_key,
            bob.identity.public_key,
        }
        assert not lost_one.keyring.holds(1)
