"""A member must not exhaust the victim's memory or keep its puller busy (issue 12, item 4).

Library level: a folder with a real store is handed remote versions whose chunks nobody
serves; they wait in the store, not decoded in memory, and a version with an enormous chunk
list is tried a few times with growing waits, not every second. Daemon level: a hostile
member floods a real daemon with IndexRequests and with records of huge chunk lists; the
victim's resident memory stays bounded and it keeps syncing with its well-behaved peer.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity, FolderKey
from commonsync.formats.messages import IndexRequest
from commonsync.formats.records import ChunkEntry, Kind, Record, sign_record
from commonsync.formats.versionvector import VersionVector
from commonsync.sync.exchange import PeerExchange, RemoteRecord
from commonsync.sync.folder import WINDOW_BYTES, Folder, Progress, open_folder
from commonsync.sync.store import IndexStore, open_store
from commonsync.wire.session import STALL_TIMEOUT
from tests.daemons import Device
from tests.hostile import forge, invite, member_session, scene, still_syncs

pytestmark = pytest.mark.anyio
MiB = 1024 * 1024
TIMEOUT = 60


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def source(identity: DeviceIdentity) -> PeerExchange:
    """What :meth:`Folder.receive_records` needs of the peer a batch came from."""
    return cast(PeerExchange, SimpleNamespace(peer=identity.device_id))


def remote(
    author: DeviceIdentity, key: FolderKey, path: str, chunks: int, chunk_size: int = 1000
) -> RemoteRecord:
    """A signed version of ``path`` with ``chunks`` chunks nobody holds."""
    entries = tuple(ChunkEntry(os.urandom(32), chunk_size) for _ in range(chunks))
    record = Record(
        path=path,
        kind=Kind.FILE,
        size=chunk_size * chunks,
        mtime_ns=1_700_000_000 * 10**9,
        mode=0o644,
        deleted=False,
        version=VersionVector.from_mapping({author.device_id.short: 1_700_000_000}),
        chunks=entries,
        symlink_target="",
        author=author.public_key,
        sequence=1,
    )
    return RemoteRecord(record, sign_record(author, key.folder_id, record))


@asynccontextmanager
async def folder_at(tmp_path: Path) -> AsyncIterator[tuple[Folder, IndexStore]]:
    (tmp_path / "root").mkdir(exist_ok=True)
    async with (
        open_store(tmp_path / "index.db") as store,
        open_folder(tmp_path / "root", FOLDER_KEY, ME, store) as folder,
    ):
        yield folder, store


ME = DeviceIdentity.generate()
FOLDER_KEY = FolderKey.generate()


@pytest.mark.slow
async def test_versions_waiting_for_chunks_are_held_on_disk_not_in_memory(
    tmp_path: Path,
) -> None:
    """40 versions of 20,000 chunks each, whose chunks no peer serves: while the puller tries
    them again and again, the decoded chunk entries alive in the process stay within one
    window of the puller's (:data:`commonsync.sync.folder.WINDOW_BYTES` of signed records), not
    all 800,000 of them; and tracemalloc sees a few MiB held, not all of them."""
    author = DeviceIdentity.generate()
    count, chunks = 40, 20_000
    async with folder_at(tmp_path) as (folder, _store):
        gc.collect()
        tracemalloc.start()
        try:
            for n in range(count):
                batch = [remote(author, FOLDER_KEY, f"big-{n}.bin", chunks)]
                await folder.receive_records(source(author), batch)
                del batch
            assert folder.progress() == Progress(count, count * chunks * 1000)
            most = 0
            with anyio.move_on_after(3.5):  # rounds of the puller: the first tries and retries
                while True:
                    most = max(most, decoded_chunks())
                    await anyio.sleep(0.25)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert folder.progress() == Progress(count, count * chunks * 1000)  # still honest
    window = WINDOW_BYTES // 36  # a chunk entry takes at least 36 bytes in a signed record
    assert most <= window, f"{most} chunk entries decoded at once"
    assert held < 48 * MiB, f"{held / MiB:.1f} MiB held while waiting"


def decoded_chunks() -> int:
    """The chunk entries of every decoded record alive in this process."""
    return sum(len(o.chunks) for o in gc.get_objects() if isinstance(o, Record))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("chunks", "chunk_size", "at_most"),
    [(3, 1024 * 1024, 5), (20_000, 1000, 3)],
    ids=["3 chunks", "20,000 chunks"],
)
async def test_a_version_nobody_serves_is_not_tried_every_second(
    tmp_path: Path, chunks: int, chunk_size: int, at_most: int
) -> None:
    """A version whose chunks no peer serves costs one try, then tries further and further
    apart (1 s, 2 s, 4 s, ..., longer for a larger record): over 8 s a handful of tries, not
    one a second (as many as 8 before)."""
    author = DeviceIdentity.generate()
    async with folder_at(tmp_path) as (folder, store):
        tries = 0
        looked_up = store.local_file

        async def counting(folder_id: bytes, path: str) -> object:
            nonlocal tries
            tries += path == "waits.bin"  # the applier looks it up once per try
            return await looked_up(folder_id, path)

        store.local_file = counting  # type: ignore[assignment,method-assign]
        waiting = remote(author, FOLDER_KEY, "waits.bin", chunks, chunk_size)
        await folder.receive_records(source(author), [waiting])
        await anyio.sleep(8)
        assert folder.busy
    assert 1 <= tries <= at_most, f"tried {tries} times in 8 s"


async def test_waiting_versions_survive_a_restart_without_being_loaded(tmp_path: Path) -> None:
    """Versions taken before a stop are still pending after it (their peers will not send
    them again), counted from the store, and none of them is decoded to count them."""
    author = DeviceIdentity.generate()
    async with folder_at(tmp_path) as (folder, _store):
        batch = [remote(author, FOLDER_KEY, f"f-{n}.bin", 3000) for n in range(5)]
        await folder.receive_records(source(author), batch)
    async with folder_at(tmp_path) as (folder, _store):
        assert folder.progress() == Progress(5, 5 * 3000 * 1000)
        assert folder.busy
        assert not folder.writing


# -- daemon level --------------------------------------------------------------------------------


def rss_mib(device: Device) -> float:
    """The daemon's resident memory now (VmRSS)."""
    assert device.process is not None
    for line in Path(f"/proc/{device.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def left(device: Device) -> int:
    return int(device.folder_state("shared")["files_left"])


@pytest.mark.slow
async def test_a_flood_of_index_requests_does_not_exhaust_the_victim(tmp_path: Path) -> None:
    """Each IndexRequest used to start another push that lasts the session; from a member
    that reads nothing, each holds a batch of the victim's records waiting to be sent (500
    MiB after 3,000 requests, with 500 files). One push per folder per session: the second
    request is a protocol error that ends the member's session."""
    with scene(tmp_path) as (victim, bob):
        for n in range(500):
            (victim.folder / f"file-{n}.txt").write_text(f"file {n}\n" * 20)
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        await anyio.sleep(2)
        before = rss_mib(victim)
        sent = 0
        async with member_session(victim, mallory, key, read=False) as member:
            # The victim ends the session after the second; the rest fail to send.
            with contextlib.suppress(Exception):
                for _ in range(3000):
                    await member.send(IndexRequest(key.folder_id, bytes(16), 0))
                    sent += 1
            await anyio.sleep(5)
            grown = rss_mib(victim) - before
        assert grown < 64, f"the victim grew by {grown:.0f} MiB"
        assert sent < 3000  # the session was closed
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")


#: Bob's next file may wait for the victim's requests to the hoarding member to be given up
#: (STALL_TIMEOUT, 30 s: SPEC.md §12) before it is fetched: a bound of 30 s alone was met
#: with no margin (25-29 s measured for one direction, before and after issue 15).
BEHIND_A_STALL = STALL_TIMEOUT + 30


@pytest.mark.slow
async def test_records_of_huge_chunk_lists_nobody_serves_do_not_exhaust_the_victim(
    tmp_path: Path,
) -> None:
    """Records of 200,000 chunks each whose chunks the member never serves used to stay
    decoded in memory (some 50 MiB each: 700 MiB for 10), one core busy trying them again
    every second; then each took 35 MiB of small objects while it was decoded, and glibc kept
    the freed buffers (the victim grew by 300-420 MiB). They wait in the store: once the
    victim took them (and forwarded them to bob, who waits for their chunks too), its memory
    does not grow with their number, and it keeps serving bob."""
    count = 12
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        await anyio.sleep(1)
        before = rss_mib(victim)
        async with member_session(victim, mallory, key) as member:
            member.answer_chunks = False  # never serves a chunk
            for n in range(count):
                chunks = [[os.urandom(32), 1000] for _ in range(200_000)]
                await member.send_records([forge(mallory, key, f"huge-{n}.bin", chunks=chunks)])
            with anyio.fail_after(TIMEOUT):
                for device in (victim, bob):
                    while (await anyio.to_thread.run_sync(left, device)) < count:
                        await anyio.sleep(0.2)
            await anyio.sleep(3)
            grown = rss_mib(victim) - before
            # 125 MiB measured once records are read chunk by chunk, held packed, and the
            # daemon's allocator returns large buffers (310-420 MiB before).
            assert grown < 250, f"the victim grew by {grown:.0f} MiB"
            await anyio.to_thread.run_sync(
                partial(still_syncs, timeout=BEHIND_A_STALL), victim, bob, "during"
            )
        await anyio.to_thread.run_sync(
            partial(still_syncs, timeout=BEHIND_A_STALL), victim, bob, "after"
        )
