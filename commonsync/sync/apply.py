"""Making a remote version real on the local disk, without ever losing a local one.

The sync engine decides *what* a path should become (:mod:`commonsync.sync.decide`); this module
makes it so. Its guarantees, each tested in ``tests/test_apply.py``:

- **Nothing outside the folder.** Every operation reaches its target through directory file
  descriptors opened one component at a time with ``O_NOFOLLOW``
  (:class:`commonsync.sync.target.Target`): a parent that is a symlink or not a directory
  raises :class:`UnsafePathError`, and a swap made after a check cannot redirect the write,
  because the check *is* the open. Symlinks are created as given and never followed. Records
  may not write into the engine's own paths (:mod:`commonsync.sync.layout`).
- **No lost local change.** The caller passes what the scanner last saw at the target (a
  :class:`commonsync.sync.store.LocalFile`, as the index keeps it); right before anything is
  replaced the target is looked at again, and if it differs, :class:`LocalChangedError` is
  raised and nothing is touched. A replaced or deleted file goes to the versions folder (and is
  compared with the expectation once more there, where it can no longer change under us; the
  versions folder, and pruning it, are :mod:`commonsync.sync.versions`).
- **No half-written file, ever.** A file is assembled in a temporary file beside its target
  (so the final rename is atomic), every chunk verified against its ID before it is written,
  then fsynced, given its mode and mtime, and renamed into place; the directory is fsynced.
  A kill at any moment leaves the old file or the new one at the target. The temporary name
  derives from the version's content digest, so an interrupted transfer resumes: chunks
  already in it are checked in place and only the missing ones are fetched.
- **Bounded memory and bounded blocking.** One chunk (at most 4 MiB) is in memory at a time.
  File I/O runs in worker threads, one chunk or a few system calls per thread call, so
  cancellation is prompt and the event loop never stalls.

One operation per path at a time: the engine must not apply two versions of the same path
concurrently (their temporary files could be the same). POSIX only (directory file
descriptors). Errors from the operating system that are not one of the cases above (disk full,
permission denied) are raised as :class:`LocalFileError` with their ``errno``.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import stat
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread

from ..errors import (
    ChunkTamperedError,
    CommonsyncError,
    ConflictCopyExistsError,
    DirectoryNotEmptyError,
    FolderMissingError,
    InsufficientSpaceError,
    InternalPathError,
    LocalChangedError,
    LocalFileError,
    MissingChunkError,
    RecordKindError,
    UnrepresentableNameError,
    UnsafePathError,
    VersionsUnavailableError,
)
from ..formats import paths
from ..formats.chunks import chunk_id
from ..formats.records import ChunkEntry, Kind, Record
from . import layout, modes
from .beneath import DIR_FLAGS as _DIR_FLAGS
from .beneath import lstat_at as _lstat
from .beneath import naming as _naming
from .beneath import open_root as _open_root
from .beneath import walk as _walk
from .layout import fit as _fit
from .space import DiskReserve
from .store import LocalFile
from .target import NO_HARD_LINKS as _NO_HARD_LINKS
from .target import LocalState
from .target import Target as _Target
from .target import changed as _changed
from .target import check as _check
from .target import locate as _locate
from .target import open_existing as _open_existing
from .target import open_target as _open_target
from .target import reported as _reported
from .target import run as _run
from .target import same as _same
from .versions import DELETED as _DELETED
from .versions import SET_ASIDE as _SET_ASIDE
from .versions import keep_version as _keep_version

__all__ = [
    "ChunkReader",
    "ConflictCopyExistsError",
    "DirectoryNotEmptyError",
    "DiskReserve",
    "FolderMissingError",
    "InsufficientSpaceError",
    "InternalPathError",
    "LocalChangedError",
    "LocalFile",
    "LocalFileError",
    "LocalState",
    "MissingChunkError",
    "RecordKindError",
    "UnrepresentableNameError",
    "UnsafePathError",
    "VersionsUnavailableError",
    "apply_deletion",
    "apply_directory",
    "apply_file",
    "apply_metadata",
    "apply_small_files",
    "apply_symlink",
    "conflict_copy",
    "discard_partial",
    "discard_temp",
    "safe_path",
    "set_aside",
    "temp_path",
]

#: Fetches the plaintext of one chunk (from a peer, a relay or a local file). It may raise
#: :class:`MissingChunkError`; whatever it returns is verified against the chunk's ID.
ChunkReader = Callable[[ChunkEntry], Awaitable[bytes]]

#: Chunks of one file fetched at the same time. Memory held is at most this many chunks.
FETCH_WINDOW = 8
#: The reserve kept unless the caller says otherwise: 1 % of the disk (commonsync.sync.space).
DEFAULT_RESERVE = DiskReserve()


# -- public API ------------------------------------------------------------------------------


def safe_path(root: Path, path: str, *, create_parents: bool = False) -> Path:
    """``root / path``, once every parent component is checked to be a real directory.

    Raises :class:`UnsafePathError` if one is a symlink or not a directory, and creates missing
    ones when ``create_parents`` is true. This is a check at the time of the call, for code that
    needs a path (it blocks: call it from a worker thread); the operations of this module
    do not use it but hold the parent open while they work, so no later swap can redirect them.
    """
    paths.validate(path)
    with _reported(root, path):
        root_fd = _open_root(root)
        try:
            found = _walk(root_fd, root, path, create=create_parents)
            if found is not None:
                os.close(found[0])
        finally:
            os.close(root_fd)
    return root.joinpath(*path.split("/"))


async def apply_file(
    root: Path,
    record: Record,
    *,
    expected: LocalState | None,
    read_chunk: ChunkReader,
    chunk_id_key: bytes,
    versions: bool = True,
    clock_ns: Callable[[], int] = time.time_ns,
    reader_checks: bool = False,
    reserve: DiskReserve = DEFAULT_RESERVE,
    held: Callable[[int], None] | None = None,
) -> LocalState:
    """Make the file version ``record`` real at ``root / record.path``; returns its new state.

    ``expected`` is what the scanner last saw there (``None``: nothing). Chunks already in the
    version's temporary file (from an interrupted attempt) are checked and kept; only the
    others are fetched with ``read_chunk``, several at a time, each verified against its ID
    (:class:`ChunkTamperedError` if it does not match: nothing is replaced, the temporary file
    keeps the good chunks). A chunk that occurs twice is fetched once. The old file, if any,
    goes to the versions folder under ``layout.version_name(path, clock_ns())`` unless
    ``versions`` is false. On :class:`LocalChangedError` the complete temporary file is kept, so
    applying the same version after the conflict is resolved fetches nothing.

    ``held`` is told the size of each chunk found already in the temporary file (what an
    interrupted attempt wrote), so that progress counts it as done, as it counts the chunks
    ``read_chunk`` returns.

    With ``reader_checks``, ``read_chunk`` promises to return only chunks it checked against
    their IDs (as :class:`commonsync.sync.folder.Folder`'s does), and they are not hashed again.

    Nothing is fetched for a file of several chunks, and nothing written for any file, that
    would leave less free space than ``reserve`` keeps (:mod:`commonsync.sync.space`): then
    :class:`InsufficientSpaceError` (so is a full disk met while writing); what the
    temporary file holds stays, for when space returns.
    """
    _require(record, Kind.FILE, "apply_file")
    write_key = None if reader_checks else chunk_id_key
    _refuse_internal(record.path)
    if len(record.chunks) <= 1 and not _may_have_temp(root, record):
        # One chunk at most, and no earlier attempt to resume: fetch it first, then do all
        # the file work in one trip to a worker thread (each trip costs about a millisecond
        # here: most of a small file's time).
        data = await read_chunk(record.chunks[0]) if record.chunks else b""
        work = partial(
            _write_whole, root, record, data, write_key, expected, versions, clock_ns, reserve
        )
        return await _run(root, record.path, work)
    target = await _open_target(root, record.path)
    try:
        temp = _fit_temp_name(target.name, record.content_digest())
        # Before anything is fetched: room for what the temporary file does not hold yet.
        await target.run(partial(_check_room, target, temp, record, reserve))
        await _assemble(target, temp, record, read_chunk, chunk_id_key, write_key, reserve, held)
        return await target.run(partial(_place_file, target, temp, expected, versions, clock_ns))
    finally:
        target.close()


async def apply_metadata(root: Path, record: Record, expected: LocalState) -> LocalState:
    """Give the file at ``record.path``, which already holds exactly ``record``'s content (the
    caller knows it: the index says so and ``expected`` is still what is there), the record's
    mode and mtime in place; returns its new state.

    Nothing is fetched, copied or kept in the versions folder: a permission change on a
    large folder must not send or duplicate its content. :class:`LocalChangedError` if the
    file is not what ``expected`` says."""
    _require(record, Kind.FILE, "apply_metadata")
    _refuse_internal(record.path)
    target = await _open_existing(root, record.path)
    if target is None:
        raise _changed(record.path, expected, None)
    try:
        return await target.run(partial(_set_metadata, target, record, expected))
    finally:
        target.close()


async def apply_directory(
    root: Path,
    record: Record,
    expected: LocalState | None,
    *,
    versions: bool = True,
    clock_ns: Callable[[], int] = time.time_ns,
) -> LocalState:
    """Make ``root / record.path`` a directory with the record's permission bits.

    An existing directory keeps its entries; a file there goes to the versions folder, a
    symlink is removed. The bits are masked by the umask (:mod:`commonsync.sync.modes`), the owner
    always keeps ``rwx`` (the engine must be able to sync into it) and setuid/setgid/sticky
    bits are not applied. Directory mtimes are not set: they follow their entries.
    """
    _require(record, Kind.DIRECTORY, "apply_directory")
    _refuse_internal(record.path)
    target = await _open_target(root, record.path)
    try:
        return await target.run(
            partial(_place_directory, target, record, expected, versions, clock_ns)
        )
    finally:
        target.close()


async def apply_symlink(
    root: Path,
    record: Record,
    expected: LocalState | None,
    *,
    versions: bool = True,
    clock_ns: Callable[[], int] = time.time_ns,
) -> LocalState:
    """Make ``root / record.path`` a symlink to ``record.symlink_target``, exactly as given.

    The target may point anywhere, even outside the folder: nothing in this module ever
    follows a link. A file replaced by the link goes to the versions folder.
    """
    _require(record, Kind.SYMLINK, "apply_symlink")
    _refuse_internal(record.path)
    try:
        os.fsencode(record.symlink_target)
    except UnicodeEncodeError as exc:
        raise UnrepresentableNameError(
            f"the local file system cannot hold the target of the symlink {record.path!r}",
            record.path,
        ) from exc
    target = await _open_target(root, record.path)
    try:
        return await target.run(
            partial(_place_symlink, target, record, expected, versions, clock_ns)
        )
    finally:
        target.close()


async def apply_deletion(
    root: Path,
    record: Record,
    expected: LocalState | None,
    *,
    versions: bool = True,
    clock_ns: Callable[[], int] = time.time_ns,
) -> None:
    """Remove what is at ``root / record.path``, as the tombstone ``record`` says.

    A file goes to the versions folder (or is unlinked if ``versions`` is false); a symlink is
    removed; a directory is removed only if empty, else :class:`DirectoryNotEmptyError` (its
    entries are not in the index yet: they will be scanned and synced). What is already gone
    is fine. What is there is removed only if it is what the scanner saw.
    """
    if not record.deleted:
        raise RecordKindError(f"apply_deletion needs a deleted record; {record.path!r} is not")
    _refuse_internal(record.path)
    target = await _open_existing(root, record.path)
    if target is None:
        return
    try:
        await target.run(partial(_delete, target, expected, versions, clock_ns))
    finally:
        target.close()


async def set_aside(
    root: Path, path: str, *, clock_ns: Callable[[], int] = time.time_ns
) -> str | None:
    """Move what is at ``root / path`` into the versions folder, whatever it holds: its
    version was set aside (SPEC.md §15.5, its author may not have made it), and the file
    must neither stay nor be lost. A directory is removed only if empty (what it holds is
    synced on its own). Returns the kept name, None if nothing was kept."""
    _refuse_internal(path)
    target = await _open_existing(root, path)
    if target is None:
        return None
    try:
        return await target.run(partial(_set_aside, target, clock_ns))
    finally:
        target.close()


async def conflict_copy(root: Path, path: str, copy_path: str, expected: LocalState) -> LocalState:
    """Move the local file (or symlink) at ``path`` to ``copy_path``, the losing side of a
    conflict, before the winner is applied at ``path``; returns the copy's state.

    ``copy_path`` comes from :func:`commonsync.sync.layout.conflict_name`. The move is one atomic
    rename, done only if ``path`` is still ``expected`` and nothing is at ``copy_path``
    (:class:`ConflictCopyExistsError`). The moved entry is checked once more at its new name;
    if a concurrent change slipped in, it is put back and :class:`LocalChangedError` raised.
    """
    for name in (path, copy_path):
        paths.validate(name)
        _refuse_internal(name)
    if stat.S_ISDIR(expected.mode):
        raise RecordKindError(f"a directory has no conflict copy ({path!r})")
    source = await _open_existing(root, path)
    if source is None:
        raise _changed(path, expected, None)
    try:
        copy = await _open_target(root, copy_path)
        try:
            return await source.run(partial(_move_to_copy, source, copy, expected))
        finally:
            copy.close()
    finally:
        source.close()


def temp_path(record: Record) -> str:
    """The folder-relative path of the temporary file that assembles ``record``'s version."""
    parent, _, name = record.path.rpartition("/")
    temp = _fit_temp_name(name, record.content_digest())
    return f"{parent}/{temp}" if parent else temp


