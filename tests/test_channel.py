"""The channel and the session between two processes on loopback.

This process is the initiator; ``tests/peer.py`` runs the responder in its own process, well
behaved or hostile as each test asks. Both backends are driven: trio and asyncio.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from commonsync import DeviceIdentity, FolderKey
from commonsync.errors import (
    ChannelError,
    FrameTooLargeError,
    HandshakeTimeoutError,
    ProtocolError,
    RefusedByPeerError,
    TamperedFrameError,
    TruncatedStreamError,
)
from commonsync.formats import encoding, messages
from commonsync.formats.messages import (
    MAX_BATCH_BYTES,
    ChunkBatchRequest,
    ChunkBatchResponse,
    ChunkRequest,
    ChunkResponse,
    Close,
    CloseReason,
    Folders,
    Hello,
    Index,
    IndexRequest,
    Ping,
    Pong,
)
from commonsync.wire.channel import Channel, accept_channel, connect_channel
from commonsync.wire.handshake import PeerRefusedError
from commonsync.wire.session import Session, folder_proof

from .peer import INDEX_ID, chunk_data

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 20


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Peer:
    """A running ``tests.peer`` process and the events it prints."""

    def __init__(self, process: subprocess.Popen[str], identity: DeviceIdentity) -> None:
        self.process = process
        self.identity = identity
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port: int = self.event()["port"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def event(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the peer said nothing within {timeout} s") from None
        event: dict[str, Any] = json.loads(line)
        return event

    def outcome(self) -> dict[str, Any]:
        """The next event that ends a connection (skipping "established")."""
        while (event := self.event())["event"] == "established":
            pass
        return event


@pytest.fixture
def me() -> DeviceIdentity:
    return DeviceIdentity.generate()


@contextmanager
def run_peer(
    mode: str, accepts: DeviceIdentity, *, folder: FolderKey | None = None, backend: str = "trio"
) -> Iterator[Peer]:
    identity = DeviceIdentity.generate()
    command = [
        sys.executable, "-m", "tests.peer", mode,
        "--seed", identity.seed.hex(),
        "--accept", accepts.public_key.hex(),
        "--backend", backend,
    ]  # fmt: skip
    if folder is not None:
        command += ["--folder-key", folder.to_bytes().hex()]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        yield Peer(process, identity)
    finally:
        process.kill()
        process.wait(timeout=TIMEOUT)


async def connect(peer: Peer, me: DeviceIdentity, **kwargs: Any) -> Channel:
    kwargs.setdefault("accept", lambda d: d == peer.identity.device_id)
    return await connect_channel("127.0.0.1", peer.port, me, **kwargs)


# -- the whole protocol, and a 256 MiB payload --------------------------------------------------


async def exchange_every_message_type(session: Session, folder: FolderKey) -> None:
    channel = session.channel
    await session.send(Hello(1, ["test"], "me", "tests"))
    hello = await session.receive()
    assert isinstance(hello, Hello)
    assert hello.client == "tests.peer"

    proof = folder_proof(folder, channel.handshake_hash, sender_is_initiator=True)
    await session.send(Folders([[proof, b"m" * 16, 0]]))
    shared = await session.receive()
    assert isinstance(shared, Folders)
    expected = folder_proof(folder, channel.handshake_hash, sender_is_initiator=False)
    assert shared.folders == [[expected, INDEX_ID, 2]]

    await session.send(IndexRequest(folder.folder_id, INDEX_ID, 0))  # the full index
    index = await session.receive()
    assert isinstance(index, Index)
    assert [r[0] for r in index.records] == [1, 2]
    await session.send(IndexRequest(folder.folder_id, INDEX_ID, 1))  # the delta after 1
    delta = await session.receive()
    assert isinstance(delta, Index)
    assert [r[0] for r in delta.records] == [2]

    await session.send(Ping(7))
    assert await session.receive() == Pong(7)


async def pull_chunks(session: Session, folder: FolderKey, total: int, size: int) -> int:
    """Request ``total`` bytes in chunks of ``size`` while responses flow back, as the sync
    engine will; check every byte."""
    received = 0
    expected: dict[int, bytes] = {}

    async def request_all() -> None:
        for n in range(total // size):
            chunk_id = n.to_bytes(32, "big")
            request_id = session.new_request_id()
            expected[request_id] = chunk_id
            await session.send(ChunkRequest(request_id, folder.folder_id, chunk_id, size))
            assert session.outstanding_bytes <= session.max_outstanding

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(request_all)
        while received < total:
            response = await session.receive()
            assert isinstance(response, ChunkResponse)
            assert response.status == 0
            assert response.data == chunk_data(expected.pop(response.request_id), size)
            received += len(response.data)
    return received


async def test_every_message_type_and_256_mib(me: DeviceIdentity, anyio_backend: str) -> None:
    folder = FolderKey.generate()
    with run_peer("session", me, folder=folder, backend=anyio_backend) as peer:
        with anyio.fail_after(120):
            channel = await connect(peer, me, features=["test"])
            assert channel.peer == peer.identity.device_id
            assert channel.version == 1
            assert peer.event() == {"event": "established", "peer": str(me.device_id)}
            session = Session(channel)
            await exchange_every_message_type(session, folder)
            total = 256 * 1024 * 1024
            assert await pull_chunks(session, folder, total, 4 * 1024 * 1024) == total
            await session.close()
        done = peer.outcome()
    assert done["event"] == "done"
    seen = done["seen"]
    assert {"Hello", "Folders", "IndexRequest", "ChunkRequest", "Ping"} <= set(seen)
    assert seen.count("ChunkRequest") == 64


async def test_a_stranger_learns_no_folder(me: DeviceIdentity, anyio_backend: str) -> None:
    with run_peer("session", me, folder=FolderKey.generate(), backend=anyio_backend) as peer:
        async with await connect(peer, me) as channel:
            session = Session(channel)
            stranger = FolderKey.generate()
            guess = folder_proof(stranger, channel.handshake_hash, sender_is_initiator=True)
            await session.send(Folders([[guess, b"m" * 16, 0]]))
            assert await session.receive() == Folders([])


# -- who may talk to whom ------------------------------------------------------------------------


async def test_wrong_peer_key_is_refused_on_both_sides(me: DeviceIdentity) -> None:
    expected = DeviceIdentity.generate().device_id
    with run_peer("session", me) as peer:
        with pytest.raises(PeerRefusedError, match=str(peer.identity.device_id)) as refused:
            await connect(peer, me, accept=lambda d: d == expected)
        assert refused.value.device_id == peer.identity.device_id
        outcome = peer.outcome()
    assert outcome["type"] == "RefusedByPeerError"


async def test_unknown_device_is_refused_on_both_sides(anyio_backend: str) -> None:
    stranger = DeviceIdentity.generate()
    with run_peer("session", DeviceIdentity.generate(), backend=anyio_backend) as peer:
        with pytest.raises(RefusedByPeerError, match=str(stranger.device_id)):
            await connect(peer, stranger)
        outcome = peer.outcome()
    assert outcome["type"] == "PeerRefusedError"
    assert str(stranger.device_id) in outcome["message"]


async def test_a_silent_peer_times_out(me: DeviceIdentity) -> None:
    with run_peer("silent", me) as peer, pytest.raises(HandshakeTimeoutError):
        await connect(peer, me, timeout=1)


# -- hostile transports ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("tamper", TamperedFrameError),
        ("replay", TamperedFrameError),
        ("reorder", TamperedFrameError),
        ("truncate", TruncatedStreamError),
        ("oversize", FrameTooLargeError),
    ],
)
async def test_hostile_frames_close_the_channel(
    me: DeviceIdentity, anyio_backend: str, mode: str, error: type[Exception]
) -> None:
    with run_peer(mode, me) as peer:
        with anyio.fail_after(TIMEOUT):
            channel = await connect(peer, me)
            if mode == "replay":
                assert await channel.receive() == b"once"
            with pytest.raises(error):
                await channel.receive()
            with pytest.raises(anyio.ClosedResourceError):
                await channel.receive()  # the channel is closed for good
        assert peer.outcome()["event"] == "done"


@pytest.mark.parametrize("mode", ["malformed", "unknown-type"])
async def test_a_hostile_message_ends_the_session(me: DeviceIdentity, mode: str) -> None:
    with run_peer(mode, me) as peer:
        with anyio.fail_after(TIMEOUT):
            session = Session(await connect(peer, me))
            with pytest.raises(ProtocolError):
                await session.receive()
        assert peer.outcome()["event"] == "done"


@pytest.mark.parametrize(
    ("message", "complaint"),
    [(b"\xc1\x00", "msgpack"), (encoding.pack([99, b"?"]), "unknown message type 99")],
)
async def test_bad_input_closes_only_that_session(
    me: DeviceIdentity, anyio_backend: str, message: bytes, complaint: str
) -> None:
    with run_peer("session", me) as peer:
        with anyio.fail_after(TIMEOUT):
            async with await connect(peer, me) as channel:
                await channel.send(message)
                reply = messages.decode(await channel.receive())
            assert isinstance(reply, Close)
            assert reply.reason == CloseReason.PROTOCOL_ERROR
            assert complaint in reply.detail
            outcome = peer.outcome()
            assert outcome["type"] == "ProtocolError"
            # The peer goes on serving others.
            session = Session(await connect(peer, me))
            await session.send(Ping(1))
            assert await session.receive() == Pong(1)
            await session.close()
        assert peer.outcome()["event"] == "done"


async def test_session_close_reasons_reach_the_peer(me: DeviceIdentity) -> None:
    with run_peer("session", me) as peer:
        async with await connect(peer, me) as channel:
            await channel.send(encoding.pack([5, 1, b"f" * 32, b"c" * 32, 99 * 2**20]))
            reply = messages.decode(await channel.receive())
        assert isinstance(reply, Close)
        assert "size" in reply.detail
        peer.outcome()


async def test_a_greedy_peer_is_told_it_overloads(me: DeviceIdentity) -> None:
    folder = FolderKey.generate()
    with run_peer("hoard", me) as peer:
        async with await connect(peer, me) as channel:
            for n in range(17):  # 17 times 4 MiB is over the 64 MiB budget
                request = ChunkRequest(n, folder.folder_id, bytes(32), 4 * 1024 * 1024)
                await channel.send(messages.encode(request))
            with anyio.fail_after(TIMEOUT):
                reply = messages.decode(await channel.receive())
        assert isinstance(reply, Close)
        assert reply.reason == CloseReason.OVERLOADED
        assert peer.outcome()["type"] == "PeerOverloadError"


# -- a peer that stops reading -----------------------------------------------------------------


async def test_a_peer_that_stops_reading_stalls_the_sender(
    me: DeviceIdentity, anyio_backend: str
) -> None:
    """The sender blocks once the kernel's buffers are full; it does not queue without end."""
    message = os.urandom(1024 * 1024)
    with run_peer("stall", me) as peer:
        async with await connect(peer, me) as channel:
            sent = 0
            with anyio.move_on_after(1.5) as stalled:
                while True:
                    await channel.send(message)
                    sent += len(message)
            assert stalled.cancelled_caught
            # What left this process sits in socket buffers: a few MiB, never the 1.5 s of data
            # an unbounded queue would hold.
            assert sent < 64 * 1024 * 1024
            # The cancelled send may have left half a frame on the wire: no more sending.
            with pytest.raises(ChannelError, match="interrupted"):
                await channel.send(b"more")


