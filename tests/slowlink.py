"""A slow link on loopback: a TCP proxy that forwards each direction at a fixed rate.

    async with slow_link(target_port, rate=20_000) as port:   # 20 KB/s each way
        ...connect to 127.0.0.1:port instead of target_port...

It reads only as fast as it forwards (a token bucket refilled ``rate`` bytes per second, in
small steps), so the sender sees the link's pace through TCP back-pressure, as over a real
slow line (the kernel's socket buffers still hold what they hold). Everything stays on
127.0.0.1; leaving the context closes the listener and every connection through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc

__all__ = ["slow_link"]

#: How often the bucket is refilled: the pace is smooth at this granularity.
_STEP = 0.02


async def _pump(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, rate: int) -> None:
    """Forward ``source`` to ``sink`` at ``rate`` bytes per second, until either end closes."""
    piece = max(1, int(rate * _STEP))
    next_at = anyio.current_time()
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        while True:
            data = await source.receive(piece)
            await sink.send(data)
            # Each piece "takes" len(data) / rate seconds on the line.
            next_at = max(next_at, anyio.current_time() - _STEP) + len(data) / rate
            delay = next_at - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await sink.send_eof()


async def _relay(client: anyio.abc.SocketStream, target_port: int, rate: int) -> None:
    async with client:
        try:
            server = await anyio.connect_tcp("127.0.0.1", target_port)
        except OSError:
            return
        async with server, anyio.create_task_group() as tasks:
            tasks.start_soon(_pump, client, server, rate)
            tasks.start_soon(_pump, server, client, rate)


@contextlib.asynccontextmanager
async def slow_link(target_port: int, *, rate: int) -> AsyncIterator[int]:
    """A proxy to ``127.0.0.1:target_port`` at ``rate`` bytes/s each way; yields its port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def handle(client: anyio.abc.SocketStream) -> None:
        await _relay(client, target_port, rate)

    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handle)
        try:
            yield port
        finally:
            tasks.cancel_scope.cancel()


def main() -> None:
    """``python -m tests.slowlink TARGET_PORT RATE``: run the proxy until killed; its port is
    the first line printed (for benchmarks that drive daemons from another process)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.slowlink")
    parser.add_argument("target_port", type=int)
    parser.add_argument("rate", type=int, help="bytes per second, each way")
    args = parser.parse_args()

    async def serve() -> None:
        async with slow_link(args.target_port, rate=args.rate) as port:
            print(port, flush=True)
            await anyio.sleep_forever()

    anyio.run(serve, backend="trio")


if __name__ == "__main__":
    main()
