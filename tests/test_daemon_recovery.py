"""A daemon under faults it must outlive: writes while it starts, a full disk under its index
or its folder, a damaged index, a folder whose disk goes away and comes back. Real
``commonsyncd`` processes on loopback, driven with the real ``commonsync`` command; each wait
is bounded so that a hang fails fast."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from commonsync import DeviceIdentity
from commonsync.errors import IndexFullError
from commonsync.sync import scanner
from commonsync.sync.store import open_store
from tests.conftest import make_entry, make_record
from tests.daemons import LOOPBACK, Device, pair_and_share, tree, wait_for
from tests.tmpfs import mounted_or_skip


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, to fill up (skipped where this process may not mount one)."""
    with mounted_or_skip(tmp_path / "disk", "16m") as place:
        yield place


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the file that does it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            assert _write_until_refused(fd, b"\0" * size) == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _write_until_refused(fd: int, block: bytes) -> int | None:
    while True:
        try:
            os.write(fd, block)
        except OSError as exc:
            return exc.errno


def json_lines(log: Path) -> list[dict[str, object]]:
    """Every line the daemon wrote on stderr, each of which must be one JSON object."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def _synced(a: Device, b: Device, label: str = "shared") -> None:
    pair_and_share(a, b, label)
    wait_for(lambda: tree(a.folder) == tree(b.folder), "the first sync")


# -- 13.3: writes while the daemon starts -------------------------------------------------------


@pytest.mark.slow
def test_files_written_while_the_daemon_starts_all_reach_the_peer(
    two: tuple[Device, Device],
) -> None:
    """A burst of writes as soon as the control socket answers, ended before the folder's
    first scan (long: new content to hash) is done: whatever that scan missed, the watcher
    must see, so the burst arrives long before the hourly rescan."""
    a, b = two
    _synced(a, b)
    assert b.stop() == 0
    for n in range(4):  # new content: the first scan after the start hashes it for a while
        (b.folder / f"big-{n}.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    time.sleep(2.5)  # older than the scanner's racy window: that scan schedules no other
    b.start()
    # Once the scan has walked the root (its hashing takes a while longer).
    wait_for(lambda: b.folder_state("shared")["state"] == "scanning", "the first scan")
    time.sleep(0.2)
    written = {}
    for n in range(50):
        name = f"burst/file-{n:02}.txt" if n % 2 else f"burst-{n:02}.txt"
        (b.folder / name).parent.mkdir(exist_ok=True)
        (b.folder / name).write_text(f"written while the daemon starts: {n}\n")
        written[name] = (b.folder / name).read_bytes()
    assert b.folder_state("shared")["state"] != "up to date"  # not before its first scan

    def arrived() -> bool:
        return all(
            (a.folder / name).is_file() and (a.folder / name).read_bytes() == data
            for name, data in written.items()
        )

    wait_for(arrived, "every file written during the start to reach alice", timeout=40)
    wait_for(lambda: tree(a.folder) == tree(b.folder), "the whole folder", timeout=30)


# -- 13.13: a folder whose disk goes away ------------------------------------------------------


def _state(device: Device, label: str = "shared") -> str:
    return str(device.folder_state(label)["state"])


@pytest.mark.slow
def test_a_folder_whose_disk_was_away_at_start_recovers_without_a_restart(
    two: tuple[Device, Device],
) -> None:
    a, b = two
    a.folder.mkdir()
    (a.folder / "notes.txt").write_text("before\n")
    _synced(a, b)
    assert b.stop() == 0
    away = b.folder.with_name("bob-files-away")
    b.folder.rename(away)
    b.folder.mkdir()  # the empty mount point of a disk that is not mounted
    b.start()
    wait_for(lambda: _state(b) == "error", "the folder to be in error")
    status = b.run("status", check=False)
    assert status.returncode == 1
    assert "marker" in status.stdout, status.stdout
    assert "by itself" in status.stdout, status.stdout
    # A rescan that cannot run says so: exit code 1, no "scanned".
    rescan = b.run("folder", "rescan", "shared", check=False)
    assert rescan.returncode == 1, (rescan.stdout, rescan.stderr)
    assert "was not scanned" in rescan.stderr
    assert "marker" in rescan.stderr
    assert "scanned" not in rescan.stdout
    assert list(b.folder.iterdir()) == []  # nothing was written into the empty mount point

    # The disk comes back: the folder runs again by itself, and syncs both ways.
    b.folder.rmdir()
    away.rename(b.folder)
    wait_for(lambda: _state(b) == "up to date", "the folder to run again", timeout=20)
    (a.folder / "from-alice.txt").write_text("after the disk came back\n")
    (b.folder / "from-bob.txt").write_text("me too\n")
    wait_for(lambda: tree(a.folder) == tree(b.folder), "both changes to cross")
    assert (a.folder / "notes.txt").read_text() == "before\n"


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["moved", "parent-moved", "unmounted"])
def test_a_folder_that_goes_away_while_running_is_an_error_at_once_and_recovers(
    two: tuple[Device, Device], tmp_path: Path, how: str
) -> None:
    """Moved away, its parent moved away (the watcher, inside, sees nothing of that), or its
    disk unmounted (a bind mount taken away): an error within seconds, not at the next hourly
    scan, and no deletion anywhere; back in place, a rescan brings it back at once."""
    a, b = two
    disk = tmp_path / "bob-disk"
    outer = tmp_path / "outer"
    if how == "parent-moved":
        b.folder = outer / "bob-files"
        outer.mkdir()
    if how == "unmounted":
        disk.mkdir()
        b.folder.mkdir()
        bound = _mount("--bind", str(disk), str(b.folder))
        if bound.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        a.folder.mkdir()
        for n in range(3):
            (a.folder / f"file-{n}.txt").write_text(f"{n}\n")
        _synced(a, b)
        time.sleep(4)  # past the rescan that follows a scan of just-written files
        away = b.folder.with_name("bob-files-away")
        if how == "moved":
            b.folder.rename(away)
        elif how == "parent-moved":
            outer.rename(outer.with_name("outer-away"))
        else:
            subprocess.run(["umount", str(b.folder)], check=True, timeout=30)
            assert list(b.folder.iterdir()) == []  # the empty mount point
        wait_for(lambda: _state(b) == "error", "the folder to be in error", timeout=10)
        assert "marker" in b.folder_state("shared")["summary"]
        assert b.run("status", check=False).returncode == 1
        time.sleep(1)
        names = sorted(p.name for p in a.folder.glob("file-*"))
        assert names == [f"file-{n}.txt" for n in range(3)]

        if how == "moved":
            away.rename(b.folder)
        elif how == "parent-moved":
            outer.with_name("outer-away").rename(outer)
        else:
            assert _mount("--bind", str(disk), str(b.folder)).returncode == 0
        rescan = b.run("folder", "rescan", "shared")
        assert "unchanged" in rescan.stdout, rescan.stdout
        assert _state(b) in ("up to date", "syncing")
        (b.folder / "file-0.txt").write_text("edited after it came back\n")
        wait_for(
            lambda: (a.folder / "file-0.txt").read_text() == "edited after it came back\n",
            "the edit to reach alice",
        )
    finally:
        if how == "unmounted":
            for device in two:
                device.kill()
            subprocess.run(["umount", "-l", str(b.folder)], timeout=30, check=False)


# -- 13.5 / 13.6: a full disk --------------------------------------------------------------------


def _on_small_disk(
    tmp_path: Path, disk: Path, *, index: bool = True, folder: bool = False
) -> tuple[Device, Device]:
    """alice on the ordinary disk; bob's home (its index) and its folder on ``disk`` as
    asked; bob's log beside the test, so that it survives a full disk."""
    a, b = Device(tmp_path, "alice"), Device(tmp_path, "bob")
    if index:
        b.home = disk / "home-bob"
    if folder:
        b.folder = disk / "bob-files"
    for device in (a, b):
        device.init(*LOOPBACK)
        device.start()
    return a, b


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_a_full_index_disk_is_its_own_error_and_the_store_says_when_it_passes(
    small_disk: Path,
) -> None:
    identity = DeviceIdentity.generate()
    folder = os.urandom(32)
    with anyio.fail_after(60):
        async with open_store(small_disk / "state.db") as store:
            await store.add_folder(folder, "Test")
            await store.check_writable()
            filler = fill(small_disk)
            entries = [
                make_entry(identity, folder, make_record(identity, f"f{n:05}.txt"))
                for n in range(2000)
            ]
            with pytest.raises(IndexFullError, match="its disk is full; free some space"):
                await store.put(folder, entries)
            assert isinstance(store.full, IndexFullError)
            with pytest.raises(IndexFullError):
                await store.check_writable()
            assert await store.folder(folder)  # reading still works
            filler.unlink()
            await store.check_writable()
            assert store.full is None
            await store.put(folder, entries)  # the same write, now it fits