async def test_session_requests_wait_for_budget(me: DeviceIdentity) -> None:
    folder = FolderKey.generate()
    with run_peer("stall", me) as peer:
        session = Session(await connect(peer, me), max_outstanding=8 * 1024 * 1024)
        size = 4 * 1024 * 1024
        await session.send(ChunkRequest(1, folder.folder_id, bytes(32), size))
        await session.send(ChunkRequest(2, folder.folder_id, bytes(32), size))
        with anyio.move_on_after(0.5) as waiting:
            await session.send(ChunkRequest(3, folder.folder_id, bytes(32), size))
        assert waiting.cancelled_caught
        assert session.outstanding_bytes == 2 * size
        await session.close(CloseReason.SHUTTING_DOWN, "test over")


# -- chunk batches ------------------------------------------------------------------------------


async def test_a_chunk_batch_comes_back_in_one_response(me: DeviceIdentity) -> None:
    folder = FolderKey.generate()
    wanted = [[b"a" * 32, 4096], [b"\xff" * 32, 10], [b"b" * 32, 70]]  # 0xff...: not there
    with run_peer("session", me) as peer:
        session = Session(await connect(peer, me))
        await session.send(ChunkBatchRequest(1, folder.folder_id, wanted))
        assert session.outstanding_bytes == 4096 + 10 + 70
        with anyio.fail_after(TIMEOUT):
            response = await session.receive()
        assert response == ChunkBatchResponse(
            1, [[0, chunk_data(b"a" * 32, 4096)], [1, b""], [0, chunk_data(b"b" * 32, 70)]]
        )
        assert session.outstanding_bytes == 0
        await session.close()


