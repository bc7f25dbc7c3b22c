"""Bandwidth limits: token buckets, and a byte stream that keeps to them.

A :class:`Bucket` holds a rate in bytes per second (0: unlimited) that may change at any
time: whoever waits on it sees the new rate within :data:`MAX_SLEEP` seconds, so a limit set
on a running daemon applies to the transfers already under way. A :class:`ThrottledStream`
wraps the stream under a :class:`~commonsync.wire.channel.Channel` and takes from several
buckets for every piece it writes or reads (a device's own and the global one): sending is
cut into pieces of :data:`PIECE` bytes so that a large frame trickles out instead of leaving
in a burst followed by a long silence (which the peer would take for a stall), and
receiving reads no more than the buckets allow, so a receive limit is the kernel's TCP
back-pressure slowing the sender down, not data dropped or buffered here.

The buckets run in debt: a piece is taken as soon as the balance is not negative, and the
balance may then go below zero by the piece's size. So a piece of any size passes at any
rate, and a transfer of ``n`` bytes at ``r`` bytes per second takes at least
``(n - burst) / r`` seconds, ``burst`` being :attr:`Bucket.capacity`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["MAX_SLEEP", "PIECE", "Bucket", "ThrottledStream"]

#: Bytes written or read at a time under a limit: small enough for a steady flow at a few
#: KB/s, large enough that the cost of each piece stays small.
PIECE = 16 * 1024
#: The longest a waiter sleeps before looking at the rate again (a limit changed live).
MAX_SLEEP = 0.25
#: A full bucket holds this many seconds of its rate (at least one piece): short bursts pass
#: at once, a long transfer keeps to the rate.
BURST_SECONDS = 0.25


class Bucket:
    """A token bucket of ``rate`` bytes per second (0: unlimited), changeable live."""

    def __init__(self, rate: float = 0) -> None:
        self._rate = 0.0
        self._tokens = 0.0
        self._stamp: float | None = None
        self.set_rate(rate)

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def limited(self) -> bool:
        return self._rate > 0

    @property
    def capacity(self) -> float:
        """The most bytes that pass at once after a quiet spell."""
        return max(self._rate * BURST_SECONDS, PIECE)

    def set_rate(self, rate: float) -> None:
        """Limit to ``rate`` bytes per second from now on (0 or less: no limit). The debt
        run up under the old rate is forgiven, so a raised limit helps at once."""
        if not math.isfinite(rate) or rate <= 0:
            rate = 0.0
        self._rate = float(rate)
        self._tokens = self.capacity
        self._stamp = None

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    async def take(self, size: int) -> None:
        """Wait until ``size`` bytes may pass, and count them (at once when unlimited)."""
        while self.limited:
            self._refill(anyio.current_time())
            if self._tokens >= 0:
                self._tokens -= size
                return
            await anyio.sleep(min(-self._tokens / self._rate, MAX_SLEEP))
        await anyio.lowlevel.checkpoint()

    def give_back(self, size: int) -> None:
        """Return ``size`` bytes taken but not used (a read that brought fewer)."""
        if self.limited:
            self._tokens = min(self.capacity, self._tokens + size)


class ThrottledStream(anyio.abc.ByteStream):
    """``inner``, its sends kept to every bucket of ``send`` and its reads to every bucket of
    ``receive`` (unlimited buckets cost nothing: bytes pass as they would without it)."""

    def __init__(
        self, inner: anyio.abc.ByteStream, send: Sequence[Bucket], receive: Sequence[Bucket]
    ) -> None:
        self.inner = inner
        self._send = tuple(send)
        self._receive = tuple(receive)

    async def send(self, item: bytes) -> None:
        if not any(b.limited for b in self._send):
            await self.inner.send(item)
            return
        view = memoryview(item)
        for start in range(0, len(view), PIECE):
            piece = bytes(view[start : start + PIECE])
            for bucket in self._send:
                await bucket.take(len(piece))
            await self.inner.send(piece)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        limiting = [b for b in self._receive if b.limited]
        if not limiting:
            return await self.inner.receive(max_bytes)
        wanted = min(max_bytes, PIECE)
        for bucket in limiting:
            await bucket.take(wanted)
        try:
            data = await self.inner.receive(wanted)
        except BaseException:
            for bucket in limiting:
                bucket.give_back(wanted)
            raise
        for bucket in limiting:
            bucket.give_back(wanted - len(data))
        return data

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return self.inner.extra_attributes
