"""Which paths of a folder are not synced: the engine's own, and those ``.csignore`` names.

``.csignore`` at the folder root uses gitignore syntax (through ``pathspec``'s
``GitIgnoreSpec``, which follows Git's own edge cases), one pattern a line, matched against
folder-relative ``/``-separated paths in Unicode NFC:

- ``#`` starts a comment, blank lines are skipped, trailing spaces are dropped (``\\ `` keeps
  one), ``\\#`` and ``\\!`` match a literal ``#`` or ``!``;
- a pattern with no ``/`` except a trailing one matches a name at any depth (``*.log``); a
  pattern with a ``/`` at the start or in the middle is anchored at the folder root
  (``/build``, ``docs/*.pdf``); ``**`` matches any number of directories;
- a trailing ``/`` matches directories only (``cache/``);
- ``!`` re-includes what an earlier pattern excluded, the last matching pattern deciding; but,
  as in Git, nothing can be re-included below an excluded directory: the scanner does not even
  look inside one, so :meth:`IgnoreRules.ignores` says the same about every path below it.

Patterns are normalised to NFC like paths, so that a pattern typed on a system that writes
decomposed Unicode still matches. ``.csignore`` itself is an ordinary file: it is synced, like
a ``.gitignore``, unless it names itself. The engine's internal paths
(:func:`commonsync.sync.layout.is_internal`: the ``.commonsync/`` directory and temporary files) are
always ignored, whatever the patterns say, and cannot be re-included.

What ignoring means to the scanner: an ignored path is never recorded, and an indexed path that
is now ignored is left as it is, never turned into a deletion.

Rules for this device only (selective sync: no videos on the phone) are in
:data:`LOCAL_FILE`, ``.commonsync/ignore-local``, with the same syntax. It is never synced (the
``.commonsync/`` directory never is) and only adds to what ``.csignore`` ignores: a ``!`` there
re-includes nothing ``.csignore`` keeps out, since that would publish what the folder's members
agreed to keep out. A path either file ignores is neither published nor turned into a deletion
by scans; a path this device's rules ignore is not written either
(:class:`commonsync.sync.folder.Folder` keeps the versions peers announce in its index, not on
disk, and fetches them when the rule goes).

``.csignore`` is synced, so a peer chooses what lands there: it is read without following a
symlink, only if it is a regular file (never a FIFO or a device, which could block the reader),
and only up to :data:`MAX_IGNORE_FILE_SIZE`. :meth:`IgnoreRules.load` raises
:class:`IgnoreFileError` for a rule file it cannot use; :class:`FolderRules` (what
:class:`commonsync.Folder` scans with) keeps using the last good rules instead, so that a broken
rule file neither stops the folder publishing its other changes nor publishes what the rules
kept out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pathspec import GitIgnoreSpec

from ..errors import IgnoreFileError
from ..formats import paths
from . import layout
from .beneath import DirectoryChain

IGNORE_FILE = ".csignore"
#: A larger ``.csignore`` is refused: it is read whole, compiled, and matched against every
#: path of every scan, and no sensible list of patterns comes near this (SPEC.md §13).
MAX_IGNORE_FILE_SIZE = 64 * 1024
#: Where a folder keeps a copy of the last ``.csignore`` it could use (never synced), so that
#: a rule file broken while the daemon was stopped still falls back to the last good rules.
LAST_GOOD_FILE = f"{layout.METADATA_DIR}/last-good.csignore"
#: This device's own rules for the folder (never synced): what it neither publishes nor
#: writes, whatever the other devices do.
LOCAL_FILE = f"{layout.METADATA_DIR}/ignore-local"


class IgnoreRules:
    """Compiled ignore patterns for one folder; immutable, safe to share between threads."""

    def __init__(self, patterns: Iterable[str] = (), *, source: str = "patterns") -> None:
        """Compile ``patterns`` (lines of a ``.csignore``); ``source`` names them in errors.

        Raises :class:`IgnoreFileError` naming the first line that is not a valid pattern.
        """
        lines = [unicodedata.normalize("NFC", line) for line in patterns]
        for number, line in enumerate(lines, start=1):
            # Compiled one by one first, only to say which line is wrong.
            try:
                GitIgnoreSpec.from_lines([line])
            except (ValueError, re.error) as exc:
                raise IgnoreFileError(
                    f"{source}, line {number}: {line!r} is not a valid pattern ({exc}); "
                    "correct or remove that line"
                ) from exc
        self.patterns: tuple[str, ...] = tuple(lines)
        self._spec = GitIgnoreSpec.from_lines(lines)
        self._empty = all(p.include is None for p in self._spec.patterns)
        #: Rules that ignore paths as well (this device's own, :meth:`also`).
        self._also: IgnoreRules | None = None

    def also(self, other: IgnoreRules) -> IgnoreRules:
        """These rules, and ``other`` too: a path is ignored if either set ignores it (so
        ``other`` cannot re-include what these exclude)."""
        if other._empty:
            return self
        both = IgnoreRules(self.patterns)
        both._also = other
        return both

    @classmethod
    def load(cls, root: Path) -> IgnoreRules:
        """The rules of the folder at ``root``: its ``.csignore`` if there is one, else none.

        A ``.csignore`` that cannot be read, is a symlink or not a regular file, is too large,
        is not UTF-8 or holds an invalid pattern raises :class:`IgnoreFileError`: scanning
        with half the rules would record files the user meant to keep out, and that cannot be
        taken back. Blocking (file I/O): call it from a worker thread.
        """
        data = read_rule_file(Path(root), IGNORE_FILE)
        return cls() if data is None else cls.parse(data, source=str(Path(root) / IGNORE_FILE))

    @classmethod
    def parse(cls, data: bytes, *, source: str) -> IgnoreRules:
        """The rules in ``data``, the bytes of a rule file (``source`` names it in errors)."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise IgnoreFileError(
                f"{source}, line {line}: not valid UTF-8; save the file as UTF-8"
            ) from exc
        return cls(text.splitlines(), source=source)

    def matches(self, path: str, is_dir: bool) -> bool:
        """Whether ``path`` itself is ignored, its parent directories being known not to be.

        For walkers that never enter an ignored directory (the scanner); anyone else asks
        :meth:`ignores`. ``path`` is a valid folder-relative path (not checked here).
        """
        if layout.is_internal(path):
            return True
        if self._also is not None and self._also.matches(path, is_dir):
            return True
        if self._empty:
            return False
        return self._spec.match_file(path + "/" if is_dir else path)

    def ignores(self, path: str, is_dir: bool) -> bool:
        """Whether ``path`` (``is_dir``: a directory) is ignored, by itself or because a
        directory above it is. Raises :class:`~commonsync.errors.InvalidPathError` for a path
        that is not a valid folder-relative path."""
        paths.validate(path)
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if self.matches("/".join(parts[:depth]), True):
                return True
        return self.matches(path, is_dir)

    def __repr__(self) -> str:
        return f"IgnoreRules({list(self.patterns)!r})"