@pytest.mark.slow
def test_a_full_disk_under_the_index_is_a_state_that_passes_by_itself(
    tmp_path: Path, small_disk: Path
) -> None:
    a, b = _on_small_disk(tmp_path, small_disk, index=True)
    try:
        a.folder.mkdir()
        (a.folder / "first.txt").write_text("first\n")
        _synced(a, b)
        assert b.process is not None
        pid = b.process.pid
        filler = fill(small_disk)
        for n in range(2000):  # records enough to need new pages in bob's index
            (a.folder / f"while-full-{n:04}.txt").write_text(
                f"written while bob's disk is full {n}\n"
            )

        def says_full() -> bool:
            return "cannot be written" in b.folder_state("shared")["summary"]

        wait_for(says_full, "bob's status to say that its index cannot be written")
        status = b.run("status", check=False)
        assert status.returncode == 1
        assert "is full" in status.stdout, status.stdout
        assert "resumes by itself" in status.stdout, status.stdout
        assert b.process.poll() is None

        filler.unlink()
        wait_for(lambda: tree(a.folder) == tree(b.folder), "bob to catch up", timeout=60)
        wait_for(lambda: _state(b) == "up to date", "bob's folder to be up to date", timeout=30)
        assert b.process.poll() is None
        assert b.process.pid == pid
        (b.folder / "from-bob.txt").write_text("and back\n")
        wait_for(lambda: (a.folder / "from-bob.txt").exists(), "bob's file to reach alice")
        assert b.stop() == 0
        assert any("cannot be written" in str(line["message"]) for line in json_lines(b.log))
    finally:
        for device in (a, b):
            device.kill()


