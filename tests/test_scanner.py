"""The folder scanner, on real files in a temporary folder and a real SQLite index.

Files are aged (their mtimes set minutes into the past) where a test relies on a rescan not
reading them: a file modified within the racy window is always hashed again, on purpose.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from commonsync.errors import FolderMissingError, IgnoreFileError, MassDeletionError, StoreError
from commonsync.formats.chunking import ChunkHasher
from commonsync.formats.identity import DeviceIdentity
from commonsync.formats.keys import FolderKey
from commonsync.formats.records import ChunkEntry, Kind, Record, sign_record, verify_record
from commonsync.formats.versionvector import Ordering, VersionVector
from commonsync.sync import apply, layout, modes, scanner
from commonsync.sync.ignore import IGNORE_FILE, IgnoreRules
from commonsync.sync.marker import check_folder, init_folder
from commonsync.sync.scanner import (
    ScanProgress,
    ScanReport,
    SkipReason,
    scan,
)
from commonsync.sync.store import IndexEntry, IndexStore, LocalFile, open_store

pytestmark = pytest.mark.anyio

ME = DeviceIdentity.generate()
PEER = DeviceIdentity.generate()
KEY = FolderKey.generate()
FOLDER = KEY.folder_id
#: Ten minutes ago: well outside the racy window.
PAST_NS = (time.time_ns() // 10**9 - 600) * 10**9


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@dataclass
class Env:
    root: Path
    store: IndexStore

    async def scan(self, **kw: Any) -> ScanReport:
        return await scan(self.root, self.store, KEY, ME, **kw)

    async def index(self) -> dict[str, IndexEntry]:
        found: dict[str, IndexEntry] = {}
        async for batch in self.store.entries(FOLDER, batch=7):
            for entry in batch:
                found[entry.record.path] = entry
        return found

    async def get(self, path: str) -> IndexEntry:
        entry = await self.store.get(FOLDER, path)
        assert entry is not None, f"{path} is not indexed"
        return entry

    async def sequence(self) -> int:
        return (await self.store.folder(FOLDER)).sequence


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    root = tmp_path / "folder"
    init_folder(root)
    async with open_store(tmp_path / "index.db") as store:
        await store.add_folder(FOLDER, "Test")
        yield Env(root, store)


def age(root: Path, mtime_ns: int = PAST_NS) -> None:
    """Set every mtime under ``root`` (links themselves, not their targets) to the past."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def write(path: Path, data: bytes | str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        path.chmod(mode)
    return path


def chunks_of(data: bytes) -> tuple[ChunkEntry, ...]:
    with ChunkHasher(KEY.chunk_id_key) as hasher:
        return tuple(ChunkEntry(c.id, c.size) for c in hasher.hash_stream(io.BytesIO(data)))


def my_records(index: dict[str, IndexEntry]) -> list[Record]:
    return [e.record for e in index.values() if e.record.author == ME.public_key]


# -- the first scan ---------------------------------------------------------------------------

BIG = os.urandom(3 * 1024 * 1024 + 12345)