async def test_a_chunk_batch_over_its_byte_limit_is_refused(me: DeviceIdentity) -> None:
    folder = FolderKey.generate()
    size = 4 * 1024 * 1024
    chunks = [[bytes([n]) * 32, size] for n in range(MAX_BATCH_BYTES // size + 1)]
    with run_peer("session", me) as peer:
        async with await connect(peer, me) as channel:
            await channel.send(messages.encode(ChunkBatchRequest(1, folder.folder_id, chunks)))
            with anyio.fail_after(TIMEOUT):
                reply = messages.decode(await channel.receive())
        assert isinstance(reply, Close)
        assert reply.reason == CloseReason.PROTOCOL_ERROR
        assert f"over {MAX_BATCH_BYTES} bytes" in reply.detail
        assert peer.outcome()["type"] == "ProtocolError"


async def test_a_chunk_batch_answer_must_hold_every_chunk_asked_for(me: DeviceIdentity) -> None:
    folder = FolderKey.generate()
    with run_peer("short-batch", me) as peer:
        session = Session(await connect(peer, me))
        await session.send(ChunkBatchRequest(1, folder.folder_id, [[b"a" * 32, 9], [b"b" * 32, 9]]))
        with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError, match="has 1 chunks, 2 were"):
            await session.receive()


async def test_a_single_chunk_response_cannot_answer_a_batch(me: DeviceIdentity) -> None:
    folder = FolderKey.generate()
    with run_peer("single-answer", me) as peer:
        session = Session(await connect(peer, me))
        await session.send(ChunkBatchRequest(5, folder.folder_id, [[b"a" * 32, 9]]))
        with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError, match="wrong kind"):
            await session.receive()


