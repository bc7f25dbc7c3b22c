"""A removed member must not write again by backdating (SPEC.md §15.5, §15.8).

A removal credits each removed device with the last sequence number it was seen to use, so
that its earlier records stay valid. The removed device keeps epoch 0's key, so it can still
prove the folder on a session and sign new records under sequence numbers at or below its
credit (or any, had it written its own removal). None of them is taken: the folder is no
longer synced with a device the log does not name (its proof opens nothing), and such a
device hands over no records on a session that has the folder (it ends).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity
from tests.hostile import forge, invite, member_session, scene, still_syncs

pytestmark = pytest.mark.anyio
TIMEOUT = 30


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.mark.slow
async def test_a_removed_device_cannot_write_under_its_credited_sequences(
    tmp_path: Path,
) -> None:
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        async with member_session(victim, mallory, key) as member:
            await member.send_records([forge(mallory, key, "early.txt", sequence=50)])
            with anyio.fail_after(TIMEOUT):
                while not (victim.folder / "early.txt").exists():
                    await anyio.sleep(0.2)

        def remove() -> None:
            victim.run("member", "remove", "shared", "mallory")

        await anyio.to_thread.run_sync(remove)
        members = await anyio.to_thread.run_sync(lambda: victim.json("members", "shared"))
        assert "mallory" not in {m["name"] for m in members["members"]}

        # Back with the key of epoch 0, a record under sequence 7 (credited: 7 <= 50).
        async with member_session(victim, mallory, key) as member:
            await member.send_records([forge(mallory, key, "backdated.txt", sequence=7)])
            await anyio.sleep(5)
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")
        for device in (victim, bob):
            assert (device.folder / "early.txt").exists()  # its credited record stays
            assert not (device.folder / "backdated.txt").exists()
