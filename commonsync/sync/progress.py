"""How a folder's transfer goes, and how far each connected peer is behind or ahead of us.

Three things a person asks of a sync, and what this module answers them with:

- *How much is left, and when will it be done?* The bytes left to write move as chunks
  arrive, also within one large file (:class:`InFlight`), and a :class:`RateMeter` turns the
  chunk bytes obtained over the last seconds into a rate and an estimate of the time left.
- *Has that device got what I have?* Records travel before their content: a peer stores
  our record at once and writes the file later, so its index alone says nothing of what is on
  its disk. A peer that names the ``progress`` feature tells us, per folder, how far it has
  taken our index and how much it still has to write (the ``Progress`` message, SPEC.md §13);
  :class:`PeerView` adds what we have that it has not taken yet. A peer without the feature
  is shown as "unknown", never as caught up.
- *Am I behind it?* The same message carries the highest sequence of the peer's own index: the
  records of it we have not taken yet, and this device's own bytes left, say how far behind
  we are.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: The rate is the chunk bytes obtained over this many seconds (a longer window is steadier,
#: a shorter one follows a change of pace sooner).
RATE_WINDOW = 10.0
#: A peer's report is sent at most this often per folder, and only when it changed (s).
REPORT_INTERVAL = 1.0


class RateMeter:
    """Bytes per second over the last :data:`RATE_WINDOW` seconds: a few samples, bounded."""

    def __init__(
        self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._clock = clock
        self._total = 0
        #: (when, total bytes then): one sample per tenth of the window at most.
        self._samples: deque[tuple[float, int]] = deque()

    @property
    def total(self) -> int:
        return self._total

    def add(self, size: int) -> None:
        now = self._clock()
        if not self._samples:
            self._samples.append((now, self._total))  # where the measure starts
        self._total += size
        if now - self._samples[-1][0] < self._window / 10 and len(self._samples) > 1:
            self._samples[-1] = (self._samples[-1][0], self._total)  # one sample per step
        else:
            self._samples.append((now, self._total))

    def rate(self) -> float:
        """Bytes per second over the window; 0 when nothing moved in it."""
        now = self._clock()
        cutoff = now - self._window
        # The newest sample at or before the window's start is the baseline.
        while len(self._samples) >= 2 and self._samples[1][0] <= cutoff:
            self._samples.popleft()
        if not self._samples:
            return 0.0
        start, baseline = self._samples[0]
        moved = self._total - baseline
        elapsed = max(now - max(start, cutoff), self._window / 10)
        return moved / elapsed if moved > 0 else 0.0


def eta(bytes_left: int, rate: float) -> float | None:
    """Seconds left at ``rate`` (None when nothing moves: no estimate is better than a wrong
    one)."""
    if bytes_left <= 0:
        return 0.0
    return bytes_left / rate if rate > 0 else None


@dataclass
class InFlight:
    """The chunk bytes already obtained for the large files being written right now, per
    path: what the bytes left do not count any more, before the file is complete."""

    by_path: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, size: int, limit: int | None = None) -> None:
        """Count ``size`` more bytes for ``path``, never more than ``limit`` in all (its
        file's size: a second attempt at the same version counts its chunks again)."""
        done = self.by_path.get(path, 0) + size
        self.by_path[path] = done if limit is None else min(done, limit)

    def done(self, path: str) -> None:
        self.by_path.pop(path, None)

    @property
    def bytes(self) -> int:
        return sum(self.by_path.values())


@dataclass
class PeerView:
    """One connected peer's progress in one folder, from its last ``Progress`` report and our
    index. All sizes are of files (directories, links and deletions weigh nothing)."""

    #: What it still has to write, from anyone (its own "bytes left").
    need_files: int = 0
    need_bytes: int = 0
    #: How far it has taken our index (0: not at all, or another incarnation of it).
    seen: int = 0
    #: The highest sequence of its own index: what it has for us to take.
    highest: int = 0
    #: Of our records after ``seen`` (not its own): what it has not even been told yet.
    untold_files: int = 0
    untold_bytes: int = 0
    #: Our folder's files, in all: what a percentage is of.
    total_bytes: int = 0
    #: Our own highest sequence when this was computed: it has taken all once ``seen`` is it.
    our_highest: int = 0
    #: How far we have taken its index (our side of the same question).
    we_seen: int = 0
    reported_at: float = 0.0

    @property
    def behind_files(self) -> int:
        return self.need_files + self.untold_files

    @property
    def behind_bytes(self) -> int:
        return self.need_bytes + self.untold_bytes

    @property
    def caught_up(self) -> bool:
        """Whether it has taken every record we hold and written everything it took."""
        return self.seen >= self.our_highest and self.need_files == 0

    @property
    def completion(self) -> float:
        """Percent of our folder's bytes it holds, as Syncthing shows per remote device."""
        if self.caught_up:
            return 100.0
        total = max(self.total_bytes, self.behind_bytes)
        if total <= 0:
            return 99.0  # only records without content left: not 100 until they are taken
        return min(99.9, 100.0 * (1 - self.behind_bytes / total))

    @property
    def unreceived(self) -> int:
        """Records of its index we have not taken yet (a count of sequence numbers: some of
        them may be records it will not send us, such as our own)."""
        return max(0, self.highest - self.we_seen)

    def as_json(self) -> dict[str, object]:
        return {
            "caught_up": self.caught_up,
            "completion": round(self.completion, 1),
            "behind_files": self.behind_files,
            "behind_bytes": self.behind_bytes,
            "its_files_left": self.need_files,
            "its_bytes_left": self.need_bytes,
            "untold_files": self.untold_files,
            "untold_bytes": self.untold_bytes,
            "unreceived_records": self.unreceived,
            "reported_at": self.reported_at,
        }


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def duration(seconds: float | None) -> str:
    """A time left in words a person reads at a glance ("unknown" without an estimate)."""
    if seconds is None:
        return "unknown"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def transfer_words(bytes_left: int, rate: float, seconds: float | None) -> str:
    """``"12.3 MB left, 1.2 MB/s, about 10 s left"``: what status says of a transfer."""
    words = f"{megabytes(bytes_left)} left"
    if rate > 0:
        words += f", {megabytes(int(rate))}/s, about {duration(seconds)} left"
    else:
        words += ", waiting for data"
    return words