async def discard_temp(root: Path, path: str) -> bool:
    """Remove the temporary file at ``path`` (a name of :func:`commonsync.sync.layout.temp_name`
    form, reached without following a symlink); whether there was one. For the engine, when
    it finds one that belongs to no version still to be written."""
    if not layout.is_temp(path):
        raise InternalPathError(f"{path!r} is not a temporary file of commonsync's")
    target = await _open_existing(root, path)
    if target is None:
        return False
    try:
        return await target.run(partial(_unlink_if_present, target.fd, target.name))
    finally:
        target.close()


async def discard_partial(root: Path, record: Record) -> bool:
    """Remove the temporary file of ``record``'s version, if an attempt left one; returns
    whether there was one. For the engine, when it gives up on a version (superseded)."""
    _require(record, Kind.FILE, "discard_partial")
    _refuse_internal(record.path)
    target = await _open_existing(root, record.path)
    if target is None:
        return False
    try:
        temp = _fit_temp_name(target.name, record.content_digest())
        return await target.run(partial(_unlink_if_present, target.fd, temp))
    finally:
        target.close()


#: A file of at most one chunk to write: its record, that chunk's bytes (b"" for an empty
#: file), and what the scanner last saw at its path (None: nothing).
SmallFile = tuple[Record, bytes, LocalState | None]


