"""What two folders say to each other: no record goes back to the device that wrote it, unless
that device starts over; small files travel in chunk batches.

Two real folders in one process, each with its own SQLite store and directory, over a real
channel on loopback.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from commonsyncd.demo import tree

from commonsync import DeviceIdentity, Folder, FolderKey, Session, open_folder
from commonsync.formats.messages import ChunkBatchRequest, ChunkRequest, Message
from commonsync.formats.records import ChunkEntry, decode_verified
from commonsync.sync import apply
from commonsync.sync.exchange import PeerExchange, RemoteRecord
from commonsync.sync.layout import is_conflict_copy
from commonsync.sync.store import IndexEntry, PeerProgress, open_store
from commonsync.wire.channel import accept_channel, connect_channel

from .conftest import make_entry, make_record

pytestmark = pytest.mark.anyio
TIMEOUT = 30


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


class Side:
    """One device: its identity, store, folder, and what its folder received."""

    def __init__(self, name: str, base: Path, key: FolderKey, identity: DeviceIdentity) -> None:
        self.name = name
        self.root = base / name
        self.state = base / f"{name}.db"
        self.key = key
        self.identity = identity
        self.received: list[RemoteRecord] = []
        self.sent: list[Message] = []

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Folder]:
        self.root.mkdir(exist_ok=True)
        async with (
            open_store(self.state) as store,
            open_folder(self.root, self.key, self.identity, store, device_name=self.name) as f,
        ):
            take = f.receive_records

            async def receive(source: PeerExchange, records: Sequence[RemoteRecord]) -> None:
                self.received.extend(records)
                await take(source, records)

            f.receive_records = receive  # type: ignore[method-assign]
            yield f


def recorded(session: Session, side: Side) -> Session:
    """``session``, with every message it sends kept in ``side.sent``."""
    send = session.send

    async def send_and_keep(message: Message) -> None:
        side.sent.append(message)
        await send(message)

    session.send = send_and_keep  # type: ignore[method-assign]
    return session


@asynccontextmanager
async def connected(a: Side, fa: Folder, b: Side, fb: Folder) -> AsyncIterator[None]:
    """A session between the two folders for as long as the block lasts."""
    async with anyio.create_task_group() as tasks:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def b_serves(stream: anyio.abc.ByteStream) -> None:
            channel = await accept_channel(stream, b.identity, accept=lambda d: True)
            await fb.sync(recorded(Session(channel), b))

        tasks.start_soon(listener.serve, b_serves)
        channel = await connect_channel("127.0.0.1", port, a.identity, accept=lambda d: True)
        tasks.start_soon(fa.sync, recorded(Session(channel), a))
        try:
            yield
        finally:
            tasks.cancel_scope.cancel()


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(TIMEOUT):
        while not condition():
            await anyio.sleep(0.05)


def same(a: Side, b: Side) -> bool:
    return tree(a.root) == tree(b.root)


async def test_a_device_is_not_sent_back_what_it_wrote(tmp_path: Path) -> None:
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a" / "docs").mkdir(parents=True)
    for n in range(40):
        (tmp_path / "a" / "docs" / f"{n}.txt").write_bytes(os.urandom(3000))
    async with a.opened() as fa, b.opened() as fb:
        await fa.scan()
        async with connected(a, fa, b, fb):
            await until(lambda: same(a, b))
            # b applied (and re-stored) all 41 records; a has been told how far it has seen.
            _, b_sequence = await fb.index_state()
            await until(lambda: fb.progress().idle)

            async def a_saw_all() -> bool:
                progress = await fa.peer_progress(b.identity.device_id)
                return progress is not None and progress[1] >= (await fb.index_state())[1]

            with anyio.fail_after(TIMEOUT):
                while not await a_saw_all():
                    await anyio.sleep(0.05)
            assert b_sequence > 0
            assert a.received == []  # none of its own 41 records came back

            (b.root / "docs" / "0.txt").write_bytes(b"edited on b")
            await fb.scan()
            await until(lambda: (a.root / "docs" / "0.txt").read_bytes() == b"edited on b")
            assert [r.record.path for r in a.received] == ["docs/0.txt"]
            assert a.received[0].record.author == b.identity.public_key
        # The 40 files of one chunk each came in batches, not one request per file.
        batches = [m for m in b.sent if isinstance(m, ChunkBatchRequest)]
        assert 1 <= len(batches) <= 2
        assert sum(len(m.chunks) for m in batches) == 40
        assert not [m for m in b.sent if isinstance(m, ChunkRequest)]


async def test_a_device_that_lost_its_index_gets_its_own_files_back(tmp_path: Path) -> None:
    key = FolderKey.generate()
    identity = DeviceIdentity.generate()
    a = Side("a", tmp_path, key, identity)
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    for n in range(5):
        (tmp_path / "a" / f"{n}.bin").write_bytes(os.urandom(5000))
    expected = tree(tmp_path / "a")
    async with a.opened() as fa, b.opened() as fb:
        await fa.scan()
        async with connected(a, fa, b, fb):
            # Until b has recorded the files as written (not only written them).
            await until(lambda: fb.stats.files_applied == 5)
    # The same device, reinstalled: its index and its copy of the folder are gone.
    os.remove(a.state)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{a.state}{suffix}"):
            os.remove(f"{a.state}{suffix}")
    for n in range(5):
        os.remove(tmp_path / "a" / f"{n}.bin")
    async with a.opened() as fa, b.opened() as fb, connected(a, fa, b, fb):
        await until(lambda: tree(tmp_path / "a") == expected)
    assert {r.record.author for r in a.received} == {identity.public_key}


@pytest.mark.parametrize("written", [False, True], ids=["not written", "written"])
async def test_versions_taken_before_a_restart_are_still_written(
    tmp_path: Path, written: bool
) -> None:
    """A device stopped after it took versions from a peer (and recorded how far it had seen)
    but before writing them writes them when it starts again: the peer will not send them
    twice. Stopped after writing them but before recording that, it records them, without
    taking its own writing for a local change (no conflict copies)."""
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    for n in range(3):
        (tmp_path / "a" / f"{n}.txt").write_bytes(os.urandom(2000))
    (tmp_path / "a" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    async with a.opened() as fa:
        await fa.scan()
        index_id, sequence = await fa.index_state()
        taken = [
            IndexEntry(decode_verified(row.signed), row.signed, on_disk=False)
            for row in await fa.records_since(0, 100)
        ]
    if written:
        shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns(".*"))
    # b's state when it stopped: the versions stored as taken, a's index seen to its end.
    async with open_store(b.state) as store:
        await store.add_folder(key.folder_id, "b")
        await store.put(key.folder_id, taken)
        progress = PeerProgress(index_id, sequence)
        await store.set_peer_progress(key.folder_id, a.identity.device_id, progress)
    async with a.opened() as fa, b.opened() as fb, connected(a, fa, b, fb):
        await until(lambda: same(a, b))
        await until(lambda: fb.stats.files_applied == 4)
    assert b.received == []  # nothing was sent again: b wrote what it had taken
    assert not [p for p in os.listdir(b.root) if is_conflict_copy(p)]


async def test_editing_a_file_just_received_is_not_a_conflict(tmp_path: Path) -> None:
    """Sequential edits, each made right after the other's arrived (within the scanner's racy
    window, so no local state was recorded for them): never a conflict copy."""
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_bytes(b"written on a")
    async with a.opened() as fa, b.opened() as fb:
        await fa.scan()
        async with connected(a, fa, b, fb):
            await until(lambda: same(a, b))
            for n in range(3):
                for side, folder, other in ((b, fb, a), (a, fa, b)):
                    text = f"edit {n} on {side.name}".encode()
                    (side.root / "f.txt").write_bytes(text)
                    await folder.scan()
                    await until(lambda o=other, t=text: (o.root / "f.txt").read_bytes() == t)
            await until(lambda: fa.progress().idle and fb.progress().idle)
    for side in (a, b):
        names = sorted(p.name for p in side.root.iterdir() if not p.name.startswith("."))
        assert names == ["f.txt"], f"{side.name} holds {names}"
    assert fa.stats.conflicts == fb.stats.conflicts == 0


async def test_a_file_scanned_in_its_racy_window_gets_its_local_state_soon(
    tmp_path: Path,
) -> None:
    """The scanner keeps no local state for a file written just before it was hashed; the
    folder scans again once the window has passed, without being asked, and records it."""
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "new.txt").write_bytes(b"just written")
    async with a.opened() as fa:
        report = await fa.scan()
        assert report.racy == 1
        assert await fa.store.local_file(key.folder_id, "new.txt") is None
        with anyio.fail_after(TIMEOUT):
            while await fa.store.local_file(key.folder_id, "new.txt") is None:
                await anyio.sleep(0.1)


async def saw_all(one: Folder, other: Folder) -> bool:
    """Whether ``one`` has received ``other``'s whole index."""
    progress = await one.peer_progress(other.identity.device_id)
    return progress is not None and progress[1] >= (await other.index_state())[1]


