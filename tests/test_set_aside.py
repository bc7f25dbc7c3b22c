"""A version taken before its author's removal or demotion, beyond its credits, is set aside.

Carol, a writer, edits a file while Bob, an admin cut off from her and from Alice, makes her a
reader crediting none of it (he never saw the edit). Alice took the edit first; every member
that knows of the demotion refuses it. Once Alice hears of it she sets it aside: the file
goes to her versions folder (nothing is lost, nothing is published), and the version the log
takes comes back from her peers (SPEC.md §15.5, "Versions set aside"). Before, Alice kept the
edit alone and the members never converged (the gap STRANDED of tests/test_roles_model.py).

Real Nodes on loopback; the Folder-level test stops between the store's transaction and the
move of the file, as a crash would, and checks that opening the folder again finishes it
before anything scans.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from commonsync import DeviceIdentity, Node
from commonsync.formats.chunks import chunk_id
from commonsync.formats.records import ChunkEntry, Kind, Record, sign_record
from commonsync.formats.versionvector import VersionVector
from commonsync.membership.entries import Role
from commonsync.sync import layout
from commonsync.sync.exchange import RemoteRecord
from commonsync.sync.folder import open_folder
from commonsync.sync.store import open_store
from tests.test_attack_memory import FOLDER_KEY, ME, source
from tests.test_members_sync import folder_of, nodes
from tests.test_node import until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def kept_versions(root: Path) -> dict[str, bytes]:
    """The files of a folder's versions folder, by name under it."""
    versions = root / layout.VERSIONS_DIR
    if not versions.is_dir():
        return {}
    return {
        str(p.relative_to(versions)): p.read_bytes() for p in versions.rglob("*") if p.is_file()
    }


def content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def cut_off(node: Node, *others: Node) -> None:
    """``node`` and ``others`` forget where each other is, and their sessions end."""
    for a, b in [(node, o) for o in others] + [(o, node) for o in others]:
        known = a.config.device(b.device_id)
        if known is not None:
            known.addresses = []
        a.peers.restart(b.device_id)


async def test_an_edit_taken_before_its_authors_demotion_is_set_aside(tmp_path: Path) -> None:
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "part.txt").write_bytes(b"first, by alice")
    async with nodes(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        await alice.add_folder(scores, "scores")
        await bob.join((await alice.invite("scores", role=Role.ADMIN))["link"], tmp_path / "b")
        await carol.join((await alice.invite("scores"))["link"], tmp_path / "c")
        ours, bobs, carols = (folder_of(n, "scores") for n in (alice, bob, carol))
        for folder in (bobs, carols):
            await until(lambda f=folder: f.members.heads == ours.members.heads, "one log")
        await until(lambda: (tmp_path / "c" / "part.txt").exists(), "carol has the part")
        await until(lambda: (tmp_path / "b" / "part.txt").exists(), "bob has the part")

        cut_off(bob, alice, carol)
        await until(lambda: not bob.peers.links, "bob is cut off")
        (tmp_path / "c" / "part.txt").write_bytes(b"second, by carol")
        await until(lambda: content(scores / "part.txt") == b"second, by carol", "alice takes it")
        # Bob never saw Carol's edit: she is credited with none of it.
        await bob.set_role("scores", carol.device_id.short_str, Role.READER)

        # Bob meets Alice again: she hears of the demotion, and sets the edit aside.
        known = bob.config.device(alice.device_id)
        assert known is not None
        known.addresses = [f"127.0.0.1:{alice.port}"]
        bob.peers.dial(alice.device_id)
        await until(lambda: ours.members.heads == bobs.members.heads, "alice hears of it")
        await until(
            lambda: content(scores / "part.txt") == b"first, by alice",
            "the version the log takes comes back to alice",
        )
        assert b"second, by carol" in kept_versions(scores).values()
        (event,) = [e for e in alice.event_bus.recent if e["kind"] == "set aside"]
        assert event["path"] == "part.txt"
        assert event["detail"].startswith("kept as .commonsync/versions/part~")
        assert (tmp_path / "b" / "part.txt").read_bytes() == b"first, by alice"
        entry = await alice.store.get(ours.folder_id, "part.txt")
        assert entry is not None
        assert entry.record.author == alice.identity.public_key
        assert await alice.store.set_aside_paths(ours.folder_id) == []
        # Alice's scans publish nothing of it: no addition, no deletion.
        await ours.scan()
        assert (await alice.store.get(ours.folder_id, "part.txt")) == entry

        # Carol, a reader now, keeps her edit, unshared, and is told so.
        await until(lambda: carols.members.my_role is Role.READER, "carol hears of it")
        await until(lambda: carols.unshared_changes == 1, "carol's change is counted unshared")
        assert (tmp_path / "c" / "part.txt").read_bytes() == b"second, by carol"


async def test_a_restart_moves_the_files_set_aside_before_any_scan(tmp_path: Path) -> None:
    """The store sets a version aside in the transaction that takes the entries; the file
    is moved after. Stopped in between, the folder moves it when opened again, before its
    first scan: the scan never publishes it as this device's own file."""
    root = tmp_path / "root"
    root.mkdir()
    writer = DeviceIdentity.generate()
    content = b"a part a writer made after its demotion"
    async with open_store(tmp_path / "index.db") as store:
        async with open_folder(root, FOLDER_KEY, ME, store) as folder:
            (root / "seed.txt").write_bytes(content)
            await folder.scan()
            record = Record(
                path="part.txt",
                kind=Kind.FILE,
                size=len(content),
                mtime_ns=1_700_000_000 * 10**9,
                mode=0o644,
                deleted=False,
                version=VersionVector.from_mapping({writer.device_id.short: 1_700_000_000}),
                chunks=(ChunkEntry(chunk_id(FOLDER_KEY.chunk_id_key, content), len(content)),),
                symlink_target="",
                author=writer.public_key,
                sequence=5,
            )
            signed = sign_record(writer, FOLDER_KEY.folder_id, record)
            await folder.receive_records(source(writer), [RemoteRecord(record, signed)])
            with anyio.fail_after(10):
                while not (await store.get(FOLDER_KEY.folder_id, "part.txt")).on_disk:  # type: ignore[union-attr]
                    await anyio.sleep(0.05)
            # The log now credits the writer with sequence 4: stored, and then a stop.
            await store.add_membership_entries(
                FOLDER_KEY.folder_id,
                [],
                highest_taken=lambda author: 4 if author == writer.public_key else None,
            )
        assert (root / "part.txt").read_bytes() == content  # not moved yet
        assert await store.set_aside_paths(FOLDER_KEY.folder_id) == ["part.txt"]

        async with open_folder(root, FOLDER_KEY, ME, store) as folder:
            assert not (root / "part.txt").exists()
            assert content in kept_versions(root).values()
            assert await store.set_aside_paths(FOLDER_KEY.folder_id) == []
            await folder.scan()
            assert await store.get(FOLDER_KEY.folder_id, "part.txt") is None
            assert (root / "seed.txt").read_bytes() == content