def make_tree(root: Path, outside: Path) -> None:
    write(root / "readme.txt", "hello\n")
    write(root / "docs" / "a" / "b" / "deep.md", "# deep\n")
    write(root / "docs" / "big.bin", BIG)
    (root / "empty" / "nested-empty").mkdir(parents=True)
    write(root / "run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    write(root / "zero", b"")
    write(root / "café" / "naïve résumé.txt", "unicode\n")
    write(root / "日本語.txt", "nihongo\n")
    write(root / "emoji 🎵.txt", "la\n")
    os.symlink("readme.txt", root / "link-inside")
    os.symlink(outside, root / "link-outside")
    os.symlink("does/not/exist", root / "docs" / "dangling")


async def test_first_scan_records_every_kind(env: Env, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside-secret.txt", "never read by the scanner\n")
    make_tree(env.root, outside)
    clock = 1_800_000_000 * 10**9
    report = await env.scan(clock_ns=lambda: clock)
    index = await env.index()

    expected = {
        "readme.txt",
        "docs",
        "docs/a",
        "docs/a/b",
        "docs/a/b/deep.md",
        "docs/big.bin",
        "docs/dangling",
        "empty",
        "empty/nested-empty",
        "run.sh",
        "zero",
        "café",
        "café/naïve résumé.txt",
        "日本語.txt",
        "emoji 🎵.txt",
        "link-inside",
        "link-outside",
    }
    assert set(index) == expected
    assert (report.added, report.changed, report.deleted) == (len(expected), 0, 0)
    assert report.skipped == []
    assert report.files_seen == len(expected)
    assert (
        report.bytes_hashed
        == sum(p.lstat().st_size for p in env.root.rglob("*") if p.is_file() and not p.is_symlink())
        - (env.root / layout.FOLDER_MARKER).stat().st_size
    )

    def record(path: str) -> Record:
        return index[path].record

    assert record("readme.txt").kind is Kind.FILE
    assert record("readme.txt").chunks == chunks_of(b"hello\n")
    assert record("readme.txt").size == 6
    assert record("docs/big.bin").chunks == chunks_of(BIG)
    assert len(record("docs/big.bin").chunks) > 1
    assert record("docs/big.bin").size == len(BIG)
    assert record("zero").chunks == ()
    assert record("zero").size == 0
    assert record("run.sh").mode == 0o755
    assert record("readme.txt").mode == stat.S_IMODE((env.root / "readme.txt").stat().st_mode)
    assert record("empty/nested-empty").kind is Kind.DIRECTORY
    assert record("docs").kind is Kind.DIRECTORY
    assert record("link-inside").kind is Kind.SYMLINK
    assert record("link-inside").symlink_target == "readme.txt"
    # A link out of the folder is recorded as a link; what it points to is never read.
    assert record("link-outside").kind is Kind.SYMLINK
    assert record("link-outside").symlink_target == str(outside)
    assert record("link-outside").chunks == ()
    assert record("docs/dangling").symlink_target == "does/not/exist"
    readme_stat = (env.root / "readme.txt").stat()
    assert record("readme.txt").mtime_ns == readme_stat.st_mtime_ns

    sequences = []
    for entry in index.values():
        rec = entry.record
        assert entry.on_disk
        assert verify_record(FOLDER, entry.signed) == rec
        assert rec.author == ME.public_key
        assert rec.version == VersionVector().bump(ME.device_id.short, 1_800_000_000)
        assert rec.previous == b""
        assert not rec.deleted
        sequences.append(rec.sequence)
    assert sorted(sequences) == list(range(1, len(expected) + 1))
    assert (await env.store.folder(FOLDER)).own_sequence == len(expected)
    # Local states were stored with the records (none for racy, just-written files).
    age(env.root)
    await env.scan()
    assert await env.store.local_file(FOLDER, "readme.txt") == LocalFile.from_stat(
        (env.root / "readme.txt").lstat()
    )
    assert await env.store.local_file(FOLDER, "link-outside") == LocalFile.from_stat(
        (env.root / "link-outside").lstat()
    )


async def test_unchanged_rescan_reads_nothing_and_writes_nothing(env: Env, tmp_path: Path) -> None:
    make_tree(env.root, tmp_path)
    age(env.root)
    first = await env.scan()
    before = await env.index()
    sequence = await env.sequence()
    second = await env.scan()
    assert (second.added, second.changed, second.deleted) == (0, 0, 0)
    assert second.unchanged == first.added
    assert second.bytes_hashed == 0
    assert second.files_hashed == 0
    assert await env.sequence() == sequence
    assert await env.index() == before


async def test_rescan_of_fresh_files_hashes_again_but_records_nothing_new(env: Env) -> None:
    write(env.root / "fresh.txt", "just written")
    await env.scan()
    # Modified within the racy window: no local state, so the next scan reads it again...
    assert await env.store.local_file(FOLDER, "fresh.txt") is None
    sequence = await env.sequence()
    again = await env.scan()
    assert again.bytes_hashed == len("just written")
    # ...and finds the same content: no new version.
    assert again.unchanged == 1
    assert await env.sequence() == sequence


async def test_paths_that_sort_around_the_separator(env: Env) -> None:
    # "a-b" < "a.txt" < "a/..." < "a0" < "a~" in code point order: the walk must merge with
    # the index in exactly that order, or a rescan would see deletions and additions.
    names = ["a/x", "a/y/z", "a-b", "a.txt", "a0", "a~", "ab/c", "b", "A", "a b/c", "é/x", "e"]
    for name in names:
        write(env.root / name, name)
    (env.root / "a-dir").mkdir()
    age(env.root)
    first = await env.scan()
    assert first.added == len(await env.index())
    again = await env.scan()
    assert (again.added, again.changed, again.deleted) == (0, 0, 0)
    assert again.unchanged == first.added
    (env.root / "a" / "y" / "z").unlink()
    age(env.root)
    last = await env.scan()
    assert (last.added, last.changed, last.deleted) == (0, 0, 1)
    assert (await env.get("a/y/z")).record.deleted


async def test_small_batches_give_the_same_index(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanner, "BATCH", 3)
    monkeypatch.setattr(scanner, "WALK_STEP", 2)
    monkeypatch.setattr(scanner, "INDEX_STEP", 4)
    for i in range(40):
        write(env.root / f"d{i % 3}" / f"f{i:02}", f"file {i}")
    age(env.root)
    report = await env.scan()
    assert report.added == 43
    index = await env.index()
    assert len(index) == 43
    for i in range(0, 40, 2):
        (env.root / f"d{i % 3}" / f"f{i:02}").unlink()
    age(env.root)
    report = await env.scan()
    assert (report.added, report.changed, report.deleted, report.unchanged) == (0, 0, 20, 23)
    sequences = [r.sequence for r in my_records(await env.index())]
    assert len(set(sequences)) == len(sequences)


# -- changes ----------------------------------------------------------------------------------


async def test_touch_only_makes_no_new_version(env: Env) -> None:
    path = write(env.root / "notes.txt", "same content")
    age(env.root)
    await env.scan()
    old = await env.get("notes.txt")
    later = PAST_NS + 60 * 10**9
    os.utime(path, ns=(later, later))
    report = await env.scan()
    assert report.bytes_hashed == len("same content")
    assert (report.added, report.changed, report.unchanged) == (0, 0, 1)
    assert await env.get("notes.txt") == old
    # The new mtime is remembered: the next scan does not read the file again.
    assert await env.store.local_file(FOLDER, "notes.txt") == LocalFile.from_stat(path.lstat())
    assert (await env.scan()).bytes_hashed == 0


async def test_edit_makes_a_version_that_dominates_and_names_its_predecessor(env: Env) -> None:
    path = write(env.root / "doc.txt", "version one")
    age(env.root)
    await env.scan(clock_ns=lambda: 1_800_000_000 * 10**9)
    old = (await env.get("doc.txt")).record
    path.write_text("version two, longer")
    age(env.root)
    # A clock behind the counter: the counter still grows (max(old + 1, now)).
    report = await env.scan(clock_ns=lambda: 1_700_000_000 * 10**9)
    assert (report.added, report.changed, report.deleted) == (0, 1, 0)
    new = await env.get("doc.txt")
    assert verify_record(FOLDER, new.signed) == new.record
    assert new.record.version.compare(old.version) is Ordering.AFTER
    assert new.record.version.counter(ME.device_id.short) == 1_800_000_001
    assert new.record.previous == old.content_digest()
    assert new.record.sequence > old.sequence
    assert new.record.chunks == chunks_of(b"version two, longer")
    assert new.record.size == len("version two, longer")
    assert new.on_disk


async def test_mode_change_alone_is_a_new_version(env: Env) -> None:
    path = write(env.root / "tool", "#!/bin/sh\n", mode=0o644)
    age(env.root)
    await env.scan()
    old = (await env.get("tool")).record
    path.chmod(0o755)
    report = await env.scan()
    assert report.changed == 1
    new = (await env.get("tool")).record
    assert new.mode == 0o755
    assert new.chunks == old.chunks
    assert new.previous == old.content_digest()


async def test_delete_makes_tombstones(env: Env) -> None:
    write(env.root / "gone.txt", "bye")
    write(env.root / "dir" / "inner" / "file", "x")
    write(env.root / "stays.txt", "stays")
    os.symlink("gone.txt", env.root / "gone-link")
    age(env.root)
    await env.scan()
    before = await env.index()
    (env.root / "gone.txt").unlink()
    (env.root / "gone-link").unlink()
    (env.root / "dir" / "inner" / "file").unlink()
    (env.root / "dir" / "inner").rmdir()
    (env.root / "dir").rmdir()
    report = await env.scan(clock_ns=lambda: 1_900_000_000 * 10**9)
    assert report.deleted == 5
    after = await env.index()
    for path in ("gone.txt", "gone-link", "dir", "dir/inner", "dir/inner/file"):
        old, new = before[path].record, after[path].record
        assert new.deleted
        assert new.kind is old.kind
        assert (new.size, new.chunks, new.symlink_target) == (0, (), "")
        assert new.version.compare(old.version) is Ordering.AFTER
        assert new.previous == old.content_digest()
        assert new.mtime_ns == 1_900_000_000 * 10**9
        assert new.sequence > max(r.sequence for r in my_records(before))
        assert verify_record(FOLDER, after[path].signed) == new
        assert await env.store.local_file(FOLDER, path) is None
    assert after["stays.txt"] == before["stays.txt"]
    assert await env.store.chunk_sources(FOLDER, before["gone.txt"].record.chunks[0].id) == []
    # A tombstone is not deleted again.
    sequence = await env.sequence()
    assert (await env.scan()).deleted == 0
    assert await env.sequence() == sequence


async def test_mass_deletion_is_held_back_until_confirmed(env: Env) -> None:
    for n in range(20):
        write(env.root / f"f{n:02}.txt", f"file {n}")
    age(env.root)
    await env.scan(max_deleted_share=0.5)
    for n in range(15):
        (env.root / f"f{n:02}.txt").unlink()
    write(env.root / "new.txt", "added meanwhile")
    sequence = await env.sequence()
    with pytest.raises(MassDeletionError, match="15 of 20 files vanished") as caught:
        await env.scan(max_deleted_share=0.5)
    assert (caught.value.vanished, caught.value.indexed) == (15, 20)
    # The addition was published, no deletion was.
    assert await env.sequence() == sequence + 1
    index = await env.index()
    assert not index["new.txt"].record.deleted
    assert not any(index[f"f{n:02}.txt"].record.deleted for n in range(20))
    # Below the share, or confirmed (no limit), deletions go through.
    report = await env.scan()
    assert report.deleted == 15


async def test_small_deletions_pass_the_guard(env: Env) -> None:
    for n in range(scanner.MASS_DELETION_MINIMUM - 1):
        write(env.root / f"f{n}.txt", "x")
    age(env.root)
    await env.scan(max_deleted_share=0.1)
    for n in range(scanner.MASS_DELETION_MINIMUM - 1):
        (env.root / f"f{n}.txt").unlink()
    report = await env.scan(max_deleted_share=0.1)
    assert report.deleted == scanner.MASS_DELETION_MINIMUM - 1


async def test_recreated_after_delete(env: Env) -> None:
    path = write(env.root / "phoenix", "first life")
    age(env.root)
    await env.scan()
    path.unlink()
    await env.scan()
    tombstone = (await env.get("phoenix")).record
    write(path, "second life")
    report = await env.scan()
    assert report.added == 1
    new = (await env.get("phoenix")).record
    assert not new.deleted
    assert new.version.compare(tombstone.version) is Ordering.AFTER
    assert new.previous == b""  # it replaced a deletion, not content


async def test_rename_is_a_tombstone_and_a_new_record_with_the_same_chunks(env: Env) -> None:
    data = os.urandom(2 * 1024 * 1024)
    write(env.root / "old name.bin", data)
    age(env.root)
    await env.scan()
    old = (await env.get("old name.bin")).record
    (env.root / "old name.bin").rename(env.root / "new name.bin")
    report = await env.scan()
    assert (report.added, report.deleted) == (1, 1)
    assert (await env.get("old name.bin")).record.deleted
    new = (await env.get("new name.bin")).record
    assert [c.id for c in new.chunks] == [c.id for c in old.chunks]
    assert new.previous == b""
    sources = await env.store.chunk_sources(FOLDER, old.chunks[0].id)
    assert [s.path for s in sources] == ["new name.bin"]


async def test_kind_changes(env: Env) -> None:
    write(env.root / "thing", "a file")
    write(env.root / "other" / "inside", "x")
    age(env.root)
    await env.scan()
    old_thing = (await env.get("thing")).record
    (env.root / "thing").unlink()
    (env.root / "thing").mkdir()
    (env.root / "other" / "inside").unlink()
    (env.root / "other").rmdir()
    os.symlink("thing", env.root / "other")
    report = await env.scan()
    thing = (await env.get("thing")).record
    assert thing.kind is Kind.DIRECTORY
    assert thing.version.compare(old_thing.version) is Ordering.AFTER
    assert (await env.get("other")).record.kind is Kind.SYMLINK
    assert (await env.get("other/inside")).record.deleted
    assert (report.changed, report.deleted) == (2, 1)


async def test_symlink_retarget_is_a_new_version(env: Env) -> None:
    os.symlink("a", env.root / "link")
    age(env.root)
    await env.scan()
    (env.root / "link").unlink()
    os.symlink("b", env.root / "link")
    report = await env.scan()
    assert report.changed == 1
    assert (await env.get("link")).record.symlink_target == "b"


async def test_own_sequences_strictly_increase_across_scans(env: Env, tmp_path: Path) -> None:
    seen: list[int] = []

    async def scan_and_collect() -> None:
        before = await env.sequence()
        await env.scan()
        for entry in await env.store.records_since(FOLDER, before, limit=10_000):
            seen.append(entry.record.sequence)

    write(env.root / "a", "1")
    write(env.root / "b", "1")
    await scan_and_collect()
    write(env.root / "a", "22")
    (env.root / "b").unlink()
    write(env.root / "c", "new")
    await scan_and_collect()
    write(env.root / "b", "back")
    write(env.root / "c", "changed again")
    await scan_and_collect()
    assert len(seen) == 7
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    # And across a reopening of the database.
    db = env.store.path
    async with open_store(db) as reopened:
        env2 = Env(env.root, reopened)
        write(env.root / "d", "after reopen")
        await env2.scan()
        entry = await reopened.get(FOLDER, "d")
        assert entry is not None
        assert entry.record.sequence > max(seen)


# -- what is never recorded -------------------------------------------------------------------


async def test_ignored_and_internal_paths_are_never_recorded(env: Env) -> None:
    write(env.root / IGNORE_FILE, "*.log\nbuild/\n!important.log\n")
    write(env.root / "app.log", "noise")
    write(env.root / "sub" / "debug.log", "noise")
    write(env.root / "important.log", "keep me")
    write(env.root / "build" / "out.o", "binary")
    write(env.root / "build" / "deeper" / "x.o", "binary")
    write(env.root / "src" / "main.c", "int main;")
    write(env.root / "src" / layout.temp_name("main.c"), "partial")
    write(env.root / layout.temp_name("top.txt", bytes(32)), "partial")
    write(env.root / layout.VERSIONS_DIR / "old~20260101-000000.txt", "kept")
    report = await env.scan()
    assert set(await env.index()) == {IGNORE_FILE, "important.log", "sub", "src", "src/main.c"}
    assert report.ignored == 3  # app.log, sub/debug.log, build/ (not looked into)
    assert report.skipped == []


async def test_explicit_rules_override_the_ignore_file(env: Env) -> None:
    write(env.root / IGNORE_FILE, "*.txt\n")
    write(env.root / "a.txt", "a")
    write(env.root / "b.md", "b")
    await env.scan(ignore=IgnoreRules(["*.md"]))
    assert set(await env.index()) == {IGNORE_FILE, "a.txt"}


async def test_malformed_ignore_file_stops_the_scan(env: Env) -> None:
    write(env.root / IGNORE_FILE, "ok\n!\n")
    write(env.root / "a.txt", "a")
    with pytest.raises(IgnoreFileError, match="line 2"):
        await env.scan()
    assert await env.index() == {}


async def test_newly_ignored_paths_are_left_as_they_are(env: Env) -> None:
    write(env.root / "cache" / "blob", "data")
    write(env.root / "trace.log", "data")
    age(env.root)
    await env.scan()
    before = await env.index()
    write(env.root / IGNORE_FILE, "cache/\n*.log\n")
    (env.root / "trace.log").unlink()
    (env.root / "cache" / "blob").write_text("changed")
    report = await env.scan()
    assert report.deleted == 0
    after = await env.index()
    for path in ("cache", "cache/blob", "trace.log"):
        assert after[path] == before[path]


async def test_fifo_and_socket_are_skipped_and_reported(env: Env, tmp_path: Path) -> None:
    os.mkfifo(env.root / "pipe")
    write(env.root / "normal.txt", "x")
    with anyio.fail_after(10):  # opening the FIFO would block forever
        report = await env.scan()
    assert set(await env.index()) == {"normal.txt"}
    assert [(s.path, s.reason) for s in report.skipped] == [("pipe", SkipReason.UNSUPPORTED_TYPE)]
    assert "FIFO" in report.skipped[0].detail


async def test_file_replaced_by_a_fifo_is_not_taken_for_deleted(env: Env) -> None:
    write(env.root / "was-a-file", "x")
    age(env.root)
    await env.scan()
    before = await env.get("was-a-file")
    (env.root / "was-a-file").unlink()
    os.mkfifo(env.root / "was-a-file")
    report = await env.scan()
    assert report.deleted == 0
    assert await env.get("was-a-file") == before


async def test_names_that_are_not_utf8_are_skipped_not_mangled(env: Env) -> None:
    raw = os.path.join(os.fsencode(env.root), b"caf\xe9.txt")
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    write(env.root / "fine.txt", "x")
    report = await env.scan()
    assert set(await env.index()) == {"fine.txt"}
    (skipped,) = report.skipped
    assert skipped.reason is SkipReason.INVALID_NAME
    assert os.fsencode(skipped.path) == b"caf\xe9.txt"
    assert skipped.display() == "caf\\xe9.txt"
    assert "caf\\xe9.txt" in str(skipped)


async def test_names_not_in_nfc_are_renamed_to_nfc_where_the_file_system_tells_them_apart(
    env: Env,
) -> None:
    """macOS and some tools write names decomposed (NFD); records carry NFC names, so the
    entry is renamed to the NFC form (it looks the same) and synced, directories too."""
    nfd = unicodedata.normalize("NFD", "résumé.txt")
    write(env.root / nfd, "decomposed")
    if (env.root / "résumé.txt").exists():
        pytest.skip("this file system does not tell NFC and NFD names apart")
    nfd_dir = unicodedata.normalize("NFD", "café")
    write(env.root / nfd_dir / "menu.txt", "inside")
    write(env.root / "ok.txt", "x")
    report = await env.scan()
    assert set(await env.index()) == {"ok.txt", "résumé.txt", "café", "café/menu.txt"}
    assert report.skipped == []
    assert report.normalized == 2
    assert sorted(os.listdir(env.root)) == sorted([".commonsync", "café", "ok.txt", "résumé.txt"])
    assert (env.root / "résumé.txt").read_text() == "decomposed"
    assert (await env.get("résumé.txt")).record.chunks == chunks_of(b"decomposed")


async def test_a_name_whose_nfc_form_is_taken_is_reported_and_left_alone(env: Env) -> None:
    nfd = unicodedata.normalize("NFD", "résumé.txt")
    write(env.root / nfd, "decomposed")
    if (env.root / "résumé.txt").exists():
        pytest.skip("this file system does not tell NFC and NFD names apart")
    write(env.root / "résumé.txt", "composed")
    report = await env.scan()
    assert (await env.get("résumé.txt")).record.chunks == chunks_of(b"composed")
    (skipped,) = report.skipped
    assert skipped.path == nfd
    assert skipped.reason is SkipReason.INVALID_NAME
    assert "another entry" in skipped.detail
    assert (env.root / nfd).read_text() == "decomposed"  # nothing replaced or renamed


async def test_symlinked_directory_is_a_link_never_entered(env: Env, tmp_path: Path) -> None:
    write(tmp_path / "elsewhere" / "private.txt", "not in the folder")
    os.symlink(tmp_path / "elsewhere", env.root / "linkdir")
    os.symlink(".", env.root / "loop")
    report = await env.scan()
    index = await env.index()
    assert set(index) == {"linkdir", "loop"}
    assert index["linkdir"].record.kind is Kind.SYMLINK
    assert index["loop"].record.symlink_target == "."
    assert report.bytes_hashed == 0


async def test_file_with_too_many_chunks_is_reported(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanner, "MAX_CHUNKS", 2)
    write(env.root / "huge.bin", os.urandom(6 * 1024 * 1024))
    write(env.root / "small.txt", "fits")
    report = await env.scan()
    assert set(await env.index()) == {"small.txt"}
    assert [(s.path, s.reason) for s in report.skipped] == [("huge.bin", SkipReason.TOO_LARGE)]


async def test_symlink_target_not_utf8_is_skipped(env: Env) -> None:
    os.symlink(b"target\xff", os.path.join(os.fsencode(env.root), b"badlink"))
    report = await env.scan()
    assert await env.index() == {}
    assert [(s.path, s.reason) for s in report.skipped] == [("badlink", SkipReason.INVALID_NAME)]


async def test_unreadable_directory_keeps_its_indexed_entries(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(env.root / "private" / "a.txt", "a")
    write(env.root / "private" / "b" / "c.txt", "c")
    write(env.root / "public.txt", "p")
    age(env.root)
    await env.scan()
    before = await env.index()
    private = os.stat(env.root / "private")
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        # The same refusal chmod 000 gives an ordinary user (the tests may run as root). The
        # scanner lists directories by descriptor: recognise this one by its inode.
        if isinstance(path, int) and os.path.samestat(os.fstat(path), private):
            raise PermissionError(13, "Permission denied", "private")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = await env.scan()
    assert report.deleted == 0
    assert await env.index() == before
    assert [(s.path, s.reason) for s in report.skipped] == [("private", SkipReason.UNREADABLE)]


async def test_unreadable_file_is_reported_and_kept(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(env.root / "secret", "s")
    age(env.root)
    await env.scan()
    before = await env.get("secret")
    path.chmod(0)
    if os.geteuid() == 0:
        # Root opens it anyway: give the refusal an ordinary user gets from chmod 000.
        real_open = os.open

        def refusing_open(file: Any, flags: int, *args: Any, **kw: Any) -> int:
            # The scanner opens it by name in its directory's descriptor.
            if os.fspath(file) == os.fspath(path) or (file == path.name and "dir_fd" in kw):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_open(file, flags, *args, **kw)

        monkeypatch.setattr(os, "open", refusing_open)
    report = await env.scan()
    assert [(s.path, s.reason) for s in report.skipped] == [("secret", SkipReason.UNREADABLE)]
    assert await env.get("secret") == before


# -- the folder marker ------------------------------------------------------------------------


async def test_missing_marker_refuses_to_scan(tmp_path: Path) -> None:
    root = tmp_path / "unmounted"
    root.mkdir()
    write(root / "a.txt", "a")
    async with open_store(tmp_path / "index.db") as store:
        await store.add_folder(FOLDER, "Test")
        with pytest.raises(FolderMissingError, match="mounted"):
            await scan(root, store, KEY, ME)
        with pytest.raises(FolderMissingError):
            await scan(tmp_path / "does-not-exist", store, KEY, ME)
        assert await store.count(FOLDER) == 0


async def test_vanished_folder_does_not_read_as_everything_deleted(env: Env) -> None:
    write(env.root / "a.txt", "a")
    write(env.root / "b" / "c.txt", "c")
    await env.scan()
    before = await env.index()
    # The disk is unmounted: the mount point is an empty directory.
    shutil.rmtree(env.root)
    env.root.mkdir()
    with pytest.raises(FolderMissingError):
        await env.scan()
    assert await env.index() == before


async def test_marker_gone_during_the_scan_stops_before_any_deletion(env: Env) -> None:
    write(env.root / "gone.txt", "bye")
    write(env.root / "z-last.txt", "z")
    age(env.root)
    await env.scan()
    before = await env.index()
    (env.root / "gone.txt").unlink()

    def unmount(progress: ScanProgress) -> None:
        marker = env.root / layout.FOLDER_MARKER
        if marker.exists():
            marker.unlink()

    with pytest.raises(FolderMissingError):
        await env.scan(progress=unmount)
    assert await env.index() == before


def test_init_folder_is_idempotent_and_atomic(tmp_path: Path) -> None:
    root = tmp_path / "new" / "folder"
    with pytest.raises(FolderMissingError):
        check_folder(root)
    init_folder(root)
    marker = root / layout.FOLDER_MARKER
    content = marker.read_bytes()
    assert b"commonsync" in content
    check_folder(root)
    init_folder(root)
    assert marker.read_bytes() == content
    assert sorted(p.name for p in (root / layout.METADATA_DIR).iterdir()) == ["folder"]
    marker.unlink()
    marker.mkdir()
    with pytest.raises(FolderMissingError, match="not a regular file"):
        check_folder(root)


async def test_unregistered_folder_is_a_store_error(tmp_path: Path) -> None:
    root = tmp_path / "f"
    init_folder(root)
    async with open_store(tmp_path / "index.db") as store:
        with pytest.raises(StoreError, match="not in the index"):
            await scan(root, store, KEY, ME)


# -- files that move while they are read ------------------------------------------------------


def grow_during_hash(root: Path, name: str) -> Callable[[ScanProgress], None]:
    """A progress callback that appends to ``name`` once its hashing has started."""
    state = {"start": -1, "done": False}

    def progress(p: ScanProgress) -> None:
        if p.current_path != name or state["done"]:
            return
        if state["start"] < 0:
            state["start"] = p.bytes_hashed  # called just before the file is opened
        elif p.bytes_hashed > state["start"]:
            with open(root / name, "ab") as f:  # a chunk of it was hashed: it grows now
                f.write(b"appended while hashing")
            state["done"] = True

    return progress


async def test_file_growing_during_the_hash_is_reported_not_recorded(env: Env) -> None:
    data = os.urandom(4 * 1024 * 1024)
    write(env.root / "grow.bin", data)
    write(env.root / "calm.txt", "calm")
    report = await env.scan(progress=grow_during_hash(env.root, "grow.bin"))
    assert report.changing == ["grow.bin"]
    assert report.skipped[0].reason is SkipReason.CHANGING
    assert set(await env.index()) == {"calm.txt"}
    # The next scan sees a settled file and records all of it.
    again = await env.scan()
    assert again.added == 1
    record = (await env.get("grow.bin")).record
    assert record.size == len(data) + len(b"appended while hashing")
    assert record.chunks == chunks_of(data + b"appended while hashing")


async def test_edit_in_progress_does_not_replace_the_indexed_version(env: Env) -> None:
    write(env.root / "grow.bin", os.urandom(3 * 1024 * 1024))
    age(env.root)
    await env.scan()
    before = await env.get("grow.bin")
    os.utime(env.root / "grow.bin")  # looks modified: the scan reads it
    report = await env.scan(progress=grow_during_hash(env.root, "grow.bin"))
    assert report.changing == ["grow.bin"]
    assert report.changed == 0
    assert await env.get("grow.bin") == before
    assert await env.store.local_file(FOLDER, "grow.bin") is not None  # still the old one


async def test_cancelled_scan_stops_mid_file(env: Env) -> None:
    size = 64 * 1024 * 1024
    with open(env.root / "huge.bin", "wb") as f:
        for _ in range(size // (1024 * 1024)):
            f.write(os.urandom(1024 * 1024))
    seen: list[int] = []
    with anyio.CancelScope() as scope:

        def progress(p: ScanProgress) -> None:
            seen.append(p.bytes_hashed)
            if p.bytes_hashed > 0:
                scope.cancel()

        await env.scan(progress=progress)
    assert scope.cancelled_caught
    assert max(seen) < size // 2
    assert await env.index() == {}
    # The store and a new scan still work.
    assert (await env.scan()).added == 1


# -- remote versions and concurrent writers ---------------------------------------------------


def remote_entry(path: str, data: bytes | None, *, on_disk: bool) -> IndexEntry:
    """A version authored by PEER, as the engine would store it after taking it."""
    chunks = () if data is None else chunks_of(data)
    record = Record(
        path=path,
        kind=Kind.FILE,
        size=sum(c.size for c in chunks),
        mtime_ns=PAST_NS,
        mode=0o644,
        deleted=data is None,
        version=VersionVector.from_mapping({PEER.device_id.short: 1_800_000_000}),
        chunks=chunks,
        symlink_target="",
        author=PEER.public_key,
        sequence=1,
    )
    return IndexEntry(record, sign_record(PEER, FOLDER, record), on_disk)


async def test_remote_versions_not_yet_on_disk_are_left_alone(env: Env) -> None:
    write(env.root / "local.txt", "mine")
    write(env.root / "edited.txt", "old content")
    write(env.root / "arrived.txt", "old content")
    age(env.root)
    await env.scan()
    edited_local = await env.store.local_file(FOLDER, "edited.txt")
    pending = [
        remote_entry("not-here-yet.txt", b"remote", on_disk=False),
        remote_entry("remote-delete.txt", None, on_disk=False),
        remote_entry("edited.txt", b"remote edit", on_disk=False),
        remote_entry("arrived.txt", b"remote content", on_disk=False),
    ]
    await env.store.put(FOLDER, pending)
    # The local state of the file about to be replaced stays, for the applier's check.
    assert await env.store.local_file(FOLDER, "edited.txt") == edited_local
    # Someone copies the remote content into place before the applier gets to it.
    write(env.root / "arrived.txt", "remote content")

    report = await env.scan()
    assert (report.added, report.changed, report.deleted) == (0, 0, 0)
    assert report.pending == 2  # not-here-yet.txt (absent) and edited.txt (unchanged)
    assert report.skipped == []
    for entry in pending[:3]:
        got = await env.get(entry.record.path)
        assert (got.record, got.signed, got.on_disk) == (entry.record, entry.signed, False)
    # arrived.txt already holds the remote version: on disk now, with the peer's record as it
    # was, and no new version.
    arrived = await env.get("arrived.txt")
    assert arrived.on_disk
    assert arrived.record == pending[3].record

    # A local edit under a pending remote version is reported, not published: the applier
    # will find the file changed and keep both versions.
    write(env.root / "edited.txt", "my concurrent edit")
    report = await env.scan()
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("edited.txt", SkipReason.PENDING_REMOTE)
    ]
    assert (await env.get("edited.txt")).record == pending[2].record


async def test_skip_leaves_paths_alone(env: Env) -> None:
    write(env.root / "busy.txt", "v1")
    write(env.root / "free.txt", "v1")
    age(env.root)
    await env.scan()
    before = await env.index()
    write(env.root / "busy.txt", "v2")
    write(env.root / "free.txt", "v2")
    report = await env.scan(skip={"busy.txt"})
    assert report.changed == 1
    assert (await env.get("busy.txt")) == before["busy.txt"]
    (env.root / "busy.txt").unlink()
    report = await env.scan(skip={"busy.txt"})
    assert report.deleted == 0


async def test_a_version_stored_during_the_scan_is_never_overwritten(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(env.root / "contested.txt", "v1")
    write(env.root / "quiet.txt", "v1")
    age(env.root)
    await env.scan()
    write(env.root / "contested.txt", "local v2")
    write(env.root / "quiet.txt", "local v2")
    remote = remote_entry("contested.txt", b"remote v2", on_disk=False)
    real_get_many = env.store.get_many
    meddled = []

    async def get_many_then_meddle(folder_id: bytes, paths: Any) -> dict[str, IndexEntry]:
        found = await real_get_many(folder_id, paths)
        if not meddled:
            # The engine stores a remote version between the scan's read and its write.
            meddled.append(await env.store.put(FOLDER, [remote]))
        return found

    monkeypatch.setattr(env.store, "get_many", get_many_then_meddle)
    report = await env.scan()
    assert meddled
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("contested.txt", SkipReason.INDEX_CHANGED)
    ]
    assert report.changed == 1
    assert (await env.get("contested.txt")).record == remote.record
    assert (await env.get("quiet.txt")).record.chunks == chunks_of(b"local v2")


async def test_progress_reports_files_and_bytes(env: Env) -> None:
    write(env.root / "a.bin", os.urandom(2 * 1024 * 1024))
    write(env.root / "b.txt", "b")
    seen: list[ScanProgress] = []
    report = await env.scan(progress=seen.append)
    assert seen
    assert seen[-1].files_seen == 2
    assert seen[-1].bytes_hashed == report.bytes_hashed == 2 * 1024 * 1024 + 1
    hashed = [p.bytes_hashed for p in seen]
    assert hashed == sorted(hashed)
    assert any(p.current_path == "a.bin" and p.bytes_hashed > 0 for p in seen)
    assert "2 added" in str(report)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_smoke(env: Env) -> None:
    write(env.root / "x" / "y.bin", os.urandom(1024 * 1024))
    seen: list[ScanProgress] = []
    report = await env.scan(progress=seen.append)
    assert report.added == 2
    assert seen[-1].bytes_hashed == 1024 * 1024
    (env.root / "x" / "y.bin").unlink()
    assert (await env.scan()).deleted == 1


# -- modes a peer chose, as this device's umask wrote them (issue 12, item 10) ---------------


async def _applied_remote(env: Env, path: str, kind: Kind, mode: int) -> Record:
    """A peer's version of ``path`` with ``mode``, applied here and stored as the engine does."""
    data = b"#!/bin/sh\necho shared\n"
    record = replace(
        remote_entry(path, data if kind is Kind.FILE else None, on_disk=True).record,
        kind=kind,
        deleted=False,
        mode=mode,
    )
    if kind is Kind.FILE:

        async def read(chunk: ChunkEntry) -> bytes:
            return data

        state = await apply.apply_file(
            env.root, record, expected=None, read_chunk=read, chunk_id_key=KEY.chunk_id_key
        )
    else:
        state = await apply.apply_directory(env.root, record, None)
    entry = IndexEntry(record, sign_record(PEER, FOLDER, record), on_disk=True)
    await env.store.put(FOLDER, [entry], local_files=[(path, state)])
    return record


async def test_a_remote_mode_the_umask_masked_is_not_published_back(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modes, "UMASK", 0o022)
    script = await _applied_remote(env, "run.sh", Kind.FILE, 0o777)
    shared = await _applied_remote(env, "shared", Kind.DIRECTORY, 0o777)
    assert stat.S_IMODE(os.lstat(env.root / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(env.root / "shared").st_mode) == 0o755
    # The file is touched (hashed again, same content) and the directory gets an entry (its
    # own mtime moves): both are compared with their records, modes included.
    os.utime(env.root / "run.sh", ns=(PAST_NS + 10**9, PAST_NS + 10**9))
    write(env.root / "shared" / "new.txt", "new")
    age(env.root)
    report = await env.scan()
    assert (report.added, report.changed, report.deleted) == (1, 0, 0)
    assert (await env.get("run.sh")).record == script
    assert (await env.get("shared")).record == shared
    assert (await env.scan()).changed == 0


async def test_a_local_chmod_to_the_masked_mode_is_published(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modes, "UMASK", 0o022)
    write(env.root / "tool.sh", "#!/bin/sh\n", mode=0o777)
    age(env.root)
    await env.scan()
    assert (await env.get("tool.sh")).record.mode == 0o777
    (env.root / "tool.sh").chmod(0o755)
    report = await env.scan()
    assert report.changed == 1
    assert (await env.get("tool.sh")).record.mode == 0o755
