"""Reaching entries below a folder's root without ever following a symlink.

A path string is resolved by the kernel at every use, so a directory swapped for a symlink
between a check and a use (by a peer's record the applier legally applies, or by anyone who
can write in the folder) would lead the use outside the folder. Everything here goes through
directory file descriptors instead, opened one component at a time with
``O_NOFOLLOW | O_DIRECTORY``: a component that is a symlink (or not a directory) fails the
open, and what was opened stays the directory it was, whatever happens to its name later.

- :func:`open_root`, :func:`walk` and :func:`enter` are the writer's side
  (:mod:`commonsync.sync.apply`): they create missing parents and turn a symlink in the way into
  :class:`~commonsync.errors.UnsafePathError`.
- :class:`DirectoryChain` is the reader's side (the scanner, the hashing, serving chunks): it
  opens directories and files and raises the plain :class:`OSError`, keeping the descriptors of
  the last directory's ancestors open so that a sorted walk opens each directory once.

The folder root itself is opened as configured (a root that is a symlink is followed: a person
chose it); only what is below it is held to these rules. POSIX only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ..errors import FolderMissingError, UnrepresentableNameError, UnsafePathError

__all__ = [
    "DIR_FLAGS",
    "MAX_HELD",
    "DirectoryChain",
    "enter",
    "lstat_at",
    "naming",
    "open_root",
    "walk",
]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Directory descriptors a :class:`DirectoryChain` keeps open at most (its depth): deeper
#: directories are reached from the deepest one kept, a component at a time, so that a
#: hostile tree thousands of levels deep cannot exhaust the process's descriptors.
MAX_HELD = 64
#: Errors with which a file system refuses a *name* (rather than the operation).
NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL})


# -- the writer's side ------------------------------------------------------------------------


def open_root(root: Path) -> int:
    """A descriptor of the folder root, for :func:`walk`; :class:`FolderMissingError` if it
    is missing or not a directory."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise FolderMissingError(
            f"the folder root {str(root)!r} is missing or not a directory (a disk not "
            "mounted?); nothing was written: mount it or remove the folder"
        ) from exc


def walk(root_fd: int, root: Path, path: str, *, create: bool) -> tuple[int, str] | None:
    """Open the parent directory of ``path`` one component at a time, never following a
    symlink; returns ``(parent_fd, name)``, or ``None`` if a parent is missing and ``create``
    is false. Missing parents are created as real directories (mode from the umask)."""
    parts = path.split("/")
    fd = os.dup(root_fd)
    try:
        for depth, part in enumerate(parts[:-1], start=1):
            child = enter(fd, part, root, "/".join(parts[:depth]), create=create)
            if child is None:
                os.close(fd)
                return None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def enter(fd: int, name: str, root: Path, sofar: str, *, create: bool) -> int | None:
    """Open the directory ``name`` in ``fd`` (creating it if missing and ``create``), never
    through a symlink (:class:`UnsafePathError`); None if missing and not ``create``."""
    for _ in range(3):
        try:
            with naming(sofar):
                return os.open(name, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                return None
            with naming(sofar):
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    continue  # created meanwhile by someone else: open it (and check it)
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            st = lstat_at(fd, name)
            what = "a symlink" if st is not None and stat.S_ISLNK(st.st_mode) else "not a directory"
            raise UnsafePathError(
                f"{sofar!r} in {root} is {what}; commonsync never writes through one. "
                "Make it a real directory to sync what the folder has below it"
            ) from exc
    raise UnsafePathError(f"{sofar!r} in {root} keeps changing while it is being created")


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd``; None if there is nothing by that name."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Turn a file system's refusal of a name into :class:`UnrepresentableNameError`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NAME_ERRNOS:
            raise
        raise UnrepresentableNameError(
            f"the local file system cannot hold the name {path!r} ({exc.strerror}); it is not "
            "synced here. Rename it on a device that can hold the new name",
            path,
        ) from exc


# -- the reader's side ------------------------------------------------------------------------


class DirectoryChain:
    """Opens directories and files below one root, never through a symlink, remembering the
    chain of directories it opened last.

    Paths are root-relative, ``/``-separated, in the names' on-disk form (``""`` is the root).
    :meth:`directory` returns a *borrowed* descriptor, valid until the next call; :meth:`open`
    a new one the caller closes. Asking for ``a/b/c`` after ``a/b/x`` reuses ``a`` and
    ``a/b``: a sorted walk opens each directory once. A descriptor kept is the directory as it
    was when opened: if its name is later swapped for a symlink, the chain still reads the real
    directory (or nothing, once it is removed), never the link's target.

    Errors are the plain :class:`OSError` of the component that failed: ``ENOTDIR`` for a
    component that is a symlink or not a directory, ``ELOOP`` for a last component that is a
    symlink in :meth:`open`. Thread-safe (one call at a time); close it when done.
    """

    def __init__(self, root_fd: int) -> None:
        """Take ownership of ``root_fd``, a descriptor of the root directory."""
        self._lock = threading.Lock()
        self._names: list[str] = []
        self._fds: list[int] = [root_fd]
        #: A directory deeper than :data:`MAX_HELD`: its components and descriptor.
        self._deep: tuple[tuple[str, ...], int] | None = None

    @classmethod
    def at(cls, root: Path | str) -> DirectoryChain:
        """A chain below the directory ``root`` (followed if it is a symlink: the root is
        configured, not synced). Raises :class:`OSError`."""
        return cls(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    def directory(self, path: str) -> int:
        """A borrowed descriptor of the directory ``path``."""
        with self._lock:
            return self._directory(_split(path))

    def open(self, path: str, flags: int) -> int:
        """Open ``path`` (not the root) with ``flags`` and ``O_NOFOLLOW``; the caller closes
        the descriptor returned."""
        parent, _, name = path.rpartition("/")
        with self._lock:
            fd = self._directory(_split(parent))
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)

    def lstat(self, path: str) -> os.stat_result:
        """``lstat`` of ``path`` (not the root), through its parent's descriptor."""
        parent, _, name = path.rpartition("/")
        with self._lock:
            fd = self._directory(_split(parent))
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def readlink(self, path: str) -> str:
        parent, _, name = path.rpartition("/")
        with self._lock:
            return os.readlink(name, dir_fd=self._directory(_split(parent)))

    def close(self) -> None:
        with self._lock:
            self._drop_deep()
            for fd in self._fds:
                os.close(fd)
            self._fds, self._names = [], []

    def __enter__(self) -> DirectoryChain:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _directory(self, parts: tuple[str, ...]) -> int:
        if not self._fds:
            raise ValueError("the directory chain is closed")
        if self._deep is not None and self._deep[0] == parts:
            return self._deep[1]
        self._drop_deep()
        kept = 0
        while kept < min(len(parts), len(self._names)) and self._names[kept] == parts[kept]:
            kept += 1
        while len(self._names) > kept:
            self._names.pop()
            os.close(self._fds.pop())
        while len(self._names) < min(len(parts), MAX_HELD):
            name = parts[len(self._names)]
            self._fds.append(os.open(name, DIR_FLAGS, dir_fd=self._fds[-1]))
            self._names.append(name)
        if len(parts) <= MAX_HELD:
            return self._fds[-1]
        fd = os.dup(self._fds[-1])
        try:
            for name in parts[MAX_HELD:]:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._deep = (parts, fd)
        return fd

    def _drop_deep(self) -> None:
        if self._deep is not None:
            os.close(self._deep[1])
            self._deep = None


def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("/")) if path else ()
