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
(:func:`commonsync.layout.is_internal`: the ``.commonsync/`` directory and temporary files) are
always ignored, whatever the patterns say, and cannot be re-included.

What ignoring means to the scanner: an ignored path is never recorded, and an indexed path that
is now ignored is left as it is, never turned into a deletion.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from pathspec import GitIgnoreSpec

from . import layout, paths
from .errors import IgnoreFileError

IGNORE_FILE = ".csignore"
#: A larger ``.csignore`` is refused: it would be read whole into memory, and no sensible
#: list of patterns comes near this.
MAX_IGNORE_FILE_SIZE = 1024 * 1024


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
                    f"{source}, line {number}: {line!r} is not a valid pattern ({exc})"
                ) from exc
        self.patterns: tuple[str, ...] = tuple(lines)
        self._spec = GitIgnoreSpec.from_lines(lines)
        self._empty = all(p.include is None for p in self._spec.patterns)

    @classmethod
    def load(cls, root: Path) -> IgnoreRules:
        """The rules of the folder at ``root``: its ``.csignore`` if there is one, else none.

        A ``.csignore`` that cannot be read, is not UTF-8, is too large or holds an invalid
        pattern raises :class:`IgnoreFileError`: scanning with half the rules would record
        files the user meant to keep out, and that cannot be taken back.
        """
        path = Path(root) / IGNORE_FILE
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_IGNORE_FILE_SIZE + 1)
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise IgnoreFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if len(data) > MAX_IGNORE_FILE_SIZE:
            raise IgnoreFileError(f"{path} is larger than {MAX_IGNORE_FILE_SIZE} bytes")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise IgnoreFileError(f"{path}, line {line}: not valid UTF-8") from exc
        return cls(text.splitlines(), source=str(path))

    def matches(self, path: str, is_dir: bool) -> bool:
        """Whether ``path`` itself is ignored, its parent directories being known not to be.

        For walkers that never enter an ignored directory (the scanner); anyone else asks
        :meth:`ignores`. ``path`` is a valid folder-relative path (not checked here).
        """
        if layout.is_internal(path):
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