async def apply_small_files(
    root: Path,
    files: Sequence[SmallFile],
    *,
    chunk_id_key: bytes,
    versions: bool = True,
    clock_ns: Callable[[], int] = time.time_ns,
    checked: bool = False,
    reserve: DiskReserve = DEFAULT_RESERVE,
) -> list[LocalState | CommonsyncError]:
    """:func:`apply_file` for many files of at most one chunk each, whose bytes are at hand,
    in one trip to a worker thread (for a file of a few KiB, the trip costs more than the
    writing). Each file is checked, written and placed exactly as :func:`apply_file` would,
    and fails on its own: the result for each is its new state or the error that stopped it
    (:class:`LocalChangedError`, :class:`ChunkTamperedError`,
    :class:`InsufficientSpaceError`, …). With ``checked``, the caller promises it checked
    every file's bytes against its chunk ID already.
    """
    for record, _data, _expected in files:
        _require(record, Kind.FILE, "apply_small_files")
        if len(record.chunks) > 1:
            raise RecordKindError(f"{record.path!r} has more than one chunk: use apply_file")

    def write_each() -> list[LocalState | CommonsyncError]:
        results: dict[int, LocalState | CommonsyncError] = {}
        by_parent: dict[str, list[int]] = {}
        for n, (record, _data, _expected) in enumerate(files):
            try:
                _refuse_internal(record.path)
            except CommonsyncError as exc:
                results[n] = exc
                continue
            by_parent.setdefault(record.path.rpartition("/")[0], []).append(n)
        for in_parent in by_parent.values():
            key = None if checked else chunk_id_key
            _write_in_parent(root, files, in_parent, results, key, versions, clock_ns, reserve)
        return [results[n] for n in range(len(files))]

    return await anyio.to_thread.run_sync(write_each)


