"""The versions folder: keeping the files the applier replaces or deletes, and pruning them.

A file that a remote version replaces or deletes is not lost: :func:`keep_version` puts it in
:data:`commonsync.sync.layout.VERSIONS_DIR` under :func:`commonsync.sync.layout.version_name`
(when it was replaced), hard-linked there while its replacement is still to come, or moved, and
compares it once more with what the scanner saw, where it can no longer change under us.
:func:`prune_versions` is the retention: it removes the kept versions older than a given time.

Separate from :mod:`commonsync.sync.apply`, which decides *when* a file is kept (before it is
replaced, on the same directory descriptors, see :mod:`commonsync.sync.target`): this module
owns the versions folder itself, its names, its limits and its cleaning, never following a
symlink inside it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Generator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread

from ..errors import CommonsyncError, VersionsUnavailableError
from . import layout
from .beneath import enter as _enter
from .beneath import lstat_at as _lstat
from .beneath import open_root as _open_root
from .beneath import walk as _walk
from .layout import fit as _fit
from .target import NO_HARD_LINKS as _NO_HARD_LINKS
from .target import LocalState
from .target import Target as _Target
from .target import changed as _changed
from .target import run as _run
from .target import same as _same

__all__ = [
    "DELETED",
    "REPLACED",
    "SET_ASIDE",
    "WHY_FILE",
    "keep_version",
    "prune_versions",
    "read_why",
]

#: Why a version was kept, as :func:`keep_version` notes it in :data:`WHY_FILE` (for
#: ``commonsync versions list``); :mod:`commonsync.sync.history` adds its own reasons.
REPLACED = "replaced by another device's version"
DELETED = "deleted by another device"
SET_ASIDE = (
    "set aside: its author was removed or made a reader before it made it, as this device "
    "learnt later"
)
#: One JSON object per line, ``{"name": <name under the versions folder>, "why": ...}``:
#: beside the versions folder, never synced (it is under the metadata directory), rewritten
#: without the lines of deleted versions when they are pruned.
WHY_FILE = f"{layout.METADATA_DIR}/versions-why"
#: Read at most this much of it (it holds one short line per kept version).
MAX_WHY_BYTES = 16 * 1024 * 1024

_SECOND_NS = 1_000_000_000
#: A path replaced several times within one second gets versions stamped one second apart;
#: beyond this many the versions folder is called full for that second.
_VERSION_SLOTS = 1000
#: Versions examined per worker-thread call while pruning.
_PRUNE_BATCH = 256
_VERSION_STAMP = re.compile(r"~(\d{8}-\d{6})(?:\.[^.]*)?$")


async def prune_versions(root: Path, older_than_ns: int) -> int:
    """Remove the kept versions replaced before ``older_than_ns`` (ns since the epoch);
    returns how many were removed. Directories left empty under the versions folder go too.

    A version's age is the time stamp in its name (when it was replaced, not its mtime, which
    is when it was last edited); an entry whose name has none is judged by its mtime.
    """
    versions_fd = await _run(root, layout.VERSIONS_DIR, partial(_open_directory, root))
    if versions_fd is None:
        return 0
    try:
        return await _prune(root, versions_fd, older_than_ns)
    finally:
        os.close(versions_fd)


# -- keeping a replaced file -----------------------------------------------------------------


def keep_version(
    target: _Target,
    expected: LocalState | None,
    now_ns: int,
    *,
    move: bool,
    why: str = REPLACED,
) -> str:
    """Keep the file at the target in the versions folder: hard-linked there (``move`` false,
    so the target never goes missing before its replacement arrives) or moved there. Returns
    its name under the versions folder; ``why`` is noted in :data:`WHY_FILE` for people.

    The kept entry is compared with ``expected`` once more where nobody else writes; if it is
    not the file the scanner saw, it is put back and :class:`LocalChangedError` raised.
    """
    fitted = _fit(target.name, len(layout.version_name("", now_ns).rpartition("/")[2]))
    parent, _, _ = target.path.rpartition("/")
    source = f"{parent}/{fitted}" if parent else fitted
    found = _walk(target.root_fd, target.root, layout.version_name(source, now_ns), create=True)
    assert found is not None
    versions_fd = found[0]
    try:
        for slot in range(_VERSION_SLOTS):
            kept = layout.version_name(fitted, now_ns + slot * _SECOND_NS).rpartition("/")[2]
            if _lstat(versions_fd, kept) is not None:
                continue
            try:
                if not move:
                    try:
                        os.link(
                            target.name,
                            kept,
                            src_dir_fd=target.fd,
                            dst_dir_fd=versions_fd,
                            follow_symlinks=False,
                        )
                    except FileExistsError:
                        continue
                    except OSError as exc:
                        if exc.errno not in _NO_HARD_LINKS:
                            raise
                        move = True
                if move:
                    os.rename(target.name, kept, src_dir_fd=target.fd, dst_dir_fd=versions_fd)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                raise VersionsUnavailableError(
                    f"{target.path!r} is on another file system than the folder's "
                    f"{layout.VERSIONS_DIR}/, so its old version cannot be kept; nothing was "
                    "replaced. Apply it without versions, or do not mount file systems "
                    "inside a synced folder"
                ) from exc
            break
        else:
            raise VersionsUnavailableError(
                f"{_VERSION_SLOTS} versions of {target.path!r} already exist around this time; "
                f"nothing was replaced: prune {layout.VERSIONS_DIR}/"
            )
        st = _lstat(versions_fd, kept)
        if not _same(expected, st):
            _put_back(target, versions_fd, kept, moved=move)
            raise _changed(target.path, expected, st)
        os.fsync(versions_fd)
    finally:
        os.close(versions_fd)
    name = f"{parent}/{kept}" if parent else kept
    _note_why(target, name, why)
    return name


def _note_why(target: _Target, name: str, why: str) -> None:
    """Append why ``name`` was kept to :data:`WHY_FILE`; best effort: a version kept without
    its reason is still kept (the listing then says nothing of why)."""
    line = json.dumps({"name": name, "why": why}, ensure_ascii=False) + "\n"
    with contextlib.suppress(OSError, CommonsyncError):
        found = _walk(target.root_fd, target.root, WHY_FILE, create=True)
        if found is None:
            return
        parent_fd, leaf = found
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(leaf, flags, 0o600, dir_fd=parent_fd)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        finally:
            os.close(parent_fd)


def read_why(root_fd: int, root: Path) -> dict[str, str]:
    """What :data:`WHY_FILE` says of each kept version, by name (later lines win)."""
    found = _walk(root_fd, root, WHY_FILE, create=False)
    if found is None:
        return {}
    parent_fd, leaf = found
    try:
        try:
            fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError:
            return {}
        try:
            data = os.read(fd, MAX_WHY_BYTES)
        finally:
            os.close(fd)
    finally:
        os.close(parent_fd)
    reasons = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            reasons[item["name"]] = str(item.get("why") or "")
    return reasons


def _put_back(target: _Target, versions_fd: int, kept: str, *, moved: bool) -> None:
    """Undo :func:`keep_version` for an entry that turned out not to be the expected one.

    If the target's name was taken again meanwhile, the moved entry stays in the versions
    folder: kept, never lost.
    """
    if moved:
        try:
            os.link(
                kept, target.name, src_dir_fd=versions_fd, dst_dir_fd=target.fd,
                follow_symlinks=False,
            )  # fmt: skip
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS and _lstat(target.fd, target.name) is None:
                os.rename(kept, target.name, src_dir_fd=versions_fd, dst_dir_fd=target.fd)
            return
    os.unlink(kept, dir_fd=versions_fd)


# -- pruning ---------------------------------------------------------------------------------


def _open_directory(root: Path) -> int | None:
    """The versions folder, opened like any target (never through a symlink), if it exists."""
    root_fd = _open_root(root)
    try:
        found = _walk(root_fd, root, layout.VERSIONS_DIR, create=False)
        if found is None:
            return None
        parent_fd, name = found
        try:
            return _enter(parent_fd, name, root, layout.VERSIONS_DIR, create=False)
        finally:
            os.close(parent_fd)
    finally:
        os.close(root_fd)


def _bottom_up(dir_fd: int) -> Generator[tuple[str, list[str], list[str], int], None, None]:
    """The directories below ``dir_fd``, deepest first, never entering a symlink; a generator
    (fwalk's), so that closing it closes the descriptors it holds."""
    yield from os.fwalk(".", topdown=False, dir_fd=dir_fd)


async def _prune(root: Path, versions_fd: int, older_than_ns: int) -> int:
    walker = _bottom_up(versions_fd)

    def step() -> tuple[list[str], list[str], int] | None:
        for _, dirnames, filenames, dir_fd in walker:
            # fwalk lists a symlink to a directory with the directories (without entering
            # it): it is an entry to prune like a file, never a directory to look into.
            links = [name for name in dirnames if _is_link(dir_fd, name)]
            return [n for n in dirnames if n not in links], filenames + links, dir_fd
        return None

    removed = 0
    try:
        while (found := await _run(root, layout.VERSIONS_DIR, step)) is not None:
            dirnames, filenames, dir_fd = found
            for start in range(0, len(filenames), _PRUNE_BATCH):
                batch = filenames[start : start + _PRUNE_BATCH]
                removed += await _run(
                    root, layout.VERSIONS_DIR, partial(_prune_batch, dir_fd, batch, older_than_ns)
                )
            await _run(root, layout.VERSIONS_DIR, partial(_remove_empty, dir_fd, dirnames))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(walker.close)
    return removed


def _is_link(dir_fd: int, name: str) -> bool:
    st = _lstat(dir_fd, name)
    return st is not None and stat.S_ISLNK(st.st_mode)


def _prune_batch(dir_fd: int, names: list[str], older_than_ns: int) -> int:
    removed = 0
    for name in names:
        when = _replaced_at(name)
        if when is None:
            st = _lstat(dir_fd, name)
            if st is None:
                continue
            when = st.st_mtime_ns
        if when < older_than_ns:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
    return removed


def _replaced_at(name: str) -> int | None:
    """When a version was replaced, from the stamp :func:`layout.version_name` gave it."""
    match = _VERSION_STAMP.search(name)
    if match is None:
        return None
    try:
        moment = datetime.strptime(match[1], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(moment.timestamp()) * _SECOND_NS


def _remove_empty(dir_fd: int, names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError):  # not empty, or not a directory: keep it
            os.rmdir(name, dir_fd=dir_fd)
