"""Shared test factories: records as a device would author, sign and index them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from commonsync.formats.identity import DeviceIdentity
from commonsync.formats.records import ChunkEntry, Kind, Record, sign_record
from commonsync.formats.versionvector import VersionVector
from commonsync.sync.store import IndexEntry
from tests.daemons import LOOPBACK, Device


def make_record(
    identity: DeviceIdentity,
    path: str,
    chunks: tuple[ChunkEntry, ...] | None = None,
    *,
    sequence: int = 1,
    deleted: bool = False,
    kind: Kind = Kind.FILE,
) -> Record:
    """A valid record of ``path`` authored by ``identity``.

    A file gets ``chunks`` (by default one random 1000-byte chunk) and the matching size; a
    deleted entry or a directory gets none.
    """
    if deleted or kind is not Kind.FILE:
        chunks = ()
    elif chunks is None:
        chunks = (ChunkEntry(os.urandom(32), 1000),)
    return Record(
        path=path,
        kind=kind,
        size=sum(c.size for c in chunks),
        mtime_ns=1_700_000_000_000_000_000,
        mode=0o755 if kind is Kind.DIRECTORY else 0o644,
        deleted=deleted,
        version=VersionVector.from_mapping({identity.device_id.short: sequence}),
        chunks=chunks,
        symlink_target="",
        author=identity.public_key,
        sequence=sequence,
    )


def make_entry(
    identity: DeviceIdentity, folder_id: bytes, record: Record, *, on_disk: bool = True
) -> IndexEntry:
    """``record`` signed by ``identity`` for ``folder_id``, as the store keeps it."""
    return IndexEntry(record, sign_record(identity, folder_id, record), on_disk)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Device, Device]]:
    """Two daemons, alice and bob, set up and started on loopback (not yet paired)."""
    a, b = Device(tmp_path, "alice"), Device(tmp_path, "bob")
    for device in (a, b):
        device.init(*LOOPBACK)
        device.start()
    try:
        yield a, b
    finally:
        for device in (a, b):
            device.kill()
