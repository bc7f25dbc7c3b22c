"""A member that never answers chunk requests must not slow everyone else's transfers to the
victim (issue 12, item 8: 24 MiB took 0.7 s, then 120.6 s beside a silent member, each
request to it waiting out a 60 s timeout). The victim asks peers that answer first, asks
another peer too when one is slow to answer, and puts a peer that leaves requests unanswered
at the end of the line."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity
from commonsync.formats.messages import ChunkBatchRequest, ChunkRequest, IndexRequest
from tests.daemons import wait_for
from tests.hostile import invite, member_session, scene, still_syncs

MiB = 1024 * 1024
#: A bound for hang detection, far below the 60 s a request to the silent member used to
#: wait (and several of them, one after another): not a benchmark.
BOUND = 20.0


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_silent_member_does_not_slow_transfers_from_others(
    tmp_path: Path, anyio_backend: str
) -> None:
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        async with member_session(victim, mallory, key) as member:
            member.answer_chunks = False  # it takes every request and answers none
            await member.next(IndexRequest)  # the victim counts it as a peer of the folder
            files = {f"large-{n}.bin": os.urandom(3 * MiB + n) for n in range(2)}
            files |= {f"small-{n}.bin": os.urandom(200_000 + n) for n in range(8)}
            for name, data in files.items():
                (bob.folder / name).write_bytes(data)

            def arrived() -> bool:
                try:
                    return all((victim.folder / n).read_bytes() == d for n, d in files.items())
                except OSError:
                    return False

            took = await anyio.to_thread.run_sync(
                wait_for, arrived, "bob's files to reach the victim", 3 * BOUND
            )
            asked = [m for m in member.received if isinstance(m, ChunkRequest | ChunkBatchRequest)]
            assert asked, "the victim never asked the silent member: nothing was tested"
            assert took < BOUND, f"bob's files took {took:.1f} s beside a silent member"
            await anyio.to_thread.run_sync(still_syncs, victim, bob, "during")
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")
