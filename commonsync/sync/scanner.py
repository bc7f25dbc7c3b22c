"""The folder scanner: turns what changed on disk into signed records in the index.

:func:`scan` walks the folder and compares every entry with the index:

- an entry whose ``lstat`` (inode, size, mtime, mode) equals the local state stored with its
  on-disk record is unchanged and not read;
- any other file is chunked and hashed (streaming, memory bounded); if its content and
  permission bits equal the indexed version's, only the local state is refreshed (a ``touch``
  makes no new version); otherwise a new version is signed and stored, its version vector
  bumped from the one it replaces and ``previous`` set to the replaced content's digest;
- an indexed entry that is on disk in the index but gone from the disk becomes a tombstone.

What the scanner refuses to do, on purpose:

- scan a folder whose marker file (:data:`commonsync.sync.layout.FOLDER_MARKER`, see
  :mod:`commonsync.sync.marker`) is missing: an unmounted disk would read as "everything
  deleted" on every device (Syncthing's ``.stfolder``); the marker is checked again before
  any batch that records deletions;
- follow a symlink (it is recorded as a link, whatever it points to) or read a FIFO, socket or
  device (reported and skipped);
- leave the folder: directories are listed and files opened through directory descriptors
  (:class:`~commonsync.sync.beneath.DirectoryChain`), one component at a time with
  ``O_NOFOLLOW``, never by a path string, so that a directory swapped for a symlink during
  the scan (a peer's record can do that) never makes it list, hash or publish what the link
  points to;
- mangle a name: a name that is not valid UTF-8 is reported and skipped. A name not in
  Unicode NFC, on a file system that tells the two forms apart, is renamed to its NFC form
  (which looks the same), since records carry NFC names and recording it under a name it
  does not have on disk would make devices disagree; if the NFC name is another entry's, it
  is reported and skipped;
- publish a torn version: a file whose size or mtime moves while it is hashed is reported as
  *changing* and left for the next scan;
- overwrite what it has not seen: every write is conditional on the index still holding what
  the scan read (:class:`~commonsync.errors.IndexChangedError`), so a remote version stored
  meanwhile is never silently replaced;
- touch a path whose indexed version is a remote one not yet on disk (``on_disk=False``): that
  path belongs to the applier, which checks the file against its local state before replacing
  it; a local edit there is reported, not published, and the applier turns it into a conflict.

Memory stays bounded whatever the folder size: the walk visits each directory's entries in
sorted order (so the whole walk yields paths in the index's own order) and is merged with the
index read in batches, like a merge join; no set of every path is ever built. Writes go in
batches of :data:`BATCH` changes, each one transaction with its local states, so a crash never
leaves a record without its local state or a huge transaction open.

The walk, ``lstat`` calls and hashing run in worker threads, so the event loop stays
responsive, and a cancelled scan stops within one chunk.

A file modified within :data:`RACY_WINDOW_NS` of being hashed gets no stored local state (the
"racy git" problem): with coarse timestamps, a second write in the same tick would otherwise
look unchanged forever. It is hashed again by the next scan, which costs little.
"""

from __future__ import annotations

import enum
import os
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread

from ..errors import (
    EncodingError,
    FolderError,
    IndexChangedError,
    InvalidPathError,
    MassDeletionError,
    RecordError,
)
from ..formats import paths
from ..formats.chunking import ChunkHasher
from ..formats.identity import DeviceIdentity
from ..formats.keys import FolderKey
from ..formats.records import MAX_CHUNKS, ChunkEntry, Kind, Record, sign_record
from ..formats.versionvector import VersionVector
from . import layout, modes
from .beneath import DirectoryChain
from .ignore import IgnoreRules
from .marker import check_folder
from .store import IndexEntry, IndexStore, LocalFile, PathState

#: Changes written per transaction.
BATCH = 500
#: A batch is also written once its new versions list this many chunks (~40 bytes each in
#: the record, more in memory), so a batch of huge files stays small too.
BATCH_CHUNKS = 200_000
#: The mass-deletion guard ignores fewer vanished entries than this (a small folder emptied
#: by hand is not an accident).
MASS_DELETION_MINIMUM = 10
#: Entries the walker produces per trip to its worker thread.
WALK_STEP = 256
#: Files up to this size are hashed together in one trip to a worker thread, up to this many
#: bytes at a time (still within one chunk of a cancellation).
HASH_TOGETHER_SIZE = 256 * 1024
HASH_TOGETHER_BYTES = 8 * 1024 * 1024
#: Index entries read per transaction while merging.
INDEX_STEP = 1000
#: Skipped paths a report lists; beyond, only ``skipped_count`` grows.
MAX_REPORTED = 1000
#: A file whose mtime is this close to the time it was hashed gets no stored local state.
RACY_WINDOW_NS = 2_000_000_000

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class SkipReason(enum.Enum):
    """Why an entry on disk was not recorded (and, if it was indexed, left as it was)."""

    INVALID_NAME = "invalid name"
    UNSUPPORTED_TYPE = "not a file, directory or symlink"
    UNREADABLE = "unreadable"
    CHANGING = "changing"
    TOO_LARGE = "too large"
    PENDING_REMOTE = "local change to a path with a remote version pending"
    INDEX_CHANGED = "index changed during the scan"
    UNVERSIONABLE = "no new version can be made"