def read_rule_file(root: Path, path: str) -> bytes | None:
    """The bytes of the rule file at ``path`` below ``root``, or None if there is none.

    Never follows a symlink (at any component), never opens anything but a regular file
    (a FIFO or a device could block the reader for ever), never reads more than
    :data:`MAX_IGNORE_FILE_SIZE` bytes: a peer chose what is there. Raises
    :class:`IgnoreFileError` with what to do about it. Blocking: call it from a worker thread.
    """
    shown = root / path
    try:
        chain = DirectoryChain.at(root)
    except OSError as exc:
        raise IgnoreFileError(f"cannot read {shown}: {exc.strerror or exc}") from exc
    with chain:
        try:
            # O_NONBLOCK: should a FIFO slip in between the open and the check, opening it
            # does not wait for a writer.
            fd = chain.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise IgnoreFileError(
                    f"cannot read {shown}: it is a symlink (or below one), and commonsync "
                    "never follows one for its rules; make it a regular file"
                ) from exc
            raise IgnoreFileError(f"cannot read {shown}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IgnoreFileError(
                f"cannot read {shown}: it is {_kind(st.st_mode)}, not a regular file; make "
                "it a regular file"
            )
        if st.st_size > MAX_IGNORE_FILE_SIZE:
            raise IgnoreFileError(_too_large(shown))
        data = b""
        while chunk := os.read(fd, MAX_IGNORE_FILE_SIZE + 1 - len(data)):
            data += chunk
            if len(data) > MAX_IGNORE_FILE_SIZE:
                raise IgnoreFileError(_too_large(shown))
        return data
    except OSError as exc:
        raise IgnoreFileError(f"cannot read {shown}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _too_large(shown: Path) -> str:
    return (
        f"{shown} is larger than the {MAX_IGNORE_FILE_SIZE // 1024} KiB a rule file may hold; "
        "shorten it"
    )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


@dataclass(frozen=True)
class RulesInUse:
    """The rules a scan uses, and why they are not the folder's ``.csignore`` if they are not:
    ``error`` says what is wrong with it; the rules are then the last good ones if
    ``last_good``, else none."""

    rules: IgnoreRules
    error: IgnoreFileError | None = None
    last_good: bool = False
    #: This device's own rules alone (:data:`LOCAL_FILE`), already part of :attr:`rules`.
    local: IgnoreRules = field(default_factory=IgnoreRules)
    #: What is wrong with :data:`LOCAL_FILE` ("" if nothing; its last good rules apply).
    local_error: str = ""

    @property
    def problem(self) -> str:
        """One sentence for a person: what is wrong, what to do, and what applies meanwhile
        ("" if all is well)."""
        if self.error is None:
            return self.local_error
        meanwhile = "the last rules that could be used" if self.last_good else "no rules"
        problem = f"{self.error} (until then, {meanwhile} apply)"
        return f"{problem}; {self.local_error}" if self.local_error else problem


class FolderRules:
    """The ignore rules of one folder as its scans use them: its ``.csignore`` when it can be
    used, else the last rules that could (kept in memory and in :data:`LAST_GOOD_FILE`), else
    none. A broken rule file thus never stops a folder publishing its other changes, and
    never makes it publish what the rules kept out. Thread-safe; :meth:`load` blocks.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        #: The last usable rule file's bytes and rules (None: not known yet).
        self._good: tuple[bytes, IgnoreRules] | None = None
        #: The same for this device's own rules (:data:`LOCAL_FILE`).
        self._local: tuple[bytes, IgnoreRules] = (b"", IgnoreRules())

    def load(self) -> RulesInUse:
        """Read the ``.csignore`` and this device's rules again (compiling each only if it
        changed): the shared rules with this device's added."""
        shared = self._load_shared()
        local_error = ""
        with self._lock:
            try:
                data = read_rule_file(self.root, LOCAL_FILE) or b""
                if data != self._local[0]:
                    source = str(self.root / LOCAL_FILE)
                    self._local = (data, IgnoreRules.parse(data, source=source))
            except IgnoreFileError as error:
                local_error = (
                    f"{error} (until then, the last rules of this device that could be used apply)"
                )
            local = self._local[1]
        return RulesInUse(
            shared.rules.also(local), shared.error, shared.last_good, local, local_error
        )

    def _load_shared(self) -> RulesInUse:
        with self._lock:
            try:
                data = read_rule_file(self.root, IGNORE_FILE) or b""
                if self._good is not None and self._good[0] == data:
                    return RulesInUse(self._good[1])
                rules = IgnoreRules.parse(data, source=str(self.root / IGNORE_FILE))
            except IgnoreFileError as error:
                if self._good is None:
                    self._good = self._saved()
                if self._good is None:
                    return RulesInUse(IgnoreRules(), error)
                return RulesInUse(self._good[1], error, last_good=True)
            previous, self._good = self._good, (data, rules)
            if previous is None and self._saved_bytes() == data:
                return RulesInUse(rules)
            self._save(data)
            return RulesInUse(rules)

    def _saved(self) -> tuple[bytes, IgnoreRules] | None:
        data = self._saved_bytes()
        if data is None:
            return None
        try:
            return data, IgnoreRules.parse(data, source=str(self.root / LAST_GOOD_FILE))
        except IgnoreFileError:
            return None

    def _saved_bytes(self) -> bytes | None:
        try:
            return read_rule_file(self.root, LAST_GOOD_FILE)
        except IgnoreFileError:
            return None

    def _save(self, data: bytes) -> None:
        """Keep ``data`` as the last good rules, written whole then renamed into place. Best
        effort: without the copy, only a restart with a broken rule file loses them."""
        directory, _, name = LAST_GOOD_FILE.rpartition("/")
        with contextlib.suppress(OSError), DirectoryChain.at(self.root) as chain:
            _replace_whole(chain.directory(directory), name, data, 0o600)


