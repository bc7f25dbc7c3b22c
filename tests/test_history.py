"""Versions and conflict copies on disk (:mod:`commonsync.sync.history`): listing, restoring,
resolving and pruning, on a real directory, never through a symlink and never losing a
file."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from commonsync.errors import (
    InvalidRequestError,
    NotFoundError,
    RequestConflictError,
    UnsafePathError,
)
from commonsync.node.history import parse_time
from commonsync.sync import layout
from commonsync.sync.history import (
    Keep,
    both_name,
    conflict_original,
    delete_versions,
    find_conflicts,
    list_versions,
    relative_path,
    resolve_conflict,
    restore_version,
)
from commonsync.sync.retention import RetentionPolicy, plan_pruning
from commonsync.sync.store import LocalFile
from commonsync.sync.target import open_target
from commonsync.sync.versions import DELETED, WHY_FILE, keep_version

T = TypeVar("T")
S = 1_000_000_000
T0 = 1_790_000_000 * S
COPY = "notes/plan.sync-conflict-20260301-120000-ZS5WX2N.txt"


def run(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    return anyio.run(fn, *args)


def keep(root: Path, path: str, content: bytes, when: int, why: str = DELETED) -> str:
    """Write ``content`` at ``path`` and keep it in the versions folder as the applier does
    (checked against what a scan would have seen)."""
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(content)

    async def go() -> str:
        target = await open_target(root, path)
        try:
            seen = LocalFile.from_stat(os.lstat(root / path))
            return keep_version(target, seen, when, move=True, why=why)
        finally:
            target.close()

    return anyio.run(go)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "folder"
    (folder / layout.METADATA_DIR).mkdir(parents=True)
    return folder


def test_listing_gives_path_time_size_and_why(root: Path) -> None:
    keep(root, "notes/plan.txt", b"first", T0)
    keep(root, "notes/plan.txt", b"second!", T0 + 3600 * S, why="replaced by a restore")
    keep(root, ".bashrc", b"x", T0)
    found = run(list_versions, root)
    assert [(v.path, v.time_ns, v.size, v.why) for v in found] == [
        (".bashrc", T0, 1, DELETED),
        ("notes/plan.txt", T0, 5, DELETED),
        ("notes/plan.txt", T0 + 3600 * S, 7, "replaced by a restore"),
    ]


def test_restore_puts_the_version_back_and_keeps_the_current_file(root: Path) -> None:
    keep(root, "notes/plan.txt", b"old", T0)
    (root / "notes/plan.txt").write_bytes(b"current")
    [old] = run(list_versions, root)
    now = T0 + 10 * S
    set_aside = run(restore_version, root, old, now)
    assert (root / "notes/plan.txt").read_bytes() == b"old"
    assert os.stat(root / "notes/plan.txt").st_mtime_ns == now  # a new edit
    [current] = run(list_versions, root)
    assert current.name == set_aside
    assert current.why == "replaced by a restore"
    assert (root / layout.VERSIONS_DIR / set_aside).read_bytes() == b"current"
    with pytest.raises(NotFoundError, match="no longer in the versions folder"):
        run(restore_version, root, old, now)


def test_restore_never_replaces_a_directory(root: Path) -> None:
    keep(root, "a", b"a file", T0)
    (root / "a").mkdir()
    [version] = run(list_versions, root)
    with pytest.raises(RequestConflictError, match="is a directory"):
        run(restore_version, root, version, T0)
    assert run(list_versions, root) == [version]


def test_restore_does_not_follow_a_symlink_out_of_the_folder(root: Path, tmp_path: Path) -> None:
    keep(root, "docs/x.txt", b"kept", T0)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "docs").rmdir()
    (root / "docs").symlink_to(outside)
    [version] = run(list_versions, root)
    with pytest.raises(UnsafePathError):
        run(restore_version, root, version, T0)
    assert list(outside.iterdir()) == []


def test_paths_must_be_inside_the_folder(root: Path) -> None:
    assert relative_path(root, "notes/plan.txt") == "notes/plan.txt"
    assert relative_path(root, str(root / "notes" / "plan.txt")) == "notes/plan.txt"
    assert relative_path(root, "./a.txt") == "a.txt"
    for bad in ["/etc/passwd", "../x", "notes/../../x", ".commonsync/versions/a~x", str(root)]:
        with pytest.raises(InvalidRequestError):
            relative_path(root, bad)
    # From inside the folder, a relative path is from where the person is; from outside,
    # from the folder's root.
    assert relative_path(root, "plan.txt", str(root / "notes")) == "notes/plan.txt"
    assert relative_path(root, "../a.txt", str(root / "notes")) == "a.txt"
    assert relative_path(root, "notes/plan.txt", str(root.parent)) == "notes/plan.txt"
    with pytest.raises(InvalidRequestError, match="outside the folder"):
        relative_path(root, "../x", str(root))


def test_delete_versions_removes_files_empty_directories_and_their_reasons(root: Path) -> None:
    a = keep(root, "deep/er/a.txt", b"a", T0)
    b = keep(root, "b.txt", b"b", T0)
    assert run(delete_versions, root, {a, "missing~20260101-000000"}) == 1
    assert not (root / layout.VERSIONS_DIR / "deep").exists()
    assert [v.name for v in run(list_versions, root)] == [b]
    assert a not in (root / WHY_FILE).read_text()
    assert b in (root / WHY_FILE).read_text()


def test_conflict_names_are_read_back() -> None:
    assert conflict_original(COPY) == ("notes/plan.txt", "ZS5WX2N", 1_772_366_400 * S)
    assert conflict_original("Makefile.sync-conflict-20260301-120000-ZS5WX2N") is not None
    assert conflict_original("notes/plan.txt") is None
    assert both_name(COPY) == "notes/plan (ZS5WX2N 2026-03-01 12-00-00).txt"
    assert not layout.is_conflict_copy(both_name(COPY))


def _conflict(root: Path) -> None:
    (root / "notes").mkdir()
    (root / "notes/plan.txt").write_bytes(b"mine")
    (root / COPY).write_bytes(b"theirs")


def test_conflicts_are_found_but_not_in_the_metadata(root: Path) -> None:
    _conflict(root)
    keep(root, "old.sync-conflict-20260301-120000-ZS5WX2N.txt", b"kept", T0)
    [found] = run(find_conflicts, root)
    assert (found.path, found.original, found.tag, found.size) == (
        COPY, "notes/plan.txt", "ZS5WX2N", 6,
    )  # fmt: skip
    assert found.original_exists


def test_resolve_mine_sets_the_copy_aside(root: Path) -> None:
    _conflict(root)
    done = run(resolve_conflict, root, COPY, Keep.MINE, T0)
    assert (root / "notes/plan.txt").read_bytes() == b"mine"
    assert not (root / COPY).exists()
    assert (root / layout.VERSIONS_DIR / done["versions"]).read_bytes() == b"theirs"
    assert run(find_conflicts, root) == []


def test_resolve_theirs_replaces_the_file_and_keeps_it(root: Path) -> None:
    _conflict(root)
    done = run(resolve_conflict, root, COPY, Keep.THEIRS, T0)
    assert (root / "notes/plan.txt").read_bytes() == b"theirs"
    assert not (root / COPY).exists()
    assert (root / layout.VERSIONS_DIR / done["versions"]).read_bytes() == b"mine"


def test_resolve_both_renames_the_copy_without_replacing_anything(root: Path) -> None:
    _conflict(root)
    first = both_name(COPY)
    (root / first).write_bytes(b"someone's file")
    done = run(resolve_conflict, root, COPY, Keep.BOTH, T0)
    assert done["renamed"] == both_name(COPY, attempt=2)
    assert (root / done["renamed"]).read_bytes() == b"theirs"
    assert (root / first).read_bytes() == b"someone's file"
    assert (root / "notes/plan.txt").read_bytes() == b"mine"


def test_resolving_a_copy_that_is_gone(root: Path) -> None:
    with pytest.raises(NotFoundError, match="not there any more"):
        run(resolve_conflict, root, COPY, Keep.MINE, T0)
    with pytest.raises(InvalidRequestError, match="not a conflict copy"):
        run(resolve_conflict, root, "notes/plan.txt", Keep.MINE, T0)


def test_times_people_type() -> None:
    assert parse_time("20260301-120000") == (1_772_366_400 * S, S)
    assert parse_time("2026-03-01T12:00:00Z") == (1_772_366_400 * S, S)
    assert parse_time("2026-03-01T12:00Z")[1] == 60 * S
    assert parse_time("2026-03-01")[1] == 86400 * S
    assert parse_time(1_772_366_400) == (1_772_366_400 * S, S)
    with pytest.raises(InvalidRequestError, match="not a time"):
        parse_time("yesterday")


def test_pruning_on_disk_with_a_fake_clock(root: Path) -> None:
    """Versions kept at chosen times, pruned as the daemon would at a chosen 'now'."""
    day = 86400 * S
    names = {
        "ancient": keep(root, "a.txt", b"x" * 10, T0 - 400 * day),
        "morning": keep(root, "a.txt", b"x" * 20, T0 - 2 * day - 3600 * S),
        "evening": keep(root, "a.txt", b"x" * 30, T0 - 2 * day),  # the same UTC day
        "newest": keep(root, "a.txt", b"x" * 40, T0 - 60 * S),
        "other": keep(root, "b/c.txt", b"y", T0 - 400 * day),
    }
    found = run(list_versions, root)
    plan = plan_pruning([v.kept for v in found], T0, RetentionPolicy(max_size="none"))
    assert plan == {names["ancient"], names["morning"], names["other"]}
    assert run(delete_versions, root, plan) == 3
    left = run(list_versions, root)
    assert [v.name for v in left] == [names["evening"], names["newest"]]
    assert not (root / layout.VERSIONS_DIR / "b").exists()
    # A day later nothing more goes; a year later only the age limit takes the newest.
    assert plan_pruning([v.kept for v in left], T0 + day, RetentionPolicy()) == set()
    assert plan_pruning([v.kept for v in left], T0 + 366 * day, RetentionPolicy()) == {
        names["evening"],
        names["newest"],
    }


def test_the_reasons_of_versions_no_longer_there_are_forgotten(root: Path) -> None:
    a = keep(root, "a.txt", b"a", T0)
    b = keep(root, "b.txt", b"b", T0)
    [version, _] = run(list_versions, root)
    run(restore_version, root, version, T0 + S)  # a.txt's version leaves the folder
    assert run(delete_versions, root, set()) == 0
    text = (root / WHY_FILE).read_text()
    assert a not in text
    assert b in text
