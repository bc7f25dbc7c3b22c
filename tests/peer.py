"""A peer device in its own process, for the channel and session tests.

    python -m tests.peer MODE --seed HEX --accept HEX [--folder-key HEX] [--backend trio]

It listens on 127.0.0.1 (an ephemeral port), prints ``{"port": N}``, then serves connections
until killed, printing one JSON line per connection: ``{"event": "done", ...}`` or
``{"event": "error", "type": ..., "message": ...}``. ``--accept`` is the one device ID (as a
public key) it accepts. MODE says how it behaves once the channel is up:

- ``session``: a well-behaved protocol peer that answers every message type;
- ``tamper``, ``replay``, ``reorder``, ``truncate``, ``oversize``: a hostile transport;
- ``malformed``, ``unknown-type``: a hostile protocol peer;
- ``hoard``: reads requests but answers none; ``stall``: never reads;
- ``silent``: never even answers the handshake.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
import anyio.abc

from commonsync import DeviceIdentity, FolderKey
from commonsync.errors import CommonsyncError
from commonsync.formats import encoding, messages
from commonsync.formats.device_id import DeviceId
from commonsync.formats.messages import (
    ChunkBatchRequest,
    ChunkBatchResponse,
    ChunkRequest,
    ChunkResponse,
    Folders,
    Hello,
    Index,
    IndexRequest,
    Message,
    Ping,
    Pong,
)
from commonsync.wire.channel import Channel, accept_channel
from commonsync.wire.session import Session, folder_proof

INDEX_ID = b"i" * 16


def chunk_data(chunk_id: bytes, size: int) -> bytes:
    """The content this peer serves for a chunk: cheap to make, easy to check."""
    return (chunk_id * (size // len(chunk_id) + 1))[:size]


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def serve_session(channel: Channel, folder: FolderKey | None) -> dict[str, Any]:
    session = Session(channel)
    seen: list[str] = []
    async for message in session:
        seen.append(type(message).__name__)
        if isinstance(message, Hello):
            await session.send(Hello(1, ["test"], "peer", "tests.peer"))
        elif isinstance(message, Folders):
            ours = []
            if folder is not None:
                theirs = folder_proof(folder, channel.handshake_hash, sender_is_initiator=True)
                if [f[0] for f in message.folders] == [theirs]:
                    proof = folder_proof(folder, channel.handshake_hash, sender_is_initiator=False)
                    ours = [[proof, INDEX_ID, 2]]
            await session.send(Folders(ours))
        elif isinstance(message, IndexRequest):
            records = [[n, bytes([n]) * 100] for n in range(message.after + 1, 3)]
            await session.send(Index(message.folder_id, INDEX_ID, records, 2))
        elif isinstance(message, ChunkRequest):
            data = chunk_data(message.chunk_id, message.size)
            await session.send(ChunkResponse(message.request_id, 0, data))
        elif isinstance(message, ChunkBatchRequest):
            # Chunk IDs starting with 0xff are ones this peer does not have.
            answers: list[list[object]] = [
                [1, b""] if chunk_id[0] == 0xFF else [0, chunk_data(chunk_id, size)]
                for chunk_id, size in message.chunks
            ]
            await session.send(ChunkBatchResponse(message.request_id, answers))
        elif isinstance(message, Ping):
            await session.send(Pong(message.nonce))
    return {"seen": seen}


async def answer_batches_badly(mode: str, channel: Channel) -> dict[str, Any]:
    """Answer a chunk batch with one chunk less, or with a single-chunk response."""
    async for message in Session(channel):
        if not isinstance(message, ChunkBatchRequest):
            continue
        chunks = [[0, chunk_data(chunk_id, size)] for chunk_id, size in message.chunks]
        answer: Message = (
            ChunkBatchResponse(message.request_id, chunks[1:])
            if mode == "short-batch"
            else ChunkResponse(message.request_id, *chunks[0])
        )
        # Not through the session: it would refuse to send this.
        await channel.send(messages.encode(answer))
    return {}


async def misbehave(mode: str, channel: Channel) -> dict[str, Any]:
    """Send what a peer must never send, then wait for the other side to hang up."""
    stream: anyio.abc.ByteStream = channel._stream
    core = channel._core
    if mode == "tamper":
        frame = bytearray(core.seal(b"a message that will not arrive intact"))
        frame[-5] ^= 0x01
        await stream.send(bytes(frame))
    elif mode == "replay":
        frame = core.seal(b"once")
        await stream.send(frame + frame)
    elif mode == "reorder":
        first, second = core.seal(b"first"), core.seal(b"second")
        await stream.send(second + first)
    elif mode == "truncate":
        frame = core.seal(b"x" * 1000)
        await stream.send(frame[: len(frame) // 2])
        await stream.aclose()
        return {}
    elif mode == "oversize":
        await stream.send((2**31).to_bytes(4, "big") + b"\x00" * 64)
    elif mode == "malformed":
        await channel.send(b"\xc1\x00\x01")  # 0xc1 is never valid msgpack
    elif mode == "unknown-type":
        await channel.send(encoding.pack([99, b"what is this"]))
    try:
        while True:
            await channel.receive()
    except (anyio.EndOfStream, CommonsyncError, anyio.ClosedResourceError):
        pass
    return {}


async def main(args: argparse.Namespace) -> None:
    identity = DeviceIdentity.from_seed(bytes.fromhex(args.seed))
    allowed = DeviceId.from_public_key(bytes.fromhex(args.accept))
    folder = FolderKey.from_bytes(bytes.fromhex(args.folder_key)) if args.folder_key else None
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    emit(port=listener.extra(anyio.abc.SocketAttribute.local_port))

    async def handle(stream: anyio.abc.ByteStream) -> None:
        if args.mode == "silent":
            await anyio.sleep_forever()
        try:
            channel = await accept_channel(stream, identity, accept=lambda d: d == allowed)
            async with channel:
                emit(event="established", peer=str(channel.peer))
                if args.mode == "stall":
                    await anyio.sleep_forever()
                elif args.mode == "hoard":  # takes requests, answers none
                    async for _ in Session(channel):
                        pass
                elif args.mode in ("short-batch", "single-answer"):
                    emit(event="done", **await answer_batches_badly(args.mode, channel))
                elif args.mode == "session":
                    emit(event="done", **await serve_session(channel, folder))
                else:
                    emit(event="done", **await misbehave(args.mode, channel))
        except CommonsyncError as exc:
            emit(event="error", type=type(exc).__name__, message=str(exc))

    await listener.serve(handle)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--seed", required=True)
    parser.add_argument("--accept", required=True)
    parser.add_argument("--folder-key", default="")
    parser.add_argument("--backend", default="trio")
    arguments = parser.parse_args()
    try:
        anyio.run(main, arguments, backend=arguments.backend)
    except KeyboardInterrupt:
        sys.exit(130)
