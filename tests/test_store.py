"""The index store: transactions, sequences, peer progress, chunk locations, cancellation, crashes.

Async tests run under trio through anyio's pytest plugin; a few also run under asyncio as a
smoke test of the other backend.
"""

from __future__ import annotations

import dataclasses
import os
import random
import selectors
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
import trio

from commonsync.errors import IndexChangedError, StoreError
from commonsync.formats.device_id import DeviceId
from commonsync.formats.identity import DeviceIdentity
from commonsync.formats.records import ChunkEntry, Kind, verify_record
from commonsync.sync.store import (
    SCHEMA_VERSION,
    ChunkLocation,
    FolderState,
    IndexEntry,
    IndexStore,
    LocalFile,
    PathState,
    PeerProgress,
    PullPhase,
    SetAside,
    open_store,
)

from .conftest import make_entry, make_record

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
AUTHOR = DeviceIdentity.generate()
PEER = DeviceIdentity.generate().device_id
OTHER_PEER = DeviceIdentity.generate().device_id
FOLDER = os.urandom(32)
OTHER_FOLDER = os.urandom(32)
#: Counts to 5 billion: minutes of work unless interrupted.
LONG_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000000)"
    " SELECT count(*) FROM c"
)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[IndexStore]:
    """A fresh store with FOLDER registered."""
    async with open_store(tmp_path / "index.db") as store:
        await store.add_folder(FOLDER, "Documents")
        yield store


def entry(path: str, chunks: tuple[ChunkEntry, ...] | None = None, **kw: object) -> IndexEntry:
    on_disk = bool(kw.pop("on_disk", True))
    record = make_record(AUTHOR, path, chunks, **kw)  # type: ignore[arg-type]
    return make_entry(AUTHOR, FOLDER, record, on_disk=on_disk)


def chunk(size: int = 1000) -> ChunkEntry:
    return ChunkEntry(os.urandom(32), size)


@contextmanager
def rescue(store: IndexStore) -> Iterator[None]:
    """If the test fails while a query may still run, interrupt it so teardown cannot hang."""
    try:
        yield
    except BaseException:
        store._conn.interrupt()
        raise


# -- opening ----------------------------------------------------------------------------------


async def test_wal_mode_and_connection_settings(store: IndexStore, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "index.db")
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        other.close()
    assert await store._run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    assert await store._run(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]) == 1


async def test_database_and_its_wal_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual umask: files 0644 unless asked otherwise
    try:
        async with open_store(tmp_path / "index.db") as store:
            await store.add_folder(FOLDER, "Documents")  # a write: the -wal and -shm exist
            made = sorted(p.name for p in tmp_path.iterdir())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    finally:
        os.umask(previous)
    assert made == ["index.db", "index.db-shm", "index.db-wal"]
    assert modes == dict.fromkeys(made, 0o600)


async def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    async with open_store(path) as store:
        await store.add_folder(FOLDER, "Documents")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        async with open_store(path):
            pytest.fail("opened a database of another schema version")
    # Refusing it changed nothing.
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert conn.execute("SELECT count(*) FROM folders").fetchone()[0] == 1
    finally:
        conn.close()


async def test_unknown_database_with_a_user_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.execute("CREATE TABLE unrelated (x)")
    conn.close()
    with pytest.raises(StoreError, match="schema version 7"):
        async with open_store(path):
            pytest.fail("opened a foreign database")
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert tables == ["unrelated"]
    finally:
        conn.close()


