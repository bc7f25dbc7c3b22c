"""A person editing a synced folder, and the ledger of every version people wrote.

An :class:`Editor` works on one device's folder as a user would, on a small set of names:
it writes new files, overwrites them, appends to them, renames and deletes them. Every
content it leaves is a sequence of blobs (``bench.blobs``), so that the audit can tell a
whole version from a torn one. Writes and overwrites are staged outside the folder (on the
same file system), fsynced and renamed into place, as editors do; appends go into the file
in place (``O_APPEND``, one ``write``, then fsync), as logs do. Renames never replace a file
(``renameat2(RENAME_NOREPLACE)``).

The :class:`Ledger` records every version an editor produced (its content's digest), and
which of them its own writer later *retired*: overwrote, appended to or deleted while the file
still held exactly that version on the writer's device. A person replacing their own version
is not a loss. Every other version (one the sync engine replaced, on its writer's device or
anywhere else) must still exist at the end, at some path, in a conflict copy or in a
versions folder: that is what "lost" counts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import math
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .blobs import APPEND, HEAD, digest, make_blob

__all__ = ["NAMES", "Editor", "Ledger", "Version", "rename_noreplace"]

#: The small set of names the editors share (two directories deep at most).
NAMES: tuple[str, ...] = (
    "f0.txt",
    "f1.txt",
    "f2.txt",
    "f3.txt",
    "d/g0.bin",
    "d/g1.bin",
    "d/e/h0.log",
)
#: How often each operation is chosen.
WEIGHTS = {"write": 15, "overwrite": 35, "append": 25, "rename": 12, "delete": 13}


@dataclass
class Version:
    """One content an editor left at ``path`` on ``writer``'s device."""

    digest: str
    writer: str
    path: str
    tag: str
    op: str
    size: int
    at: float
    #: Its writer overwrote, appended to or deleted it itself (no longer owed).
    retired: bool = False
    #: False for an append that landed in a file the sync engine had already moved away
    #: from its path (the write never was at the path, so it is not owed either).
    anchored: bool = True


