"""One device syncing one folder, in its own process, for the multi-device tests.

    python -m tests.device --root DIR --db FILE --seed HEX --key HEX --accept HEX [...]
                           [--listen] [--connect PORT ...] [--rescan SECONDS]
                           [--stall-timeout SECONDS]

It opens the folder through the library's :func:`commonsync.sync.folder.open_folder`, scans it,
then (``--listen``) serves peers on 127.0.0.1 and/or (``--connect``) keeps a connection to each
given port, reconnecting when one drops. It rescans every ``--rescan`` seconds (the daemon
will watch the file system instead). It prints JSON lines: ``{"port": N}`` first when
listening, then the folder's events, each with the folder's counters.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import anyio
import anyio.abc

from commonsync import DeviceIdentity, FolderKey, Session, accept_channel, connect_channel
from commonsync.errors import CommonsyncError
from commonsync.formats.device_id import DeviceId
from commonsync.sync.folder import Folder, open_folder
from commonsync.sync.store import open_store
from commonsync.wire.session import STALL_TIMEOUT


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def serve(folder: Folder, accepts: set[DeviceId], stall_timeout: float) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    emit(port=listener.extra(anyio.abc.SocketAttribute.local_port))

    async def handle(stream: anyio.abc.ByteStream) -> None:
        try:
            channel = await accept_channel(stream, folder.identity, accept=accepts.__contains__)
            await folder.sync(Session(channel, stall_timeout=stall_timeout))
        except CommonsyncError as exc:
            emit(event="peer error", detail=str(exc))

    await listener.serve(handle)


async def keep_connected(
    folder: Folder, port: int, accepts: set[DeviceId], stall_timeout: float
) -> None:
    while True:
        try:
            channel = await connect_channel(
                "127.0.0.1", port, folder.identity, accept=accepts.__contains__
            )
            await folder.sync(Session(channel, stall_timeout=stall_timeout))
        except (CommonsyncError, OSError) as exc:
            emit(event="peer error", detail=str(exc))
        await anyio.sleep(0.2)


async def rescan(folder: Folder, every: float) -> None:
    while True:
        await anyio.sleep(every)
        await folder.scan()


async def report(folder: Folder) -> None:
    async for event in folder.events():
        emit(
            event=event.kind.value,
            path=event.path,
            detail=event.detail,
            peer=event.peer,
            stats=asdict(folder.stats),
        )


async def main(args: argparse.Namespace) -> None:
    identity = DeviceIdentity.from_seed(bytes.fromhex(args.seed))
    key = FolderKey.from_bytes(bytes.fromhex(args.key))
    accepts = {DeviceId.from_public_key(bytes.fromhex(k)) for k in args.accept}
    async with (
        open_store(Path(args.db)) as store,
        open_folder(Path(args.root), key, identity, store, device_name=args.name) as folder,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(report, folder)
        await folder.scan()
        if args.listen:
            tasks.start_soon(serve, folder, accepts, args.stall_timeout)
        for port in args.connect:
            tasks.start_soon(keep_connected, folder, port, accepts, args.stall_timeout)
        if args.rescan:
            tasks.start_soon(rescan, folder, args.rescan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--seed", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--name", default="")
    parser.add_argument("--accept", action="append", default=[])
    parser.add_argument("--listen", action="store_true")
    parser.add_argument("--connect", type=int, action="append", default=[])
    parser.add_argument("--rescan", type=float, default=0.3)
    parser.add_argument("--stall-timeout", type=float, default=STALL_TIMEOUT)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    arguments = parser.parse_args()
    try:
        anyio.run(main, arguments, backend="trio")
    except KeyboardInterrupt:
        sys.exit(130)