async def test_a_closing_peer_gives_its_reason(me: DeviceIdentity) -> None:
    """SessionClosedError carries the reason a peer gave."""
    folder = FolderKey.generate()
    with run_peer("session", me) as peer:
        session = Session(await connect(peer, me), max_outstanding=2 * 1024 * 1024)
        await session.channel.send(
            messages.encode(ChunkRequest(1, folder.folder_id, bytes(32), 4096))
        )
        # A response to request 1 arrives, but Session never sent it: a protocol error here.
        with pytest.raises(ProtocolError, match="never sent"):
            await session.receive()
        outcome = peer.outcome()
    assert outcome["type"] == "SessionClosedError"
    assert "protocol error" in outcome["message"]


# -- cancelled senders -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def channel_pair(me: DeviceIdentity) -> AsyncIterator[tuple[Channel, Channel]]:
    """Two ends of a channel in this process, over a real TCP connection on loopback."""
    other = DeviceIdentity.generate()
    accepted: list[Channel] = []
    ready = anyio.Event()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.ByteStream) -> None:
        accepted.append(await accept_channel(stream, other, accept=lambda d: True))
        ready.set()
        await anyio.sleep_forever()

    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handle)
        near = await connect_channel("127.0.0.1", port, me, accept=lambda d: True)
        await ready.wait()
        try:
            yield near, accepted[0]
        finally:
            tasks.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await near.aclose()
                await accepted[0].aclose()


async def test_a_sender_cancelled_mid_send_never_breaks_the_channel(
    me: DeviceIdentity, anyio_backend: str
) -> None:
    """Cancelling a send abandons it before its frame starts or lets the frame finish: never
    half a frame on the wire. Four senders of large messages to a slow reader, each send
    cancelled at a random moment."""
    rng = random.Random(1311)
    sent: set[int] = set()  # sends that returned
    abandoned: set[int] = set()  # sends cancelled before their frame started
    deferred: set[int] = set()  # sends whose cancellation came while their frame was written
    received: list[int] = []

    async def read(channel: Channel) -> None:
        while (data := await channel.receive()) != b"end":
            n = int.from_bytes(data[:4], "big")
            assert data[4:] == bytes([n % 251]) * (len(data) - 4), f"message {n} is damaged"
            received.append(n)
            if rng.random() < 0.3:
                await anyio.sleep(0.005)  # a slow reader: senders block mid-frame

    async def send_some(channel: Channel, first: int) -> None:
        for n in range(first, first + 40):
            data = n.to_bytes(4, "big") + bytes([n % 251]) * rng.randint(0, 3 * 1024 * 1024)
            with anyio.move_on_after(rng.random() * 0.01) as scope:
                await channel.send(data)
                sent.add(n)
            if scope.cancelled_caught:
                abandoned.add(n)
            elif scope.cancel_called:
                deferred.add(n)

    with anyio.fail_after(60):
        async with channel_pair(me) as (near, far), anyio.create_task_group() as tasks:
            tasks.start_soon(read, far)
            async with anyio.create_task_group() as senders:
                for first in range(0, 160, 40):
                    senders.start_soon(send_some, near, first)
            await near.send(b"end")
    assert set(received) == sent, "a send that returned did not arrive, or an abandoned one did"
    for first in range(0, 160, 40):
        mine = [n for n in received if first <= n < first + 40]
        assert mine == sorted(mine), "one sender's messages arrived out of order"
    assert abandoned, "no send was abandoned: the test did not test that"
    assert deferred, "no cancellation came mid-frame: the test did not test that"
