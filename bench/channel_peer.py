"""One end of the C1 benchmark's transfer, in its own process (started by bench/channel.py).

    python -m bench.channel_peer receive --transport channel|tcp --peer HEX --timeout S
    python -m bench.channel_peer send --transport channel|tcp --peer HEX --bytes N
        --message-size M --pool P --timeout S

Both run under trio (through anyio). Secrets do not go on the command line: each reads the hex
seed of its own identity as the first line of stdin. ``--peer`` is the other side's public key
(hex), the only device ID it accepts. Each prints one JSON line per step on stdout:

- ``receive`` listens on 127.0.0.1 (ephemeral port) and prints ``{"event": "listening",
  "port": N}``; accepts one connection (and, with ``channel``, runs the handshake), prints
  ``{"event": "ready"}``; reads until the end of the stream and prints ``{"event": "done",
  "bytes": N, "messages": M, "seconds": S}``, S running from the first data received to the
  end of the stream (authenticated, with ``channel``).
- ``send`` makes its buffers (``--pool`` distinct random ones of ``--message-size`` bytes,
  cycled), reads the port as the next stdin line, connects (and runs the handshake), prints
  ``{"event": "ready"}``, waits for a ``go`` line, sends ``--bytes`` bytes in messages of
  ``--message-size``, closes (with ``channel``: the authenticated end of stream) and prints
  ``{"event": "sent", "seconds": S}``.

Every wait is bounded by ``--timeout``; on any failure the process prints ``{"event":
"error", ...}`` and exits non-zero. ``--profile PATH`` writes cProfile statistics of the
transfer (a diagnostic: the benchmark does not use it).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from commonsync import DeviceIdentity
from commonsync.formats.device_id import DeviceId
from commonsync.wire.channel import accept_channel, connect_channel

#: Plain TCP reads ask for this much at a time (about what the channel asks for per frame).
TCP_READ = 1 << 20


class LineReader:
    """Lines from a pipe, each wait bounded (select on the raw descriptor, no buffering that
    would hide data from select). EOF gives ``None``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""
        self._eof = False

    def line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self._eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"nothing read within {timeout:.0f} s")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                data = os.read(self.fd, 65536)
                if not data:
                    self._eof = True
                    if not self._buffer:
                        return None
                    self._buffer += b"\n"
                self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def _required_line(stdin: LineReader, what: str, timeout: float) -> str:
    line = stdin.line(timeout)
    if line is None:
        raise EOFError(f"stdin closed before the {what}")
    return line.strip()


async def receive(args: argparse.Namespace, identity: DeviceIdentity, peer: DeviceId) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener:
        emit(event="listening", port=listener.extra(anyio.abc.SocketAttribute.local_port))
        only = listener.listeners[0]  # 127.0.0.1: one address, one listener
        assert isinstance(only, anyio.abc.SocketListener)
        with anyio.fail_after(args.timeout):
            stream = await only.accept()
    received = messages = 0
    first = 0.0
    if args.transport == "channel":
        channel = await accept_channel(stream, identity, accept=lambda device: device == peer)
        async with channel:
            emit(event="ready")
            with anyio.fail_after(args.timeout):
                while True:
                    try:
                        message = await channel.receive()
                    except anyio.EndOfStream:
                        break
                    if not messages:
                        first = time.perf_counter()
                    messages += 1
                    received += len(message)
    else:
        async with stream:
            emit(event="ready")
            with anyio.fail_after(args.timeout):
                while True:
                    try:
                        data = await stream.receive(TCP_READ)
                    except anyio.EndOfStream:
                        break
                    if not messages:
                        first = time.perf_counter()
                    messages += 1
                    received += len(data)
    seconds = time.perf_counter() - first if messages else 0.0
    emit(event="done", bytes=received, messages=messages, seconds=seconds)


async def send(
    args: argparse.Namespace, identity: DeviceIdentity, peer: DeviceId, stdin: LineReader
) -> None:
    pool = [os.urandom(args.message_size) for _ in range(args.pool)]
    port = int(_required_line(stdin, "port", args.timeout))
    count, rest = divmod(args.bytes, args.message_size)
    sizes = [args.message_size] * count + ([rest] if rest else [])

    async def go() -> None:
        line = await anyio.to_thread.run_sync(stdin.line, args.timeout, abandon_on_cancel=True)
        if line is None or line.strip() != "go":
            raise EOFError(f"expected 'go' on stdin, got {line!r}")

    if args.transport == "channel":
        channel = await connect_channel(
            "127.0.0.1", port, identity, accept=lambda device: device == peer
        )
        async with channel:
            emit(event="ready")
            await go()
            started = time.perf_counter()
            with anyio.fail_after(args.timeout):
                for i, size in enumerate(sizes):
                    buffer = pool[i % len(pool)]
                    await channel.send(buffer if size == len(buffer) else buffer[:size])
                await channel.aclose()
    else:
        with anyio.fail_after(args.timeout):
            stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            emit(event="ready")
            await go()
            started = time.perf_counter()
            with anyio.fail_after(args.timeout):
                for i, size in enumerate(sizes):
                    buffer = pool[i % len(pool)]
                    await stream.send(buffer if size == len(buffer) else buffer[:size])
                await stream.send_eof()
    emit(event="sent", seconds=time.perf_counter() - started)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.channel_peer")
    parser.add_argument("role", choices=["send", "receive"])
    parser.add_argument("--transport", choices=["channel", "tcp"], required=True)
    parser.add_argument("--peer", required=True, help="the other side's public key, hex")
    parser.add_argument("--bytes", type=int, default=1 << 30)
    parser.add_argument("--message-size", type=int, default=1 << 20)
    parser.add_argument("--pool", type=int, default=64, help="distinct buffers, cycled")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--profile", metavar="PATH", help="write cProfile statistics here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stdin = LineReader(sys.stdin.fileno())
    try:
        identity = DeviceIdentity.from_seed(bytes.fromhex(_required_line(stdin, "seed", 30)))
        peer = DeviceId.from_public_key(bytes.fromhex(args.peer))
        if args.role == "receive":
            entry: Callable[[], Any] = lambda: receive(args, identity, peer)  # noqa: E731
        else:
            entry = lambda: send(args, identity, peer, stdin)  # noqa: E731
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            try:
                anyio.run(entry, backend="trio")
            finally:
                profiler.disable()
                profiler.dump_stats(args.profile)
        else:
            anyio.run(entry, backend="trio")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        emit(event="error", type=type(exc).__name__, message=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
