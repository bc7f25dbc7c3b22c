"""A member's devices and the log's problems with real daemons as separate processes, driven
with the real ``commonsync`` command (SPEC.md §15.5, §15.7, §15.8): a lost device removed
from the command line, and a member that serves an older log (a modified client built on the
library, talking the real protocol to the daemons)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from commonsync import Node
from commonsync.formats.device_id import DeviceId
from commonsync.membership.entries import Entry
from commonsync.membership.log import decode_log

from .daemons import LOOPBACK, Device, wait_for
from .test_members_cli import share
from .test_node import loopback, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def pair(a: Device, b: Device) -> None:
    """b knows a at its address, a knows b: b dials a."""
    a.run("device", "add", b.device_id, "--name", b.name)
    port = a.status()["port"]
    b.run("device", "add", a.device_id, "--name", a.name, "--address", f"127.0.0.1:{port}")


def members_of(device: Device, label: str, member: str) -> list[dict[str, Any]]:
    listed = device.json("member", "devices", label, member)["members"]
    return [d for m in listed for d in m["devices"]]


def test_a_lost_phone_is_removed_from_the_command_line(tmp_path: Path) -> None:
    """Ben syncs the choir's folder on his laptop and his phone (one member, two devices);
    the phone is lost and Anna removes it: what it makes from then on reaches nobody, it
    holds no key of the new epoch, and Ben's laptop goes on syncing."""
    anna, ben, phone = (Device(tmp_path, n) for n in ("anna", "ben", "phone"))
    try:
        for device in (anna, ben, phone):
            device.init(*LOOPBACK)
            device.start()
        pair(anna, ben)
        anna.folder.mkdir()
        (anna.folder / "score.txt").write_text("Kyrie\n")
        anna.run("folder", "add", str(anna.folder), "--label", "choir")
        share(anna, ben, "choir", "writer")
        pair(ben, phone)
        said = ben.run("member", "device-add", "choir", "ben", phone.device_id).stdout
        assert "as a device of ben" in said
        wait_for(lambda: bool(phone.status()["offered_folders"]), "the offer to reach the phone")
        phone.run("folder", "accept", "choir", str(phone.folder))
        wait_for(lambda: (phone.folder / "score.txt").exists(), "the score to reach the phone")
        wait_for(lambda: len(members_of(anna, "choir", "ben")) == 2, "anna to see two devices")
        assert phone.json("members", "choir")["role"] == "writer"
        (phone.folder / "early.txt").write_text("from the phone\n")
        wait_for(lambda: (anna.folder / "early.txt").exists(), "the phone's file to reach anna")

        # Not the member's, nor an admin's: refused, saying why; then Anna does it.
        refused = ben.run("device", "lost", "choir", anna.device_id[:9], check=False)
        assert refused.returncode == 2
        assert "only anna itself, admins and owners" in refused.stderr
        unknown = anna.run("device", "lost", "choir", "nothing-like-it", check=False)
        assert unknown.returncode == 2
        assert "no device 'nothing-like-it'" in unknown.stderr
        said = anna.run("device", "lost", "choir", phone.device_id[:9]).stdout
        assert "removed device" in said
        assert "key epoch 1" in said
        assert [d["id"] for d in members_of(anna, "choir", "ben")] == [ben.device_id]
        wait_for(lambda: ben.json("members", "choir")["epoch"] == 1, "ben's laptop to get epoch 1")
        wait_for(lambda: len(members_of(ben, "choir", "ben")) == 1, "the removal to reach ben")

        (phone.folder / "after.txt").write_text("written after the loss\n")
        phone.run("folder", "rescan", "choir")
        (ben.folder / "laptop.txt").write_text("ben goes on\n")
        wait_for(lambda: (anna.folder / "laptop.txt").exists(), "ben's laptop to keep syncing")
        (anna.folder / "gloria.txt").write_text("Gloria\n")
        wait_for(lambda: (ben.folder / "gloria.txt").exists(), "anna's file to reach ben")
        time.sleep(1)
        for device in (anna, ben):
            assert not (device.folder / "after.txt").exists()
        assert not (phone.folder / "gloria.txt").exists()
        assert phone.json("members", "choir")["epoch"] == 0
        assert anna.run("status").returncode == 0
    finally:
        for device in (anna, ben, phone):
            device.kill()


