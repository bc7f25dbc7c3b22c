"""Records the victim must refuse are refused once, not retried for ever (issue 12, item 6).

20,000 records under ``.commonsync/`` used to be stored, tried every second and logged each
time (0.9 MiB/s of log, a busy core, surviving restarts), the folder never "up to date", and
every local change held back 30 s meanwhile. Now such records are refused on receipt, never
stored, and reported once per peer; a version the applier refuses for good leaves the pending
versions (also after a restart); and versions that only wait hold no local change back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from commonsync import DeviceIdentity
from commonsync.formats.records import Kind, Record, sign_record
from commonsync.formats.versionvector import VersionVector
from commonsync.sync.decide import REFUSED_INTERNAL
from commonsync.sync.exchange import RemoteRecord
from commonsync.sync.folder import Progress
from commonsync.sync.store import IndexEntry, open_store
from tests.daemons import Device, wait_for
from tests.hostile import forge, invite, member_session, scene, still_syncs
from tests.test_attack_memory import FOLDER_KEY, folder_at, source

pytestmark = pytest.mark.anyio
INTERNAL = [".commonsync/versions/x", ".COMMONSYNC/folder", "d/.f.cs-tmp-0123456789abcdef"]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def directory(author: DeviceIdentity, path: str) -> RemoteRecord:
    record = Record(
        path=path,
        kind=Kind.DIRECTORY,
        size=0,
        mtime_ns=1_700_000_000 * 10**9,
        mode=0o755,
        deleted=False,
        version=VersionVector.from_mapping({author.device_id.short: 1_700_000_000}),
        chunks=(),
        symlink_target="",
        author=author.public_key,
        sequence=1,
    )
    return RemoteRecord(record, sign_record(author, FOLDER_KEY.folder_id, record))


async def test_records_for_engine_paths_are_refused_once_and_never_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    author = DeviceIdentity.generate()
    batch = [directory(author, f"{INTERNAL[n % 3]}/{n}") for n in range(3000)]
    caplog.set_level(logging.INFO, logger="commonsync")
    async with folder_at(tmp_path) as (folder, store):
        for start in range(0, len(batch), 500):
            await folder.receive_records(source(author), batch[start : start + 500])
        await anyio.sleep(1.5)
        assert await store.count(FOLDER_KEY.folder_id) == 0
        assert folder.progress() == Progress(0, 0)
        (refusal,) = folder.refusals()
        assert (refusal.device, refusal.reason, refusal.count) == (
            author.device_id.short_str, REFUSED_INTERNAL, 3000
        )  # fmt: skip
    lines = [r for r in caplog.records if r.name.startswith("commonsync")]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "1 version from" in lines[0].getMessage()


async def test_a_version_refused_when_applied_is_not_pending_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """A version taken before the rule (stored, not on disk, under ``.commonsync/``): the
    applier refuses it once, for good; it leaves what is left to sync, and a restart does not
    take it up again. A newer version of the path would be tried afresh."""
    author = DeviceIdentity.generate()
    taken = directory(author, ".commonsync/planted")
    async with open_store(tmp_path / "index.db") as store:
        await store.add_folder(FOLDER_KEY.folder_id, "root")
        await store.put(
            FOLDER_KEY.folder_id, [IndexEntry(taken.record, taken.signed, on_disk=False)]
        )
    async with folder_at(tmp_path) as (folder, store):
        with anyio.fail_after(10):
            while folder.busy:
                await anyio.sleep(0.05)
        assert [r.count for r in folder.refusals()] == [1]
        assert await store.refused(FOLDER_KEY.folder_id, ".commonsync/planted") is not None
    async with folder_at(tmp_path) as (folder, store):
        assert not folder.busy
        await anyio.sleep(0.5)
        assert folder.refusals() == []  # not tried again: nothing to report


@pytest.mark.slow
async def test_a_flood_of_refused_records_stays_quiet_and_holds_nothing_back(
    tmp_path: Path,
) -> None:
    """20,000 records under ``.commonsync/`` from a member: the victim's log grows by a
    line or two, not per record per second; its folder is "up to date" and says the refusal
    once; and a local change reaches bob within seconds, not after a 30 s deferral."""
    count = 20_000
    with scene(tmp_path) as (victim, bob):
        mallory = DeviceIdentity.generate()
        key = await invite(victim, mallory, "shared")
        async with member_session(victim, mallory, key) as member:
            for start in range(0, count, 4000):
                await member.send_records(
                    [
                        forge(mallory, key, f".commonsync/planted-{n}", kind=Kind.DIRECTORY)
                        for n in range(start, start + 4000)
                    ]
                )
            with anyio.fail_after(60):
                while f"{count} versions from" not in await summary(victim):
                    await anyio.sleep(0.2)
            log_size = victim.log.stat().st_size
            await anyio.sleep(5)
            grown = victim.log.stat().st_size - log_size
            assert grown < 2000, victim.log.read_text()[-3000:]
            state = await anyio.to_thread.run_sync(victim.folder_state, "shared")
            assert state["state"] == "up to date"
            assert state["files_left"] == 0
            # A local change is published at once, not held behind what was refused.
            (victim.folder / "local-edit.txt").write_text("published promptly\n")
            took = await anyio.to_thread.run_sync(
                wait_for,
                lambda: (bob.folder / "local-edit.txt").exists(),
                "local-edit.txt to reach bob",
                30.0,
            )
            assert took < 10, f"a local change took {took:.1f} s to reach bob"
            await anyio.to_thread.run_sync(still_syncs, victim, bob, "during")
        assert not list((victim.folder / ".commonsync").glob("planted-*"))


async def summary(device: Device) -> str:
    state = await anyio.to_thread.run_sync(device.folder_state, "shared")
    return str(state["summary"])
