"""End to end through a community relay: real ``commonsync relay serve`` and ``commonsyncd``
processes, separate homes, 127.0.0.1 only, LAN discovery off, and no address configured
between the devices: everything they exchange goes through the relay."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from commonsync import DeviceIdentity
from commonsync.relay.wire import preamble
from tests.daemons import Device, tree, wait_for
from tests.relays import RelayProcess

LOOPBACK = ("--listen", "127.0.0.1:0", "--no-discovery")
#: File content and names that must never cross the relay in the clear.
SECRET = os.urandom(300_000)
SECRET_NAME = "minutes-of-the-secret-meeting.txt"


def both(step: Callable[[Device], object], devices: Iterable[Device]) -> None:
    """Run a step on each device at once (each step starts processes and waits for them)."""
    with ThreadPoolExecutor() as pool:
        for result in [pool.submit(step, d) for d in devices]:
            result.result()


def relay_of(device: Device, relay: RelayProcess) -> dict[str, object]:
    return next(r for r in device.status()["relays"] if r["id"] == relay.relay_id)


def link_to(device: Device, other: Device) -> dict[str, object]:
    return next(d for d in device.status()["devices"] if d["id"] == other.device_id)


@pytest.mark.slow
def test_two_devices_sync_through_a_relay_that_sees_only_ciphertext(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path)
    a, b, carol = Device(tmp_path, "alice"), Device(tmp_path, "bob"), Device(tmp_path, "carol")
    tap = tmp_path / "forwarded.bin"
    try:
        both(lambda d: d.init(*LOOPBACK), (a, b, carol))  # setting up runs side by side
        relay.init(a.device_id, b.device_id)  # carol is not a member
        relay.start(tap=tap)
        assert f"relay {relay.relay_id} listening on" in relay.log.read_text()
        both(lambda d: (d.start(), d.run("relay", "add", relay.address)), (a, b, carol))

        # Pairing with no address at all: each only knows the other's ID. Until bob accepts
        # alice, her sessions through the relay are refused and she is listed as pending.
        a.run("device", "add", b.device_id, "--name", "bob")

        def alice_pending() -> list[str]:
            return [p["how"] for p in b.status()["pending_devices"] if p["id"] == a.device_id]

        wait_for(lambda: bool(alice_pending()), "bob to list alice as pending")
        assert alice_pending() == [f"invited through relay {relay.relay_id[:7]}"]
        b.run("device", "add", a.device_id, "--name", "alice")
        wait_for(lambda: a.connected_to(b) and b.connected_to(a), "a session through the relay")
        seen = link_to(a, b)
        assert (seen["via"], seen["relay"], seen["addresses"]) == ("relay", relay.relay_id, [])
        assert relay_of(a, relay)["connected"]
        status = a.run("status").stdout
        assert "relay" in status
        assert relay.relay_id[:7] in status

        # A folder syncs both ways.
        a.folder.mkdir()
        (a.folder / SECRET_NAME).write_bytes(SECRET)
        a.run("folder", "add", str(a.folder), "--label", "choir")
        a.run("share", "choir", b.device_id)
        wait_for(lambda: bool(b.status()["offered_folders"]), "the offer to reach bob")
        b.run("folder", "accept", "choir", str(b.folder))
        wait_for(lambda: tree(a.folder) == tree(b.folder), "the folder to reach bob")
        (b.folder / "from-bob.txt").write_text("bob was here\n")
        wait_for(lambda: (a.folder / "from-bob.txt").exists(), "bob's file to reach alice")

        # A device that is not a member is refused, and says so.
        refused = "not one of its members"
        wait_for(lambda: refused in str(relay_of(carol, relay)["error"]), "carol's refusal")
        listing = carol.run("relay", "list").stdout
        assert "not connected" in listing
        assert f"commonsync relay allow {carol.device_id}" in listing
        assert f"refused device {carol.device_id}: not a member" in relay.log.read_text()

        # A guessed token gets nothing spliced: one "unknown token" byte, then the end (a
        # reset, since the relay closes without reading what followed the preamble).
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as raw:
            raw.sendall(preamble(os.urandom(32)) + b"hello?")
            assert raw.recv(16) == b"\x01"
            with contextlib.suppress(ConnectionResetError):
                assert raw.recv(16) == b""

        # The relay forwarded the file, but never a byte of it (or its name) in the clear.
        forwarded = tap.read_bytes()
        assert len(forwarded) > len(SECRET)
        for clear in (SECRET[:32], SECRET[-32:], SECRET_NAME.encode(), b"bob was here"):
            assert clear not in forwarded
        log = relay.log.read_text()
        assert SECRET_NAME not in log
        for line in log.splitlines():
            json.loads(line)  # JSON lines only

        # The relay restarts (as `commonsync relay serve` this time): the devices reconnect.
        assert relay.stop() == 0
        wait_for(lambda: not a.connected_to(b), "the relayed session to end with the relay")
        relay.start()
        wait_for(lambda: relay_of(a, relay)["connected"], "alice to reconnect to the relay")
        wait_for(lambda: a.connected_to(b) and b.connected_to(a), "the session to come back")
        (a.folder / "after-restart.txt").write_text("still in sync\n")
        (b.folder / "bob-after-restart.txt").write_text("me too\n")
        wait_for(lambda: tree(a.folder) == tree(b.folder), "both changes to cross")

        # Adding relays: mistakes are one sentence; the list is in the configuration.
        for text, message in [
            ("nonsense", "does not name a relay"),
            (f"{a.device_id}@127.0.0.1:1", "this device's own ID"),
            (relay.address, "already added"),
        ]:
            done = a.run("relay", "add", text, check=False)
            assert done.returncode == 2, (text, done.stderr)
            assert message in done.stderr, (text, done.stderr)
            assert "Traceback" not in done.stderr
        assert [(r["id"], r["connected"]) for r in a.json("relay", "list")["relays"]] == [
            (relay.relay_id, True)
        ]
        assert f'"{relay.address}"' in (a.home / "config.toml").read_text()
        assert relay.stop() == 0
        with ThreadPoolExecutor() as pool:
            assert list(pool.map(Device.stop, (a, b, carol))) == [0, 0, 0]
    finally:
        for device in (a, b, carol):
            device.kill()
        relay.kill()


def test_relay_hoster_commands(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path)
    relay.init()
    assert relay.run("id").stdout.strip() == relay.relay_id  # the same identity each time
    assert (relay.home / "relay.key").stat().st_mode & 0o077 == 0
    members = [str(DeviceIdentity.generate().device_id) for _ in range(2)]
    mistyped = members[0][:-1] + ("A" if members[0][-1] != "A" else "B")
    done = relay.run("allow", mistyped, check=False)
    assert done.returncode == 2
    assert "is not a valid device ID" in done.stderr
    assert "Traceback" not in done.stderr
    relay.run("allow", *members)
    again = relay.run("allow", members[0])
    assert "already a member" in again.stdout
    config = (relay.home / "relay.toml").read_text()
    assert all(m in config for m in members)

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken:
        busy = relay.run("serve", "--listen", f"127.0.0.1:{taken.getsockname()[1]}", check=False)
    assert busy.returncode == 2
    assert "cannot listen on" in busy.stderr
    assert "Traceback" not in busy.stderr
