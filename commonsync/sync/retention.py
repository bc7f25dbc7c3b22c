"""Which kept versions to delete: the versions folder's retention, as a pure function.

The versions folder (:data:`commonsync.sync.layout.VERSIONS_DIR`) keeps every file a peer
replaced or deleted, and every file a restore or a conflict resolution set aside; without a
policy it grows for ever. :func:`plan_pruning` decides, from nothing but a list of kept
versions (path, time kept, size), the time now and a :class:`RetentionPolicy`, which of them to
delete. No clock, no disk: the same inputs always give the same answer, which is what lets the
tests drive it with a fake clock and check its properties on random inputs.

The default policy is Syncthing's "staggered" versioning, per path:

- every version kept in the last hour stays;
- older than an hour, one per hour for the first day;
- older than a day, one per day for the first 30 days;
- older than 30 days, one per week until ``max_age`` (a year by default); older ones go.

Within each of those buckets (a calendar hour, day or week in UTC, counted since the epoch, so
that a version stays in one bucket as it ages within a tier) the newest version is the one kept.

On top of that a size cap: when what is left is larger than ``max_size`` (by default 10 % of
the folder's size, and never less than :data:`MIN_SHARE_CAP`), the path whose versions take the
most room loses its oldest one, again and again, until it fits: a file rewritten many times (by
a person, or by a member flushing its history) thins its own history before anyone else's.

The newest version of each path is never deleted by the thinning nor by the cap. After a
deletion it is the only copy of that file left anywhere, and a cap that could take it would let
one large new file wipe the last copy of everything else. Only ``max_age`` removes it: a file
deleted a year ago is a decision long made, and without that limit a folder where many files
come and go would still grow for ever.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_SIZE",
    "MIN_SHARE_CAP",
    "TIERS",
    "KeptVersion",
    "RetentionPolicy",
    "bucket",
    "plan_pruning",
]

_SECOND_NS = 1_000_000_000
HOUR = 3600
DAY = 24 * HOUR
WEEK = 7 * DAY

#: The staggered tiers: (versions younger than this many seconds, keep one per this many
#: seconds; 0: keep all). The last tier runs until ``max_age``.
TIERS: tuple[tuple[float, int], ...] = (
    (HOUR, 0),
    (DAY, HOUR),
    (30 * DAY, DAY),
    (math.inf, WEEK),
)
#: A year, as Syncthing's staggered versioning keeps by default.
DEFAULT_MAX_AGE = 365 * DAY
#: The cap on the versions folder's size: a share of the folder's own size, so that it
#: scales with what the folder holds (a 10 % overhead is what people expect of a backup
#: feature that they did not ask for), ...
DEFAULT_MAX_SIZE = "10%"
#: ... and, for a cap given as a share, never below this many bytes: a folder of a few
#: documents would otherwise keep no history at all of a file edited a few times.
MIN_SHARE_CAP = 100 * 10**6

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|[kmgt]i?b|b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": HOUR, "d": DAY, "w": WEEK}


@dataclass(frozen=True)
class KeptVersion:
    """One entry of the versions folder, as retention sees it."""

    #: The folder-relative path the file had.
    path: str
    #: Its name under the versions folder: what identifies it (and what is deleted).
    name: str
    #: When it was kept (replaced, deleted, set aside), in ns since the epoch.
    time_ns: int
    size: int


@dataclass(frozen=True)
class RetentionPolicy:
    """How a folder's versions are thinned. ``staggered`` false keeps every version (until
    ``max_age`` or the cap); ``max_age`` is in seconds (0: no age limit); ``max_size`` is
    ``"10%"`` (of the folder's size, at least :data:`MIN_SHARE_CAP`), ``"5 GB"``, a number of
    bytes, or ``"none"`` (no cap)."""

    staggered: bool = True
    max_age: int = DEFAULT_MAX_AGE
    max_size: str = DEFAULT_MAX_SIZE

    def __post_init__(self) -> None:
        if self.max_age < 0:
            raise ValueError(f"max_age must not be negative ({self.max_age!r})")
        parse_size(self.max_size)  # a ValueError that says what is wrong

    @property
    def keeps_everything(self) -> bool:
        return not self.staggered and not self.max_age and parse_size(self.max_size) is None

    def cap(self, folder_size: int) -> int | None:
        """The most bytes the versions of a folder of ``folder_size`` bytes may take (None:
        no cap)."""
        parsed = parse_size(self.max_size)
        if parsed is None:
            return None
        share, size = parsed
        if share is None:
            return size
        return max(MIN_SHARE_CAP, int(folder_size * share))

    def describe(self) -> str:
        """The policy in words, for status and logs."""
        parts = ["staggered" if self.staggered else "every version"]
        parts.append(f"up to {self.max_age // DAY} days" if self.max_age else "no age limit")
        cap = parse_size(self.max_size)
        parts.append("no size cap" if cap is None else f"at most {self.max_size.strip()}")
        return ", ".join(parts)


def parse_size(text: str) -> tuple[float | None, int] | None:
    """A cap as written in the configuration: ``(share, 0)`` for ``"10%"``, ``(None, bytes)``
    for ``"5 GB"`` or ``"1000"``, None for ``"none"`` (or ``""``); ValueError otherwise."""
    if text.strip().lower() in ("", "none"):
        return None
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(
            f'versions max_size {text!r} is not a size or a percentage; write it like "10%", '
            '"5 GB" or "none"'
        )
    number, unit = float(match[1]), (match[2] or "").lower()
    if unit == "%":
        if number > 100:
            raise ValueError(f"versions max_size {text!r} is more than 100 %")
        return number / 100, 0
    return None, int(number * _UNITS[unit])


def parse_age(text: str | int | float) -> int:
    """Seconds from ``"365d"``, ``"52w"``, ``"12h"`` or a number of seconds (0: no limit)."""
    if isinstance(text, bool):
        raise ValueError(f"versions max_age must be a duration, not {text!r}")
    if isinstance(text, int | float):
        if text < 0 or not math.isfinite(text):
            raise ValueError(f"versions max_age must not be negative ({text!r})")
        return int(text)
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f'versions max_age {text!r} is not a duration; write it like "365d"')
    return int(float(match[1]) * _DURATION_UNITS[match[2].lower()])


def bucket(age_s: float, time_ns: int) -> tuple[int, int] | None:
    """The staggered bucket of a version ``age_s`` seconds old, kept at ``time_ns``: (tier,
    interval number), or None in the tier that keeps every version."""
    for tier, (younger_than, interval) in enumerate(TIERS):
        if age_s < younger_than:
            if not interval:
                return None
            return tier, (time_ns // _SECOND_NS) // interval
    raise AssertionError("the last tier has no end")  # pragma: no cover


def plan_pruning(
    versions: Iterable[KeptVersion], now_ns: int, policy: RetentionPolicy, folder_size: int = 0
) -> set[str]:
    """The names of the versions to delete, under ``policy``, at ``now_ns``, for a folder of
    ``folder_size`` bytes (for a cap given as a share of it)."""
    by_path: dict[str, list[KeptVersion]] = {}
    for version in versions:
        by_path.setdefault(version.path, []).append(version)
    delete: set[str] = set()
    kept: list[KeptVersion] = []
    newest: set[str] = set()
    for path_versions in by_path.values():
        path_versions.sort(key=lambda v: (v.time_ns, v.name), reverse=True)
        seen: set[tuple[int, int]] = set()
        for index, version in enumerate(path_versions):
            age_s = max(0, now_ns - version.time_ns) / _SECOND_NS
            if policy.max_age and age_s > policy.max_age:
                delete.add(version.name)
                continue
            key = bucket(age_s, version.time_ns) if policy.staggered else None
            if index == 0:
                newest.add(version.name)
            elif key is not None and key in seen:
                delete.add(version.name)
                continue
            if key is not None:
                seen.add(key)
            kept.append(version)
    cap = policy.cap(folder_size)
    if cap is None:
        return delete
    # Over the cap: the path whose history takes the most room gives up its oldest version,
    # again and again. One file edited over and over (a large file at work, or a member
    # rewriting a file to flush its history) thins its own history first, not every other
    # file's.
    total = sum(v.size for v in kept)
    histories: dict[str, list[KeptVersion]] = {}
    for version in sorted(kept, key=lambda v: (v.time_ns, v.name)):
        if version.name not in newest:
            histories.setdefault(version.path, []).append(version)
    sizes = {path: sum(v.size for v in older) for path, older in histories.items()}
    heap = [(-size, path) for path, size in sizes.items()]
    heapq.heapify(heap)
    while total > cap and heap:
        _, path = heapq.heappop(heap)
        oldest = histories[path].pop(0)
        delete.add(oldest.name)
        total -= oldest.size
        sizes[path] -= oldest.size
        if histories[path]:
            heapq.heappush(heap, (-sizes[path], path))
    return delete
