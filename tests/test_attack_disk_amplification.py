"""A member lists one chunk thousands of times in a record: the victim must not write that
many copies until its disk is full (issue 12, item 7: one 4 MiB chunk listed N times made the
victim write N x 4 MiB; a maximal record claims 1.5 TiB). A version is written only if the
disk keeps its reserve (``min_free``, 1 % by default); the rest waits, and status says why.

The victim's folder is on a small tmpfs of its own (so that the version before the fix filled
32 MiB, not the machine's disk); skipped where this process may not mount one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity
from commonsync.formats.chunks import chunk_id
from tests.daemons import wait_for
from tests.hostile import forge, invite, member_session, scene, still_syncs
from tests.tmpfs import mounted_or_skip

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, to fill up (skipped where this process may not mount one)."""
    with mounted_or_skip(tmp_path / "small-disk", "32m") as place:
        yield place


def used(place: Path) -> int:
    st = os.statvfs(place)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_chunk_listed_thousands_of_times_does_not_fill_the_disk(
    tmp_path: Path, small_disk: Path, anyio_backend: str
) -> None:
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "small", path=small_disk / "files")
        before = used(small_disk)
        big, small = os.urandom(4 * MiB), os.urandom(MiB)
        big_id, small_id = chunk_id(key.chunk_id_key, big), chunk_id(key.chunk_id_key, small)
        async with member_session(victim, mallory, key) as member:
            member.chunks.update({big_id: big, small_id: small})
            await member.send_records([
                # 3,000 x 4 MiB: 12.6 GB claimed, 4 MiB sent.
                forge(mallory, key, "amplified.bin", chunks=[[big_id, 4 * MiB]] * 3000),
                # A file with a repeated chunk that fits is written as ever.
                forge(mallory, key, "fits.bin", chunks=[[small_id, MiB]] * 3),
            ])  # fmt: skip

            def waits() -> bool:
                summary = str(victim.folder_state("small")["summary"])
                return "amplified.bin" in summary and "needs" in summary

            def fitted() -> bool:
                try:
                    return (small_disk / "files/fits.bin").read_bytes() == small * 3
                except OSError:
                    return False

            await anyio.to_thread.run_sync(wait_for, waits, "status to say it waits", 30)
            await anyio.to_thread.run_sync(wait_for, fitted, "the file that fits", 30)
            assert not (small_disk / "files/amplified.bin").exists()
            assert used(small_disk) - before < 8 * MiB, "the victim filled its disk"
            await anyio.to_thread.run_sync(still_syncs, victim, bob, "during")
            await anyio.sleep(3)  # it keeps waiting: nothing more is written meanwhile
            assert used(small_disk) - before < 8 * MiB, "the victim filled its disk"
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")
