"""Old versions and conflict copies on disk: listing them, restoring, resolving, pruning.

:mod:`commonsync.sync.versions` keeps what the applier replaces; this module is what a person
does with it afterwards. Each operation is file work below a folder's root, done the way the
applier does it (:mod:`commonsync.sync.target`): every path is reached one component at a time
without following a symlink, so a link a peer put in the folder cannot lead a restore outside
it, and nothing is ever lost: whatever a restore or a resolution replaces goes to the versions
folder first (:func:`commonsync.sync.versions.keep_version`).

None of this publishes anything: the caller scans the folder afterwards, so that a restored
file or a resolved conflict becomes a new version through the normal scan, like any edit a
person makes, and reaches the other devices.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from ..errors import (
    CommonsyncError,
    InvalidPathError,
    InvalidRequestError,
    NotFoundError,
    RequestConflictError,
)
from ..formats import paths
from . import layout
from .beneath import lstat_at as _lstat
from .beneath import open_root as _open_root
from .beneath import walk as _walk
from .retention import KeptVersion
from .store import LocalFile
from .target import NO_HARD_LINKS as _NO_HARD_LINKS
from .target import Target as _Target
from .target import locate as _locate
from .target import run as _run
from .versions import WHY_FILE, keep_version, read_why

__all__ = [
    "ConflictCopy",
    "Keep",
    "VersionEntry",
    "both_name",
    "conflict_original",
    "delete_versions",
    "find_conflicts",
    "list_versions",
    "relative_path",
    "resolve_conflict",
    "restore_version",
]

RESTORED = "replaced by a restore"
SET_ASIDE = "conflict copy set aside: the other version was kept"
REPLACED_BY_COPY = "replaced by its conflict copy"

_SECOND_NS = 1_000_000_000
#: ``<stem>~YYYYMMDD-HHMMSS<ext>``, as :func:`commonsync.sync.layout.version_name` names a
#: kept version.
_KEPT = re.compile(r"^(.*)~(\d{8}-\d{6})(\.[^.]*)?$", re.DOTALL)
#: A conflict copy's name, split around its mark (SPEC.md §13, "Conflict names").
_COPY = re.compile(r"^(.*)\.sync-conflict-(\d{8})-(\d{6})-([A-Z2-7]{7})(.*)$", re.ASCII | re.DOTALL)
#: Names tried for a conflict copy kept beside its file (``--keep both``).
_BOTH_TRIES = 100


class Keep(enum.Enum):
    """How a conflict is resolved."""

    #: The file at the path stays; the conflict copy goes to the versions folder.
    MINE = "mine"
    #: The conflict copy replaces the file (which goes to the versions folder).
    THEIRS = "theirs"
    #: Both stay: the copy is renamed to a plain name beside the file.
    BOTH = "both"


@dataclass(frozen=True)
class VersionEntry:
    """A kept version: where it was in the folder, its name under the versions folder, when
    it was kept, its size and why (``""`` when nothing noted it)."""

    path: str
    name: str
    time_ns: int
    size: int
    why: str

    @property
    def kept(self) -> KeptVersion:
        return KeptVersion(self.path, self.name, self.time_ns, self.size)


@dataclass(frozen=True)
class ConflictCopy:
    """A conflict copy on disk: its path, the path of the file it is a copy of, the tag its
    name carries, when the losing version was written, its size, and whether the file it
    conflicts with is still there.

    The tag is 7 base32 characters of the losing content (SPEC.md §13, "Conflict names"), or,
    for a copy this implementation made of a local change caught while a remote version was
    written over it, or one named before tags, a device's short ID: the name alone does not
    say which, so it is no device. (The device that recorded the copy is in the index, not
    in the name: :func:`commonsync.node.history.conflicts`.)"""

    path: str
    original: str
    tag: str
    time_ns: int
    size: int
    original_exists: bool


def relative_path(root: Path, path: str, cwd: str | None = None) -> str:
    """``path`` as a folder-relative ``/`` path: given relative to the folder, or absolute
    and inside it; relative to ``cwd`` when that is a directory inside the folder (a person
    who is in ``docs/`` of the folder means ``docs/report.pdf`` by ``report.pdf``).
    :class:`InvalidRequestError` for a path outside the folder or into commonsync's own
    files."""
    text = path.strip()
    if not os.path.isabs(text) and cwd and os.path.isabs(cwd):
        here = Path(os.path.abspath(cwd))
        if here.is_relative_to(Path(os.path.abspath(root))):
            text = os.path.join(here, text)
    if os.path.isabs(text):
        absolute = Path(os.path.abspath(text))
        base = Path(os.path.abspath(root))
        if absolute == base or not absolute.is_relative_to(base):
            raise InvalidRequestError(
                f"{text} is outside the folder (at {base})",
                hint="give a path inside the folder, or relative to it",
            )
        text = absolute.relative_to(base).as_posix()
    text = text.strip("/")
    if text.startswith("./"):
        text = text[2:]
    try:
        paths.validate(text)
    except InvalidPathError as exc:
        raise InvalidRequestError(
            f"{text!r} is not a path inside the folder: {exc}",
            hint="give it relative to the folder's root, like docs/report.pdf",
        ) from None
    if layout.reaches_internal(text):
        raise InvalidRequestError(
            f"{text!r} is one of commonsync's own files, not a file of the folder",
            hint="give the path the file had in the folder, like docs/report.pdf",
        )
    return text


# -- versions ---------------------------------------------------------------------------------


async def list_versions(root: Path) -> list[VersionEntry]:
    """Every kept version of the folder at ``root``, oldest first."""
    return await _run(root, layout.VERSIONS_DIR, partial(_list_versions, root))


def _list_versions(root: Path) -> list[VersionEntry]:
    root_fd = _open_root(root)
    try:
        versions_fd = _open_dir(root_fd, root, layout.VERSIONS_DIR)
        if versions_fd is None:
            return []
        try:
            reasons = read_why(root_fd, root)
            found = []
            for dirpath, _dirs, files, dir_fd in os.fwalk(".", dir_fd=versions_fd):
                prefix = "" if dirpath == "." else dirpath.removeprefix("./") + "/"
                for leaf in files:
                    st = _lstat(dir_fd, leaf)
                    if st is None or not stat.S_ISREG(st.st_mode):
                        continue
                    name = prefix + leaf
                    path, when = _kept_path(name)
                    found.append(
                        VersionEntry(
                            path,
                            name,
                            st.st_mtime_ns if when is None else when,
                            st.st_size,
                            reasons.get(name, ""),
                        )
                    )
        finally:
            os.close(versions_fd)
    finally:
        os.close(root_fd)
    found.sort(key=lambda v: (v.time_ns, v.name))
    return found


def _kept_path(name: str) -> tuple[str, int | None]:
    """The folder path a kept version had, and when it was kept, from its name."""
    parent, _, leaf = name.rpartition("/")
    match = _KEPT.match(leaf)
    if match is None:
        return name, None
    try:
        moment = datetime.strptime(match[2], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return name, None
    original = match[1] + (match[3] or "")
    return (f"{parent}/{original}" if parent else original), int(moment.timestamp()) * _SECOND_NS


def _open_dir(root_fd: int, root: Path, path: str) -> int | None:
    """The directory ``path`` below the root, opened without following a symlink, if it
    exists (and is a directory)."""
    found = _walk(root_fd, root, f"{path}/.", create=False)
    if found is None:
        return None
    parent_fd, _ = found
    return parent_fd


async def restore_version(root: Path, version: VersionEntry, now_ns: int) -> str:
    """Put ``version`` back at its path: what is there now goes to the versions folder first
    (returns its name there, or ``""`` if nothing was there). The restored file's mtime is
    ``now_ns``: a restore is a new edit, the newest."""
    return await _run(root, version.path, partial(_restore, root, version, now_ns))


def _restore(root: Path, version: VersionEntry, now_ns: int) -> str:
    target = _locate(root, version.path, create=True)
    assert target is not None
    try:
        found = _walk(target.root_fd, root, f"{layout.VERSIONS_DIR}/{version.name}", create=False)
        st = None if found is None else _lstat(found[0], found[1])
        if found is None or st is None or not stat.S_ISREG(st.st_mode):
            if found is not None:
                os.close(found[0])
            raise NotFoundError(
                f"the version {version.name!r} is no longer in the versions folder",
                hint="`commonsync versions list` shows what is kept",
            )
        version_fd, leaf = found
        try:
            set_aside = _set_aside(target, now_ns, RESTORED)
            os.rename(leaf, target.name, src_dir_fd=version_fd, dst_dir_fd=target.fd)
            _touch(target, now_ns)
            os.fsync(version_fd)
        finally:
            os.close(version_fd)
        return set_aside
    finally:
        target.close()


def _set_aside(target: _Target, now_ns: int, why: str) -> str:
    """Keep the file at the target in the versions folder (hard-linked: it stays in place
    until replaced); its name there, or ``""`` if nothing is there. A directory or a link is
    not a file a version can replace: refused."""
    st = _lstat(target.fd, target.name)
    if st is None:
        return ""
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise RequestConflictError(
            f"{target.path!r} is {what} now; nothing was changed",
            hint="move it away first",
        )
    return keep_version(target, LocalFile.from_stat(st), now_ns, move=False, why=why)


def _touch(target: _Target, now_ns: int) -> None:
    os.utime(target.name, ns=(now_ns, now_ns), dir_fd=target.fd, follow_symlinks=False)
    os.fsync(target.fd)


async def delete_versions(root: Path, names: set[str]) -> int:
    """Delete the kept versions named ``names`` (their directories too, once empty) and
    forget why they (and versions no longer there) were kept; how many were deleted."""
    return await _run(root, layout.VERSIONS_DIR, partial(_delete_versions, root, names))


def _delete_versions(root: Path, names: set[str]) -> int:
    root_fd = _open_root(root)
    try:
        deleted = 0
        parents: set[str] = set()
        for name in names:
            found = _walk(root_fd, root, f"{layout.VERSIONS_DIR}/{name}", create=False)
            if found is None:
                continue
            parent_fd, leaf = found
            try:
                st = _lstat(parent_fd, leaf)
                if st is None or stat.S_ISDIR(st.st_mode):
                    continue
                os.unlink(leaf, dir_fd=parent_fd)
                deleted += 1
            finally:
                os.close(parent_fd)
            parent = name.rpartition("/")[0]
            while parent:
                parents.add(parent)
                parent = parent.rpartition("/")[0]
        for parent in sorted(parents, key=lambda p: p.count("/"), reverse=True):
            found = _walk(root_fd, root, f"{layout.VERSIONS_DIR}/{parent}", create=False)
            if found is None:
                continue
            with contextlib.suppress(OSError):  # not empty (or not a directory): it stays
                os.rmdir(found[1], dir_fd=found[0])
            os.close(found[0])
        _forget_why(root_fd, root, names)
        return deleted
    finally:
        os.close(root_fd)


def _forget_why(root_fd: int, root: Path, names: set[str]) -> None:
    """Rewrite :data:`WHY_FILE` without the lines of ``names`` nor of versions no longer
    there (restored, or removed by hand), so that it stays as long as the versions folder
    is; a temporary file renamed over it, so that it is never half written. A reason noted
    while this runs may be lost (never the version itself)."""
    reasons = read_why(root_fd, root)
    gone = {name for name in reasons if name in names or not _exists(root_fd, root, name)}
    if not gone:
        return
    found = _walk(root_fd, root, WHY_FILE, create=False)
    if found is None:
        return
    parent_fd, leaf = found
    try:
        temp = layout.temp_name(leaf)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=parent_fd)  # fmt: skip
        try:
            for name, why in reasons.items():
                if name not in gone:
                    line = json.dumps({"name": name, "why": why}, ensure_ascii=False) + "\n"
                    os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def _exists(root_fd: int, root: Path, name: str) -> bool:
    try:
        found = _walk(root_fd, root, f"{layout.VERSIONS_DIR}/{name}", create=False)
    except (OSError, CommonsyncError):
        return False
    if found is None:
        return False
    try:
        return _lstat(found[0], found[1]) is not None
    finally:
        os.close(found[0])


# -- conflicts --------------------------------------------------------------------------------


def conflict_original(path: str) -> tuple[str, str, int] | None:
    """For a conflict copy's path: the path of its file, the tag its name carries (see
    :class:`ConflictCopy`) and the losing version's mtime (ns); None if ``path`` is no
    conflict copy."""
    parent, _, leaf = path.rpartition("/")
    match = _COPY.match(leaf)
    if match is None:
        return None
    original = match[1] + match[5]
    try:
        moment = datetime.strptime(match[2] + match[3], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    when = int(moment.timestamp()) * _SECOND_NS
    return (f"{parent}/{original}" if parent else original), match[4], when


async def find_conflicts(root: Path) -> list[ConflictCopy]:
    """Every conflict copy in the folder (a walk of it that never enters a symlink)."""
    return await _run(root, "", partial(_find_conflicts, root))


def _find_conflicts(root: Path) -> list[ConflictCopy]:
    found = []
    for dirpath, dirs, files, dir_fd in os.fwalk(root):
        relative = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        if not prefix:
            dirs[:] = [d for d in dirs if d != layout.METADATA_DIR]
        for leaf in files:
            path = prefix + leaf
            about = conflict_original(path)
            if about is None or layout.is_internal(path):
                continue
            st = _lstat(dir_fd, leaf)
            if st is None or stat.S_ISDIR(st.st_mode):
                continue
            original, tag, when = about
            exists = _lstat(dir_fd, original.rpartition("/")[2]) is not None
            found.append(ConflictCopy(path, original, tag, when, st.st_size, exists))
    found.sort(key=lambda c: (c.original, c.path))
    return found


def both_name(copy: str, taken: set[str] | None = None, attempt: int = 1) -> str:
    """The plain name a conflict copy gets when both versions are kept: ``report (ZS5WX2N
    2026-12-07 10-30-00).pdf`` for ``report.sync-conflict-20261207-103000-ZS5WX2N.pdf``, the
    tag and time the copy's name carried, without the mark that makes it a conflict copy
    (then ``... 2``, ``... 3`` if that is taken). The tag stays: it is of the losing content,
    so that two copies made in the same second keep apart, and two devices that keep both of
    the same conflict give the copy one name."""
    parent, _, leaf = copy.rpartition("/")
    match = _COPY.match(leaf)
    if match is None:
        raise ValueError(f"{copy!r} is not a conflict copy")
    stem, day, clock, tag, ext = match.groups()
    when = f"{day[:4]}-{day[4:6]}-{day[6:]} {clock[:2]}-{clock[2:4]}-{clock[4:]}"
    suffix = "" if attempt == 1 else f" {attempt}"
    name = layout.fit(f"{stem} ({tag} {when}{suffix}){ext}", 0)
    return f"{parent}/{name}" if parent else name


async def resolve_conflict(root: Path, copy: str, keep: Keep, now_ns: int) -> dict[str, str]:
    """Resolve the conflict that the copy at ``copy`` stands for, keeping ``keep``; what
    happened, as ``{"kept": path, "versions": name under the versions folder, "renamed":
    new path}`` (the keys that apply)."""
    about = conflict_original(copy)
    if about is None:
        raise InvalidRequestError(f"{copy!r} is not a conflict copy")
    original = about[0]
    return await _run(root, copy, partial(_resolve, root, copy, original, keep, now_ns))


def _resolve(root: Path, copy: str, original: str, keep: Keep, now_ns: int) -> dict[str, str]:
    source = _locate(root, copy, create=False)
    st = None if source is None else _lstat(source.fd, source.name)
    if source is None or st is None or stat.S_ISDIR(st.st_mode):
        if source is not None:
            source.close()
        raise NotFoundError(
            f"the conflict copy {copy!r} is not there any more",
            hint="`commonsync conflicts list FOLDER` shows the conflict copies",
        )
    try:
        if keep is Keep.MINE:
            kept = keep_version(source, LocalFile.from_stat(st), now_ns, move=True, why=SET_ASIDE)
            os.fsync(source.fd)
            return {"kept": original, "versions": kept}
        if keep is Keep.THEIRS:
            target = _locate(root, original, create=True)
            assert target is not None
            try:
                set_aside = _set_aside(target, now_ns, REPLACED_BY_COPY)
                os.rename(source.name, target.name, src_dir_fd=source.fd, dst_dir_fd=target.fd)
                _touch(target, now_ns)
                os.fsync(source.fd)
            finally:
                target.close()
            return {"kept": original, "versions": set_aside}
        for attempt in range(1, _BOTH_TRIES + 1):
            renamed = both_name(copy, attempt=attempt)
            leaf = renamed.rpartition("/")[2]
            if _lstat(source.fd, leaf) is not None:
                continue
            if _rename_no_replace(source, leaf):
                os.fsync(source.fd)
                return {"kept": original, "renamed": renamed}
        raise RequestConflictError(
            f"no free name for the conflict copy {copy!r} beside {original!r}",
            hint="rename it yourself",
        )
    finally:
        source.close()


def _rename_no_replace(source: _Target, leaf: str) -> bool:
    """Rename the source to ``leaf`` in its directory only if nothing is there (a hard link
    fails where a rename would replace); False if the name was taken meanwhile."""
    try:
        os.link(source.name, leaf, src_dir_fd=source.fd, dst_dir_fd=source.fd,
                follow_symlinks=False)  # fmt: skip
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if _lstat(source.fd, leaf) is not None:
            return False
        os.rename(source.name, leaf, src_dir_fd=source.fd, dst_dir_fd=source.fd)
        return True
    os.unlink(source.name, dir_fd=source.fd)
    return True
