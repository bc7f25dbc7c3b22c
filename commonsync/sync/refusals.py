"""Counting the remote versions a folder refuses, and saying so once per device and reason.

A hostile member can send thousands of records the engine must refuse (paths inside
``.commonsync/``, forged version counters, names the local file system cannot hold). Each is
refused on its own, but reporting each would make a flood of log lines out of them. So
refusals are counted per (device, reason), reported when first seen and then at most once per
:data:`REPORT_INTERVAL` while the count grows, and what a person reads in status is one line
per (device, reason): "N versions from DEVICE were refused: reason". Memory stays bounded:
past :data:`MAX_KINDS` pairs, further devices are counted together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

#: (device, reason) pairs counted apart; beyond, new devices count under :data:`OTHERS`.
MAX_KINDS = 64
#: Seconds between two reports of the same (device, reason) while its count grows.
REPORT_INTERVAL = 60.0
OTHERS = "other devices"


@dataclass
class Refusal:
    """How many versions from ``device`` were refused for ``reason``."""

    device: str
    reason: str
    count: int = 0
    #: What was refused, singular and plural.
    noun: tuple[str, str] = ("version", "versions")

    def __str__(self) -> str:
        what = f"1 {self.noun[0]}" if self.count == 1 else f"{self.count} {self.noun[1]}"
        verb = "was" if self.count == 1 else "were"
        return f"{what} from {self.device} {verb} refused: {self.reason}"


@dataclass
class _Counted:
    refusal: Refusal
    reported_at: float | None = None
    reported_count: int = 0


class Refusals:
    """The refusals of one folder since it was opened."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        noun: tuple[str, str] = ("version", "versions"),
    ) -> None:
        self._clock = clock
        self._noun = noun
        self._counted: dict[tuple[str, str], _Counted] = {}

    def add(self, device: str, reason: str, count: int = 1) -> Refusal | None:
        """Count ``count`` more refusals; the refusal (a copy) if it should be reported now,
        else None."""
        key = (device, reason)
        if key not in self._counted and len(self._counted) >= MAX_KINDS:
            key = (OTHERS, reason)
        counted = self._counted.get(key)
        if counted is None:
            if len(self._counted) >= MAX_KINDS + MAX_KINDS:
                return None  # reasons are a small fixed set: not reached, but bounded anyway
            counted = self._counted[key] = _Counted(Refusal(*key, noun=self._noun))
        counted.refusal.count += count
        now = self._clock()
        if counted.reported_at is not None and (
            now - counted.reported_at < REPORT_INTERVAL
            or counted.refusal.count == counted.reported_count
        ):
            return None
        counted.reported_at, counted.reported_count = now, counted.refusal.count
        return replace(counted.refusal)

    def all(self) -> list[Refusal]:
        """Every refusal counted so far (copies), most frequent first."""
        found = [replace(c.refusal) for c in self._counted.values()]
        return sorted(found, key=lambda r: (-r.count, r.device, r.reason))
