"""Applying remote versions to the disk: assembling, verifying, replacing, deleting, versions,
conflicts, hostile paths, resuming, crashes and memory.

Everything runs on real files under ``tmp_path``; chunk IDs are real (FastCDC chunks hashed
with a folder key). Async tests run under trio through anyio's pytest plugin. Two tests run a
child process: one is killed with SIGKILL in the middle of assembling a file, one measures the
peak memory of assembling a 64 MiB file.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import re
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from commonsync.errors import ChunkTamperedError
from commonsync.formats.chunking import ChunkHasher
from commonsync.formats.chunks import chunk_id
from commonsync.formats.identity import DeviceIdentity
from commonsync.formats.keys import FolderKey
from commonsync.formats.records import ChunkEntry, Kind, Record
from commonsync.formats.versionvector import VersionVector
from commonsync.sync import apply, layout, modes
from commonsync.sync.apply import (
    ConflictCopyExistsError,
    DirectoryNotEmptyError,
    FolderMissingError,
    InternalPathError,
    LocalChangedError,
    LocalFileError,
    LocalState,
    MissingChunkError,
    RecordKindError,
    UnrepresentableNameError,
    UnsafePathError,
    apply_deletion,
    apply_directory,
    apply_file,
    apply_symlink,
    conflict_copy,
    discard_partial,
    safe_path,
)
from commonsync.sync.versions import prune_versions

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
KEY = FolderKey.generate()
AUTHOR = DeviceIdentity.generate()
MIB = 1024 * 1024
MTIME = 1_700_000_000_123_456_789
NOW = 1_750_000_000_000_000_000
DAY = 86_400 * 1_000_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the folder that nothing may write into."""
    place = tmp_path / "outside"
    place.mkdir()
    (place / "secret.txt").write_bytes(b"keep me")
    return place


# -- helpers ---------------------------------------------------------------------------------


def chunked(data: bytes) -> tuple[tuple[ChunkEntry, ...], dict[bytes, bytes]]:
    """The chunks of ``data`` as the scanner makes them, and a store serving them by ID."""
    with ChunkHasher(KEY.chunk_id_key) as hasher:
        refs = list(hasher.hash_stream(io.BytesIO(data)))
    store = {ref.id: data[ref.offset : ref.offset + ref.size] for ref in refs}
    return tuple(ChunkEntry(ref.id, ref.size) for ref in refs), store


def record(path: str, kind: Kind = Kind.FILE, **fields: object) -> Record:
    values: dict[str, object] = {
        "size": 0,
        "mtime_ns": MTIME,
        "mode": 0o755 if kind is Kind.DIRECTORY else 0o644,
        "deleted": False,
        "version": VersionVector.from_mapping({AUTHOR.device_id.short: 1}),
        "chunks": (),
        "symlink_target": "",
        "author": AUTHOR.public_key,
        "sequence": 1,
    }
    values.update(fields)
    return Record(path=path, kind=kind, **values)  # type: ignore[arg-type]


def file_record(path: str, data: bytes, **fields: object) -> tuple[Record, Source]:
    chunks, store = chunked(data)
    return record(path, chunks=chunks, size=len(data), **fields), Source(store)


def tombstone(path: str, kind: Kind = Kind.FILE) -> Record:
    return record(path, kind, deleted=True)


class Source:
    """A chunk reader serving from a dict, recording what it was asked for."""

    def __init__(self, store: dict[bytes, bytes]) -> None:
        self.store = store
        self.fetched: list[bytes] = []

    async def __call__(self, entry: ChunkEntry) -> bytes:
        self.fetched.append(entry.id)
        return self.store[entry.id]


def state(path: Path) -> LocalState:
    return LocalState.from_stat(os.lstat(path))


async def put(
    root: Path, rec: Record, source: Source, expected: LocalState | None = None, **kw: object
) -> LocalState:
    return await apply_file(
        root,
        rec,
        expected=expected,
        read_chunk=source,
        chunk_id_key=KEY.chunk_id_key,
        **kw,  # type: ignore[arg-type]
    )


async def existing(root: Path, path: str, data: bytes) -> LocalState:
    """A file already synced at ``path``, and its scanned state."""
    rec, source = file_record(path, data)
    return await put(root, rec, source)


def at(now: int) -> Callable[[], int]:
    return lambda: now


def listing(root: Path) -> list[str]:
    """Every path below ``root``, relative and sorted."""
    found = []
    for parent, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(parent, name), root))
    return sorted(found)


# -- assembling files ------------------------------------------------------------------------


async def test_new_file_is_assembled_from_verified_chunks(folder: Path) -> None:
    data = os.urandom(5 * MIB)
    rec, source = file_record("docs/2024/report.bin", data, mode=0o640)
    assert len(rec.chunks) > 2
    result = await put(folder, rec, source)
    target = folder / "docs" / "2024" / "report.bin"
    assert target.read_bytes() == data
    assert result == state(target)
    assert (result.size, result.mtime_ns, result.mode) == (len(data), MTIME, stat.S_IFREG | 0o640)
    assert source.fetched == [c.id for c in rec.chunks]  # each chunk once, in order
    assert listing(folder) == ["docs", "docs/2024", "docs/2024/report.bin"]  # no temp file
    assert stat.S_ISDIR(os.lstat(folder / "docs").st_mode)


