"""Rate-limited logging for what strangers cause: a few lines per source, then one summary.

Anyone who can reach a port can open connections as fast as the network allows, and each
refusal is worth a log line only until the point is made: one line each would let a stranger
fill the disk and keep a core busy formatting (330 KiB/s of log was measured). A
:class:`LogRate` logs at most ``per_key`` lines per key (a source address, say) and ``total``
lines in all per window; the others are counted, and each key whose lines were held back gets
one summary line when its window ends::

    37 more connections refused from 203.0.113.9 in the last 60 s

Pure apart from the logger: the clock is a parameter, and summaries come out on the next
call after a window ended, or from :meth:`LogRate.run`, which flushes them on time.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio

#: Keys remembered at once; beyond that, new keys share one ("other sources").
MAX_KEYS = 256
OTHERS = "other sources"


@dataclass
class _Window:
    start: float
    logged: int = 0
    held: int = 0
    level: int = logging.DEBUG


class LogRate:
    """At most ``per_key`` lines per key and ``total`` in all per ``window`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        per_key: int = 5,
        total: int = 50,
        window: float = 60.0,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._per_key = per_key
        self._total = total
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        #: In the order their windows started, which is the order they end in.
        self._keys: OrderedDict[str, _Window] = OrderedDict()
        self._all = _Window(clock())

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` (or everyone) used up this window's lines;
        True if it was logged."""
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        self.flush(now)
        if now - self._all.start >= self._window:
            self._all = _Window(now)
        window = self._keys.get(key)
        if window is None:
            if len(self._keys) >= self._max_keys:
                key = OTHERS
                window = self._keys.get(key)
            if window is None:
                window = self._keys[key] = _Window(now)
        if window.logged < self._per_key and self._all.logged < self._total:
            window.logged += 1
            self._all.logged += 1
            self._logger.log(level, message, *args)
            return True
        window.held += 1
        window.level = max(window.level, level)
        return False

    def flush(self, now: float | None = None) -> None:
        """Summarise and forget the keys whose window ended."""
        now = self._clock() if now is None else now
        while self._keys:
            key, window = next(iter(self._keys.items()))
            if now - window.start < self._window:
                break
            del self._keys[key]
            if window.held:
                self._logger.log(
                    window.level,
                    "%d more %s from %s in the last %g s",
                    window.held,
                    self._what,
                    key,
                    self._window,
                )

    async def run(self) -> None:
        """Flush the summaries on time, until cancelled (a source that stopped still gets
        its summary)."""
        while True:
            await anyio.sleep(self._window / 4)
            self.flush()