@dataclass(frozen=True, slots=True)
class SkippedPath:
    """An entry the scan did not record. ``path`` is folder-relative as found on disk: a name
    that is not UTF-8 keeps its bytes as surrogate escapes (``os.fsencode`` gives them back);
    :meth:`display` is printable."""

    path: str
    reason: SkipReason
    detail: str = ""

    def display(self) -> str:
        return os.fsencode(self.path).decode("utf-8", "backslashreplace")

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.display()} ({self.reason.value}{detail})"


@dataclass
class ScanReport:
    """What one scan did. ``unchanged`` counts entries whose indexed version still holds
    (including touched files whose content had not changed); ``pending`` counts paths left to
    the applier because their indexed version is a remote one not yet on disk."""

    added: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    pending: int = 0
    ignored: int = 0
    files_seen: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    skipped: list[SkippedPath] = field(default_factory=list)
    #: All skipped entries, also those beyond the :data:`MAX_REPORTED` listed.
    skipped_count: int = 0
    #: Entries recorded without a local state because they were modified within
    #: :data:`RACY_WINDOW_NS` of being read: a scan after the window records it.
    racy: int = 0
    #: Entries renamed from another Unicode normalisation form to NFC (SPEC.md §8.4).
    normalized: int = 0
    #: Temporary files of the applier found, with their ``st_ctime_ns`` (at most
    #: :data:`MAX_REPORTED`): those of no pending version are left over from a crash or a
    #: superseded version, for the folder to remove.
    temp_files: list[tuple[str, int]] = field(default_factory=list)

    def found_temp(self, path: str, st: os.stat_result) -> None:
        if len(self.temp_files) < MAX_REPORTED:
            self.temp_files.append((path, st.st_ctime_ns))

    @property
    def changing(self) -> list[str]:
        """Files that changed while they were hashed: the next scan records them."""
        return [s.path for s in self.skipped if s.reason is SkipReason.CHANGING]

    def skip(self, path: str, reason: SkipReason, detail: str = "") -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_REPORTED:
            self.skipped.append(SkippedPath(path, reason, detail))

    def __str__(self) -> str:
        text = (
            f"{self.added} added, {self.changed} changed, {self.deleted} deleted, "
            f"{self.unchanged} unchanged, {self.bytes_hashed} bytes hashed"
        )
        if self.pending:
            text += f", {self.pending} awaiting remote versions"
        if self.skipped_count:
            text += f", {self.skipped_count} skipped"
        return text


@dataclass(frozen=True, slots=True)
class ScanProgress:
    """How far a scan is: entries looked at, bytes hashed so far, and the current path."""

    files_seen: int
    bytes_hashed: int
    current_path: str


