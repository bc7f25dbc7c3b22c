"""A device on a test LAN, as its own process: ``python -m tests.lan_node --interface IP --port N``.

It makes up a fresh identity, prints its device ID as a JSON line (``{"device_id": ...}``),
then runs LAN discovery pinned to ``--interface`` and prints every sighting as a JSON line
(``{"device_id": ..., "addresses": [...], "port": ...}``). SIGINT or SIGTERM stops it cleanly,
and it stops by itself after ``--lifetime`` seconds, so that a test that dies cannot leave it
announcing forever.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from collections.abc import Sequence

import trio

from commonsync import DeviceIdentity
from commonsync.node.discovery import LanDiscovery, Sighting


def _print_line(fields: dict[str, object]) -> None:
    print(json.dumps(fields), flush=True)


def _print_sighting(sighting: Sighting) -> None:
    _print_line(
        {
            "device_id": str(sighting.device_id),
            "addresses": list(sighting.addresses),
            "port": sighting.port,
        }
    )


async def _run(discovery: LanDiscovery, lifetime: float) -> None:
    """Discover until SIGINT or SIGTERM, or ``lifetime``; cancelling lets discovery clean up."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(discovery.run, _print_sighting)
            with trio.move_on_after(lifetime):
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.lan_node", description=__doc__)
    parser.add_argument("--interface", required=True, help="IP address to announce and browse on")
    parser.add_argument("--port", required=True, type=int, help="TCP port to announce")
    parser.add_argument("--lifetime", type=float, default=120.0, help="seconds before stopping")
    parser.add_argument("--debug", action="store_true", help="log discovery on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.debug:
        logging.getLogger("commonsyncd").setLevel(logging.DEBUG)

    identity = DeviceIdentity.generate()
    _print_line({"device_id": str(identity.device_id)})
    discovery = LanDiscovery(identity.device_id, args.port, [args.interface])
    trio.run(_run, discovery, args.lifetime)


if __name__ == "__main__":
    main()
