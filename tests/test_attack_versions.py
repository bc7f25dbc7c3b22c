"""A member must not break the victim's scans with a forged version counter (issue 12, item 5).

Only a device bumps its own counter, by ``max(old + 1, now)``: a record claiming a counter of
2**64 - 1 for the victim (which its next edit of that path could not bump) is refused on
receipt, as is any counter above 2**63 - 1; and a path whose version still cannot be bumped
(accepted before the rule) is skipped by the scan, which publishes every other change.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity
from commonsync.formats.chunks import chunk_id
from commonsync.formats.device_id import DeviceId
from commonsync.formats.records import Kind, Record, sign_record
from commonsync.formats.versionvector import MAX_COUNTER, OWN_COUNTER_AHEAD, VersionVector
from commonsync.sync.exchange import RemoteRecord
from commonsync.sync.scanner import SkipReason
from commonsync.sync.store import IndexEntry
from tests.daemons import Device
from tests.hostile import forge, invite, member_session, scene, still_syncs
from tests.test_attack_memory import FOLDER_KEY, ME, folder_at, source

pytestmark = pytest.mark.anyio
U64 = 2**64 - 1


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def versioned(author: DeviceIdentity, path: str, counters: dict[int, int]) -> RemoteRecord:
    record = Record(
        path=path,
        kind=Kind.DIRECTORY,
        size=0,
        mtime_ns=1_700_000_000 * 10**9,
        mode=0o755,
        deleted=False,
        version=VersionVector.from_mapping(counters),
        chunks=(),
        symlink_target="",
        author=author.public_key,
        sequence=1,
    )
    return RemoteRecord(record, sign_record(author, FOLDER_KEY.folder_id, record))


async def test_forged_counters_are_refused_on_receipt(tmp_path: Path) -> None:
    author = DeviceIdentity.generate()
    me, them, now = ME.device_id.short, author.device_id.short, int(time.time())
    cases = {
        "ours-at-max": {me: U64, them: 5},
        "ours-far-ahead": {me: now + OWN_COUNTER_AHEAD + 10_000, them: 5},
        "theirs-unbumpable": {them: MAX_COUNTER + 1},
        "ours-a-little-ahead": {me: now + 1000, them: 5},  # fast edits: fine
        "theirs-far-ahead": {them: now + 2 * OWN_COUNTER_AHEAD},  # their clock: fine
    }
    async with folder_at(tmp_path) as (folder, store):
        await folder.receive_records(
            source(author), [versioned(author, path, c) for path, c in cases.items()]
        )
        stored = await store.get_many(FOLDER_KEY.folder_id, list(cases))
        assert sorted(stored) == ["ours-a-little-ahead", "theirs-far-ahead"]
        refusals = folder.refusals()
        assert sum(r.count for r in refusals) == 3
        assert all(r.device == author.device_id.short_str for r in refusals)
        with anyio.fail_after(10):
            while not folder.progress().idle:
                await anyio.sleep(0.05)
    assert (tmp_path / "root" / "ours-a-little-ahead").is_dir()
    assert not (tmp_path / "root" / "ours-at-max").exists()


async def test_a_path_whose_version_cannot_grow_does_not_stop_the_scan(tmp_path: Path) -> None:
    """A version of ``stuck.txt`` holding our counter at 2**64 - 1 (taken before the rule):
    editing it and ``other.txt`` at once, the scan skips ``stuck.txt`` and publishes
    ``other.txt`` (the batch used to fail whole, and every later scan with it)."""
    author = DeviceIdentity.generate()
    root = tmp_path / "root"
    root.mkdir()
    for name in ("stuck.txt", "other.txt"):
        (root / name).write_bytes(b"first")
    async with folder_at(tmp_path) as (folder, store):
        await folder.scan()
        old = await store.get(FOLDER_KEY.folder_id, "stuck.txt")
        assert old is not None
        poisoned = Record(
            **{
                **old.record.__dict__,
                "version": VersionVector.from_mapping({ME.device_id.short: U64}),
                "author": author.public_key,
            }
        )
        signed = sign_record(author, FOLDER_KEY.folder_id, poisoned)
        await store.put(FOLDER_KEY.folder_id, [IndexEntry(poisoned, signed, on_disk=True)])
        for name in ("stuck.txt", "other.txt"):
            (root / name).write_bytes(b"second, longer")
        report = await folder.scan()
        assert report.changed == 1
        assert [(s.path, s.reason) for s in report.skipped] == [
            ("stuck.txt", SkipReason.UNVERSIONABLE)
        ]
        other = await store.get(FOLDER_KEY.folder_id, "other.txt")
        assert other is not None
        assert other.record.size == len(b"second, longer")


@pytest.mark.slow
async def test_a_member_cannot_stop_the_victim_publishing_with_a_counter_at_its_maximum(
    tmp_path: Path,
) -> None:
    """The member sends ``poison.txt`` whose version claims the victim's counter at
    2**64 - 1, and serves its chunk. The victim refuses it (its status says so, once), and
    when it then edits ``poison.txt`` and other files, they are all published."""
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        victim_short = DeviceId.parse(victim.device_id).short
        data = os.urandom(3000)
        cid = chunk_id(key.chunk_id_key, data)
        version = [[victim_short, U64]]
        async with member_session(victim, mallory, key) as member:
            member.chunks[cid] = data
            await member.send_records(
                [forge(mallory, key, "poison.txt", chunks=[[cid, 3000]], version=version)]
            )
            with anyio.fail_after(30):
                while not (await anyio.to_thread.run_sync(refused, victim)):
                    await anyio.sleep(0.1)
        assert not (victim.folder / "poison.txt").exists()
        (victim.folder / "poison.txt").write_bytes(b"the victim's own poison.txt")
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")
        assert (bob.folder / "poison.txt").read_bytes() == b"the victim's own poison.txt"
        (line,) = await anyio.to_thread.run_sync(refused, victim)
        assert line.startswith("1 version from ")


def refused(device: Device) -> list[str]:
    return list(device.folder_state("shared")["refused"])
