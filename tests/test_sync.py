"""Devices converge: each device is its own process (tests/device.py) with its own folder and
SQLite store, talking over loopback. The checks read the folders on disk."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from commonsync import DeviceIdentity, FolderKey, Session, connect_channel
from commonsync.formats import encoding
from commonsync.formats.chunks import chunk_id
from commonsync.formats.messages import (
    ChunkBatchRequest,
    ChunkBatchResponse,
    Folders,
    Hello,
    Index,
    IndexRequest,
)
from commonsync.formats.records import ChunkEntry, Kind, Record, seal_record
from commonsync.formats.versionvector import VersionVector
from commonsync.sync.decide import conflict_copy_path
from commonsync.sync.layout import METADATA_DIR, is_conflict_copy, is_internal
from commonsync.wire.session import folder_proof

from .slowlink import slow_link

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
CONVERGE = 60.0


class Device:
    """A running ``tests.device`` process."""

    def __init__(
        self,
        name: str,
        base: Path,
        key: FolderKey,
        *,
        identity: DeviceIdentity | None = None,
    ) -> None:
        self.name = name
        self.root = base / name
        self.root.mkdir(exist_ok=True)
        self.db = base / f"{name}.db"
        self.key = key
        self.identity = identity or DeviceIdentity.generate()
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.stats: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.log: list[str] = []
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def start(
        self,
        accepts: list[Device],
        *,
        listen: bool = False,
        connect: Sequence[int] = (),
        options: Sequence[str] = (),
    ) -> None:
        command = [
            sys.executable, "-m", "tests.device",
            "--root", str(self.root), "--db", str(self.db), "--name", self.name,
            "--seed", self.identity.seed.hex(), "--key", self.key.to_bytes().hex(), *options,
        ]  # fmt: skip
        for peer in accepts:
            command += ["--accept", peer.identity.public_key.hex()]
        if listen:
            command.append("--listen")
        for port in connect:
            command += ["--connect", str(port)]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_log, daemon=True).start()
        if listen:
            self.port = self._next(lambda e: "port" in e)["port"]

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            if "stats" in event:
                self.stats = event["stats"]
            self.events.append(event)
            self._lines.put(event)

    def _read_log(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def _next(
        self, condition: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.name} said nothing expected in {timeout} s") from None
            if condition(event):
                return event

    def peak_memory_mib(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None


@contextmanager
def devices(tmp_path: Path, *names: str) -> Iterator[list[Device]]:
    key = FolderKey.generate()
    running = [Device(name, tmp_path, key) for name in names]
    try:
        yield running
    except BaseException:
        for device in running:
            print(f"--- {device.name} events ---", *device.events[-40:], sep="\n")
            print(f"--- {device.name} log ---", *device.log[-40:], sep="\n")
        raise
    finally:
        for device in running:
            device.stop()


def pair(a: Device, b: Device) -> None:
    """Start ``a`` listening and ``b`` connected to it."""
    a.start([b], listen=True)
    b.start([a], connect=[a.port])


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What a folder holds, for comparison: kind, content hash, executable bit, link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        relative = Path(dirpath).relative_to(root)
        if relative.parts[:1] == (METADATA_DIR,):
            continue
        dirnames[:] = [d for d in dirnames if (relative / d).parts[:1] != (METADATA_DIR,)]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = (relative / name).as_posix()
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # removed while we looked: the next look decides
            if is_internal(key):
                continue
            if stat.S_ISLNK(info.st_mode):
                out[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                out[key] = ("dir",)
            else:
                try:
                    digest = hashlib.blake2b(path.read_bytes()).hexdigest()
                except FileNotFoundError:
                    digest = "vanished"
                out[key] = ("file", digest, bool(info.st_mode & 0o111))
    return out


def wait_until(condition: Callable[[], bool], timeout: float = CONVERGE, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def converged(*folders: Device) -> Callable[[], bool]:
    def check() -> bool:
        trees = [tree(d.root) for d in folders]
        return all(t == trees[0] for t in trees[1:])

    return check


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for _ in range(size // (8 * MiB)):
            f.write(os.urandom(8 * MiB))
        f.write(os.urandom(size % (8 * MiB)))


# -- 1. initial sync ------------------------------------------------------------------------------


@pytest.mark.slow
def test_initial_sync_of_a_varied_tree_in_bounded_memory(tmp_path: Path) -> None:
    with devices(tmp_path, "a", "b") as (a, b):
        (a.root / "nested/deeper/deepest").mkdir(parents=True)
        (a.root / "nested/deeper/deepest/leaf.txt").write_text("leaf\n")
        (a.root / "empty/also-empty").mkdir(parents=True)
        (a.root / "link-to-leaf").symlink_to("nested/deeper/deepest/leaf.txt")
        script = a.root / "run.sh"
        script.write_text("#!/bin/sh\necho hello\n")
        script.chmod(0o755)
        (a.root / "données").mkdir()
        (a.root / "données/résumé - ünïcødé ✓.txt").write_text("ça marche\n")
        (a.root / "zero-bytes").write_bytes(b"")
        write_random(a.root / "big.bin", 300 * MiB)

        pair(a, b)
        wait_until(converged(a, b), what="b to hold a's tree")
        assert (b.root / "run.sh").stat().st_mode & 0o111
        assert os.readlink(b.root / "link-to-leaf") == "nested/deeper/deepest/leaf.txt"
        assert (b.root / "empty/also-empty").is_dir()
        for device in (a, b):
            assert device.peak_memory_mib() < 200, (
                f"{device.name} peaked at {device.peak_memory_mib():.0f} MiB"
            )


# -- 2. a small edit in a big file ----------------------------------------------------------------


@pytest.mark.slow
def test_one_byte_edit_sends_only_the_chunks_around_it(tmp_path: Path) -> None:
    with devices(tmp_path, "a", "b") as (a, b):
        big = a.root / "big.bin"
        write_random(big, 300 * MiB)
        pair(a, b)
        wait_until(converged(a, b), what="the first sync")
        before = b.stats.get("chunk_bytes_received", 0)
        with big.open("r+b") as f:
            f.seek(150 * MiB)
            byte = f.read(1)
            f.seek(150 * MiB)
            f.write(bytes([byte[0] ^ 0xFF]))
        wait_until(converged(a, b), what="the edit to arrive")
        sent = b.stats["chunk_bytes_received"] - before
        assert 0 < sent <= 3 * 4 * MiB, f"{sent} bytes crossed the wire for a 1-byte edit"


# -- 3. rename ------------------------------------------------------------------------------------


def test_renaming_a_directory_transfers_no_chunk(tmp_path: Path) -> None:
    with devices(tmp_path, "a", "b") as (a, b):
        for n in range(12):
            write_random(a.root / f"photos/2026/img-{n:02}.raw", 2 * MiB + n)
        pair(a, b)
        wait_until(converged(a, b), what="the first sync")
        before = b.stats["chunk_bytes_received"]
        (a.root / "photos").rename(a.root / "pictures")
        wait_until(converged(a, b), what="the rename")
        assert not (b.root / "photos").exists()
        assert b.stats["chunk_bytes_received"] == before


# -- 4. deletions ---------------------------------------------------------------------------------


def test_a_deletion_propagates_and_the_old_file_is_kept_in_versions(tmp_path: Path) -> None:
    with devices(tmp_path, "a", "b") as (a, b):
        (a.root / "doomed.txt").write_text("short-lived\n")
        (a.root / "kept.txt").write_text("stays\n")
        pair(a, b)
        wait_until(converged(a, b), what="the first sync")
        (a.root / "doomed.txt").unlink()
        wait_until(converged(a, b), what="the deletion")
        assert not (b.root / "doomed.txt").exists()
        kept = list((b.root / METADATA_DIR / "versions").rglob("doomed*"))
        assert [p.read_text() for p in kept] == ["short-lived\n"]


def test_a_deletion_concurrent_with_an_edit_keeps_the_edit(tmp_path: Path) -> None:
    with devices(tmp_path, "a", "b") as (a, b):
        (a.root / "contested.txt").write_text("original\n")
        pair(a, b)
        wait_until(converged(a, b), what="the first sync")
        b.stop()
        (a.root / "contested.txt").unlink()
        time.sleep(1)  # a rescans, and publishes the deletion while b is away
        (b.root / "contested.txt").write_text("edited while apart\n")
        b.start([a], connect=[a.port])
        wait_until(converged(a, b), what="reconnection")
        assert (a.root / "contested.txt").read_text() == "edited while apart\n"


# -- 5. conflicts ---------------------------------------------------------------------------------


def test_concurrent_edits_give_the_same_winner_and_conflict_copy_everywhere(
    tmp_path: Path,
) -> None:
    with devices(tmp_path, "a", "b") as (a, b):
        (a.root / "notes.txt").write_text("v0\n")
        pair(a, b)
        wait_until(converged(a, b), what="the first sync")
        b.stop()
        a_file, b_file = a.root / "notes.txt", b.root / "notes.txt"
        a_edit = b"edited on a\n"
        a_file.write_bytes(a_edit)
        os.utime(a_file, ns=(1_800_000_000 * 10**9, 1_800_000_000 * 10**9))
        b_file.write_text("edited on b, later\n")
        os.utime(b_file, ns=(1_800_000_100 * 10**9, 1_800_000_100 * 10**9))
        time.sleep(1)  # a rescans its edit while b is away
        b.start([a], connect=[a.port])
        wait_until(converged(a, b), what="both to settle the conflict")
        for device in (a, b):
            assert (device.root / "notes.txt").read_text() == "edited on b, later\n"
            copies = [p for p in device.root.iterdir() if is_conflict_copy(p.name)]
            assert [p.read_text() for p in copies] == ["edited on a\n"]
            # Named for the losing content (SPEC.md §13), not for a's device, so that each
            # device that keeps it (a renames its file, b records a copy of a's edit) names
            # it alike.
            assert copies[0].name == conflict_copy_path(_version_of(a, "notes.txt", a_edit))
            assert copies[0].name.startswith("notes.sync-conflict-20270115-")
            assert re.fullmatch(
                r"notes\.sync-conflict-20270115-\d{6}-[A-Z2-7]{7}\.txt", copies[0].name
            )


def _version_of(device: Device, path: str, data: bytes) -> Record:
    """A version of ``path`` holding ``data`` (one chunk) as ``device`` made it: what its
    content digest, and so a conflict copy's name, depends on (mtime 1_800_000_000 s)."""
    chunks = (ChunkEntry(chunk_id(device.key.chunk_id_key, data), len(data)),)
    return Record(
        path=path, kind=Kind.FILE, size=len(data), mtime_ns=1_800_000_000 * 10**9, mode=0o644,
        deleted=False, version=VersionVector(), chunks=chunks, symlink_target="",
        author=device.identity.public_key, sequence=1,
    )  # fmt: skip


