"""A member cannot make the victim's files world-writable (issue 12, item 10): the modes of
remote versions are masked with the victim's umask, and what the victim then holds is not
published back as a change."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity
from commonsync.formats.chunks import chunk_id
from commonsync.formats.records import Kind
from tests.hostile import forge, invite, member_session, scene, still_syncs


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_member_cannot_make_files_world_writable(
    tmp_path: Path, anyio_backend: str
) -> None:
    umask = os.umask(0o022)
    os.umask(umask)  # the daemons inherit this test's umask
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        data = os.urandom(3000)
        cid = chunk_id(key.chunk_id_key, data)
        async with member_session(victim, mallory, key) as member:
            member.chunks[cid] = data
            await member.send_records([
                forge(mallory, key, "open", kind=Kind.DIRECTORY, mode=0o777),
                forge(mallory, key, "open/writable.sh", chunks=[[cid, 3000]], mode=0o777),
            ])  # fmt: skip
            with anyio.fail_after(30):
                while not (victim.folder / "open" / "writable.sh").exists():
                    await anyio.sleep(0.05)
            await anyio.to_thread.run_sync(still_syncs, victim, bob, "during")
        for path in (victim.folder / "open", victim.folder / "open" / "writable.sh"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, path
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")
        # What the victim holds is the member's version, masked: nothing was published back
        # as a mode change (the index still names the member as the author).
        with sqlite3.connect(f"file:{victim.home / 'state.db'}?mode=ro", uri=True) as db:
            (author,) = db.execute(
                "SELECT author FROM records WHERE path = ?", ("open/writable.sh",)
            ).fetchone()
        assert author == mallory.public_key
        assert stat.S_IMODE((bob.folder / "open" / "writable.sh").stat().st_mode) == 0o777 & ~umask
