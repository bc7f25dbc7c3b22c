"""The applier's footing: the path an operation works on, reached and checked.

Every operation of :mod:`commonsync.sync.apply` (and the versions folder's,
:mod:`commonsync.sync.versions`) works on a :class:`Target`: the open parent directory of one
folder-relative path, reached from the root one component at a time without following a
symlink (:mod:`commonsync.sync.beneath`), so that nothing a later swap does can redirect the
work. Before anything there is replaced, :func:`check` compares what is there with what the
scanner last saw (a :data:`LocalState`) and raises :class:`LocalChangedError` if it differs.
Operating-system errors of that work come out as :class:`LocalFileError` (or
:class:`InsufficientSpaceError`) through :func:`reported`.

Separate from :mod:`commonsync.sync.apply` because both the applier and the versions folder
stand on it: what is applied and what is kept share one way of reaching a path and one test of
"unchanged since the scan".
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from ..errors import InsufficientSpaceError, LocalChangedError, LocalFileError
from ..formats.records import Kind
from .beneath import lstat_at as _lstat
from .beneath import naming as _naming
from .beneath import open_root as _open_root
from .beneath import walk as _walk
from .store import LocalFile

__all__ = [
    "NO_HARD_LINKS",
    "LocalState",
    "Target",
    "changed",
    "check",
    "locate",
    "open_existing",
    "open_target",
    "reported",
    "run",
    "same",
]

_T = TypeVar("_T")

#: Errors with which a file system says it has no hard links (FAT, some network and FUSE
#: file systems), or Linux's protected_hardlinks refuses one.
NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}
)


#: What the scanner saw at a path (``LocalFile.from_stat(os.lstat(...))``): the one type the
#: scanner produces, the index keeps and the applier checks and returns. A file or symlink is
#: unchanged when every field is equal (``mode`` is the whole ``st_mode``, type included); a
#: directory when its type and inode are (its size and mtime follow its entries, which are
#: checked one by one).
LocalState = LocalFile


# -- reaching a path without following symlinks ---------------------------------------------


@dataclass(frozen=True)
class Target:
    """An open parent directory holding a target, reached without following any symlink."""

    root: Path
    root_fd: int
    path: str
    fd: int
    name: str

    async def run(self, work: Callable[[], _T]) -> _T:
        """Run one bounded piece of file work on a worker thread."""
        return await run(self.root, self.path, work)

    def close(self) -> None:
        # Closing a directory descriptor does no I/O, so it need not go to a thread.
        os.close(self.fd)
        os.close(self.root_fd)


async def run(root: Path, path: str, work: Callable[[], _T]) -> _T:
    """Run ``work`` on a worker thread; an operating system error becomes
    :class:`LocalFileError` (only the applier's own I/O: the caller's chunk reader is not
    run through here, so its errors keep their type)."""
    with reported(root, path):
        return await anyio.to_thread.run_sync(work)


def locate(root: Path, path: str, *, create: bool) -> Target | None:
    root_fd = _open_root(root)
    try:
        found = _walk(root_fd, root, path, create=create)
    except BaseException:
        os.close(root_fd)
        raise
    if found is None:
        os.close(root_fd)
        return None
    return Target(root, root_fd, path, *found)


async def open_target(root: Path, path: str) -> Target:
    """The target ``path`` below ``root``, its missing parents created."""
    target = await run(root, path, partial(locate, root, path, create=True))
    assert target is not None  # with create=True every parent exists or an error was raised
    return target


async def open_existing(root: Path, path: str) -> Target | None:
    """The target ``path`` below ``root``, or ``None`` if one of its parents is missing."""
    return await run(root, path, partial(locate, root, path, create=False))


@contextlib.contextmanager
def reported(root: Path, path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "?")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientSpaceError(
                f"cannot apply {path!r} in {root}: {exc.strerror or exc} ({code}); the "
                "version waits until space is freed",
                needed=0,
                free=0,
            ) from exc
        raise LocalFileError(
            f"cannot apply {path!r} in {root}: {exc.strerror or exc} ({code}); the version "
            "will be tried again",
            exc.errno,
        ) from exc


# -- unchanged since the scan? ---------------------------------------------------------------


def same(expected: LocalState | None, st: os.stat_result | None) -> bool:
    if expected is None or st is None:
        return expected is None and st is None
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(expected.mode) or st.st_ino != expected.inode:
        return False
    if stat.S_ISDIR(st.st_mode):
        return True
    return (st.st_size, st.st_mtime_ns, st.st_mode) == (
        expected.size,
        expected.mtime_ns,
        expected.mode,
    )


def changed(path: str, expected: LocalState | None, st: os.stat_result | None) -> LocalChangedError:
    was = (
        "nothing"
        if expected is None
        else _describe(_kind(expected.mode), expected.size, expected.mtime_ns)
    )
    now = "nothing" if st is None else _describe(_kind(st.st_mode), st.st_size, st.st_mtime_ns)
    if was == now:
        now = f"{now}, but not the same one"
    return LocalChangedError(
        f"{path!r} changed on disk since it was scanned (scanned: {was}; now: {now}); "
        "nothing was replaced: rescan it and decide again",
        path,
    )


def check(target: Target, expected: LocalState | None) -> os.stat_result | None:
    with _naming(target.path):
        st = _lstat(target.fd, target.name)
    if not same(expected, st):
        raise changed(target.path, expected, st)
    return st


def _describe(kind: Kind | None, size: int, mtime_ns: int) -> str:
    if kind is Kind.FILE:
        when = datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC).isoformat(timespec="seconds")
        return f"a file of {size} bytes modified {when}"
    if kind is Kind.DIRECTORY:
        return "a directory"
    if kind is Kind.SYMLINK:
        return "a symlink"
    return "a FIFO, socket or device"


def _kind(mode: int) -> Kind | None:
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIRECTORY
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    return None
