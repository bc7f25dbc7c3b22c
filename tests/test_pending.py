"""The puller and the versions that wait for it: what happens to one that is superseded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest

from commonsync import DeviceIdentity
from commonsync.formats.records import sign_record
from commonsync.formats.versionvector import VersionVector
from commonsync.sync.apply import temp_path
from commonsync.sync.exchange import RemoteRecord
from tests.test_attack_memory import FOLDER_KEY, folder_at, remote, source

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def test_a_superseded_version_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A stop in the middle of writing a version leaves its temporary file; when a newer
    version replaces it before it is written, no attempt will finish that file: it goes at
    once, not after the scan's grace period (found by the kill -9 trials of the reliability
    benchmark, issue 13)."""
    author = DeviceIdentity.generate()
    first = remote(author, FOLDER_KEY, "report.odt", chunks=3)
    newer = dataclasses.replace(
        first.record,
        version=VersionVector.from_mapping({author.device_id.short: 1_700_000_001}),
        chunks=remote(author, FOLDER_KEY, "report.odt", chunks=2).record.chunks,
        size=2000,
    )
    second = RemoteRecord(newer, sign_record(author, FOLDER_KEY.folder_id, newer))
    async with folder_at(tmp_path) as (folder, _store):
        await folder.receive_records(source(author), [first])
        # What a stop mid-write of the first version leaves (its chunks came from nobody here).
        temp = folder.root / temp_path(first.record)
        temp.write_bytes(b"x" * 1000)
        await folder.receive_records(source(author), [second])  # its puller runs meanwhile
        newer_temp = folder.root / temp_path(newer)
        with anyio.fail_after(10):
            while temp.exists() or not newer_temp.exists():
                await anyio.sleep(0.05)
        # The puller has tried the newer version since, and did not bring the old one back.
        assert not temp.exists()
        assert not (folder.root / "report.odt").exists()  # the second waits for its chunks