async def test_empty_file(folder: Path) -> None:
    rec, source = file_record("empty", b"")
    result = await put(folder, rec, source)
    assert (folder / "empty").read_bytes() == b""
    assert result.size == 0
    assert source.fetched == []


@pytest.mark.parametrize(
    ("mode", "applied"), [(0o600, 0o600), (0o755, 0o755), (0o444, 0o444), (0o4755, 0o755)]
)
async def test_mode_bits_and_mtime_are_set(folder: Path, mode: int, applied: int) -> None:
    rec, source = file_record("tool", b"#!/bin/sh\n", mode=mode, mtime_ns=MTIME + 7)
    await put(folder, rec, source)
    st = os.lstat(folder / "tool")
    assert stat.S_IMODE(st.st_mode) == applied  # never setuid/setgid from a remote device
    assert st.st_mtime_ns == MTIME + 7


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
async def test_a_remote_mode_is_masked_by_the_local_umask(
    folder: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    # A peer asks for world-writable entries; this device's umask has the last word.
    monkeypatch.setattr(modes, "UMASK", umask)
    small, source = file_record("open.sh", b"#!/bin/sh\n", mode=0o777)
    await put(folder, small, source)
    large, source = file_record("open.bin", os.urandom(3 * MIB), mode=0o777)
    assert len(large.chunks) > 1
    await put(folder, large, source)
    shared = await apply_directory(folder, record("shared", Kind.DIRECTORY, mode=0o777), None)
    for name in ("open.sh", "open.bin"):
        assert stat.S_IMODE(os.lstat(folder / name).st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(shared.mode) == (0o777 & ~umask) | 0o700
    assert stat.S_IMODE(os.lstat(folder / "shared").st_mode) == (0o777 & ~umask) | 0o700


async def test_a_repeated_chunk_is_fetched_once(folder: Path) -> None:
    data = bytes(12 * MIB)  # FastCDC cuts zeros into identical maximum-size chunks
    rec, source = file_record("disk.img", data)
    assert len(rec.chunks) >= 3
    assert len({c.id for c in rec.chunks}) == 1
    await put(folder, rec, source)
    assert source.fetched == [rec.chunks[0].id]
    assert (folder / "disk.img").read_bytes() == data


async def test_a_name_of_255_bytes_is_assembled_and_versioned(folder: Path) -> None:
    # Its temporary and versions names would be longer than the file system allows: they
    # are shortened, the name itself never is.
    name = "é" * 125 + "a.txt"
    assert len(name.encode()) == 255
    old = await existing(folder, name, b"old")
    rec, source = file_record(name, b"new")
    await put(folder, rec, source, old, clock_ns=at(NOW))
    assert (folder / name).read_bytes() == b"new"
    kept = list((folder / layout.VERSIONS_DIR).iterdir())
    assert [p.read_bytes() for p in kept] == [b"old"]


# -- verification ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped bit", "truncated", "extended", "other chunk"])
async def test_a_tampered_chunk_is_refused_and_nothing_replaced(
    folder: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One chunk at a time, so that which chunks were fetched before the bad one is known.
    monkeypatch.setattr(apply, "FETCH_WINDOW", 1)
    old = await existing(folder, "f.bin", b"the old content")
    rec, source = file_record("f.bin", os.urandom(4 * MIB))
    victim = rec.chunks[1].id
    good = source.store[victim]
    source.store[victim] = {
        "flipped bit": bytes([good[0] ^ 1]) + good[1:],
        "truncated": good[:-1],
        "extended": good + b"x",
        "other chunk": source.store[rec.chunks[0].id],
    }[damage]
    with pytest.raises(ChunkTamperedError, match=re.escape("chunk 1 of 'f.bin'")):
        await put(folder, rec, source, old)
    assert (folder / "f.bin").read_bytes() == b"the old content"
    assert state(folder / "f.bin") == old
    assert not (folder / layout.METADATA_DIR).exists()
    assert source.fetched == [c.id for c in rec.chunks[:2]]  # stopped at the bad one
    # The good chunk before it is kept: a retry with an honest source fetches the rest only.
    source.store[victim] = good
    source.fetched.clear()
    await put(folder, rec, source, old)
    assert source.fetched == [c.id for c in rec.chunks[1:]]


async def test_chunks_are_fetched_several_at_a_time_within_the_window(folder: Path) -> None:
    # Seeded: the chunk count of random data varies, and the test needs more than two windows.
    data = random.Random(24).randbytes(24 * MIB)
    rec, source = file_record("big.bin", data)
    assert len(rec.chunks) > 2 * apply.FETCH_WINDOW
    in_flight, most = 0, 0

    async def slow(entry: ChunkEntry) -> bytes:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await anyio.sleep(0.01)
        in_flight -= 1
        return await source(entry)

    await apply_file(folder, rec, expected=None, read_chunk=slow, chunk_id_key=KEY.chunk_id_key)
    assert (folder / "big.bin").read_bytes() == data
    assert most == apply.FETCH_WINDOW
    assert sorted(source.fetched) == sorted({c.id for c in rec.chunks})


async def test_errors_of_the_chunk_reader_keep_their_type_and_the_partial_file(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply, "FETCH_WINDOW", 1)  # the calls below fail in a known order
    data = os.urandom(4 * MIB)
    rec, source = file_record("f.bin", data)
    calls = 0

    async def flaky(entry: ChunkEntry) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise MissingChunkError("no peer has it")
        if calls == 3:
            raise ConnectionResetError("peer went away")
        return await source(entry)

    for expected_error in (MissingChunkError, ConnectionResetError):
        with pytest.raises(expected_error):
            await apply_file(
                folder, rec, expected=None, read_chunk=flaky, chunk_id_key=KEY.chunk_id_key
            )
        assert not (folder / "f.bin").exists()
    await apply_file(folder, rec, expected=None, read_chunk=flaky, chunk_id_key=KEY.chunk_id_key)
    assert (folder / "f.bin").read_bytes() == data
    assert source.fetched == [c.id for c in rec.chunks]  # the first chunk was never refetched


async def test_cancelling_keeps_the_partial_file(folder: Path) -> None:
    # Fixed bytes: random ones are sometimes cut into only two chunks.
    data = random.Random(7).randbytes(4 * MIB)
    rec, source = file_record("f.bin", data)
    stalled = rec.chunks[len(rec.chunks) // 2]

    async def stalls(entry: ChunkEntry) -> bytes:
        if entry == stalled:
            await anyio.sleep_forever()
        return await source(entry)

    with anyio.move_on_after(2) as scope:
        await apply_file(
            folder, rec, expected=None, read_chunk=stalls, chunk_id_key=KEY.chunk_id_key
        )
    assert scope.cancelled_caught
    assert not (folder / "f.bin").exists()
    source.fetched.clear()
    await put(folder, rec, source)
    # The chunks around the stalled one were fetched in parallel and kept: only it is left.
    assert 3 <= len(rec.chunks) <= apply.FETCH_WINDOW
    assert source.fetched == [stalled.id]


# -- replacing and the versions folder -------------------------------------------------------


async def test_replacement_moves_the_old_file_into_versions(folder: Path) -> None:
    old = await existing(folder, "notes/todo.txt", b"buy milk\n")
    rec, source = file_record("notes/todo.txt", b"buy oat milk\n")
    new = await put(folder, rec, source, old, clock_ns=at(NOW))
    assert (folder / "notes/todo.txt").read_bytes() == b"buy oat milk\n"
    assert new.inode != old.inode
    kept = folder / layout.version_name("notes/todo.txt", NOW)
    assert kept.read_bytes() == b"buy milk\n"
    assert os.lstat(kept).st_ino == old.inode  # the very file, not a copy
    assert os.lstat(kept).st_nlink == 1


async def test_replacement_without_versions_keeps_nothing(folder: Path) -> None:
    old = await existing(folder, "f", b"old")
    rec, source = file_record("f", b"new")
    await put(folder, rec, source, old, versions=False)
    assert (folder / "f").read_bytes() == b"new"
    assert not (folder / layout.METADATA_DIR).exists()


async def test_replacements_within_one_second_keep_every_version(folder: Path) -> None:
    expected = await existing(folder, "f", b"v0")
    for n in (1, 2, 3):
        rec, source = file_record("f", f"v{n}".encode())
        expected = await put(folder, rec, source, expected, clock_ns=at(NOW))
    kept = sorted(p.read_bytes() for p in (folder / layout.VERSIONS_DIR).iterdir())
    assert kept == [b"v0", b"v1", b"v2"]


async def test_file_replaces_an_empty_directory_but_not_a_full_one(folder: Path) -> None:
    empty = await apply_directory(folder, record("d", Kind.DIRECTORY), None)
    rec, source = file_record("d", b"now a file")
    await put(folder, rec, source, empty)
    assert (folder / "d").read_bytes() == b"now a file"

    full = await apply_directory(folder, record("e", Kind.DIRECTORY), None)
    (folder / "e" / "unknown.txt").write_bytes(b"not in the index yet")
    rec, source = file_record("e", b"now a file")
    with pytest.raises(DirectoryNotEmptyError) as caught:
        await put(folder, rec, source, full)
    assert caught.value.path == "e"
    assert (folder / "e" / "unknown.txt").read_bytes() == b"not in the index yet"


# -- local changes since the scan ------------------------------------------------------------


def modify(path: Path) -> None:
    path.write_bytes(b"edited by the user")


def touch(path: Path) -> None:
    os.utime(path, ns=(MTIME, MTIME + 1))


def chmod(path: Path) -> None:
    path.chmod(0o600)


def swap(path: Path) -> None:
    """An editor's atomic save: same size and mtime, another inode."""
    st = os.lstat(path)
    fresh = path.with_name("fresh")
    fresh.write_bytes(path.read_bytes())
    os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
    fresh.chmod(stat.S_IMODE(st.st_mode))
    os.replace(fresh, path)


def remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("change", [modify, touch, chmod, swap, remove])
async def test_a_file_changed_after_the_scan_is_not_replaced(
    folder: Path, change: Callable[[Path], None]
) -> None:
    scanned = await existing(folder, "f.txt", b"as scanned")
    target = folder / "f.txt"
    change(target)
    after = os.lstat(target) if target.exists() else None
    content = target.read_bytes() if target.exists() else None
    rec, source = file_record("f.txt", b"remote version")
    with pytest.raises(LocalChangedError) as caught:
        await put(folder, rec, source, scanned, clock_ns=at(NOW))
    assert caught.value.path == "f.txt"
    assert "changed on disk since it was scanned" in str(caught.value)
    if after is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == content
        assert os.lstat(target).st_ino == after.st_ino
    assert not (folder / layout.METADATA_DIR).exists()
    # The finished temporary file is kept: once the engine rescanned and still takes this
    # version, applying it fetches nothing.
    source.fetched.clear()
    await put(folder, rec, source, state(target) if after else None, clock_ns=at(NOW))
    assert source.fetched == []
    assert target.read_bytes() == b"remote version"


async def test_a_file_that_appeared_after_the_scan_is_not_replaced(folder: Path) -> None:
    (folder / "f").write_bytes(b"created by the user meanwhile")
    rec, source = file_record("f", b"remote")
    with pytest.raises(LocalChangedError, match="scanned: nothing"):
        await put(folder, rec, source, None)
    assert (folder / "f").read_bytes() == b"created by the user meanwhile"


# -- directories -----------------------------------------------------------------------------


async def test_directory_is_created_changed_and_removed(folder: Path) -> None:
    created = await apply_directory(folder, record("a/b", Kind.DIRECTORY, mode=0o750), None)
    assert stat.S_ISDIR(os.lstat(folder / "a/b").st_mode)
    assert created == state(folder / "a/b")
    assert created.mode == stat.S_IFDIR | 0o750
    changed = await apply_directory(folder, record("a/b", Kind.DIRECTORY, mode=0o700), created)
    assert changed.mode == stat.S_IFDIR | 0o700
    assert changed.inode == created.inode
    await apply_deletion(folder, tombstone("a/b", Kind.DIRECTORY), changed)
    assert not (folder / "a/b").exists()
    assert (folder / "a").is_dir()


async def test_directory_mode_always_lets_the_owner_in(folder: Path) -> None:
    created = await apply_directory(folder, record("d", Kind.DIRECTORY, mode=0o4555), None)
    assert created.mode == stat.S_IFDIR | 0o755


async def test_a_non_empty_directory_is_not_deleted(folder: Path) -> None:
    created = await apply_directory(folder, record("d", Kind.DIRECTORY), None)
    (folder / "d" / "new.txt").write_bytes(b"not scanned yet")
    with pytest.raises(DirectoryNotEmptyError, match="'d' still holds entries"):
        await apply_deletion(folder, tombstone("d", Kind.DIRECTORY), created)
    assert (folder / "d" / "new.txt").read_bytes() == b"not scanned yet"


async def test_directory_replaces_a_file_which_goes_to_versions(folder: Path) -> None:
    old = await existing(folder, "x", b"was a file")
    await apply_directory(folder, record("x", Kind.DIRECTORY), old, clock_ns=at(NOW))
    assert (folder / "x").is_dir()
    assert (folder / layout.version_name("x", NOW)).read_bytes() == b"was a file"


# -- symlinks and paths that would lead outside ----------------------------------------------


async def test_symlink_is_created_as_given_and_never_followed(folder: Path, outside: Path) -> None:
    link = record("link", Kind.SYMLINK, symlink_target=str(outside))
    result = await apply_symlink(folder, link, None)
    assert os.readlink(folder / "link") == str(outside)
    assert result == state(folder / "link")
    assert stat.S_ISLNK(result.mode)
    assert result.mtime_ns == MTIME

    rec, source = file_record("link/evil.txt", b"escaped")
    with pytest.raises(UnsafePathError, match=r"'link' in .* is a symlink"):
        await put(folder, rec, source)
    with pytest.raises(UnsafePathError):
        await apply_directory(folder, record("link/d/e", Kind.DIRECTORY), None)
    with pytest.raises(UnsafePathError):
        await apply_symlink(folder, record("link/s", Kind.SYMLINK, symlink_target="/"), None)
    with pytest.raises(UnsafePathError):
        await apply_deletion(folder, tombstone("link/secret.txt"), state(outside / "secret.txt"))
    with pytest.raises(UnsafePathError):
        await conflict_copy(
            folder, "link/secret.txt", "link/copy.txt", state(outside / "secret.txt")
        )
    with pytest.raises(UnsafePathError):
        safe_path(folder, "link/secret.txt")
    assert listing(outside) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"keep me"
    assert listing(folder) == ["link"]


async def test_a_file_as_parent_is_refused(folder: Path) -> None:
    await existing(folder, "plain.txt", b"a file")
    rec, source = file_record("plain.txt/inner", b"x")
    with pytest.raises(UnsafePathError, match="not a directory"):
        await put(folder, rec, source)


async def test_a_symlink_is_replaced_not_written_through(folder: Path, outside: Path) -> None:
    os.symlink(outside / "secret.txt", folder / "f")
    rec, source = file_record("f", b"a real file now")
    await put(folder, rec, source, state(folder / "f"), clock_ns=at(NOW))
    assert (folder / "f").read_bytes() == b"a real file now"
    assert not (folder / "f").is_symlink()
    assert (outside / "secret.txt").read_bytes() == b"keep me"
    assert not (folder / layout.METADATA_DIR).exists()  # a symlink is not versioned

    link = record("f", Kind.SYMLINK, symlink_target="../outside/secret.txt")
    await apply_symlink(folder, link, state(folder / "f"), clock_ns=at(NOW))
    assert os.readlink(folder / "f") == "../outside/secret.txt"
    assert (folder / layout.version_name("f", NOW)).read_bytes() == b"a real file now"
    retarget = replace(link, symlink_target="elsewhere")
    await apply_symlink(folder, retarget, state(folder / "f"))
    assert os.readlink(folder / "f") == "elsewhere"
    assert sorted(os.listdir(folder)) == [layout.METADATA_DIR, "f"]


async def test_a_symlink_planted_at_the_temporary_name_is_not_followed(
    folder: Path, outside: Path
) -> None:
    rec, source = file_record("f.bin", b"payload")
    temp = layout.temp_name("f.bin", rec.content_digest())
    os.symlink(outside / "secret.txt", folder / temp)
    await put(folder, rec, source)
    assert (folder / "f.bin").read_bytes() == b"payload"
    assert (outside / "secret.txt").read_bytes() == b"keep me"
    assert sorted(os.listdir(folder)) == ["f.bin"]


@pytest.mark.parametrize(
    "path",
    [
        ".commonsync/versions/x",
        ".commonsync/folder",
        ".COMMONSYNC/x",
        "a/.b.cs-tmp-0123456789abcdef",
        ".a.cs-tmp-0123456789abcdef/inner",
    ],
)
async def test_the_engines_own_paths_are_refused(folder: Path, path: str) -> None:
    rec, source = file_record(path, b"x")
    with pytest.raises(InternalPathError):
        await put(folder, rec, source)
    with pytest.raises(InternalPathError):
        await apply_directory(folder, record(path, Kind.DIRECTORY), None)
    with pytest.raises(InternalPathError):
        await apply_deletion(folder, tombstone(path), None)
    assert listing(folder) == []


async def test_a_missing_root_is_refused(tmp_path: Path) -> None:
    rec, source = file_record("f", b"x")
    with pytest.raises(FolderMissingError, match="missing or not a directory"):
        await put(tmp_path / "unmounted", rec, source)
    assert not (tmp_path / "unmounted").exists()


async def test_safe_path_checks_and_creates_parents(folder: Path) -> None:
    assert safe_path(folder, "a/b/c.txt") == folder / "a" / "b" / "c.txt"
    assert not (folder / "a").exists()
    assert safe_path(folder, "a/b/c.txt", create_parents=True) == folder / "a/b/c.txt"
    assert (folder / "a" / "b").is_dir()
    (folder / "file").write_bytes(b"")
    with pytest.raises(UnsafePathError):
        safe_path(folder, "file/x")


async def test_wrong_kind_of_record_is_a_bug_reported_as_such(folder: Path) -> None:
    with pytest.raises(RecordKindError):
        await apply_directory(folder, record("f", Kind.SYMLINK, symlink_target="x"), None)
    with pytest.raises(RecordKindError):
        await apply_deletion(folder, record("f", Kind.DIRECTORY), None)


# -- names the file system cannot hold, and other local errors ---------------------------------


async def test_a_name_the_file_system_refuses_is_reported_not_mangled(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Linux file systems take any UTF-8 name; this one acts like a FAT file system refusing ':'.
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(name: object) -> None:
        if isinstance(name, str) and ":" in name:
            raise OSError(errno.EINVAL, "Invalid argument", name)

    def fake_open(name: str, *args: object, **kw: object) -> int:
        refuse(name)
        return real_open(name, *args, **kw)  # type: ignore[arg-type]

    def fake_mkdir(name: str, *args: object, **kw: object) -> None:
        refuse(name)
        real_mkdir(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    rec, source = file_record("notes/12:30.txt", b"x")
    with pytest.raises(
        UnrepresentableNameError, match=re.escape("cannot hold the name 'notes/12:30.txt'")
    ):
        await put(folder, rec, source)
    with pytest.raises(UnrepresentableNameError) as caught:
        await apply_directory(folder, record("a:b/c", Kind.DIRECTORY), None)
    assert caught.value.path == "a:b"
    assert listing(folder) == ["notes"]


def acting_as_a_user(monkeypatch: pytest.MonkeyPatch, read_only_dirs: set[str]) -> None:
    """Make ``os.open`` check permissions as for an ordinary user (these tests may run as
    root, who may write anything): no writing to a file without its owner's write bit, no
    creating a file in one of ``read_only_dirs`` (by name)."""
    real_open = os.open

    def checked_open(name: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & (os.O_RDWR | os.O_WRONLY):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                where = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else "."
                if os.path.basename(where) in read_only_dirs:
                    raise PermissionError(errno.EACCES, "Permission denied", name) from None
            else:
                if stat.S_ISREG(st.st_mode) and not st.st_mode & 0o200:
                    raise PermissionError(errno.EACCES, "Permission denied", name)
        return real_open(name, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", checked_open)


async def test_a_finished_read_only_temp_file_is_resumed(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acting_as_a_user(monkeypatch, set())
    scanned = await existing(folder, "ro.txt", b"local")
    (folder / "ro.txt").write_bytes(b"edited")
    rec, source = file_record("ro.txt", os.urandom(3 * MIB), mode=0o444)
    with pytest.raises(LocalChangedError):
        await put(folder, rec, source, scanned)
    temp = folder / layout.temp_name("ro.txt", rec.content_digest())
    assert stat.S_IMODE(os.lstat(temp).st_mode) == 0o444  # finished, with the version's mode
    source.fetched.clear()
    result = await put(folder, rec, source, state(folder / "ro.txt"))
    assert source.fetched == []
    assert result.mode == stat.S_IFREG | 0o444


async def test_a_directory_we_may_not_write_in_is_a_local_file_error(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "locked").mkdir()
    acting_as_a_user(monkeypatch, {"locked"})
    rec, source = file_record("locked/f", b"x")
    with pytest.raises(LocalFileError, match="Permission denied") as caught:
        await put(folder, rec, source)
    assert caught.value.errno == errno.EACCES
    assert listing(folder) == ["locked"]


async def test_a_full_disk_is_a_local_file_error(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    rec, source = file_record("f", b"x" * 1000)
    with pytest.raises(LocalFileError, match="No space left") as caught:
        await put(folder, rec, source)
    assert caught.value.errno == errno.ENOSPC


# -- deletions -------------------------------------------------------------------------------


async def test_a_deleted_file_goes_to_versions(folder: Path) -> None:
    scanned = await existing(folder, "a/old.txt", b"keep a copy")
    await apply_deletion(folder, tombstone("a/old.txt"), scanned, clock_ns=at(NOW))
    assert not (folder / "a/old.txt").exists()
    assert (folder / layout.version_name("a/old.txt", NOW)).read_bytes() == b"keep a copy"


async def test_a_deleted_symlink_is_removed_not_its_target(folder: Path, outside: Path) -> None:
    link = record("link", Kind.SYMLINK, symlink_target=str(outside / "secret.txt"))
    created = await apply_symlink(folder, link, None)
    await apply_deletion(folder, tombstone("link", Kind.SYMLINK), created)
    assert not os.path.lexists(folder / "link")
    assert (outside / "secret.txt").read_bytes() == b"keep me"
    assert not (folder / layout.METADATA_DIR).exists()


async def test_deleting_a_changed_file_is_refused(folder: Path) -> None:
    scanned = await existing(folder, "f", b"as scanned")
    (folder / "f").write_bytes(b"edited since")
    with pytest.raises(LocalChangedError):
        await apply_deletion(folder, tombstone("f"), scanned)
    assert (folder / "f").read_bytes() == b"edited since"
    assert not (folder / layout.METADATA_DIR).exists()


async def test_deleting_what_is_already_gone_is_fine(folder: Path) -> None:
    await apply_deletion(folder, tombstone("f"), None)
    scanned = await existing(folder, "f", b"x")
    (folder / "f").unlink()
    await apply_deletion(folder, tombstone("f"), scanned)
    await apply_deletion(folder, tombstone("no/such/parent/f"), None)
    assert listing(folder) == []


# -- conflict copies -------------------------------------------------------------------------


async def test_conflict_copy_moves_the_local_file_aside(folder: Path) -> None:
    scanned = await existing(folder, "docs/plan.odt", b"local edit")
    copy = layout.conflict_name("docs/plan.odt", MTIME, "ABCDEFG")
    moved = await conflict_copy(folder, "docs/plan.odt", copy, scanned)
    assert (folder / copy).read_bytes() == b"local edit"
    assert moved.inode == scanned.inode
    assert moved == state(folder / copy)
    assert not (folder / "docs/plan.odt").exists()
    rec, source = file_record("docs/plan.odt", b"remote edit")
    await put(folder, rec, source, None)
    assert (folder / "docs/plan.odt").read_bytes() == b"remote edit"


async def test_conflict_copy_refuses_a_changed_file_or_a_taken_name(folder: Path) -> None:
    scanned = await existing(folder, "f.txt", b"local")
    copy = layout.conflict_name("f.txt", MTIME, "ABCDEFG")
    (folder / copy).write_bytes(b"an earlier conflict copy")
    with pytest.raises(ConflictCopyExistsError):
        await conflict_copy(folder, "f.txt", copy, scanned)
    (folder / copy).unlink()
    (folder / "f.txt").write_bytes(b"local, edited again")
    with pytest.raises(LocalChangedError):
        await conflict_copy(folder, "f.txt", copy, scanned)
    assert (folder / "f.txt").read_bytes() == b"local, edited again"
    assert not (folder / copy).exists()
    with pytest.raises(LocalChangedError):
        await conflict_copy(folder, "gone/f.txt", "gone/copy.txt", scanned)


# -- resuming --------------------------------------------------------------------------------


async def test_resume_fetches_only_the_missing_chunks(folder: Path) -> None:
    data = random.Random(6).randbytes(12 * MIB)  # fixed: random data may cut into < 4 chunks
    rec, source = file_record("big.bin", data)
    assert len(rec.chunks) >= 4
    # An earlier attempt wrote chunks 0 and 1, garbage where chunk 2 goes, and stopped.
    sizes = [c.size for c in rec.chunks]
    good = sizes[0] + sizes[1]
    temp = folder / layout.temp_name("big.bin", rec.content_digest())
    temp.write_bytes(data[:good] + os.urandom(sizes[2]))
    await put(folder, rec, source)
    assert source.fetched == [c.id for c in rec.chunks[2:]]
    assert (folder / "big.bin").read_bytes() == data
    assert not temp.exists()


async def test_discard_partial(folder: Path) -> None:
    rec, _source = file_record("big.bin", os.urandom(2 * MIB))
    assert not await discard_partial(folder, rec)
    temp = folder / layout.temp_name("big.bin", rec.content_digest())
    temp.write_bytes(b"partial")
    assert await discard_partial(folder, rec)
    assert not temp.exists()


# -- pruning versions ------------------------------------------------------------------------


async def test_prune_versions_removes_old_ones_and_empty_directories(folder: Path) -> None:
    assert await prune_versions(folder, NOW) == 0  # no versions folder yet
    for path, when in [
        ("a/b/old.txt", NOW - 10 * DAY),
        ("a/b/old.txt", NOW - 9 * DAY),
        ("c/recent.txt", NOW - DAY),
        ("top.txt", NOW - 30 * DAY),
    ]:
        scanned = state(folder / path) if (folder / path).exists() else None
        if scanned is None:
            scanned = await existing(folder, path, b"first")
        rec, source = file_record(path, os.urandom(10))
        await put(folder, rec, source, scanned, clock_ns=at(when))
    stray = folder / layout.VERSIONS_DIR / "c" / "no-stamp"
    stray.write_bytes(b"judged by mtime")
    os.utime(stray, ns=(NOW - 20 * DAY, NOW - 20 * DAY))
    versions = folder / layout.VERSIONS_DIR
    assert len([p for p in listing(versions) if (versions / p).is_file()]) == 5

    assert await prune_versions(folder, NOW - 5 * DAY) == 4
    assert listing(versions) == [
        "c",
        os.path.join("c", Path(layout.version_name("c/recent.txt", NOW - DAY)).name),
    ]
    assert await prune_versions(folder, NOW) == 1
    assert listing(versions) == []
    assert versions.is_dir()


async def test_prune_versions_does_not_follow_symlinks(folder: Path, outside: Path) -> None:
    versions = folder / layout.VERSIONS_DIR
    versions.mkdir(parents=True)
    os.symlink(outside, versions / "escape")
    os.utime(versions / "escape", ns=(0, 0), follow_symlinks=False)
    os.utime(outside / "secret.txt", ns=(0, 0))
    os.utime(outside, ns=(0, 0))
    assert await prune_versions(folder, NOW) == 1  # the link itself, not what it points to
    assert (outside / "secret.txt").read_bytes() == b"keep me"
    (folder / layout.VERSIONS_DIR).rmdir()
    os.symlink(outside, folder / layout.VERSIONS_DIR)
    with pytest.raises(UnsafePathError):
        await prune_versions(folder, NOW)
    assert listing(outside) == ["secret.txt"]


# -- crashes and memory, in a child process --------------------------------------------------

CHILD = """
import json, os, sys
from pathlib import Path

import trio

from commonsync.sync.apply import LocalState, apply_file
from commonsync.formats.records import Record

root, record_file, source, key_hex, delay, expected = sys.argv[1:]
record = Record.decode(bytes.fromhex(Path(record_file).read_text()))
if expected == "none":
    expected = None
else:
    expected = LocalState(*json.loads(expected))
offsets, offset = {}, 0
for chunk in record.chunks:
    offsets.setdefault(chunk.id, offset)
    offset += chunk.size
source_fd = os.open(source, os.O_RDONLY)
calls = in_flight = most_in_flight = 0


def peak_rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])


async def read_chunk(entry):
    global calls, in_flight, most_in_flight
    calls += 1
    in_flight += 1
    most_in_flight = max(most_in_flight, in_flight)
    print(f"fetching {calls}", flush=True)
    await trio.sleep(float(delay))
    data = os.pread(source_fd, entry.size, offsets[entry.id])
    in_flight -= 1
    return data


async def main():
    await trio.to_thread.run_sync(peak_rss_kib)  # start a worker thread before measuring
    before = peak_rss_kib()
    await apply_file(
        Path(root), record, expected=expected, read_chunk=read_chunk,
        chunk_id_key=bytes.fromhex(key_hex),
    )
    report = {"before": before, "after": peak_rss_kib(), "calls": calls,
              "most_in_flight": most_in_flight}
    print(json.dumps(report), flush=True)


trio.run(main)
"""


def write_source(path: Path, size: int) -> tuple[Record, str]:
    """A random file of ``size`` bytes written a MiB at a time (never held whole), its file
    record at ``big.bin``, and the SHA-256 of its content."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            out.write(block)
    with path.open("rb") as stream, ChunkHasher(KEY.chunk_id_key) as hasher:
        chunks = tuple(ChunkEntry(ref.id, ref.size) for ref in hasher.hash_stream(stream))
    return record("big.bin", chunks=chunks, size=size), digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def start_child(
    tmp_path: Path, root: Path, rec: Record, source: Path, delay: float, expected: str
) -> subprocess.Popen[bytes]:
    record_file = tmp_path / "record.hex"
    record_file.write_text(rec.encode().hex())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    args = [str(root), str(record_file), str(source), KEY.chunk_id_key.hex(), str(delay), expected]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )


def read_lines_until(stream: int, marker: str, timeout: float) -> list[str]:
    """Lines from the file descriptor ``stream`` up to ``marker`` (or end of file)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while marker not in lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {marker!r} line within {timeout} s; got {lines}")
            if not selector.select(remaining):
                continue
            data = os.read(stream, 65536)
            if not data:
                break
            *complete, pending = (pending + data).split(b"\n")
            lines += [line.decode() for line in complete]
    return lines


@pytest.mark.slow
def test_kill_during_assembly_leaves_the_old_file_and_a_resumable_temp(
    tmp_path: Path, folder: Path
) -> None:
    old = os.urandom(MIB)
    (folder / "big.bin").write_bytes(old)
    scanned = state(folder / "big.bin")
    source = tmp_path / "source"
    rec, source_sha = write_source(source, 32 * MIB)
    expected = json.dumps([scanned.inode, scanned.size, scanned.mtime_ns, scanned.mode])
    child = start_child(tmp_path, folder, rec, source, 0.05, expected)
    try:
        assert child.stdout is not None
        lines = read_lines_until(child.stdout.fileno(), "fetching 16", timeout=60)
        child.send_signal(signal.SIGKILL)
        returncode = child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        _, stderr = child.communicate(timeout=10)
    assert lines[-1] == "fetching 16", stderr
    assert returncode == -signal.SIGKILL, stderr

    # The target is the old file, untouched; nothing went to versions.
    assert (folder / "big.bin").read_bytes() == old
    assert state(folder / "big.bin") == scanned
    assert not (folder / layout.METADATA_DIR).exists()
    temp = folder / layout.temp_name("big.bin", rec.content_digest())
    assert temp.exists()

    # Which chunks the killed attempt left in the temporary file? A fetch starts when an
    # earlier one is written and leaves the window, so at least 16 - FETCH_WINDOW are.
    present = []
    with temp.open("rb") as partial:
        for entry in rec.chunks:
            data = partial.read(entry.size)
            present.append(chunk_id(KEY.chunk_id_key, data) == entry.id)
    assert sum(present) >= 16 - apply.FETCH_WINDOW

    fetched: list[bytes] = []

    async def resume() -> None:
        with source.open("rb") as stream:

            async def read_chunk(entry: ChunkEntry) -> bytes:
                fetched.append(entry.id)
                offset = sum(c.size for c in rec.chunks[: rec.chunks.index(entry)])
                return os.pread(stream.fileno(), entry.size, offset)

            await apply_file(
                folder,
                rec,
                expected=scanned,
                read_chunk=read_chunk,
                chunk_id_key=KEY.chunk_id_key,
                clock_ns=at(NOW),
            )

    anyio.run(resume, backend="trio")
    assert fetched == [c.id for c, there in zip(rec.chunks, present, strict=True) if not there]
    assert sha256_of(folder / "big.bin") == source_sha
    assert (folder / layout.version_name("big.bin", NOW)).read_bytes() == old
    assert not temp.exists()


@pytest.mark.slow
def test_assembling_96_mib_holds_one_window_of_chunks(tmp_path: Path, folder: Path) -> None:
    source = tmp_path / "source"
    rec, source_sha = write_source(source, 96 * MIB)
    # A little latency per fetch, as from a peer, so that the window fills.
    child = start_child(tmp_path, folder, rec, source, 0.005, "none")
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr.decode()
    report = json.loads(stdout.decode().splitlines()[-1])
    assert report["calls"] == len(rec.chunks) > 16
    assert report["most_in_flight"] == apply.FETCH_WINDOW
    growth_mib = (report["after"] - report["before"]) / 1024
    # At most FETCH_WINDOW chunks of 4 MiB at once; a whole-file buffer would be 96 MiB.
    assert growth_mib < apply.FETCH_WINDOW * 4 + 8, report
    assert sha256_of(folder / "big.bin") == source_sha
