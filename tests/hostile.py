"""A hostile member for the security tests: a device built on the library that a real daemon
accepted and shared a folder with, and that then speaks the protocol itself, signing records
it builds field by field (so the library's own checks on what it sends do not apply).

    with scene(tmp_path) as (victim, bob):        # two daemons syncing "shared"
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")  # device add + share, then the Offer
        async with member_session(victim, mallory, key) as member:
            await member.send_records([forge(mallory, key, "a.txt", chunks=[...])])
            request = await member.next(ChunkBatchRequest)
            ...
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")

:func:`invite` drives the victim's real CLI; the member learns the folder key the way any
invited device does, from the victim's ``Offer`` inside the channel.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import selectors
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from commonsync import DeviceIdentity, FolderKey, Session, connect_channel
from commonsync.errors import RefusedByPeerError
from commonsync.formats import encoding
from commonsync.formats.messages import (
    ChunkBatchRequest,
    ChunkBatchResponse,
    ChunkRequest,
    ChunkResponse,
    Folders,
    Hello,
    Index,
    Message,
    Offer,
    Ping,
    Pong,
)
from commonsync.formats.records import Kind, seal_record
from commonsync.formats.versionvector import VersionVector
from commonsync.wire.session import folder_proof

from .daemons import LOOPBACK, Device, pair_and_share, wait_for

__all__ = [
    "IdleFlood",
    "Member",
    "forge",
    "invite",
    "member_session",
    "receive_offer",
    "scene",
    "still_syncs",
    "stranger_is_served",
]

_SIGNATURE_CONTEXT = b"commonsync record v1\x00"
_M = TypeVar("_M", bound=Message)
_sequences = itertools.count(1)


def forge(
    identity: DeviceIdentity,
    key: FolderKey,
    path: str,
    *,
    kind: Kind = Kind.FILE,
    chunks: Sequence[Sequence[object]] = (),
    size: int | None = None,
    mtime_ns: int = 1_700_000_000 * 10**9,
    mode: int = 0o644,
    deleted: bool = False,
    version: VersionVector | list[list[int]] | None = None,
    target: str = "",
    sequence: int | None = None,
    previous: bytes = b"",
    counter: int | None = None,
) -> bytes:
    """A record for ``path``, validly signed by ``identity`` and sealed with ``key``, built
    field by field (SPEC.md, "Record encoding") so that nothing checks it before it leaves.

    ``version`` defaults to a vector with one entry for ``identity`` at ``counter`` (default:
    a fresh, growing number, so that each forged record supersedes the one before)."""
    if version is None:
        version = VersionVector().bump(identity.device_id.short, counter or _next_counter())
    wire_version = version.to_wire() if isinstance(version, VersionVector) else version
    wire_chunks = [list(c) for c in chunks]
    body = encoding.pack([
        1, path, int(kind),
        sum(int(c[1]) for c in wire_chunks) if size is None else size,  # type: ignore[call-overload]
        mtime_ns, mode, deleted, wire_version, wire_chunks, target,
        identity.public_key, next(_sequences) if sequence is None else sequence, previous,
    ])  # fmt: skip
    signature = identity.sign(_SIGNATURE_CONTEXT + key.folder_id + body)
    return seal_record(key, encoding.pack([body, signature]))


_counter = itertools.count(1_800_000_000)


def _next_counter() -> int:
    return next(_counter)


def victim_port(victim: Device) -> int:
    return int(victim.status()["port"])


async def invite(
    victim: Device,
    member: DeviceIdentity,
    label: str,
    *,
    timeout: float = 30,
    path: Path | None = None,
) -> FolderKey:
    """Have the victim accept ``member`` as a device, add its folder (``path``, by default
    ``victim.folder``, created if needed) as ``label`` unless it has it, and share it with
    the member; then connect as the member and return the folder key the victim offers."""
    member_id = str(member.device_id)
    where = victim.folder if path is None else path

    def set_up() -> None:
        victim.run("device", "add", member_id, "--name", "mallory")
        labels = {f["label"] for f in victim.json("folder", "list")["folders"]}
        if label not in labels:
            where.mkdir(parents=True, exist_ok=True)
            victim.run("folder", "add", str(where), "--label", label)
        victim.run("share", label, member_id)

    await anyio.to_thread.run_sync(set_up)
    return await receive_offer(victim, member, timeout=timeout)


async def receive_offer(
    victim: Device, member: DeviceIdentity, *, timeout: float = 30
) -> FolderKey:
    """Connect as ``member`` proving no folder, and return the key of the first folder the
    victim offers (retrying while the victim has not yet taken the member as known)."""
    with anyio.fail_after(timeout):
        while True:
            port = await anyio.to_thread.run_sync(victim_port, victim)
            try:
                channel = await connect_channel("127.0.0.1", port, member, accept=lambda _d: True)
            except Exception:
                await anyio.sleep(0.2)
                continue
            session = Session(channel)
            try:
                await session.send(Hello(1, [], "mallory", "hostile test member"))
                await session.send(Folders([]))
                async for message in session:
                    if isinstance(message, Offer):
                        return FolderKey.from_bytes(message.key)
            except Exception:
                await anyio.sleep(0.2)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await channel.aclose()


class Member:
    """A live session of the hostile member with the victim, past the greetings.

    A background task reads everything the victim sends: it answers ``Ping`` and, from
    :attr:`chunks` (chunk ID → bytes), chunk requests when :attr:`answer_chunks` is set;
    every message is also queued for :meth:`next`."""

    def __init__(self, session: Session, key: FolderKey) -> None:
        self.session = session
        self.key = key
        self.chunks: dict[bytes, bytes] = {}
        self.answer_chunks = True
        self.received: list[Message] = []
        self._in, self._out = anyio.create_memory_object_stream[Message](100_000)
        self._sequence = 0

    async def send(self, message: Message) -> None:
        await self.session.send(message)

    async def send_records(self, sealed: Sequence[bytes], *, index_id: bytes = b"m" * 16) -> None:
        """Send sealed records as one ``Index`` batch, numbered after the last ones sent."""
        batch: list[list[object]] = []
        for record in sealed:
            self._sequence += 1
            batch.append([self._sequence, record])
        await self.send(Index(self.key.folder_id, index_id, batch, self._sequence))

    async def next(self, kind: type[_M], *, timeout: float = 30) -> _M:
        """The next message of type ``kind`` the victim sends (others are skipped)."""
        with anyio.fail_after(timeout):
            async for message in self._out:
                if isinstance(message, kind):
                    return message
        raise AssertionError(f"the session ended before a {kind.__name__}")

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for message in self.session:
                self.received.append(message)
                if isinstance(message, Ping):
                    await self.send(Pong(message.nonce))
                elif isinstance(message, ChunkRequest) and self.answer_chunks:
                    data = self.chunks.get(message.chunk_id)
                    status, payload = (1, b"") if data is None else (0, data)
                    await self.send(ChunkResponse(message.request_id, status, payload))
                elif isinstance(message, ChunkBatchRequest) and self.answer_chunks:
                    answers: list[list[object]] = [
                        [1, b""] if (d := self.chunks.get(c)) is None else [0, d]
                        for c, _size in message.chunks
                    ]
                    await self.send(ChunkBatchResponse(message.request_id, answers))
                with contextlib.suppress(anyio.WouldBlock):
                    self._in.send_nowait(message)
        self._in.close()


@asynccontextmanager
async def member_session(
    victim: Device,
    member: DeviceIdentity,
    key: FolderKey,
    *,
    name: str = "mallory",
    read: bool = True,
) -> AsyncIterator[Member]:
    """A session of ``member`` with the victim proving it holds ``key``'s folder. Unless
    ``read``, the member reads nothing the victim sends (a member that lets the victim's
    sends pile up: :meth:`Member.next` then waits in vain)."""
    port = await anyio.to_thread.run_sync(victim_port, victim)
    channel = await connect_channel("127.0.0.1", port, member, accept=lambda _d: True)
    session = Session(channel)
    await session.send(Hello(1, [], name, "hostile test member"))
    proof = folder_proof(key, channel.handshake_hash, sender_is_initiator=True)
    await session.send(Folders([[proof, bytes(16), 0]]))
    member_ = Member(session, key)
    async with anyio.create_task_group() as tasks:
        if read:
            tasks.start_soon(member_._read)
        try:
            yield member_
        finally:
            tasks.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await channel.aclose()


@contextlib.contextmanager
def scene(
    base: Path, label: str = "shared", *, victim_nofile: int | None = None
) -> Iterator[tuple[Device, Device]]:
    """A victim daemon and a well-behaved peer daemon (bob) that share the folder ``label``,
    synced once; both are killed at the end. Invite the hostile member with :func:`invite`.
    ``victim_nofile`` caps the victim's file descriptors (:meth:`Device.start`)."""
    victim, bob = Device(base, "victim"), Device(base, "bob")
    try:
        for device in (victim, bob):
            device.init(*LOOPBACK)
        victim.start(nofile=victim_nofile)
        bob.start()
        pair_and_share(victim, bob, label)
        (victim.folder / "before.txt").write_text("synced before the attack\n")
        wait_for(lambda: (bob.folder / "before.txt").exists(), "the first sync to bob")
        yield victim, bob
    finally:
        for device in (victim, bob):
            device.kill()


