"""Files written whole: never half a file, never a stray temporary one, also with writers of
the same file at once (a folder key saved by ``device lost`` while a session hands the same
key over failed with FileNotFoundError when both used one temporary name)."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from commonsync import FolderKey
from commonsync.formats.whole_files import write_whole
from commonsync.node.home import NodeHome


def test_a_file_is_replaced_whole_with_the_permissions_asked(tmp_path: Path) -> None:
    path = tmp_path / "state"
    write_whole(path, b"old")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_whole(path, b"new content", mode=0o644)
    assert path.read_bytes() == b"new content"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["state"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    path = tmp_path / "state"
    write_whole(path, b"old")
    (tmp_path / "in-the-way").mkdir()
    with pytest.raises(IsADirectoryError):
        write_whole(tmp_path / "in-the-way", b"new")
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["in-the-way", "state"]


def test_the_next_write_removes_what_an_interrupted_one_left(tmp_path: Path) -> None:
    """A writer killed between ``mkstemp`` and the rename leaves ``.NAME.XXXXXXXX.tmp``:
    the next write of the same file removes it once it is an hour old (a younger one may
    be a running writer's), and leaves every other file alone."""
    path = tmp_path / "device.key"
    stale = tmp_path / ".device.key.k3j_9zqa.tmp"
    young = tmp_path / ".device.key.a1b2c3d4.tmp"
    others = [tmp_path / ".other.key.k3j_9zqa.tmp", tmp_path / ".device.key.toolong12.tmp"]
    for leftover in (stale, young, *others):
        leftover.write_bytes(b"half a key")
    hour_ago = time.time() - 3700
    for old in (stale, *others):
        os.utime(old, (hour_ago, hour_ago))
    write_whole(path, b"the key")
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (path, young, *others))


def run_at_once(count: int, work: Callable[[], None]) -> list[BaseException]:
    """Run ``work`` in ``count`` threads released together; what they raised."""
    start = threading.Barrier(count)
    failures: list[BaseException] = []

    def one() -> None:
        start.wait()
        try:
            work()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return failures


def test_one_folder_key_saved_by_many_writers_at_once(tmp_path: Path) -> None:
    home = NodeHome(tmp_path / "home")
    key = FolderKey.generate(epoch=3)
    for _ in range(20):
        failures = run_at_once(8, lambda: home.save_folder_key(key, later_epoch=True))
        assert failures == []
        assert home.load_folder_key(key.folder_id, 3) == key
    assert [p.name for p in home.keys_dir.iterdir()] == [
        home.folder_key_file(key.folder_id, 3).name
    ]