def versions_kept(side: Side) -> list[str]:
    versions = side.root / ".commonsync" / "versions"
    return sorted(str(p.relative_to(versions)) for p in versions.rglob("*") if p.is_file())


async def test_a_permission_change_sends_and_keeps_no_content(tmp_path: Path) -> None:
    """chmod on files (small ones, applied in groups, and a large one) changes their mode on
    the other device in place: no chunk travels or is copied, no version is kept."""
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    names = [f"{n}.txt" for n in range(5)] + ["big.bin"]
    for name in names:
        size = 3 * 1024 * 1024 if name == "big.bin" else 3000
        (tmp_path / "a" / name).write_bytes(os.urandom(size))
        os.utime(tmp_path / "a" / name, (1_700_000_000, 1_700_000_000))  # not racy
    async with a.opened() as fa, b.opened() as fb:
        await fa.scan()
        async with connected(a, fa, b, fb):
            await until(lambda: same(a, b))
            await until(lambda: fb.stats.files_applied == len(names))
            received, local = fb.stats.chunk_bytes_received, fb.stats.chunk_bytes_local
            for name in names:
                (a.root / name).chmod(0o600)
            report = await fa.scan()
            assert report.changed == len(names)
            await until(lambda: all((b.root / n).stat().st_mode & 0o777 == 0o600 for n in names))
            await until(lambda: fb.progress().idle)
        assert (fb.stats.chunk_bytes_received, fb.stats.chunk_bytes_local) == (received, local)
        assert versions_kept(b) == []
        assert (await fb.scan()).changed == 0  # and b publishes nothing back


