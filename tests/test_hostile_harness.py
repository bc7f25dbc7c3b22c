"""The hostile-member harness itself works: a member invited to a real daemon's folder gets
its key from the offer, and a record it forges and whose chunk it serves is applied. (So that
the security tests that build on it fail for what they test, not for the harness.)"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity
from commonsync.formats.chunks import chunk_id
from commonsync.formats.messages import ChunkBatchRequest
from tests.hostile import forge, invite, member_session, scene, still_syncs


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_forged_record_from_a_member_is_applied(tmp_path: Path, anyio_backend: str) -> None:
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        data = os.urandom(5000)
        cid = chunk_id(key.chunk_id_key, data)
        async with member_session(victim, mallory, key) as member:
            member.chunks[cid] = data
            await member.send_records(
                [forge(mallory, key, "from-mallory.txt", chunks=[[cid, 5000]])]
            )
            await member.next(ChunkBatchRequest)
            with anyio.fail_after(30):
                while not (victim.folder / "from-mallory.txt").exists():
                    await anyio.sleep(0.05)
        assert (victim.folder / "from-mallory.txt").read_bytes() == data
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")