# -- editing the rule files (``commonsync ignore add/remove``) -------------------------------


@dataclass(frozen=True)
class RuleLists:
    """A folder's patterns as its rule files hold them: ``folder`` in ``.csignore`` (for
    every device), ``this_device`` in :data:`LOCAL_FILE`."""

    folder: tuple[str, ...]
    this_device: tuple[str, ...]


def list_rules(root: Path) -> RuleLists:
    """The patterns of both rule files (comments and blank lines left out). Raises
    :class:`IgnoreFileError` for a file that cannot be read. Blocking."""
    return RuleLists(
        _patterns(read_rule_file(root, IGNORE_FILE)),
        _patterns(read_rule_file(root, LOCAL_FILE)),
    )


def add_rule(root: Path, pattern: str, *, this_device: bool) -> bool:
    """Append ``pattern`` to ``.csignore`` (or, ``this_device``, to :data:`LOCAL_FILE`);
    False if it is there already. Raises :class:`IgnoreFileError` for a pattern that is not
    one line of valid gitignore syntax, or a rule file that cannot be read or written: the
    file is replaced whole (written beside it, then renamed), never half written. Blocking."""
    pattern = _one_pattern(pattern)
    path = LOCAL_FILE if this_device else IGNORE_FILE
    data = read_rule_file(root, path) or b""
    lines = data.decode("utf-8-sig", errors="replace").splitlines()
    if pattern in (unicodedata.normalize("NFC", line.rstrip()) for line in lines):
        return False
    text = "\n".join([*lines, pattern]) + "\n"
    IgnoreRules.parse(text.encode(), source=str(root / path))  # the whole file still compiles
    write_rule_file(root, path, text.encode())
    return True