@pytest.mark.slow
@pytest.mark.parametrize("index", [False, True], ids=["folder-only", "folder-and-index"])
def test_a_full_disk_under_the_folder_waits_says_so_and_resumes_by_itself(
    tmp_path: Path, small_disk: Path, index: bool
) -> None:
    a, b = _on_small_disk(tmp_path, small_disk, index=index, folder=True)
    try:
        a.folder.mkdir()
        (a.folder / "first.txt").write_text("first\n")
        _synced(a, b)
        assert b.process is not None
        pid = b.process.pid
        filler = fill(small_disk)
        (a.folder / "large.bin").write_bytes(os.urandom(10 * 1024 * 1024))

        def says_no_space() -> bool:
            folder = b.folder_state("shared")
            return folder["state"] == "error" and "space" in folder["summary"]

        wait_for(says_no_space, "bob's status to say that there is no space")
        status = b.run("status", check=False)
        assert status.returncode == 1, status.stdout
        assert "by itself" in status.stdout, status.stdout
        time.sleep(3)  # a while of waiting for space...
        received = b.folder_state("shared")["bytes_received"]
        time.sleep(3)
        assert b.folder_state("shared")["bytes_received"] == received  # ...with no downloading
        assert b.process.poll() is None

        filler.unlink()
        wait_for(lambda: tree(a.folder) == tree(b.folder), "bob to catch up", timeout=60)
        wait_for(lambda: _state(b) == "up to date", "bob's folder to be up to date", timeout=30)
        assert b.process.poll() is None
        assert b.process.pid == pid
        # The large file travelled about once, not once per retry.
        assert b.folder_state("shared")["bytes_received"] < 3 * 10 * 1024 * 1024
        assert b.stop() == 0
        json_lines(b.log)
    finally:
        for device in (a, b):
            device.kill()


# -- 13.14: the mass-deletion guard's minimum ------------------------------------------------------