# -- 6. through a middle device -------------------------------------------------------------------


def test_a_change_reaches_a_device_through_another(tmp_path: Path) -> None:
    with devices(tmp_path, "a", "b", "c") as (a, b, c):
        a.start([b], listen=True)
        b.start([a, c], listen=True, connect=[a.port])
        c.start([b], connect=[b.port])
        (a.root / "from-a.txt").write_text("hello c, from a\n")
        wait_until(converged(a, b, c), what="a's file to reach c")
        assert (c.root / "from-a.txt").read_text() == "hello c, from a\n"
        (c.root / "from-c.txt").write_text("and back\n")
        wait_until(converged(a, b, c), what="c's file to reach a")


@pytest.mark.slow
def test_a_middle_device_relays_files_it_is_still_fetching_without_a_session_break(
    tmp_path: Path,
) -> None:
    """c gets a's files through b while b is still fetching them: b's fetches that learn
    "not found" cancel the others, and no cancelled request or answer may break a session."""
    with devices(tmp_path, "a", "b", "c") as (a, b, c):
        a.start([b], listen=True)
        b.start([a, c], listen=True, connect=[a.port])
        c.start([b], connect=[b.port])
        for n in range(40):
            write_random(a.root / f"batch/file-{n:02}.bin", 3 * MiB)
        wait_until(converged(a, b, c), what="a's files to reach c through b")
        for device in (a, b, c):
            breaks = [e for e in device.events if e.get("event") == "peer error"]
            assert not breaks, f"{device.name}: {breaks}"
            assert not [line for line in device.log if "ChannelError" in line], device.log


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_slow_link_is_slow_never_stuck(tmp_path: Path, anyio_backend: str) -> None:
    """Through a 100 KB/s link a chunk takes seconds, far beyond the 2 s stall timeout these
    devices run with: a request is given up for lack of progress (no byte at all), never for
    lack of a whole chunk, so the files arrive. (With a time limit per request, every chunk
    was abandoned before it could arrive, for ever, and nothing said so.)"""
    options = ["--stall-timeout", "2"]
    with devices(tmp_path, "a", "b") as (a, b):
        write_random(a.root / "large.bin", 2 * MiB + 1000)  # fetched chunk by chunk
        write_random(a.root / "small.bin", 300 * 1000)  # fetched in a batch
        a.start([b], listen=True, options=options)
        async with slow_link(a.port, rate=100_000) as port:
            b.start([a], connect=[port], options=options)
            await anyio.to_thread.run_sync(
                partial(wait_until, converged(a, b), 100, "the files through the slow link")
            )
            # Checked while the link still stands: closing it ends the session mid-stream,
            # which b rightly reports (that report made this test fail now and then).
            breaks = [e for e in b.events if e.get("event") == "peer error"]
            assert not breaks, breaks