async def test_a_device_that_lost_its_index_leaves_no_duplicate_versions(
    tmp_path: Path,
) -> None:
    """A device whose index was lost rescans and publishes its files anew; the other device
    already holds exactly that content, and keeps no copy of it as a replaced version."""
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    for n in range(5):
        (tmp_path / "a" / f"{n}.bin").write_bytes(os.urandom(5000))
        os.utime(tmp_path / "a" / f"{n}.bin", (1_700_000_000, 1_700_000_000))
    async with a.opened() as fa, b.opened() as fb:
        await fa.scan()
        async with connected(a, fa, b, fb):
            await until(lambda: fb.stats.files_applied == 5)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{a.state}{suffix}"):
            os.remove(f"{a.state}{suffix}")
    await anyio.sleep(1.1)  # a's new version counters (in seconds) are then newer than its old
    async with a.opened() as fa, b.opened() as fb:
        await fa.scan()
        async with connected(a, fa, b, fb):
            for one, other in ((fa, fb), (fb, fa)):
                with anyio.fail_after(TIMEOUT):
                    while not await saw_all(one, other):
                        await anyio.sleep(0.05)
            await until(lambda: fa.progress().idle and fb.progress().idle)
        assert same(a, b)
    assert versions_kept(a) == versions_kept(b) == []


async def test_a_conflict_copy_edited_on_another_device_converges(tmp_path: Path) -> None:
    """The losing device makes a conflict copy of a version it had just written; the other
    device edits that copy at once: the losing device takes the edit (its copy was not a local
    change) and both settle, with one copy."""
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_bytes(b"original")
    async with a.opened() as fa, b.opened() as fb:
        await fa.scan()
        async with connected(a, fa, b, fb):
            await until(lambda: same(a, b))
        (a.root / "f.txt").write_bytes(b"edit on a")
        await fa.scan()
        await anyio.sleep(0.05)
        (b.root / "f.txt").write_bytes(b"edit on b, later: it wins")
        await fb.scan()

        def copies(side: Side) -> list[str]:
            return [p.name for p in side.root.iterdir() if is_conflict_copy(p.name)]

        async with connected(a, fa, b, fb):
            await until(lambda: bool(copies(b)) and same(a, b))
            (copy,) = copies(a)
            (b.root / copy).write_bytes(b"b edits the copy")
            await fb.scan()
            await until(lambda: (a.root / copy).read_bytes() == b"b edits the copy")
            await until(lambda: fa.progress().idle and fb.progress().idle)
            assert same(a, b)
        assert copies(a) == copies(b) == [copy]
        assert fa.stats.conflicts == 1  # the first, real one


async def test_a_name_written_decomposed_is_synced(tmp_path: Path) -> None:
    """A file named in Unicode NFD (as macOS writes names) reaches the other device: it is
    renamed to NFC where it was written, and held under that name everywhere."""
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    nfd = unicodedata.normalize("NFD", "Chorprobe März.txt")
    (tmp_path / "a" / nfd).write_bytes(b"singen")
    if (tmp_path / "a" / unicodedata.normalize("NFC", nfd)).exists():
        pytest.skip("this file system does not tell NFC and NFD names apart")
    async with a.opened() as fa, b.opened() as fb:
        await fa.scan()
        async with connected(a, fa, b, fb):
            await until(lambda: (b.root / "Chorprobe März.txt").exists())
    assert (b.root / "Chorprobe März.txt").read_bytes() == b"singen"
    assert same(a, b)


async def test_left_over_temporary_files_are_removed_by_a_scan(tmp_path: Path) -> None:
    """Temporary files of no version still to be written (a crash, a superseded version) are
    removed by the next scan; the one of a version still to be written is kept, to resume."""
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a" / "docs").mkdir(parents=True)
    stale = [tmp_path / "a" / ".gone.txt.cs-tmp-0123456789abcdef",
             tmp_path / "a" / "docs" / ".old.bin.cs-tmp-fedcba9876543210"]  # fmt: skip
    for temp in stale:
        temp.write_bytes(b"half a version")
    async with a.opened() as fa:
        fa.temp_grace = 0
        other = DeviceIdentity.generate()
        record = make_record(other, "docs/big.bin", (ChunkEntry(os.urandom(32), 10),))
        pending = make_entry(other, key.folder_id, record, on_disk=False)
        await fa.store.put(key.folder_id, [pending])
        kept = tmp_path / "a" / apply.temp_path(record)
        kept.write_bytes(b"resumable")
        await fa.scan()
        assert [t.exists() for t in stale] == [False, False]
        assert kept.exists()