# -- the walk (in a worker thread) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    """A file, directory or symlink to compare with the index. ``local_path`` is its
    root-relative path as the names are on disk, to reach it through a
    :class:`~commonsync.sync.beneath.DirectoryChain`."""

    path: str
    local_path: str
    st: os.stat_result
    target: str = ""


@dataclass(frozen=True, slots=True)
class _Keep:
    """An indexed entry at ``path`` (``subtree``: every indexed entry whose path starts with
    ``path``, which ends in ``/``) must be left as it is: ignored, unreadable, or skipped."""

    path: str
    subtree: bool = False


_Event = _Found | _Keep


@dataclass(frozen=True, slots=True)
class _Descend:
    """Walk into a directory when the walk reaches ``key`` (its path and ``/``)."""

    key: str
    local_path: str


_Item = tuple[str, _Event | _Descend]


class _Walker:
    """A depth-first walk that yields paths in code-point order, the index's own order.

    A directory's entries are sorted by name, but its subtree is visited at the position of
    ``name/``, not right after ``name``: ``a``, ``a-b``, ``a/x``, ``a0``. Everything under
    ``a/`` sorts between ``a/`` and the next sibling key, so the walk as a whole is sorted,
    and the scan merges it with the index read in the same order.
    """

    def __init__(
        self,
        root: Path,
        chain: DirectoryChain,
        ignore: IgnoreRules,
        skip: Collection[str],
        report: ScanReport,
    ) -> None:
        self._chain = chain
        self._ignore = ignore
        self._skip = skip
        self._report = report
        listed = self._list("", "")
        if listed is None:
            # Reading nothing would take every indexed path for deleted.
            raise FolderError(f"cannot read the folder {root}")
        self._stack: list[Iterator[_Item]] = [iter(listed)]

    def step(self, limit: int) -> list[_Event]:
        """The next ``limit`` events at most; an empty list at the end of the walk."""
        events: list[_Event] = []
        while self._stack and len(events) < limit:
            item = next(self._stack[-1], None)
            if item is None:
                self._stack.pop()
                continue
            key, what = item
            if not isinstance(what, _Descend):
                events.append(what)
                continue
            anyio.from_thread.check_cancelled()
            listed = self._list(what.local_path, key)
            if listed is None:
                events.append(_Keep(key, subtree=True))
            else:
                self._stack.append(iter(listed))
        return events

    def _list(self, local_dir: str, prefix: str) -> list[_Item] | None:
        """The sorted items of one directory; None if it cannot be read (reported), so that
        nothing indexed below it is taken for deleted. A directory that vanished is empty.

        The directory is opened through the chain, never through a symlink: one swapped for
        a link since its parent was listed is *changing* (left as indexed until the next
        scan), and its link's target is never listed."""
        try:
            fd = self._chain.directory(local_dir)
            with os.scandir(fd) as listing:
                entries = list(listing)
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            if not self._is_link(local_dir):
                return []  # a file in its place: what was below it is gone
            self._report.skip(prefix[:-1], SkipReason.CHANGING, "replaced by a symlink")
            return None
        except OSError as exc:
            self._report.skip(prefix[:-1], SkipReason.UNREADABLE, exc.strerror or str(exc))
            return None
        names = {entry.name for entry in entries}
        items: list[_Item] = []
        for entry in entries:
            # An entry of a listing by descriptor is named relative to it, and its stat()
            # goes through that descriptor: nothing here follows a link.
            local = f"{local_dir}/{entry.name}" if local_dir else entry.name
            self._add(entry, fd, local, prefix, names, items)
        items.sort(key=lambda item: item[0])
        return items

    def _is_link(self, local_path: str) -> bool:
        """Whether ``local_path`` is a symlink now (a component on the way being one too)."""
        try:
            return stat.S_ISLNK(self._chain.lstat(local_path).st_mode)
        except NotADirectoryError:
            return True  # a parent was swapped in turn
        except OSError:
            return False

    def _add(
        self,
        entry: os.DirEntry[str],
        dir_fd: int,
        local: str,
        prefix: str,
        names: set[str],
        items: list[_Item],
    ) -> None:
        shown = prefix + entry.name
        try:
            path = paths.from_local(shown)
        except InvalidPathError as exc:
            self._report.skip(shown, SkipReason.INVALID_NAME, str(exc))
            return
        name = path.rpartition("/")[2]
        disk_name = entry.name
        if name != entry.name and not self._same_entry(entry, dir_fd, name, names):
            if not self._normalize(entry, dir_fd, name, names, shown):
                return
            disk_name = name
            local = f"{local.rpartition('/')[0]}/{name}" if "/" in local else name
        try:
            if disk_name == entry.name:
                st = entry.stat(follow_symlinks=False)
            else:
                st = os.stat(disk_name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # gone since it was listed: as if it had never been there
        except OSError as exc:
            self._report.skip(path, SkipReason.UNREADABLE, exc.strerror or str(exc))
            items.append((path, _Keep(path)))
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if path in self._skip:
            items.append((path, _Keep(path)))
            if is_dir:
                items.append((path + "/", _Descend(path + "/", local)))
            return
        if self._ignore.matches(path, is_dir):
            if not layout.is_internal(path):
                self._report.ignored += 1
            elif stat.S_ISREG(st.st_mode) and layout.is_temp(path):
                self._report.found_temp(path, st)
            items.append((path, _Keep(path)))
            if is_dir:
                items.append((path + "/", _Keep(path + "/", subtree=True)))
            return
        if stat.S_ISREG(st.st_mode):
            items.append((path, _Found(path, local, st)))
        elif is_dir:
            items.append((path, _Found(path, local, st)))
            items.append((path + "/", _Descend(path + "/", local)))
        elif stat.S_ISLNK(st.st_mode):
            target = self._link_target(dir_fd, disk_name, path)
            items.append((path, _Keep(path) if target is None else _Found(path, local, st, target)))
        else:
            self._report.skip(path, SkipReason.UNSUPPORTED_TYPE, _type_name(st.st_mode))
            items.append((path, _Keep(path)))

    def _normalize(
        self, entry: os.DirEntry[str], dir_fd: int, nfc_name: str, names: set[str], shown: str
    ) -> bool:
        """Rename an entry whose name is not in Unicode NFC (as macOS and some Linux tools
        write names) to its NFC form, on a file system that tells the two apart; whether it
        did. Records carry NFC names (SPEC.md §8.4), and every device must hold the file
        under the name the others write to, so the name is normalised here, once, as
        Syncthing does. The two forms look the same to a person. Refused (reported, left as
        it is) if the NFC name is another entry's: nothing is ever replaced."""
        if nfc_name in names:
            self._report.skip(
                shown,
                SkipReason.INVALID_NAME,
                f"the name is not in Unicode NFC, and its NFC form {nfc_name!r} is another "
                "entry beside it: rename one of them",
            )
            return False
        try:
            if entry.is_dir(follow_symlinks=False):
                if _exists(dir_fd, nfc_name):
                    raise FileExistsError(nfc_name)
                os.rename(entry.name, nfc_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                # A hard link fails if the name was taken meanwhile, where a rename replaces.
                os.link(entry.name, nfc_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)  # fmt: skip
                os.unlink(entry.name, dir_fd=dir_fd)
        except OSError as exc:
            self._report.skip(
                shown,
                SkipReason.INVALID_NAME,
                f"the name is not in Unicode NFC and could not be renamed to it "
                f"({exc.strerror or exc}): rename it",
            )
            return False
        names.add(nfc_name)
        self._report.normalized += 1
        return True

    @staticmethod
    def _same_entry(entry: os.DirEntry[str], dir_fd: int, nfc_name: str, names: set[str]) -> bool:
        """Whether the NFC form of a non-NFC name reaches the same file: true on file systems
        that ignore the difference (macOS), false where both names could coexist (Linux)."""
        if nfc_name in names:
            return False
        try:
            mine = entry.stat(follow_symlinks=False)
            other = os.stat(nfc_name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (other.st_dev, other.st_ino)

    def _link_target(self, dir_fd: int, name: str, path: str) -> str | None:
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            self._report.skip(path, SkipReason.UNREADABLE, exc.strerror or str(exc))
            return None
        try:
            size = len(target.encode("utf-8"))
        except UnicodeEncodeError:
            self._report.skip(path, SkipReason.INVALID_NAME, "symlink target is not valid UTF-8")
            return None
        if not 0 < size <= paths.MAX_PATH_BYTES:
            self._report.skip(path, SkipReason.TOO_LARGE, "symlink target over 4096 bytes")
            return None
        return target


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _type_name(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"of unknown type {stat.S_IFMT(mode):o}"


# -- hashing (in a worker thread) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Hashed:
    chunks: tuple[ChunkEntry, ...]
    st: os.stat_result


@dataclass(frozen=True, slots=True)
class _Unhashed:
    reason: SkipReason
    detail: str


def _hash_file(
    chain: DirectoryChain, local_path: str, hasher: ChunkHasher, on_chunk: Callable[[int], None]
) -> _Hashed | _Unhashed:
    """Chunk and hash one file, and make sure it did not move while it was read.

    Opened through ``chain`` (no symlink followed at any component of the path) and checked
    to be a regular file, so that an entry swapped for a link or a FIFO since the walk, or a
    directory above it swapped for a link, is neither followed nor blocked on. The content
    counts only if size and mtime are the same before and after, on the open file and at its
    path, and the bytes read match the size.
    """
    try:
        fd = chain.open(local_path, _OPEN_FLAGS)
    except FileNotFoundError:
        return _Unhashed(SkipReason.CHANGING, "disappeared while scanned")
    except NotADirectoryError:
        return _Unhashed(SkipReason.CHANGING, "a directory above it was replaced while scanned")
    except OSError as exc:
        if stat.S_ISLNK(_lstat_mode(chain, local_path)):
            return _Unhashed(SkipReason.CHANGING, "replaced by a symlink while scanned")
        return _Unhashed(SkipReason.UNREADABLE, exc.strerror or str(exc))
    with os.fdopen(fd, "rb", buffering=0) as stream:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return _Unhashed(SkipReason.CHANGING, "no longer a regular file")
        chunks: list[ChunkEntry] = []
        total = 0
        try:
            for ref in hasher.hash_stream(stream, progress=on_chunk):
                chunks.append(ChunkEntry(ref.id, ref.size))
                total += ref.size
                if len(chunks) > MAX_CHUNKS:
                    return _Unhashed(SkipReason.TOO_LARGE, f"more than {MAX_CHUNKS} chunks")
        except OSError as exc:
            return _Unhashed(SkipReason.UNREADABLE, exc.strerror or str(exc))
        after = os.fstat(fd)
    try:
        now = chain.lstat(local_path)
    except OSError:
        return _Unhashed(SkipReason.CHANGING, "disappeared while scanned")
    if (
        _moved(before, after)
        or _moved(before, now)
        or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)
        or total != before.st_size
    ):
        return _Unhashed(SkipReason.CHANGING, "modified while it was hashed")
    return _Hashed(tuple(chunks), before)


def _moved(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns) != (b.st_size, b.st_mtime_ns)


def _lstat_mode(chain: DirectoryChain, local_path: str) -> int:
    try:
        return chain.lstat(local_path).st_mode
    except OSError:
        return 0


# -- the scan ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Content:
    """What the disk holds at a path, as a record would say it."""

    kind: Kind
    chunks: tuple[ChunkEntry, ...]
    target: str
    mtime_ns: int
    mode: int
    local: LocalFile | None
    #: The permission bits stored with the path's local state before this scan (None: none).
    seen_mode: int | None = None

    def same_as(self, record: Record) -> bool:
        return (
            not record.deleted
            and record.kind is self.kind
            and record.chunks == self.chunks
            and record.symlink_target == self.target
            # A peer's bits as this device's umask wrote them are still the peer's version.
            and modes.holds_mode(self.kind, record.mode, self.mode, self.seen_mode)
        )


@dataclass(frozen=True, slots=True)
class _Change:
    """A path to write: new content (``content``) or a deletion (None). ``expected`` is the
    local sequence of the indexed record the scan compared with (0: none)."""

    path: str
    expected: int
    content: _Content | None


@dataclass
class _Batch:
    """One transaction's worth of decided writes."""

    entries: list[IndexEntry] = field(default_factory=list)
    local_files: list[tuple[str, LocalFile | None]] = field(default_factory=list)
    expected: dict[str, int] = field(default_factory=dict)
    #: Per path: "added", "changed", "deleted" or "unchanged", counted once written.
    outcome: dict[str, str] = field(default_factory=dict)


class _StoreCursor:
    """The index's path states in path order, read in batches as the merge needs them."""

    def __init__(self, states: AsyncIterator[list[PathState]]) -> None:
        self._states = states
        self._buffer: deque[PathState] = deque()
        self._done = False
        #: Indexed entries present on disk at the last scan, among those read so far.
        self.live = 0

    async def peek(self) -> PathState | None:
        while not self._buffer and not self._done:
            try:
                self._buffer.extend(await anext(self._states))
            except StopAsyncIteration:
                self._done = True
        return self._buffer[0] if self._buffer else None

    def pop(self) -> PathState:
        state = self._buffer.popleft()
        if state.on_disk and not state.deleted:
            self.live += 1
        return state


class _Scan:
    def __init__(
        self,
        root: Path,
        store: IndexStore,
        key: FolderKey,
        identity: DeviceIdentity,
        ignore: IgnoreRules,
        skip: Collection[str],
        progress: Callable[[ScanProgress], None] | None,
        clock_ns: Callable[[], int],
        hasher: ChunkHasher,
        max_deleted_share: float | None,
        published: Callable[[], None] | None,
        chain: DirectoryChain,
    ) -> None:
        self.root = root
        self.chain = chain
        self.published = published
        self.max_deleted_share = max_deleted_share
        self._deletions: list[_Change] = []
        self.hasher = hasher
        self.store = store
        self.folder_id = key.folder_id
        self.key = key
        self.identity = identity
        self.ignore = ignore
        self.skip = skip
        self.progress = progress
        self.clock_ns = clock_ns
        self.report = ScanReport()
        self._changes: list[_Change] = []
        self._change_chunks = 0
        self._current = ""
        #: Small files found, to hash together (see :meth:`_found`).
        self._to_hash: list[tuple[_Found, PathState | None]] = []
        self._to_hash_bytes = 0

    # -- driving --------------------------------------------------------------------------

    async def run(self) -> ScanReport:
        walker = await anyio.to_thread.run_sync(
            _Walker, self.root, self.chain, self.ignore, self.skip, self.report
        )
        async with aclosing(self.store.path_states(self.folder_id, batch=INDEX_STEP)) as states:
            cursor = _StoreCursor(states)
            while events := await anyio.to_thread.run_sync(walker.step, WALK_STEP):
                for event in events:
                    await self._merge(event, cursor)
                await self._hash_waiting()
                self._report_progress()
            while (state := await cursor.peek()) is not None:
                cursor.pop()
                await self._vanished(state)
        await self._flush()  # what was found is published, whatever the guard says
        self._check_deletions(indexed=cursor.live)
        for change in self._deletions:
            await self._add(change)
        await self._flush()
        self._report_progress()
        return self.report

    def _check_deletions(self, indexed: int) -> None:
        """The mass-deletion guard: deletions are held until the walk is over, and refused
        (unpublished) when they are too large a share of what was there."""
        vanished = len(self._deletions)
        if (
            self.max_deleted_share is not None
            and vanished >= MASS_DELETION_MINIMUM
            and vanished > self.max_deleted_share * indexed
        ):
            raise MassDeletionError(vanished, indexed)

    def _report_progress(self) -> None:
        if self.progress is not None:
            self.progress(
                ScanProgress(self.report.files_seen, self.report.bytes_hashed, self._current)
            )

    async def _merge(self, event: _Event, cursor: _StoreCursor) -> None:
        """Pair a walk event with the index entry of the same path, if any; index entries
        that sort before it were not found on disk."""
        while (state := await cursor.peek()) is not None and state.path < event.path:
            cursor.pop()
            await self._vanished(state)
        if isinstance(event, _Keep):
            while state is not None and (
                state.path.startswith(event.path) if event.subtree else state.path == event.path
            ):
                cursor.pop()
                state = await cursor.peek()
            return
        if state is not None and state.path == event.path:
            cursor.pop()
        else:
            state = None
        await self._found(event, state)

    # -- deciding, per path ---------------------------------------------------------------

    async def _vanished(self, state: PathState) -> None:
        if state.deleted:
            return
        if not state.on_disk:
            self.report.pending += 1  # a remote version not fetched yet: the applier's
            return
        if state.path in self.skip or self.ignore.ignores(state.path, state.kind is Kind.DIRECTORY):
            return
        self._deletions.append(_Change(state.path, state.local_sequence, None))

    async def _found(self, found: _Found, state: PathState | None) -> None:
        self.report.files_seen += 1
        self._current = found.path
        local: LocalFile | None = LocalFile.from_stat(found.st)
        if state is not None and state.local == local:
            if not state.on_disk:
                self.report.pending += 1
                return
            if not state.deleted:
                self.report.unchanged += 1
                return
        st = found.st
        if stat.S_ISREG(st.st_mode):
            if st.st_size <= HASH_TOGETHER_SIZE:
                # Hashed with others in one trip to a worker thread: for a small file the
                # trip costs more than the hashing.
                self._to_hash.append((found, state))
                self._to_hash_bytes += st.st_size
                if self._to_hash_bytes >= HASH_TOGETHER_BYTES:
                    await self._hash_waiting()
                return
            self._report_progress()
            hashed = await anyio.to_thread.run_sync(
                _hash_file, self.chain, found.local_path, self.hasher, self._on_chunk
            )
            await self._hashed(found, state, hashed)
            return
        kind = Kind.DIRECTORY if stat.S_ISDIR(st.st_mode) else Kind.SYMLINK
        await self._add(self._change(found, state, kind, (), st, local))

    async def _hash_waiting(self) -> None:
        """Hash the small files waiting for it, together, and add their changes."""
        waiting, self._to_hash, self._to_hash_bytes = self._to_hash, [], 0
        if not waiting:
            return
        chain, hasher, on_chunk = self.chain, self.hasher, self._on_chunk
        results = await anyio.to_thread.run_sync(
            lambda: [_hash_file(chain, found.local_path, hasher, on_chunk) for found, _ in waiting]
        )
        for (found, state), hashed in zip(waiting, results, strict=True):
            await self._hashed(found, state, hashed)

    async def _hashed(
        self, found: _Found, state: PathState | None, hashed: _Hashed | _Unhashed
    ) -> None:
        if isinstance(hashed, _Unhashed):
            self.report.skip(found.path, hashed.reason, hashed.detail)
            return
        self.report.files_hashed += 1
        st = hashed.st
        change = self._change(found, state, Kind.FILE, hashed.chunks, st, LocalFile.from_stat(st))
        await self._add(change)

    def _change(
        self,
        found: _Found,
        state: PathState | None,
        kind: Kind,
        chunks: tuple[ChunkEntry, ...],
        st: os.stat_result,
        local: LocalFile | None,
    ) -> _Change:
        if time.time_ns() - st.st_mtime_ns < RACY_WINDOW_NS:
            local = None
            self.report.racy += 1
        seen = None if state is None or state.local is None else stat.S_IMODE(state.local.mode)
        content = _Content(
            kind, chunks, found.target, st.st_mtime_ns, stat.S_IMODE(st.st_mode), local, seen
        )
        return _Change(found.path, 0 if state is None else state.local_sequence, content)

    def _on_chunk(self, size: int) -> None:
        """Called in the hashing thread after each chunk: stop if the scan was cancelled,
        count, and let the caller's progress callback run in the event loop."""
        anyio.from_thread.check_cancelled()
        self.report.bytes_hashed += size
        if self.progress is not None:
            anyio.from_thread.run_sync(self._report_progress)

    async def _add(self, change: _Change) -> None:
        self._changes.append(change)
        if change.content is not None:
            self._change_chunks += len(change.content.chunks)
        if len(self._changes) >= BATCH or self._change_chunks >= BATCH_CHUNKS:
            await self._flush()

    # -- writing, per batch -----------------------------------------------------------------

    async def _flush(self) -> None:
        changes, self._changes, self._change_chunks = self._changes, [], 0
        if not changes:
            return
        olds = await self.store.get_many(self.folder_id, [c.path for c in changes if c.expected])
        if any(c.content is None for c in changes):
            # About to record deletions: make sure the folder is still there, so that a
            # disk unmounted during the scan is not read as deleted files.
            await anyio.to_thread.run_sync(check_folder, self.root)
        versions = sum(1 for c in changes if self._needs_version(c, olds))
        sequences = (
            await self.store.next_own_sequences(self.folder_id, versions) if versions else []
        )
        batch = await anyio.to_thread.run_sync(self._decide, changes, olds, sequences)
        while batch.outcome:
            try:
                await self.store.put(
                    self.folder_id,
                    batch.entries,
                    local_files=batch.local_files,
                    expected=batch.expected,
                )
                if self.published is not None and batch.entries:
                    self.published()
                break
            except IndexChangedError as exc:
                moved = set(exc.paths)
                for path in exc.paths:
                    self.report.skip(path, SkipReason.INDEX_CHANGED, "the next scan looks again")
                batch = _Batch(
                    [e for e in batch.entries if e.record.path not in moved],
                    [(p, s) for p, s in batch.local_files if p not in moved],
                    {p: s for p, s in batch.expected.items() if p not in moved},
                    {p: o for p, o in batch.outcome.items() if p not in moved},
                )
        for outcome in batch.outcome.values():
            setattr(self.report, outcome, getattr(self.report, outcome) + 1)

    @staticmethod
    def _needs_version(change: _Change, olds: dict[str, IndexEntry]) -> bool:
        old = olds.get(change.path)
        if change.content is None:
            return old is not None
        return old is None or (old.on_disk and not change.content.same_as(old.record))

    def _decide(
        self, changes: list[_Change], olds: dict[str, IndexEntry], sequences: list[int]
    ) -> _Batch:
        """Turn a batch of changes into signed entries and local states (in a worker thread:
        signing hundreds of records takes a while)."""
        batch = _Batch()
        numbers = iter(sequences)
        for change in changes:
            old = olds.get(change.path)
            if (0 if old is None else old.local_sequence) != change.expected:
                self.report.skip(change.path, SkipReason.INDEX_CHANGED, "the next scan looks again")
                continue
            content = change.content
            if content is None:
                if old is None:
                    continue
                tombstone = partial(self._tombstone, old.record, next(numbers))
                entry = self._versioned(change.path, tombstone)
                if entry is None:
                    continue
                batch.entries.append(entry)
                outcome = "deleted"
            elif old is not None and content.same_as(old.record):
                # Same content as indexed: a touch, or the remote version already in place.
                if not old.on_disk:
                    batch.entries.append(IndexEntry(old.record, old.signed, on_disk=True))
                batch.local_files.append((change.path, content.local))
                outcome = "unchanged"
            elif old is not None and not old.on_disk:
                self.report.skip(
                    change.path,
                    SkipReason.PENDING_REMOTE,
                    "left to the sync engine, which keeps both versions",
                )
                continue
            else:
                version = partial(self._version, change.path, content, old, next(numbers))
                entry = self._versioned(change.path, version)
                if entry is None:
                    continue
                batch.entries.append(entry)
                batch.local_files.append((change.path, content.local))
                outcome = "added" if old is None or old.record.deleted else "changed"
            batch.expected[change.path] = change.expected
            batch.outcome[change.path] = outcome
        return batch

    def _versioned(self, path: str, make: Callable[[], IndexEntry]) -> IndexEntry | None:
        """``make()``, or None (the path reported as skipped) if no version can be made
        of it: one path whose version counter cannot grow must not stop the batch."""
        try:
            return make()
        except (RecordError, EncodingError) as exc:
            self.report.skip(path, SkipReason.UNVERSIONABLE, str(exc))
            return None

    def _version(
        self, path: str, content: _Content, old: IndexEntry | None, sequence: int
    ) -> IndexEntry:
        base = None if old is None else old.record
        record = Record(
            path=path,
            kind=content.kind,
            size=sum(c.size for c in content.chunks),
            mtime_ns=content.mtime_ns,
            mode=content.mode,
            deleted=False,
            version=self._bump(base),
            chunks=content.chunks,
            symlink_target=content.target,
            author=self.identity.public_key,
            sequence=sequence,
            previous=b"" if base is None or base.deleted else base.content_digest(),
        )
        return self._signed(record)

    def _tombstone(self, old: Record, sequence: int) -> IndexEntry:
        record = Record(
            path=old.path,
            kind=old.kind,
            size=0,
            mtime_ns=self.clock_ns(),
            mode=old.mode,
            deleted=True,
            version=self._bump(old),
            chunks=(),
            symlink_target="",
            author=self.identity.public_key,
            sequence=sequence,
            previous=old.content_digest(),
        )
        return self._signed(record)

    def _bump(self, base: Record | None) -> VersionVector:
        vector = VersionVector() if base is None else base.version
        return vector.bump(self.identity.device_id.short, self.clock_ns() // 10**9)

    def _signed(self, record: Record) -> IndexEntry:
        signed = sign_record(self.identity, self.folder_id, record)
        return IndexEntry(record, signed, on_disk=True, edited_here=True)


async def scan(
    root: Path,
    store: IndexStore,
    key: FolderKey,
    identity: DeviceIdentity,
    *,
    ignore: IgnoreRules | None = None,
    skip: Collection[str] = frozenset(),
    progress: Callable[[ScanProgress], None] | None = None,
    clock_ns: Callable[[], int] = time.time_ns,
    max_deleted_share: float | None = None,
    published: Callable[[], None] | None = None,
) -> ScanReport:
    """Scan the folder at ``root`` and record its changes in ``store`` as versions authored
    and signed by ``identity``.

    The folder must be registered in the store (:meth:`IndexStore.add_folder`) and marked
    (:func:`~commonsync.sync.marker.init_folder`), else :class:`~commonsync.errors.StoreError`
    or :class:`~commonsync.errors.FolderMissingError`. ``ignore`` defaults to the folder's
    ``.csignore`` (:class:`~commonsync.errors.IgnoreFileError` if it is malformed). Paths in
    ``skip`` are left alone, neither recorded nor deleted (the engine's pending remote
    versions).
    ``progress`` is called in the event loop as the scan goes; ``clock_ns`` gives the time for
    version counters and deletion times. With ``max_deleted_share`` (0 to 1), a scan that
    finds more than that share of the indexed entries gone (and at least
    :data:`MASS_DELETION_MINIMUM` of them) publishes its other changes but no deletion, and
    raises :class:`~commonsync.errors.MassDeletionError`. ``published`` is called (in the
    event loop) after each batch of new versions is stored, so that peers can get them while
    the scan goes on.
    """
    root = Path(root)
    skip = frozenset(skip)
    await anyio.to_thread.run_sync(check_folder, root)
    await store.folder(key.folder_id)  # a clear error now if the folder is not registered
    if ignore is None:
        ignore = await anyio.to_thread.run_sync(IgnoreRules.load, root)
    try:
        chain = await anyio.to_thread.run_sync(DirectoryChain.at, root)
    except OSError as exc:
        raise FolderError(f"cannot read the folder {root}: {exc.strerror or exc}") from exc
    hasher = ChunkHasher(key.chunk_id_key, workers=min(4, os.cpu_count() or 2))
    try:
        scanner = _Scan(
            root, store, key, identity, ignore, skip, progress, clock_ns, hasher,
            max_deleted_share, published, chain,
        )  # fmt: skip
        return await scanner.run()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(hasher.close)
            chain.close()