# -- 7. a file being written ----------------------------------------------------------------------


def test_a_file_being_written_is_never_published_torn(tmp_path: Path) -> None:
    with devices(tmp_path, "a", "b") as (a, b):
        pair(a, b)
        growing = a.root / "growing.log"
        written = bytearray()
        stop = threading.Event()

        def writer() -> None:
            with growing.open("ab") as f:
                while not stop.is_set():
                    block = os.urandom(64 * 1024)
                    f.write(block)
                    f.flush()
                    written.extend(block)
                    time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        deadline = time.monotonic() + 4
        seen = 0
        try:
            while time.monotonic() < deadline:
                copy = b.root / "growing.log"
                if copy.exists():
                    content = copy.read_bytes()
                    assert content == bytes(written[: len(content)]), "a torn version appeared"
                    seen += 1
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join()
        wait_until(converged(a, b), what="the finished file")
        assert (b.root / "growing.log").read_bytes() == bytes(written)


# -- 8. a hostile peer ----------------------------------------------------------------------------


def forged(
    identity: DeviceIdentity,
    key: FolderKey,
    path: str,
    chunks: list[list[object]],
    *,
    signer: DeviceIdentity | None = None,
) -> bytes:
    """A record for ``path``, validly signed (by ``signer``: another key makes a forgery)
    and sealed, bypassing the library's checks."""
    body = encoding.pack([
        1, path, int(Kind.FILE), sum(int(c[1]) for c in chunks),
        1_700_000_000 * 10**9, 0o644, False,
        VersionVector().bump(identity.device_id.short, 1_700_000_000).to_wire(), chunks, "",
        identity.public_key, 1, b"",
    ])  # fmt: skip
    signature = (signer or identity).sign(b"commonsync record v1\x00" + key.folder_id + body)
    return seal_record(key, encoding.pack([body, signature]))


