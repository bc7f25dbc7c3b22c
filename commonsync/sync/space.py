"""Free disk space: the reserve a folder keeps on its file system, checked before writing.

A record says how large its file is, and one chunk may be listed many times: a member can
make a device write far more than it sent (one 4 MiB chunk listed 380,000 times is a
1.5 TiB file). Such a file, like any legitimate one, is written only if the file system has
room for it and still keeps :class:`MinFree` free (by default 1 % of its size, as
Syncthing's ``minDiskFree``); else it waits, with :class:`InsufficientSpaceError` saying how
much it needs, and is tried again when space returns. Space is checked before a file is
started and before each chunk is written (others may fill the disk meanwhile), on the file
system of the file's own directory (a folder may span mounts).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InsufficientSpaceError

__all__ = [
    "DEFAULT_MIN_FREE",
    "DiskReserve",
    "InsufficientSpaceError",
    "MinFree",
    "SpaceProbe",
    "statvfs_probe",
]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|[kmgt]i?b|b)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MinFree:
    """Free space to keep on a file system: a share of its size, or a number of bytes
    (whichever is larger when both are given)."""

    share: float = 0.01
    bytes: int = 0

    @classmethod
    def parse(cls, text: str | int | float) -> MinFree:
        """``"1%"``, ``"0.5 %"``, ``"10 GB"``, ``"500MiB"``, or a number of bytes (``0``: no
        reserve). Raises ValueError with a message a person can act on."""
        if isinstance(text, bool):
            raise ValueError(f"min_free must be a size or a percentage, not {text!r}")
        if isinstance(text, int | float):
            if text < 0 or not math.isfinite(text):
                raise ValueError(f"min_free must not be negative ({text!r})")
            return cls(share=0.0, bytes=int(text))
        match = _AMOUNT.match(text)
        if match is None:
            raise ValueError(
                f'min_free {text!r} is not a size or a percentage; write it like "1%" or "10 GB"'
            )
        number, unit = float(match[1]), (match[2] or "").lower()
        if unit == "%":
            if number > 100:
                raise ValueError(f"min_free {text!r} is more than 100 %")
            return cls(share=number / 100, bytes=0)
        return cls(share=0.0, bytes=int(number * _UNITS[unit]))

    def of(self, total: int) -> int:
        """The bytes to keep free on a file system of ``total`` bytes."""
        return max(self.bytes, int(total * self.share))

    def __str__(self) -> str:
        if self.share and not self.bytes:
            return f"{self.share * 100:g}%"
        if self.bytes and not self.share:
            return f"{self.bytes} B"
        if not self.share and not self.bytes:
            return "0"
        return f"{self.share * 100:g}% or {self.bytes} B"


DEFAULT_MIN_FREE = MinFree()

#: The free space (bytes available to this process) and the total size of the file system
#: holding an open file descriptor. Injectable, for tests and for file systems that lie.
SpaceProbe = Callable[[int], tuple[int, int]]


def statvfs_probe(fd: int) -> tuple[int, int]:
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


@dataclass(frozen=True)
class DiskReserve:
    """The reserve to keep (:class:`MinFree`) and how free space is measured."""

    min_free: MinFree = DEFAULT_MIN_FREE
    probe: SpaceProbe = field(default=statvfs_probe, compare=False)

    def room(self, fd: int) -> int:
        """Bytes that may still be written on ``fd``'s file system (negative: already
        below the reserve). Blocks (a system call): call it from a worker thread."""
        free, total = self.probe(fd)
        return free - self.min_free.of(total)

    def room_at(self, directory: Path) -> int:
        """:meth:`room` on the file system of ``directory`` (in a worker thread)."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self.room(fd)
        finally:
            os.close(fd)

    def check(self, fd: int, needed: int, path: str) -> None:
        """Raise :class:`InsufficientSpaceError` unless ``needed`` more bytes fit on the file
        system of ``fd`` with the reserve kept (in a worker thread)."""
        if needed > 0:
            self.check_room(self.room(fd), needed, path)

    def check_room(self, room: int, needed: int, path: str) -> None:
        """:meth:`check` against a ``room`` measured already."""
        if needed > room:
            raise InsufficientSpaceError(
                f"{path!r} needs {_size(needed)} more, and only {_size(max(0, room))} can be "
                f"written while keeping {self.min_free} of the disk free; it waits until "
                "space is freed (or min_free is lowered)",
                needed=needed,
                free=max(0, room),
            )


def _size(n: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