# -- what a record may ask for, and the temporary file's name -------------------------------


def _refuse_internal(path: str) -> None:
    """Records may not name the engine's own files, nor reach them through a directory named
    like one; compared case-folded too, for case-insensitive file systems."""
    if layout.reaches_internal(path):
        raise InternalPathError(
            f"{path!r} is one of commonsync's own paths ({layout.METADATA_DIR}/ or a "
            "temporary file); a record may not write there, so it is refused"
        )


def _require(record: Record, kind: Kind, function: str) -> None:
    if record.kind is not kind or record.deleted:
        raise RecordKindError(
            f"{function} needs a {kind.name.lower()} record that is not deleted; "
            f"{record.path!r} is a {'deleted ' if record.deleted else ''}"
            f"{record.kind.name.lower()}"
        )


def _fit_temp_name(name: str, digest: bytes) -> str:
    overhead = len(layout.temp_name("", digest).encode("utf-8"))
    return layout.temp_name(_fit(name, overhead), digest)


# -- assembling a file -----------------------------------------------------------------------


async def _assemble(
    target: _Target,
    temp: str,
    record: Record,
    read_chunk: ChunkReader,
    key: bytes,
    write_key: bytes | None,
    reserve: DiskReserve,
    held_chunk: Callable[[int], None] | None = None,
) -> None:
    """Fill the temporary file ``temp`` with ``record``'s chunks, keeping those already there
    (each told to ``held_chunk``),
    then fix its size, mode and mtime and fsync it. Before each write, ``reserve`` is checked
    (the disk may fill meanwhile): :class:`InsufficientSpaceError` stops the file.

    Up to :data:`FETCH_WINDOW` chunks are fetched at once (each written at its offset as it
    arrives), so that several peers and the round trip to each stay busy while memory stays
    bounded. A chunk that occurs again later in the file is copied once the fetches are done.
    """
    fd, have = await target.run(partial(_open_temp, target, temp))
    try:
        # Indexes into the chunk list rather than entries: a list may hold 400,000 chunks.
        first_offset: dict[bytes, int] = {}
        offsets, missing, repeated = array("Q"), array("Q"), array("Q")
        offset = 0
        for index, entry in enumerate(record.chunks):
            offsets.append(offset)
            held = offset + entry.size <= have and await target.run(
                partial(_holds, fd, offset, entry, key)
            )
            if not held:
                (repeated if entry.id in first_offset else missing).append(index)
            elif held_chunk is not None:
                held_chunk(entry.size)
            first_offset.setdefault(entry.id, offset)
            offset += entry.size

        async def fetch(index: int) -> None:
            entry = record.chunks[index]
            data = await read_chunk(entry)
            await target.run(
                partial(
                    _write_chunk,
                    fd,
                    offsets[index],
                    entry,
                    data,
                    write_key,
                    record.path,
                    index,
                    reserve,
                )
            )

        await _fetch_all(missing, fetch)
        for index in repeated:
            entry = record.chunks[index]
            source = first_offset[entry.id]
            copy = partial(
                _copy_chunk, fd, source, offsets[index], entry, key, reserve, record.path
            )
            if not await target.run(copy):
                await fetch(index)
        await target.run(partial(_finish_temp, fd, record))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(os.close, fd)