async def test_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    path.write_bytes(b"this is not an SQLite database, not at all\n" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        async with open_store(path):
            pytest.fail("opened garbage")


async def test_reopening_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    shared = chunk(4096)
    async with open_store(path) as store:
        state = await store.add_folder(FOLDER, "Documents")
        await store.add_folder(OTHER_FOLDER, "Photos")
        first = entry("a.txt", (shared, chunk(10)))
        second = entry("sub/b.txt", (chunk(5), shared))
        assert await store.put(FOLDER, [first, second]) == [1, 2]
        await store.set_peer_progress(FOLDER, PEER, PeerProgress(b"i" * 16, 42))
    async with open_store(path) as store:
        assert await store.folder(FOLDER) == FolderState(FOLDER, "Documents", state.index_id, 2)
        assert sorted(f.label for f in await store.folders()) == ["Documents", "Photos"]
        got = await store.get(FOLDER, "sub/b.txt")
        assert got is not None
        assert (got.record, got.signed, got.on_disk, got.local_sequence) == (
            second.record,
            second.signed,
            True,
            2,
        )
        assert await store.peer_progress(FOLDER, PEER) == PeerProgress(b"i" * 16, 42)
        assert await store.chunk_sources(FOLDER, shared.id) == [
            ChunkLocation("a.txt", 0, 4096),
            ChunkLocation("sub/b.txt", 5, 4096),
        ]
        # Numbering goes on where it stopped.
        assert await store.put(FOLDER, [entry("c.txt")]) == [3]


# -- folders ----------------------------------------------------------------------------------


async def test_add_folder_is_idempotent_and_keeps_index_id(store: IndexStore) -> None:
    before = await store.folder(FOLDER)
    assert len(before.index_id) == 16
    await store.put(FOLDER, [entry("a"), entry("b")])
    again = await store.add_folder(FOLDER, "Renamed")
    assert again.index_id == before.index_id
    assert again.label == "Documents"
    assert again.sequence == 2
    assert await store.count(FOLDER) == 2
    assert len(await store.folders()) == 1
    other = await store.add_folder(OTHER_FOLDER, "Photos")
    assert other.index_id != before.index_id
    assert other.sequence == 0
    assert len(await store.folders()) == 2


async def test_unknown_folder_is_a_store_error(store: IndexStore) -> None:
    with pytest.raises(StoreError, match="not in the index"):
        await store.folder(OTHER_FOLDER)


# -- records ----------------------------------------------------------------------------------


async def test_put_assigns_increasing_sequences_and_replaces(store: IndexStore) -> None:
    a1, b, c = entry("a"), entry("dir/b"), entry("c", on_disk=False)
    assert await store.put(FOLDER, [a1, b]) == [1, 2]
    assert await store.put(FOLDER, [c]) == [3]
    a2 = entry("a", sequence=2)
    assert await store.put(FOLDER, [a2]) == [4]
    assert await store.put(FOLDER, []) == []
    assert (await store.folder(FOLDER)).sequence == 4
    assert await store.count(FOLDER) == 3

    got = await store.get(FOLDER, "a")
    assert got is not None
    assert got.record == a2.record
    assert got.signed == a2.signed
    assert got.local_sequence == 4
    assert got.on_disk is True
    verify_record(FOLDER, got.signed)
    got_c = await store.get(FOLDER, "c")
    assert got_c is not None
    assert got_c.on_disk is False

    since = await store.records_since(FOLDER, 0)
    assert [(e.record.path, e.local_sequence) for e in since] == [("dir/b", 2), ("c", 3), ("a", 4)]
    assert [e.record for e in since] == [b.record, c.record, a2.record]
    assert [e.record.path for e in await store.records_since(FOLDER, 2)] == ["c", "a"]
    assert [e.record.path for e in await store.records_since(FOLDER, 3)] == ["a"]
    assert await store.records_since(FOLDER, 4) == []
    assert await store.records_since(FOLDER, 99) == []
    assert [e.record.path for e in await store.records_since(FOLDER, 0, limit=2)] == ["dir/b", "c"]
    assert [e.record.path for e in await store.records_since(FOLDER, 2, limit=1)] == ["c"]


async def test_same_path_twice_in_one_put_keeps_the_last(store: IndexStore) -> None:
    first, second = entry("x", sequence=1), entry("x", sequence=2)
    assert await store.put(FOLDER, [first, second]) == [1, 2]
    got = await store.get(FOLDER, "x")
    assert got is not None
    assert got.record == second.record
    assert await store.count(FOLDER) == 1


async def test_records_since_pages_through_everything(store: IndexStore) -> None:
    paths = [f"f{i:03}" for i in range(57)]
    await store.put(FOLDER, [entry(p) for p in paths[:30]])
    await store.put(FOLDER, [entry(p) for p in paths[30:]])
    seen, after = [], 0
    while page := await store.records_since(FOLDER, after, limit=10):
        assert len(page) <= 10
        seen += [e.record.path for e in page]
        after = page[-1].local_sequence
    assert seen == paths


async def test_records_are_per_folder(store: IndexStore) -> None:
    await store.add_folder(OTHER_FOLDER, "Photos")
    await store.put(FOLDER, [entry("a")])
    other = make_entry(AUTHOR, OTHER_FOLDER, make_record(AUTHOR, "b"))
    assert await store.put(OTHER_FOLDER, [other]) == [1]
    assert await store.get(OTHER_FOLDER, "a") is None
    assert [e.record.path for e in await store.records_since(OTHER_FOLDER, 0)] == ["b"]


async def test_get_missing_path_is_none(store: IndexStore) -> None:
    assert await store.get(FOLDER, "nothing") is None
    await store.put(FOLDER, [entry("something")])
    assert await store.get(FOLDER, "nothing") is None
    assert await store.get(FOLDER, "Something") is None
    assert await store.get(OTHER_FOLDER, "something") is None


# -- peers ------------------------------------------------------------------------------------


async def test_peer_progress_round_trip_and_overwrite(store: IndexStore) -> None:
    assert await store.peer_progress(FOLDER, PEER) is None
    await store.set_peer_progress(FOLDER, PEER, PeerProgress(b"a" * 16, 10))
    assert await store.peer_progress(FOLDER, PEER) == PeerProgress(b"a" * 16, 10)
    assert await store.peer_progress(FOLDER, OTHER_PEER) is None
    await store.set_peer_progress(FOLDER, PEER, PeerProgress(b"a" * 16, 25))
    assert await store.peer_progress(FOLDER, PEER) == PeerProgress(b"a" * 16, 25)
    # The peer reset its database: new index ID, sequence starting over.
    await store.set_peer_progress(FOLDER, PEER, PeerProgress(b"b" * 16, 3))
    assert await store.peer_progress(FOLDER, PEER) == PeerProgress(b"b" * 16, 3)
    await store.set_peer_progress(FOLDER, OTHER_PEER, PeerProgress(b"c" * 16, 1))
    assert await store.peer_progress(FOLDER, PEER) == PeerProgress(b"b" * 16, 3)
    await store.add_folder(OTHER_FOLDER, "Photos")
    assert await store.peer_progress(OTHER_FOLDER, PEER) is None


async def test_peer_progress_for_unknown_folder_is_refused(store: IndexStore) -> None:
    with pytest.raises(StoreError):
        await store.set_peer_progress(OTHER_FOLDER, PEER, PeerProgress(b"a" * 16, 1))


# -- chunk locations --------------------------------------------------------------------------


async def test_chunk_sources_find_every_holder_with_offsets(store: IndexStore) -> None:
    x, y, z = chunk(100), chunk(200), chunk(300)
    await store.put(FOLDER, [entry("one", (x, y, x, z)), entry("two", (y, x))])
    assert await store.chunk_sources(FOLDER, x.id) == [
        ChunkLocation("one", 0, 100),
        ChunkLocation("one", 300, 100),
        ChunkLocation("two", 200, 100),
    ]
    assert await store.chunk_sources(FOLDER, y.id) == [
        ChunkLocation("one", 100, 200),
        ChunkLocation("two", 0, 200),
    ]
    assert await store.chunk_sources(FOLDER, z.id) == [ChunkLocation("one", 400, 300)]
    assert await store.chunk_sources(FOLDER, os.urandom(32)) == []
    await store.add_folder(OTHER_FOLDER, "Photos")
    assert await store.chunk_sources(OTHER_FOLDER, x.id) == []


async def test_chunk_offsets_are_cumulative_sizes(store: IndexStore) -> None:
    rng = random.Random(1234)
    chunks = tuple(chunk(rng.randint(1, 1 << 22)) for _ in range(60))
    await store.put(FOLDER, [entry("big.bin", chunks)])
    offset = 0
    for c in chunks:
        assert await store.chunk_sources(FOLDER, c.id) == [ChunkLocation("big.bin", offset, c.size)]
        offset += c.size


async def test_locations_follow_on_disk_deletes_and_forget(store: IndexStore) -> None:
    x, y, w = chunk(100), chunk(200), chunk(50)
    await store.put(FOLDER, [entry("one", (x,)), entry("two", (y, x))])

    # A remote version not yet fetched: the file on disk still holds the old chunks.
    await store.put(FOLDER, [entry("one", (w,), sequence=2, on_disk=False)])
    assert await store.chunk_sources(FOLDER, x.id) == [
        ChunkLocation("one", 0, 100),
        ChunkLocation("two", 200, 100),
    ]
    assert await store.chunk_sources(FOLDER, w.id) == []

    # Fetched: now the file holds the new chunks only.
    await store.put(FOLDER, [entry("one", (w,), sequence=2)])
    assert await store.chunk_sources(FOLDER, x.id) == [ChunkLocation("two", 200, 100)]
    assert await store.chunk_sources(FOLDER, w.id) == [ChunkLocation("one", 0, 50)]

    # Deleted on disk: no longer a source.
    await store.put(FOLDER, [entry("two", deleted=True, sequence=3)])
    assert await store.chunk_sources(FOLDER, x.id) == []
    assert await store.chunk_sources(FOLDER, y.id) == []

    # A directory replacing a file holds no chunks either.
    await store.put(FOLDER, [entry("three", (y,))])
    await store.put(FOLDER, [entry("three", kind=Kind.DIRECTORY, sequence=2)])
    assert await store.chunk_sources(FOLDER, y.id) == []

    # The file changed behind our back: its locations go, its record stays.
    await store.forget_locations(FOLDER, "one")
    assert await store.chunk_sources(FOLDER, w.id) == []
    assert await store.get(FOLDER, "one") is not None
    await store.forget_locations(FOLDER, "never-there")


# -- atomicity --------------------------------------------------------------------------------


async def test_put_for_unknown_folder_stores_nothing(store: IndexStore) -> None:
    c = chunk()
    foreign = make_entry(AUTHOR, OTHER_FOLDER, make_record(AUTHOR, "a", (c,)))
    with pytest.raises(StoreError, match="not in the index"):
        await store.put(OTHER_FOLDER, [foreign])
    assert await store.get(OTHER_FOLDER, "a") is None
    assert await store.chunk_sources(OTHER_FOLDER, c.id) == []
    assert len(await store.folders()) == 1
    assert await store.count(OTHER_FOLDER) == 0


@pytest.mark.parametrize("failure", ["sqlite", "python"])
async def test_failing_put_leaves_none_of_its_entries(store: IndexStore, failure: str) -> None:
    old_chunk, new_chunk, fresh_chunk = chunk(), chunk(), chunk()
    old = entry("existing", (old_chunk,))
    await store.put(FOLDER, [old])

    replaced = entry("existing", (new_chunk,), sequence=2)
    fresh = entry("fresh", (fresh_chunk,))
    gone = entry("gone-too", deleted=True)
    if failure == "sqlite":
        # signed is NOT NULL: the INSERT of the third entry fails inside the transaction.
        bad = IndexEntry(make_record(AUTHOR, "bad"), None, True)  # type: ignore[arg-type]
        expected: type[Exception] = StoreError
    else:
        bad = IndexEntry(None, b"", True)  # type: ignore[arg-type]
        expected = AttributeError
    with pytest.raises(expected):
        await store.put(FOLDER, [replaced, fresh, gone, bad])

    assert (await store.folder(FOLDER)).sequence == 1
    assert await store.count(FOLDER) == 1
    got = await store.get(FOLDER, "existing")
    assert got is not None
    assert got.record == old.record
    assert got.local_sequence == 1
    for path in ("fresh", "gone-too", "bad"):
        assert await store.get(FOLDER, path) is None
    assert await store.chunk_sources(FOLDER, old_chunk.id) == [ChunkLocation("existing", 0, 1000)]
    assert await store.chunk_sources(FOLDER, new_chunk.id) == []
    assert await store.chunk_sources(FOLDER, fresh_chunk.id) == []
    # The store goes on normally, numbering from the last committed sequence.
    assert await store.put(FOLDER, [fresh]) == [2]


# -- cancellation -----------------------------------------------------------------------------


async def cancel_long_query(store: IndexStore) -> None:
    def long_operation(conn: sqlite3.Connection) -> int:
        conn.execute(
            "INSERT INTO folders (folder_id, label, index_id) VALUES (?, 'cancelled', ?)",
            (OTHER_FOLDER, bytes(16)),
        )
        return int(conn.execute(LONG_QUERY).fetchone()[0])

    with rescue(store):
        start = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            await store._run(long_operation)
        elapsed = time.monotonic() - start
        assert scope.cancelled_caught
        assert elapsed < 1.5, f"cancellation took {elapsed:.1f} s"

        with anyio.fail_after(5):
            # The interrupted transaction was rolled back, and the store still works.
            assert [f.label for f in await store.folders()] == ["Documents"]
            assert await store.put(FOLDER, [entry("after-cancel")]) == [1]
            assert await store.get(FOLDER, "after-cancel") is not None
            assert await store._run(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1


async def test_cancelling_a_long_query_interrupts_it(store: IndexStore) -> None:
    await cancel_long_query(store)


async def test_cancelled_before_start_does_not_run(store: IndexStore) -> None:
    ran = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store._run(lambda conn: ran.append(1))
    with anyio.fail_after(5):
        assert await store.count(FOLDER) == 0
    assert ran == []


async def test_cancellation_between_statements_rolls_back(store: IndexStore) -> None:
    def operation(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO folders (folder_id, label, index_id) VALUES (?, 'cancelled', ?)",
            (OTHER_FOLDER, bytes(16)),
        )
        time.sleep(0.5)  # Python work between statements, as in put()
        conn.execute("UPDATE folders SET label = 'still cancelled' WHERE folder_id = ?", (FOLDER,))

    with anyio.move_on_after(0.1) as scope:
        await store._run(operation)
    assert scope.cancelled_caught
    with anyio.fail_after(5):
        assert [f.label for f in await store.folders()] == ["Documents"]


# -- local files, own sequences, conditional writes (schema 2) --------------------------------


def local(n: int) -> LocalFile:
    return LocalFile(inode=1000 + n, size=n, mtime_ns=1_700_000_000_000_000_000 + n, mode=0o100644)


async def test_local_files_round_trip_and_delete(store: IndexStore) -> None:
    assert await store.local_file(FOLDER, "a") is None
    huge_inode = LocalFile(2**64 - 5, 1, -1, 0o120777)  # inodes are unsigned 64-bit
    await store.set_local_files(FOLDER, [("a", local(1)), ("b", local(2)), ("c", huge_inode)])
    assert await store.local_file(FOLDER, "a") == local(1)
    assert await store.local_file(FOLDER, "c") == huge_inode
    await store.set_local_files(FOLDER, [("a", local(3)), ("b", None), ("never-there", None)])
    assert await store.local_file(FOLDER, "a") == local(3)
    assert await store.local_file(FOLDER, "b") is None
    batches = [batch async for batch in store.local_files(FOLDER, batch=1)]
    assert batches == [[("a", local(3))], [("c", huge_inode)]]
    await store.add_folder(OTHER_FOLDER, "Photos")
    assert await store.local_file(OTHER_FOLDER, "a") is None
    assert [b async for b in store.local_files(OTHER_FOLDER)] == []
    with pytest.raises(StoreError, match="not in the index"):
        await store.set_local_files(os.urandom(32), [("a", local(1))])


async def test_put_commits_records_and_local_states_together(store: IndexStore) -> None:
    await store.put(
        FOLDER, [entry("a"), entry("b")], local_files=[("a", local(1)), ("b", local(2))]
    )
    assert await store.local_file(FOLDER, "a") == local(1)
    # A remote version not on disk yet: the local state of the file it will replace stays.
    await store.put(FOLDER, [entry("a", sequence=2, on_disk=False)])
    assert await store.local_file(FOLDER, "a") == local(1)
    # A version put on disk without a local state: the old one described another version.
    await store.put(FOLDER, [entry("b", sequence=2)])
    assert await store.local_file(FOLDER, "b") is None
    await store.put(FOLDER, [entry("a", sequence=3)], local_files=[("a", local(5))])
    assert await store.local_file(FOLDER, "a") == local(5)
    # Local states alone, in a put without records.
    await store.put(FOLDER, [], local_files=[("a", None)])
    assert await store.local_file(FOLDER, "a") is None


async def test_failing_put_keeps_the_old_local_states(store: IndexStore) -> None:
    await store.put(FOLDER, [entry("a")], local_files=[("a", local(1))])
    bad = IndexEntry(make_record(AUTHOR, "bad"), None, True)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.put(FOLDER, [entry("a", sequence=2), bad], local_files=[("a", local(2))])
    assert await store.local_file(FOLDER, "a") == local(1)


async def test_conditional_put(store: IndexStore) -> None:
    [seq_a] = await store.put(FOLDER, [entry("a")])
    fresh = entry("a", sequence=2)
    with pytest.raises(IndexChangedError) as caught:
        await store.put(
            FOLDER,
            [fresh, entry("new")],
            local_files=[("a", local(1))],
            expected={"a": seq_a + 1, "new": 0, "gone": 0},
        )
    assert caught.value.paths == ("a",)
    assert (await store.get(FOLDER, "a")).record.sequence == 1  # type: ignore[union-attr]
    assert await store.get(FOLDER, "new") is None
    assert await store.local_file(FOLDER, "a") is None
    assert (await store.folder(FOLDER)).sequence == 1
    # A path expected absent that exists is refused too.
    with pytest.raises(IndexChangedError) as caught:
        await store.put(FOLDER, [fresh], expected={"a": 0})
    assert caught.value.paths == ("a",)
    assert await store.put(FOLDER, [fresh], expected={"a": seq_a, "new": 0}) == [2]
    assert (await store.get(FOLDER, "a")).record == fresh.record  # type: ignore[union-attr]


async def test_own_sequences_only_grow(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    async with open_store(path) as store:
        await store.add_folder(FOLDER, "Documents")
        await store.add_folder(OTHER_FOLDER, "Photos")
        assert (await store.folder(FOLDER)).own_sequence == 0
        assert await store.next_own_sequences(FOLDER, 3) == [1, 2, 3]
        assert await store.next_own_sequences(FOLDER, 0) == []
        assert await store.next_own_sequences(FOLDER, 2) == [4, 5]
        assert await store.next_own_sequences(OTHER_FOLDER, 1) == [1]
        with pytest.raises(ValueError, match="negative"):
            await store.next_own_sequences(FOLDER, -1)
        with pytest.raises(StoreError, match="not in the index"):
            await store.next_own_sequences(os.urandom(32), 1)
    async with open_store(path) as store:
        assert (await store.folder(FOLDER)).own_sequence == 5
        assert await store.next_own_sequences(FOLDER, 1) == [6]


async def test_entries_and_path_states_in_path_order(store: IndexStore) -> None:
    names = ["b", "a/x", "a-b", "a", "a0", "é", "z/y/x", "A"]
    await store.put(FOLDER, [entry(n) for n in names[:4]])
    await store.put(
        FOLDER,
        [entry(n, on_disk=False) for n in names[4:6]] + [entry(n, deleted=True) for n in names[6:]],
        local_files=[("a", local(7))],
    )
    batches = [batch async for batch in store.entries(FOLDER, batch=3)]
    assert [len(b) for b in batches] == [3, 3, 2]
    assert [e.record.path for b in batches for e in b] == sorted(names)
    states = [s for batch in [b async for b in store.path_states(FOLDER, batch=2)] for s in batch]
    assert [s.path for s in states] == sorted(names)
    by_path = {s.path: s for s in states}
    got_a = await store.get(FOLDER, "a")
    assert got_a is not None
    assert by_path["a"] == PathState("a", Kind.FILE, False, True, got_a.local_sequence, local(7))
    assert by_path["a0"].on_disk is False
    assert by_path["A"].deleted
    assert by_path["b"].local is None
    assert [b async for b in store.entries(OTHER_FOLDER)] == []
    many = await store.get_many(FOLDER, ["a", "nothing", "b"])
    assert sorted(many) == ["a", "b"]
    assert many["a"] == got_a


# -- pending remote versions ------------------------------------------------------------------


async def test_pending_versions_are_paged_in_the_pullers_order(store: IndexStore) -> None:
    await store.put(FOLDER, [entry("on-disk")])
    await store.put(
        FOLDER,
        [entry(p, on_disk=False) for p in ("b", "a/x", "c")]
        + [entry(p, kind=Kind.DIRECTORY, on_disk=False) for p in ("a", "d")]
        + [entry(p, deleted=True, on_disk=False) for p in ("e", "e/f", "e/f/g", "e-h")],
    )

    async def paths(phase: PullPhase, **kw: object) -> list[str]:
        return [v.path for v in await store.pending(FOLDER, phase, **kw)]  # type: ignore[arg-type]

    assert await paths(PullPhase.DIRECTORIES_AND_LINKS) == ["a", "d"]
    assert await paths(PullPhase.FILES) == ["a/x", "b", "c"]
    assert await paths(PullPhase.FILES, after="a/x", limit=1) == ["b"]
    # Children before their parents.
    assert await paths(PullPhase.DELETIONS) == ["e/f/g", "e/f", "e-h", "e"]
    assert await paths(PullPhase.DELETIONS, after="e/f") == ["e-h", "e"]
    summary = await store.pending_summary(FOLDER)
    assert (summary.files, summary.bytes, summary.next_try) == (9, 3000, 0)


async def test_a_pending_version_waits_longer_after_each_failure(store: IndexStore) -> None:
    (seq,) = await store.put(FOLDER, [entry("f", on_disk=False)])
    for attempt, wait in enumerate([1, 2, 4, 8], start=1):
        await store.retry_later(FOLDER, [("f", seq)], now=1000.0)
        (version,) = await store.pending(FOLDER, PullPhase.FILES)
        assert version.attempts == attempt
        assert await store.pending(FOLDER, PullPhase.FILES, due=1000.0 + wait - 0.5) == []
        assert len(await store.pending(FOLDER, PullPhase.FILES, due=1000.0 + wait)) == 1
    assert (await store.pending_summary(FOLDER)).next_try == 1008.0
    await store.retry_now(FOLDER, ["f"])
    assert len(await store.pending(FOLDER, PullPhase.FILES, due=1000.0)) == 1
    # A newer version of the path starts afresh; the old state is ignored, then dropped.
    await store.put(FOLDER, [entry("f", on_disk=False, sequence=2)])
    (version,) = await store.pending(FOLDER, PullPhase.FILES, due=0.0)
    assert version.attempts == 0
    await store.retry_later(FOLDER, [("f", seq)], now=1000.0)  # about the old one: ignored
    assert (await store.pending(FOLDER, PullPhase.FILES))[0].attempts == 0


async def test_a_refused_version_is_no_longer_pending(store: IndexStore) -> None:
    seqs = await store.put(FOLDER, [entry("f", on_disk=False), entry("g", on_disk=False)])
    await store.refuse(FOLDER, [("f", seqs[0], "a reason")])
    assert [v.path for v in await store.pending(FOLDER, PullPhase.FILES)] == ["g"]
    assert (await store.pending_summary(FOLDER)).files == 1
    assert await store.refused(FOLDER, "f") == "a reason"
    await store.retry_now(FOLDER)
    assert await store.refused(FOLDER, "f") == "a reason"  # refused stays refused
    await store.put(FOLDER, [entry("f", on_disk=False, sequence=2)])
    assert await store.refused(FOLDER, "f") is None
    assert (await store.pending_summary(FOLDER)).files == 2


async def test_records_are_read_to_send_within_a_byte_budget(store: IndexStore) -> None:
    await store.put(FOLDER, [entry(f"f{n}") for n in range(5)])
    one = len((await store.signed_since(FOLDER, 0, 1))[0].signed)
    assert len(await store.signed_since(FOLDER, 0, 100, max_bytes=2 * one)) == 2
    assert len(await store.signed_since(FOLDER, 0, 100, max_bytes=1)) == 1


# -- schema migration -------------------------------------------------------------------------

#: The schema as version 1 of commonsync created it.
SCHEMA_V1 = """
CREATE TABLE folders (
    folder_id BLOB PRIMARY KEY, label TEXT NOT NULL, index_id BLOB NOT NULL,
    sequence INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE records (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    path TEXT NOT NULL, local_seq INTEGER NOT NULL, author BLOB NOT NULL,
    author_seq INTEGER NOT NULL, kind INTEGER NOT NULL, deleted INTEGER NOT NULL,
    size INTEGER NOT NULL, on_disk INTEGER NOT NULL, signed BLOB NOT NULL,
    PRIMARY KEY (folder_id, path)
) WITHOUT ROWID;
CREATE UNIQUE INDEX records_by_sequence ON records (folder_id, local_seq);
CREATE TABLE peer_progress (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    device_id BLOB NOT NULL, index_id BLOB NOT NULL, sequence INTEGER NOT NULL,
    PRIMARY KEY (folder_id, device_id)
) WITHOUT ROWID;
CREATE TABLE chunk_locations (
    folder_id BLOB NOT NULL REFERENCES folders(folder_id) ON DELETE CASCADE,
    chunk_id BLOB NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (folder_id, chunk_id, path, offset)
) WITHOUT ROWID;
CREATE INDEX chunk_locations_by_path ON chunk_locations (folder_id, path);
PRAGMA user_version = 1;
"""


def make_v1_database(path: Path, extra: str = "") -> list[IndexEntry]:
    entries = [entry("a", sequence=7), entry("b", sequence=3), entry("c", sequence=42)]
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA_V1 + extra)
        conn.execute("INSERT INTO folders VALUES (?, 'Documents', ?, 3)", (FOLDER, b"i" * 16))
        conn.execute("INSERT INTO folders VALUES (?, 'Photos', ?, 0)", (OTHER_FOLDER, b"j" * 16))
        for n, e in enumerate(entries, start=1):
            r = e.record
            conn.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (FOLDER, r.path, n, r.author, r.sequence, int(r.kind), r.deleted, r.size, 1,
                 e.signed),
            )  # fmt: skip
        conn.commit()
    finally:
        conn.close()
    return entries


async def test_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    entries = make_v1_database(path)
    async with open_store(path) as store:
        state = await store.folder(FOLDER)
        assert state == FolderState(FOLDER, "Documents", b"i" * 16, 3, own_sequence=42)
        assert (await store.folder(OTHER_FOLDER)).own_sequence == 0
        for e in entries:
            got = await store.get(FOLDER, e.record.path)
            assert got is not None
            assert (got.record, got.signed) == (e.record, e.signed)
        assert await store.local_file(FOLDER, "a") is None
        await store.set_local_files(FOLDER, [("a", local(1))])
        assert await store.next_own_sequences(FOLDER, 1) == [43]
        assert await store.put(FOLDER, [entry("d")], local_files=[("d", local(2))]) == [4]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        wanted = {"pull_state", "records_not_on_disk", "membership_entries", "membership_shown"}
        wanted |= {"set_aside", "own_edits"}
        assert wanted <= tables
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
    # Opening again does not migrate twice.
    async with open_store(path) as store:
        assert (await store.folder(FOLDER)).own_sequence == 43
        assert await store.local_file(FOLDER, "d") == local(2)


async def test_failed_migration_leaves_the_version_1_database_untouched(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    # A table in the way makes the migration's last statement fail, after the others ran.
    make_v1_database(path, extra="CREATE TABLE local_files (x);")
    with pytest.raises(StoreError, match="local_files already exists"):
        async with open_store(path):
            pytest.fail("opened a database whose migration failed")
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        columns = [row[1] for row in conn.execute("PRAGMA table_info(folders)")]
        assert columns == ["folder_id", "label", "index_id", "sequence"]
        assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 3
    finally:
        conn.close()


# -- the other backend ------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_smoke(store: IndexStore) -> None:
    x = chunk(10)
    assert await store.put(FOLDER, [entry("a", (x,)), entry("b")]) == [1, 2]
    got = await store.get(FOLDER, "a")
    assert got is not None
    assert got.local_sequence == 1
    assert [e.record.path for e in await store.records_since(FOLDER, 1)] == ["b"]
    assert await store.chunk_sources(FOLDER, x.id) == [ChunkLocation("a", 0, 10)]
    await store.set_peer_progress(FOLDER, PEER, PeerProgress(b"p" * 16, 5))
    assert await store.peer_progress(FOLDER, PEER) == PeerProgress(b"p" * 16, 5)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_cancelling_a_long_query(store: IndexStore) -> None:
    await cancel_long_query(store)


# -- crash ------------------------------------------------------------------------------------

COMMITTED = 25
HUGE = 200_000
#: Entries of the huge batch written before the child says so (and is killed): enough that
#: SQLite spills uncommitted pages into the WAL.
HUGE_MARK = 20_000

CHILD = """
import sys
from collections.abc import Sequence

import trio

from commonsync.formats.identity import DeviceIdentity
from commonsync.sync.store import IndexEntry, open_store
from tests.conftest import make_entry, make_record

db, folder_hex, seed_hex, committed, huge, mark = sys.argv[1:]
folder = bytes.fromhex(folder_hex)
author = DeviceIdentity.from_seed(bytes.fromhex(seed_hex))
template = make_entry(author, folder, make_record(author, "huge/template"))


class Huge(Sequence):
    # Built lazily, so the put starts at once; signing 200,000 records would take long.
    def __len__(self):
        return int(huge)

    def __getitem__(self, i):
        raise NotImplementedError

    def __iter__(self):
        for i in range(len(self)):
            if i == int(mark):
                print("huge", flush=True)
            yield IndexEntry(make_record(author, f"huge/{i}"), template.signed, True)


async def main():
    async with open_store(db) as store:
        await store.add_folder(folder, "Documents")
        for n in range(1, int(committed) + 1):
            record = make_record(author, f"committed/{n}", sequence=n)
            await store.put(folder, [make_entry(author, folder, record)])
            print(f"committed {n}", flush=True)
        await store.put(folder, Huge())
        print("huge batch committed: too late to crash", flush=True)


trio.run(main)
"""


def read_lines_until(stream: int, marker: str, timeout: float) -> list[str]:
    """Lines from the file descriptor ``stream`` up to ``marker`` (or end of file)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while marker not in lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {marker!r} line within {timeout} s; got {lines}")
            if not selector.select(remaining):
                continue
            data = os.read(stream, 65536)
            if not data:
                break
            *complete, pending = (pending + data).split(b"\n")
            lines += [line.decode() for line in complete]
    return lines


@pytest.mark.slow
def test_kill_during_huge_put_keeps_committed_and_nothing_else(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    author = DeviceIdentity.generate()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    args = [str(db), FOLDER.hex(), author.seed.hex(), str(COMMITTED), str(HUGE), str(HUGE_MARK)]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert child.stdout is not None
        lines = read_lines_until(child.stdout.fileno(), "huge", timeout=60)
        child.send_signal(signal.SIGKILL)
        returncode = child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        _, stderr = child.communicate(timeout=10)
    assert lines == [f"committed {n}" for n in range(1, COMMITTED + 1)] + ["huge"], stderr
    assert returncode == -signal.SIGKILL, stderr

    async def check() -> None:
        async with open_store(db) as store:
            state = await store.folder(FOLDER)
            assert state.sequence == COMMITTED
            assert await store.count(FOLDER) == COMMITTED
            since = await store.records_since(FOLDER, 0, limit=HUGE)
            assert [e.record.path for e in since] == [
                f"committed/{n}" for n in range(1, COMMITTED + 1)
            ]
            for n, found in enumerate(since, start=1):
                assert found.local_sequence == n
                assert verify_record(FOLDER, found.signed) == found.record
                assert found.record.author == author.public_key
                assert found.record.sequence == n
                (c,) = found.record.chunks
                assert await store.chunk_sources(FOLDER, c.id) == [
                    ChunkLocation(found.record.path, 0, c.size)
                ]
            for i in (0, HUGE_MARK - 1, HUGE_MARK, HUGE - 1):
                assert await store.get(FOLDER, f"huge/{i}") is None
            located = await store._run(
                lambda c: c.execute("SELECT count(*) FROM chunk_locations").fetchone()[0]
            )
            assert located == COMMITTED
            assert await store._run(lambda c: c.execute("PRAGMA integrity_check").fetchall()) == [
                ("ok",)
            ]

    trio.run(check)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


async def test_entries_that_let_own_records_be_taken_publish_them_again(
    store: IndexStore,
) -> None:
    """``publish_again``: the author's versions in the span get the next local sequences, in
    their order, with the entries (one transaction); the rest, and their local and pull
    state, stay as they were."""
    other = DeviceIdentity.generate()
    local = LocalFile(7, 1000, 1, 0o100644)
    mine = [entry(path, sequence=n) for n, path in enumerate(["a", "b", "c"], start=1)]
    theirs = make_entry(other, FOLDER, make_record(other, "d", sequence=9), on_disk=True)
    pending = entry("e", sequence=4, on_disk=False)
    await store.put(FOLDER, [*mine, theirs, pending], local_files=[("b", local)])
    await store.retry_later(FOLDER, [("e", 5)], now=0.0)
    highest = (await store.folder(FOLDER)).sequence
    assert highest == 5

    await store.add_membership_entries(
        FOLDER, [(b"h1", b"first")], publish_again=(AUTHOR.public_key, 1, 2**63 - 1)
    )
    moved = await store.records_since(FOLDER, highest)
    assert [(e.record.path, e.local_sequence) for e in moved] == [("b", 6), ("c", 7), ("e", 8)]
    assert (await store.folder(FOLDER)).sequence == 8
    assert (await store.get(FOLDER, "a")).local_sequence == 1  # type: ignore[union-attr]
    assert await store.local_file(FOLDER, "b") == local
    (waiting,) = await store.pending(FOLDER, PullPhase.FILES)
    assert (waiting.path, waiting.local_sequence, waiting.attempts) == ("e", 8, 1)
    assert await store.membership_entries(FOLDER) == [b"first"]
    # Nothing in the span: nothing moves.
    await store.add_membership_entries(
        FOLDER, [(b"h2", b"second")], publish_again=(AUTHOR.public_key, 4, 4)
    )
    assert (await store.folder(FOLDER)).sequence == 8


async def test_entries_that_refuse_versions_taken_set_them_aside(store: IndexStore) -> None:
    """``highest_taken``: the current versions an author made beyond what the log takes from
    it now are set aside with the entries (one transaction): their rows, local and pull
    state go, their paths are noted until their files are moved, and every peer's progress
    is forgotten. A version whose file holds this device's own last edit of the path is
    published again instead (its local state goes: the next scan publishes it)."""
    other = DeviceIdentity.generate()
    local = LocalFile(7, 1000, 1, 0o100644)
    mine = chunk()
    await store.put(FOLDER, [dataclasses.replace(entry("g", (mine,)), edited_here=True)])

    def theirs(path: str, sequence: int, chunks: tuple[ChunkEntry, ...] | None = None,
               on_disk: bool = True) -> IndexEntry:  # fmt: skip
        record = make_record(other, path, chunks, sequence=sequence)
        return make_entry(other, FOLDER, record, on_disk=on_disk)

    await store.put(
        FOLDER,
        [theirs("d", 3), theirs("e", 9), theirs("f", 10, on_disk=False), theirs("g", 11, (mine,))],
        local_files=[("e", local), ("g", local)],
    )
    await store.put(FOLDER, [entry("h")], local_files=[("h", local)])
    await store.retry_later(FOLDER, [("f", 4)], now=0.0)
    peer = DeviceId.from_public_key(other.public_key)
    await store.set_peer_progress(FOLDER, peer, PeerProgress(b"i" * 16, 42))

    set_aside = await store.add_membership_entries(
        FOLDER,
        [(b"h1", b"first")],
        highest_taken=lambda author: 3 if author == other.public_key else None,
    )
    assert set_aside == SetAside(moved=["e", "f"], published_again=["g"])
    assert await store.set_aside_paths(FOLDER) == ["e", "f"]
    assert set((await store.get_many(FOLDER, "defgh")).keys()) == {"d", "h"}
    assert await store.local_files_of(FOLDER, "egh") == {"h": local}
    assert await store.pending(FOLDER, PullPhase.FILES) == []
    assert await store.chunk_sources(FOLDER, mine.id) == []
    assert await store.peer_progress(FOLDER, peer) is None
    assert await store.membership_entries(FOLDER) == [b"first"]

    # The files moved: the notes go, with any local state written meanwhile.
    await store.set_local_files(FOLDER, [("e", local)])
    await store.done_setting_aside(FOLDER, ["e"])
    assert await store.set_aside_paths(FOLDER) == ["f"]
    assert await store.local_file(FOLDER, "e") is None
    # Nothing beyond: nothing is set aside, and the progress stays.
    await store.set_peer_progress(FOLDER, peer, PeerProgress(b"i" * 16, 42))
    again = await store.add_membership_entries(
        FOLDER, [(b"h2", b"second")], highest_taken=lambda author: 3
    )
    assert again == SetAside([], [])
    assert await store.peer_progress(FOLDER, peer) == PeerProgress(b"i" * 16, 42)


async def test_membership_entries_are_kept_in_the_order_added_per_folder(tmp_path: Path) -> None:
    async with open_store(tmp_path / "index.db") as store:
        await store.add_folder(FOLDER, "Documents")
        await store.add_folder(OTHER_FOLDER, "Photos")
        await store.add_membership_entries(FOLDER, [(b"h1", b"first"), (b"h2", b"second")])
        await store.add_membership_entries(OTHER_FOLDER, [(b"h9", b"other")])
        await store.add_membership_entries(FOLDER, [(b"h3", b"third")])
    async with open_store(tmp_path / "index.db") as store:
        assert await store.membership_entries(FOLDER) == [b"first", b"second", b"third"]
        assert await store.membership_entries(OTHER_FOLDER) == [b"other"]
