"""A synced ``.csignore`` can neither freeze the victim nor stop it publishing (issue 12, item 2).

``.csignore`` is an ordinary synced path, so a member chooses what is there: a symlink to a
device that blocks whoever reads it, bytes that are not UTF-8, a ``*`` that ignores
everything. Against a real victim daemon: the control socket keeps answering, SIGTERM stops it
promptly, the victim keeps syncing with its well-behaved peer, and ``status`` says what is
wrong with the rules (and how much they ignore).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity, FolderKey
from commonsync.formats.chunks import chunk_id
from commonsync.formats.records import Kind
from tests.daemons import Device
from tests.hostile import Member, forge, invite, member_session, scene, still_syncs

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    with anyio.move_on_after(timeout) as waited:
        while not await anyio.to_thread.run_sync(condition):
            await anyio.sleep(0.05)
    if waited.cancelled_caught:
        raise AssertionError(f"gave up waiting for {what} after {timeout:g} s")


def _shared(victim: Device) -> dict[str, Any]:
    return victim.folder_state("shared")


async def _send_rules(
    member: Member, key: FolderKey, mallory: DeviceIdentity, rules: bytes
) -> None:
    cid = chunk_id(key.chunk_id_key, rules)
    member.chunks[cid] = rules
    await member.send_records([forge(mallory, key, ".csignore", chunks=[[cid, len(rules)]])])


@pytest.mark.skipif(not os.path.exists("/dev/ptmx"), reason="needs /dev/ptmx")
async def test_a_csignore_linked_to_a_device_does_not_freeze_the_victim(tmp_path: Path) -> None:
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        async with member_session(victim, mallory, key) as member:
            await member.send_records(
                [forge(mallory, key, ".csignore", kind=Kind.SYMLINK, target="/dev/ptmx")]
            )
            await _until((victim.folder / ".csignore").is_symlink, "the link applied")
            (victim.folder / "poke.txt").write_text("a change, so a scan reads the rules\n")
            # The control socket answers (each status call is bounded by the client's
            # timeout), and says what is wrong with the rules.
            await _until(lambda: bool(_shared(victim).get("ignore_error")), "the error in status")
            state = await anyio.to_thread.run_sync(_shared, victim)
            assert "symlink" in state["ignore_error"]
            assert ".csignore" in state["summary"]
            assert "symlink" in state["summary"]
            await anyio.to_thread.run_sync(still_syncs, victim, bob, "during")
        assert await anyio.to_thread.run_sync(victim.stop) == 0
        # After a restart, the folder reads the same link again: still no freeze.
        await anyio.to_thread.run_sync(victim.start)
        await _until(lambda: bool(_shared(victim).get("ignore_error")), "the error after restart")
        assert await anyio.to_thread.run_sync(victim.stop) == 0


async def test_a_csignore_that_is_not_utf8_does_not_stop_the_victim_publishing(
    tmp_path: Path,
) -> None:
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        async with member_session(victim, mallory, key) as member:
            await _send_rules(member, key, mallory, b"*.secret\n")
            await _until((victim.folder / ".csignore").is_file, "the good rules applied")
            (victim.folder / "x.secret").write_text("kept out by the rules\n")
            await _until(
                lambda: "1 ignored by .csignore" in _shared(victim)["summary"],
                "the ignored path counted in status",
            )
            await _send_rules(member, key, mallory, b"*.log\n\xff\xfe not UTF-8\n")
            await _until(
                lambda: (victim.folder / ".csignore").read_bytes().startswith(b"*.log"),
                "the bad rules applied",
            )
            (victim.folder / "y.secret").write_text("still kept out: the last good rules\n")
            await _until(lambda: "UTF-8" in _shared(victim).get("ignore_error", ""), "the error")
            state = await anyio.to_thread.run_sync(_shared, victim)
            assert state["state"] != "error"
            assert "UTF-8" in state["summary"]
            assert "last rules" in state["summary"]
            # Other changes are still published, both ways.
            await anyio.to_thread.run_sync(still_syncs, victim, bob, "during")
        assert not (bob.folder / "x.secret").exists()
        assert not (bob.folder / "y.secret").exists()