def _check_room(target: _Target, temp: str, record: Record, reserve: DiskReserve) -> None:
    """Raise :class:`InsufficientSpaceError` unless the rest of ``record``'s file fits (what
    an earlier attempt's temporary file holds already is not counted twice)."""
    held = _lstat(target.fd, temp)
    have = held.st_size if held is not None and stat.S_ISREG(held.st_mode) else 0
    reserve.check(target.fd, record.size - min(have, record.size), record.path)


async def _fetch_all(indexes: Iterable[int], fetch: Callable[[int], Awaitable[None]]) -> None:
    """Run ``fetch`` for the chunk at every index, :data:`FETCH_WINDOW` at a time. The first
    failure stops the others and is raised as itself (callers catch
    :class:`MissingChunkError` and :class:`ChunkTamperedError`, not exception groups); chunks
    already written stay."""
    window = anyio.Semaphore(FETCH_WINDOW)
    failures: list[Exception] = []

    async with anyio.create_task_group() as tasks:

        async def one(index: int) -> None:
            try:
                await fetch(index)
            except Exception as exc:
                failures.append(exc)
                tasks.cancel_scope.cancel()
            finally:
                window.release()

        for index in indexes:
            await window.acquire()
            tasks.start_soon(one, index)
    if failures:
        raise failures[0]


def _may_have_temp(root: Path, record: Record) -> bool:
    """Whether an earlier attempt may have left this version's temporary file. A hint only
    (an ``lstat``, cheap enough for the event loop): if it is wrong, the general path, which
    checks what the temporary file holds, is taken, or a chunk is fetched once more."""
    parent, _, name = record.path.rpartition("/")
    temp = _fit_temp_name(name, record.content_digest())
    return os.path.lexists(root / parent / temp)


def _write_whole(
    root: Path,
    record: Record,
    data: bytes,
    key: bytes | None,
    expected: LocalState | None,
    versions: bool,
    clock_ns: Callable[[], int],
    reserve: DiskReserve,
) -> LocalState:
    """:func:`apply_file` for a file of at most one chunk (``data``), in one thread."""
    target = _locate(root, record.path, create=True)
    assert target is not None  # with create=True every parent exists or an error was raised
    try:
        return _write_in(target, record, data, key, expected, versions, clock_ns, reserve)
    finally:
        target.close()


