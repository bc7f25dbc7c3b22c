"""An offer of a folder one already syncs (issue 12, item 11).

Accepting it used to ignore the path given and quietly add the offering device to the
existing folder, so a member who got a folder's key from one device could have itself added
to another device's copy by offering it under any label. Now it is a clear error (exit code
2) that says where the folder is and how to share it with that device instead.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity, Session, connect_channel
from commonsync.formats.messages import Folders, Hello, Offer
from tests.daemons import wait_for
from tests.hostile import invite, scene, still_syncs, victim_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.mark.slow
async def test_an_offer_of_a_folder_already_synced_is_refused_with_a_hint(
    tmp_path: Path,
) -> None:
    with scene(tmp_path) as (victim, bob):
        # mallory gets the folder's key from the victim and is removed from it; bob, who
        # learnt her device from the folder's membership log, no longer shares the folder with
        # her. She offers it to him.
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        mallory_id = str(mallory.device_id)

        def known_to_bob() -> set[str]:
            return {d["id"] for d in bob.json("device", "list")["devices"]}

        def removed_from_bob() -> None:
            wait_for(lambda: mallory_id in known_to_bob(), "bob to learn mallory from the log")
            victim.run("member", "role", "shared", bob.device_id, "admin")
            victim.run("member", "remove", "shared", mallory_id)
            wait_for(
                lambda: mallory_id not in bob.folder_state("shared")["devices"],
                "the removal to reach bob",
            )

        await anyio.to_thread.run_sync(removed_from_bob)
        port = await anyio.to_thread.run_sync(victim_port, bob)
        elsewhere = tmp_path / "elsewhere"
        with anyio.fail_after(60):
            channel = await connect_channel("127.0.0.1", port, mallory, accept=lambda _d: True)
            session = Session(channel)
            try:
                await session.send(Hello(1, [], "mallory", "hostile test member"))
                await session.send(Folders([]))
                await session.send(Offer(key.folder_id, "a gift", key.to_bytes()))
                await anyio.to_thread.run_sync(
                    lambda: wait_for(
                        lambda: bool(bob.status()["offered_folders"]), "the offer to reach bob"
                    )
                )
                done = await anyio.to_thread.run_sync(
                    lambda: bob.run("folder", "accept", "a gift", str(elsewhere), check=False)
                )
            finally:
                await channel.aclose()
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"already syncs folder shared at {bob.folder}" in done.stderr
        assert "hint: to sync it with" in done.stderr
        assert "commonsync share shared DEVICE_ID" in done.stderr
        assert "Traceback" not in done.stderr
        folder = await anyio.to_thread.run_sync(bob.folder_state, "shared")
        assert mallory_id not in folder["devices"]
        assert not elsewhere.exists()
        # Sharing it is the way (bob is an admin: he may admit her again); it answers the offer.
        await anyio.to_thread.run_sync(lambda: bob.run("share", "shared", mallory_id))
        status = await anyio.to_thread.run_sync(bob.status)
        assert status["offered_folders"] == []
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")
