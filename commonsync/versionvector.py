"""Version vectors: which file versions descend from which.

A vector maps a device's short ID (64 bits) to a counter. ``a`` is BEFORE ``b`` when every
counter of ``a`` is at most the one in ``b`` and the vectors differ; two vectors neither before
nor after each other are CONCURRENT, which is what a conflict is.

Bumping sets our counter to ``max(old + 1, now_in_seconds)`` rather than ``old + 1``: after a
database wipe plain counters restart low and lose against stale versions (Syncthing #3876).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import EncodingError

MAX_ENTRIES = 1024
_U64 = 2**64 - 1


class Ordering(Enum):
    EQUAL = "equal"
    BEFORE = "before"
    AFTER = "after"
    CONCURRENT = "concurrent"


@dataclass(frozen=True, slots=True)
class VersionVector:
    """An immutable version vector; entries are ``(device_short_id, counter)``, sorted."""

    entries: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if len(self.entries) > MAX_ENTRIES:
            raise EncodingError(f"a version vector has at most {MAX_ENTRIES} entries")
        previous = -1
        for device, counter in self.entries:
            if not (0 <= device <= _U64 and 0 < counter <= _U64):
                raise EncodingError("version vector entries are u64 devices with counters > 0")
            if device <= previous:
                raise EncodingError("version vector entries must be sorted by device, no repeats")
            previous = device

    @classmethod
    def from_mapping(cls, counters: Mapping[int, int]) -> VersionVector:
        return cls(tuple(sorted((d, c) for d, c in counters.items() if c)))

    def as_dict(self) -> dict[int, int]:
        return dict(self.entries)

    def counter(self, device: int) -> int:
        return self.as_dict().get(device, 0)

    def compare(self, other: VersionVector) -> Ordering:
        mine, theirs = self.as_dict(), other.as_dict()
        less = greater = False
        for device in mine.keys() | theirs.keys():
            a, b = mine.get(device, 0), theirs.get(device, 0)
            less |= a < b
            greater |= a > b
        if less and greater:
            return Ordering.CONCURRENT
        if less:
            return Ordering.BEFORE
        if greater:
            return Ordering.AFTER
        return Ordering.EQUAL

    def merge(self, other: VersionVector) -> VersionVector:
        """The least vector that both ``self`` and ``other`` are before or equal to."""
        merged = self.as_dict()
        for device, counter in other.entries:
            merged[device] = max(merged.get(device, 0), counter)
        return VersionVector.from_mapping(merged)

    def bump(self, device: int, now_seconds: int) -> VersionVector:
        """A vector just after this one, for a change made by ``device``."""
        counters = self.as_dict()
        counters[device] = max(counters.get(device, 0) + 1, now_seconds)
        return VersionVector.from_mapping(counters)

    def to_wire(self) -> list[list[int]]:
        return [[d, c] for d, c in self.entries]

    @classmethod
    def from_wire(cls, obj: Any) -> VersionVector:
        if not isinstance(obj, list) or len(obj) > MAX_ENTRIES:
            raise EncodingError("version vector is not a list of at most 1024 entries")
        entries: list[tuple[int, int]] = []
        for item in obj:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or type(item[0]) is not int
                or type(item[1]) is not int
            ):
                raise EncodingError("version vector entry is not [device, counter]")
            entries.append((item[0], item[1]))
        return cls(tuple(entries))