def still_syncs(victim: Device, bob: Device, name: str, *, timeout: float = 30) -> float:
    """Bob writes a file and it reaches the victim; the victim writes one back and it reaches
    bob: the victim still serves its well-behaved peer. Returns the seconds both took."""
    payload = os.urandom(64 * 1024)
    (bob.folder / f"{name}-from-bob.bin").write_bytes(payload)
    took = wait_for(
        lambda: _holds(victim.folder / f"{name}-from-bob.bin", payload),
        f"{name}-from-bob.bin to reach the victim",
        timeout,
    )
    (victim.folder / f"{name}-from-victim.bin").write_bytes(payload)
    return took + wait_for(
        lambda: _holds(bob.folder / f"{name}-from-victim.bin", payload),
        f"{name}-from-victim.bin to reach bob",
        timeout,
    )


def _holds(path: Path, payload: bytes) -> bool:
    try:
        return path.read_bytes() == payload
    except OSError:
        return False


async def stranger_is_served(port: int, *, timeout: float = 20) -> bool:
    """A device nobody knows connects (again, until ``timeout``, while its connection is
    closed unanswered): True once the victim ran the handshake with it (and refused it, as
    it refuses strangers), False if that never happened."""
    stranger = DeviceIdentity.generate()
    with anyio.move_on_after(timeout):
        while True:
            try:
                channel = await connect_channel("127.0.0.1", port, stranger, accept=lambda _d: True)
            except RefusedByPeerError:
                return True
            except Exception:
                await anyio.sleep(0.2)
                continue
            await channel.aclose()
            return True
    return False