def _write_in_parent(
    root: Path,
    files: Sequence[SmallFile],
    in_parent: list[int],
    results: dict[int, LocalState | CommonsyncError],
    key: bytes | None,
    versions: bool,
    clock_ns: Callable[[], int],
    reserve: DiskReserve,
) -> None:
    """Write ``files[n]`` for each ``n`` of ``in_parent`` (all in one directory) into
    ``results[n]``: the directory is reached once, and made durable once for all of them."""
    first = files[in_parent[0]][0].path
    try:
        with _reported(root, first):
            parent = _locate(root, first, create=True)
    except CommonsyncError as exc:
        for n in in_parent:
            results[n] = exc
        return
    assert parent is not None  # with create=True every parent exists or an error was raised
    try:
        for n in in_parent:
            record, data, expected = files[n]
            target = replace(parent, path=record.path, name=record.path.rpartition("/")[2])
            try:
                with _reported(root, record.path):
                    results[n] = _write_in(
                        target, record, data, key, expected, versions, clock_ns, reserve,
                        sync_directory=False,
                    )  # fmt: skip
            except CommonsyncError as exc:
                results[n] = exc
        try:
            with _reported(root, first):
                os.fsync(parent.fd)
        except CommonsyncError as exc:
            for n in in_parent:
                results[n] = exc  # placed, but not durably: the index must not say so
    finally:
        parent.close()


def _write_in(
    target: _Target,
    record: Record,
    data: bytes,
    key: bytes | None,
    expected: LocalState | None,
    versions: bool,
    clock_ns: Callable[[], int],
    reserve: DiskReserve,
    *,
    sync_directory: bool = True,
) -> LocalState:
    temp = _fit_temp_name(target.name, record.content_digest())
    reserve.check(target.fd, len(data), record.path)
    fd, _have = _open_temp(target, temp)
    try:
        if record.chunks:
            _write_chunk(fd, 0, record.chunks[0], data, key, record.path, 0, reserve)
        _finish_temp(fd, record)
    finally:
        os.close(fd)
    return _place_file(target, temp, expected, versions, clock_ns, sync_directory=sync_directory)


def _open_temp(target: _Target, temp: str) -> tuple[int, int]:
    """Open (or create) the temporary file; returns ``(fd, current size)``."""
    made_writable = False
    for _ in range(3):
        try:
            with _naming(target.path):
                fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=target.fd)
        except IsADirectoryError as exc:
            raise UnsafePathError(
                f"{temp!r} beside {target.path!r} is a directory; remove it so that "
                f"{target.path!r} can be assembled"
            ) from exc
        except PermissionError:
            # A finished temporary file has the version's mode, maybe read-only: make it ours
            # again, once. Otherwise (a directory we may not write in) the error stands.
            if made_writable or not _make_writable(target.fd, temp):
                raise
            made_writable = True
            continue
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            os.unlink(temp, dir_fd=target.fd)  # a symlink in its place: never write through it
            continue
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return fd, st.st_size
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(
                f"{temp!r} beside {target.path!r} is not a regular file; remove it so that "
                f"{target.path!r} can be assembled"
            )
        # Another name shares it (a crash between placing it and removing this name): writing
        # into it would change that file, so start afresh.
        os.unlink(temp, dir_fd=target.fd)
    raise UnsafePathError(f"{temp!r} beside {target.path!r} keeps changing; try again")


def _make_writable(dir_fd: int, temp: str) -> bool:
    """Give an existing temporary file (a regular file of ours) mode 0600; whether it did."""
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.fchmod(fd, 0o600)
    except PermissionError:
        return False
    finally:
        os.close(fd)
    return True


def _holds(fd: int, offset: int, entry: ChunkEntry, key: bytes) -> bool:
    """Whether the temporary file already holds ``entry`` at ``offset`` (an earlier attempt)."""
    data = os.pread(fd, entry.size, offset)
    return len(data) == entry.size and hmac.compare_digest(chunk_id(key, data), entry.id)


def _copy_chunk(
    fd: int,
    source: int,
    offset: int,
    entry: ChunkEntry,
    key: bytes,
    reserve: DiskReserve,
    path: str,
) -> bool:
    """Copy a chunk that occurs earlier in the same file instead of fetching it again."""
    data = os.pread(fd, entry.size, source)
    if len(data) != entry.size or not hmac.compare_digest(chunk_id(key, data), entry.id):
        return False
    reserve.check(fd, len(data), path)
    _pwrite_all(fd, data, offset)
    return True


