"""Device IDs: how people see, type and compare devices.

A device ID is the BLAKE2b-256 hash of the device's Ed25519 public key. People see it as 56
base32 characters in 8 groups of 7, such as ``MFZWI3D-BONSGYC-...``: 52 characters carry the
256 bits and every 13 of them are followed by a Luhn mod 32 check character, so a single wrong
character or a swap of two neighbours is reported as *mistyped* (and where), not as an unknown
device. The scheme follows Syncthing's device IDs, with the textbook Luhn algorithm.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

from ..errors import DeviceIdError, MistypedDeviceIdError
from .hashing import blake2b

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
#: Characters people type by mistake for look-alikes that base32 does use.
_LOOKALIKES = str.maketrans({"0": "O", "1": "I", "8": "B"})
_DATA_CHARS = 52
_GROUP = 13
_CONTEXT = b"commonsync device id v1\x00"


def _luhn32(chars: str) -> str:
    """Luhn mod N check character (N = 32) over base32 characters."""
    factor = 2
    total = 0
    for c in reversed(chars):
        addend = factor * _INDEX[c]
        total += addend // 32 + addend % 32
        factor = 3 - factor  # weights 2, 1, 2, ... from the right, as in Luhn
    return _ALPHABET[(32 - total % 32) % 32]


@dataclass(frozen=True, order=True)
class DeviceId:
    """The 32-byte identifier of a device; ``str()`` gives the form people read."""

    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != 32:
            raise DeviceIdError(f"a device ID is 32 bytes, not {len(self.digest)}")

    @classmethod
    def from_public_key(cls, public_key: bytes) -> DeviceId:
        if len(public_key) != 32:
            raise DeviceIdError("an Ed25519 public key is 32 bytes")
        return cls(blake2b(_CONTEXT + public_key))

    @classmethod
    def parse(cls, text: str) -> DeviceId:
        """Read a device ID as a person typed it: any case, dashes and spaces ignored."""
        chars = "".join(text.split()).replace("-", "").upper().translate(_LOOKALIKES)
        if len(chars) != _DATA_CHARS + 4:
            raise DeviceIdError(
                f"a device ID has 56 letters and digits (dashes aside), this one has {len(chars)}"
            )
        bad = sorted({c for c in chars if c not in _INDEX})
        if bad:
            raise DeviceIdError(f"a device ID cannot contain {''.join(bad)!r}")
        data = []
        for n in range(4):
            block = chars[n * (_GROUP + 1) : (n + 1) * (_GROUP + 1)]
            if _luhn32(block[:-1]) != block[-1]:
                first = n * (_GROUP + 1) // 7 + 1
                raise MistypedDeviceIdError(
                    f"device ID is mistyped: check groups {first} and {first + 1} "
                    f"(characters {n * (_GROUP + 1) + 1}-{(n + 1) * (_GROUP + 1)})"
                )
            data.append(block[:-1])
        encoded = "".join(data)
        raw = base64.b32decode(encoded + "====")
        # 52 characters hold 260 bits; the 4 spare bits of the last one must be zero.
        if base64.b32encode(raw).decode().rstrip("=") != encoded:
            raise MistypedDeviceIdError("device ID is mistyped: check the last group")
        return cls(raw)

    @property
    def short(self) -> int:
        """The 64-bit number that names this device in version vectors."""
        return int.from_bytes(self.digest[:8], "big")

    @property
    def short_str(self) -> str:
        """The first group, enough for people to tell their devices apart (conflict names)."""
        return str(self)[:7]

    def __str__(self) -> str:
        return _rendered(self.digest)

    def __repr__(self) -> str:
        return f"DeviceId({self})"


@functools.lru_cache(maxsize=256)
def _rendered(digest: bytes) -> str:
    """A device ID as people read it (cached: logs and events name the same few devices
    thousands of times)."""
    chars = base64.b32encode(digest).decode().rstrip("=")
    blocks = [chars[i : i + _GROUP] for i in range(0, _DATA_CHARS, _GROUP)]
    full = "".join(b + _luhn32(b) for b in blocks)
    return "-".join(full[i : i + 7] for i in range(0, len(full), 7))
