"""Two commonsync devices in one asyncio program: the library's Node needs no trio.

    python examples/node_asyncio.py [SOURCE]

Alice syncs SOURCE (by default a small generated sample) as a folder and offers it to Bob;
Bob accepts it into a directory of his; the program prints each file as Bob receives it and
stops once Bob holds everything. Both devices listen on 127.0.0.1 only, with LAN discovery
off, and keep their keys and indexes in a temporary directory.
"""

import asyncio
import sys
import tempfile
from pathlib import Path

from commonsync import Node, NodeConfig


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".commonsync" not in p.parts
    }


async def main(source: Path, work: Path) -> None:
    local = NodeConfig(listen="127.0.0.1:0", discovery_enabled=False)
    async with (
        Node.open(work / "alice", local) as alice,
        Node.open(work / "bob", NodeConfig(listen="127.0.0.1:0", discovery_enabled=False)) as bob,
    ):
        await alice.add_device(bob.device_id, addresses=[f"127.0.0.1:{bob.port}"])
        await bob.add_device(alice.device_id, addresses=[f"127.0.0.1:{alice.port}"])
        await alice.add_folder(source, "sample")
        await alice.share("sample", bob.device_id)
        target = work / "bob's copy"
        async with asyncio.timeout(120):
            async for event in bob.events(replay=True):
                if event["kind"] == "folder offered":
                    await bob.accept_folder("sample", target)
                elif event["kind"] == "applied":
                    print(f"bob received {event['path']}", flush=True)
                if target.exists() and files(target) == files(source):
                    break
    print(f"in sync: {len(files(source))} files", flush=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        if len(sys.argv) > 1:
            source = Path(sys.argv[1]).resolve()
        else:
            source = work / "sample"
            (source / "notes").mkdir(parents=True)
            (source / "notes" / "agenda.txt").write_text("Choir rehearsal: Thursday 19:00\n")
            (source / "score.pdf").write_bytes(bytes(range(256)) * 4096)
        asyncio.run(main(source, work))