def _write_chunk(
    fd: int,
    offset: int,
    entry: ChunkEntry,
    data: bytes,
    key: bytes | None,
    path: str,
    index: int,
    reserve: DiskReserve,
) -> None:
    """Write a chunk at its offset, after checking it against its ID (unless ``key`` is None:
    the caller checked it) and that the disk keeps its reserve."""
    if len(data) != entry.size:
        raise ChunkTamperedError(
            f"chunk {index} of {path!r} came as {len(data)} bytes, its record says "
            f"{entry.size}; refused, nothing was replaced (fetch it from another device)"
        )
    if key is not None and not hmac.compare_digest(chunk_id(key, data), entry.id):
        raise ChunkTamperedError(
            f"chunk {index} of {path!r} does not match its ID; refused, nothing was replaced "
            "(fetch it from another device)"
        )
    reserve.check(fd, len(data), path)
    _pwrite_all(fd, data, offset)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _finish_temp(fd: int, record: Record) -> None:
    os.ftruncate(fd, record.size)
    _set_mode_and_mtime(fd, record)
    os.fsync(fd)


def _set_mode_and_mtime(fd: int, record: Record) -> None:
    # Only the permission bits, masked by the umask: a remote device must not make local
    # setuid programs, nor files other users may write (commonsync.sync.modes).
    os.fchmod(fd, modes.applied_mode(Kind.FILE, record.mode))
    os.utime(fd, ns=(record.mtime_ns, record.mtime_ns))


def _set_metadata(target: _Target, record: Record, expected: LocalState) -> LocalState:
    """:func:`apply_metadata`, in a worker thread: the file is opened without following a
    link and checked against ``expected`` on the open descriptor, so what is changed is the
    file that was checked."""
    _check(target, expected)
    with _naming(target.path):
        fd = os.open(target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=target.fd)
    try:
        st = os.fstat(fd)
        if not _same(expected, st):
            raise _changed(target.path, expected, st)
        _set_mode_and_mtime(fd, record)
        os.fsync(fd)
        return LocalFile.from_stat(os.fstat(fd))
    finally:
        os.close(fd)


# -- putting entries in place ---------------------------------------------------------------


def _place_file(
    target: _Target,
    temp: str,
    expected: LocalState | None,
    versions: bool,
    clock_ns: Callable[[], int],
    *,
    sync_directory: bool = True,
) -> LocalState:
    st = _check(target, expected)
    if st is None:
        _put_new(target, temp)
    elif stat.S_ISDIR(st.st_mode):
        _remove_directory(target)
        _put_new(target, temp)
    else:
        if versions and stat.S_ISREG(st.st_mode):
            _keep_version(target, expected, clock_ns(), move=False)
        with _naming(target.path):
            os.replace(temp, target.name, src_dir_fd=target.fd, dst_dir_fd=target.fd)
    if sync_directory:  # else the caller does, once for several files
        os.fsync(target.fd)
    return LocalFile.from_stat(os.stat(target.name, dir_fd=target.fd, follow_symlinks=False))


def _put_new(target: _Target, temp: str) -> None:
    """Give the finished temporary file the target's name, only if that name is still free.

    A hard link fails if anything appeared at the target since the check, where a rename
    would silently replace it.
    """
    try:
        with _naming(target.path):
            os.link(
                temp,
                target.name,
                src_dir_fd=target.fd,
                dst_dir_fd=target.fd,
                follow_symlinks=False,
            )
    except FileExistsError as exc:
        raise _changed(target.path, None, _lstat(target.fd, target.name)) from exc
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # No hard links here: the check just made is the last word.
        with _naming(target.path):
            os.rename(temp, target.name, src_dir_fd=target.fd, dst_dir_fd=target.fd)
        return
    os.unlink(temp, dir_fd=target.fd)


