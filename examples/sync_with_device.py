"""Sync a directory with one other device: a whole commonsync device in a small tool.

    python examples/sync_with_device.py HOME DIR --share LABEL --peer ID@HOST:PORT
    python examples/sync_with_device.py HOME DIR --peer ID@HOST:PORT    # accepts its offer

HOME keeps this device's key, folder keys and index (made on first run; the device ID is
printed). The first form syncs DIR as a new folder and offers it to the peer; the second waits
for the peer's offer and syncs it into DIR. Both then keep DIR in sync, and print what
happens, until Ctrl-C. The configuration is built anew at each start (a real tool would keep
it: see ``on_config_change``); add ``--lan`` to find the peer on the local network too.
"""

import argparse
from pathlib import Path

import trio

from commonsync import Node, NodeConfig


async def main(args: argparse.Namespace) -> None:
    config = NodeConfig(listen=args.listen, discovery_enabled=args.lan)
    async with Node.open(args.home, config) as node:
        print(f"device ID {node.device_id}, listening on port {node.port}", flush=True)
        peer, _, address = args.peer.partition("@")
        await node.add_device(peer, addresses=[address] if address else [])
        if args.share:
            await node.add_folder(args.dir, args.share)
            await node.share(args.share, peer)
        async for event in node.events(replay=True):
            if event["kind"] == "folder offered" and not args.share:
                await node.accept_folder(event["folder"], args.dir)
            where = " ".join(str(event.get(k, "")) for k in ("folder", "path", "detail"))
            print(f"{event['kind']}: {where.strip()}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--peer", required=True, metavar="ID@HOST:PORT")
    parser.add_argument("--share", metavar="LABEL", help="offer DIR under this label")
    parser.add_argument("--listen", default="0.0.0.0:22070", metavar="HOST:PORT")
    parser.add_argument("--lan", action="store_true", help="LAN discovery (mDNS) too")
    try:
        trio.run(main, parser.parse_args())
    except* KeyboardInterrupt:
        pass  # Ctrl-C: every task stopped, the index closed
