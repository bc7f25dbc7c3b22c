"""Bandwidth limits of a device: one pair of buckets (send, receive) for all its sessions
together, and one pair per remote device, kept in step with the configuration.

Every session's channel takes from its device's buckets and from the global ones
(:meth:`~commonsync.wire.channel.Channel.throttle`), so "500 KiB/s to the phone, 2 MB/s in
all" holds however many sessions run. The buckets live as long as the node: changing a limit
changes the rate of the bucket the running sessions already use, which they see within a
quarter of a second (:data:`commonsync.wire.ratelimit.MAX_SLEEP`).

Rates are written as people write them: ``500KiB/s``, ``2 MB/s``, ``1.5M``, ``800kbit/s``,
or ``0`` / ``none`` / ``unlimited`` for no limit (:func:`parse_rate`, :func:`format_rate`).
"""

from __future__ import annotations

import math
import re

from ..errors import InvalidRequestError
from ..formats.device_id import DeviceId
from ..wire.ratelimit import Bucket
from .config import NodeConfig

__all__ = ["RateLimits", "format_rate", "parse_rate"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
}
_BITS = {"bit": 1 / 8, "kbit": 1000 / 8, "mbit": 1000**2 / 8, "gbit": 1000**3 / 8}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*(?:/\s*s(?:ec)?|ps)?\s*$", re.IGNORECASE)


def parse_rate(text: str | int | float) -> int:
    """Bytes per second from ``text`` (0: no limit). Units: B, kB/KB/k (1000), KiB/Ki
    (1024), MB, MiB, GB, GiB, and kbit, Mbit, Gbit; an optional ``/s``. Raises
    :class:`~commonsync.errors.InvalidRequestError` saying how to write it."""
    if isinstance(text, bool):
        raise InvalidRequestError(f"{text!r} is not a rate")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise InvalidRequestError(f"{text!r} is not a rate: give bytes per second, or 0")
        return int(text)
    if text.strip().lower() in ("none", "unlimited", "off", "no", "0"):
        return 0
    match = _RATE.match(text)
    unit = match.group(2).lower() if match else ""
    factor = _UNITS.get(unit) or _BITS.get(unit)
    if match is None or factor is None:
        raise InvalidRequestError(
            f"{text!r} is not a rate",
            hint="write it like 500KiB/s, 2MB/s or 800kbit/s, or none for no limit",
        )
    return int(float(match.group(1)) * factor)


def format_rate(rate: int) -> str:
    """``rate`` (bytes per second) as :func:`parse_rate` reads it back exactly, in the
    largest binary unit that divides it (``"500 KiB/s"``), or ``"none"``."""
    if rate <= 0:
        return "none"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if rate % size == 0:
            return f"{rate // size} {unit}/s"
    return f"{rate} B/s"


class RateLimits:
    """The buckets of one node (see the module's docstring)."""

    def __init__(self, config: NodeConfig) -> None:
        self.send = Bucket(config.max_send_rate)
        self.receive = Bucket(config.max_receive_rate)
        self._devices: dict[DeviceId, tuple[Bucket, Bucket]] = {}
        self.apply(config)

    def apply(self, config: NodeConfig) -> None:
        """Take the limits in ``config`` (after it changed): running sessions follow."""
        _set(self.send, config.max_send_rate)
        _set(self.receive, config.max_receive_rate)
        for device in config.devices:
            send, receive = self._pair(device.device_id)
            _set(send, device.max_send_rate)
            _set(receive, device.max_receive_rate)
        known = {d.device_id for d in config.devices}
        for device_id in [d for d in self._devices if d not in known]:
            send, receive = self._devices[device_id]
            _set(send, 0)
            _set(receive, 0)

    def _pair(self, device_id: DeviceId) -> tuple[Bucket, Bucket]:
        pair = self._devices.get(device_id)
        if pair is None:
            pair = self._devices[device_id] = (Bucket(), Bucket())
        return pair

    def buckets(self, device_id: DeviceId) -> tuple[list[Bucket], list[Bucket]]:
        """What a session with ``device_id`` takes from: (to send, to receive)."""
        send, receive = self._pair(device_id)
        return [send, self.send], [receive, self.receive]


def _set(bucket: Bucket, rate: int) -> None:
    if bucket.rate != max(rate, 0):
        bucket.set_rate(rate)
