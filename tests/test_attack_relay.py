"""Attacks through a community relay (issue 12, item 9), on a real ``commonsync relay serve``
and real daemons, 127.0.0.1 only.

- A stranger's idle connections from one source must not lock the members out of the relay
  (its bound on connections still greeting was global only).
- A relay member that asks for sessions with a device, joins them and then says nothing must
  not take all of that device's relay join slots: its real peers must still reach it through
  the relay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from commonsyncd.home import Home
from commonsyncd.relay.config import RelayServerConfig
from commonsyncd.relay.server import MAX_GREETING_PER_SOURCE

from commonsync import DeviceId, DeviceIdentity
from commonsync.errors import CommonsyncError, RelayJoinError
from commonsync.relay.client import RelayControl, connect_relay, join_session, open_relayed_channel
from tests.daemons import Device, wait_for
from tests.hostile import LOOPBACK, IdleFlood, still_syncs
from tests.relays import RelayProcess

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.mark.slow
async def test_one_source_cannot_lock_the_members_out_of_a_relay(tmp_path: Path) -> None:
    member = DeviceIdentity.generate()
    relay = RelayProcess(tmp_path)
    relay.init(str(member.device_id))
    relay.start()
    try:
        count = 300  # more than the relay lets greet at once in all (256)
        with IdleFlood(relay.port, count, ["127.0.0.2"], reopen=True) as flood:
            beyond = count - MAX_GREETING_PER_SOURCE
            await anyio.to_thread.run_sync(
                lambda: wait_for(lambda: flood.closed >= beyond, "the relay to shed them", 20)
            )
            with anyio.fail_after(30):
                async with connect_relay(HOST, relay.port, member, DeviceId.parse(relay.relay_id)):
                    pass  # admitted while the flood goes on
        assert relay.process is not None
        assert relay.process.poll() is None
        lines = relay.log.read_text().splitlines()
        shed = [line for line in lines if "closed a connection from 127.0.0.2" in line]
        assert 0 < len(shed) <= 5, len(shed)
    finally:
        relay.kill()


@dataclass
class _Silent:
    """What the silent member holds: sessions spliced with the victim, and the most at once."""

    held: int = 0
    most: int = 0


async def _silent_member(
    control: RelayControl, port: int, victim: DeviceId, state: _Silent
) -> None:
    """One of the member's slots: ask for a session with the victim, join it, say nothing
    until the victim gives up, and at once ask again (so a slot the victim frees is taken
    again before anyone else can have it)."""
    while True:
        try:
            token = await control.request_session(victim)
        except CommonsyncError:
            await anyio.sleep(0.2)  # refused (sessions waiting, rate): ask again soon
            continue
        try:
            stream = await join_session(HOST, port, token)
        except RelayJoinError:
            continue  # the victim did not join this one
        state.held += 1
        state.most = max(state.most, state.held)
        try:
            with contextlib.suppress(Exception):
                while await stream.receive():
                    pass
        finally:
            state.held -= 1
            await stream.aclose()


async def _reach(
    control: RelayControl, me: DeviceIdentity, target: DeviceId, timeout: float
) -> str:
    """Try to open a channel to ``target`` through the relay until ``timeout``; "" once it
    worked, else the last error."""
    error = "no attempt"
    with anyio.move_on_after(timeout):
        while True:
            try:
                channel = await open_relayed_channel(control, me, target)
            except CommonsyncError as exc:
                error = str(exc)
                await anyio.sleep(0.2)
                continue
            await channel.aclose()
            return ""
    return error


@contextlib.contextmanager
def _relayed_scene(
    base: Path, *members: DeviceIdentity
) -> Iterator[tuple[RelayProcess, Device, Device]]:
    """A relay (generous request rates, as a hoster may set them) and two daemons, victim
    and bob, that know no address of each other and sync the folder "shared" through it."""
    relay = RelayProcess(base)
    victim, bob = Device(base, "victim"), Device(base, "bob")
    try:
        for device in (victim, bob):
            device.init(*LOOPBACK)
        relay.init(victim.device_id, bob.device_id, *(str(m.device_id) for m in members))
        config_file = Home.resolve(relay.home).relay_config_file
        config = RelayServerConfig.load(config_file)
        config.limits.connects_per_minute, config.limits.connect_burst = 6000, 100
        config.save(config_file)
        relay.start()
        for device in (victim, bob):
            device.start()
            device.run("relay", "add", relay.address)
        victim.run("device", "add", bob.device_id, "--name", "bob")
        bob.run("device", "add", victim.device_id, "--name", "victim")
        wait_for(lambda: victim.connected_to(bob) and bob.connected_to(victim), "a relayed session")
        victim.folder.mkdir()
        victim.run("folder", "add", str(victim.folder), "--label", "shared")
        victim.run("share", "shared", bob.device_id)
        wait_for(lambda: bool(bob.status()["offered_folders"]), "the offer to reach bob")
        bob.run("folder", "accept", "shared", str(bob.folder))
        (victim.folder / "before.txt").write_text("synced before the attack\n")
        wait_for(lambda: (bob.folder / "before.txt").exists(), "the first sync to bob")
        yield relay, victim, bob
    finally:
        for device in (victim, bob):
            device.kill()
        relay.kill()


@pytest.mark.slow
async def test_a_silent_relay_member_cannot_take_every_join_slot(tmp_path: Path) -> None:
    mallory, carol = DeviceIdentity.generate(), DeviceIdentity.generate()
    with _relayed_scene(tmp_path, mallory, carol) as (relay, victim, bob):
        # carol is a device the victim knows; mallory is only a member of the relay.
        await anyio.to_thread.run_sync(
            lambda: victim.run("device", "add", str(carol.device_id), "--name", "carol")
        )
        relay_id = DeviceId.parse(relay.relay_id)
        victim_id = DeviceId.parse(victim.device_id)
        state = _Silent()
        with anyio.fail_after(120):
            async with (
                connect_relay(HOST, relay.port, mallory, relay_id) as attacker,
                anyio.create_task_group() as tasks,
            ):
                for _ in range(8):
                    tasks.start_soon(_silent_member, attacker, relay.port, victim_id, state)
                while state.held < 2:
                    await anyio.sleep(0.05)
                await anyio.sleep(2)  # the member takes all it can
                async with connect_relay(HOST, relay.port, carol, relay_id) as control:
                    error = await _reach(control, carol, victim_id, 45)
                assert error == "", f"{error} (the silent member held {state.most} joins)"
                # The victim keeps syncing with bob meanwhile.
                await anyio.to_thread.run_sync(still_syncs, victim, bob, "during")
                assert 0 < state.most <= 2
                tasks.cancel_scope.cancel()
