"""Sync two directories through the commonsync library, on loopback, and show progress.

    python examples/sync_two_folders.py                  # a generated sample, in a temp dir
    python examples/sync_two_folders.py SOURCE TARGET    # SOURCE's content arrives in TARGET

Two devices ("alice" with SOURCE, "bob" with TARGET) are created, share one folder key, and
keep their indexes in their own SQLite stores. Bob listens on 127.0.0.1; Alice connects
through the authenticated, encrypted channel; both run :meth:`Folder.sync` until Bob holds
everything Alice announced. Changes go both ways: whatever TARGET already holds reaches
SOURCE too, and concurrent edits become conflict copies. Keys and stores live in a temporary
directory; each folder gets its ``.commonsync`` metadata directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import anyio
import anyio.abc

from commonsync import (
    DeviceIdentity,
    EventKind,
    Folder,
    FolderKey,
    Session,
    accept_channel,
    connect_channel,
    open_folder,
    open_store,
)


def make_sample(root: Path) -> None:
    """A few files of the kinds people keep: text, a photo-sized file, nested folders."""
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "agenda.txt").write_text("Choir rehearsal: Thursday 19:00\n")
    (root / "notes" / "répertoire.md").write_text("# Répertoire\n- Brahms\n- Fauré\n")
    (root / "photos" / "2026").mkdir(parents=True)
    (root / "photos" / "2026" / "concert.raw").write_bytes(os.urandom(24 * 1024 * 1024))
    (root / "empty folder").mkdir()


async def caught_up(receiver: Folder, sender: Folder) -> bool:
    """Whether ``receiver`` has every record ``sender`` holds, and wrote them all to disk."""
    _index_id, sequence = await sender.index_state()
    received = await receiver.peer_progress(sender.identity.device_id)
    return received is not None and received[1] >= sequence and receiver.progress().idle


async def report(folder: Folder, name: str) -> None:
    async for event in folder.events():
        if event.kind in (EventKind.APPLIED, EventKind.DELETED, EventKind.CONFLICT):
            left = folder.progress()
            print(f"{name}: {event.kind.value:<8} {event.path}   "
                  f"({left.files} entries, {left.bytes / 2**20:.1f} MiB left)")  # fmt: skip
        elif event.kind is EventKind.ERROR:
            print(f"{name}: error   {event.path}: {event.detail}", file=sys.stderr)


async def sync(source: Path, target: Path, state: Path) -> None:
    alice, bob = DeviceIdentity.generate(), DeviceIdentity.generate()
    key = FolderKey.generate()
    started = time.monotonic()
    async with (
        open_store(state / "alice.db") as alice_store,
        open_store(state / "bob.db") as bob_store,
        open_folder(source, key, alice, alice_store, device_name="alice") as alice_folder,
        open_folder(target, key, bob, bob_store, device_name="bob") as bob_folder,
        anyio.create_task_group() as tasks,
    ):
        print(f"alice scans {source}: {await alice_folder.scan()}")
        print(f"bob scans {target}: {await bob_folder.scan()}")
        tasks.start_soon(report, alice_folder, "alice")
        tasks.start_soon(report, bob_folder, "bob")

        # Each side accepts only the other: the channel proves both device keys.
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def bob_serves(stream: anyio.abc.ByteStream) -> None:
            channel = await accept_channel(stream, bob, accept=lambda d: d == alice.device_id)
            await bob_folder.sync(Session(channel))

        tasks.start_soon(listener.serve, bob_serves)
        channel = await connect_channel(
            "127.0.0.1", port, alice, accept=lambda d: d == bob.device_id
        )
        tasks.start_soon(alice_folder.sync, Session(channel))

        while not (
            await caught_up(bob_folder, alice_folder) and await caught_up(alice_folder, bob_folder)
        ):
            await anyio.sleep(0.1)
        seconds = time.monotonic() - started
        stats = bob_folder.stats
        print(
            f"in sync after {seconds:.1f} s: bob wrote {stats.files_applied} entries, received "
            f"{stats.chunk_bytes_received / 2**20:.1f} MiB of chunks and reused "
            f"{stats.chunk_bytes_local / 2**20:.1f} MiB already on disk"
        )
        tasks.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, help="folder whose content is sent")
    parser.add_argument("target", nargs="?", type=Path, help="folder that receives it")
    args = parser.parse_args()
    if (args.source is None) != (args.target is None):
        parser.error("give both SOURCE and TARGET, or neither for a generated sample")
    with tempfile.TemporaryDirectory(prefix="commonsync-example-") as temp:
        state = Path(temp)
        source, target = args.source, args.target
        if source is None:
            source, target = state / "alice", state / "bob"
            make_sample(source)
            target.mkdir()
        for folder in (source, target):
            folder.mkdir(parents=True, exist_ok=True)
        anyio.run(sync, source, target, state, backend="trio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