def _remove_directory(target: _Target) -> None:
    try:
        os.rmdir(target.name, dir_fd=target.fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise DirectoryNotEmptyError(
            f"the directory {target.path!r} still holds entries the index does not know about "
            "(yet); it is left in place, and they will be scanned and synced",
            target.path,
        ) from exc


def _place_directory(
    target: _Target,
    record: Record,
    expected: LocalState | None,
    versions: bool,
    clock_ns: Callable[[], int],
) -> LocalState:
    st = _check(target, expected)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        if versions and stat.S_ISREG(st.st_mode):
            _keep_version(target, expected, clock_ns(), move=True)
        else:
            os.unlink(target.name, dir_fd=target.fd)
        st = None
    if st is None:
        try:
            with _naming(target.path):
                os.mkdir(target.name, 0o700, dir_fd=target.fd)
        except FileExistsError as exc:
            raise _changed(target.path, None, _lstat(target.fd, target.name)) from exc
    try:
        fd = os.open(target.name, _DIR_FLAGS, dir_fd=target.fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
            raise
        raise _changed(target.path, expected, _lstat(target.fd, target.name)) from exc
    try:
        os.fchmod(fd, modes.applied_mode(Kind.DIRECTORY, record.mode))
        state = LocalFile.from_stat(os.fstat(fd))
    finally:
        os.close(fd)
    os.fsync(target.fd)
    return state


def _place_symlink(
    target: _Target,
    record: Record,
    expected: LocalState | None,
    versions: bool,
    clock_ns: Callable[[], int],
) -> LocalState:
    st = _check(target, expected)
    if st is None or stat.S_ISDIR(st.st_mode):
        if st is not None:
            _remove_directory(target)
        try:
            with _naming(target.path):
                os.symlink(record.symlink_target, target.name, dir_fd=target.fd)
        except FileExistsError as exc:
            raise _changed(target.path, None, _lstat(target.fd, target.name)) from exc
    else:
        temp = _fit_temp_name(target.name, record.content_digest())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=target.fd)
        with _naming(target.path):
            os.symlink(record.symlink_target, temp, dir_fd=target.fd)
        if versions and stat.S_ISREG(st.st_mode):
            _keep_version(target, expected, clock_ns(), move=False)
        os.replace(temp, target.name, src_dir_fd=target.fd, dst_dir_fd=target.fd)
    if os.utime in os.supports_follow_symlinks:
        os.utime(
            target.name,
            ns=(record.mtime_ns, record.mtime_ns),
            dir_fd=target.fd,
            follow_symlinks=False,
        )
    os.fsync(target.fd)
    return LocalFile.from_stat(os.stat(target.name, dir_fd=target.fd, follow_symlinks=False))


def _delete(
    target: _Target, expected: LocalState | None, versions: bool, clock_ns: Callable[[], int]
) -> None:
    with _naming(target.path):
        st = _lstat(target.fd, target.name)
    if st is None:
        return  # already gone, whatever the scan saw: the tombstone is satisfied
    if not _same(expected, st):
        raise _changed(target.path, expected, st)
    if stat.S_ISDIR(st.st_mode):
        _remove_directory(target)
    elif versions and stat.S_ISREG(st.st_mode):
        _keep_version(target, expected, clock_ns(), move=True, why=_DELETED)
    else:
        os.unlink(target.name, dir_fd=target.fd)
    os.fsync(target.fd)


def _set_aside(target: _Target, clock_ns: Callable[[], int]) -> str | None:
    with _naming(target.path):
        st = _lstat(target.fd, target.name)
    if st is None:
        return None
    kept = None
    if stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(DirectoryNotEmptyError):
            _remove_directory(target)
    else:
        kept = _keep_version(target, LocalFile.from_stat(st), clock_ns(), move=True, why=_SET_ASIDE)
    os.fsync(target.fd)
    return kept


def _move_to_copy(source: _Target, copy: _Target, expected: LocalState) -> LocalState:
    _check(source, expected)
    if _lstat(copy.fd, copy.name) is not None:
        raise ConflictCopyExistsError(
            f"{copy.path!r} already exists, so {source.path!r} cannot be kept there as a "
            "conflict copy; nothing was moved: rename or remove it"
        )
    with _naming(copy.path):
        os.rename(source.name, copy.name, src_dir_fd=source.fd, dst_dir_fd=copy.fd)
    st = os.stat(copy.name, dir_fd=copy.fd, follow_symlinks=False)
    if not _same(expected, st):
        # Something else was renamed in at the last moment: put it back if the name is free.
        with contextlib.suppress(OSError):
            os.link(copy.name, source.name, src_dir_fd=copy.fd, dst_dir_fd=source.fd,
                    follow_symlinks=False)  # fmt: skip
            os.unlink(copy.name, dir_fd=copy.fd)
        raise _changed(source.path, expected, st)
    os.fsync(copy.fd)
    if not os.path.samestat(os.fstat(copy.fd), os.fstat(source.fd)):
        os.fsync(source.fd)
    return LocalFile.from_stat(st)


def _unlink_if_present(dir_fd: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