class IdleFlood:
    """A stranger's idle connections: ``count`` TCP connections to ``127.0.0.1:port`` that
    never send a byte, spread over the ``sources`` (addresses in 127.0.0.0/8 to bind to),
    held by a thread until :meth:`stop`. With ``reopen``, each one the victim closes is
    opened again (at most ``reopen_per_second`` in all), as a persistent attacker would.

    :attr:`closed` counts the connections the victim closed, :attr:`open` those held now."""

    def __init__(
        self,
        port: int,
        count: int,
        sources: Sequence[str] = ("127.0.0.1",),
        *,
        reopen: bool = False,
        reopen_per_second: float = 200.0,
    ) -> None:
        self.port = port
        self.count = count
        self.sources = list(sources)
        self.reopen = reopen
        self.reopen_per_second = reopen_per_second
        self.opened = 0
        self.closed = 0
        self.failed = 0
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="idle-flood", daemon=True)

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._selector.get_map())

    def start(self) -> IdleFlood:
        for i in range(self.count):
            self._open(self.sources[i % len(self.sources)])
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for key in list(self._selector.get_map().values()):
                self._selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def __enter__(self) -> IdleFlood:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _open(self, source: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((source, 0))
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", self.port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
        except OSError:
            sock.close()
            self.failed += 1
            return
        with self._lock:
            self._selector.register(sock, selectors.EVENT_READ, source)
        self.opened += 1

    def _run(self) -> None:
        owed: list[str] = []
        budget, stamp = 0.0, time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                events = self._selector.select(timeout=0.05)
                for key, _mask in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        continue  # a handshake reply: ignore it, say nothing
                    self._selector.unregister(sock)
                    sock.close()
                    self.closed += 1
                    if self.reopen:
                        owed.append(key.data)
            now = time.monotonic()
            budget = min(budget + (now - stamp) * self.reopen_per_second, 50.0)
            stamp = now
            while owed and budget >= 1:
                budget -= 1
                self._open(owed.pop())
            if not events:
                time.sleep(0.01)  # select under the lock returned at once: let stop() in
