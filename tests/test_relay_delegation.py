"""Delegated relay admission end to end (SPEC.md §14.1, §15.9), with real processes: a
``commonsync relay serve`` whose hoster delegated admission to the owner's device, and two
``commonsyncd`` daemons on 127.0.0.1 with LAN discovery off.

The joiner gets a link whose only address for the owner does not work, so everything goes
through the relay: the join (as a stranger to the relay), then, once the owner's device has
vouched for it, the folder's sync; and when the owner removes it, the relay drops it."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path

import pytest
from commonsyncd.relay.config import RelayServerConfig

from commonsync import DeviceIdentity
from commonsync.membership.links import JoinLink
from tests.daemons import LOOPBACK, Device, wait_for
from tests.relays import RelayProcess


def dead_address() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def relay_state(device: Device, relay: RelayProcess) -> dict[str, object]:
    return next(r for r in device.status()["relays"] if r["id"] == relay.relay_id)


@pytest.mark.slow
def test_a_member_joins_and_syncs_through_a_relay_that_an_admin_vouches_for(
    tmp_path: Path,
) -> None:
    relay = RelayProcess(tmp_path)
    owner, joiner = Device(tmp_path, "anna"), Device(tmp_path, "ben")
    try:
        owner.init(*LOOPBACK)
        joiner.init(*LOOPBACK)
        relay.init()  # no member but the delegate
        delegated = relay.run("allow", "--delegate", owner.device_id).stdout
        assert "may now vouch for" in delegated
        assert owner.device_id in _relay_toml(relay)
        relay.start()
        owner.start()
        joiner.start()
        owner.run("relay", "add", relay.address)
        wait_for(lambda: bool(relay_state(owner, relay)["connected"]), "anna to reach the relay")

        owner.folder.mkdir()
        (owner.folder / "score.txt").write_text("Kyrie\n")
        owner.run("folder", "add", str(owner.folder), "--label", "choir")
        wait_for(lambda: "vouches for 1 devices" in relay.log.read_text(), "anna to vouch")
        invited = owner.json("invite", "choir", "--name", "ben")["link"]
        link = JoinLink.parse(invited)
        assert link.relays == (relay.address,)
        # The link's address for anna leads nowhere: ben reaches her through the relay only.
        unreachable = dataclasses.replace(
            link, devices=tuple((device, (dead_address(),)) for device, _ in link.devices)
        )

        joiner.run("join", str(unreachable), str(joiner.folder))
        assert f"device {joiner.device_id[:7]} connected from" in relay.log.read_text()
        assert "to join a folder (not a member)" in relay.log.read_text()
        # The join made ben use the link's relay; anna's device vouched for ben there.
        assert [r["id"] for r in joiner.status()["relays"]] == [relay.relay_id]
        wait_for(lambda: "vouches for 2 devices" in relay.log.read_text(), "anna to vouch for ben")
        wait_for(lambda: (joiner.folder / "score.txt").exists(), "the score to reach ben")
        assert (joiner.folder / "score.txt").read_text() == "Kyrie\n"
        seen = next(d for d in joiner.status()["devices"] if d["id"] == owner.device_id)
        assert (seen["via"], seen["relay"]) == ("relay", relay.relay_id)
        (joiner.folder / "gloria.txt").write_text("Gloria\n")
        joiner.run("folder", "rescan", "choir")
        wait_for(lambda: (owner.folder / "gloria.txt").exists(), "ben's file to reach anna")

        # Anna removes ben: her device vouches for her own device only, and the relay closes
        # ben's connection and refuses him from then on.
        said = owner.run("member", "remove", "choir", "ben").stdout
        assert "removed ben" in said
        wait_for(
            lambda: f"device {joiner.device_id} is no longer a member" in relay.log.read_text(),
            "the relay to drop ben",
        )
        wait_for(
            lambda: (
                re.search(
                    rf"refused device {joiner.device_id}: not a member of this relay",
                    relay.log.read_text(),
                )
                is not None
            ),
            "the relay to refuse ben's next connection",
        )
        wait_for(
            lambda: "not one of its members" in str(relay_state(joiner, relay)["error"]),
            "ben to see the relay's refusal",
        )
        assert not relay_state(joiner, relay)["connected"]
        assert relay_state(owner, relay)["connected"]
    finally:
        for device in (owner, joiner):
            device.kill()
        relay.kill()


def _relay_toml(relay: RelayProcess) -> str:
    found = list(relay.home.rglob("relay.toml"))
    assert found, "the relay has no relay.toml"
    return found[0].read_text()


def test_allow_and_disallow_delegates_from_the_command_line(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path)
    admin, member = DeviceIdentity.generate().device_id, DeviceIdentity.generate().device_id
    relay.init(str(member))
    assert "may now vouch for" in relay.run("allow", "--delegate", str(admin)).stdout
    assert "already vouches" in relay.run("allow", "--delegate", str(admin)).stdout
    assert "no longer vouches" in relay.run("disallow", "--delegate", str(admin)).stdout
    relay.run("allow", "--delegate", str(admin), str(member))
    config = RelayServerConfig.load(next(relay.home.rglob("relay.toml")))
    assert (config.members, config.delegates) == ([member], [admin, member])
    said = relay.run("disallow", "--delegate", str(member)).stdout
    assert "is no longer a member" not in said  # --delegate leaves membership alone
    said = relay.run("disallow", str(admin), str(member)).stdout
    assert f"device {member} is no longer a member" in said
    config = RelayServerConfig.load(next(relay.home.rglob("relay.toml")))
    assert (config.members, config.delegates) == ([], [])
    refused = relay.run("allow", "--delegate", "not-an-id", check=False)
    assert refused.returncode != 0
    assert "not a valid device ID" in refused.stderr
