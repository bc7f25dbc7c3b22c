"""An association's folder, joined by invitation only, with real daemons as separate processes
driven by the real ``commonsync`` command (issue 15: SPEC.md §15.9, §15.10).

Nobody pastes a device ID: people are sent links, or read short codes over the phone, and
the relay's hoster delegates admission to the association's board. Every device is its own
``commonsyncd`` with its own home, listening on 127.0.0.1 only; where a test needs devices to
find each other on "the LAN", their discovery is pinned to 127.0.0.1, so that nothing is
announced on this machine's other interfaces.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from functools import partial
from pathlib import Path

import anyio
import pytest
from commonsyncd.config import Config
from commonsyncd.home import Home

from commonsync import Node
from commonsync.formats.device_id import DeviceId
from commonsync.membership.codes import WORDS, JoinCode
from commonsync.membership.entries import Invite, Role
from commonsync.membership.invitations import invitation_key, new_secret
from commonsync.membership.links import JoinLink

from .daemons import LOOPBACK, Device, wait_for
from .relays import RelayProcess

#: ``commonsync init`` options for a device on a "LAN" that is this machine's loopback: LAN
#: discovery announces and looks on 127.0.0.1 only, never on the machine's real interfaces.
LAN_ON_LOOPBACK = ("--listen", "127.0.0.1:0", "--discovery-interface", "127.0.0.1")
#: Bound on one member's file reaching the others, or the others converging (generous: five
#: daemons and a relay share two cores with the rest of a CI run).
CONVERGE = 90.0


def relay_connected(device: Device) -> bool:
    return any(r["connected"] for r in device.json("relay", "list")["relays"])


def relay_since(device: Device) -> float:
    """Since when ``device``'s connection to its one relay is up (it changes when the
    relay closes it and the device connects again)."""
    (relay,) = device.json("relay", "list")["relays"]
    assert relay["connected"], relay
    return float(relay["since"])


def roles(device: Device, label: str) -> dict[str, str]:
    """What ``commonsync members FOLDER --json`` says on ``device``: name → role."""
    return {m["name"]: m["role"] for m in device.json("members", label)["members"]}


def lists(device: Device, label: str, expected: dict[str, str]) -> bool:
    return roles(device, label) == expected


def has(device: Device, name: str, text: str) -> bool:
    path = device.folder / name
    try:
        return path.read_text() == text
    except OSError:  # not there yet, or being replaced
        return False


def tries_left(inviter: Device, code: JoinCode) -> int | None:
    """The tries ``inviter``'s ``members`` lists for the code, None if it is not open."""
    listed = inviter.json("members", "choir")["codes"]
    return next((c["attempts_left"] for c in listed if c["nameplate"] == code.nameplate), None)


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one sentence a refused command printed, checked to be a sentence for a person (a
    non-zero exit, ``commonsync: ...`` on standard error, no traceback)."""
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("commonsync: "), done.stderr
    return first


@pytest.mark.slow
@pytest.mark.parametrize("network", ["relay", "lan"])
def test_five_members_join_by_links_and_codes_while_the_owner_is_away(
    tmp_path: Path, network: str
) -> None:
    """Anna (owner) makes the choir's folder and invites: Ben (admin) by link, Chloe (writer)
    by a code read over the phone, Dan (writer) by link; then her laptop is switched off. Dan
    joins with her link, admitted by Ben, and Ben gives Eve (reader) a code: five members, no
    `device add` anywhere, and every member's files reach every other member online, except
    the reader's, which stay on her disk. Anna, back, catches up.

    The association runs a relay; Eve hosts it, and has made the board (Anna and Ben)
    delegates, whose devices vouch there for the members. With ``relay``, the devices find
    each other through it only (no device knows another's address but from a link); with
    ``lan``, they also find each other on a LAN (discovery on 127.0.0.1)."""
    relay = RelayProcess(tmp_path)
    names = ("anna", "ben", "chloe", "dan", "eve")
    anna, ben, chloe, dan, eve = devices = [Device(tmp_path, n) for n in names]
    try:
        for device in devices:
            device.init(*(LOOPBACK if network == "relay" else LAN_ON_LOOPBACK))
        relay.init(eve.device_id)  # the hoster's own device
        relay.run("allow", "--delegate", anna.device_id, ben.device_id)
        relay.start()
        for device in devices:
            device.start()
        anna.run("relay", "add", relay.address)
        wait_for(lambda: relay_connected(anna), "anna to reach the relay")
        anna.folder.mkdir()
        (anna.folder / "agenda.txt").write_text("rehearsal on Tuesday\n")
        anna.run("folder", "add", str(anna.folder), "--label", "choir")

        # Ben, by link: the link carries Anna's address and the relay.
        invited = anna.json("invite", "choir", "--role", "admin", "--name", "ben")
        said = ben.run("join", invited["link"], str(ben.folder)).stdout
        assert "joined folder choir" in said
        wait_for(lambda: has(ben, "agenda.txt", "rehearsal on Tuesday\n"), "ben's agenda")

        # Chloe, by the code Anna reads her over the phone: found at the relay, which Chloe
        # names (she is no member of it yet: Anna's device vouches for her once she joined).
        invited = anna.json("invite", "choir", "--role", "writer", "--name", "chloe")
        assert invited["code_relay"], invited  # the code is held at the relay, not LAN only
        chloe.run("join", invited["code"], str(chloe.folder), "--relay", relay.address)
        wait_for(lambda: has(chloe, "agenda.txt", "rehearsal on Tuesday\n"), "chloe's agenda")

        # Dan's link, sent before Anna leaves, names Ben too: with his address once Anna has
        # seen him on the LAN, else none (Dan reaches him through the relay).
        if network == "lan":
            wait_for(
                lambda: any(
                    d["id"] == ben.device_id and d["discovered"]
                    for d in anna.json("device", "list")["devices"]
                ),
                "anna to see ben on the LAN",
            )
        dan_link = JoinLink.parse(
            anna.json("invite", "choir", "--role", "writer", "--name", "dan")["link"]
        )
        listed = {str(device): addresses for device, addresses in dan_link.devices}
        assert next(iter(listed)) == anna.device_id, listed
        assert ben.device_id in listed, listed
        assert bool(listed[ben.device_id]) is (network == "lan"), listed
        assert dan_link.relays == (relay.address,)
        # Ben, an admin, gives Eve a code of his own.
        wait_for(lambda: relay_connected(ben), "ben to reach the relay (from anna's link)")
        eve_code = ben.json("invite", "choir", "--role", "reader", "--name", "eve")
        assert eve_code["code_relay"], eve_code

        assert anna.stop() == 0  # Anna's laptop is switched off
        wait_for(lambda: not ben.connected_to(anna), "ben to see anna gone")

        dan.run("join", str(dan_link), str(dan.folder))
        # Eve uses her relay already: her code is found there through her own connection,
        # which the join leaves in place (a second connection with her device ID would
        # replace it at the relay, and with it any code she holds there).
        eve.run("relay", "add", relay.address)
        wait_for(lambda: relay_connected(eve), "eve to reach the relay")
        since = relay_since(eve)
        eve.run("join", eve_code["code"], str(eve.folder))
        assert relay_since(eve) == since
        online = [ben, chloe, dan, eve]
        for device in (dan, eve):
            wait_for(
                partial(has, device, "agenda.txt", "rehearsal on Tuesday\n"),
                f"{device.name}'s agenda",
                CONVERGE,
            )
        expected = {"anna": "owner", "ben": "admin", "chloe": "writer", "dan": "writer"}
        expected["eve"] = "reader"
        for device in online:
            wait_for(
                partial(lists, device, "choir", expected),
                f"{device.name} to list the five members",
                CONVERGE,
            )
            # The relay admits every member: Dan, whom Anna never knew, on Ben's word.
            wait_for(
                partial(relay_connected, device),
                f"the relay to admit {device.name}",
                CONVERGE,
            )

        # The reader's change stays on her disk, and her status says so.
        (eve.folder / "eve.txt").write_text("my notes\n")
        eve.run("folder", "rescan", "choir")
        shown = eve.run("status", check=False).stdout
        assert "1 local change not shared (you are a reader of choir)" in shown, shown

        # Every writer's file reaches every other member online, the reader included.
        for author in (ben, chloe, dan):
            (author.folder / f"{author.name}.txt").write_text(f"part of {author.name}\n")
        for author in (ben, chloe, dan):
            for device in online:
                wait_for(
                    partial(has, device, f"{author.name}.txt", f"part of {author.name}\n"),
                    f"{author.name}'s file to reach {device.name}",
                    CONVERGE,
                )
        # By now Eve has exchanged indexes with the others since her rescan: had her change
        # been published, it would have reached them with the writers' files.
        for device in (ben, chloe, dan):
            assert not (device.folder / "eve.txt").exists(), device.name

        # Anna comes back and catches up: the members she did not admit, and their files.
        anna.start()
        wait_for(lambda: roles(anna, "choir") == expected, "anna to learn of dan and eve", CONVERGE)
        for author in (ben, chloe, dan):
            wait_for(
                partial(has, anna, f"{author.name}.txt", f"part of {author.name}\n"),
                f"{author.name}'s file to reach anna",
                CONVERGE,
            )
        assert not (anna.folder / "eve.txt").exists()
    finally:
        for device in devices:
            device.kill()
        relay.kill()


def expired_invitation(owner: Device, label: str) -> JoinLink:
    """An invitation to ``owner``'s folder that expired a second ago, naming no device yet.
    The command line gives an invitation a minute at least, so the entry is written with the
    library, in the owner's home while its daemon is stopped: it is an entry of the folder's
    log like any other, signed by the owner's device."""
    home = Home.at(owner.home)
    secret = new_secret()

    async def write() -> JoinLink:
        config = Config.load(home.config_file)
        async with Node.open(home.node_home, config, watch=False) as node:
            runner = node.folder(label)
            assert runner.folder is not None
            now = int(time.time())
            entry = await runner.folder.append_log_entry(
                Invite(invitation_key(secret), Role.WRITER, now - 1, 1), now - 60
            )
            return JoinLink(runner.config.folder_id, entry.hash, label, secret)

    return anyio.run(write, backend="trio")


def test_each_refused_invitation_says_why_and_a_good_one_still_works(tmp_path: Path) -> None:
    """Chloe is refused, each time with one sentence saying why: a used link, a mistyped
    link, a revoked invitation, an expired one, a mistyped code (caught before any network,
    costing no try) and a wrong guess against the code's PAKE (costing one of three). Then
    the right code still gets her in."""
    relay = RelayProcess(tmp_path)
    anna, ben, chloe = devices = [Device(tmp_path, n) for n in ("anna", "ben", "chloe")]
    try:
        for device in devices:
            device.init(*LOOPBACK)
        relay.init(anna.device_id)  # a joiner need not be a member to find a code there
        relay.start()
        anna.folder.mkdir()
        (anna.folder / "score.txt").write_text("Kyrie\n")
        anna.start()
        anna.run("folder", "add", str(anna.folder), "--label", "choir")
        assert anna.stop() == 0
        expired = expired_invitation(anna, "choir")
        for device in devices:
            device.start()
        here = ((DeviceId.parse(anna.device_id), (f"127.0.0.1:{anna.status()['port']}",)),)
        expired = dataclasses.replace(expired, devices=here)
        anna.run("relay", "add", relay.address)
        wait_for(lambda: relay_connected(anna), "anna to reach the relay")

        invited = anna.json("invite", "choir", "--name", "ben")
        ben.run("join", invited["link"], str(ben.folder))
        wait_for(lambda: has(ben, "score.txt", "Kyrie\n"), "the score to reach ben")
        target = str(chloe.folder)

        # Single use: Ben's link, used, does not let Chloe in.
        said = refusal(chloe.run("join", invited["link"], target, check=False))
        assert "this invitation was already used" in said, said
        # A mistyped link: its secret does not prove the invitation.
        good = anna.json("invite", "choir", "--role", "reader", "--no-code")
        payload, secret = good["link"].split("#")
        typo = f"{payload}#{'b' if secret[0] != 'b' else 'c'}{secret[1:]}"
        said = refusal(chloe.run("join", typo, target, check=False))
        assert "the link's secret does not match the invitation" in said, said
        # Revoked.
        revoked = anna.json("invite", "choir", "--no-code")
        anna.run("invite", "choir", "--revoke", revoked["invitation"])
        said = refusal(chloe.run("join", revoked["link"], target, check=False))
        assert "this invitation was revoked" in said, said
        # Expired.
        said = refusal(chloe.run("join", str(expired), target, check=False))
        assert "this invitation has expired" in said, said

        # A code read over the phone: a misheard word is caught before any network...
        code = JoinCode.parse(anna.json("invite", "choir", "--name", "chloe")["code"])
        first, second = code.words
        misheard = second[:-1] if second[:-1] not in WORDS else second + "q"
        done = chloe.run("join", f"{code.nameplate}-{first}-{misheard}", target, check=False)
        said = refusal(done)
        assert done.returncode == 2
        assert f"the code's second word, {misheard!r}, is not a code word" in said, said
        assert tries_left(anna, code) == 3
        # ... and a wrong guess of real words is refused by the PAKE, at the cost of a try.
        other = next(w for w in WORDS if w not in code.words)
        guess = f"{code.nameplate}-{other}-{second}"
        done = chloe.run("join", guess, target, "--relay", relay.address, check=False)
        said = refusal(done)
        assert "wrong code" in said, said
        assert "(2 attempts left)" in said, said
        assert tries_left(anna, code) == 2
        assert not chloe.json("folder", "list")["folders"]  # nothing was added by a refusal

        # The right code still works.
        chloe.run("join", str(code), target)
        wait_for(lambda: has(chloe, "score.txt", "Kyrie\n"), "the score to reach chloe")
        assert roles(anna, "choir") == {"anna": "owner", "ben": "writer", "chloe": "writer"}
        assert tries_left(anna, code) is None  # redeemed: the code is closed
    finally:
        for device in devices:
            device.kill()
        relay.kill()


def test_a_device_outlives_its_relay_restarting(tmp_path: Path) -> None:
    """The association's relay is restarted (its hoster upgrades it): a member's daemon sees
    the control connection closed, keeps running, and connects again. (A relay closing the
    connection ended the member's whole daemon: the error came out of the relay link's task
    group wrapped in an exception group.)"""
    relay = RelayProcess(tmp_path)
    anna = Device(tmp_path, "anna")
    try:
        anna.init(*LOOPBACK)
        relay.init(anna.device_id)
        relay.start()
        anna.start()
        anna.run("relay", "add", relay.address)
        wait_for(lambda: relay_connected(anna), "anna to reach the relay")
        assert relay.stop() == 0
        wait_for(lambda: not relay_connected(anna), "anna to see the relay gone")
        relay.start()  # on the same port
        wait_for(lambda: relay_connected(anna), "anna to reach the relay again")
        assert anna.process is not None
        assert anna.process.poll() is None
    finally:
        anna.kill()
        relay.kill()