async def hostile_session(
    victim: Device, mallory: Device, key: FolderKey, records: list[bytes]
) -> Session:
    """Mallory's session with the victim, past the greetings, with ``records`` sent as one
    index batch."""
    channel = await connect_channel(
        "127.0.0.1", victim.port, mallory.identity, accept=lambda d: True
    )
    session = Session(channel)
    await session.send(Hello(1, [], "mallory", "test"))
    proof = folder_proof(key, channel.handshake_hash, sender_is_initiator=True)
    await session.send(Folders([[proof, bytes(16), 0]]))
    batch = [[n + 1, record] for n, record in enumerate(records)]
    await session.send(Index(key.folder_id, b"m" * 16, batch, len(records)))
    return session


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_hostile_records_and_chunks_are_refused(tmp_path: Path, anyio_backend: str) -> None:
    key = FolderKey.generate()
    victim = Device("victim", tmp_path, key)
    mallory = Device("mallory", tmp_path, key)  # holds the folder key, but is hostile
    outside = tmp_path / "outside"
    victim.start([mallory], listen=True)
    try:
        bad_chunk = ChunkEntry(os.urandom(32), 100)
        session = await hostile_session(victim, mallory, key, [
            forged(mallory.identity, key, "../outside", [[os.urandom(32), 10]]),
            forged(mallory.identity, key, str(outside), [[os.urandom(32), 10]]),
            forged(mallory.identity, key, "bad-chunk.bin", [[bad_chunk.id, bad_chunk.size]]),
        ])  # fmt: skip
        with anyio.fail_after(30):
            async for message in session:
                # A file of one chunk is fetched in a batch (with others, were there others).
                if isinstance(message, ChunkBatchRequest):
                    # Only the valid path is fetched.
                    assert message.chunks == [[bad_chunk.id, bad_chunk.size]]
                    forgery = [[0, b"x" * bad_chunk.size]]
                    await session.send(ChunkBatchResponse(message.request_id, forgery))
                    break
                assert isinstance(message, Hello | Folders | IndexRequest | Index)
            await anyio.sleep(1)
        await session.close()
        victim.stop()
        assert not outside.exists()
        assert not (victim.root / "bad-chunk.bin").exists()
        errors = [e for e in victim.events if e.get("event") == "error"]
        assert any("does not match its ID" in e["detail"] for e in errors)
        refusals = [line for line in victim.log if "refused a record" in line]
        assert len(refusals) == 2, victim.log
    finally:
        victim.stop()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_flood_of_forged_records_is_logged_at_a_bounded_rate(
    tmp_path: Path, anyio_backend: str
) -> None:
    """3,000 records whose signatures do not verify cost a bounded number of log lines."""
    key = FolderKey.generate()
    victim = Device("victim", tmp_path, key)
    mallory = Device("mallory", tmp_path, key)
    impostor = DeviceIdentity.generate()
    victim.start([mallory], listen=True)
    try:
        records = [
            forged(mallory.identity, key, f"f{n}.txt", [[os.urandom(32), 10]], signer=impostor)
            for n in range(3000)
        ]
        session = await hostile_session(victim, mallory, key, records)
        await session.send(Index(key.folder_id, b"m" * 16, [], len(records)))
        with anyio.fail_after(30):
            while not any("refused 3000 records" in line for line in victim.log):
                await anyio.sleep(0.1)
        await session.close()
    finally:
        victim.stop()
    refusals = [line for line in victim.log if "refused" in line and "record" in line]
    assert len(refusals) <= 15, refusals[:20]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_batch_with_one_forged_chunk_keeps_the_good_files(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Of the small files fetched in one batch, those whose chunks match are written; the one
    whose chunk was forged is not, and the peer is reported."""
    key = FolderKey.generate()
    victim = Device("victim", tmp_path, key)
    mallory = Device("mallory", tmp_path, key)
    good = os.urandom(3000)
    good_id = chunk_id(key.chunk_id_key, good)
    bad_id = chunk_id(key.chunk_id_key, os.urandom(3000))
    victim.start([mallory], listen=True)
    try:
        session = await hostile_session(victim, mallory, key, [
            forged(mallory.identity, key, "good.txt", [[good_id, len(good)]]),
            forged(mallory.identity, key, "forged.txt", [[bad_id, 3000]]),
        ])  # fmt: skip
        with anyio.fail_after(30):
            async for message in session:
                if isinstance(message, ChunkBatchRequest):
                    assert sorted(message.chunks) == sorted([[good_id, 3000], [bad_id, 3000]])
                    answers: list[list[object]] = [
                        [0, good if chunk == good_id else b"x" * size]
                        for chunk, size in message.chunks
                    ]
                    await session.send(ChunkBatchResponse(message.request_id, answers))
                    break
            while not (victim.root / "good.txt").exists():
                await anyio.sleep(0.05)
            await anyio.sleep(0.5)
        await session.close()
        victim.stop()
        assert (victim.root / "good.txt").read_bytes() == good
        assert not (victim.root / "forged.txt").exists()
        errors = [e for e in victim.events if e.get("event") == "error"]
        assert any("does not match its ID" in e["detail"] for e in errors)
    finally:
        victim.stop()