async def test_a_member_serving_an_older_log_is_reported_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    """Mallory, an admin on a modified client (a library Node), writes an invitation, then
    serves the log she had before it: Anna's daemon refuses her log and says so in `status`
    (exit 1); Ben, a reader with an edit of his own (no problem: exit 0), and Anna go on
    syncing; once Mallory's log holds what she showed again, the problem is gone."""
    anna, ben = Device(tmp_path, "anna"), Device(tmp_path, "ben")
    run = anyio.to_thread.run_sync
    try:
        for device in (anna, ben):
            device.init(*LOOPBACK)
            await run(device.start)
        await run(pair, anna, ben)
        anna.folder.mkdir()
        (anna.folder / "score.txt").write_text("Kyrie\n")
        await run(lambda: anna.run("folder", "add", str(anna.folder), "--label", "choir"))
        await run(share, anna, ben, "choir", "reader")
        link = (await run(lambda: anna.json("invite", "choir", "--role", "admin")))["link"]
        async with Node.open(tmp_path / "home-mallory", loopback()) as mallory:
            runner = await mallory.join(link, tmp_path / "mallory-files", name="mallory")
            folder = runner.folder
            assert folder is not None
            await until(
                lambda: (tmp_path / "mallory-files" / "score.txt").exists(), "mallory syncs"
            )
            assert folder.members.log is not None
            before = folder.members.log.entries()
            await mallory.invite("choir", code=False)
            await until(
                lambda: len(anna.json("members", "choir")["invitations"]) == 1,
                "mallory's invitation to reach anna",
            )

            # Her log goes back to what it was before her invitation, she takes no entry
            # (so that it stays old), and she reconnects to Anna (her sessions with Ben, found
            # through the log, go on).
            anna_id = DeviceId.parse(anna.device_id)
            folder.members.log = decode_log(folder.folder_id, before)

            async def take_nothing(entries: Sequence[Entry]) -> list[tuple[Entry, str]]:
                return []

            folder.take_log_entries = take_nothing  # type: ignore[method-assign]
            mallory.peers.restart(anna_id)
            done = await run(lambda: anna.run("status", check=False))
            deadline = time.monotonic() + 30
            while "serves an older membership log" not in done.stdout:
                assert time.monotonic() < deadline, done.stdout
                await anyio.sleep(0.2)
                done = await run(lambda: anna.run("status", check=False))
            assert done.returncode == 1
            assert "mallory (device " in done.stdout
            problems = (await run(lambda: anna.folder_state("choir")))["problems"]
            assert len(problems) == 1, problems
            assert "commonsync device lost choir" in problems[0]["hint"]

            # The others go on: Anna's files reach Ben and Mallory; Ben's own edit stays
            # with him, which is not a problem.
            (anna.folder / "gloria.txt").write_text("Gloria\n")
            await until(lambda: (ben.folder / "gloria.txt").exists(), "anna's file to reach ben")
            (ben.folder / "score.txt").write_text("ben's version\n")
            await run(lambda: ben.run("folder", "rescan", "choir"))
            ours = await run(lambda: ben.run("status", check=False))
            assert ours.returncode == 0, ours.stdout
            assert "1 local change not shared (you are a reader of choir)" in ours.stdout

            # Mallory takes what Anna sends her; at her next session the problem is gone.
            del folder.take_log_entries
            mallory.peers.restart(anna_id)
            await until(lambda: len(folder.members) == len(before) + 1, "mallory catches up")
            mallory.peers.restart(anna_id)
            await until(
                lambda: anna.run("status", check=False).returncode == 0, "the problem to go"
            )
    finally:
        for device in (anna, ben):
            device.kill()
