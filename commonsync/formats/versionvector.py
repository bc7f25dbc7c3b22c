"""Version vectors: which file versions descend from which.

A vector maps a device's short ID (64 bits) to a counter. ``a`` is BEFORE ``b`` when every
counter of ``a`` is at most the one in ``b`` and the vectors differ; two vectors neither before
nor after each other are CONCURRENT, which is what a conflict is.

Bumping sets our counter to ``max(old + 1, now_in_seconds)`` rather than ``old + 1``: after a
database wipe plain counters restart low and lose against stale versions (Syncthing #3876).

Counters come from the network, and only the device they name ever bumps them: a receiver
refuses (:func:`check_received`) a vector with a counter it could not bump, or one that claims
a version of the receiver itself that it cannot have made. Otherwise one forged counter of
``2**64 - 1`` for a device would stop that device from ever publishing that path again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import EncodingError, VersionVectorError

MAX_ENTRIES = 1024
_U64 = 2**64 - 1
#: The largest counter a receiver accepts (SPEC.md §6): any counter it accepts can still be
#: bumped about 2**63 times before it would overflow 64 bits.
MAX_COUNTER = 2**63 - 1
#: How far (in seconds) a receiver's own counter may be ahead of its clock. Its bumps are
#: ``max(old + 1, now)``, so a counter runs ahead of the clock only by the edits made faster
#: than one a second: 2**32 s (136 years) is never reached by real edits, nor by a clock that
#: fell back to 1970, and keeps 2**63 bumps of room.
OWN_COUNTER_AHEAD = 2**32


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
        counter = max(counters.get(device, 0) + 1, now_seconds)
        if counter > _U64:
            raise VersionVectorError(
                f"the version counter of device {device:016x} is at its maximum and cannot "
                "grow; this path cannot get a new version from that device"
            )
        counters[device] = counter
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


def check_received(vector: VersionVector, *, me: int, now_seconds: int) -> None:
    """Refuse (:class:`VersionVectorError`) a vector from the network that this device must
    not take (SPEC.md §6): a counter above :data:`MAX_COUNTER`, or a counter for ``me`` (this
    device's short ID) more than :data:`OWN_COUNTER_AHEAD` seconds ahead of ``now_seconds``.
    Only this device bumps its own counter, so such a version was forged, and taking it would
    make this device's next edit of the path overflow or lose."""
    for device, counter in vector.entries:
        if counter > MAX_COUNTER:
            raise VersionVectorError(
                "its version vector holds a counter above 2^63 - 1, which could not be incremented"
            )
        if device == me and counter > max(now_seconds, 0) + OWN_COUNTER_AHEAD:
            raise VersionVectorError(
                "its version vector claims a version of this device that this device never "
                "made (a counter far ahead of its clock)"
            )
