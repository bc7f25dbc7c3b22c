"""Free disk space: a version is written only if the disk keeps its reserve (``min_free``).

A record may list one chunk thousands of times: a file far larger than what crossed the wire
(issue 12, item 7). Tested with an injected free-space probe (any size of disk, at no cost)
and, where this process may mount one, on a real 8 MiB tmpfs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from commonsync.errors import InsufficientSpaceError
from commonsync.formats.chunks import chunk_id
from commonsync.formats.records import ChunkEntry, Record
from commonsync.sync import layout
from commonsync.sync.apply import apply_file, apply_small_files
from commonsync.sync.space import DiskReserve, MinFree, statvfs_probe
from tests.tmpfs import mounted_or_skip

from .test_apply import KEY, MIB, Source, file_record, record

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    root.mkdir()
    return root


class Disk:
    """A pretend file system for the probe: ``free`` bytes of ``total``, less what this test
    wrote (as measured on the real disk would be), counted by the tests themselves."""

    def __init__(self, free: int, total: int = 100 * 1024 * MIB) -> None:
        self.free = free
        self.total = total
        self.looks = 0

    def __call__(self, fd: int) -> tuple[int, int]:
        self.looks += 1
        return self.free, self.total


def repeated(path: str, times: int, size: int = MIB) -> tuple[Record, Source]:
    """A record listing one chunk ``times`` times, and a source holding that chunk."""
    data = os.urandom(size)
    entry = ChunkEntry(chunk_id(KEY.chunk_id_key, data), size)
    rec = record(path, chunks=(entry,) * times, size=size * times)
    return rec, Source({entry.id: data})


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if layout.is_internal(p.name)]


def test_min_free_reads_as_people_write_it() -> None:
    assert MinFree.parse("1%") == MinFree(share=0.01)
    assert MinFree.parse(" 0.5 % ") == MinFree(share=0.005)
    assert MinFree.parse("10 GB") == MinFree(share=0.0, bytes=10 * 10**9)
    assert MinFree.parse("500MiB") == MinFree(share=0.0, bytes=500 * MIB)
    assert MinFree.parse(0) == MinFree(share=0.0, bytes=0)
    assert MinFree.parse(4096) == MinFree(share=0.0, bytes=4096)
    assert MinFree().of(10**12) == 10**10
    for wrong in ("lots", "101%", "-1", "1 parsec"):
        with pytest.raises(ValueError, match="min_free"):
            MinFree.parse(wrong)


async def test_a_file_that_does_not_fit_fetches_and_writes_nothing(folder: Path) -> None:
    """One 1 MiB chunk listed 2,000 times: a 2 GB file on a disk with 1.5 GB free."""
    rec, source = repeated("huge.bin", 2000)
    disk = Disk(free=1500 * MIB + Disk(0).total // 100)
    with pytest.raises(InsufficientSpaceError, match=r"huge\.bin") as caught:
        await apply_file(
            folder, rec, expected=None, read_chunk=source, chunk_id_key=KEY.chunk_id_key,
            reserve=DiskReserve(probe=disk),
        )  # fmt: skip
    assert caught.value.needed == 2000 * MIB
    assert caught.value.free == 1500 * MIB  # beyond the 1 % reserve, which is kept
    assert source.fetched == []
    assert temp_files(folder) == []
    assert not (folder / "huge.bin").exists()


async def test_the_reserve_is_checked_before_each_write(folder: Path) -> None:
    """Room at the start, then the disk fills (someone else writes) after two chunks: the
    file stops before the write that would eat into the reserve, and once there is room
    again it resumes, fetching only the chunks it had not written."""
    data = os.urandom(6 * MIB)
    rec, source = file_record("grows.bin", data)
    assert len(rec.chunks) > 2
    disk = Disk(free=0)
    roomy = disk.total // 100 + 1024 * MIB

    def filling(fd: int) -> tuple[int, int]:
        # The first look is before anything is fetched, then one before each write.
        disk.free = roomy if disk.looks < 3 else disk.total // 100 + 1000
        return disk(fd)

    with pytest.raises(InsufficientSpaceError):
        await apply_file(
            folder, rec, expected=None, read_chunk=source, chunk_id_key=KEY.chunk_id_key,
            reserve=DiskReserve(probe=filling),
        )  # fmt: skip
    assert not (folder / "grows.bin").exists()
    source.fetched.clear()
    await apply_file(
        folder, rec, expected=None, read_chunk=source, chunk_id_key=KEY.chunk_id_key,
        reserve=DiskReserve(probe=lambda fd: (roomy, disk.total)),
    )  # fmt: skip
    assert (folder / "grows.bin").read_bytes() == data
    assert len(source.fetched) == len(rec.chunks) - 2


async def test_small_files_that_do_not_fit_are_refused_one_by_one(folder: Path) -> None:
    (small, small_source), (large, large_source) = (
        file_record("small.txt", b"x" * 1000),
        file_record("large.bin", os.urandom(200_000)),
    )
    disk = Disk(free=Disk(0).total // 100 + 100_000)
    files = [
        (small, small_source.store[small.chunks[0].id], None),
        (large, large_source.store[large.chunks[0].id], None),
    ]
    results = await apply_small_files(
        folder, files, chunk_id_key=KEY.chunk_id_key, reserve=DiskReserve(probe=disk)
    )
    assert not isinstance(results[0], Exception)
    assert isinstance(results[1], InsufficientSpaceError)
    assert (folder / "small.txt").exists()
    assert not (folder / "large.bin").exists()


# -- on a real small file system ---------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 8 MiB tmpfs, to fill up (skipped where this process may not mount one)."""
    with mounted_or_skip(tmp_path / "tmpfs", "8m") as place:
        yield place


def used(place: Path) -> int:
    fd = os.open(place, os.O_RDONLY)
    try:
        free, total = statvfs_probe(fd)
    finally:
        os.close(fd)
    return total - free


async def test_on_a_real_small_disk_a_repeated_chunk_does_not_fill_it(tmpfs: Path) -> None:
    rec, source = repeated("amplified.bin", 50)  # 50 MiB on an 8 MiB disk
    before = used(tmpfs)
    with pytest.raises(InsufficientSpaceError):
        await apply_file(
            tmpfs, rec, expected=None, read_chunk=source, chunk_id_key=KEY.chunk_id_key
        )
    assert used(tmpfs) - before < MIB
    assert source.fetched == []
    # What fits (with the 1 % reserve kept) is written.
    fits, fits_source = repeated("fits.bin", 4)
    await apply_file(tmpfs, fits, expected=None, read_chunk=fits_source,
                     chunk_id_key=KEY.chunk_id_key)  # fmt: skip
    assert (tmpfs / "fits.bin").stat().st_size == 4 * MIB


async def test_a_disk_found_full_while_writing_waits_too(tmpfs: Path) -> None:
    """Without a reserve, and with a probe that says there is room, the file system's own
    ENOSPC is a wait for space as well (not a failure like another)."""
    rec, source = repeated("liar.bin", 12)
    lying = DiskReserve(min_free=MinFree(share=0.0), probe=lambda fd: (10**12, 10**13))
    with anyio.fail_after(30), pytest.raises(InsufficientSpaceError, match="No space left"):
        await apply_file(
            tmpfs, rec, expected=None, read_chunk=source, chunk_id_key=KEY.chunk_id_key,
            reserve=lying,
        )  # fmt: skip
    assert not (tmpfs / "liar.bin").exists()
