"""LAN announcements are hints anyone on the LAN can forge (issue 12, item 11).

A neighbour can announce any device ID at any address. Such an announcement used to replace
the address a known device was found at (so the device was dialled at the forger's address
only), and every announced device ID was remembered for ever. Now announcements only add to
a bounded set, the address that worked is kept and tried first, and the number of devices
remembered is bounded. mDNS runs on 127.0.0.1 only, as in ``tests/test_discovery.py``.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from commonsyncd.config import Config, DeviceConfig
from zeroconf import ServiceInfo, Zeroconf

from commonsync import DeviceId, DeviceIdentity, Session, accept_channel
from commonsync.errors import CommonsyncError
from commonsync.formats.messages import Folders, Hello, Offer, Ping, Pong
from commonsync.node.discovery import SERVICE_TYPE, LanDiscovery
from commonsync.node.events import EventBus
from commonsync.node.folders import FolderRunner
from commonsync.node.peers import (
    MAX_DISCOVERED_ADDRESSES,
    MAX_DISCOVERED_DEVICES,
    MAX_PENDING,
    Peers,
)
from tests.daemons import Device, wait_for

pytestmark = pytest.mark.anyio

LOOPBACK = "127.0.0.1"


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def _dead_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 where nothing listens (connections are refused)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind((LOOPBACK, 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@contextmanager
def _forged_announcements(device_id: DeviceId, ports: list[int]) -> Iterator[None]:
    """A LAN neighbour announces ``device_id`` at each of ``ports`` (one service each)."""
    zc = Zeroconf(interfaces=[LOOPBACK])
    try:
        for i, port in enumerate(ports):
            name = f"forged{i}-{secrets.token_hex(3)}"
            info = ServiceInfo(
                SERVICE_TYPE,
                f"{name}.{SERVICE_TYPE}",
                port=port,
                properties={"id": str(device_id)},
                server=f"{name}.local.",
                parsed_addresses=[LOOPBACK],
            )
            zc.register_service(info, cooperating_responders=True)
        yield
    finally:
        zc.close()


def _connected(victim: Device, device_id: DeviceId) -> bool:
    return any(d["connected"] for d in victim.status()["devices"] if d["id"] == str(device_id))


def _discovered(victim: Device, device_id: DeviceId) -> list[str]:
    entry = next(d for d in victim.status()["devices"] if d["id"] == str(device_id))
    return list(entry["discovered"])


@pytest.mark.slow
async def test_a_forged_announcement_does_not_displace_a_working_address(
    tmp_path: Path,
) -> None:
    bob = DeviceIdentity.generate()  # a device on the LAN, built on the library
    victim = Device(tmp_path, "victim")
    sessions = 0
    drop = anyio.Event()

    async def serve_bob(stream: anyio.abc.SocketStream) -> None:
        nonlocal sessions
        try:
            channel = await accept_channel(stream, bob, accept=lambda _d: True)
        except CommonsyncError:
            return
        sessions += 1
        session = Session(channel)
        with anyio.move_on_after(120):
            async with anyio.create_task_group() as tasks:

                async def answer() -> None:
                    async for message in session:
                        if isinstance(message, Ping):
                            await session.send(Pong(message.nonce))

                tasks.start_soon(answer)
                await session.send(Hello(1, [], "bob", "test peer"))
                await session.send(Folders([]))
                await drop.wait()
                tasks.cancel_scope.cancel()
        await channel.aclose()

    listener = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    real = f"{LOOPBACK}:{port}"
    try:
        with anyio.fail_after(150):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(listener.serve, serve_bob)
                await tasks.start(
                    LanDiscovery(bob.device_id, port, [LOOPBACK]).run, lambda _s: None
                )

                def set_up() -> None:
                    victim.init("--listen", f"{LOOPBACK}:0", "--discovery-interface", LOOPBACK)
                    victim.start()
                    victim.run("device", "add", str(bob.device_id), "--name", "bob")

                await anyio.to_thread.run_sync(set_up)
                await anyio.to_thread.run_sync(
                    lambda: wait_for(lambda: _connected(victim, bob.device_id), "a session")
                )
                assert _discovered(victim, bob.device_id) == [real]

                forged = [f"{LOOPBACK}:{p}" for p in _dead_ports(MAX_DISCOVERED_ADDRESSES + 2)]
                ports = [int(a.rsplit(":", 1)[1]) for a in forged]
                with _forged_announcements(bob.device_id, ports):

                    def most_forged_seen() -> bool:
                        seen = _discovered(victim, bob.device_id)
                        return sum(a in forged for a in seen) >= MAX_DISCOVERED_ADDRESSES - 1

                    await anyio.to_thread.run_sync(
                        lambda: wait_for(most_forged_seen, "the forged announcements", 60)
                    )
                    seen = _discovered(victim, bob.device_id)
                    assert seen[0] == real, seen  # kept, and tried first
                    assert len(seen) == MAX_DISCOVERED_ADDRESSES

                    # The session ends: the victim dials bob again, at the address that works.
                    drop.set()
                    await anyio.to_thread.run_sync(
                        lambda: wait_for(lambda: sessions >= 2, "the victim to dial bob again", 60)
                    )
                tasks.cancel_scope.cancel()
    finally:
        victim.kill()
        await listener.aclose()


class _Host:
    """What :class:`Peers` needs from a node, without the rest of one."""

    def __init__(self, known: list[DeviceId]) -> None:
        self.identity = DeviceIdentity.generate()
        self.config = Config(devices=[DeviceConfig(d, "") for d in known])
        self.event_bus = EventBus()

    @property
    def device_name(self) -> str:
        return "host"

    def runner(self, folder_id: bytes) -> FolderRunner | None:
        return None

    async def on_offer(self, device: DeviceId, offer: Offer) -> None:
        return None


def test_what_discovery_remembers_is_bounded() -> None:
    known = [DeviceIdentity.generate().device_id for _ in range(3)]
    peers = Peers(_Host(known))
    strangers = [DeviceId(os.urandom(32)) for _ in range(MAX_DISCOVERED_DEVICES * 4)]
    for i, stranger in enumerate(strangers):
        peers.on_sighting(stranger, [f"10.0.{i // 250}.{i % 250}:22070"])
    for device in known:
        peers.on_sighting(device, ["192.0.2.1:22070"])
        for i in range(100):  # someone announces the known devices at many addresses
            peers.on_sighting(device, [f"198.51.100.{i}:22070", f"203.0.113.{i}:22070"])
    for _ in range(50):  # more strangers do not push the known devices out
        peers.on_sighting(DeviceId(os.urandom(32)), ["10.9.9.9:22070"])
    assert len(peers.discovered) <= MAX_DISCOVERED_DEVICES
    assert len(peers.pending) <= MAX_PENDING
    for device in known:
        addresses = peers.discovered_addresses(device)
        assert len(addresses) == MAX_DISCOVERED_ADDRESSES
        assert addresses[:2] == ["198.51.100.99:22070", "203.0.113.99:22070"]  # newest first