class Ledger:
    """Every version written in one trial, shared by the trial's editors (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.versions: dict[str, Version] = {}
        self.tags: set[str] = set()
        self.operations: dict[str, int] = {}

    def new_tag(self, writer: str) -> str:
        with self._lock:
            tag = f"{writer}{len(self.tags):05d}"
            self.tags.add(tag)
            return tag

    def record(self, version: Version) -> None:
        with self._lock:
            self.versions[version.digest] = version
            self.operations[version.op] = self.operations.get(version.op, 0) + 1

    def count(self, op: str) -> None:
        with self._lock:
            self.operations[op] = self.operations.get(op, 0) + 1

    def retire(self, content: bytes | None, writer: str) -> None:
        """``writer`` is replacing ``content`` (what it found at the path) on its own device."""
        if content is None:
            return
        with self._lock:
            version = self.versions.get(digest(content))
            if version is not None and version.writer == writer:
                version.retired = True

    def owed(self) -> list[Version]:
        """The versions that must exist somewhere at the end."""
        with self._lock:
            return [v for v in self.versions.values() if not v.retired and v.anchored]


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, failing with FileExistsError if ``target`` exists
    (atomically: the sync engine may create it at any moment)."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is not None:
        done = renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), 1)
        if done == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), str(target))
    os.link(source, target)  # fails if target exists; then the source goes
    os.unlink(source)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


class Editor:
    """One person at one device's folder. ``sizes`` bounds a new blob's payload (a size is
    drawn log-uniformly between them), ``append_sizes`` an appended one's."""

    def __init__(
        self,
        writer: str,
        folder: Path,
        staging: Path,
        ledger: Ledger,
        rng: random.Random,
        *,
        names: Sequence[str] = NAMES,
        sizes: tuple[int, int] = (64, 1536 * 1024),
        append_sizes: tuple[int, int] = (16, 4096),
    ) -> None:
        self.writer = writer
        self.folder = folder
        self.staging = staging
        self.ledger = ledger
        self.rng = rng
        self.names = tuple(names)
        self.sizes = sizes
        self.append_sizes = append_sizes
        self.errors: list[str] = []
        staging.mkdir(parents=True, exist_ok=True)

    # -- one operation -----------------------------------------------------------------------

    def step(self, op: str | None = None) -> str:
        """One random operation (or ``op``); returns what was done, e.g. ``overwrite f1.txt``."""
        existing = [n for n in self.names if (self.folder / n).is_file()]
        missing = [n for n in self.names if n not in existing]
        if op is None:
            op = self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        if op in ("overwrite", "append", "delete", "rename") and not existing:
            op = "write"
        if op in ("write", "rename") and not missing:
            op = "overwrite"
        try:
            if op == "write":
                name = self.rng.choice(missing)
                self._place(name, replace=False)
            elif op == "overwrite":
                name = self.rng.choice(existing)
                self._place(name, replace=True)
            elif op == "append":
                name = self.rng.choice(existing)
                self._append(name)
            elif op == "rename":
                name = self.rng.choice(existing)
                target = self.rng.choice(missing)
                (self.folder / target).parent.mkdir(parents=True, exist_ok=True)
                rename_noreplace(self.folder / name, self.folder / target)
                self.ledger.count("rename")
                name = f"{name} -> {target}"
            else:
                name = self.rng.choice(existing)
                path = self.folder / name
                self.ledger.retire(_read(path), self.writer)
                path.unlink()
                self.ledger.count("delete")
        except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError):
            # The sync engine changed the path meanwhile: the person's edit did not happen.
            self.ledger.count("raced")
            return f"{op} (raced)"
        return f"{op} {name}"

    def _size(self, bounds: tuple[int, int]) -> int:
        low, high = bounds
        return int(math.exp(self.rng.uniform(math.log(low), math.log(high))))

    def _place(self, name: str, *, replace: bool) -> None:
        """Write or overwrite ``name``: staged, fsynced, renamed into place."""
        path = self.folder / name
        tag = self.ledger.new_tag(self.writer)
        content = make_blob(tag, HEAD, self._size(self.sizes), self.rng)
        staged = self.staging / f"{tag}.tmp"
        with staged.open("wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            version = Version(
                digest(content), self.writer, name, tag, "overwrite" if replace else "write",
                len(content), time.time(),
            )  # fmt: skip
            if replace:
                self.ledger.retire(_read(path), self.writer)
                os.rename(staged, path)
            else:
                rename_noreplace(staged, path)
            self.ledger.record(version)
        finally:
            staged.unlink(missing_ok=True)

    def _append(self, name: str) -> None:
        """Append one blob in place, reading the file through the same descriptor so that the
        new version's content is known exactly."""
        path = self.folder / name
        tag = self.ledger.new_tag(self.writer)
        blob = make_blob(tag, APPEND, self._size(self.append_sizes), self.rng)
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            before = b""
            while len(before) < size:
                piece = os.pread(fd, size - len(before), len(before))
                if not piece:
                    break
                before += piece
            os.write(fd, blob)
            os.fsync(fd)
            inode = os.fstat(fd).st_ino
            try:
                anchored = os.stat(path).st_ino == inode
            except FileNotFoundError:
                anchored = False
        finally:
            os.close(fd)
        self.ledger.retire(before, self.writer)
        content = before + blob
        self.ledger.record(
            Version(
                digest(content), self.writer, name, tag, "append", len(content), time.time(),
                anchored=anchored,
            )
        )  # fmt: skip

    # -- a stretch of editing ---------------------------------------------------------------

    def run(self, stop: threading.Event, pause: tuple[float, float]) -> None:
        """Edit until ``stop`` is set, waiting ``pause`` (a uniform range, seconds) between
        operations. An unexpected OSError is kept in ``errors`` and editing goes on."""
        while not stop.is_set():
            try:
                self.step()
            except OSError as exc:
                self.errors.append(f"{self.writer}: {exc}")
            stop.wait(self.rng.uniform(*pause))

    def spawn(self, stop: threading.Event, pause: tuple[float, float]) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop, pause), daemon=True)
        thread.start()
        return thread

    def cleanup(self) -> None:
        with contextlib.suppress(OSError):
            for leftover in self.staging.iterdir():
                leftover.unlink()