def remove_rule(root: Path, pattern: str, *, this_device: bool) -> bool:
    """Remove every line that is ``pattern`` from ``.csignore`` (or :data:`LOCAL_FILE`);
    False if there is none. Comments and other lines stay as they were. Blocking."""
    pattern = _one_pattern(pattern)
    path = LOCAL_FILE if this_device else IGNORE_FILE
    data = read_rule_file(root, path)
    if data is None:
        return False
    lines = data.decode("utf-8-sig", errors="replace").splitlines()
    kept = [line for line in lines if unicodedata.normalize("NFC", line.rstrip()) != pattern]
    if len(kept) == len(lines):
        return False
    write_rule_file(root, path, ("\n".join(kept) + "\n" if kept else "").encode())
    return True


def _one_pattern(pattern: str) -> str:
    pattern = unicodedata.normalize("NFC", pattern.strip())
    if not pattern or "\n" in pattern or "\r" in pattern or pattern.startswith("#"):
        raise IgnoreFileError(
            f"{pattern!r} is not a pattern: give one line of gitignore syntax, like *.mp4 or "
            "/videos/"
        )
    IgnoreRules([pattern], source="the pattern")
    return pattern


def _patterns(data: bytes | None) -> tuple[str, ...]:
    if not data:
        return ()
    lines = data.decode("utf-8-sig", errors="replace").splitlines()
    return tuple(
        line.rstrip() for line in lines if line.strip() and not line.lstrip().startswith("#")
    )


def write_rule_file(root: Path, path: str, data: bytes) -> None:
    """Put ``data`` at ``path`` below ``root`` (its directory made if missing, for
    :data:`LOCAL_FILE`): written whole to a temporary file, then renamed into place, never
    following a symlink. Raises :class:`IgnoreFileError` saying what failed. Blocking."""
    directory, _, name = path.rpartition("/")
    shown = Path(root) / path
    try:
        with DirectoryChain.at(root) as chain:
            if directory:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, 0o700, dir_fd=chain.directory(""))
            _replace_whole(chain.directory(directory), name, data, 0o644)
    except OSError as exc:
        raise IgnoreFileError(f"cannot write {shown}: {exc.strerror or exc}") from exc


def _replace_whole(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    """Put ``data`` at ``name`` in the directory ``dir_fd``: written whole to a temporary
    file, synced, then renamed into place (never through a symlink), so that a crash leaves
    the old file or the new one. Blocking."""
    temp = layout.temp_name(name)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        os.unlink(temp, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)