@pytest.mark.slow
def test_the_deletion_guard_holds_back_what_the_readme_says(two: tuple[Device, Device]) -> None:
    """README: more than half of a folder's files, and at least MASS_DELETION_MINIMUM of
    them, gone at once are held; fewer go through (and stay in the versions folders)."""
    minimum = scanner.MASS_DELETION_MINIMUM
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"at least {minimum} of them" in readme
    a, b = two
    a.folder.mkdir()
    for n in range(minimum):
        (a.folder / f"small-{n:02}.txt").write_text(f"{n}\n")
    _synced(a, b)
    # minimum - 1 of minimum files (far more than half): below the minimum, sent at once.
    for n in range(minimum - 1):
        (a.folder / f"small-{n:02}.txt").unlink()
    wait_for(lambda: len(list(b.folder.glob("small-*"))) == 1, "the small deletion to reach bob")
    assert len(list((b.folder / ".commonsync" / "versions").glob("small-*"))) == minimum - 1
    assert _state(a) == "up to date"

    # minimum of minimum + 2 files: held until confirmed.
    for n in range(minimum + 1):
        (a.folder / f"large-{n:02}.txt").write_text(f"{n}\n")
    wait_for(lambda: len(list(b.folder.glob("large-*"))) == minimum + 1, "the new files")
    for n in range(minimum):
        (a.folder / f"large-{n:02}.txt").unlink()
    wait_for(lambda: _state(a) == "needs confirmation", "the guard")
    assert f"{minimum} of {minimum + 2} files vanished" in a.folder_state("shared")["summary"]
    time.sleep(1)
    assert len(list(b.folder.glob("large-*"))) == minimum + 1


# -- 13.10: a damaged index ----------------------------------------------------------------------


def _damage(db: Path, where: str) -> None:
    data = bytearray(db.read_bytes())
    if where == "header":  # "file is not a database"
        data[0:16] = os.urandom(16)
    else:  # pages past the schema: it opens, but a check (or a later query) finds them bad
        page = 4096
        for start in range(page, len(data) - page, page * 3):
            data[start : start + 8] = b"\xff" * 8  # page headers: b-tree page types, counts
    db.write_bytes(bytes(data))
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            ok = conn.execute("PRAGMA quick_check(1)").fetchall() == [("ok",)]
        except sqlite3.DatabaseError:
            ok = False
    assert not ok, "the damage must be one SQLite can see"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["header", "pages"])
def test_a_damaged_index_is_kept_aside_and_rebuilt_without_downloading(
    two: tuple[Device, Device], where: str
) -> None:
    a, b = two
    a.folder.mkdir()
    for n in range(200):
        (a.folder / f"dir-{n % 7}" / f"file-{n:03}.bin").parent.mkdir(exist_ok=True)
        (a.folder / f"dir-{n % 7}" / f"file-{n:03}.bin").write_bytes(os.urandom(20_000))
    _synced(a, b)
    (b.folder / "from-bob.txt").write_text("bob's own file\n")
    wait_for(lambda: tree(a.folder) == tree(b.folder), "bob's file to reach alice")
    alice_received = a.folder_state("shared")["bytes_received"]
    assert b.stop() == 0
    db = b.home / "state.db"
    _damage(db, where)
    damaged = db.read_bytes()

    b.start()
    wait_for(lambda: _state(b) == "up to date", "bob's folder to run", timeout=60)
    kept = list(b.home.glob("state.db.broken-*"))
    assert [p.name for p in kept if not p.name.endswith(("-wal", "-shm"))] != []
    assert any(p.read_bytes() == damaged for p in kept)  # never discarded
    notice = b.run("status").stdout
    assert "the index was damaged" in notice
    assert "state.db.broken-" in notice
    logged = [line for line in json_lines(b.log) if "the index was damaged" in str(line["message"])]
    assert logged
    assert logged[0]["level"] == "warning"

    # It converges with its peer, and nothing travelled again either way.
    wait_for(lambda: b.connected_to(a), "bob to reconnect")
    wait_for(lambda: tree(a.folder) == tree(b.folder), "the trees to match")
    b.run("status", "--wait", "--timeout", "30")
    assert b.folder_state("shared")["bytes_received"] == 0, b.log.read_text()[-3000:]
    alice_now = a.folder_state("shared")["bytes_received"]
    assert alice_now == alice_received, (alice_now, alice_received, a.log.read_text()[-3000:])
    assert not a.json("conflicts")["folders"][0]["conflicts"]
    assert not b.json("conflicts")["folders"][0]["conflicts"]
    (a.folder / "after.txt").write_text("after the rebuild\n")
    (b.folder / "after-bob.txt").write_text("bob after the rebuild\n")
    wait_for(lambda: tree(a.folder) == tree(b.folder), "new changes both ways")
